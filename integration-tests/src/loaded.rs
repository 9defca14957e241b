//! A cluster under load, as every fault test and the benchmark want it:
//! HAProxy in front (the deployed config), clients writing numbered rows
//! through its write port, each to its own table, and every node probed
//! directly for writability many times a second; and the faults they inject,
//! into pgwarden's test cluster or Patroni's ([`FaultTarget`]).
//!
//! ```ignore
//! let mut loaded = LoadedCluster::start(ClusterSpec::nodes(3), 3).await?;
//! let leader = loaded.leader;
//! Fault::AgentFrozen.inject(&mut loaded.cluster, leader).await?;
//! let new_leader = loaded.cluster.wait_healthy_among(&[..], UP).await?;
//! Fault::AgentFrozen.recover(&mut loaded.cluster, leader).await?;
//! loaded.finish("frozen agent", &[leader, new_leader]).await;
//! ```

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cluster::{PgwardenCluster, SUPERUSER_PASSWORD, Service};
use crate::etcd::EtcdCluster;
use crate::haproxy::{Backend, HaProxy, deploy_config};
use crate::patroni::PatroniCluster;
use crate::port::free_port;
use crate::probe::{ProbeReport, WriteProbe};
use crate::proxy::TcpProxy;
use crate::spec::ClusterSpec;
use crate::writer::{WRITE_EVERY, WriterReport, Writers};

/// How long the fixture waits for the cluster, the writers and the probes.
const UP: Duration = Duration::from_secs(90);

/// HAProxy in front of a cluster's nodes, writers through its write port and
/// a writability probe on every node: the load of any system under test.
pub struct Load {
    pub haproxy: HaProxy,
    /// HAProxy's write port (the primary's backend).
    pub write_port: u16,
    writers: Option<Writers>,
    probe: Option<WriteProbe>,
}

/// What a load saw, from its start to [`Load::stop`].
#[derive(Debug)]
pub struct LoadReport {
    /// Rows the writers saw acknowledged.
    pub acknowledged: usize,
    /// Acknowledged rows missing when read back (`table: ids`).
    pub lost: Vec<String>,
    /// How many acknowledged rows are missing, over every table.
    pub lost_rows: usize,
    /// Each writer's acknowledgements, with their times.
    pub writers: Vec<WriterReport>,
    /// The acknowledged ids missing from each writer's table, in the
    /// writers' order.
    pub missing: Vec<Vec<i64>>,
    pub probes: ProbeReport,
}

impl Load {
    /// Puts HAProxy in front of `backends`, starts the probes and `writers`
    /// clients (tables `{prefix}0`, ...); returns once each client has an
    /// acknowledged row and every node has answered a probe.
    pub async fn start(backends: &[Backend], writers: usize, prefix: &str, within: Duration) -> anyhow::Result<Self> {
        Self::start_every(backends, writers, prefix, WRITE_EVERY, within).await
    }

    /// As [`Load::start`], each writer writing every `every`.
    pub async fn start_every(
        backends: &[Backend],
        writers: usize,
        prefix: &str,
        every: Duration,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let (write_port, read, stats) = (free_port(), free_port(), free_port());
        let haproxy =
            HaProxy::start(&deploy_config(write_port, read, stats, backends), &[write_port, read, stats]).await?;
        let ports: Vec<u16> = backends.iter().map(|b| b.pg_port).collect();
        let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
        let writers = Writers::start_every(write_port, SUPERUSER_PASSWORD, prefix, writers, every, within).await?;
        probe.wait_answered(within).await?;
        Ok(Self { haproxy, write_port, writers: Some(writers), probe: Some(probe) })
    }

    /// Waits until every writer has an acknowledgement after `instant`.
    pub async fn wait_writes_after(&self, instant: Instant, within: Duration) -> anyhow::Result<()> {
        self.writers
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the load was stopped"))?
            .wait_ack_after(instant, within)
            .await
    }

    /// Waits until any writer has an acknowledgement after `instant`; an
    /// error if none has within `within`.
    pub async fn wait_any_write_after(&self, instant: Instant, within: Duration) -> anyhow::Result<()> {
        self.writers
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the load was stopped"))?
            .wait_any_ack_after(instant, within)
            .await
    }

    /// Stops the writers once each has written again, reads every
    /// acknowledged row back through HAProxy, and stops the probes. Asserts
    /// nothing: the caller decides what the report may hold.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<LoadReport> {
        let clients = self.writers.take().ok_or_else(|| anyhow::anyhow!("the load was stopped"))?;
        let probe = self.probe.take().ok_or_else(|| anyhow::anyhow!("the load was stopped"))?;
        let (writers, missing) = clients.stop_and_report(within).await?;
        let probes = probe.stop().await;
        let acknowledged = writers.iter().map(|w| w.acked.len()).sum();
        let lost_rows = missing.iter().map(Vec::len).sum();
        let lost = missing
            .iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(w, ids)| format!("writer {w}: {ids:?}"))
            .collect();
        Ok(LoadReport { acknowledged, lost, lost_rows, writers, missing, probes })
    }
}

/// A healthy pgwarden cluster under [`Load`].
pub struct LoadedCluster {
    pub cluster: PgwardenCluster,
    pub load: Load,
    /// The primary when the load started.
    pub leader: usize,
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
        Self::load_writing_every(cluster, writers, WRITE_EVERY).await
    }

    /// As [`LoadedCluster::load`], each writer writing every `every`.
    pub async fn load_writing_every(cluster: PgwardenCluster, writers: usize, every: Duration) -> anyhow::Result<Self> {
        let leader = cluster.wait_healthy(UP).await?;
        let load = Load::start_every(&cluster.backends(), writers, "acked", every, UP).await?;
        Ok(Self { cluster, load, leader })
    }

    /// HAProxy's write port.
    pub fn write_port(&self) -> u16 {
        self.load.write_port
    }

    /// Stops the load once every writer has written again and reads every
    /// acknowledged row back through HAProxy. Panics, naming `fault`, if a
    /// row is missing, if two nodes ever accepted writes at the same moment,
    /// or if the nodes that accepted writes, in the order of their first
    /// write, are not `writers` (each counted at its first turn: `[old, new]`
    /// where the old primary may lead again is `[old]` then).
    pub async fn finish(&mut self, fault: &str, writers: &[usize]) -> LoadReport {
        let report = self.finish_asynchronous(fault).await;
        assert!(report.lost.is_empty(), "{fault}: acknowledged rows lost: {:?}", report.lost);
        // Each node once, at its first turn (as the probes count them):
        // `[old, new]` with the old primary leading again is `[old]`.
        let mut expected: Vec<usize> = Vec::new();
        for &node in writers {
            if !expected.contains(&node) {
                expected.push(node);
            }
        }
        assert_eq!(report.probes.writers(), expected, "{fault}: the nodes that accepted writes, in order");
        report
    }

    /// As [`LoadedCluster::finish`], where asynchronous replication may lose
    /// what the old primary acknowledged last: only two writable nodes at
    /// once fail it; the rows lost are in the report.
    pub async fn finish_asynchronous(&mut self, fault: &str) -> LoadReport {
        let report = self.load.stop(UP).await.expect("writes go through again, and read back");
        let overlap = report.probes.two_writer_seconds();
        println!(
            "{fault}: {} rows acknowledged to {} writers through HAProxy, {} lost; seconds with two writable nodes: \
             {overlap:.3}; nodes that accepted writes: {:?}",
            report.acknowledged,
            report.writers.len(),
            report.lost.len(),
            report.probes.writers()
        );
        assert_eq!(overlap, 0.0, "{fault}: two nodes accepted writes at the same time: {:?}", report.probes.spans);
        report
    }

    /// Waits until every writer has an acknowledgement after `instant`.
    pub async fn wait_writes_after(&self, instant: Instant) -> anyhow::Result<()> {
        self.load.wait_writes_after(instant, UP).await
    }
}

/// What a fault needs of the system it is injected into: pgwarden's test
/// cluster, or Patroni's (the benchmark's side-by-side runs).
pub trait FaultTarget {
    fn postmaster_pid(&self, node: usize) -> Option<i32>;
    /// Every HA process and PostgreSQL of the node killed at once.
    fn kill_node(&mut self, node: usize);
    /// The HA agent killed (SIGKILL); PostgreSQL keeps running.
    fn kill_agent(&mut self, node: usize);
    /// The HA agent stopped cleanly (SIGTERM).
    fn stop_agent(&mut self, node: usize);
    fn signal_agent(&self, node: usize, signal: Signal);
    /// The node's HA services started again: its agent, or after a lost
    /// node every one of them.
    fn start_services(&mut self, node: usize, whole_node: bool) -> anyhow::Result<()>;
    /// The per-node etcd proxies ([`ClusterSpec::behind_proxies`]).
    fn etcd_proxies(&self) -> &[TcpProxy];
    fn etcd_mut(&mut self) -> &mut EtcdCluster;
}

impl FaultTarget for PgwardenCluster {
    fn postmaster_pid(&self, node: usize) -> Option<i32> {
        self.nodes[node].postmaster_pid()
    }
    fn kill_node(&mut self, node: usize) {
        self.nodes[node].kill_node();
    }
    fn kill_agent(&mut self, node: usize) {
        self.nodes[node].kill(Service::Agent);
    }
    fn stop_agent(&mut self, node: usize) {
        self.nodes[node].stop_agent();
    }
    fn signal_agent(&self, node: usize, signal: Signal) {
        self.nodes[node].signal_agent(signal);
    }
    fn start_services(&mut self, node: usize, whole_node: bool) -> anyhow::Result<()> {
        let services: &[Service] =
            if whole_node { &[Service::Agent, Service::Health, Service::Controller] } else { &[Service::Agent] };
        services.iter().try_for_each(|&service| self.nodes[node].start(service))
    }
    fn etcd_proxies(&self) -> &[TcpProxy] {
        &self.proxies
    }
    fn etcd_mut(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }
}

/// Patroni's one process is its agent, REST API and all.
impl FaultTarget for PatroniCluster {
    fn postmaster_pid(&self, node: usize) -> Option<i32> {
        self.nodes[node].postmaster_pid()
    }
    fn kill_node(&mut self, node: usize) {
        self.nodes[node].kill_node();
    }
    fn kill_agent(&mut self, node: usize) {
        self.nodes[node].kill();
    }
    fn stop_agent(&mut self, node: usize) {
        self.nodes[node].stop();
    }
    fn signal_agent(&self, node: usize, signal: Signal) {
        self.nodes[node].signal(signal);
    }
    fn start_services(&mut self, node: usize, _whole_node: bool) -> anyhow::Result<()> {
        self.nodes[node].start()
    }
    fn etcd_proxies(&self) -> &[TcpProxy] {
        &self.proxies
    }
    fn etcd_mut(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }
}

/// A fault injected into one node (or, for etcd, into everyone), and how it
/// is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node's postmaster killed (SIGKILL); the agent starts it again.
    PostgresKilled,
    /// Every HA process and PostgreSQL of the node killed at once;
    /// recovered by starting the services again.
    NodeLost,
    /// The agent stopped (SIGSTOP); thawed (SIGCONT).
    AgentFrozen,
    /// The agent killed (SIGKILL), PostgreSQL left running; started again.
    AgentKilled,
    /// The agent stopped cleanly (SIGTERM: it stops PostgreSQL and hands
    /// over); started again.
    AgentStopped,
    /// The node's etcd proxy cut ([`ClusterSpec::behind_proxies`]); restored.
    EtcdCut,
    /// etcd's first member killed, for every node; started again.
    EtcdStopped,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Self::PostgresKilled,
        Self::NodeLost,
        Self::AgentFrozen,
        Self::AgentKilled,
        Self::AgentStopped,
        Self::EtcdCut,
        Self::EtcdStopped,
    ];

    /// The benchmark's name for it (`postgres-killed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::PostgresKilled => "postgres-killed",
            Self::NodeLost => "node-lost",
            Self::AgentFrozen => "agent-frozen",
            Self::AgentKilled => "agent-killed",
            Self::AgentStopped => "agent-stopped",
            Self::EtcdCut => "etcd-cut",
            Self::EtcdStopped => "etcd-stopped",
        }
    }

    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub async fn inject(self, cluster: &mut (impl FaultTarget + ?Sized), node: usize) -> anyhow::Result<()> {
        match self {
            Self::PostgresKilled => {
                let pid =
                    cluster.postmaster_pid(node).ok_or_else(|| anyhow::anyhow!("no postmaster on node {node}"))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)?;
            }
            Self::NodeLost => cluster.kill_node(node),
            Self::AgentFrozen => cluster.signal_agent(node, Signal::SIGSTOP),
            Self::AgentKilled => cluster.kill_agent(node),
            Self::AgentStopped => cluster.stop_agent(node),
            Self::EtcdCut => proxy(cluster, node)?.cut(),
            Self::EtcdStopped => cluster.etcd_mut().kill(0),
        }
        Ok(())
    }

    pub async fn recover(self, cluster: &mut (impl FaultTarget + ?Sized), node: usize) -> anyhow::Result<()> {
        match self {
            Self::PostgresKilled => {}
            Self::NodeLost => cluster.start_services(node, true)?,
            Self::AgentFrozen => cluster.signal_agent(node, Signal::SIGCONT),
            Self::AgentKilled | Self::AgentStopped => cluster.start_services(node, false)?,
            Self::EtcdCut => proxy(cluster, node)?.restore(),
            Self::EtcdStopped => cluster.etcd_mut().restart(0).await?,
        }
        Ok(())
    }
}

fn proxy(cluster: &(impl FaultTarget + ?Sized), node: usize) -> anyhow::Result<&TcpProxy> {
    cluster.etcd_proxies().get(node).ok_or_else(|| anyhow::anyhow!("node {node} does not reach etcd through a proxy"))
}
