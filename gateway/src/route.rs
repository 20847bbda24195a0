//! **route** — deciding where a request goes, without touching it: the
//! routing table rebuilt from each gossip view ([`table`]), path → service
//! ([`path`]), the balancer ([`balance`]: P2C over peak-EWMA cost with
//! weights), the instance a request asks for ([`affinity`]: version label,
//! sticky pin), admission ([`admission`]: an instance up, the breaker, the
//! in-flight limit), rate limits ([`limit`], shared across gateways by
//! [`demand`]), and what answers teach ([`outcome`]: breaker, retry budget).
//!
//! May import: [`crate::meter`], [`crate::config`] — nothing that speaks
//! HTTP to clients or instances.

pub mod admission;
pub mod affinity;
pub mod balance;
pub mod demand;
pub mod limit;
pub mod outcome;
pub mod path;
pub mod sticky;
pub mod table;
