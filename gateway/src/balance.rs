//! Balance: pick one instance of a service for the next attempt.
//!
//! Power of two choices over a peak-EWMA cost, as linkerd2-proxy does: pick
//! two eligible instances at random and send to the cheaper, where cost =
//! latency average × (requests in flight + 1). The latency average jumps up
//! at once on a slow answer (peak) and decays with time, also while the
//! instance is not used, so a replica that was slow is probed again later.
//!
//! Two costs within a small margin count as equal, and then the instance
//! picked least recently wins: idle, equal replicas share requests evenly
//! (the classic demo where `/service/host` alternates) instead of the
//! marginally fastest taking two thirds of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use shoal_node::Member;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How fast the latency average forgets (time constant).
const DECAY: Duration = Duration::from_secs(5);
/// Costs closer than this (relative) are a tie.
const TIE_RATIO: f64 = 2.0;
/// Costs closer than this (absolute, seconds) are a tie: loopback noise.
const TIE_ABSOLUTE: f64 = 0.005;

/// One instance of a service as the gateway tracks it.
#[derive(Debug)]
pub struct Endpoint {
    /// The member behind it.
    pub member: Arc<Member>,
    /// `ip:port` as the `Host` header sent to it.
    pub host: http::HeaderValue,
    in_flight: AtomicU32,
    state: Mutex<EndpointState>,
    /// Set when its member left the view (dead, partitioned, replaced):
    /// attempts in flight to it give up at once.
    gone: AtomicBool,
    gone_notify: Notify,
    /// Attempts sent to it, for `/stats` and the dashboard.
    pub stats: crate::stats::Recorder,
}

#[derive(Debug)]
struct EndpointState {
    /// Latency average in seconds; 0 until the first observation.
    ewma: f64,
    last_observed: Option<Instant>,
    last_picked: Option<Instant>,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl Endpoint {
    /// A fresh endpoint for `member`.
    pub fn new(member: Arc<Member>) -> Self {
        let host = http::HeaderValue::from_str(&member.addr.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        Self {
            member,
            host,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(EndpointState {
                ewma: 0.0,
                last_observed: None,
                last_picked: None,
                consecutive_failures: 0,
                ejected_until: None,
                times_ejected: 0,
            }),
            stats: crate::stats::Recorder::default(),
            gone: AtomicBool::new(false),
            gone_notify: Notify::new(),
        }
    }

    /// Marks it gone from the cluster: what is in flight to it is
    /// abandoned (and retried elsewhere when that is safe).
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
        self.gone_notify.notify_waiters();
    }

    /// Whether its member left the view.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Completes when its member leaves the view.
    pub async fn gone(&self) {
        loop {
            // Registered before the check: a `mark_gone` in between wakes it.
            let notified = self.gone_notify.notified();
            if self.is_gone() {
                return;
            }
            notified.await;
        }
    }

    /// The instance address.
    pub fn addr(&self) -> SocketAddr {
        self.member.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        // A panic while holding this lock cannot leave the state invalid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Feeds a latency observation into the average.
    pub fn observe(&self, latency: Duration, now: Instant) {
        let mut s = self.state();
        let rtt = latency.as_secs_f64();
        s.ewma = if rtt > s.ewma {
            rtt
        } else {
            let w = decay_weight(s.last_observed, now);
            s.ewma * w + rtt * (1.0 - w)
        };
        s.last_observed = Some(now);
    }

    /// Cost of sending one more request now.
    pub fn cost(&self, now: Instant) -> f64 {
        let s = self.state();
        let ewma = s.ewma * decay_weight(s.last_observed, now);
        ewma * f64::from(self.in_flight() + 1)
    }

    /// Whether outlier ejection keeps it out of rotation now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.state().ejected_until.is_some_and(|until| until > now)
    }

    /// Records a success: the failure streak ends.
    pub fn record_success(&self) {
        self.state().consecutive_failures = 0;
    }

    /// Records a failure; returns the streak length.
    pub fn record_failure(&self) -> u32 {
        let mut s = self.state();
        s.consecutive_failures += 1;
        s.consecutive_failures
    }

    /// Ejects it for `base × times ejected` (capped at 10×).
    pub fn eject(&self, base: Duration, now: Instant) -> Duration {
        let mut s = self.state();
        s.times_ejected = (s.times_ejected + 1).min(10);
        let time = base * s.times_ejected;
        s.ejected_until = Some(now + time);
        s.consecutive_failures = 0;
        time
    }
}

fn decay_weight(last: Option<Instant>, now: Instant) -> f64 {
    match last {
        None => 0.0,
        Some(last) => {
            (-(now.saturating_duration_since(last).as_secs_f64()) / DECAY.as_secs_f64()).exp()
        }
    }
}

/// A request in flight on an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks among `endpoints` those eligible (not ejected, under the
/// per-instance limit, not in `exclude`), by power of two choices.
pub fn pick(
    endpoints: &[Arc<Endpoint>],
    exclude: &[SocketAddr],
    max_in_flight: u32,
    now: Instant,
) -> Option<Arc<Endpoint>> {
    // Two distinct eligible endpoints, uniformly, in one pass and without
    // building a list (this runs on every request): reservoir sampling.
    let mut rng = rand::rng();
    let mut two: [Option<&Arc<Endpoint>>; 2] = [None, None];
    let eligible = endpoints.iter().filter(|e| {
        !exclude.contains(&e.addr())
            && !e.is_ejected(now)
            && e.in_flight() < max_in_flight
            && !e.is_gone()
    });
    for (i, e) in eligible.enumerate() {
        if i < 2 {
            two[i] = Some(e);
        } else {
            let j = rng.random_range(0..=i);
            if j < 2 {
                two[j] = Some(e);
            }
        }
    }
    let chosen = match two {
        [None, _] => return None,
        [Some(a), None] => a,
        [Some(a), Some(b)] => cheaper(a, b, now),
    };
    chosen.state().last_picked = Some(now);
    Some(chosen.clone())
}

fn cheaper<'a>(a: &'a Arc<Endpoint>, b: &'a Arc<Endpoint>, now: Instant) -> &'a Arc<Endpoint> {
    let (ca, cb) = (a.cost(now), b.cost(now));
    let (lo, hi) = if ca <= cb { (ca, cb) } else { (cb, ca) };
    if hi <= lo * TIE_RATIO || hi - lo <= TIE_ABSOLUTE {
        // Equal enough: the one picked least recently (never picked first).
        // One lock at a time: holding a's lock while taking b's could
        // deadlock against a pick that compares them the other way round.
        let pa = a.state().last_picked;
        let pb = b.state().last_picked;
        return if pa <= pb { a } else { b };
    }
    if ca <= cb { a } else { b }
}

#[cfg(test)]
mod tests;
