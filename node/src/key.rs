//! Cluster keys: 32 random bytes, written as base64, that seal the gossip.
//!
//! A [`KeyRing`] holds one or more keys so a cluster can rotate without
//! downtime: the first key seals what this member sends, every key is tried
//! to open what it receives. Rotation is: add the new key second everywhere,
//! then first everywhere, then drop the old one.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;

/// Length of a cluster key in bytes (ChaCha20-Poly1305 key).
pub const KEY_LEN: usize = 32;

/// One cluster key. Its `Debug` output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl ClusterKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        // ThreadRng is a CSPRNG seeded from the operating system.
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as base64, the form `SHOAL_CLUSTER_KEY` takes.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for ClusterKey {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD
            .decode(raw.trim())
            .map_err(|_| "a base64 key made by `shoal keygen` (not valid base64)".to_string())?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "a base64 key of {KEY_LEN} bytes made by `shoal keygen` (this one decodes to {} bytes)",
                b.len()
            )
        })?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

/// The keys a member holds: the first seals, all open.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<ClusterKey>,
}

impl KeyRing {
    /// A ring of the given keys, or `None` when there are none.
    pub fn new(keys: Vec<ClusterKey>) -> Option<Self> {
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The key that seals outgoing packets.
    pub fn sealing(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// Every key, the sealing one first.
    pub fn all(&self) -> &[ClusterKey] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_base64() {
        let key = ClusterKey::generate();
        let parsed: ClusterKey = key.to_base64().parse().unwrap();
        assert_eq!(parsed, key);
        assert_ne!(ClusterKey::generate(), key, "two keys must differ");
    }

    #[test]
    fn short_or_garbled_keys_are_refused_with_reason() {
        let short = STANDARD.encode([1u8; 16]);
        let err = short.parse::<ClusterKey>().unwrap_err();
        assert!(err.contains("decodes to 16 bytes"), "{err}");
        let err = "not base64!!".parse::<ClusterKey>().unwrap_err();
        assert!(err.contains("not valid base64"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ClusterKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_base64()));
    }
}
