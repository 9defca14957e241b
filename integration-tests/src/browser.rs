//! A real headless Chromium driven through ChromeDriver's WebDriver API
//! (Debian's `chromium` and `chromium-driver`), for the status page's tests:
//! open a page, run a script in it, take a screenshot. ChromeDriver runs in
//! its own process group, killed with the browser when dropped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::process::{ChildGuard, TestDir};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    port: u16,
    session: String,
    driver: ChildGuard,
}

/// One HTTP/1.1 request (ChromeDriver refuses HTTP/1.0) on a fresh
/// connection: the status and the body.
fn http11(method: &str, port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(30);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // ChromeDriver keeps the connection open whatever the request says:
    // read the header, then as many bytes as it announces.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("the connection closed inside the header"));
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head:?}")))?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn call(port: u16, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let (status, answer) = http11(method, port, path, &text).with_context(|| format!("WebDriver {method} {path}"))?;
    let answer: Value =
        serde_json::from_str(&answer).with_context(|| format!("WebDriver {method} {path}: not JSON: {answer}"))?;
    if status != 200 {
        bail!("WebDriver {method} {path} answered {status}: {answer}");
    }
    Ok(answer["value"].clone())
}

impl Browser {
    /// Starts ChromeDriver on a free port and a headless Chromium session
    /// with a fresh profile in `dir` (the flags keep it off the network).
    pub async fn start(dir: &TestDir) -> anyhow::Result<Self> {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(binary).exists() {
                bail!("{binary} is missing: `make setup` installs Debian's chromium and chromium-driver");
            }
        }
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log"))?;
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}")).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = ChildGuard::spawn(&mut cmd, "chromedriver", dir)?;
        crate::wait_until("ChromeDriver to answer", Duration::from_secs(20), || async move {
            Ok::<_, String>(call(port, "GET", "/status", &Value::Null).ok().filter(|v| v["ready"] == true))
        })
        .await?;
        let profile = dir.path().join("chromium-profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,860".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session = call(port, "POST", "/session", &capabilities)?;
        let session = session["sessionId"].as_str().context("WebDriver gave no session id")?.to_string();
        Ok(Self { port, session, driver })
    }

    pub fn open(&self, url: &str) -> anyhow::Result<()> {
        call(self.port, "POST", &format!("/session/{}/url", self.session), &json!({"url": url})).map(drop)
    }

    /// Sends `headers` with every request the browser makes from now on
    /// (Chrome DevTools' `Network.setExtraHTTPHeaders` through ChromeDriver).
    pub fn set_headers(&self, headers: &[(&str, &str)]) -> anyhow::Result<()> {
        let path = format!("/session/{}/goog/cdp/execute", self.session);
        call(self.port, "POST", &path, &json!({"cmd": "Network.enable", "params": {}}))?;
        let headers: serde_json::Map<String, Value> =
            headers.iter().map(|(k, v)| ((*k).to_string(), Value::from(*v))).collect();
        let params = json!({"headers": headers});
        call(self.port, "POST", &path, &json!({"cmd": "Network.setExtraHTTPHeaders", "params": params})).map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        let body = json!({"script": script, "args": []});
        call(self.port, "POST", &format!("/session/{}/execute/sync", self.session), &body)
    }

    /// Writes a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let encoded = call(self.port, "GET", &format!("/session/{}/screenshot", self.session), &Value::Null)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().context("the screenshot is not text")?)
            .context("the screenshot is not base64")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(self.port, "DELETE", &format!("/session/{}", self.session), &Value::Null);
        if let Some(pid) = self.driver.pid() {
            // ChromeDriver and any browser it left behind.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
