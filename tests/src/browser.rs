//! A real browser for the tests: headless Chromium (Debian's `chromium`)
//! driven over the DevTools protocol, just enough to open a page, evaluate
//! JavaScript in it and take a screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary, if one is installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
}

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    _profile: PathBuf,
}

impl Browser {
    /// Starts Chromium (window `width`×`height`) with its profile in `dir`.
    pub async fn start(dir: &Path, width: u32, height: u32) -> anyhow::Result<Browser> {
        let binary = chromium().ok_or_else(|| anyhow::anyhow!("no chromium on PATH"))?;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Chromium writes the port it took into the profile: within a second
        // or two, but its first start on a fresh machine builds font caches,
        // and the suite shares the two cores (60 s).
        let port_file = profile.join("DevToolsActivePort");
        let mut port = None;
        for _ in 0..1200 {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                port = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok());
                if port.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let port = port.ok_or_else(|| anyhow::anyhow!("chromium wrote no DevToolsActivePort"))?;
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await?
            .json()
            .await?;
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .ok_or_else(|| anyhow::anyhow!("chromium has no page: {targets}"))?
            .to_string();
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        })
    }

    /// Sends a DevTools command and waits for its result.
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.socket.send(Message::text(msg.to_string())).await?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .map_err(|_| anyhow::anyhow!("{method}: no answer in 30 s"))?
                .ok_or_else(|| anyhow::anyhow!("chromium closed the connection"))??;
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    anyhow::bail!("{method}: {err}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Opens `url` in the page.
    pub async fn open(&mut self, url: &str) -> anyhow::Result<()> {
        self.call("Page.enable", json!({})).await?;
        self.call("Page.navigate", json!({"url": url})).await?;
        Ok(())
    }

    /// Evaluates `expression` in the page, giving its value.
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            anyhow::bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no screenshot data"))?;
        std::fs::write(
            path,
            base64::engine::general_purpose::STANDARD.decode(data)?,
        )?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
