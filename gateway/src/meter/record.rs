//! The counters every answer adds to, per service and per instance: a few
//! relaxed atomic increments on counters that only grow. `report::stats`
//! turns snapshots of them into the figures gateways share.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use shoal_node::{BUCKETS, Counts, Histogram, bucket};

const REQUESTS: usize = 0;
const CLIENT_ERRORS: usize = 1;
const SERVER_ERRORS: usize = 2;
const GATEWAY_502: usize = 3;
const GATEWAY_503: usize = 4;
const GATEWAY_504: usize = 5;

/// Counters of one service or instance, since start.
#[derive(Debug)]
pub struct Recorder {
    counts: [AtomicU64; 6],
    latency: Box<[AtomicU64]>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            counts: Default::default(),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Recorder {
    /// Counts an answer: `status`, made by the gateway or not, and how long
    /// the instance took (`None` when no instance answered).
    pub fn record(&self, status: u16, gateway_made: bool, latency: Option<Duration>) {
        self.counts[REQUESTS].fetch_add(1, Relaxed);
        let class = match (gateway_made, status) {
            (true, 502) => Some(GATEWAY_502),
            (true, 503) => Some(GATEWAY_503),
            (true, 504) => Some(GATEWAY_504),
            (_, 400..=499) => Some(CLIENT_ERRORS),
            (_, 500..=599) => Some(SERVER_ERRORS),
            _ => None,
        };
        if let Some(class) = class {
            self.counts[class].fetch_add(1, Relaxed);
        }
        if let Some(latency) = latency {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency[bucket(micros)].fetch_add(1, Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let c = |i: usize| self.counts[i].load(Relaxed);
        Snapshot {
            counts: Counts {
                requests: c(REQUESTS),
                client_errors: c(CLIENT_ERRORS),
                server_errors: c(SERVER_ERRORS),
                gateway_502: c(GATEWAY_502),
                gateway_503: c(GATEWAY_503),
                gateway_504: c(GATEWAY_504),
                retries: 0,
            },
            latency: self.latency.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The counts.
    pub counts: Counts,
    latency: Vec<u64>,
}

impl Snapshot {
    /// The figures of the window from `earlier` to `self`.
    pub fn figures_since(&self, earlier: Option<&Snapshot>) -> (Counts, Histogram) {
        let Some(earlier) = earlier else {
            return (self.counts, Histogram::from_counts(&self.latency));
        };
        let window: Vec<u64> = self
            .latency
            .iter()
            .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        (
            self.counts.since(&earlier.counts),
            Histogram::from_counts(&window),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classed_and_latencies_bucketed() {
        let r = Recorder::default();
        r.record(200, false, Some(Duration::from_millis(2)));
        r.record(404, false, Some(Duration::from_millis(2)));
        r.record(500, false, Some(Duration::from_millis(40)));
        r.record(503, true, None);
        r.record(504, true, None);
        r.record(502, true, None);
        let s = r.snapshot();
        assert_eq!(s.counts.requests, 6);
        assert_eq!((s.counts.client_errors, s.counts.server_errors), (1, 1));
        assert_eq!(
            (
                s.counts.gateway_502,
                s.counts.gateway_503,
                s.counts.gateway_504
            ),
            (1, 1, 1)
        );
        assert_eq!(s.counts.errors(), 4);
        assert_eq!(
            s.latency.iter().sum::<u64>(),
            3,
            "only answers have a latency"
        );
    }
}
