//! What gateways share to obtain one ACME certificate together, in gossip:
//! - `acme-http01:{token}`: the key authorization of an HTTP-01 challenge,
//!   published by the gateway that orders, so that whichever gateway the
//!   CA reaches answers it;
//! - `acme-order:{name}`: a gateway's claim to order the certificate
//!   `name` (its domains, comma-separated), with when it claimed: the
//!   oldest live claim orders, the others wait;
//! - `acme-cert:{name}`: a gateway holds the certificate — its end of
//!   validity, the digest of the sealed copy and where to fetch it. The
//!   copy itself (a few KB: more than a datagram) is fetched from the
//!   holder's admin port, sealed with the key only gateways have.
//!
//! Every value is small; only gateways write them, and only while they
//! order or hold a certificate.

use chitchat::Chitchat;

use crate::member::MemberId;

const CHALLENGE: &str = "acme-http01:";
const ORDER: &str = "acme-order:";
const CERT: &str = "acme-cert:";

/// A gateway's announcement that it holds certificate `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAnnouncement {
    /// The end of the certificate's validity, ms since the epoch.
    pub not_after_ms: u64,
    /// The hex SHA-256 of the sealed copy.
    pub digest: String,
    /// Where the sealed copy is served (`ip:port` of the admin listener).
    pub fetch_from: String,
}

impl CertAnnouncement {
    fn encode(&self) -> String {
        format!("{} {} {}", self.not_after_ms, self.digest, self.fetch_from)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let not_after_ms = parts.next()?.parse().ok()?;
        let digest = parts.next()?.to_string();
        let fetch_from = parts.next()?.to_string();
        Some(Self {
            not_after_ms,
            digest,
            fetch_from,
        })
    }
}

/// Publishes (`Some`) or withdraws (`None`) the key authorization of
/// challenge `token`.
pub(crate) fn set_challenge(c: &mut Chitchat, token: &str, key_authorization: Option<&str>) {
    let key = format!("{CHALLENGE}{token}");
    match key_authorization {
        Some(value) => c.self_node_state().set(key, value),
        None => c.self_node_state().delete(&key),
    }
}

/// The key authorization any live member publishes for `token`.
pub(crate) fn challenge(c: &Chitchat, token: &str) -> Option<String> {
    let key = format!("{CHALLENGE}{token}");
    c.live_nodes()
        .filter_map(|id| c.node_state(id))
        .find_map(|state| state.get(&key).map(str::to_string))
}

/// Claims (`Some(since_ms)`) or gives up (`None`) the ordering of `name`.
pub(crate) fn set_claim(c: &mut Chitchat, name: &str, since_ms: Option<u64>) {
    let key = format!("{ORDER}{name}");
    match since_ms {
        Some(since) => c.self_node_state().set(key, since),
        None => c.self_node_state().delete(&key),
    }
}

/// The live claims to order `name`: who, since when; the first orders
/// (oldest claim, then the smallest member id).
pub(crate) fn claims(c: &Chitchat, name: &str) -> Vec<(MemberId, u64)> {
    let key = format!("{ORDER}{name}");
    let mut claims: Vec<(MemberId, u64)> = c
        .live_nodes()
        .filter_map(|id| {
            let since = c.node_state(id)?.get(&key)?.parse().ok()?;
            Some((MemberId::from(id), since))
        })
        .collect();
    claims.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    claims
}

/// Announces (`Some`) or withdraws (`None`) this member's copy of `name`.
pub(crate) fn set_cert(c: &mut Chitchat, name: &str, held: Option<&CertAnnouncement>) {
    let key = format!("{CERT}{name}");
    match held {
        Some(a) => c.self_node_state().set(key, a.encode()),
        None => c.self_node_state().delete(&key),
    }
}

/// The live members' announced copies of `name`, newest first.
pub(crate) fn certs(c: &Chitchat, name: &str) -> Vec<(MemberId, CertAnnouncement)> {
    let key = format!("{CERT}{name}");
    let mut held: Vec<(MemberId, CertAnnouncement)> = c
        .live_nodes()
        .filter(|id| *id != c.self_chitchat_id())
        .filter_map(|id| {
            let a = CertAnnouncement::decode(c.node_state(id)?.get(&key)?)?;
            Some((MemberId::from(id), a))
        })
        .collect();
    held.sort_by_key(|h| std::cmp::Reverse(h.1.not_after_ms));
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_round_trips_and_garbage_is_none() {
        let a = CertAnnouncement {
            not_after_ms: 1_800_000_000_000,
            digest: "ab12".into(),
            fetch_from: "10.0.9.3:8761".into(),
        };
        assert_eq!(CertAnnouncement::decode(&a.encode()), Some(a));
        assert_eq!(CertAnnouncement::decode("soon ab 1.2.3.4:1"), None);
        assert_eq!(CertAnnouncement::decode("12"), None);
    }
}
