//! The sticky-session cookie's value: which instance a client is pinned
//! to, as an HMAC-SHA256 of the instance's member name under a key derived
//! from the cluster key (HKDF, the cluster id as context).
//!
//! Keyed, it reveals nothing of the instance (its address cannot be found
//! by hashing candidates, as an unkeyed hash allowed) and cannot be forged
//! to pick one; every gateway derives the same key, so a client keeps its
//! instance whichever gateway it reaches. A token is computed under every
//! key of the ring: during a key rotation (`[old, new]` → `[new, old]` →
//! `[new]`) a cookie made under the old key still finds its instance while
//! the old key is in the ring, and is set again under the new one; after
//! that, it pins the client anew once — never an error. Without a cluster
//! key (`SHOAL_INSECURE=true`) the key comes from the cluster id alone: as
//! open as the gossip itself.

use ring::{hkdf, hmac};
use shoal_node::KeyRing;

/// HKDF's salt: what the derived key is for, and the version of that use.
const SALT: &[u8] = b"shoal sticky-session cookie v1";
/// Bytes of the HMAC kept in the token (128 bits, 32 hex digits).
const TOKEN_BYTES: usize = 16;

/// The keys tokens are made with, the one whose tokens are set first.
pub struct StickyKeys {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for StickyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StickyKeys({} keys)", self.keys.len())
    }
}

impl StickyKeys {
    /// The keys derived from every key of `ring` (the sealing one first),
    /// or from `cluster` alone without a ring.
    pub fn new(ring: Option<&KeyRing>, cluster: &str) -> Self {
        let keys = match ring {
            Some(ring) => ring
                .all()
                .iter()
                .map(|k| derive(k.as_bytes(), cluster))
                .collect(),
            None => vec![derive(&[], cluster)],
        };
        Self { keys }
    }

    /// The tokens of the instance named `node`: the one to set first, then
    /// those under older keys of the ring (still accepted).
    pub fn tokens(&self, node: &str) -> Box<[String]> {
        self.keys
            .iter()
            .map(|key| {
                let tag = hmac::sign(key, node.as_bytes());
                tag.as_ref()[..TOKEN_BYTES]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    }
}

fn derive(secret: &[u8], cluster: &str) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let info = [cluster.as_bytes()];
    match prk.expand(&info, hmac::HMAC_SHA256) {
        Ok(okm) => hmac::Key::from(okm),
        // Unreachable: HKDF-SHA256 gives up to 8,160 bytes, we ask for 32.
        Err(_) => hmac::Key::new(hmac::HMAC_SHA256, secret),
    }
}

#[cfg(test)]
mod tests {
    use shoal_node::ClusterKey;

    use super::*;

    fn ring(keys: &[&ClusterKey]) -> KeyRing {
        KeyRing::new(keys.iter().map(|k| (*k).clone()).collect()).expect("keys")
    }

    #[test]
    fn a_token_is_keyed_stable_and_reveals_nothing_of_the_unkeyed_hash() {
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        let keys = StickyKeys::new(Some(&ring(&[&a])), "shoal");
        let node = "story-service@10.0.9.7:8768";
        let token = &keys.tokens(node)[0];
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|c| c.is_ascii_hexdigit()));
        // Every gateway with the same key makes the same token…
        assert_eq!(
            StickyKeys::new(Some(&ring(&[&a])), "shoal").tokens(node)[0],
            *token
        );
        // …another key, another cluster or another node another one.
        assert_ne!(
            StickyKeys::new(Some(&ring(&[&b])), "shoal").tokens(node)[0],
            *token
        );
        assert_ne!(
            StickyKeys::new(Some(&ring(&[&a])), "other").tokens(node)[0],
            *token
        );
        assert_ne!(keys.tokens("story-service@10.0.9.8:8768")[0], *token);
    }

    #[test]
    fn during_a_rotation_tokens_under_every_key_of_the_ring_are_known() {
        let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
        let before = StickyKeys::new(Some(&ring(&[&old])), "shoal").tokens("n");
        let during = StickyKeys::new(Some(&ring(&[&new, &old])), "shoal").tokens("n");
        let after = StickyKeys::new(Some(&ring(&[&new])), "shoal").tokens("n");
        assert_eq!(during.len(), 2);
        assert_eq!(
            during[1], before[0],
            "the old cookie still finds its instance"
        );
        assert_eq!(during[0], after[0], "and is set again under the new key");
        assert!(
            !after.contains(&before[0]),
            "after the rotation it pins anew"
        );
    }
}
