//! What gateways share with each other: their traffic figures
//! ([`crate::stats`]) and their rate-limit demand ([`crate::demand`]).
//!
//! Each gateway sends its whole set of each kind, at each publication,
//! straight to the other gateways (the live members of its own service) in
//! direct datagrams (chitchat's `Direct`, sealed like all gossip), and keeps
//! the newest complete set it received from each. Nothing of it enters the
//! gossip state, so services carry none of it: before, every member
//! received every gateway's figures every second, and with protocol V4
//! every publication changed every member's state hash.
//!
//! A set larger than a datagram goes in parts; a receiver replaces a
//! gateway's set when it has every part of a newer one. A set not renewed
//! for [`EXPIRES`] is dropped, and a gateway gone from the view or that
//! announced `left` counts no more. Gateways of releases that published
//! these as gossip keys (`stats…`, `limit:…`) are still read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use chitchat::{Chitchat, ChitchatHandle, Deserializable, NodeState, Serializable};
use tokio::time::Instant;
use tracing::debug;

use crate::demand::{self, Demand};
use crate::member::{Health, keys};
use crate::stats::{self, ClusterStats, GatewayStats};

/// A received set not renewed for this long is dropped (figures are
/// published every second, demand every 250 ms).
pub(crate) const EXPIRES: Duration = Duration::from_secs(5);
/// First byte of a shared set's datagram (and its format's version).
const MAGIC: u8 = 0x53;

/// The kinds of set a gateway shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Stats = 1,
    Demand = 2,
}

impl Kind {
    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Stats),
            2 => Some(Kind::Demand),
            _ => None,
        }
    }
}

/// One part of a set, as it travels.
#[derive(Debug, PartialEq)]
struct Part {
    kind: Kind,
    epoch: u64,
    index: u16,
    count: u16,
    kv: Vec<(String, String)>,
}

impl Part {
    fn encode(&self) -> Vec<u8> {
        let mut buf = vec![MAGIC, self.kind as u8];
        self.epoch.serialize(&mut buf);
        self.index.serialize(&mut buf);
        self.count.serialize(&mut buf);
        (self.kv.len() as u16).serialize(&mut buf);
        for (k, v) in &self.kv {
            k.serialize(&mut buf);
            v.serialize(&mut buf);
        }
        buf
    }

    fn decode(mut buf: &[u8]) -> anyhow::Result<Part> {
        let buf = &mut buf;
        anyhow::ensure!(u8::deserialize(buf)? == MAGIC, "not a shared set");
        let code = u8::deserialize(buf)?;
        let kind = Kind::from_code(code).ok_or_else(|| anyhow::anyhow!("kind {code}"))?;
        let epoch = u64::deserialize(buf)?;
        let index = u16::deserialize(buf)?;
        let count = u16::deserialize(buf)?;
        anyhow::ensure!(index < count, "part {index} of {count}");
        let n = u16::deserialize(buf)?;
        let kv = (0..n)
            .map(|_| Ok((String::deserialize(buf)?, String::deserialize(buf)?)))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(buf.is_empty(), "{} bytes after the set", buf.len());
        Ok(Part {
            kind,
            epoch,
            index,
            count,
            kv,
        })
    }
}

/// Splits `kv` into parts of at most `room` bytes each (one pair per part
/// at least); always one part, even for an empty set (which says "none").
fn split(kind: Kind, epoch: u64, kv: Vec<(String, String)>, room: usize) -> Vec<Part> {
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    let mut used = 0;
    for (k, v) in kv {
        let len = k.len() + v.len() + 4;
        let last = groups.last_mut().expect("one group at least");
        if !last.is_empty() && used + len > room {
            groups.push(Vec::new());
            used = 0;
        }
        used += len;
        groups.last_mut().expect("one group at least").push((k, v));
    }
    let count = groups.len().min(usize::from(u16::MAX)) as u16;
    groups
        .into_iter()
        .take(usize::from(count))
        .enumerate()
        .map(|(index, kv)| Part {
            kind,
            epoch,
            index: index as u16,
            count,
            kv,
        })
        .collect()
}

/// Key-value pairs, as a set carries them.
type Pairs = Vec<(String, String)>;

/// A gateway's newest complete set of a kind, and the one being received.
#[derive(Default)]
struct Received {
    complete: Vec<(String, String)>,
    at: Option<Instant>,
    epoch: u64,
    /// The epoch being received, and its parts so far.
    pending: Option<(u64, Vec<Option<Pairs>>)>,
}

impl Received {
    fn take(&mut self, part: Part, now: Instant) {
        if part.epoch <= self.epoch && self.at.is_some() {
            return;
        }
        let fresh = !matches!(&self.pending, Some((epoch, parts))
            if *epoch == part.epoch && parts.len() == usize::from(part.count));
        if fresh {
            if self.pending.as_ref().is_some_and(|(e, _)| *e > part.epoch) {
                return;
            }
            self.pending = Some((part.epoch, vec![None; usize::from(part.count)]));
        }
        let Some((epoch, parts)) = self.pending.as_mut() else {
            return;
        };
        parts[usize::from(part.index)] = Some(part.kv);
        if parts.iter().all(Option::is_some) {
            self.complete = parts
                .iter_mut()
                .flat_map(|p| p.take().unwrap_or_default())
                .collect();
            self.epoch = *epoch;
            self.at = Some(now);
            self.pending = None;
        }
    }
}

/// This member's side of the sharing: what it published, what it got.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The most bytes of pairs a part carries.
    room: usize,
}

#[derive(Default)]
struct State {
    mine: HashMap<Kind, Vec<(String, String)>>,
    epoch: u64,
    theirs: HashMap<(SocketAddr, Kind), Received>,
}

impl Shared {
    /// Starts receiving what other gateways send `handle`'s member; parts
    /// carry at most `room` bytes of pairs.
    pub(crate) fn start(handle: &ChitchatHandle, room: usize) -> std::sync::Arc<Shared> {
        let shared = std::sync::Arc::new(Shared {
            state: Mutex::new(State {
                epoch: crate::clock::now_ms(),
                ..State::default()
            }),
            room,
        });
        if let Some(mut rx) = handle.take_direct_receiver() {
            let weak = std::sync::Arc::downgrade(&shared);
            tokio::spawn(async move {
                while let Some((from, payload)) = rx.recv().await {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    match Part::decode(&payload) {
                        Ok(part) => shared.take(from, part),
                        Err(error) => {
                            debug!(%from, %error, "a direct message that is no shared set")
                        }
                    }
                }
            });
        }
        shared
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, from: SocketAddr, part: Part) {
        let now = Instant::now();
        let mut state = self.lock();
        state
            .theirs
            .retain(|_, r| r.at.is_none_or(|at| now.duration_since(at) < EXPIRES * 4));
        state
            .theirs
            .entry((from, part.kind))
            .or_default()
            .take(part, now);
    }

    /// Replaces this member's set of `kind` and sends it to every other
    /// live gateway (member of the same service) `c` knows.
    fn publish(
        &self,
        c: &Chitchat,
        handle: &ChitchatHandle,
        kind: Kind,
        kv: Vec<(String, String)>,
    ) {
        let epoch = {
            let mut state = self.lock();
            state.epoch += 1;
            state.mine.insert(kind, kv.clone());
            state.epoch
        };
        let me = c.self_chitchat_id();
        let service = c.node_state(me).and_then(|s| s.get(keys::SERVICE));
        let peers: Vec<SocketAddr> = live_states(c, false)
            .filter(|state| state.get(keys::SERVICE) == service)
            .map(|state| state.chitchat_id().gossip_advertise_addr)
            .collect();
        if peers.is_empty() {
            return;
        }
        for part in split(kind, epoch, kv, self.room) {
            let payload = part.encode();
            for peer in &peers {
                if let Err(error) = handle.send_direct(*peer, payload.clone()) {
                    debug!(%peer, %error, "gossip stopped: figures not sent");
                }
            }
        }
    }

    /// The fresh sets of `kind` of the other gateways `c` holds live (and
    /// not `left`).
    fn theirs(&self, c: &Chitchat, kind: Kind) -> Vec<Vec<(String, String)>> {
        let now = Instant::now();
        let live: std::collections::HashSet<SocketAddr> = live_states(c, false)
            .map(|state| state.chitchat_id().gossip_advertise_addr)
            .collect();
        self.lock()
            .theirs
            .iter()
            .filter(|((from, k), r)| {
                *k == kind
                    && live.contains(from)
                    && r.at.is_some_and(|at| now.duration_since(at) < EXPIRES)
            })
            .map(|(_, r)| r.complete.clone())
            .collect()
    }

    fn mine(&self, kind: Kind) -> Vec<(String, String)> {
        self.lock().mine.get(&kind).cloned().unwrap_or_default()
    }
}

/// The states of live members that have not announced `left` (this one's
/// too, when `with_self`).
fn live_states(c: &Chitchat, with_self: bool) -> impl Iterator<Item = &NodeState> {
    let me = c.self_chitchat_id();
    c.live_nodes()
        .filter(move |id| with_self || *id != me)
        .filter_map(|id| c.node_state(id))
        .filter(|state| state.get(keys::HEALTH) != Some(Health::Left.as_str()))
}

/// The keys under `prefix` of other live members (gateways of releases
/// that published their sets as gossip keys), one list per member.
fn published_as_keys(c: &Chitchat, prefix: &str) -> Vec<Vec<(String, String)>> {
    live_states(c, false)
        .map(|state| {
            state
                .iter_prefix(prefix)
                .map(|(k, v)| (k.to_string(), v.value.to_string()))
                .collect::<Vec<_>>()
        })
        .filter(|kv| !kv.is_empty())
        .collect()
}

/// Publishes this gateway's traffic figures, replacing its previous ones.
pub(crate) fn publish_stats(
    c: &Chitchat,
    handle: &ChitchatHandle,
    shared: &Shared,
    figures: &GatewayStats,
) {
    shared.publish(c, handle, Kind::Stats, figures.key_values());
}

/// Every live gateway's figures (this one's included), merged.
pub(crate) fn cluster_stats(c: &Chitchat, shared: &Shared) -> ClusterStats {
    let mut merged = ClusterStats::default();
    let mine = shared.mine(Kind::Stats);
    let sets = std::iter::once(mine)
        .filter(|kv| !kv.is_empty())
        .chain(shared.theirs(c, Kind::Stats))
        .chain(published_as_keys(c, stats::WINDOW_KEY));
    for kv in sets {
        merged.add_gateway(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    merged
}

/// Publishes this gateway's demand per service, replacing its previous one
/// (a service no longer limited is gone from it).
pub(crate) fn publish_demand(
    c: &Chitchat,
    handle: &ChitchatHandle,
    shared: &Shared,
    demands: Vec<(String, Demand)>,
) {
    let kv = demands
        .into_iter()
        .map(|(service, d)| (Demand::key(&service), d.encode()))
        .collect();
    shared.publish(c, handle, Kind::Demand, kv);
}

/// The other gateways' demand, as `(service, demand)`.
pub(crate) fn demands(c: &Chitchat, shared: &Shared) -> Vec<(String, Demand)> {
    shared
        .theirs(c, Kind::Demand)
        .into_iter()
        .chain(published_as_keys(c, demand::KEY_PREFIX))
        .flatten()
        .filter_map(|(k, v)| Some((Demand::service_of(&k)?.to_string(), Demand::decode(&v))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::stats::{Counts, Figures};
    use crate::testkit::{members, wait_for};

    fn demand(total: f64) -> Demand {
        Demand {
            total,
            clients: vec![("10.0.0.9".parse().expect("an address"), total / 2.0)],
        }
    }

    async fn seen(c: &crate::Cluster) -> Vec<(String, f64)> {
        let mut d: Vec<(String, f64)> = c
            .demands()
            .await
            .into_iter()
            .map(|(s, d)| (s, d.total))
            .collect();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        d
    }

    #[tokio::test]
    async fn a_gateways_demand_reaches_the_others_and_is_replaced_whole() {
        let g = members("gateway", 2).await;
        let (a, b) = (&g[0], &g[1]);
        a.publish_demand(vec![
            ("orders".into(), demand(4.0)),
            ("users".into(), demand(2.0)),
        ])
        .await;
        let both = vec![("orders".to_string(), 4.0), ("users".to_string(), 2.0)];
        wait_for("both services' demand at the other gateway", || {
            let both = both.clone();
            async move { seen(b).await == both }
        })
        .await;
        let full = b.demands().await;
        assert!(full.iter().all(|(_, d)| d.clients.len() == 1), "{full:?}");
        assert!(
            seen(a).await.is_empty(),
            "a gateway reads only the others' demand"
        );

        // A service no longer limited is deleted, not left behind.
        a.publish_demand(vec![("orders".into(), demand(6.0))]).await;
        wait_for("the replaced demand", || async move {
            seen(b).await == vec![("orders".to_string(), 6.0)]
        })
        .await;

        // A gateway that announced `left` counts no more.
        a.set_health(Health::Left).await;
        wait_for("a left gateway's demand gone", || async move {
            seen(b).await.is_empty()
        })
        .await;
    }

    fn kv(n: usize, len: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("stats:s{i}"), "x".repeat(len)))
            .collect()
    }

    #[test]
    fn a_set_goes_in_parts_that_fit_and_comes_back_whole_in_any_order() {
        let set = kv(40, 100);
        let parts = split(Kind::Stats, 7, set.clone(), 1000);
        assert!(parts.len() > 1, "{} parts", parts.len());
        for part in &parts {
            let wire = part.encode();
            assert!(wire.len() < 1100, "{} bytes", wire.len());
            assert_eq!(&Part::decode(&wire).expect("a part"), part);
        }
        let now = Instant::now();
        let mut got = Received::default();
        let mut reversed: Vec<Part> = parts.into_iter().rev().collect();
        let last = reversed.pop().expect("a part");
        for part in reversed {
            got.take(part, now);
        }
        assert!(got.at.is_none(), "incomplete until every part is in");
        got.take(last, now);
        let mut whole = got.complete.clone();
        whole.sort();
        let mut expected = set;
        expected.sort();
        assert_eq!(whole, expected);

        // An older set is ignored; a newer one with a part lost leaves the
        // last complete one in place.
        for part in split(Kind::Stats, 6, kv(1, 1), 1000) {
            got.take(part, now);
        }
        assert_eq!(got.complete.len(), 40);
        let mut newer = split(Kind::Stats, 8, kv(40, 100), 1000);
        newer.pop();
        for part in newer {
            got.take(part, now);
        }
        assert_eq!((got.epoch, got.complete.len()), (7, 40));

        // An empty set is one part that says "none".
        let empty = split(Kind::Demand, 9, Vec::new(), 1000);
        assert_eq!(empty.len(), 1);
        got.take(empty.into_iter().next().expect("a part"), now);
        assert!(got.complete.is_empty());
    }

    #[test]
    fn garbage_is_no_shared_set() {
        for bad in [&b""[..], b"\x53", b"\x53\x09", b"not a set at all"] {
            assert!(Part::decode(bad).is_err(), "{bad:?}");
        }
        let mut wire = split(Kind::Stats, 1, kv(1, 3), 1000).remove(0).encode();
        wire.push(0);
        assert!(Part::decode(&wire).is_err(), "trailing bytes");
    }

    #[tokio::test]
    async fn figures_and_demand_never_enter_the_gossip_state() {
        let g = members("gateway", 2).await;
        g[0].publish_demand(vec![("orders".into(), demand(4.0))])
            .await;
        wait_for("the demand at the other gateway", || async {
            !seen(&g[1]).await.is_empty()
        })
        .await;
        for c in &g {
            let chitchat = c.chitchat();
            let guard = chitchat.lock().await;
            for id in guard.live_nodes() {
                let state = guard.node_state(id).expect("a live member's state");
                let shared: Vec<&str> = state
                    .iter_prefix("")
                    .map(|(k, _)| k)
                    .filter(|k| {
                        k.starts_with(stats::WINDOW_KEY) || k.starts_with(demand::KEY_PREFIX)
                    })
                    .collect();
                assert!(shared.is_empty(), "{id:?} carries {shared:?}");
            }
        }
    }

    #[tokio::test]
    async fn every_gateways_figures_are_merged() {
        let g = members("gateway", 2).await;
        let figures = |requests| {
            let f = Figures {
                total: Counts {
                    requests,
                    ..Counts::default()
                },
                ..Figures::default()
            };
            GatewayStats {
                window_secs: 10,
                services: BTreeMap::from([("orders".to_string(), (f, BTreeMap::new()))]),
            }
        };
        g[0].publish_stats(&figures(3)).await;
        g[1].publish_stats(&figures(4)).await;
        for c in &g {
            wait_for("both gateways' figures merged", || async move {
                let merged = c.cluster_stats().await;
                merged.gateways == 2
                    && merged
                        .services
                        .get("orders")
                        .map(|(m, _)| m.figures.total.requests)
                        == Some(7)
            })
            .await;
        }
    }
}
