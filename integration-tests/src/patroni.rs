//! A Patroni cluster on loopback, for side-by-side benchmarks and the
//! migration test: one etcd (the harness's), N nodes each running Patroni
//! (installed from PyPI by `scripts/install-patroni.sh`) as `postgres`, with
//! the same PostgreSQL, passwords and data settings as [`crate::cluster`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use crate::etcd::EtcdCluster;
use crate::haproxy::Backend;
use crate::port::free_port;
use crate::postgres::binaries;
use crate::process::{ChildGuard, TestDir, run_as_postgres};
use crate::wait::wait_until;

/// Where `scripts/install-patroni.sh` puts the virtual environment.
pub fn venv() -> PathBuf {
    std::env::var_os("PATRONI_VENV").map_or_else(|| PathBuf::from("/var/tmp/pgwarden-patroni"), PathBuf::from)
}

/// The `patroni` executable, or an error saying how to install it.
pub fn patroni_binary() -> anyhow::Result<PathBuf> {
    let path = venv().join("bin/patroni");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/install-patroni.sh (Patroni from PyPI into a virtual environment)",
        path.display()
    );
    Ok(path)
}

/// Patroni's version as `patroni --version` prints it.
pub fn patroni_version() -> anyhow::Result<String> {
    let output = Command::new(patroni_binary()?).arg("--version").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// One Patroni node: its directory, ports and process.
pub struct PatroniNode {
    pub name: String,
    pub dir: TestDir,
    pub rest_port: u16,
    pub pg_port: u16,
    patroni: Option<ChildGuard>,
    /// pgwarden's agent, health API and controller, once the node is migrated.
    pgwarden: Vec<ChildGuard>,
}

impl PatroniNode {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("patroni.yml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `GET path` on this node's REST API: the status code, or 0.
    pub fn check(&self, path: &str) -> u16 {
        crate::service::status_of(self.rest_port, path)
    }

    pub fn get(&self, path: &str) -> Option<String> {
        crate::service::body_of(self.rest_port, path)
    }

    /// Runs SQL on this node's PostgreSQL over TCP as the superuser.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        crate::cluster::psql_port(self.pg_port, sql)
    }

    /// The database system identifier, asked of the running PostgreSQL.
    pub fn psql_system_identifier(&self) -> String {
        self.psql("select system_identifier from pg_control_system()").expect("ask PostgreSQL its system identifier")
    }

    /// Starts Patroni as `postgres`, logging to `<dir>/patroni.log`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.path().join("patroni.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        crate::process::give_to_postgres(&log_path);
        let mut cmd = Command::new(patroni_binary()?);
        cmd.arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.patroni = Some(ChildGuard::spawn(run_as_postgres(&mut cmd), "patroni", &self.dir)?);
        Ok(())
    }

    /// The Patroni process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.patroni.as_ref().and_then(ChildGuard::pid)
    }

    /// Stops Patroni cleanly (SIGTERM): it stops PostgreSQL and releases the key.
    pub fn stop(&mut self) -> bool {
        self.patroni.take().is_some_and(|mut p| p.terminate(Duration::from_secs(60)))
    }

    /// Kills Patroni alone (SIGKILL); PostgreSQL keeps running.
    pub fn kill(&mut self) {
        if let Some(mut patroni) = self.patroni.take() {
            patroni.kill();
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(patroni) = &self.patroni {
            patroni.signal(signal);
        }
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        crate::postgres::postmaster_pid_in(&self.data_dir())
    }

    /// Merges `patch` into this node's `patroni.yml` ([`crate::merge_config_file`]).
    pub fn merge_config(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        crate::merge_config_file(&self.config_path(), patch)
    }

    /// The whole node lost: Patroni and PostgreSQL killed at once.
    pub fn kill_node(&mut self) {
        let pid = self.postmaster_pid();
        self.kill();
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// The config pgwarden reads on this node after the migration: the same
    /// `patroni.yml`, with the pgpass file moved out of the way of Patroni's
    /// and pgwarden's gRPC listeners on free ports (docs/migrating-from-patroni.md).
    pub fn write_pgwarden_config(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("pgwarden.yml");
        write_config(&path, &std::fs::read_to_string(self.config_path())?)?;
        let pgpass = format!("{}/pgpass", self.dir.path().display());
        let yaml: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&path)?)?;
        anyhow::ensure!(yaml["postgresql"]["pgpass"] == pgpass.as_str(), "patroni.yml sets postgresql.pgpass");
        crate::merge_config_file(
            &path,
            serde_json::json!({
                "postgresql": {"pgpass": format!("{pgpass}_pgwarden")},
                "pgwarden": {
                    "agent_grpc_listen": format!("127.0.0.1:{}", free_port()),
                    "controller_grpc_listen": format!("127.0.0.1:{}", free_port()),
                },
            }),
        )?;
        Ok(path)
    }

    /// Starts pgwarden's three services on this node (Patroni must be stopped).
    pub fn start_pgwarden(&mut self) -> anyhow::Result<()> {
        self.start_pgwarden_on(&self.dir.path().join("pgwarden.yml"))
    }

    /// As [`PatroniNode::start_pgwarden`], reading `config` (e.g. the node's
    /// unchanged `patroni.yml`).
    pub fn start_pgwarden_on(&mut self, config: &Path) -> anyhow::Result<()> {
        let config = config.display().to_string();
        for (binary, label) in
            [("pgwarden-health", "health"), ("pgwarden-agent", "agent"), ("pgwarden-controller", "controller")]
        {
            self.pgwarden.push(crate::service::spawn(binary, &[&config], &self.dir, label)?);
        }
        Ok(())
    }

    /// Stops pgwarden on this node as `systemctl stop pgwarden.target` does:
    /// the agent cleanly (it stops PostgreSQL), then the others.
    pub fn stop_pgwarden(&mut self) {
        let mut services: Vec<ChildGuard> = self.pgwarden.drain(..).collect();
        if let Some(agent) = services.iter_mut().find(|s| s.name == "pgwarden-agent") {
            agent.terminate(Duration::from_secs(60));
        }
        for mut service in services {
            service.terminate(Duration::from_secs(10));
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn health_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("health.log")).unwrap_or_default()
    }

    /// The exit code of this node's pgwarden agent once it has exited
    /// (`Some(None)`: killed by a signal); `None` while it runs or never ran.
    pub fn agent_exit_code(&mut self) -> Option<Option<i32>> {
        self.pgwarden.iter_mut().find(|s| s.name == "pgwarden-agent").and_then(ChildGuard::try_exit_code)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("patroni.log")).unwrap_or_default()
    }

    fn stop_postgres(&self) {
        crate::postgres::stop_immediate(&self.data_dir());
    }
}

impl Drop for PatroniNode {
    fn drop(&mut self) {
        self.kill();
        for mut service in self.pgwarden.drain(..) {
            service.kill();
        }
        self.stop_postgres();
    }
}

/// Timings of `bootstrap.dcs`.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

/// Patroni's tightest accepted timings (its validator's minimums:
/// ttl 20, loop_wait 1, retry_timeout 3).
pub const PATRONI_MIN: Timings = Timings { ttl: 20, loop_wait: 1, retry_timeout: 3 };

/// A node's `patroni.yml`: the settings [`crate::cluster`] gives pgwarden
/// nodes, in the form Patroni's docs use. `etcd_hosts` is `host:port,...`.
pub fn node_config(scope: &str, node: &PatroniNode, etcd_hosts: &str, timings: Timings) -> String {
    format!(
        "scope: {scope}\nnamespace: /service/\nname: {name}\n\
         restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
         etcd3:\n  hosts: {etcd_hosts}\n  use_proxies: true\n\
         bootstrap:\n  dcs:\n    ttl: {ttl}\n    loop_wait: {loop_wait}\n    retry_timeout: {retry}\n\
         \x20   maximum_lag_on_failover: 1048576\n\
         \x20   postgresql:\n      use_pg_rewind: true\n      use_slots: true\n\
         \x20 initdb:\n    - encoding: UTF8\n    - data-checksums\n    - auth-host: scram-sha-256\n\
         postgresql:\n  listen: 127.0.0.1:{pg}\n  connect_address: 127.0.0.1:{pg}\n  data_dir: {data}\n\
         \x20 bin_dir: {bin}\n  pgpass: {dir}/pgpass\n\
         \x20 authentication:\n    superuser:\n      username: postgres\n      password: {su}\n\
         \x20   replication:\n      username: replicator\n      password: {repl}\n\
         \x20 parameters:\n    unix_socket_directories: {dir}\n    fsync: 'off'\n    shared_buffers: 16MB\n\
                  \x20 pg_hba:\n    - local all all scram-sha-256\n    - host all all 127.0.0.1/32 scram-sha-256\n\
         \x20   - host replication replicator 127.0.0.1/32 scram-sha-256\n\
         watchdog:\n  mode: off\n\
         tags:\n  nofailover: false\n  noloadbalance: false\n  clonefrom: false\n  nosync: false\n",
        name = node.name,
        rest = node.rest_port,
        ttl = timings.ttl,
        loop_wait = timings.loop_wait,
        retry = timings.retry_timeout,
        pg = node.pg_port,
        data = node.data_dir().display(),
        bin = binaries().bin_dir.display(),
        dir = node.dir.path().display(),
        su = SUPERUSER_PASSWORD,
        repl = REPLICATION_PASSWORD,
    )
}

/// etcd plus N Patroni nodes.
pub struct PatroniCluster {
    pub scope: String,
    pub nodes: Vec<PatroniNode>,
    pub etcd: EtcdCluster,
    /// `proxies[i]` stands between `nodes[i]` and etcd (when started behind proxies).
    pub proxies: Vec<crate::proxy::TcpProxy>,
}

impl PatroniCluster {
    /// Starts etcd and `n` Patroni nodes; with `behind_proxies`, each node
    /// reaches etcd only through its own proxy, which a benchmark can cut.
    pub async fn start(n: usize, timings: Timings, behind_proxies: bool) -> anyhow::Result<Self> {
        patroni_binary()?;
        let etcd = EtcdCluster::start(1).await?;
        let mut cluster = Self { scope: "bench".into(), nodes: Vec::new(), etcd, proxies: Vec::new() };
        let etcd_port: u16 = cluster.etcd.host_ports()[0]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("etcd's port"))?;
        for i in 1..=n {
            let hosts = if behind_proxies {
                let proxy = crate::proxy::TcpProxy::start(etcd_port).await?;
                let hosts = format!("127.0.0.1:{}", proxy.port);
                cluster.proxies.push(proxy);
                hosts
            } else {
                cluster.etcd.host_ports().join(",")
            };
            cluster.add_node(&format!("node{i}"), &hosts, timings)?;
        }
        for node in &mut cluster.nodes {
            node.start()?;
        }
        Ok(cluster)
    }

    /// etcd and no node yet; the scope names the cluster.
    pub async fn empty(scope: &str) -> anyhow::Result<Self> {
        patroni_binary()?;
        let etcd = EtcdCluster::start(1).await?;
        Ok(Self { scope: scope.into(), nodes: Vec::new(), etcd, proxies: Vec::new() })
    }

    /// Adds (without starting) a node whose whole config `yaml` writes from
    /// the node's directory and ports (a guide's `patroni.yml`). The REST
    /// port leaves + 1000 and + 2000 free for pgwarden's services, which
    /// derive their ports from it when the node moves to pgwarden.
    pub fn add_node_from(
        &mut self,
        name: &str,
        yaml: impl FnOnce(&PatroniNode) -> String,
    ) -> anyhow::Result<&mut PatroniNode> {
        let node = PatroniNode {
            name: name.to_string(),
            dir: TestDir::new(&format!("patroni-{name}")),
            rest_port: crate::port::free_port_with_offsets(&[1000, 2000]),
            pg_port: free_port(),
            patroni: None,
            pgwarden: Vec::new(),
        };
        write_config(&node.config_path(), &yaml(&node))?;
        self.nodes.push(node);
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    /// Starts every node added and not running.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if node.patroni.is_none() {
                node.start()?;
            }
        }
        Ok(())
    }

    /// Adds (without starting) a node with its own directory and ports.
    pub fn add_node(&mut self, name: &str, etcd_hosts: &str, timings: Timings) -> anyhow::Result<&mut PatroniNode> {
        let node = PatroniNode {
            name: name.to_string(),
            dir: TestDir::new(&format!("patroni-{name}")),
            rest_port: free_port(),
            pg_port: free_port(),
            patroni: None,
            pgwarden: Vec::new(),
        };
        write_config(&node.config_path(), &node_config(&self.scope, &node, etcd_hosts, timings))?;
        self.nodes.push(node);
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    pub fn backends(&self) -> Vec<Backend> {
        self.nodes
            .iter()
            .map(|n| Backend {
                name: n.name.clone(),
                host: "127.0.0.1".into(),
                pg_port: n.pg_port,
                rest_port: n.rest_port,
            })
            .collect()
    }

    /// Waits until exactly one node answers 200 on `/primary` and every other
    /// one is a streaming replica (`/replica` 200 and `replication_state`
    /// streaming in `/patroni`); returns the leader's index.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_until("one Patroni primary and streaming replicas", timeout, || async {
            let primary: Vec<usize> =
                (0..self.nodes.len()).filter(|&i| self.nodes[i].check("/primary") == 200).collect();
            let streaming = (0..self.nodes.len())
                .filter(|&i| {
                    self.nodes[i].check("/replica") == 200
                        && self.nodes[i].get("/patroni").is_some_and(|b| {
                            b.contains("\"replication_state\": \"streaming\"")
                                || b.contains("\"replication_state\":\"streaming\"")
                        })
                })
                .count();
            match primary.as_slice() {
                [leader] if streaming == self.nodes.len() - 1 => Ok(Some(*leader)),
                _ => Err(format!("primaries {primary:?}, streaming replicas {streaming}")),
            }
        })
        .await
    }
}

fn write_config(path: &Path, yaml: &str) -> anyhow::Result<()> {
    std::fs::write(path, yaml)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    crate::process::give_to_postgres(path);
    Ok(())
}
