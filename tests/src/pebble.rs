//! A real ACME CA for the certificate tests: pebble (Debian's `pebble`, the
//! RFC 8555 test server Let's Encrypt publishes), with
//! `pebble-challtestsrv` as its DNS server, on loopback. Every name
//! resolves to one address the test picks: the gateway the CA's HTTP-01
//! requests reach.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Net, Proc, skip_unless_ci, wait_for};

/// pebble and its DNS server, stopped on drop.
pub struct Pebble {
    _procs: Vec<Proc>,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed pebble's own HTTPS certificate (what a client of
    /// its API trusts: `SHOAL_ACME_CA_FILE`).
    pub api_ca: PathBuf,
    management: String,
    dir: PathBuf,
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    crate::run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?} (scripts/test installs it)"),
    );
}

/// pebble's own HTTPS certificate in `dir`, for the names `san` (openssl's
/// `subjectAltName` form, `DNS:pebble`), from a CA of the test's:
/// `ca.pem` (what a client of its API trusts: `SHOAL_ACME_CA_FILE`),
/// `api.pem` and `api.key`.
pub fn api_certificate(dir: &Path, san: &str) {
    let mut ca = crate::OPENSSL_SELF_SIGNED.to_vec();
    ca.extend([
        "-subj",
        "/CN=shoal test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(dir, &ca);
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=pebble",
            "-keyout",
            "api.key",
            "-out",
            "api.csr",
        ],
    );
    std::fs::write(
        dir.join("api.ext"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
    )
    .expect("extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "api.ext",
            "-out",
            "api.pem",
        ],
    );
}

/// pebble's configuration: its API on `listen`, its management API on
/// `management`, its HTTPS certificate and key, HTTP-01 checked on
/// `http_port`, certificates lasting `validity` seconds when given.
pub fn config(
    listen: &str,
    management: &str,
    certificate: &Path,
    key: &Path,
    http_port: u16,
    validity: Option<u64>,
) -> serde_json::Value {
    let mut config = serde_json::json!({
        "pebble": {
            "listenAddress": listen,
            "managementListenAddress": management,
            "certificate": certificate,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    if let Some(secs) = validity {
        config["pebble"]["certificateValidityPeriod"] = secs.into();
    }
    config
}

impl Pebble {
    /// Starts pebble at 127.N.9.1 (API 14000, management 15000; HTTP-01
    /// checked on `http_port`) and its DNS at 127.N.9.2:8053 answering
    /// every name with `answer`. `None` (the test skips, or fails under CI)
    /// when pebble is not installed. Its certificates last `validity`
    /// seconds when given (pebble's default: five years).
    pub fn start(
        net: &Net,
        answer: IpAddr,
        http_port: u16,
        validity: Option<u64>,
    ) -> Option<Pebble> {
        let installed = ["pebble", "pebble-challtestsrv"].iter().all(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !installed {
            skip_unless_ci("pebble is not installed (scripts/test installs Debian's pebble)");
            return None;
        }
        let dir = net.dir().join("pebble");
        std::fs::create_dir_all(&dir).expect("pebble's folder");
        let (api, dns) = (net.ip(9, 1), net.ip(9, 2));
        api_certificate(&dir, &format!("IP:{api},DNS:localhost"));
        let config = config(
            &format!("{api}:14000"),
            &format!("{api}:15000"),
            &dir.join("api.pem"),
            &dir.join("api.key"),
            http_port,
            validity,
        );
        std::fs::write(dir.join("pebble.json"), config.to_string()).expect("pebble's config");
        let dns_proc = Proc::spawn(
            net,
            "pebble-challtestsrv",
            Path::new("pebble-challtestsrv"),
            &[
                "-defaultIPv4",
                &answer.to_string(),
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("{dns}:8053"),
                "-management",
                &format!("{dns}:8055"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ],
            &[],
        );
        let config_path = dir.join("pebble.json").display().to_string();
        let pebble = Proc::spawn(
            net,
            "pebble",
            Path::new("pebble"),
            &[
                "-config",
                &config_path,
                "-dnsserver",
                &format!("{dns}:8053"),
            ],
            &[
                // No random sleeps before validating, no nonces refused at
                // random: the test measures the gateways, not pebble.
                ("PEBBLE_VA_NOSLEEP".into(), "1".into()),
                ("PEBBLE_WFE_NONCEREJECT".into(), "0".into()),
            ],
        );
        let pebble = Pebble {
            _procs: vec![dns_proc, pebble],
            directory: format!("https://{api}:14000/dir"),
            api_ca: dir.join("ca.pem"),
            management: format!("https://{api}:15000"),
            dir,
        };
        wait_for("pebble answers", Duration::from_secs(20), || {
            pebble.curl(&pebble.directory).ok()
        });
        Some(pebble)
    }

    /// GETs `url` of pebble's API (trusting its CA): the body, or why not.
    fn curl(&self, url: &str) -> Result<String, String> {
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "5", "--cacert"])
            .arg(&self.api_ca)
            .arg(url)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The root of the certificates pebble issues (random per run), as a
    /// PEM file: what a client of the gateways trusts.
    pub fn issuing_root(&self) -> PathBuf {
        let pem = self
            .curl(&format!("{}/roots/0", self.management))
            .expect("pebble's issuing root");
        let path = self.dir.join("issuing-root.pem");
        std::fs::write(&path, pem).expect("issuing root file");
        path
    }
}
