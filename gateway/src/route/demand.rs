//! The rate limits' gossip: every [`SYNC_EVERY`], this gateway publishes its
//! demand for each limited service and takes the other gateways' (node's
//! typed [`Demand`] keys), so each limiter admits its share.

use std::sync::Arc;

use shoal_node::{Cluster, Demand};
use tokio::time::Instant;

use crate::meter::metrics::{Metrics, ServiceLabel};
use crate::route::limit::SYNC_EVERY;
use crate::route::table::Upstreams;

/// Publishes this gateway's demand for every limited service and takes the
/// other gateways', every [`SYNC_EVERY`], for as long as the gateway runs.
pub fn spawn_sync(upstreams: Arc<Upstreams>, metrics: Arc<Metrics>, cluster: Cluster) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let table = upstreams.snapshot();
            let now = Instant::now();
            let mine: Vec<(String, Demand)> = table
                .services()
                .filter_map(|s| Some((s.name.to_string(), s.limiter.published(now)?)))
                .collect();
            let limited = !mine.is_empty();
            cluster.publish_demand(mine).await;
            if !limited {
                continue;
            }
            let theirs = cluster.demands().await;
            for service in table.services() {
                if !service.limiter.is_on() {
                    continue;
                }
                service.limiter.set_others(
                    theirs
                        .iter()
                        .filter(|(s, _)| **s == *service.name)
                        .map(|(_, d)| d),
                );
                if let Some(share) = service.limiter.figures(now).share {
                    metrics
                        .rate_limit_share
                        .get_or_create(&ServiceLabel {
                            service: service.name.to_string(),
                        })
                        .set(share);
                }
            }
        }
    });
}
