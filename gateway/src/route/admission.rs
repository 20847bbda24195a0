//! Admission: may this request go to its service at all? In order: the
//! service has an instance `up`, its circuit breaker lets the request
//! through, and the gateway is under its in-flight limit. A refusal is a
//! fast 503 that names the reason; nothing is queued. An admitted request
//! counts as a deposit in the service's retry budget, and its outcome
//! ([`Verdict`]) is fed back to the breaker when it is settled.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::route::outcome::{Budget, Permit};
use crate::route::table::ServiceState;

/// What an answer says of the service's health, for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An instance answered, not with a 5xx.
    Success,
    /// An instance answered 5xx, failed or timed out.
    Failure,
    /// The gateway answered by itself (no instance pickable, a path it
    /// cannot forward): nothing was learnt of the service.
    None,
}

/// A request let through to its service, until its verdict is settled.
pub struct Admitted {
    service: Arc<ServiceState>,
    permit: Permit,
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The service has no instance `up`.
    NoInstance,
    /// Its circuit breaker is open.
    BreakerOpen,
    /// The gateway is at `SHOAL_MAX_CONNECTIONS`.
    OverLimit,
}

/// Admits a request for `service`, or says why not. The slot is the
/// request's place under `SHOAL_MAX_CONNECTIONS`: held until the answer's
/// headers are sent — or, for an upgrade, for the tunnel's life.
pub fn admit(
    in_flight: &Arc<Semaphore>,
    service: &Arc<ServiceState>,
) -> Result<(Admitted, OwnedSemaphorePermit), Refusal> {
    if service.endpoints.is_empty() {
        return Err(Refusal::NoInstance);
    }
    let now = Instant::now();
    let Some(permit) = service.breaker.try_acquire(now) else {
        service
            .metrics
            .set_breaker(service.breaker.state(now).code());
        return Err(Refusal::BreakerOpen);
    };
    let Ok(slot) = in_flight.clone().try_acquire_owned() else {
        service.breaker.release(permit);
        return Err(Refusal::OverLimit);
    };
    service.budget.deposit();
    Ok((
        Admitted {
            service: service.clone(),
            permit,
        },
        slot,
    ))
}

impl Admitted {
    /// Feeds the outcome to the breaker. The gateway's own answers
    /// ([`Verdict::None`]) are not the service's failures: they only give
    /// back a trial permit unused.
    pub fn settle(&self, verdict: Verdict) {
        let service = &self.service;
        let now = Instant::now();
        match verdict {
            Verdict::Success => service.breaker.record(self.permit, true, now),
            Verdict::Failure => service.breaker.record(self.permit, false, now),
            Verdict::None => service.breaker.release(self.permit),
        }
        service
            .metrics
            .set_breaker(service.breaker.state(now).code());
    }
}
