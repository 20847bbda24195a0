//! Tokens signed here (ES256, EdDSA) against a key set served here.

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn es256(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("EC key");
    let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("EC key");
    // Uncompressed point: 0x04 ‖ x ‖ y.
    let point = pair.public_key().as_ref();
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}),
    }
}

fn eddsa(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
    let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
    Signer {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": B64.encode(pair.public_key().as_ref())}),
    }
}

fn now() -> i64 {
    unix_now() as i64
}

const ISS: &str = "https://idp.test";
const AUD: &str = "story-service";

fn claims(exp_in: i64) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "roles": ["reader", "writer"],
        "exp": now() + exp_in, "iat": now()})
}

fn sign(signer: &Signer, claims: &Value) -> String {
    let mut head = Header::new(signer.alg);
    head.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&head, claims, &signer.key).expect("sign")
}

/// A key set served over HTTP on loopback: its URL, what it serves, and
/// how many times it was fetched.
struct Jwks {
    url: String,
    served: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve(keys: &[&Signer]) -> Jwks {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    let served = Arc::new(Mutex::new(String::new()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = Jwks {
        url,
        served: served.clone(),
        fetches: fetches.clone(),
    };
    jwks.set(keys);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = served.lock().expect("served").clone();
            fetches.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    jwks
}

impl Jwks {
    fn set(&self, keys: &[&Signer]) {
        let keys: Vec<&Value> = keys.iter().map(|s| &s.jwk).collect();
        *self.served.lock().expect("served") = json!({ "keys": keys }).to_string();
    }

    fn policy(&self) -> AuthJwt {
        AuthJwt {
            jwks: self.url.clone(),
            issuer: Some(ISS.into()),
            audience: Some(AUD.into()),
            claims: vec![
                ("sub".into(), "x-user".into()),
                ("roles".into(), "x-roles".into()),
            ],
        }
    }
}

fn with_token(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    headers.insert(header::AUTHORIZATION, value);
    headers
}

async fn reason(sets: &KeySets, policy: &AuthJwt, token: &str) -> Option<Refusal> {
    check(sets, policy, &with_token(token))
        .await
        .err()
        .map(|r| r.reason)
}

#[tokio::test]
async fn es256_and_eddsa_tokens_pass_with_their_claims_as_headers() {
    let (ec, ed) = (es256("ec-1"), eddsa("ed-1"));
    let jwks = serve(&[&ec, &ed]).await;
    let (sets, policy) = (KeySets::default(), jwks.policy());
    for signer in [&ec, &ed] {
        let pass = check(&sets, &policy, &with_token(&sign(signer, &claims(300))))
            .await
            .unwrap_or_else(|r| panic!("{:?}: {r:?}", signer.alg));
        let got: Vec<(String, String)> = pass
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-user".to_string(), "alice".to_string()),
                ("x-roles".to_string(), "reader,writer".to_string())
            ]
        );
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "one fetch for both");
}

#[tokio::test]
async fn bad_tokens_are_refused_each_for_its_reason() {
    let ec = es256("ec-1");
    let jwks = serve(&[&ec]).await;
    let (sets, policy) = (KeySets::default(), jwks.policy());
    let with = |patch: Value| {
        let mut c = claims(300);
        if let (Some(c), Some(p)) = (c.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        sign(&ec, &c)
    };
    let cases = [
        (with(json!({"exp": now() - 120})), Refusal::Expired),
        (with(json!({"exp": null})), Refusal::Expired),
        (with(json!({"nbf": now() + 120})), Refusal::NotYetValid),
        (with(json!({"iss": "https://evil.test"})), Refusal::Issuer),
        (with(json!({"aud": "other-service"})), Refusal::Audience),
        (with(json!({"iss": null})), Refusal::Issuer),
        (with(json!({"aud": null})), Refusal::Audience),
        ("not.a.jwt".to_string(), Refusal::Malformed),
    ];
    for (token, expected) in cases {
        assert_eq!(
            reason(&sets, &policy, &token).await,
            Some(expected),
            "{token}"
        );
    }
    // Within the leeway: still good.
    let late = with(json!({"exp": now() - 10}));
    assert_eq!(reason(&sets, &policy, &late).await, None);
    // A signature of another key under this kid.
    let other = es256("ec-1");
    let forged = sign(&other, &claims(300));
    assert_eq!(
        reason(&sets, &policy, &forged).await,
        Some(Refusal::Signature)
    );
    // alg none: a header and claims, no signature.
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims(300).to_string())
    );
    assert!(reason(&sets, &policy, &none).await.is_some(), "alg none");
    // HS256 "signed" with the public key's bytes as the secret.
    let mut head = Header::new(Algorithm::HS256);
    head.kid = Some("ec-1".into());
    let secret = ec.jwk.to_string();
    let hs = jsonwebtoken::encode(
        &head,
        &claims(300),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    assert_eq!(reason(&sets, &policy, &hs).await, Some(Refusal::Algorithm));
    // No token: a bare challenge.
    let missing = check(&sets, &policy, &HeaderMap::new()).await.err();
    let missing = missing.map(|r| {
        let answer = r.response("/api/stories");
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        answer.headers().get(header::WWW_AUTHENTICATE).cloned()
    });
    assert_eq!(missing, Some(Some(HeaderValue::from_static("Bearer"))));
    let expired = check(&sets, &policy, &with_token(&late)).await;
    assert!(expired.is_ok());
    let refused = check(&sets, &policy, &with_token(&forged)).await.err();
    let challenge = refused.map(|r| r.response("/").headers()[header::WWW_AUTHENTICATE].clone());
    assert!(
        challenge
            .and_then(|c| c.to_str().ok().map(str::to_string))
            .is_some_and(|c| c.starts_with("Bearer error=\"invalid_token\"")),
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_keys_do_not_hammer_the_issuer() {
    let (old, new) = (es256("k-old"), eddsa("k-new"));
    let jwks = serve(&[&old]).await;
    let sets = KeySets {
        refetch: Duration::from_millis(300),
        ..KeySets::default()
    };
    let policy = jwks.policy();
    assert_eq!(
        reason(&sets, &policy, &sign(&old, &claims(300))).await,
        None
    );
    // The issuer rotates: a token under the new key fetches the set again
    // (once the last fetch is older than the gap).
    jwks.set(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        reason(&sets, &policy, &sign(&new, &claims(300))).await,
        None
    );
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
    // Unknown keys: refused, and the set is not fetched again within the
    // gap however many come.
    for i in 0..20 {
        let stranger = es256(&format!("stranger-{i}"));
        let token = sign(&stranger, &claims(300));
        assert_eq!(
            reason(&sets, &policy, &token).await,
            Some(Refusal::UnknownKey)
        );
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn keys_out_of_reach_are_the_gateways_503_not_the_clients_401() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    drop(listener);
    let policy = AuthJwt {
        jwks: url,
        issuer: None,
        audience: None,
        claims: Vec::new(),
    };
    let ec = es256("ec-1");
    let refused = check(
        &KeySets::default(),
        &policy,
        &with_token(&sign(&ec, &claims(300))),
    )
    .await
    .err();
    let refused = refused.map(|r| (r.reason, r.response("/").status()));
    assert_eq!(
        refused,
        Some((Refusal::Unavailable, StatusCode::SERVICE_UNAVAILABLE))
    );
}

#[tokio::test]
async fn a_checked_token_is_remembered_per_policy_and_only_while_in_force() {
    let ec = es256("ec-1");
    let jwks = serve(&[&ec]).await;
    let (sets, policy) = (KeySets::default(), jwks.policy());
    let token = sign(&ec, &claims(300));
    assert_eq!(reason(&sets, &policy, &token).await, None);
    let key = digest(&policy, &token);
    let pass = sets.remembered(&key).expect("remembered");
    assert_eq!(pass.len(), 2, "with the headers it passes");
    // Another service's policy (another audience) does not take it.
    let billing = AuthJwt {
        audience: Some("billing".into()),
        ..policy.clone()
    };
    assert!(sets.remembered(&digest(&billing, &token)).is_none());
    assert_eq!(
        reason(&sets, &billing, &token).await,
        Some(Refusal::Audience)
    );
    // Past its exp (and the leeway): forgotten, checked again in full.
    if let Some(v) = sets.verified.lock().expect("verified").get_mut(&key) {
        v.exp = unix_now() - LEEWAY_SECS - 1;
    }
    assert!(sets.remembered(&key).is_none());
    assert_eq!(
        reason(&sets, &policy, &token).await,
        None,
        "its own exp is still ahead"
    );
    // Never more than MAX_VERIFIED.
    for i in 0..MAX_VERIFIED + 5 {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let v = Verified {
            exp: unix_now() + 60,
            nbf: None,
            pass: Vec::new(),
        };
        sets.remember(k, v);
    }
    assert!(sets.verified.lock().expect("verified").len() <= MAX_VERIFIED);
}
