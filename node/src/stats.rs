//! Traffic figures that gateways share by gossip, so that every gateway
//! shows the same cluster-wide numbers.
//!
//! Each gateway publishes, about once a second, one small record per
//! service it routed to (`stats:{service}`) and one per instance
//! (`stats:{service}@{ip:port}`), plus `stats` (its window) — typed here like
//! every gossip key. A record holds counts since the gateway started and a
//! latency histogram of the last [`WINDOW_SECS`] seconds with fixed
//! log-scale buckets, so histograms from many gateways **add up** and the
//! cluster's p50/p99 are percentiles of all requests, not an average of
//! percentiles. A record's size depends on how many buckets are in use, not
//! on the traffic: under 300 bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Key of a gateway's window record.
pub const WINDOW_KEY: &str = "stats";
/// Prefix of the per-service and per-instance records.
pub const KEY_PREFIX: &str = "stats:";
/// Seconds covered by the rate and the latency histogram.
pub const WINDOW_SECS: u32 = 10;
/// Histogram buckets: bucket `i` holds latencies up to `0.1 ms × 2^((i+1)/4)`
/// (19 % apart), the last one everything above ~100 s.
pub const BUCKETS: usize = 80;

/// The key of a service's record.
pub fn service_key(service: &str) -> String {
    format!("{KEY_PREFIX}{service}")
}

/// The key of an instance's record.
pub fn instance_key(service: &str, addr: &str) -> String {
    format!("{KEY_PREFIX}{service}@{addr}")
}

/// What a key names: `(service, Some(instance))` or `(service, None)`.
pub fn parse_key(key: &str) -> Option<(&str, Option<&str>)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    Some(match rest.split_once('@') {
        Some((service, addr)) => (service, Some(addr)),
        None => (rest, None),
    })
}

/// The bucket of a latency in microseconds.
pub fn bucket(micros: u64) -> usize {
    if micros <= 100 {
        return 0;
    }
    let quarters = 4.0 * (micros as f64 / 100.0).log2();
    (quarters.ceil() as usize)
        .saturating_sub(1)
        .min(BUCKETS - 1)
}

/// The upper bound of a bucket, in milliseconds.
pub fn bucket_upper_ms(i: usize) -> f64 {
    0.1 * 2f64.powf((i as f64 + 1.0) / 4.0)
}

/// A latency histogram over [`BUCKETS`] fixed buckets, sparse: only the
/// buckets in use are stored, as `"index:count,…"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(pub BTreeMap<u8, u64>);

impl Histogram {
    /// From dense bucket counts.
    pub fn from_counts(counts: &[u64]) -> Self {
        Self(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i.min(BUCKETS - 1) as u8, *c))
                .collect(),
        )
    }

    /// Adds another histogram into this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (i, c) in &other.0 {
            *self.0.entry(*i).or_default() += c;
        }
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The `q` quantile (0..=1) in milliseconds: the upper bound of the
    /// bucket where it falls (at most 19 % above the true value); `None`
    /// when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in &self.0 {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper_ms(usize::from(*i)));
            }
        }
        self.0
            .keys()
            .last()
            .map(|i| bucket_upper_ms(usize::from(*i)))
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::new();
        for (n, (i, c)) in self.0.iter().enumerate() {
            let _ = write!(text, "{}{i}:{c}", if n > 0 { "," } else { "" });
        }
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (i, c) = part
                .split_once(':')
                .ok_or_else(|| serde::de::Error::custom("histogram entry is not index:count"))?;
            let i: u8 = i.parse().map_err(serde::de::Error::custom)?;
            let c: u64 = c.parse().map_err(serde::de::Error::custom)?;
            if usize::from(i) >= BUCKETS {
                return Err(serde::de::Error::custom("histogram bucket out of range"));
            }
            *out.entry(i).or_default() += c;
        }
        Ok(Histogram(out))
    }
}

/// Counts by kind of answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests (or attempts, for an instance).
    #[serde(rename = "n", default)]
    pub requests: u64,
    /// 4xx answered by the instance.
    #[serde(rename = "c4", default, skip_serializing_if = "is_zero")]
    pub client_errors: u64,
    /// 5xx answered by the instance.
    #[serde(rename = "c5", default, skip_serializing_if = "is_zero")]
    pub server_errors: u64,
    /// 502 made by the gateway (no answer, connection refused, broken).
    #[serde(rename = "g2", default, skip_serializing_if = "is_zero")]
    pub gateway_502: u64,
    /// 503 made by the gateway (no instance up, breaker open, limits).
    #[serde(rename = "g3", default, skip_serializing_if = "is_zero")]
    pub gateway_503: u64,
    /// 504 made by the gateway (timeouts).
    #[serde(rename = "g4", default, skip_serializing_if = "is_zero")]
    pub gateway_504: u64,
    /// Retries sent (services only).
    #[serde(rename = "r", default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    /// Adds another count into this one.
    pub fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.client_errors += o.client_errors;
        self.server_errors += o.server_errors;
        self.gateway_502 += o.gateway_502;
        self.gateway_503 += o.gateway_503;
        self.gateway_504 += o.gateway_504;
        self.retries += o.retries;
    }

    /// Errors: 5xx of instances and the gateway's own 502/503/504 (4xx are
    /// the client's, as Hystrix counts).
    pub fn errors(&self) -> u64 {
        self.server_errors + self.gateway_502 + self.gateway_503 + self.gateway_504
    }

    /// `self - earlier`, for a window from two cumulative counts.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            client_errors: self.client_errors.saturating_sub(earlier.client_errors),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            gateway_502: self.gateway_502.saturating_sub(earlier.gateway_502),
            gateway_503: self.gateway_503.saturating_sub(earlier.gateway_503),
            gateway_504: self.gateway_504.saturating_sub(earlier.gateway_504),
            retries: self.retries.saturating_sub(earlier.retries),
        }
    }
}

/// One gateway's figures for one service or instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Since the gateway started.
    #[serde(rename = "t")]
    pub total: Counts,
    /// Over the last window.
    #[serde(rename = "w")]
    pub window: Counts,
    /// Latencies over the last window.
    #[serde(rename = "h")]
    pub latency: Histogram,
    /// In flight now.
    #[serde(rename = "f", default, skip_serializing_if = "is_zero_u32")]
    pub in_flight: u32,
    /// Breaker open (services) or instance ejected (instances) on this gateway.
    #[serde(rename = "x", default, skip_serializing_if = "std::ops::Not::not")]
    pub tripped: bool,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl Figures {
    /// Adds another gateway's figures.
    pub fn merge(&mut self, o: &Figures) {
        self.total.merge(&o.total);
        self.window.merge(&o.window);
        self.latency.merge(&o.latency);
        self.in_flight += o.in_flight;
        self.tripped |= o.tripped;
    }

    /// The record as published.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a published record.
    pub fn decode(text: &str) -> Option<Figures> {
        serde_json::from_str(text).ok()
    }
}

/// What a gateway publishes: its figures per service and per instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayStats {
    /// Seconds its window covers now (less than [`WINDOW_SECS`] just after start).
    pub window_secs: u32,
    /// Service → its figures and its instances' (`ip:port` → figures).
    pub services: BTreeMap<String, (Figures, BTreeMap<String, Figures>)>,
}

impl GatewayStats {
    /// The gossip key-values of these figures.
    pub fn key_values(&self) -> Vec<(String, String)> {
        let mut out = vec![(WINDOW_KEY.to_string(), self.window_secs.to_string())];
        for (service, (figures, instances)) in &self.services {
            out.push((service_key(service), figures.encode()));
            for (addr, figures) in instances {
                out.push((instance_key(service, addr), figures.encode()));
            }
        }
        out
    }
}

/// Figures merged over gateways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Summed figures.
    pub figures: Figures,
    /// Requests per second over the window, summed over gateways.
    pub rps: f64,
    /// How many gateways report it tripped (breaker open / ejected).
    pub tripped_on: u32,
    /// How many gateways' figures are in it.
    pub reported_by: u32,
}

impl Merged {
    fn add(&mut self, f: &Figures, window_secs: u32) {
        self.figures.merge(f);
        self.rps += f.window.requests as f64 / f64::from(window_secs.max(1));
        self.tripped_on += u32::from(f.tripped);
        self.reported_by += 1;
    }

    /// Error percentage over the window (0 when idle).
    pub fn error_pct(&self) -> f64 {
        let w = &self.figures.window;
        if w.requests == 0 {
            0.0
        } else {
            100.0 * w.errors() as f64 / w.requests as f64
        }
    }
}

/// Every gateway's figures, merged: what `/stats` shows.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// Gateways whose figures are included.
    pub gateways: u32,
    /// Service → merged figures and merged instances (`ip:port` → figures).
    pub services: BTreeMap<String, (Merged, BTreeMap<String, Merged>)>,
}

impl ClusterStats {
    /// Merges the published records of one gateway (its key-values).
    pub fn add_gateway<'a>(&mut self, key_values: impl Iterator<Item = (&'a str, &'a str)>) {
        let mut window_secs = None;
        let mut records = Vec::new();
        for (key, value) in key_values {
            if key == WINDOW_KEY {
                window_secs = value.parse::<u32>().ok();
            } else if let Some((service, instance)) = parse_key(key) {
                if let Some(f) = Figures::decode(value) {
                    records.push((service, instance, f));
                }
            }
        }
        let Some(window_secs) = window_secs else {
            return;
        };
        self.gateways += 1;
        for (service, instance, f) in records {
            let entry = self.services.entry(service.to_string()).or_default();
            match instance {
                None => entry.0.add(&f, window_secs),
                Some(addr) => entry
                    .1
                    .entry(addr.to_string())
                    .or_default()
                    .add(&f, window_secs),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_scale_and_bounds_hold() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(100), 0);
        for micros in [101, 250, 1_000, 3_300, 47_000, 1_000_000, 9_000_000] {
            let i = bucket(micros);
            let ms = micros as f64 / 1000.0;
            assert!(ms <= bucket_upper_ms(i) * 1.000_001, "{micros} in {i}");
            assert!(i == 0 || ms > bucket_upper_ms(i - 1), "{micros} in {i}");
            assert!(bucket_upper_ms(i) / ms < 1.19 + 1e-9, "{micros}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn merged_histograms_give_the_clusters_percentiles() {
        // Gateway A: 99 fast requests; gateway B: 1 slow one. The cluster's
        // p99 is fast, its max slow: not an average of two p99s.
        let mut a = vec![0u64; BUCKETS];
        a[bucket(1_000)] = 99;
        let mut b = vec![0u64; BUCKETS];
        b[bucket(500_000)] = 1;
        let mut h = Histogram::from_counts(&a);
        h.merge(&Histogram::from_counts(&b));
        assert_eq!(h.count(), 100);
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((1.0..1.2).contains(&p99), "{p99}");
        let max = h.quantile_ms(1.0).unwrap();
        assert!((500.0..600.0).contains(&max), "{max}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn records_round_trip_small_and_merge_over_gateways() {
        let mut counts = vec![0u64; BUCKETS];
        for (i, c) in counts.iter_mut().enumerate().skip(8).take(12) {
            *c = 1_000_000 + i as u64;
        }
        let f = Figures {
            total: Counts {
                requests: 123_456_789,
                server_errors: 12,
                gateway_503: 3,
                retries: 40,
                ..Counts::default()
            },
            window: Counts {
                requests: 20_000,
                server_errors: 2,
                ..Counts::default()
            },
            latency: Histogram::from_counts(&counts),
            in_flight: 17,
            tripped: false,
        };
        let text = f.encode();
        assert!(text.len() < 300, "{} bytes: {text}", text.len());
        assert_eq!(Figures::decode(&text), Some(f.clone()));
        assert_eq!(Figures::decode(r#"{"t":{},"w":{},"h":"99:1"}"#), None);

        let gw = GatewayStats {
            window_secs: 10,
            services: BTreeMap::from([(
                "story-service".to_string(),
                (
                    f.clone(),
                    BTreeMap::from([("10.0.9.5:8768".to_string(), f.clone())]),
                ),
            )]),
        };
        let kv = gw.key_values();
        let mut cluster = ClusterStats::default();
        for _ in 0..3 {
            cluster.add_gateway(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        // A member with no window record is not a gateway.
        cluster.add_gateway([("stats:x", text.as_str())].into_iter());
        assert_eq!(cluster.gateways, 3);
        let (service, instances) = &cluster.services["story-service"];
        assert_eq!(service.figures.total.requests, 3 * 123_456_789);
        assert_eq!(service.reported_by, 3);
        assert!((service.rps - 6_000.0).abs() < 1e-9);
        assert!((service.error_pct() - 0.01).abs() < 1e-9);
        assert_eq!(instances["10.0.9.5:8768"].figures.in_flight, 51);
    }

    #[test]
    fn keys_name_services_and_instances() {
        assert_eq!(parse_key("stats:a"), Some(("a", None)));
        assert_eq!(
            parse_key("stats:a@1.2.3.4:5"),
            Some(("a", Some("1.2.3.4:5")))
        );
        assert_eq!(parse_key("health"), None);
    }
}
