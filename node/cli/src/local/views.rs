//! What the gateways of the local cluster see, read from their admin ports
//! (`GET /members`, a [`MembersDoc`]): is a replica in rotation everywhere,
//! is a killed one out of every view.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_node::{Health, MembersDoc};

/// How long a restarted replica may take to be back in rotation before it
/// is reported as not back.
pub const BACK_LIMIT: Duration = Duration::from_secs(60);
/// How often the views are read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The gateways' admin ports, and what was measured from them.
pub struct Views {
    gateways: Vec<IpAddr>,
    admin_port: u16,
    logs: PathBuf,
    client: crate::http::HttpClient,
    /// Seconds from a death to back in rotation, for every restart.
    back: Mutex<Vec<f64>>,
}

impl Views {
    /// Views of the gateways at `gateways` (admin port `admin_port`).
    pub fn new(gateways: Vec<IpAddr>, admin_port: u16, logs: PathBuf) -> Self {
        Self {
            gateways,
            admin_port,
            logs,
            client: crate::http::http_client(),
            back: Mutex::default(),
        }
    }

    /// The first gateway (`localhost` in the default layout).
    pub fn first_gateway(&self) -> IpAddr {
        self.gateways[0]
    }

    /// Whether a GET of `url` answers 2xx within `timeout`, on this
    /// struct's pooled connections.
    pub async fn answers(&self, url: &str, timeout: Duration) -> bool {
        crate::http::http_get_with(&self.client, url, timeout)
            .await
            .is_ok_and(|(status, _)| status.is_success())
    }

    /// The view of one gateway, if it answers within a second.
    pub async fn fetch(&self, gateway: IpAddr) -> Option<MembersDoc> {
        let url = format!("http://{gateway}:{}/members", self.admin_port);
        let (status, body) = crate::http::http_get_with(&self.client, &url, Duration::from_secs(1))
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    /// The view of every gateway; `None` for those that do not answer.
    pub async fn all(&self) -> Vec<Option<MembersDoc>> {
        let mut views = Vec::with_capacity(self.gateways.len());
        for gw in &self.gateways {
            views.push(self.fetch(*gw).await);
        }
        views
    }

    /// Waits until every gateway answers and lists `host` as `up` with a
    /// start at or after `since_ms` (the process started after a death),
    /// for at most [`BACK_LIMIT`]; returns when. For a gateway this
    /// includes its own answer and its own view.
    pub async fn wait_back(&self, host: &str, since_ms: u64) -> Option<Instant> {
        let deadline = Instant::now() + BACK_LIMIT;
        while Instant::now() < deadline {
            let views = self.all().await;
            let back = views.iter().all(|v| {
                v.as_ref().is_some_and(|doc| {
                    doc.members().any(|m| {
                        m.host == host && m.started_ms >= since_ms && m.health == Health::Up
                    })
                })
            });
            if back {
                return Some(Instant::now());
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Waits until no answering gateway lists `host` as `up` with a start
    /// before `killed_ms` (the process that was killed), for at most
    /// `limit`; returns when.
    pub async fn wait_gone(&self, host: &str, killed_ms: u64, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let views = self.all().await;
            let answering = views.iter().flatten().count();
            let listed = views.iter().flatten().any(|doc| {
                doc.members()
                    .any(|m| m.host == host && m.started_ms < killed_ms && m.health == Health::Up)
            });
            if answering > 0 && !listed {
                return Some(Instant::now());
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Counts a measured time from death to back in rotation.
    pub fn record_back(&self, secs: f64) {
        self.back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(secs);
    }

    /// Every measured time from death to back in rotation.
    pub fn back_times(&self) -> Vec<f64> {
        self.back.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where to look when `name` misbehaves.
    pub fn log_hint(&self, name: &str) -> String {
        self.logs.join(format!("{name}.log")).display().to_string()
    }
}

/// `p50 1.10 s, max 1.52 s` of `times` (seconds); `—` when empty.
pub fn summary(times: &[f64]) -> String {
    if times.is_empty() {
        return "—".to_string();
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[(sorted.len() - 1) / 2];
    let max = sorted[sorted.len() - 1];
    format!("p50 {p50:.2} s, max {max:.2} s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_gives_median_and_max() {
        assert_eq!(summary(&[]), "—");
        assert_eq!(summary(&[3.0, 1.0, 2.0]), "p50 2.00 s, max 3.00 s");
        assert_eq!(summary(&[1.0, 2.0]), "p50 1.00 s, max 2.00 s");
    }
}
