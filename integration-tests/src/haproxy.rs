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
