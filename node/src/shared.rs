//! The keys gateways share with each other: their traffic figures
//! ([`crate::stats`], `stats` and `stats:…`) and their rate-limit demand
//! ([`crate::demand`], `limit:…`). Each gateway replaces its own set whole
//! and reads everyone else's; services only carry them.

use chitchat::{Chitchat, NodeState};

use crate::demand::{self, Demand};
use crate::member::{Health, keys};
use crate::stats::{self, ClusterStats, GatewayStats};

/// Replaces this member's keys that start with `prefix` by `kv`: keys no
/// longer in it are deleted, values that did not change are not sent again.
fn replace_under(c: &mut Chitchat, prefix: &str, kv: Vec<(String, String)>) {
    let state = c.self_node_state();
    let gone: Vec<String> = state
        .iter_prefix(prefix)
        .map(|(k, _)| k)
        .filter(|k| !kv.iter().any(|(key, _)| key == k))
        .map(str::to_string)
        .collect();
    for key in gone {
        state.delete(&key);
    }
    for (key, value) in kv {
        state.set(key, value);
    }
}

/// The keys under `prefix` of every other live member that has not
/// announced `left`, as `(key, value)`.
fn read_under<'a>(
    c: &'a Chitchat,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    live_states(c, false).flat_map(move |state| {
        state
            .iter_prefix(prefix)
            .map(|(k, v)| (k, v.value.as_str()))
    })
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

/// Publishes this gateway's traffic figures, replacing its previous ones.
pub(crate) fn publish_stats(c: &mut Chitchat, figures: &GatewayStats) {
    // The window record (`stats`) is set with them, and never deleted.
    replace_under(c, stats::KEY_PREFIX, figures.key_values());
}

/// Every live gateway's figures (this one's included), merged.
pub(crate) fn cluster_stats(c: &Chitchat) -> ClusterStats {
    let mut merged = ClusterStats::default();
    for state in live_states(c, true) {
        merged.add_gateway(
            state
                .iter_prefix(stats::WINDOW_KEY)
                .map(|(k, v)| (k, v.value.as_str())),
        );
    }
    merged
}

/// Publishes this gateway's demand per service, replacing its previous one
/// (a service no longer limited is deleted).
pub(crate) fn publish_demand(c: &mut Chitchat, demands: Vec<(String, Demand)>) {
    let kv = demands
        .into_iter()
        .map(|(service, d)| (Demand::key(&service), d.encode()))
        .collect();
    replace_under(c, demand::KEY_PREFIX, kv);
}

/// The other gateways' demand, as `(service, demand)`.
pub(crate) fn demands(c: &Chitchat) -> Vec<(String, Demand)> {
    read_under(c, demand::KEY_PREFIX)
        .filter_map(|(k, v)| Some((Demand::service_of(k)?.to_string(), Demand::decode(v))))
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
