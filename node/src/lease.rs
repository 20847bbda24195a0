//! Instances registered through Eureka's REST API, kept as leases in gossip.
//!
//! A gateway that receives a registration, heartbeat, cancel or status change
//! writes the instance's whole [`Lease`] under the key `eureka:{instanceId}`
//! in its **own** gossip state (chitchat lets a member write only its own
//! keys). Several gateways may hold a copy of the same instance; the copy
//! with the highest `version` wins (ties: the later renewal, then the holder's
//! id), and every write takes the newest copy it can see and adds one, like a
//! Lamport clock — so the newest operation wins on every gateway whatever the
//! gateways' clocks say.
//!
//! A lease is routable while it is not cancelled and its last renewal is less
//! than `durationInSecs` old. A cancel is a newer copy with `cancelled` set (a
//! tombstone), kept until the lease would have run out, so an older copy on
//! another gateway cannot bring the instance back. Copies held by a gateway
//! that died are still read (chitchat keeps a dead member's state until it is
//! collected) and are adopted by one live gateway, so a lease survives the
//! gateway that took it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

/// Prefix of the gossip keys holding leases.
pub const KEY_PREFIX: &str = "eureka:";

/// The largest encoded lease, in bytes. One key-value must fit in one gossip
/// datagram (`SHOAL_GOSSIP_MTU`, at least 1,200 bytes, minus the seal and the
/// message header); a registration whose record is larger is refused.
pub const MAX_LEASE_BYTES: usize = 1000;

/// The gossip key of an instance.
pub fn key(instance_id: &str) -> String {
    format!("{KEY_PREFIX}{instance_id}")
}

/// Prefix of the gossip keys holding renewals: a client's heartbeat (every
/// 30 s) changes nothing of its lease but the time, so a gateway writes
/// that alone — `eureka.renewed:{instanceId}` = `{version}:{renewed_ms}` —
/// not the whole record again (~50 bytes instead of ~600 at every member).
pub const RENEWAL_PREFIX: &str = "eureka.renewed:";

/// The gossip key of an instance's renewals at one gateway.
pub fn renewal_key(instance_id: &str) -> String {
    format!("{RENEWAL_PREFIX}{instance_id}")
}

/// A renewal of version `version` of a lease at `renewed_ms`, as stored.
pub fn renewal(version: u64, renewed_ms: u64) -> String {
    format!("{version}:{renewed_ms}")
}

/// Reads a renewal: `(version, renewed_ms)`.
pub fn parse_renewal(text: &str) -> Option<(u64, u64)> {
    let (version, ms) = text.split_once(':')?;
    Some((version.parse().ok()?, ms.parse().ok()?))
}

/// An instance's status, as Eureka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Ready for traffic.
    Up,
    /// Unhealthy.
    Down,
    /// Not ready yet.
    Starting,
    /// Taken out of traffic on purpose.
    OutOfService,
    /// No status (an override that is not set).
    Unknown,
}

impl Status {
    /// Eureka's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Starting => "STARTING",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}: expected UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "UP" => Status::Up,
            "DOWN" => Status::Down,
            "STARTING" => Status::Starting,
            "OUT_OF_SERVICE" => Status::OutOfService,
            "UNKNOWN" => Status::Unknown,
            _ => return Err(UnknownStatus(s.to_string())),
        })
    }
}

/// What an Eureka client said about its instance when it registered (the
/// fields shoal keeps and shows back on reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// `10.0.9.5:orders:8080` (falls back to the host name).
    pub instance_id: String,
    /// Application name, upper case (`ORDERS`).
    pub app: String,
    /// Host name as the client gave it.
    pub host_name: String,
    /// Address traffic goes to.
    pub ip_addr: IpAddr,
    /// Port traffic goes to.
    pub port: u16,
    /// Secure port, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_port: Option<u16>,
    /// Status the client reports.
    pub status: Status,
    /// Status set by an operator (`PUT …/status`), `UNKNOWN` when none.
    pub overridden_status: Status,
    /// `vipAddress`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vip_address: String,
    /// `secureVipAddress`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secure_vip_address: String,
    /// `dataCenterInfo.name` (`MyOwn`, `Amazon`).
    pub data_center: String,
    /// Free-form metadata (keys are valid XML names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `homePageUrl`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub home_page_url: String,
    /// `statusPageUrl`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_page_url: String,
    /// `healthCheckUrl`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_check_url: String,
    /// How often the client renews (`leaseInfo.renewalIntervalInSecs`).
    pub renewal_interval_secs: u32,
    /// How long a lease lasts without renewal (`leaseInfo.durationInSecs`).
    pub duration_secs: u32,
    /// The client's `lastDirtyTimestamp`, ms.
    #[serde(default)]
    pub dirty_ms: u64,
}

impl Registration {
    /// The status that decides routing: the override when one is set.
    pub fn effective_status(&self) -> Status {
        match self.overridden_status {
            Status::Unknown => self.status,
            set => set,
        }
    }

    /// Service name in shoal (`orders`): where `/api/{service}/**` routes.
    pub fn service(&self) -> String {
        self.app.to_ascii_lowercase()
    }
}

/// A registration and its lease: what one gateway holds in gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The instance.
    #[serde(flatten)]
    pub registration: Registration,
    /// First registration, ms since the epoch.
    pub registered_ms: u64,
    /// Last renewal (or registration), ms.
    pub renewed_ms: u64,
    /// Last change other than a renewal, ms.
    pub updated_ms: u64,
    /// Grows by one on every write, on whichever gateway.
    pub version: u64,
    /// Cancelled: a tombstone that hides older copies until it runs out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

/// Why a lease operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No live lease of that instance (heartbeats then re-register).
    #[error("no instance {id} of {app} is registered")]
    NotFound {
        /// The application.
        app: String,
        /// The instance id.
        id: String,
    },
    /// The id is a native shoal member's.
    #[error(
        "instance id {0} belongs to a shoal member that joined the cluster itself; \
         an Eureka registration cannot replace it: register under another instanceId"
    )]
    Native(String),
    /// A new registration over the cluster's cap.
    #[error(
        "the cluster holds {held} Eureka registrations, its most (SHOAL_EUREKA_MAX_LEASES={max}): \
         cancel those no longer used, or raise the limit on the gateways"
    )]
    TooMany {
        /// Live leases held.
        held: usize,
        /// The cap.
        max: usize,
    },
    /// A new registration over the application's cap.
    #[error(
        "the cluster holds {held} Eureka registrations of {app}, its most for one application \
         (SHOAL_EUREKA_MAX_LEASES_PER_APP={max}): cancel those no longer used, or raise the limit \
         on the gateways"
    )]
    TooManyOfApp {
        /// The application.
        app: String,
        /// Its live leases held.
        held: usize,
        /// The cap.
        max: usize,
    },
    /// The record would not fit in one gossip datagram.
    #[error(
        "the registration takes {len} bytes once encoded, more than the {max} a gossip \
         record may hold: send less metadata or shorter URLs"
    )]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Most Eureka leases the cluster takes: every lease is a record in its
/// gateway's gossip state, which every member holds (up to
/// `MAX_LEASE_BYTES` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLimits {
    /// In all (`SHOAL_EUREKA_MAX_LEASES`, default 1000).
    pub total: usize,
    /// Of one application (`SHOAL_EUREKA_MAX_LEASES_PER_APP`, default 200).
    pub per_app: usize,
}

impl Default for LeaseLimits {
    fn default() -> Self {
        Self {
            total: 1000,
            per_app: 200,
        }
    }
}

/// A change asked of a lease, by Eureka's REST operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// `POST apps/{APP}`: a new lease, or a fresh one for a known instance
    /// (an operator's override is kept, as Eureka does).
    Register(Box<Registration>),
    /// `PUT apps/{APP}/{ID}`: renew; with `status`, the client's own status
    /// changes too.
    Renew {
        /// The `status` query parameter, if any.
        status: Option<Status>,
    },
    /// `DELETE apps/{APP}/{ID}`.
    Cancel,
    /// `PUT apps/{APP}/{ID}/status?value=…`.
    Override(Status),
    /// `DELETE apps/{APP}/{ID}/status[?value=…]`: back to the client's
    /// status, or to `value` when given.
    ClearOverride(Option<Status>),
    /// `PUT apps/{APP}/{ID}/metadata?k=v…`, merged.
    Metadata(BTreeMap<String, String>),
}

/// [`Lease::decoded`]'s table: each stored text's lease, by the text's
/// address.
struct Decoded {
    by_text: Option<HashMap<usize, DecodedText>>,
    swept_at: usize,
}

/// A stored text (held weakly) and its lease, if it is one.
type DecodedText = (Weak<str>, Option<Arc<Lease>>);

impl Lease {
    /// When the lease runs out, ms since the epoch.
    pub fn deadline_ms(&self) -> u64 {
        self.renewed_ms
            .saturating_add(u64::from(self.registration.duration_secs) * 1000)
    }

    /// Whether the instance is registered at `now_ms` (not cancelled, not run out).
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.cancelled && now_ms < self.deadline_ms()
    }

    /// The record as stored in gossip.
    pub fn encode(&self) -> Result<String, LeaseError> {
        let text = serde_json::to_string(self).unwrap_or_default();
        if text.len() > MAX_LEASE_BYTES {
            return Err(LeaseError::TooLarge {
                len: text.len(),
                max: MAX_LEASE_BYTES,
            });
        }
        Ok(text)
    }

    /// Reads a record from gossip; `None` when it is not one of ours.
    pub fn decode(text: &str) -> Option<Lease> {
        serde_json::from_str(text).ok()
    }

    /// [`Lease::decode`] once per stored text: the view, the upkeep and
    /// each registration's cap check read every lease held by any member,
    /// and a record's text is one shared copy until it is written again
    /// (chitchat interns values). 1,000 registrations decoded ~500,000
    /// records before (each new one counted the live ones); now 1,000.
    pub fn decoded(text: &Arc<str>) -> Option<Arc<Lease>> {
        static CACHE: Mutex<Decoded> = Mutex::new(Decoded {
            by_text: None,
            swept_at: 0,
        });
        // The address names the text while its entry holds a weak handle:
        // the allocation is not reused meanwhile.
        let addr = Arc::as_ptr(text).cast::<u8>() as usize;
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let cache = &mut *cache;
        let by_text = cache.by_text.get_or_insert_with(HashMap::new);
        if let Some((weak, lease)) = by_text.get(&addr) {
            if weak.upgrade().is_some_and(|held| Arc::ptr_eq(&held, text)) {
                return lease.clone();
            }
        }
        let lease = Lease::decode(text).map(Arc::new);
        by_text.insert(addr, (Arc::downgrade(text), lease.clone()));
        // Texts no longer held anywhere are swept when the table doubles.
        if by_text.len() > (2 * cache.swept_at).max(1024) {
            by_text.retain(|_, (weak, _)| weak.strong_count() > 0);
            cache.swept_at = by_text.len();
        }
        lease
    }

    /// Applies `op` to the newest copy (`None` if none is known, live or
    /// not) at `now_ms`, giving the copy to write.
    pub fn apply(
        current: Option<&Lease>,
        app: &str,
        id: &str,
        op: LeaseOp,
        now_ms: u64,
    ) -> Result<Lease, LeaseError> {
        let version = current.map_or(1, |c| c.version + 1);
        let live =
            current.filter(|c| c.is_live(now_ms) && c.registration.app.eq_ignore_ascii_case(app));
        let not_found = || LeaseError::NotFound {
            app: app.to_string(),
            id: id.to_string(),
        };
        let mut next = match (op, live) {
            (LeaseOp::Register(registration), live) => {
                let mut registration = *registration;
                let registered_ms = live.map_or(now_ms, |c| c.registered_ms);
                if let Some(c) = live {
                    registration.overridden_status = c.registration.overridden_status;
                }
                Lease {
                    registration,
                    registered_ms,
                    renewed_ms: now_ms,
                    updated_ms: now_ms,
                    version,
                    cancelled: false,
                }
            }
            (_, None) => return Err(not_found()),
            (LeaseOp::Renew { status }, Some(c)) => {
                let mut next = c.clone();
                next.renewed_ms = now_ms;
                if let Some(status) = status.filter(|s| *s != c.registration.status) {
                    next.registration.status = status;
                    next.updated_ms = now_ms;
                }
                next
            }
            (LeaseOp::Cancel, Some(c)) => {
                let mut next = c.clone();
                next.cancelled = true;
                // The tombstone lasts as long as the lease it ends could have.
                next.renewed_ms = now_ms;
                next.updated_ms = now_ms;
                next
            }
            (LeaseOp::Override(status), Some(c)) => {
                let mut next = c.clone();
                next.registration.overridden_status = status;
                next.updated_ms = now_ms;
                next
            }
            (LeaseOp::ClearOverride(status), Some(c)) => {
                let mut next = c.clone();
                next.registration.overridden_status = Status::Unknown;
                if let Some(status) = status {
                    next.registration.status = status;
                }
                next.updated_ms = now_ms;
                next
            }
            (LeaseOp::Metadata(metadata), Some(c)) => {
                let mut next = c.clone();
                next.registration.metadata.extend(metadata);
                next.updated_ms = now_ms;
                next
            }
        };
        next.version = version;
        next.encode()?;
        Ok(next)
    }

    /// Whether `self` (held by `holder`) wins over `other` (held by
    /// `other_holder`): higher version, then later renewal, then holder id.
    pub fn beats(&self, holder: &str, other: &Lease, other_holder: &str) -> bool {
        (self.version, self.renewed_ms, holder) > (other.version, other.renewed_ms, other_holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Health, Member};
    use crate::testkit::registration;

    fn registered(now: u64) -> Lease {
        Lease::apply(
            None,
            "ORDERS",
            "i",
            LeaseOp::Register(Box::new(registration("10.0.9.5:orders:8080"))),
            now,
        )
        .unwrap()
    }

    #[test]
    fn register_renew_cancel_walk_the_versions() {
        let first = registered(1_000);
        assert_eq!((first.version, first.registered_ms), (1, 1_000));
        assert!(first.is_live(90_999) && !first.is_live(91_000));
        let renewed = Lease::apply(
            Some(&first),
            "orders",
            "i",
            LeaseOp::Renew { status: None },
            60_000,
        )
        .unwrap();
        assert_eq!((renewed.version, renewed.renewed_ms), (2, 60_000));
        assert_eq!(renewed.registered_ms, 1_000);
        assert!(renewed.is_live(149_999));
        let cancelled =
            Lease::apply(Some(&renewed), "ORDERS", "i", LeaseOp::Cancel, 61_000).unwrap();
        assert!(cancelled.cancelled && !cancelled.is_live(61_001));
        assert!(cancelled.beats("gw-a", &renewed, "gw-b"));
        // Nothing but a new registration brings it back.
        let err = Lease::apply(
            Some(&cancelled),
            "ORDERS",
            "i",
            LeaseOp::Renew { status: None },
            62_000,
        )
        .unwrap_err();
        assert!(matches!(err, LeaseError::NotFound { .. }));
        let back = Lease::apply(
            Some(&cancelled),
            "ORDERS",
            "i",
            LeaseOp::Register(Box::new(registration("i"))),
            63_000,
        )
        .unwrap();
        assert!(back.is_live(63_001) && back.version == 4 && back.registered_ms == 63_000);
    }

    #[test]
    fn expired_or_other_app_is_not_found() {
        let lease = registered(0);
        for (app, now) in [("ORDERS", 90_000), ("BILLING", 10)] {
            let err = Lease::apply(Some(&lease), app, "i", LeaseOp::Cancel, now).unwrap_err();
            assert!(matches!(err, LeaseError::NotFound { .. }), "{app} {now}");
        }
    }

    #[test]
    fn an_override_wins_until_cleared_and_survives_reregistration() {
        let lease = registered(0);
        let out = Lease::apply(
            Some(&lease),
            "ORDERS",
            "i",
            LeaseOp::Override(Status::OutOfService),
            1,
        )
        .unwrap();
        let arc = std::sync::Arc::new(out.clone());
        assert_eq!(
            Member::from_lease(&arc, "127.0.0.1:1".parse().unwrap()).health,
            Health::Draining
        );
        let again = Lease::apply(
            Some(&out),
            "ORDERS",
            "i",
            LeaseOp::Register(Box::new(registration("i"))),
            2,
        )
        .unwrap();
        assert_eq!(again.registration.effective_status(), Status::OutOfService);
        let cleared =
            Lease::apply(Some(&again), "ORDERS", "i", LeaseOp::ClearOverride(None), 3).unwrap();
        assert_eq!(cleared.registration.effective_status(), Status::Up);
        let member = Member::from_lease(
            &std::sync::Arc::new(cleared),
            "127.0.0.1:1".parse().unwrap(),
        );
        assert_eq!(member.health, Health::Up);
        assert_eq!(member.service, "orders");
        assert_eq!(member.addr, "10.0.9.5:8080".parse().unwrap());
        assert_eq!(member.id.node, "eureka:i");
    }

    #[test]
    fn a_registrations_weight_and_version_metadata_are_its_policy() {
        let lease = Lease::apply(
            Some(&registered(0)),
            "ORDERS",
            "i",
            LeaseOp::Metadata(BTreeMap::from([
                ("weight".into(), "10%".into()),
                ("version".into(), "v2".into()),
            ])),
            1,
        )
        .unwrap();
        let m = Member::from_lease(&std::sync::Arc::new(lease), "127.0.0.1:1".parse().unwrap());
        assert_eq!(m.policy.weight, crate::policy::Weight::Share(100));
        assert_eq!(m.policy.label.as_deref(), Some("v2"));
    }

    #[test]
    fn metadata_merges_and_heartbeat_status_applies() {
        let lease = registered(0);
        let meta = Lease::apply(
            Some(&lease),
            "ORDERS",
            "i",
            LeaseOp::Metadata(BTreeMap::from([("zone".into(), "a".into())])),
            1,
        )
        .unwrap();
        assert_eq!(meta.registration.metadata.len(), 2);
        let down = Lease::apply(
            Some(&meta),
            "ORDERS",
            "i",
            LeaseOp::Renew {
                status: Some(Status::Down),
            },
            2,
        )
        .unwrap();
        assert_eq!(down.registration.status, Status::Down);
        assert_eq!(down.updated_ms, 2);
    }

    #[test]
    fn a_stored_text_is_decoded_once_and_an_equal_new_one_again() {
        let lease = registered(5);
        let text: Arc<str> = Arc::from(lease.encode().unwrap());
        let first = Lease::decoded(&text).expect("a lease");
        assert_eq!(*first, lease);
        let again = Lease::decoded(&Arc::clone(&text)).expect("a lease");
        assert!(Arc::ptr_eq(&first, &again), "one decode per stored text");
        // Another copy of the same text (written again) is read on its own.
        let copy: Arc<str> = Arc::from(&*text);
        let other = Lease::decoded(&copy).expect("a lease");
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(*other, lease);
        assert_eq!(Lease::decoded(&Arc::from("up")), None);
    }

    #[test]
    fn records_round_trip_and_oversized_ones_are_refused() {
        let lease = registered(5);
        let text = lease.encode().unwrap();
        assert!(
            text.len() < 700,
            "a Spring-sized record is {} bytes",
            text.len()
        );
        assert_eq!(Lease::decode(&text), Some(lease.clone()));
        assert_eq!(Lease::decode("up"), None);
        let mut big = registration("i");
        big.metadata
            .insert("blob".into(), "x".repeat(MAX_LEASE_BYTES));
        let err =
            Lease::apply(None, "ORDERS", "i", LeaseOp::Register(Box::new(big)), 0).unwrap_err();
        assert!(matches!(err, LeaseError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn statuses_parse_in_any_case() {
        assert_eq!("out_of_service".parse(), Ok(Status::OutOfService));
        assert_eq!(" UP ".parse(), Ok(Status::Up));
        assert!("SLEEPY".parse::<Status>().is_err());
    }
}
