//! Rate limits across every gateway, with no shared store.
//!
//! A service announces a limit for all its traffic (`SHOAL_RATE_LIMIT`) and
//! one per client IP (`SHOAL_RATE_LIMIT_PER_CLIENT`). Each gateway measures
//! the demand it sees (requests offered per second, an exponentially
//! weighted rate with a 1 s time constant) and publishes it by gossip every
//! [`SYNC_EVERY`] (`limit:{service}`: the service's demand and that of the
//! client IPs close to their limit). Each gateway then admits its **share**:
//!
//! ```text
//! share = limit × my demand / (my demand + the other gateways' demand)
//! ```
//!
//! through a token bucket refilled at that rate and holding at most one
//! second of it. The shares add up to the limit whatever the number of
//! gateways and however the traffic is spread over them; a gateway with
//! more traffic gets a larger share. The error bound (how far over the
//! limit the cluster goes, and for how long after traffic shifts) is in
//! README "Rate limits".

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use shoal_node::{Demand, RateLimit};

use tokio::time::Instant;

/// How often each gateway publishes its demand and reads the others'.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// Time constant of the demand rate.
const TAU: f64 = 1.0;
/// A client's bucket holds this many seconds of its share: a browser's
/// burst of parallel requests passes.
const CLIENT_BURST_SECS: f64 = 1.0;
/// The service's bucket holds this many seconds of the share: after an
/// idle spell each gateway's share is the whole limit, so this bounds what
/// passes at once when traffic returns to every gateway together.
const SERVICE_BURST_SECS: f64 = 0.2;
/// Clients published per service: the busiest ones.
const MAX_PUBLISHED_CLIENTS: usize = 32;
/// A client is published once its demand passes this part of its limit.
const PUBLISH_CLIENT_ABOVE: f64 = 0.25;
/// Clients tracked per service; beyond this, the idlest are dropped.
const MAX_CLIENTS: usize = 100_000;

/// A rate of events: exponentially weighted, time constant [`TAU`].
#[derive(Debug, Clone, Copy)]
struct Rate {
    value: f64,
    at: Instant,
}

impl Rate {
    fn new(now: Instant) -> Self {
        Self {
            value: 0.0,
            at: now,
        }
    }

    fn at(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * (-dt / TAU).exp()
    }

    fn tick(&mut self, now: Instant) {
        self.value = self.at(now) + 1.0 / TAU;
        self.at = now;
    }
}

/// One limited flow at this gateway: the service, or one client of it.
#[derive(Debug, Clone, Copy)]
struct Flow {
    demand: Rate,
    tokens: f64,
    refilled: Instant,
    /// What the other gateways publish of this flow's demand.
    others: f64,
}

impl Flow {
    /// A flow seen for the first time starts as one idle for long: its
    /// bucket full (`tokens`), so a new client may send its limit's burst
    /// at once, as one that comes back after a pause may.
    fn new(now: Instant, tokens: f64) -> Self {
        Self {
            demand: Rate::new(now),
            tokens: tokens.max(1.0),
            refilled: now,
            others: 0.0,
        }
    }

    /// This gateway's share of `limit` (requests per second).
    fn share(&self, limit: f64, now: Instant) -> f64 {
        let mine = self.demand.at(now);
        if mine + self.others <= 0.0 {
            return limit;
        }
        limit * mine / (mine + self.others)
    }

    /// Counts one request; `Err(wait)` if over this gateway's share.
    fn take(&mut self, limit: f64, burst_secs: f64, now: Instant) -> Result<(), Duration> {
        self.demand.tick(now);
        let share = self.share(limit, now).max(f64::MIN_POSITIVE);
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * share).min((share * burst_secs).max(1.0));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / share).min(3600.0),
            ))
        }
    }
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// The per-client limit (rather than the service's).
    pub per_client: bool,
    /// The limit refused.
    pub limit: RateLimit,
    /// When a request would be admitted again.
    pub retry_after: Duration,
}

/// The limits of one service at this gateway (shared by its workers).
#[derive(Debug, Default)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total_limit: Option<RateLimit>,
    client_limit: Option<RateLimit>,
    total: Option<Flow>,
    clients: HashMap<IpAddr, Flow>,
    admitted: u64,
    refused: u64,
}

/// What the limiter shows on `/stats`, the dashboard and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LimitFigures {
    /// This gateway's share of the service's limit now (req/s).
    pub share: Option<f64>,
    /// Demand seen here (req/s).
    pub demand: f64,
    /// Demand the other gateways publish (req/s).
    pub others_demand: f64,
    /// Requests admitted / refused here since start.
    pub admitted: u64,
    /// Requests answered 429 here since start.
    pub refused: u64,
    /// Clients tracked here.
    pub clients: usize,
}

impl Limiter {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the limits the service announces now.
    pub fn set_limits(&self, total: Option<RateLimit>, per_client: Option<RateLimit>) {
        let mut s = self.state();
        s.total_limit = total;
        s.client_limit = per_client;
        if total.is_none() {
            s.total = None;
        }
        if per_client.is_none() {
            s.clients.clear();
        }
    }

    /// Whether any limit applies.
    pub fn is_on(&self) -> bool {
        let s = self.state();
        s.total_limit.is_some() || s.client_limit.is_some()
    }

    /// Admits one request from `client`, or says which limit refuses it.
    /// A request refused by the client's limit is not counted against the
    /// service's.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        let mut guard = self.state();
        let s = &mut *guard;
        if let Some(limit) = s.client_limit {
            let rate = limit.per_second();
            // Full: a new client shares one flow with every other newcomer
            // until the sync task's prune makes room — never a prune here,
            // on the request path.
            let key = if s.clients.len() >= MAX_CLIENTS && !s.clients.contains_key(&client) {
                OVERFLOW
            } else {
                client
            };
            let flow = s
                .clients
                .entry(key)
                .or_insert_with(|| Flow::new(now, rate * CLIENT_BURST_SECS));
            if let Err(wait) = flow.take(rate, CLIENT_BURST_SECS, now) {
                s.refused += 1;
                return Err(Limited {
                    per_client: true,
                    limit,
                    retry_after: wait,
                });
            }
        }
        if let Some(limit) = s.total_limit {
            let rate = limit.per_second();
            let flow = s
                .total
                .get_or_insert_with(|| Flow::new(now, rate * SERVICE_BURST_SECS));
            if let Err(wait) = flow.take(rate, SERVICE_BURST_SECS, now) {
                s.refused += 1;
                return Err(Limited {
                    per_client: false,
                    limit,
                    retry_after: wait,
                });
            }
        }
        s.admitted += 1;
        Ok(())
    }

    /// What this gateway publishes of the service's demand: `None` when no
    /// limit applies.
    pub fn published(&self, now: Instant) -> Option<Demand> {
        let mut s = self.state();
        if s.total_limit.is_none() && s.client_limit.is_none() {
            return None;
        }
        let mut demand = Demand {
            total: s.total.map_or(0.0, |f| f.demand.at(now)),
            clients: Vec::new(),
        };
        if let Some(limit) = s.client_limit {
            let rate = limit.per_second();
            prune(&mut s.clients, now);
            let mut busy: Vec<(IpAddr, f64)> = s
                .clients
                .iter()
                .map(|(ip, f)| (*ip, f.demand.at(now)))
                .filter(|(_, d)| *d >= rate * PUBLISH_CLIENT_ABOVE)
                .collect();
            busy.sort_by(|a, b| b.1.total_cmp(&a.1));
            busy.truncate(MAX_PUBLISHED_CLIENTS);
            demand.clients = busy;
        }
        Some(demand)
    }

    /// Takes what the other gateways publish (each one's [`Self::published`]).
    pub fn set_others<'a>(&self, published: impl Iterator<Item = &'a Demand>) {
        let mut total = 0.0;
        let mut clients: HashMap<IpAddr, f64> = HashMap::new();
        for demand in published {
            total += demand.total;
            for (ip, d) in &demand.clients {
                *clients.entry(*ip).or_default() += d;
            }
        }
        let mut s = self.state();
        if let Some(f) = &mut s.total {
            f.others = total;
        }
        for (ip, flow) in &mut s.clients {
            flow.others = clients.get(ip).copied().unwrap_or(0.0);
        }
    }

    /// Its figures now.
    pub fn figures(&self, now: Instant) -> LimitFigures {
        let s = self.state();
        LimitFigures {
            share: s.total_limit.map(|l| {
                s.total
                    .map_or(l.per_second(), |f| f.share(l.per_second(), now))
            }),
            demand: s.total.map_or(0.0, |f| f.demand.at(now)),
            others_demand: s.total.map_or(0.0, |f| f.others),
            admitted: s.admitted,
            refused: s.refused,
            clients: s.clients.len(),
        }
    }
}

/// Forgets clients that are idle (demand decayed away, bucket full).
/// Run by the sync task every [`SYNC_EVERY`], never by a request.
fn prune(clients: &mut HashMap<IpAddr, Flow>, now: Instant) {
    clients.retain(|_, f| f.demand.at(now) > 0.01 || f.others > 0.0);
    if clients.len() >= MAX_CLIENTS {
        // Still full of active clients: drop the idlest half (the median
        // found in linear time, not by sorting).
        let mut demands: Vec<f64> = clients.values().map(|f| f.demand.at(now)).collect();
        let middle = demands.len() / 2;
        let (_, cut, _) = demands.select_nth_unstable_by(middle, f64::total_cmp);
        let cut = *cut;
        clients.retain(|_, f| f.demand.at(now) > cut);
    }
}

/// Where newcomers are counted while the client map is full.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The key a client is limited by: an IPv4 address as it is (an
/// IPv4-mapped IPv6 one too); an IPv6 address by its first `v6_prefix` bits
/// (`SHOAL_RATE_LIMIT_IPV6_PREFIX`, 64 by default: a host usually gets a
/// whole /64, and rotating addresses inside it buys no new burst).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u32) -> Option<RateLimit> {
        Some(RateLimit {
            requests: n,
            per_secs: 1,
        })
    }

    /// Offers `rps` for `secs` to `l` from one client; returns admitted.
    fn offer(l: &Limiter, rps: u32, secs: u32, start: Instant, ip: IpAddr) -> (u32, Instant) {
        let step = Duration::from_secs_f64(1.0 / f64::from(rps));
        let mut now = start;
        let mut admitted = 0;
        for _ in 0..rps * secs {
            now += step;
            if l.check(ip, now).is_ok() {
                admitted += 1;
            }
        }
        (admitted, now)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn one_gateway_admits_the_limit_and_says_when_to_retry() {
        let l = Limiter::default();
        l.set_limits(limit(100), None);
        let (_, now) = offer(&l, 1000, 2, Instant::now(), IP);
        let (admitted, now) = offer(&l, 1000, 10, now, IP);
        assert!((950..=1050).contains(&admitted), "{admitted}");
        let refused = l.check(IP, now).unwrap_err();
        assert!(!refused.per_client);
        assert!(
            refused.retry_after <= Duration::from_millis(20),
            "{refused:?}"
        );
    }

    #[test]
    fn gateways_admit_shares_of_the_limit_in_proportion_to_demand() {
        // Three gateways see 600, 300 and 100 req/s; together they admit
        // the limit of 300, each in proportion to what it sees.
        let gws: Vec<Limiter> = (0..3).map(|_| Limiter::default()).collect();
        for g in &gws {
            g.set_limits(limit(300), None);
        }
        let rps = [600u32, 300, 100];
        let start = Instant::now();
        let mut admitted = [0u32; 3];
        // 10 s in 250 ms rounds, publishing between rounds.
        for round in 0..40 {
            let t0 = start + SYNC_EVERY * round;
            for (i, g) in gws.iter().enumerate() {
                let n = rps[i] / 4;
                let step = SYNC_EVERY / n;
                for k in 1..=n {
                    if g.check(IP, t0 + step * k).is_ok() && round >= 8 {
                        admitted[i] += 1;
                    }
                }
            }
            let now = t0 + SYNC_EVERY;
            let published: Vec<Demand> = gws.iter().map(|g| g.published(now).unwrap()).collect();
            for (i, g) in gws.iter().enumerate() {
                g.set_others(
                    published
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, p)| p),
                );
            }
        }
        let total: u32 = admitted.iter().sum();
        // 8 s measured at 300 req/s.
        assert!((2160..=2640).contains(&total), "{admitted:?} = {total}");
        assert!(
            admitted[0] > admitted[1] && admitted[1] > admitted[2],
            "{admitted:?}"
        );
    }

    #[test]
    fn a_client_over_its_limit_is_refused_and_others_are_not() {
        let l = Limiter::default();
        l.set_limits(None, limit(10));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let (admitted, now) = offer(&l, 100, 5, Instant::now(), IP);
        // 10/s, and a bucket of one second's worth.
        assert!((48..=62).contains(&admitted), "{admitted}");
        let refused = l.check(IP, now).unwrap_err();
        assert!(refused.per_client);
        assert!(l.check(other, now).is_ok());
        // Its demand is published; an idle client is forgotten.
        let published = l.published(now).unwrap();
        assert_eq!(published.clients.first().map(|c| c.0), Some(IP));
        let later = now + Duration::from_secs(30);
        l.published(later);
        assert_eq!(l.figures(later).clients, 0);
    }

    #[test]
    fn a_new_client_may_send_its_burst_at_once() {
        let l = Limiter::default();
        l.set_limits(None, limit(5));
        let now = Instant::now();
        for n in 0..5 {
            assert!(l.check(IP, now).is_ok(), "request {n} of a new client");
        }
        assert!(l.check(IP, now).unwrap_err().per_client);
    }

    #[test]
    fn other_gateways_demands_add_up() {
        let l = Limiter::default();
        l.set_limits(limit(10), limit(5));
        let now = Instant::now();
        assert!(l.check(IP, now).is_ok());
        let others = [
            Demand {
                total: 3.0,
                clients: vec![(IP, 2.0)],
            },
            Demand {
                total: 1.5,
                clients: vec![(IP, 0.5)],
            },
        ];
        l.set_others(others.iter());
        let f = l.figures(now);
        assert!((f.others_demand - 4.5).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_v4_as_they_are() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        let key = |s: &str, bits| client_key(ip(s), bits);
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), ip("2001:db8:1:2::"));
        assert_eq!(key("2001:db8:1:2:bbbb::9", 64), ip("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:3::1", 64), key("2001:db8:1:2::1", 64));
        assert_eq!(key("2001:db8:1:2:aaaa::1", 128), ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), ip("2001:db8:1::"));
        assert_eq!(key("10.1.2.3", 64), ip("10.1.2.3"));
        assert_eq!(key("::ffff:10.1.2.3", 64), ip("10.1.2.3"));
    }

    #[test]
    fn rotating_addresses_inside_a_64_buys_no_new_burst() {
        let l = Limiter::default();
        l.set_limits(None, limit(5));
        let now = Instant::now();
        let mut admitted = 0;
        for host in 1..=50u16 {
            let rotated: IpAddr = format!("2001:db8:7:7::{host:x}")
                .parse()
                .expect("an address");
            if l.check(client_key(rotated, 64), now).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5, "one burst for the whole /64");
        let elsewhere: IpAddr = "2001:db8:7:8::1".parse().expect("an address");
        assert!(
            l.check(client_key(elsewhere, 64), now).is_ok(),
            "another /64 has its own"
        );
    }

    #[test]
    fn when_the_client_map_is_full_newcomers_share_one_flow_until_the_sync_prunes() {
        let l = Limiter::default();
        l.set_limits(None, limit(5));
        let t0 = Instant::now();
        {
            let mut s = l.state();
            for i in 0..MAX_CLIENTS as u32 {
                s.clients.insert(IpAddr::V4(i.into()), Flow::new(t0, 5.0));
            }
        }
        // Full: newcomers are admitted from one shared burst, the map does
        // not grow and nothing is pruned on the request path.
        let newcomer = |i: u32| {
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            ))
        };
        let admitted = (0..20)
            .filter(|i| l.check(newcomer(*i), t0).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(l.figures(t0).clients, MAX_CLIENTS + 1);
        // The sync task's round forgets the idle ones; a newcomer is its own again.
        let later = t0 + Duration::from_secs(30);
        l.published(later);
        assert!(l.figures(later).clients < 10);
        assert!(l.check(newcomer(99), later).is_ok());
    }
}
