//! board-service in the local cluster: the classic stack's Node.js service,
//! run behind `shoal sidecar -- node server.js`, as in its Swarm task.
//!
//! It needs Node.js and the Debian packages `node-express`, `node-sqlite3`
//! and `node-mysql`; `scripts/run-local` installs them when run as root.
//! Without them the rest of the cluster runs and this says what to install.

use std::path::{Path, PathBuf};
use tokio::process::Command;

/// What to install when the runtime is missing.
pub const INSTALL: &str = "apt-get install nodejs node-express node-sqlite3 node-mysql (Debian's packages; scripts/run-local does it when run as root)";

/// The board-service entry point (`apps/board-service/server.js`) if Node.js
/// and its libraries are there, else why not.
pub async fn runtime(bin_dir: &Path, database_url: Option<&str>) -> Result<PathBuf, String> {
    if let Some(url) = database_url {
        if !(url.starts_with("sqlite:") || url.starts_with("mysql:") || url.starts_with("mariadb:"))
        {
            return Err(format!(
                "it stores in SQLite or MariaDB/MySQL, not in {}",
                url.split(':').next().unwrap_or(url)
            ));
        }
    }
    let candidates = [
        PathBuf::from("apps/board-service/server.js"),
        bin_dir.join("../../apps/board-service/server.js"),
    ];
    let server = candidates
        .iter()
        .find(|p| p.exists())
        .ok_or("apps/board-service/server.js not found (run from the repository)")?;
    let server = tokio::fs::canonicalize(server)
        .await
        .map_err(|e| e.to_string())?;
    let check = Command::new("node")
        .args([
            "-e",
            "require('express'); require('sqlite3'); require('mysql')",
        ])
        .output()
        .await;
    match check {
        Err(_) => Err(format!("node is not installed: {INSTALL}")),
        Ok(out) if !out.status.success() => {
            let why = String::from_utf8_lossy(&out.stderr);
            let first = why
                .lines()
                .find(|l| l.contains("Cannot find module") || l.contains("Error"))
                .unwrap_or("a module does not load");
            Err(format!("{}: {INSTALL}", first.trim()))
        }
        Ok(_) => Ok(server),
    }
}
