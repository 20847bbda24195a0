//! `shoal local --chaos story-service:5s`: SIGKILL a random running replica
//! of a service every few seconds, measure how long until it is out of every
//! gateway's view and back in rotation, and report at the end — the local
//! twin of `scripts/chaos` on Swarm. The load is yours: run any client
//! against `localhost:4000` meanwhile.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;

use super::supervise::Replica;
use super::views::{BACK_LIMIT, Views, now_ms, summary};

/// One `--chaos SERVICE:EVERY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosSpec {
    /// Service whose replicas are killed.
    pub service: String,
    /// Time between kills.
    pub every: Duration,
}

/// Parses `story-service:5s`.
pub fn parse_spec(raw: &str) -> Result<ChaosSpec, String> {
    let (service, every) = raw
        .rsplit_once(':')
        .ok_or_else(|| format!("{raw:?}: expected SERVICE:EVERY, e.g. story-service:5s"))?;
    let every = shoal_node::parse_duration(every)
        .ok_or_else(|| format!("{raw:?}: {every:?} is not a duration such as 500ms, 5s or 1m"))?;
    if every < Duration::from_millis(100) {
        return Err(format!("{raw:?}: kill at most every 100ms"));
    }
    if service.is_empty() {
        return Err(format!("{raw:?}: no service before the ':'"));
    }
    Ok(ChaosSpec {
        service: service.to_string(),
        every,
    })
}

/// One kill and what followed.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Replica killed.
    pub name: String,
    /// Seconds after the chaos started.
    pub at: f64,
    /// Seconds until it was out of every gateway's view.
    pub gone: Option<f64>,
    /// Seconds until its restart was in rotation on every gateway.
    pub back: Option<f64>,
}

/// The kills of every `--chaos`, measured as they complete.
#[derive(Default)]
pub struct Chaos {
    kills: Mutex<Vec<Kill>>,
    pending: Mutex<u32>,
}

impl Chaos {
    /// Kills a random running replica among `replicas` every `spec.every`,
    /// forever (cancelled by the caller).
    pub async fn run(
        self: Arc<Self>,
        spec: ChaosSpec,
        replicas: Vec<Arc<Replica>>,
        views: Arc<Views>,
        started: Instant,
    ) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + spec.every, spec.every);
        loop {
            tick.tick().await;
            let running: Vec<&Arc<Replica>> = replicas
                .iter()
                .filter(|r| r.status().pid.is_some())
                .collect();
            if running.is_empty() {
                continue;
            }
            let victim = running[rand::rng().random_range(0..running.len())].clone();
            let killed_ms = now_ms();
            let killed = Instant::now();
            let Some((pid, _)) = victim.chaos_kill() else {
                continue;
            };
            let at = started.elapsed().as_secs_f64();
            println!("chaos: SIGKILL {} (pid {pid})", victim.spec.name);
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let (chaos, views) = (self.clone(), views.clone());
            tokio::spawn(async move {
                let name = victim.spec.name.clone();
                let gone = views
                    .wait_gone(&name, killed_ms, BACK_LIMIT)
                    .await
                    .map(|t| t.duration_since(killed).as_secs_f64());
                let back = views
                    .wait_back(&name, killed_ms)
                    .await
                    .map(|t| t.duration_since(killed).as_secs_f64());
                let fmt = |v: Option<f64>| v.map_or("—".to_string(), |s| format!("{s:.2} s"));
                println!(
                    "chaos: {name} out of every gateway view after {}, back in rotation after {}",
                    fmt(gone),
                    fmt(back)
                );
                chaos.push(Kill {
                    name,
                    at,
                    gone,
                    back,
                });
            });
        }
    }

    fn push(&self, kill: Kill) {
        self.kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(kill);
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    }

    /// Kills whose measurement is not finished.
    pub fn pending(&self) -> u32 {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The final report.
    pub fn report(&self, specs: &[ChaosSpec], ran: Duration) -> String {
        let mut kills = self.kills.lock().unwrap_or_else(|p| p.into_inner()).clone();
        kills.sort_by(|a, b| a.at.total_cmp(&b.at));
        let what: Vec<String> = specs
            .iter()
            .map(|s| format!("{} every {:?}", s.service, s.every))
            .collect();
        let gone: Vec<f64> = kills.iter().filter_map(|k| k.gone).collect();
        let back: Vec<f64> = kills.iter().filter_map(|k| k.back).collect();
        let mut out = format!(
            "chaos report: {} kills in {:.1} s ({})\n  out of every gateway view after a kill: {}\n  back in rotation after a kill:          {}\n",
            kills.len() + self.pending() as usize,
            ran.as_secs_f64(),
            what.join(", "),
            summary(&gone),
            summary(&back),
        );
        let not_back: Vec<&Kill> = kills.iter().filter(|k| k.back.is_none()).collect();
        if not_back.is_empty() && self.pending() == 0 {
            out.push_str("  every killed replica came back in rotation\n");
        } else {
            let _ = writeln!(
                out,
                "  not back (or still measuring at the stop): {}",
                not_back
                    .iter()
                    .map(|k| format!("{} killed at {:.1} s", k.name, k.at))
                    .chain(
                        (self.pending() > 0).then(|| format!("{} still measuring", self.pending()))
                    )
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out.push_str("  kills:\n");
        for k in &kills {
            let fmt = |v: Option<f64>| v.map_or("—".to_string(), |s| format!("{s:.2} s"));
            let _ = writeln!(
                out,
                "    {:>6.1} s  {:<20} out of every view after {}, back after {}",
                k.at,
                k.name,
                fmt(k.gone),
                fmt(k.back)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_expected() {
        assert_eq!(
            parse_spec("story-service:5s"),
            Ok(ChaosSpec {
                service: "story-service".into(),
                every: Duration::from_secs(5)
            })
        );
        assert!(
            parse_spec("story-service")
                .unwrap_err()
                .contains("SERVICE:EVERY")
        );
        assert!(
            parse_spec("story-service:soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_spec(":5s").unwrap_err().contains("no service"));
        assert!(parse_spec("gateway:10ms").unwrap_err().contains("100ms"));
    }
}
