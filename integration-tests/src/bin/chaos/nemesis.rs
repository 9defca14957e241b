//! The nemesis: faults picked from a seeded generator, injected at random
//! intervals, overlapping, each healed within a bound; and the operator
//! actions that run beside them.

use std::net::Ipv4Addr;
use std::time::Duration;

use ha_sim::rng::Rng;
use nix::sys::signal::Signal;
use pgwarden_integration_tests::netns::Rule;

use crate::cluster::{ChaosCluster, Service, etcd_roles, http, node_roles};
use crate::workload::Look;

/// What a fault does; `Target::Primary` faults aim at whichever node is the
/// primary when injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    PartitionFromAll,
    PartitionFromEtcd,
    PartitionFromReplicas,
    OneWayPartition,
    IsolateEtcdMember,
    IsolateEtcdLeader,
    PacketLoss,
    SlowLink,
    KillService,
    StopService,
    KillPostgres,
    StopPostgres,
    KillNode,
    DiskFull,
    KillEtcd,
    StopEtcd,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::PartitionFromAll,
        Kind::PartitionFromEtcd,
        Kind::PartitionFromReplicas,
        Kind::OneWayPartition,
        Kind::IsolateEtcdMember,
        Kind::IsolateEtcdLeader,
        Kind::PacketLoss,
        Kind::SlowLink,
        Kind::KillService,
        Kind::StopService,
        Kind::KillPostgres,
        Kind::StopPostgres,
        Kind::KillNode,
        Kind::DiskFull,
        Kind::KillEtcd,
        Kind::StopEtcd,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::PartitionFromAll => "partition a node from everything",
            Kind::PartitionFromEtcd => "partition a node from etcd",
            Kind::PartitionFromReplicas => "partition the primary from the replicas",
            Kind::OneWayPartition => "one-way partition",
            Kind::IsolateEtcdMember => "isolate an etcd member",
            Kind::IsolateEtcdLeader => "isolate the etcd leader",
            Kind::PacketLoss => "packet loss on a link",
            Kind::SlowLink => "slow link",
            Kind::KillService => "SIGKILL a pgwarden service",
            Kind::StopService => "SIGSTOP a pgwarden service",
            Kind::KillPostgres => "SIGKILL PostgreSQL",
            Kind::StopPostgres => "SIGSTOP PostgreSQL",
            Kind::KillNode => "kill a whole node",
            Kind::DiskFull => "full disk (data and WAL)",
            Kind::KillEtcd => "SIGKILL an etcd member",
            Kind::StopEtcd => "SIGSTOP an etcd member",
        }
    }

    /// Seconds until the heal: up to three ttls for the faults that cost a
    /// node its lease (so that some outlast it and force a failover), up to
    /// twenty for the rest.
    pub fn lasts(self, rng: &mut Rng) -> u64 {
        match self {
            Kind::PartitionFromAll
            | Kind::PartitionFromEtcd
            | Kind::OneWayPartition
            | Kind::IsolateEtcdMember
            | Kind::IsolateEtcdLeader
            | Kind::KillNode
            | Kind::StopService => rng.range(5, 30),
            _ => rng.range(2, 20),
        }
    }

    fn touches_etcd(self) -> bool {
        matches!(self, Kind::IsolateEtcdMember | Kind::IsolateEtcdLeader | Kind::KillEtcd | Kind::StopEtcd)
    }

    /// Faults on a node's processes (one at a time per node).
    fn on_processes(self) -> bool {
        matches!(
            self,
            Kind::KillService
                | Kind::StopService
                | Kind::KillPostgres
                | Kind::StopPostgres
                | Kind::KillNode
                | Kind::DiskFull
        )
    }
}

/// How an injected fault is undone.
#[derive(Debug)]
pub enum Undo {
    Rules(Vec<Rule>),
    Link(String),
    RestartServices(usize),
    Continue(usize, Service),
    ContinuePids(Vec<i32>),
    Nothing,
    FreeDisk(usize),
    RestartEtcd(usize),
    ContinueEtcd(usize),
}

/// A fault in force.
#[derive(Debug)]
pub struct Active {
    pub id: usize,
    pub kind: Kind,
    /// The node it hit (index), if any.
    pub node: Option<usize>,
    pub etcd: Option<usize>,
    pub what: String,
    pub heal_at: f64,
    pub undo: Undo,
}

/// The nodes' and etcd members' addresses, and who the primary is.
#[derive(Debug, Clone)]
pub struct Scene {
    pub nodes: Vec<Ipv4Addr>,
    pub etcd: Vec<Ipv4Addr>,
    pub haproxy: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub primary: Option<usize>,
    pub etcd_leader: Option<usize>,
}

/// Picks a fault that does not clash with the ones in force: one process
/// fault per node, one etcd fault at a time.
pub fn pick(rng: &mut Rng, active: &[Active], scene: &Scene) -> Option<(Kind, Option<usize>, Option<usize>)> {
    for _ in 0..20 {
        let kind = Kind::ALL[rng.pick(Kind::ALL.len())];
        if kind.touches_etcd() && active.iter().any(|a| a.kind.touches_etcd() || a.etcd.is_some()) {
            continue;
        }
        let node = match kind {
            Kind::PartitionFromReplicas => scene.primary,
            // The primary more often than not: the faults that matter most.
            _ if !kind.touches_etcd() => Some(match scene.primary {
                Some(p) if rng.chance(60) => p,
                _ => rng.pick(scene.nodes.len()),
            }),
            _ => None,
        };
        let etcd = match kind {
            Kind::IsolateEtcdLeader => scene.etcd_leader,
            Kind::IsolateEtcdMember | Kind::KillEtcd | Kind::StopEtcd => Some(rng.pick(scene.etcd.len())),
            // A link fault or a one-way partition may land on an etcd member.
            Kind::PacketLoss | Kind::SlowLink if rng.chance(30) => Some(rng.pick(scene.etcd.len())),
            _ => None,
        };
        if kind == Kind::IsolateEtcdLeader && etcd.is_none() {
            continue;
        }
        if kind == Kind::PartitionFromReplicas && node.is_none() {
            continue;
        }
        if etcd.is_some() && active.iter().any(|a| a.kind.touches_etcd() || a.etcd.is_some()) {
            continue;
        }
        let (node, etcd) = if matches!(kind, Kind::PacketLoss | Kind::SlowLink) && etcd.is_some() {
            (None, etcd)
        } else {
            (node, etcd)
        };
        if let Some(n) = node {
            let busy = active.iter().any(|a| a.node == Some(n) && (a.kind.on_processes() || kind.on_processes()));
            let shaped =
                active.iter().any(|a| a.node == Some(n) && matches!(a.kind, Kind::SlowLink) && kind == Kind::SlowLink);
            if busy || shaped {
                continue;
            }
        }
        return Some((kind, node, etcd));
    }
    None
}

/// Injects a fault; returns what it did and how to undo it.
pub fn inject(
    cluster: &mut ChaosCluster,
    rng: &mut Rng,
    scene: &Scene,
    kind: Kind,
    node: Option<usize>,
    etcd: Option<usize>,
) -> anyhow::Result<(String, Undo)> {
    let node_role = node.map(|n| node_roles()[n]);
    let name = |n: usize| format!("node{}", n + 1);
    let others = |me: usize| -> Vec<Ipv4Addr> {
        scene.nodes.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, ip)| *ip).collect()
    };
    Ok(match kind {
        Kind::PartitionFromAll => {
            let n = node.expect("a node");
            let mut everyone = others(n);
            everyone.extend(&scene.etcd);
            everyone.push(scene.haproxy);
            everyone.push(scene.gateway);
            let rules = cluster.net.drop_traffic(node_role.expect("a node"), &everyone, false)?;
            (format!("{} cut off from every other host", name(n)), Undo::Rules(rules))
        }
        Kind::PartitionFromEtcd => {
            let n = node.expect("a node");
            let rules = cluster.net.drop_traffic(node_role.expect("a node"), &scene.etcd, false)?;
            (format!("{} cut off from etcd", name(n)), Undo::Rules(rules))
        }
        Kind::PartitionFromReplicas => {
            let n = node.expect("a node");
            let rules = cluster.net.drop_traffic(node_role.expect("a node"), &others(n), false)?;
            (format!("{} (primary) cut off from the other nodes", name(n)), Undo::Rules(rules))
        }
        Kind::OneWayPartition => {
            let n = node.expect("a node");
            // The node hears nothing from a peer (a node or an etcd member)
            // while its own packets still reach it.
            let mut peers = others(n);
            peers.extend(&scene.etcd);
            let peer = peers[rng.pick(peers.len())];
            let rules = cluster.net.drop_traffic(node_role.expect("a node"), &[peer], true)?;
            (format!("{}'s packets reach {peer}, {peer}'s do not reach {}", name(n), name(n)), Undo::Rules(rules))
        }
        Kind::IsolateEtcdMember | Kind::IsolateEtcdLeader => {
            let e = etcd.expect("an etcd member");
            let mut everyone: Vec<Ipv4Addr> =
                scene.etcd.iter().enumerate().filter(|(i, _)| *i != e).map(|(_, ip)| *ip).collect();
            everyone.extend(&scene.nodes);
            everyone.push(scene.gateway);
            let rules = cluster.net.drop_traffic(etcd_roles()[e], &everyone, false)?;
            let leader = if kind == Kind::IsolateEtcdLeader { " (the etcd leader)" } else { "" };
            (format!("etcd{e}{leader} cut off"), Undo::Rules(rules))
        }
        Kind::PacketLoss => {
            let (role, label) = host_of(node, etcd);
            let percent = rng.range(20, 60) as u32;
            let rules = cluster.net.lose_packets(role, percent)?;
            (format!("{percent}% packet loss on {label}"), Undo::Rules(rules))
        }
        Kind::SlowLink => {
            let (role, label) = host_of(node, etcd);
            let applied = cluster.net.slow_link(role, rng.range(100, 500) as u32, 256)?;
            (format!("{label}'s link slowed: {applied}"), Undo::Link(role.to_string()))
        }
        Kind::KillService => {
            let n = node.expect("a node");
            let service = Service::ALL[rng.pick(3)];
            cluster.nodes[n].kill_service(service);
            (format!("{}'s {} killed", name(n), service.label()), Undo::RestartServices(n))
        }
        Kind::StopService => {
            let n = node.expect("a node");
            let service = Service::ALL[rng.pick(3)];
            cluster.nodes[n].signal_service(service, Signal::SIGSTOP);
            (format!("{}'s {} frozen", name(n), service.label()), Undo::Continue(n, service))
        }
        Kind::KillPostgres => {
            let n = node.expect("a node");
            match cluster.nodes[n].postmaster_pid() {
                Some(pid) => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    (format!("{}'s postmaster killed", name(n)), Undo::Nothing)
                }
                None => (format!("{}'s PostgreSQL was not running; nothing killed", name(n)), Undo::Nothing),
            }
        }
        Kind::StopPostgres => {
            let n = node.expect("a node");
            let pids = cluster.nodes[n].freeze_postgres();
            (format!("{}'s PostgreSQL frozen ({} processes)", name(n), pids.len()), Undo::ContinuePids(pids))
        }
        Kind::KillNode => {
            let n = node.expect("a node");
            let pids = cluster.nodes[n].postgres_pids();
            for service in Service::ALL {
                cluster.nodes[n].kill_service(service);
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            (format!("{} lost (services and PostgreSQL killed)", name(n)), Undo::RestartServices(n))
        }
        Kind::DiskFull => {
            let n = node.expect("a node");
            let filled = cluster.nodes[n].fill_disk(64 * 1024)?;
            (format!("{}'s data disk filled ({} MiB)", name(n), filled >> 20), Undo::FreeDisk(n))
        }
        Kind::KillEtcd => {
            let e = etcd.expect("an etcd member");
            cluster.kill_etcd(e);
            (format!("etcd{e} killed"), Undo::RestartEtcd(e))
        }
        Kind::StopEtcd => {
            let e = etcd.expect("an etcd member");
            cluster.signal_etcd(e, Signal::SIGSTOP);
            (format!("etcd{e} frozen"), Undo::ContinueEtcd(e))
        }
    })
}

fn host_of(node: Option<usize>, etcd: Option<usize>) -> (&'static str, String) {
    match (node, etcd) {
        (_, Some(e)) => (etcd_roles()[e], format!("etcd{e}")),
        (Some(n), None) => (node_roles()[n], format!("node{}", n + 1)),
        (None, None) => (node_roles()[0], "node1".into()),
    }
}

pub fn heal(cluster: &mut ChaosCluster, undo: &Undo) -> anyhow::Result<()> {
    match undo {
        Undo::Rules(rules) => cluster.net.delete_rules(rules),
        Undo::Link(role) => cluster.net.restore_link(role),
        Undo::RestartServices(n) => cluster.restart_killed(*n),
        Undo::Continue(n, service) => {
            cluster.nodes[*n].signal_service(*service, Signal::SIGCONT);
            Ok(())
        }
        Undo::ContinuePids(pids) => {
            for &pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT);
            }
            Ok(())
        }
        Undo::Nothing => Ok(()),
        Undo::FreeDisk(n) => cluster.nodes[*n].free_disk(),
        Undo::RestartEtcd(e) => cluster.restart_etcd(*e),
        Undo::ContinueEtcd(e) => {
            cluster.signal_etcd(*e, Signal::SIGCONT);
            Ok(())
        }
    }
}

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Switchover,
    Pause,
    Resume,
    Restart,
    ConfigEdit,
    Reload,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::Switchover => "switchover",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Restart => "restart a member",
            Op::ConfigEdit => "config edit",
            Op::Reload => "reload",
        }
    }
}

/// Runs an operator action through a random node's REST API (as
/// `patronictl` or `curl` would); returns what was asked and the answer.
pub async fn operate(rng: &mut Rng, op: Op, scene: &Scene, look: &Look) -> (String, Option<u16>, String) {
    let n = rng.pick(scene.nodes.len());
    let ip = scene.nodes[n];
    let timeout = Duration::from_secs(30);
    let (what, method, path, body) = match op {
        Op::Switchover => {
            // As an operator picks one: a streaming replica (in synchronous
            // mode the synchronous standby, the only one allowed), now and
            // then any other member.
            let leader = look.leader.clone().unwrap_or_else(|| "node1".into());
            let others: Vec<String> =
                (1..=scene.nodes.len()).map(|i| format!("node{i}")).filter(|c| *c != leader).collect();
            let candidate = match look.streaming_members.first() {
                Some(streaming) if rng.chance(80) => streaming.clone(),
                _ => others[rng.pick(others.len())].clone(),
            };
            (
                format!("switchover {leader} → {candidate}"),
                "POST",
                "/switchover",
                Some(serde_json::json!({"leader": leader, "candidate": candidate})),
            )
        }
        Op::Pause => ("pause".into(), "PATCH", "/config", Some(serde_json::json!({"pause": true}))),
        Op::Resume => ("resume".into(), "PATCH", "/config", Some(serde_json::json!({"pause": null}))),
        Op::Restart => (format!("restart node{}", n + 1), "POST", "/restart", Some(serde_json::json!({}))),
        Op::ConfigEdit => {
            let work_mem = format!("{}MB", rng.range(4, 64));
            (
                format!("work_mem = {work_mem}"),
                "PATCH",
                "/config",
                Some(serde_json::json!({"postgresql": {"parameters": {"work_mem": work_mem}}})),
            )
        }
        Op::Reload => (format!("reload node{}", n + 1), "POST", "/reload", None),
    };
    if matches!(op, Op::Pause | Op::Resume) {
        // Asked of every node in turn until one answers 200.
        let mut last = None;
        for k in 0..scene.nodes.len() {
            let m = (n + k) % scene.nodes.len();
            last = http(scene.nodes[m], method, path, body.as_ref(), Duration::from_secs(5)).await;
            if last.as_ref().is_some_and(|(s, _)| *s == 200) {
                return (format!("{what} (asked of node{})", m + 1), Some(200), String::new());
            }
        }
        let (status, text) = last.map_or((None, String::new()), |(s, b)| (Some(s), b));
        return (format!("{what} (asked of every node)"), status, text);
    }
    match http(ip, method, path, body.as_ref(), timeout).await {
        Some((status, text)) => (format!("{what} (asked of node{})", n + 1), Some(status), text),
        None => (format!("{what} (asked of node{})", n + 1), None, String::new()),
    }
}
