//! A real HAProxy on loopback with a config written by the test.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{ChildGuard, TestDir};
use crate::wait::wait_until;

pub struct HaProxy {
    dir: TestDir,
    process: ChildGuard,
}

impl HaProxy {
    /// Checks `config` with `haproxy -c`, starts it in the foreground, and
    /// waits until every port in `ports` accepts TCP connections.
    pub async fn start(config: &str, ports: &[u16]) -> anyhow::Result<Self> {
        let dir = TestDir::new("haproxy");
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config)?;
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .map_err(|e| anyhow::anyhow!("run haproxy: {e} (is HAProxy installed? apt-get install haproxy)"))?;
        anyhow::ensure!(
            check.status.success(),
            "haproxy rejected the config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let process = ChildGuard::spawn(&mut cmd, "haproxy", &dir)?;
        let mut haproxy = Self { dir, process };
        for port in ports {
            wait_until(&format!("HAProxy to listen on {port}"), Duration::from_secs(10), || async {
                std::net::TcpStream::connect(("127.0.0.1", *port)).map(|_| Some(())).map_err(|e| e.to_string())
            })
            .await?;
        }
        anyhow::ensure!(!haproxy.process.has_exited(), "haproxy exited; see {}", haproxy.log_path().display());
        Ok(haproxy)
    }

    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("haproxy.log")
    }

    pub fn stop(&mut self) {
        self.process.kill();
    }
}

/// One backend node for [`deploy_config`].
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    /// The node's address (`127.0.0.1` on loopback).
    pub host: String,
    pub pg_port: u16,
    pub rest_port: u16,
}

/// `deploy/haproxy/haproxy-fast.cfg` rewritten for loopback: the same sections, checks
/// and options, with the given ports and these nodes as servers.
pub fn deploy_config(write_port: u16, read_port: u16, stats_port: u16, nodes: &[Backend]) -> String {
    deploy_config_from("haproxy-fast.cfg", write_port, read_port, stats_port, nodes)
}

/// As [`deploy_config`], from another file of `deploy/haproxy/` (e.g. `haproxy-classic.cfg`).
pub fn deploy_config_from(file: &str, write_port: u16, read_port: u16, stats_port: u16, nodes: &[Backend]) -> String {
    deploy_config_bound(file, "127.0.0.1", write_port, read_port, stats_port, nodes)
}

/// As [`deploy_config_from`], HAProxy listening on `bind_host`.
pub fn deploy_config_bound(
    file: &str,
    bind_host: &str,
    write_port: u16,
    read_port: u16,
    stats_port: u16,
    nodes: &[Backend],
) -> String {
    let path = format!("{}/../deploy/haproxy/{file}", env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut out = String::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server ") {
            // Every server block is replaced once, at its first server line.
            if !out.ends_with("#servers\n") {
                for node in nodes {
                    out.push_str(&format!(
                        "    server {} {}:{} maxconn 100 check port {}\n",
                        node.name, node.host, node.pg_port, node.rest_port
                    ));
                }
                out.push_str("#servers\n");
            }
            continue;
        }
        let line = match trimmed {
            "bind *:5000" => format!("    bind {bind_host}:{write_port}"),
            "bind *:5001" => format!("    bind {bind_host}:{read_port}"),
            "bind *:7000" => format!("    bind {bind_host}:{stats_port}"),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
