//! A pgwarden cluster on loopback for tests: one etcd, N nodes each running
//! `pgwarden-agent` and `pgwarden-health` as `postgres` from their own
//! config file, data directory and ports.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::etcd::EtcdCluster;
use crate::haproxy::Backend;
use crate::port::free_port;
use crate::postgres::binaries;
use crate::process::{ChildGuard, TestDir, run_as_postgres};
use crate::service::spawn_with_env;
use crate::spec::ClusterSpec;
use crate::wait::wait_until;

pub const SUPERUSER_PASSWORD: &str = "test-superuser-secret";
pub const REPLICATION_PASSWORD: &str = "test-replication-secret";
/// `restapi.authentication` of every test node (the write endpoints need it).
pub const REST_USER: &str = "admin";
pub const REST_PASSWORD: &str = "test-rest-secret";

/// The `Authorization` header of `REST_USER` for the REST API's write endpoints.
pub fn rest_authorization() -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{REST_USER}:{REST_PASSWORD}")))
}

/// One of a node's three pgwarden services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Agent,
    Health,
    Controller,
}

impl Service {
    pub fn binary(self) -> &'static str {
        match self {
            Self::Agent => "pgwarden-agent",
            Self::Health => "pgwarden-health",
            Self::Controller => "pgwarden-controller",
        }
    }

    /// Its log's name in the node's directory (`agent.log`, ...).
    fn label(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Health => "health",
            Self::Controller => "controller",
        }
    }
}

/// One node: its directory, ports and running services.
pub struct Node {
    pub name: String,
    pub dir: TestDir,
    pub rest_port: u16,
    pub pg_port: u16,
    pub agent_port: u16,
    pub controller_port: u16,
    /// Extra environment of the services started from now on (e.g. systemd's
    /// `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// A file the services started from now on read as `/etc/resolv.conf`
    /// (each in a private mount namespace): a test's own DNS server.
    pub resolv_conf: Option<PathBuf>,
    agent: Option<ChildGuard>,
    health: Option<ChildGuard>,
    controller: Option<ChildGuard>,
}

impl Node {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgwarden.yml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `GET path` on this node's health API: the status code, or 0 when it
    /// does not answer.
    pub fn check(&self, path: &str) -> u16 {
        crate::service::status_of(self.rest_port, path)
    }

    pub fn get(&self, path: &str) -> Option<String> {
        crate::service::body_of(self.rest_port, path)
    }

    /// As [`Node::check`] and [`Node::get`] at once, on the async runtime:
    /// the status code (0 when nothing answers within 2 s) and the body.
    pub async fn probe(&self, path: &str) -> (u16, String) {
        crate::service::get_async(self.rest_port, path, Duration::from_secs(2)).await.unwrap_or_default()
    }

    fn child(&mut self, service: Service) -> &mut Option<ChildGuard> {
        match service {
            Service::Agent => &mut self.agent,
            Service::Health => &mut self.health,
            Service::Controller => &mut self.controller,
        }
    }

    /// Starts `service` from this node's config file.
    pub fn start(&mut self, service: Service) -> anyhow::Result<()> {
        let config = self.config_path().display().to_string();
        let child = match &self.resolv_conf {
            Some(resolv) => crate::service::spawn_with_resolv_conf(
                service.binary(),
                &[&config],
                &self.dir,
                service.label(),
                &self.env,
                resolv,
            )?,
            None => spawn_with_env(service.binary(), &[&config], &self.dir, service.label(), &self.env)?,
        };
        *self.child(service) = Some(child);
        Ok(())
    }

    /// Kills `service` at once (SIGKILL); PostgreSQL keeps running.
    pub fn kill(&mut self, service: Service) {
        if let Some(mut child) = self.child(service).take() {
            child.kill();
        }
    }

    /// What `service` has logged so far.
    pub fn log(&self, service: Service) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", service.label()))).unwrap_or_default()
    }

    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        self.start(Service::Agent)
    }

    /// The exit code of this node's agent once it has exited (`Some(None)`:
    /// killed by a signal); `None` while it runs or never ran.
    pub fn agent_exit_code(&mut self) -> Option<Option<i32>> {
        self.agent.as_mut().and_then(ChildGuard::try_exit_code)
    }

    /// Waits up to `timeout` for this node's agent to exit and returns its
    /// exit code (`None`: killed by a signal); panics, with its log, if it
    /// still runs.
    pub async fn wait_agent_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if let Some(code) = self.agent_exit_code() {
                return code;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the agent on {} did not exit within {timeout:?}: {}", self.name, self.agent_log());
    }

    pub fn start_health(&mut self) -> anyhow::Result<()> {
        self.start(Service::Health)
    }

    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        self.start(Service::Controller)
    }

    /// The running pgwarden services of this node and their pids.
    pub fn service_pids(&self) -> Vec<(&'static str, u32)> {
        [(Service::Agent, &self.agent), (Service::Health, &self.health), (Service::Controller, &self.controller)]
            .into_iter()
            .filter_map(|(service, child)| child.as_ref().and_then(ChildGuard::pid).map(|pid| (service.binary(), pid)))
            .collect()
    }

    /// Kills the controller at once (SIGKILL).
    pub fn kill_controller(&mut self) {
        self.kill(Service::Controller);
    }

    /// The controller's gRPC URL.
    pub fn controller_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.controller_port)
    }

    pub fn controller_log(&self) -> String {
        self.log(Service::Controller)
    }

    /// Stops the agent cleanly (SIGTERM): it stops PostgreSQL and hands over.
    pub fn stop_agent(&mut self) -> bool {
        self.agent.take().is_some_and(|mut agent| agent.terminate(Duration::from_secs(60)))
    }

    /// Sends a signal to the agent (SIGSTOP freezes it, SIGCONT thaws it).
    pub fn signal_agent(&self, signal: nix::sys::signal::Signal) {
        if let Some(agent) = &self.agent {
            agent.signal(signal);
        }
    }

    pub fn health_log(&self) -> String {
        self.log(Service::Health)
    }

    /// Kills the health API at once (SIGKILL).
    pub fn kill_health(&mut self) {
        self.kill(Service::Health);
    }

    /// The whole node lost at once: agent, health API, controller and PostgreSQL killed.
    pub fn kill_node(&mut self) {
        let pid = self.postmaster_pid();
        self.kill_agent();
        self.kill_health();
        self.kill_controller();
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Kills the agent at once (SIGKILL); PostgreSQL keeps running.
    pub fn kill_agent(&mut self) {
        self.kill(Service::Agent);
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        crate::postgres::postmaster_pid_in(&self.data_dir())
    }

    /// Stops PostgreSQL by data directory (immediate), as a harness must:
    /// `pg_ctl` detached the postmaster from the agent.
    pub fn stop_postgres(&self) {
        if !self.data_dir().join("postmaster.pid").exists() {
            return;
        }
        let mut cmd = Command::new(binaries().path("pg_ctl"));
        cmd.arg("-D").arg(self.data_dir()).args(["stop", "-m", "immediate", "-w", "-t", "10"]);
        cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let _ = run_as_postgres(&mut cmd).status();
    }

    /// Runs SQL on this node's PostgreSQL over TCP as the superuser.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        psql_port(self.pg_port, sql)
    }

    /// Merges `patch` into this node's config file as values (a map's keys
    /// into the map, anything else replacing), so a test can add to the
    /// `postgresql:` or `bootstrap:` sections the harness writes. The file
    /// is written back as JSON, which YAML reads.
    pub fn merge_config(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        crate::merge_config_file(&self.config_path(), patch)
    }

    pub fn agent_log(&self) -> String {
        self.log(Service::Agent)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_health();
        self.kill_controller();
        self.kill_agent();
        self.stop_postgres();
    }
}

/// Runs SQL through `psql` against 127.0.0.1:`port` as the superuser, with
/// the password in the environment (never on the command line).
pub fn psql_port(port: u16, sql: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new(binaries().bin_dir.join("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "3")
        .current_dir("/")
        .stdin(Stdio::null());
    let output = run_as_postgres(&mut cmd).output()?;
    anyhow::ensure!(
        output.status.success(),
        "psql on port {port} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Node `i`'s config: Patroni format, fast timings, loopback only, no
/// watchdog; `extra` (the test's YAML for this node) merged in as values, so
/// a node's own `etcd3:` or `watchdog:` keys replace the harness's.
fn node_config(
    name: &str,
    scope: &str,
    node: &Node,
    etcd: &EtcdCluster,
    ttl: u32,
    synchronous: bool,
    extra: &str,
) -> anyhow::Result<String> {
    let base = format!(
        "scope: {scope}\nnamespace: /itest/\nname: {name}\n\
         restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
         \x20 authentication:\n    username: {rest_user}\n    password: {rest_password}\n\
         etcd3:\n  hosts: {etcd}\n\
         bootstrap:\n  dcs:\n    ttl: {ttl}\n    loop_wait: 1\n    retry_timeout: 3\n    synchronous_mode: {synchronous}\n    postgresql:\n      use_pg_rewind: true\n      use_slots: true\n\
         \x20 initdb:\n    - encoding: UTF8\n    - data-checksums\n\
         postgresql:\n  listen: 127.0.0.1:{pg}\n  connect_address: 127.0.0.1:{pg}\n  data_dir: {data}\n\
         \x20 authentication:\n    superuser:\n      username: postgres\n      password: {su}\n\
         \x20   replication:\n      username: replicator\n      password: {repl}\n\
         \x20 parameters:\n    unix_socket_directories: {sock}\n    fsync: 'off'\n    shared_buffers: 16MB\n\
         pgwarden:\n  agent_grpc_listen: 127.0.0.1:{agent}\n  controller_grpc_listen: 127.0.0.1:{controller}\n\
         watchdog:\n  mode: 'off'\n",
        rest = node.rest_port,
        rest_user = REST_USER,
        rest_password = REST_PASSWORD,
        etcd = etcd.host_ports().join(","),
        pg = node.pg_port,
        data = node.data_dir().display(),
        su = SUPERUSER_PASSWORD,
        repl = REPLICATION_PASSWORD,
        sock = node.dir.path().display(),
        agent = node.agent_port,
        controller = node.controller_port,
    );
    crate::yaml::merged(&base, extra)
}

/// etcd plus N pgwarden nodes.
pub struct PgwardenCluster {
    pub scope: String,
    pub nodes: Vec<Node>,
    pub etcd: EtcdCluster,
    /// `bootstrap.dcs.ttl` of nodes added from now on (default 10; loop_wait 1, retry_timeout 3).
    pub ttl: u32,
    /// `bootstrap.dcs.synchronous_mode` of nodes added from now on (default off).
    pub synchronous: bool,
    /// The etcd proxies of a [`ClusterSpec::behind_proxies`] cluster
    /// (`proxies[i]` serves `nodes[i]`); empty otherwise.
    pub proxies: Vec<crate::proxy::TcpProxy>,
}

impl PgwardenCluster {
    /// No nodes yet, on `etcd`: nodes added from now on belong to `scope`
    /// with `bootstrap.dcs.ttl` = `ttl`.
    pub fn empty(etcd: EtcdCluster, scope: &str, ttl: u32) -> Self {
        Self { scope: scope.into(), nodes: Vec::new(), etcd, ttl, synchronous: false, proxies: Vec::new() }
    }

    /// `n` nodes as [`ClusterSpec::nodes`] says, started.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        ClusterSpec::nodes(n).start().await
    }

    /// As [`PgwardenCluster::start`], with extra YAML for node `i` (1-based),
    /// e.g. a `tags:` section.
    pub async fn start_with(n: usize, extra: impl Fn(usize) -> String) -> anyhow::Result<Self> {
        ClusterSpec::nodes(n).node_yaml(extra).start().await
    }

    /// As [`PgwardenCluster::start_with`], over an etcd of `etcd_members` members.
    pub async fn start_with_etcd(
        n: usize,
        etcd_members: usize,
        extra: impl Fn(usize) -> String,
    ) -> anyhow::Result<Self> {
        ClusterSpec::nodes(n).etcd_members(etcd_members).node_yaml(extra).start().await
    }

    /// `n` nodes of cluster `scope` (ttl `ttl`) on an etcd that other
    /// clusters share ([`EtcdCluster::shared`]).
    pub fn start_on(etcd: EtcdCluster, scope: &str, n: usize, ttl: u32) -> anyhow::Result<Self> {
        let mut cluster = Self::empty(etcd, scope, ttl);
        for i in 1..=n {
            cluster.add_node(&format!("node{i}"), "")?;
        }
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Adds (without starting) a node whose whole config `yaml` writes, from
    /// the node's directory and ports; the agent and controller listen where
    /// pgwarden's defaults put them (REST port + 1000 and + 2000), so a
    /// config without a `pgwarden:` section works.
    pub fn add_node_from(&mut self, name: &str, yaml: impl FnOnce(&Node) -> String) -> anyhow::Result<&mut Node> {
        let rest_port = crate::port::free_port_with_offsets(&[1000, 2000]);
        let node = Node {
            name: name.to_string(),
            dir: TestDir::new(name),
            rest_port,
            pg_port: free_port(),
            agent_port: rest_port + 1000,
            controller_port: rest_port + 2000,
            env: Vec::new(),
            resolv_conf: None,
            agent: None,
            health: None,
            controller: None,
        };
        std::fs::write(node.config_path(), yaml(&node))?;
        std::fs::set_permissions(node.config_path(), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        crate::process::give_to_postgres(&node.config_path());
        self.nodes.push(node);
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    /// Starts node1 and waits for it to lead (it bootstraps the cluster),
    /// then every other node not running yet.
    pub async fn start_node1_first(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.start_node(0)?;
        let leader = self.wait_primary(timeout).await?;
        anyhow::ensure!(leader == 0, "node{} leads, not node1", leader + 1);
        self.start_all()
    }

    /// Starts node `i`'s agent, health API and controller.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        node.start_agent()?;
        node.start_health()?;
        node.start_controller()
    }

    /// Starts the agent, health API and controller of every node not running yet.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if node.agent.is_none() {
                node.start_agent()?;
                node.start_health()?;
                node.start_controller()?;
            }
        }
        Ok(())
    }

    /// Adds (without starting) a node with its own directory and ports.
    pub fn add_node(&mut self, name: &str, extra_config: &str) -> anyhow::Result<&mut Node> {
        let mut node = Node {
            name: name.to_string(),
            dir: TestDir::new(name),
            rest_port: free_port(),
            pg_port: free_port(),
            agent_port: free_port(),
            controller_port: free_port(),
            env: Vec::new(),
            resolv_conf: None,
            agent: None,
            health: None,
            controller: None,
        };
        let yaml = node_config(name, &self.scope, &node, &self.etcd, self.ttl, self.synchronous, extra_config)?;
        std::fs::write(node.config_path(), yaml)?;
        crate::process::give_to_postgres(&node.config_path());
        node.health = None;
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

    /// Waits until exactly one node answers 200 on `/primary` and every
    /// other one 200 on `/replica` with its WAL receiver streaming; returns
    /// the leader's index.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<usize> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_healthy_among(&all, timeout).await
    }

    /// As [`PgwardenCluster::wait_healthy`], over the nodes in `among` only.
    pub async fn wait_healthy_among(&self, among: &[usize], timeout: Duration) -> anyhow::Result<usize> {
        wait_until("one primary and streaming replicas", timeout, || async {
            let (mut primary, mut replicas, mut streaming) = (Vec::new(), 0, 0);
            for &i in among {
                let node = &self.nodes[i];
                if node.probe("/primary").await.0 == 200 {
                    primary.push(i);
                }
                if node.probe("/replica").await.0 == 200 {
                    replicas += 1;
                }
                if node.probe("/patroni").await.1.contains("\"replication_state\":\"streaming\"") {
                    streaming += 1;
                }
            }
            match primary.as_slice() {
                [leader] if replicas == among.len() - 1 && streaming == replicas => Ok(Some(*leader)),
                _ => Err(format!("primaries {primary:?}, replicas {replicas}, streaming {streaming}")),
            }
        })
        .await
    }

    /// Waits until exactly one node answers 200 on `/primary`; returns it.
    pub async fn wait_primary(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_until("exactly one primary", timeout, || async {
            let mut primary = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.probe("/primary").await.0 == 200 {
                    primary.push(i);
                }
            }
            match primary.as_slice() {
                [leader] => Ok(Some(*leader)),
                _ => Err(format!("primaries {primary:?}")),
            }
        })
        .await
    }

    /// Puts a value under the cluster's prefix (`failover`, `config`, ...).
    pub async fn put_key(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut client = self.etcd.client().await?;
        client.put(format!("/itest/{}/{key}", self.scope), value, None).await?;
        Ok(())
    }

    /// Deletes a key under the cluster's prefix, as an operator's `etcdctl del` would.
    pub async fn delete_key(&self, key: &str) -> anyhow::Result<()> {
        let mut client = self.etcd.client().await?;
        client.delete(format!("/itest/{}/{key}", self.scope), None).await?;
        Ok(())
    }

    /// Sets top-level keys of the dynamic config (the `config` key) behind
    /// the controller's back, as `patronictl` or an operator's `etcdctl`
    /// would.
    pub async fn patch_config(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        let current = self.get_key("config").await?.ok_or_else(|| anyhow::anyhow!("no config key yet"))?;
        let mut config: serde_json::Value = serde_json::from_str(&current)?;
        for (key, value) in patch.as_object().ok_or_else(|| anyhow::anyhow!("a patch is a JSON object"))? {
            config[key] = value.clone();
        }
        self.put_key("config", &config.to_string()).await
    }

    /// Reads a value under the cluster's prefix.
    pub async fn get_key(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut client = self.etcd.client().await?;
        let response = client.get(format!("/itest/{}/{key}", self.scope), None).await?;
        Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// `key`'s value just before the present `leader` key was created: what
    /// the cluster said at the moment the present leader took over (etcd
    /// keeps every revision; the tests' etcd is never compacted).
    pub async fn key_before_the_leader_took_over(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut client = self.etcd.client().await?;
        let leader = client.get(format!("/itest/{}/leader", self.scope), None).await?;
        let created =
            leader.kvs().first().map(|kv| kv.create_revision()).ok_or_else(|| anyhow::anyhow!("no leader key"))?;
        let options = etcd_client::GetOptions::new().with_revision(created - 1);
        let response = client.get(format!("/itest/{}/{key}", self.scope), Some(options)).await?;
        Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The ttl (seconds) the lease of `key` was granted with; `None` without key or lease.
    pub async fn lease_ttl(&self, key: &str) -> anyhow::Result<Option<i64>> {
        let mut client = self.etcd.client().await?;
        let response = client.get(format!("/itest/{}/{key}", self.scope), None).await?;
        let Some(lease) = response.kvs().first().map(|kv| kv.lease()).filter(|&l| l != 0) else { return Ok(None) };
        Ok(Some(client.lease_time_to_live(lease, None).await?.granted_ttl()))
    }

    /// The leader's last published WAL position (`status.optime`), 0 if none.
    pub async fn optime(&self) -> u64 {
        let status = self.get_key("status").await.ok().flatten().unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&status).ok().and_then(|json| json["optime"].as_u64()).unwrap_or(0)
    }

    /// The cluster's system identifier from etcd.
    pub async fn system_identifier(&self) -> anyhow::Result<String> {
        let mut client = self.etcd.client().await?;
        let response = client.get(format!("/itest/{}/initialize", self.scope), None).await?;
        let kv = response.kvs().first().ok_or_else(|| anyhow::anyhow!("no initialize key"))?;
        Ok(String::from_utf8_lossy(kv.value()).into_owned())
    }
}
