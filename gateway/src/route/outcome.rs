//! Outcome: what each answer teaches the gateway, read by the next pick.
//!
//! - [`RetryBudget`] per service (tower's `TpsBudget`): retries may add at
//!   most `ratio` of the requests plus `min_per_sec` per second over 10 s, so
//!   a sick service is not hammered by retry storms.
//! - [`Breaker`] per service, with Hystrix's defaults: at least 20 requests
//!   and 50 % errors in a 10 s window open it; while open every request is
//!   answered 503 at once; after 5 s one trial request goes through, and its
//!   outcome closes or re-opens the breaker.
//! - Outlier ejection: the failure streak and ejection time live on
//!   [`crate::route::balance::Endpoint`]; the rule that at most half a
//!   service is ejected is the table's
//!   ([`crate::route::table::ServiceState::note_failure`]), where the whole
//!   service is seen.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ResilienceConfig;

const BUCKETS: usize = 10;

/// Counts per time bucket over a sliding window of `BUCKETS` buckets.
#[derive(Debug)]
struct Window {
    bucket: Duration,
    start: Instant,
    /// (bucket index since start, a, b)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Window {
    fn new(span: Duration, now: Instant) -> Self {
        Self {
            bucket: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            start: now,
            buckets: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn slot(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let index =
            (now.saturating_duration_since(self.start).as_nanos() / self.bucket.as_nanos()) as u64;
        let slot = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if slot.0 != index {
            *slot = (index, 0, 0);
        }
        slot
    }

    fn add(&mut self, now: Instant, a: u64, b: u64) {
        let slot = self.slot(now);
        slot.1 += a;
        slot.2 += b;
    }

    fn sums(&self, now: Instant) -> (u64, u64) {
        let current =
            (now.saturating_duration_since(self.start).as_nanos() / self.bucket.as_nanos()) as u64;
        self.buckets
            .iter()
            .filter(|(i, _, _)| {
                *i != u64::MAX && current.saturating_sub(*i) < BUCKETS as u64 && *i <= current
            })
            .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y))
    }

    fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Retry budget of one service: tower's `TpsBudget` (retries may add at
/// most `SHOAL_RETRY_BUDGET_RATIO` of the requests, plus
/// `SHOAL_RETRY_BUDGET_MIN` per second, over 10 s).
pub type RetryBudget = tower::retry::budget::TpsBudget;

pub use tower::retry::budget::Budget;

/// The budget `config` asks for.
pub fn retry_budget(config: &ResilienceConfig) -> RetryBudget {
    RetryBudget::new(
        Duration::from_secs(10),
        config.retry_min_per_sec,
        config.retry_ratio as f32,
    )
}

/// State of a breaker, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused at once.
    Open,
    /// One trial request is allowed.
    HalfOpen,
}

impl BreakerState {
    /// The breaker gauge's value: 0 closed, 1 open, 2 half-open.
    pub fn code(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct BreakerInner {
    /// (requests, errors) per bucket.
    window: Window,
    open_until: Option<Instant>,
    /// When the trial request of a half-open breaker started. A trial whose
    /// outcome never comes (client went away) expires after `open_time`.
    trial_since: Option<Instant>,
}

/// Circuit breaker of one service.
#[derive(Debug)]
pub struct Breaker {
    min_requests: u64,
    error_percent: u64,
    open_time: Duration,
    inner: Mutex<BreakerInner>,
}

/// Permission to send one request through a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// The breaker is closed.
    Normal,
    /// The breaker is half-open: this request decides.
    Trial,
}

impl Breaker {
    /// A closed breaker with the given settings.
    pub fn new(config: &ResilienceConfig, now: Instant) -> Self {
        Self {
            min_requests: config.breaker_min_requests.into(),
            error_percent: config.breaker_error_percent.into(),
            open_time: config.breaker_open_time,
            inner: Mutex::new(BreakerInner {
                window: Window::new(config.breaker_window, now),
                open_until: None,
                trial_since: None,
            }),
        }
    }

    /// Asks to send a request; `None` means answer 503 now.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut s = lock(&self.inner);
        match s.open_until {
            None => Some(Permit::Normal),
            Some(until) if now < until => None,
            Some(_) if s.trial_since.is_some_and(|t| now < t + self.open_time) => None,
            Some(_) => {
                s.trial_since = Some(now);
                Some(Permit::Trial)
            }
        }
    }

    /// Gives back a permit whose request taught nothing of the service (the
    /// gateway answered by itself): a trial permit lets the next request try.
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Trial {
            lock(&self.inner).trial_since = None;
        }
    }

    /// Records the outcome of a request sent under `permit`.
    pub fn record(&self, permit: Permit, success: bool, now: Instant) {
        let mut s = lock(&self.inner);
        match permit {
            Permit::Trial => {
                s.trial_since = None;
                if success {
                    s.open_until = None;
                    s.window.clear();
                } else {
                    s.open_until = Some(now + self.open_time);
                }
            }
            Permit::Normal => {
                s.window.add(now, 1, u64::from(!success));
                let (requests, errors) = s.window.sums(now);
                if s.open_until.is_none()
                    && requests >= self.min_requests
                    && errors * 100 >= self.error_percent * requests
                {
                    s.open_until = Some(now + self.open_time);
                }
            }
        }
    }

    /// The state now.
    pub fn state(&self, now: Instant) -> BreakerState {
        let s = lock(&self.inner);
        match s.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests;
