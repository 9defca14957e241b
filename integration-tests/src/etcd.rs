//! A real etcd: one member, or three, on loopback.

use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::port::free_port;
use crate::process::{ChildGuard, TestDir};
use crate::wait::wait_until;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<ChildGuard>,
}

/// An etcd cluster started for one test; every member is killed on drop.
pub struct EtcdCluster {
    dir: TestDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// Client URLs member 0 advertises besides its own (`start_advertising`).
    extra_advertised: Vec<String>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_advertising(size, &[]).await
    }

    /// As [`EtcdCluster::start`], member 0 also advertising `extra` client
    /// URLs (a misconfigured member: the URLs may reach another etcd).
    pub async fn start_advertising(size: usize, extra: &[String]) -> anyhow::Result<Self> {
        let dir = TestDir::new("etcd");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self { dir, members, initial_cluster, extra_advertised: extra.to_vec() };
        for idx in 0..size {
            cluster.spawn_member(idx, "new")?;
        }
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn spawn_member(&mut self, idx: usize, state: &str) -> anyhow::Result<()> {
        let member = &self.members[idx];
        let data = self.dir.path().join(&member.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))?;
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let mut advertised = vec![client_url.clone()];
        if idx == 0 {
            advertised.extend(self.extra_advertised.iter().cloned());
        }
        let advertised = advertised.join(",");
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &advertised])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &format!("pgwarden-test-{}", std::process::id())])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // As the guides' etcd configs: Patroni's `etcd:` section needs the v2 API.
            .arg("--enable-v2=true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let name = member.name.clone();
        let guard = ChildGuard::spawn(&mut cmd, "etcd", &self.dir)
            .map_err(|e| anyhow::anyhow!("{e} (is etcd installed? apt-get install etcd-server)"))?;
        self.members[idx].process = Some(guard);
        tracing::debug!(member = %name, %client_url, "etcd started");
        Ok(())
    }

    /// Another handle on the same members, for clusters that share this
    /// etcd: it starts, kills and stops nothing (the original does).
    pub fn shared(&self) -> Self {
        let members = self
            .members
            .iter()
            .map(|m| Member { name: m.name.clone(), client_port: m.client_port, peer_port: m.peer_port, process: None })
            .collect();
        Self {
            dir: TestDir::new("etcd-shared"),
            members,
            initial_cluster: self.initial_cluster.clone(),
            extra_advertised: Vec::new(),
        }
    }

    /// The PIDs of the running members (none for a shared handle).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.process.as_ref().and_then(ChildGuard::pid)).collect()
    }

    /// Client URLs of every member, killed or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect()
    }

    /// Member `i`'s peer port.
    pub fn peer_port(&self, i: usize) -> u16 {
        self.members[i].peer_port
    }

    /// Member `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// `host:port` of every member, as a Patroni config lists them.
    pub fn host_ports(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
    }

    /// Requests the first member has received since it started: Σ
    /// `grpc_server_msg_received_total` on its metrics endpoint (every unary
    /// call and every message on a stream, such as a lease keep-alive).
    pub fn messages_received(&self) -> anyhow::Result<f64> {
        let port = self.members[0].client_port;
        let (status, body) = crate::service::http_with("GET", port, "/metrics", &[], "", Duration::from_secs(5))?;
        anyhow::ensure!(status == 200, "etcd /metrics answered {status}");
        Ok(body
            .lines()
            .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// A client over every member's endpoint.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let options =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
        Ok(Client::connect(self.endpoints(), Some(options)).await?)
    }

    /// Waits until every running member answers a linearizable read.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        for (idx, member) in self.members.iter().enumerate() {
            if member.process.is_none() {
                continue;
            }
            let url = format!("http://127.0.0.1:{}", member.client_port);
            wait_until(&format!("etcd member {idx} ({url}) to serve"), timeout, || {
                let url = url.clone();
                async move {
                    let options = ConnectOptions::new()
                        .with_connect_timeout(Duration::from_millis(500))
                        .with_timeout(Duration::from_millis(1000))
                        .with_require_leader(true);
                    let mut client = Client::connect([url], Some(options)).await.map_err(|e| e.to_string())?;
                    client.get("/", Some(GetOptions::new().with_count_only())).await.map_err(|e| e.to_string())?;
                    Ok(Some(()))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The index of the member the others follow (asked of each running member).
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for member in self.members.iter().filter(|m| m.process.is_some()) {
            let url = format!("http://127.0.0.1:{}", member.client_port);
            let options = ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
            let mut client = Client::connect([url], Some(options)).await?;
            let status = client.status().await?;
            ids.push((member.name.clone(), status.header().map(|h| h.member_id())));
            leader = Some(status.leader());
        }
        let leader = leader.ok_or_else(|| anyhow::anyhow!("no etcd member is running"))?;
        let name = ids
            .into_iter()
            .find(|(_, id)| *id == Some(leader))
            .map(|(name, _)| name)
            .ok_or_else(|| anyhow::anyhow!("no running member is the etcd leader"))?;
        Ok(self.members.iter().position(|m| m.name == name).expect("a member's name"))
    }

    /// Kills one member at once (SIGKILL).
    pub fn kill(&mut self, idx: usize) {
        if let Some(mut process) = self.members[idx].process.take() {
            process.kill();
        }
    }

    /// Restarts a killed member with its data.
    pub async fn restart(&mut self, idx: usize) -> anyhow::Result<()> {
        self.spawn_member(idx, "existing")?;
        self.wait_healthy(Duration::from_secs(30)).await
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) one member: a network-silent etcd.
    pub fn pause(&self, idx: usize, paused: bool) {
        use nix::sys::signal::Signal;
        if let Some(process) = &self.members[idx].process {
            process.signal(if paused { Signal::SIGSTOP } else { Signal::SIGCONT });
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut process) = member.process.take() {
                // A frozen member must be thawed to die promptly.
                process.signal(nix::sys::signal::Signal::SIGCONT);
                process.kill();
            }
        }
    }
}
