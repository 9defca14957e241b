//! The cluster under test, each part in its own network namespace: three
//! etcd members (`e1`..`e3`), three pgwarden nodes (`n1`..`n3`: agent,
//! health API, controller and the PostgreSQL the agent starts) and HAProxy
//! (`haproxy`), with deploy/haproxy/haproxy-fast.cfg. Each node's data
//! directory sits on its own small tmpfs, which the full-disk fault fills.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use pgwarden_integration_tests::cluster::{REPLICATION_PASSWORD, REST_PASSWORD, REST_USER, SUPERUSER_PASSWORD};
use pgwarden_integration_tests::haproxy::{Backend, deploy_config_bound};
use pgwarden_integration_tests::netns::Net;
use pgwarden_integration_tests::process::{ChildGuard, TestDir, give_to_postgres};
use pgwarden_integration_tests::service::binary;

pub const PG_PORT: u16 = 5432;
pub const REST_PORT: u16 = 8008;
pub const WRITE_PORT: u16 = 5000;
pub const READ_PORT: u16 = 5001;
const STATS_PORT: u16 = 7000;
const ETCD_CLIENT: u16 = 2379;
const ETCD_PEER: u16 = 2380;
/// Each node's tmpfs for its data directory (WAL included).
const DISK_MB: u64 = 768;

/// A pgwarden service of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Agent,
    Health,
    Controller,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Agent, Service::Health, Service::Controller];

    fn binary(self) -> &'static str {
        match self {
            Service::Agent => "pgwarden-agent",
            Service::Health => "pgwarden-health",
            Service::Controller => "pgwarden-controller",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Service::Agent => "agent",
            Service::Health => "health API",
            Service::Controller => "controller",
        }
    }
}

pub struct ChaosNode {
    pub name: String,
    pub role: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    services: [Option<ChildGuard>; 3],
    /// Services a fault killed, each restarted by its heal; any other exit is a crash.
    pub killed: Vec<Service>,
    /// Services found exited when a fault came to kill them: crashes.
    pub crashes: Vec<Service>,
}

impl ChaosNode {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("fs").join("data")
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("fs")
    }

    /// The directory of PostgreSQL's Unix socket (not network-namespaced:
    /// the probes reach a node through it whatever the partitions).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn slot(service: Service) -> usize {
        Service::ALL.iter().position(|s| *s == service).expect("a service")
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        // A stale pid file's pid may belong to another process by now.
        pgwarden_integration_tests::postgres::postmaster_pid_in(&self.data_dir()).filter(|&pid| {
            pgwarden_integration_tests::process::is_running(pid)
                && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
        })
    }

    /// The postmaster and its children (backends, WAL sender and receiver, ...).
    pub fn postgres_pids(&self) -> Vec<i32> {
        let Some(postmaster) = self.postmaster_pid() else { return Vec::new() };
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        pids
    }

    /// Freezes PostgreSQL: the postmaster first (it forks no more), then
    /// its children until no new one turns up. Returns what was stopped.
    pub fn freeze_postgres(&self) -> Vec<i32> {
        let Some(postmaster) = self.postmaster_pid() else { return Vec::new() };
        let stop = |pid: i32| {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP);
        };
        stop(postmaster);
        let mut frozen = vec![postmaster];
        loop {
            let new: Vec<i32> = children_of(postmaster).into_iter().filter(|p| !frozen.contains(p)).collect();
            if new.is_empty() {
                return frozen;
            }
            for pid in new {
                stop(pid);
                frozen.push(pid);
            }
        }
    }

    pub fn signal_service(&self, service: Service, signal: Signal) {
        if let Some(child) = &self.services[Self::slot(service)] {
            child.signal(signal);
        }
    }

    pub fn kill_service(&mut self, service: Service) {
        if let Some(mut child) = self.services[Self::slot(service)].take() {
            if child.has_exited() {
                self.crashes.push(service);
            }
            child.kill();
            self.killed.push(service);
        }
    }

    /// Services that exited without a fault killing them.
    pub fn crashed(&mut self) -> Vec<Service> {
        let mut crashed = self.crashes.clone();
        crashed.extend(
            Service::ALL
                .into_iter()
                .filter(|s| self.services[Self::slot(*s)].as_mut().is_some_and(ChildGuard::has_exited)),
        );
        crashed
    }

    pub fn log(&self, service: Service) -> PathBuf {
        self.dir.join(format!("{}.log", service.binary()))
    }

    /// Fills the data directory's filesystem, leaving `leave` bytes.
    pub fn fill_disk(&self, leave: u64) -> anyhow::Result<u64> {
        // PostgreSQL writes meanwhile: a size that no longer fits is retried smaller.
        for _ in 0..10 {
            let stat = nix::sys::statvfs::statvfs(&self.disk())?;
            let free = stat.blocks_available() * stat.fragment_size();
            let size = free.saturating_sub(leave);
            if size < 1 << 20 {
                // Already (nearly) full: WAL kept for a replica filled it.
                return Ok(0);
            }
            let status = Command::new("fallocate")
                .args(["-l", &size.to_string()])
                .arg(self.disk().join("filler"))
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                return Ok(size);
            }
            let _ = std::fs::remove_file(self.disk().join("filler"));
        }
        anyhow::bail!("fallocate on {} failed ten times", self.disk().display())
    }

    pub fn free_disk(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.disk().join("filler")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

pub struct ChaosCluster {
    pub net: Net,
    pub nodes: Vec<ChaosNode>,
    etcd: Vec<Option<ChildGuard>>,
    haproxy: Option<ChildGuard>,
    dir: TestDir,
    /// A failed run keeps its directory, data included (the tmpfs stays
    /// mounted until the next run reaps it).
    kept: bool,
    /// etcd members killed by a fault (restarted by its heal); any other exit is a crash.
    etcd_killed: Vec<usize>,
    etcd_crashes: Vec<usize>,
}

pub fn node_roles() -> [&'static str; 3] {
    ["n1", "n2", "n3"]
}

pub fn etcd_roles() -> [&'static str; 3] {
    ["e1", "e2", "e3"]
}

impl ChaosCluster {
    /// Builds the network and starts etcd, the three nodes and HAProxy.
    pub fn start(ttl: u32, synchronous: bool, failsafe: bool) -> anyhow::Result<Self> {
        reap_mounts();
        let mut roles: Vec<&str> = etcd_roles().to_vec();
        roles.extend(node_roles());
        roles.push("haproxy");
        let net = Net::create(&roles)?;
        let dir = TestDir::new("chaos");
        let mut cluster = Self {
            net,
            nodes: Vec::new(),
            etcd: vec![None, None, None],
            haproxy: None,
            dir,
            kept: false,
            etcd_killed: Vec::new(),
            etcd_crashes: Vec::new(),
        };
        for idx in 0..3 {
            cluster.start_etcd(idx, "new")?;
        }
        let etcd_hosts: Vec<String> =
            etcd_roles().iter().map(|r| format!("{}:{ETCD_CLIENT}", cluster.net.host(r).ip)).collect();
        for (i, role) in node_roles().iter().enumerate() {
            let name = format!("node{}", i + 1);
            let dir = cluster.dir.path().join(&name);
            std::fs::create_dir_all(dir.join("fs"))?;
            let size = format!("size={}m,mode=0700", DISK_MB);
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &size, "pgwarden-chaos"])
                .arg(dir.join("fs"))
                .status()?;
            anyhow::ensure!(status.success(), "mount a tmpfs on {}", dir.join("fs").display());
            give_to_postgres(&dir);
            give_to_postgres(&dir.join("fs"));
            let ip = cluster.net.host(role).ip;
            let node = ChaosNode {
                name: name.clone(),
                role: role.to_string(),
                ip,
                dir,
                services: [None, None, None],
                killed: Vec::new(),
                crashes: Vec::new(),
            };
            let config = node_config(&node, &etcd_hosts, ttl, (synchronous, failsafe), &cluster.net.cidr());
            let path = node.dir.join("pgwarden.yml");
            std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            give_to_postgres(&path);
            cluster.nodes.push(node);
        }
        for i in 0..cluster.nodes.len() {
            for service in Service::ALL {
                cluster.start_service(i, service)?;
            }
        }
        cluster.start_haproxy()?;
        Ok(cluster)
    }

    pub fn etcd_ip(&self, idx: usize) -> Ipv4Addr {
        self.net.host(etcd_roles()[idx]).ip
    }

    pub fn haproxy_ip(&self) -> Ipv4Addr {
        self.net.host("haproxy").ip
    }

    fn start_etcd(&mut self, idx: usize, state: &str) -> anyhow::Result<()> {
        let initial: Vec<String> = (0..3).map(|i| format!("etcd{i}=http://{}:{ETCD_PEER}", self.etcd_ip(i))).collect();
        let ip = self.etcd_ip(idx);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("etcd{idx}.log")))?;
        let client = format!("http://{ip}:{ETCD_CLIENT}");
        let peer = format!("http://{ip}:{ETCD_PEER}");
        let mut cmd = self.net.command(etcd_roles()[idx], Path::new("etcd"), false)?;
        cmd.arg("--name")
            .arg(format!("etcd{idx}"))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("etcd{idx}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &format!("pgwarden-chaos-{}", std::process::id())])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.etcd[idx] = Some(ChildGuard::spawn(&mut cmd, "etcd", &self.dir)?);
        Ok(())
    }

    pub fn kill_etcd(&mut self, idx: usize) {
        if let Some(mut member) = self.etcd[idx].take() {
            if member.has_exited() {
                self.etcd_crashes.push(idx);
            }
            member.kill();
            self.etcd_killed.push(idx);
        }
    }

    pub fn restart_etcd(&mut self, idx: usize) -> anyhow::Result<()> {
        if self.etcd[idx].is_none() {
            self.start_etcd(idx, "existing")?;
            self.etcd_killed.retain(|&i| i != idx);
        }
        Ok(())
    }

    pub fn signal_etcd(&self, idx: usize, signal: Signal) {
        if let Some(member) = &self.etcd[idx] {
            member.signal(signal);
        }
    }

    /// Members that exited without a fault killing them.
    pub fn etcd_crashed(&mut self) -> Vec<usize> {
        let mut crashed = self.etcd_crashes.clone();
        crashed.extend((0..3).filter(|&i| self.etcd[i].as_mut().is_some_and(ChildGuard::has_exited)));
        crashed
    }

    pub fn haproxy_crashed(&mut self) -> bool {
        self.haproxy.as_mut().is_none_or(ChildGuard::has_exited)
    }

    pub fn start_service(&mut self, idx: usize, service: Service) -> anyhow::Result<()> {
        let node = &self.nodes[idx];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.log(service))?;
        give_to_postgres(&node.log(service));
        let mut cmd = self.net.command(&node.role, &binary(service.binary()), true)?;
        cmd.arg(node.dir.join("pgwarden.yml"))
            .current_dir(&node.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = ChildGuard::spawn(&mut cmd, service.binary(), &self.dir)?;
        let node = &mut self.nodes[idx];
        node.services[ChaosNode::slot(service)] = Some(child);
        node.killed.retain(|s| *s != service);
        Ok(())
    }

    /// Restarts every service a fault killed on node `idx`.
    pub fn restart_killed(&mut self, idx: usize) -> anyhow::Result<()> {
        for service in self.nodes[idx].killed.clone() {
            self.start_service(idx, service)?;
        }
        Ok(())
    }

    fn start_haproxy(&mut self) -> anyhow::Result<()> {
        let backends: Vec<Backend> = self
            .nodes
            .iter()
            .map(|n| Backend { name: n.name.clone(), host: n.ip.to_string(), pg_port: PG_PORT, rest_port: REST_PORT })
            .collect();
        let ip = self.haproxy_ip().to_string();
        let config = deploy_config_bound("haproxy-fast.cfg", &ip, WRITE_PORT, READ_PORT, STATS_PORT, &backends);
        let path = self.dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(self.dir.path().join("haproxy.log"))?;
        let mut cmd = self.net.command("haproxy", Path::new("haproxy"), false)?;
        cmd.arg("-db").arg("-f").arg(&path).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.haproxy = Some(ChildGuard::spawn(&mut cmd, "haproxy", &self.dir)?);
        Ok(())
    }

    /// Where the logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the run's directory (logs, data) when the run failed.
    pub fn keep(&mut self) {
        self.dir.keep();
        self.kept = true;
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for member in self.etcd.iter_mut().flatten() {
            member.signal(Signal::SIGCONT);
            member.kill();
        }
        if let Some(mut haproxy) = self.haproxy.take() {
            haproxy.kill();
        }
        for node in &mut self.nodes {
            for service in Service::ALL {
                node.signal_service(service, Signal::SIGCONT);
                node.kill_service(service);
            }
            for pid in node.postgres_pids() {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
        // The postmasters' children exit once they notice their parent gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.nodes.iter().any(|n| !n.postgres_pids().is_empty()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.kept {
            for node in &self.nodes {
                let _ = Command::new("umount").arg("-l").arg(node.disk()).status();
            }
        }
    }
}

/// Unmounts the tmpfs of runs whose process is gone, so their directories
/// can be removed.
fn reap_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    for line in mounts.lines().filter(|l| l.starts_with("pgwarden-chaos ")) {
        let Some(path) = line.split_whitespace().nth(1) else { continue };
        let owner = path
            .strip_prefix("/tmp/pgwarden-tests/")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        if owner.is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()) {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

/// A node's config (JSON, which is YAML): Patroni's format, the run's ttl,
/// loop_wait 1, retry_timeout 3, listening on the node's own address.
fn node_config(
    node: &ChaosNode,
    etcd_hosts: &[String],
    ttl: u32,
    (synchronous, failsafe): (bool, bool),
    cidr: &str,
) -> serde_json::Value {
    let ip = node.ip;
    serde_json::json!({
        "scope": "chaos",
        "namespace": "/chaos/",
        "name": node.name,
        "restapi": {
            "listen": format!("{ip}:{REST_PORT}"),
            "connect_address": format!("{ip}:{REST_PORT}"),
            "authentication": {"username": REST_USER, "password": REST_PASSWORD},
        },
        "etcd3": {"hosts": etcd_hosts.join(",")},
        "bootstrap": {
            "dcs": {
                "ttl": ttl,
                "loop_wait": 1,
                "retry_timeout": 3,
                "synchronous_mode": synchronous,
                "failsafe_mode": failsafe,
                "postgresql": {
                    "use_pg_rewind": true,
                    "use_slots": true,
                    "parameters": {"max_wal_size": "256MB", "min_wal_size": "64MB", "wal_keep_size": "64MB"},
                },
            },
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": format!("{ip}:{PG_PORT}"),
            "connect_address": format!("{ip}:{PG_PORT}"),
            "data_dir": node.data_dir(),
            "authentication": {
                "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                "replication": {"username": "replicator", "password": REPLICATION_PASSWORD},
            },
            "parameters": {
                "unix_socket_directories": node.socket_dir(),
                "shared_buffers": "16MB",
                // Clients whose timed-out commits still wait for a
                // standby hold their backends until it answers.
                "max_connections": 300,
            },
            "pg_hba": [
                "local all all scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
                format!("host all all {cidr} scram-sha-256"),
                format!("host replication all {cidr} scram-sha-256"),
            ],
        },
        "pgwarden": {
            "agent_grpc_listen": format!("{ip}:8010"),
            "controller_grpc_listen": format!("{ip}:8011"),
        },
        "watchdog": {"mode": "off"},
    })
}

/// Runs SQL-free checks of a node's REST API: a tiny HTTP/1.0 client with a
/// deadline, for any address (the harness's own speaks to 127.0.0.1 only).
pub async fn http(
    ip: Ipv4Addr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Option<(u16, String)> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, REST_PORT)).await.ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REST_USER}:{REST_PASSWORD}"));
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {ip}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// The children of `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)?.parse::<i32>().ok()) == Some(parent)
        })
        .collect()
}
