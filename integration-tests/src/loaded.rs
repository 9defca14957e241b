//! A cluster under load, as every fault test wants it: HAProxy in front
//! (the deployed config), clients writing numbered rows through its write
//! port, each to its own table, and every node probed directly for
//! writability many times a second; and the faults those tests inject.
//!
//! ```ignore
//! let mut loaded = LoadedCluster::start(ClusterSpec::nodes(3), 3).await?;
//! let leader = loaded.leader;
//! Fault::AgentFrozen.inject(&mut loaded.cluster, leader).await?;
//! let new_leader = loaded.cluster.wait_healthy_among(&[..], UP).await?;
//! Fault::AgentFrozen.recover(&mut loaded.cluster, leader).await?;
//! loaded.finish("frozen agent", &[leader, new_leader]).await;
//! ```

use std::time::Duration;

use crate::cluster::{PgwardenCluster, SUPERUSER_PASSWORD, Service};
use crate::haproxy::{HaProxy, deploy_config};
use crate::port::free_port;
use crate::probe::{ProbeReport, WriteProbe};
use crate::spec::ClusterSpec;
use crate::writer::Writers;

/// How long the fixture waits for the cluster, the writers and the probes.
const UP: Duration = Duration::from_secs(90);

/// A healthy cluster behind HAProxy, with writers and probes running.
pub struct LoadedCluster {
    pub cluster: PgwardenCluster,
    pub haproxy: HaProxy,
    /// HAProxy's write port (the primary's backend).
    pub write_port: u16,
    /// The primary when the load started.
    pub leader: usize,
    writers: Option<Writers>,
    probe: Option<WriteProbe>,
}

/// What [`LoadedCluster::finish`] measured.
#[derive(Debug)]
pub struct LoadReport {
    /// Rows the writers saw acknowledged.
    pub acknowledged: usize,
    /// Acknowledged rows missing when read back (`table: ids`).
    pub lost: Vec<String>,
    pub probes: ProbeReport,
}

impl LoadedCluster {
    /// Starts `spec`, waits for one primary with streaming replicas, puts
    /// HAProxy in front and starts the probes and `writers` clients;
    /// returns once each client has an acknowledged row.
    pub async fn start(spec: ClusterSpec<'_>, writers: usize) -> anyhow::Result<Self> {
        Self::load(spec.start().await?, writers).await
    }

    /// As [`LoadedCluster::start`], over a cluster already started.
    pub async fn load(cluster: PgwardenCluster, writers: usize) -> anyhow::Result<Self> {
        let leader = cluster.wait_healthy(UP).await?;
        let (write_port, read, stats) = (free_port(), free_port(), free_port());
        let config = deploy_config(write_port, read, stats, &cluster.backends());
        let haproxy = HaProxy::start(&config, &[write_port, read, stats]).await?;
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.pg_port).collect();
        let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
        let writers = Writers::start(write_port, SUPERUSER_PASSWORD, "acked", writers, UP).await?;
        probe.wait_answered(UP).await?;
        Ok(Self { cluster, haproxy, write_port, leader, writers: Some(writers), probe: Some(probe) })
    }

    /// Stops the load once every writer has written again and reads every
    /// acknowledged row back through HAProxy. Panics, naming `fault`, if a
    /// row is missing, if two nodes ever accepted writes at the same moment,
    /// or if the nodes that accepted writes, in order, are not `writers`
    /// (`[old, new]` where the old primary may lead again is `[old]` then).
    pub async fn finish(&mut self, fault: &str, writers: &[usize]) -> LoadReport {
        let report = self.finish_asynchronous(fault).await;
        assert!(report.lost.is_empty(), "{fault}: acknowledged rows lost: {:?}", report.lost);
        // `[old, new]` with the old primary leading again is `[old]`.
        let mut expected = writers.to_vec();
        expected.dedup();
        assert_eq!(report.probes.writers(), expected, "{fault}: the nodes that accepted writes, in order");
        report
    }

    /// As [`LoadedCluster::finish`], where asynchronous replication may lose
    /// what the old primary acknowledged last: only two writable nodes at
    /// once fail it; the rows lost are in the report.
    pub async fn finish_asynchronous(&mut self, fault: &str) -> LoadReport {
        let clients = self.writers.take().expect("the load runs (finish is called once)");
        let count = clients.len();
        let (acknowledged, lost) = clients.stop_and_check(UP).await.expect("writes go through again, and read back");
        let probes = self.probe.take().expect("the probes run").stop().await;
        let overlap = probes.two_writer_seconds();
        println!(
            "{fault}: {acknowledged} rows acknowledged to {count} writers through HAProxy, {} lost; seconds with \
             two writable nodes: {overlap:.3}; nodes that accepted writes: {:?}",
            lost.len(),
            probes.writers()
        );
        assert_eq!(overlap, 0.0, "{fault}: two nodes accepted writes at the same time: {:?}", probes.spans);
        LoadReport { acknowledged, lost, probes }
    }

    /// Waits until every writer has an acknowledgement after `instant`.
    pub async fn wait_writes_after(&self, instant: std::time::Instant) -> anyhow::Result<()> {
        self.writers.as_ref().expect("the load runs").wait_ack_after(instant, UP).await
    }
}

/// A fault a test injects into one node (or, for etcd, into everyone), and
/// how it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node's postmaster killed (SIGKILL); the agent starts it again.
    PostgresKilled,
    /// Agent, health API, controller and PostgreSQL killed at once;
    /// recovered by starting the three services again.
    NodeLost,
    /// The agent stopped (SIGSTOP); thawed (SIGCONT).
    AgentFrozen,
    /// The agent killed (SIGKILL), PostgreSQL left running; started again.
    AgentKilled,
    /// The node's etcd proxy cut ([`ClusterSpec::behind_proxies`]); restored.
    EtcdCut,
    /// etcd's first member killed, for every node; started again.
    EtcdStopped,
}

impl Fault {
    pub async fn inject(self, cluster: &mut PgwardenCluster, node: usize) -> anyhow::Result<()> {
        let target = &mut cluster.nodes[node];
        match self {
            Self::PostgresKilled => {
                let pid = target.postmaster_pid().ok_or_else(|| anyhow::anyhow!("no postmaster on {}", target.name))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
            }
            Self::NodeLost => target.kill_node(),
            Self::AgentFrozen => target.signal_agent(nix::sys::signal::Signal::SIGSTOP),
            Self::AgentKilled => target.kill(Service::Agent),
            Self::EtcdCut => cluster.proxies.get(node).ok_or_else(|| anyhow::anyhow!("not behind proxies"))?.cut(),
            Self::EtcdStopped => cluster.etcd.kill(0),
        }
        Ok(())
    }

    pub async fn recover(self, cluster: &mut PgwardenCluster, node: usize) -> anyhow::Result<()> {
        match self {
            Self::PostgresKilled => {}
            Self::NodeLost => {
                let target = &mut cluster.nodes[node];
                for service in [Service::Agent, Service::Health, Service::Controller] {
                    target.start(service)?;
                }
            }
            Self::AgentFrozen => cluster.nodes[node].signal_agent(nix::sys::signal::Signal::SIGCONT),
            Self::AgentKilled => cluster.nodes[node].start(Service::Agent)?,
            Self::EtcdCut => cluster.proxies.get(node).ok_or_else(|| anyhow::anyhow!("not behind proxies"))?.restore(),
            Self::EtcdStopped => cluster.etcd.restart(0).await?,
        }
        Ok(())
    }
}
