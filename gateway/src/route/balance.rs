//! Balance: pick one instance of a service for the next attempt.
//!
//! Power of two choices over a peak-EWMA cost, as linkerd2-proxy does: pick
//! two eligible instances at random and send to the cheaper, where cost =
//! latency average × (requests in flight + 1). The latency average jumps up
//! at once on a slow answer (peak) and decays with time, also while the
//! instance is not used, so a replica that was slow is probed again later.
//!
//! Two costs within a small margin count as equal, and then the instance
//! furthest behind its fair share wins: idle, equal replicas share requests
//! evenly (the classic demo where `/service/host` alternates) instead of
//! the marginally fastest taking two thirds of them.
//!
//! Weights (`SHOAL_WEIGHT`) enter twice, as in stride scheduling: each
//! instance has a *pass* that grows by its stride (1 / its weight) each time
//! it is picked, and of two equal-cost candidates the one with the smaller
//! pass wins. The service keeps a virtual clock (the largest pass a pick
//! started from); a pass further behind it than [`CREDIT`] strides counts
//! as that far behind only, so an instance that was avoided for a while
//! (slow, ejected, new) catches up by a few picks, not by a flood. And
//! costs are compared per unit of weight, so a canary at 10 % is not handed
//! more than its share just because it is less busy. Measured: one of four
//! replicas at `10%` gets 10.0 % of sequential requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use shoal_node::{Member, Weight};

use crate::route::sticky::StickyKeys;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How fast the latency average forgets (time constant).
const DECAY: Duration = Duration::from_secs(5);
/// Costs closer than this (relative) are a tie.
const TIE_RATIO: f64 = 2.0;
/// Costs closer than this (absolute, seconds) are a tie: loopback noise.
const TIE_ABSOLUTE: f64 = 0.005;
/// How many picks an instance may be owed: its pass counts as at most this
/// many of its strides behind the service's virtual clock.
const CREDIT: f64 = 4.0;

/// A service's virtual clock (f64 bits): the largest pass a pick started
/// from. Kept across table rebuilds with the service.
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

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
    pub stats: crate::meter::record::Recorder,
    /// Its place in the weighted share (f64 bits): grows by `stride` on
    /// every pick.
    pass: AtomicU64,
    /// 1 / its weight relative to its service's mean (f64 bits).
    stride: AtomicU64,
    /// The values of its sticky-session cookie: an HMAC of its member name
    /// under each key of the ring, the one to set first (see
    /// [`crate::route::sticky`]): it survives a restart at the same
    /// address, reveals nothing and cannot be forged.
    sticky_tokens: Box<[String]>,
}

#[derive(Debug)]
struct EndpointState {
    /// Latency average in seconds; 0 until the first observation.
    ewma: f64,
    last_observed: Option<Instant>,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl Endpoint {
    /// A fresh endpoint for `member`, its sticky tokens made with `keys`.
    pub fn new(member: Arc<Member>, keys: &StickyKeys) -> Self {
        let host = http::HeaderValue::from_str(&member.addr.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        Self {
            host,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(EndpointState {
                ewma: 0.0,
                last_observed: None,
                consecutive_failures: 0,
                ejected_until: None,
                times_ejected: 0,
            }),
            stats: crate::meter::record::Recorder::default(),
            gone: AtomicBool::new(false),
            gone_notify: Notify::new(),
            pass: AtomicU64::new(0f64.to_bits()),
            stride: AtomicU64::new(1f64.to_bits()),
            sticky_tokens: keys.tokens(&member.id.node),
            member,
        }
    }

    /// The sticky cookie's value to set for it.
    pub fn sticky_token(&self) -> &str {
        self.sticky_tokens.first().map_or("", String::as_str)
    }

    /// Whether a sticky cookie of `token` pins it (made under any key of
    /// the ring).
    pub fn pinned_by(&self, token: &str) -> bool {
        self.sticky_tokens.iter().any(|t| t == token)
    }

    /// Its weight relative to its service's mean (1 for equal weights).
    pub fn relative_weight(&self) -> f64 {
        1.0 / load_f64(&self.stride)
    }

    /// Its pass as the next pick sees it: at most [`CREDIT`] strides
    /// behind the clock.
    fn effective_pass(&self, clock: f64) -> f64 {
        let stride = load_f64(&self.stride);
        load_f64(&self.pass).max(clock - CREDIT * stride)
    }

    /// Whether it carries the version label `label`.
    pub fn has_label(&self, label: &str) -> bool {
        self.member.policy.label.as_deref() == Some(label)
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

    /// Cost of sending one more request now, per unit of weight.
    pub fn cost(&self, now: Instant) -> f64 {
        let s = self.state();
        let ewma = s.ewma * decay_weight(s.last_observed, now);
        ewma * f64::from(self.in_flight() + 1) * load_f64(&self.stride)
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

/// Which instances may take an attempt: not ejected, not gone, under the
/// per-instance limit, not in `exclude` (those tried already), carrying
/// `label` if one is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Eligible<'a> {
    /// Instances not to pick.
    pub exclude: &'a [SocketAddr],
    /// Requests in flight an instance may have (`SHOAL_MAX_CONNECTIONS_PER_INSTANCE`).
    pub max_in_flight: u32,
    /// The version label asked for.
    pub label: Option<&'a str>,
    /// The time ejections are judged at.
    pub now: Instant,
}

impl Eligible<'_> {
    /// Whether `e` may take the attempt.
    pub fn admits(&self, e: &Endpoint) -> bool {
        !self.exclude.contains(&e.addr())
            && !e.is_ejected(self.now)
            && e.in_flight() < self.max_in_flight
            && !e.is_gone()
            && self.label.is_none_or(|l| e.has_label(l))
    }
}

/// Picks among the `eligible` of `endpoints` by power of two choices.
pub fn pick(
    endpoints: &[Arc<Endpoint>],
    clock: &Clock,
    eligible: Eligible<'_>,
) -> Option<Arc<Endpoint>> {
    // Two distinct eligible endpoints, uniformly, in one pass and without
    // building a list (this runs on every request): reservoir sampling.
    let mut rng = rand::rng();
    let mut two: [Option<&Arc<Endpoint>>; 2] = [None, None];
    let candidates = endpoints.iter().filter(|e| eligible.admits(e));
    for (i, e) in candidates.enumerate() {
        if i < 2 {
            two[i] = Some(e);
        } else {
            let j = rng.random_range(0..=i);
            if j < 2 {
                two[j] = Some(e);
            }
        }
    }
    let v = load_f64(&clock.0);
    let chosen = match two {
        [None, _] => return None,
        [Some(a), None] => a,
        [Some(a), Some(b)] => cheaper(a, b, v, eligible.now),
    };
    Some(picked(chosen, clock, v))
}

/// Counts a pick of `chosen`: its pass moves on by its stride, the clock
/// to where its pass started. Racing picks on other threads may both start
/// from the same pass: a share off by one pick, never a lost one.
fn picked(chosen: &Arc<Endpoint>, clock: &Clock, v: f64) -> Arc<Endpoint> {
    let start = chosen.effective_pass(v);
    store_f64(&chosen.pass, start + load_f64(&chosen.stride));
    // Passes are not negative: their bits order as the numbers do.
    clock
        .0
        .fetch_max(start.max(0.0).to_bits(), Ordering::Relaxed);
    chosen.clone()
}

/// Picks the eligible endpoint furthest behind its weighted share,
/// whatever its latency now: for pinning a new sticky-session client, whose
/// pin lasts the session and so should follow the long-run shares, not a
/// moment's load (failing instances are still out: ejection, `exclude`).
pub fn pick_fair(
    endpoints: &[Arc<Endpoint>],
    clock: &Clock,
    eligible: Eligible<'_>,
) -> Option<Arc<Endpoint>> {
    let v = load_f64(&clock.0);
    let chosen = endpoints
        .iter()
        .filter(|e| eligible.admits(e))
        .min_by(|a, b| a.effective_pass(v).total_cmp(&b.effective_pass(v)))?;
    Some(picked(chosen, clock, v))
}

fn cheaper<'a>(
    a: &'a Arc<Endpoint>,
    b: &'a Arc<Endpoint>,
    clock: f64,
    now: Instant,
) -> &'a Arc<Endpoint> {
    let (ca, cb) = (a.cost(now), b.cost(now));
    let (lo, hi) = if ca <= cb { (ca, cb) } else { (cb, ca) };
    if hi <= lo * TIE_RATIO || hi - lo <= TIE_ABSOLUTE {
        // Equal enough: the one furthest behind its share.
        return if a.effective_pass(clock) <= b.effective_pass(clock) {
            a
        } else {
            b
        };
    }
    if ca <= cb { a } else { b }
}

/// Sets the weights of one service's endpoints from what each announces:
/// relative weights as they are; a share (`10%`) turned into the relative
/// weight that gives it that share of the whole. Shares adding up to 100 %
/// or more are scaled down to leave 1 % to the others.
pub fn set_weights(endpoints: &[Arc<Endpoint>]) {
    if endpoints.is_empty() {
        return;
    }
    let (mut relative, mut shares) = (0.0, 0.0);
    for e in endpoints {
        match e.member.policy.weight {
            Weight::Relative(w) => relative += f64::from(w),
            Weight::Share(permille) => shares += f64::from(permille) / 1000.0,
        }
    }
    let scale = if shares >= 1.0 { 0.99 / shares } else { 1.0 };
    let effective = |e: &Endpoint| match e.member.policy.weight {
        Weight::Relative(w) => f64::from(w),
        Weight::Share(permille) if relative > 0.0 => {
            f64::from(permille) / 1000.0 * scale * relative / (1.0 - shares * scale)
        }
        // Only shares: they are relative to each other.
        Weight::Share(permille) => f64::from(permille),
    };
    let mean = endpoints.iter().map(|e| effective(e)).sum::<f64>() / endpoints.len() as f64;
    for e in endpoints {
        store_f64(&e.stride, mean / effective(e));
    }
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
