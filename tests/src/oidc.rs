//! A real OpenID Connect provider for the JWT tests: django-oidc-provider
//! (`tests/oidc/provider.py`, in the virtualenv `scripts/lib/oidc.sh`
//! makes under `target/oidc-venv`), issuing RS256-signed ID tokens and
//! publishing its keys at `/openid/jwks`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{repo_root, skip_unless_ci};

/// A running provider; stopped on drop.
pub struct Provider {
    child: Child,
    python: PathBuf,
    dir: PathBuf,
    /// Its base URL (`http://ip:port`).
    pub url: String,
}

/// The client the tokens are for (their `aud`).
pub const CLIENT_ID: &str = "shoal-test";

impl Provider {
    /// Starts one on `ip:port`; `None` (the test skips, or fails under CI)
    /// when the virtualenv is missing.
    pub async fn start(ip: &str, port: u16) -> Option<Provider> {
        let python = repo_root().join("target/oidc-venv/bin/python");
        if !python.exists() {
            skip_unless_ci(
                "no django-oidc-provider virtualenv (target/oidc-venv): scripts/test makes it \
                 (scripts/lib/oidc.sh)",
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("shoal-oidc-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the provider's database");
        let url = format!("http://{ip}:{port}");
        let mut provider = Provider {
            child: Command::new("true").spawn().expect("true"),
            python,
            dir,
            url,
        };
        provider.run("setup");
        let script = repo_root().join("tests/oidc/provider.py");
        provider.child = Command::new(&provider.python)
            .arg(&script)
            .args([
                "serve".as_ref(),
                provider.dir.as_os_str(),
                provider.url.as_ref(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the OpenID Connect provider");
        let jwks = provider.jwks_url();
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client
                .get(&jwks)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Some(provider);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the OpenID Connect provider did not answer at {jwks}");
    }

    fn run(&self, command: &str) -> String {
        let script = repo_root().join("tests/oidc/provider.py");
        crate::run_ok(
            Command::new(&self.python).arg(&script).args([
                command.as_ref(),
                self.dir.as_os_str(),
                self.url.as_ref(),
            ]),
            &format!("tests/oidc/provider.py {command}"),
        )
    }

    /// Where it publishes its keys.
    pub fn jwks_url(&self) -> String {
        format!("{}/openid/jwks", self.url)
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> String {
        format!("{}/openid", self.url)
    }

    /// A fresh ID token for alice (password grant), as a client gets it.
    pub async fn token(&self, client: &reqwest::Client) -> String {
        let answer: serde_json::Value = client
            .post(format!("{}/openid/token", self.url))
            .form(&[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "alice-pw"),
                ("client_id", CLIENT_ID),
                ("client_secret", "shoal-secret"),
                ("scope", "openid email"),
            ])
            .send()
            .await
            .expect("the token endpoint")
            .json()
            .await
            .expect("a token answer");
        answer["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no id_token: {answer}"))
            .to_string()
    }

    /// Rotates its signing key: a new one, the older ones dropped; the new
    /// key's id.
    pub fn rotate(&self) -> String {
        self.run("rotate")
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
