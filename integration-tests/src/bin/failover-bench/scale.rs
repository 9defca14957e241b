//! `--scale`: what a bigger cluster and many clusters on one etcd cost. For
//! 3, 5 and 9 members in one cluster: the idle CPU of the leader's services
//! and of a replica's, etcd's requests and CPU, and the node-lost failover
//! (write unavailability, time to the new `/primary` 200). Then `clusters`
//! clusters of 3 members on one etcd: etcd's CPU, memory and requests, and
//! each agent's, health API's and controller's CPU.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pgwarden_integration_tests::{ClusterSpec, EtcdCluster, PgwardenCluster};

use crate::footprint::{cpu_seconds, rss_mib};
use crate::systems::Cluster;

/// Bringing up many members on 2 cores takes a while.
const UP: Duration = Duration::from_secs(600);

/// CPU seconds per hour of each of `pids` over `window`, and etcd's
/// messages per minute meanwhile.
async fn measure(pids: &[u32], etcd: &EtcdCluster, window: Duration) -> anyhow::Result<(Vec<f64>, f64)> {
    let before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid).unwrap_or(0.0)).collect();
    let messages = etcd.messages_received()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let per_minute = (etcd.messages_received()? - messages) * 60.0 / elapsed;
    let cpu = pids
        .iter()
        .zip(before)
        .map(|(&pid, before)| (cpu_seconds(pid).unwrap_or(0.0) - before) * 3600.0 / elapsed)
        .collect();
    Ok((cpu, per_minute))
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

fn node_pids(cluster: &PgwardenCluster, i: usize) -> Vec<u32> {
    cluster.nodes[i].service_pids().into_iter().map(|(_, pid)| pid).collect()
}

/// One cluster size's figures.
pub struct Size {
    pub members: usize,
    /// The leader's agent + health API + controller, CPU s/h.
    pub leader_cpu: f64,
    /// The same for a replica (mean over the replicas).
    pub replica_cpu: f64,
    pub etcd_cpu: f64,
    pub etcd_requests_per_minute: f64,
    /// Node lost: write unavailability and fault to a new `/primary` 200, per run.
    pub failovers: Vec<(f64, f64)>,
}

/// `clusters` clusters of 3 members on one etcd.
pub struct Many {
    pub clusters: usize,
    pub etcd_cpu: f64,
    pub etcd_rss_mib: f64,
    pub etcd_requests_per_minute: f64,
    /// Per service kind: mean and max CPU s/h over every node.
    pub services: Vec<(&'static str, f64, f64)>,
}

pub async fn size(members: usize, warmup: Duration, window: Duration, repeats: usize) -> anyhow::Result<Size> {
    let cluster = ClusterSpec::nodes(members).start().await?;
    let leader = cluster.wait_healthy(UP).await?;
    tokio::time::sleep(warmup).await;
    let mut pids = node_pids(&cluster, leader);
    let leader_count = pids.len();
    let replicas: Vec<usize> = (0..members).filter(|&i| i != leader).collect();
    for &i in &replicas {
        pids.extend(node_pids(&cluster, i));
    }
    let etcd_pids = cluster.etcd.pids();
    pids.extend(&etcd_pids);
    let (cpu, etcd_requests_per_minute) = measure(&pids, &cluster.etcd, window).await?;
    let leader_cpu = cpu[..leader_count].iter().sum();
    let replica_cpu = cpu[leader_count..cpu.len() - etcd_pids.len()].iter().sum::<f64>() / replicas.len() as f64;
    let etcd_cpu = cpu[cpu.len() - etcd_pids.len()..].iter().sum();
    let mut cluster = Cluster::Pgwarden(cluster);
    let mut failovers = Vec::new();
    for run in 1..=repeats {
        let phase = crate::fault_phase(crate::System::Pgwarden, "node-lost", run, repeats);
        let measured = crate::run_once(&mut cluster, &format!("scale_{members}_{run}"), "node-lost", phase).await?;
        println!(
            "  {members} members, node lost, run {run}: {:.2} s of writes unavailable, /primary 200 after {:.2} s",
            measured.unavailable.as_secs_f64(),
            measured.to_primary.as_secs_f64()
        );
        failovers.push((measured.unavailable.as_secs_f64(), measured.to_primary.as_secs_f64()));
    }
    Ok(Size { members, leader_cpu, replica_cpu, etcd_cpu, etcd_requests_per_minute, failovers })
}

pub async fn many(clusters: usize, warmup: Duration, window: Duration) -> anyhow::Result<Many> {
    let etcd = EtcdCluster::start(1).await?;
    let mut running = Vec::new();
    for k in 0..clusters {
        running.push(PgwardenCluster::start_on(etcd.shared(), &format!("scale{k}"), 3, 10)?);
    }
    for (k, cluster) in running.iter().enumerate() {
        cluster.wait_healthy(UP).await.map_err(|e| anyhow::anyhow!("cluster scale{k}: {e}"))?;
    }
    tokio::time::sleep(warmup).await;
    let named: Vec<(&'static str, u32)> =
        running.iter().flat_map(|c| (0..c.nodes.len()).flat_map(|i| c.nodes[i].service_pids())).collect();
    let mut pids: Vec<u32> = named.iter().map(|(_, pid)| *pid).collect();
    let etcd_pids = etcd.pids();
    pids.extend(&etcd_pids);
    let (cpu, etcd_requests_per_minute) = measure(&pids, &etcd, window).await?;
    let mut services = Vec::new();
    for kind in ["pgwarden-agent", "pgwarden-health", "pgwarden-controller"] {
        let values: Vec<f64> = named.iter().zip(&cpu).filter(|((name, _), _)| *name == kind).map(|(_, &c)| c).collect();
        services.push((kind, mean(&values), values.iter().copied().fold(0.0, f64::max)));
    }
    Ok(Many {
        clusters,
        etcd_cpu: cpu[cpu.len() - etcd_pids.len()..].iter().sum(),
        etcd_rss_mib: etcd_pids.iter().filter_map(|&pid| rss_mib(pid)).sum(),
        etcd_requests_per_minute,
        services,
    })
}

/// The report.
pub fn markdown(sizes: &[Size], many: &Many, window: Duration, warmup: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Scale: one cluster of 3, 5 and 9 members, and many clusters on one etcd\n");
    let _ = writeln!(
        md,
        "Generated by `make bench-scale` (`failover-bench --scale`), pgwarden only (ttl 10, loop_wait 1, \
         retry_timeout 3), everything on loopback on one machine: one etcd member, each cluster's PostgreSQL and \
         services. Idle: {:.0} s measured from /proc (utime+stime) after {:.0} s not counted, no client. etcd \
         requests: the growth of `grpc_server_msg_received_total` (every unary call and every message on a stream).\n",
        window.as_secs_f64(),
        warmup.as_secs_f64()
    );
    let _ = writeln!(md, "- Machine: {}", crate::report::machine());
    let _ = writeln!(md, "- Versions: {}\n", crate::report::versions());
    let _ = writeln!(md, "## One cluster\n");
    let _ = writeln!(
        md,
        "| members | leader's services, CPU s/h | a replica's services, CPU s/h | etcd CPU s/h | etcd requests per minute | node lost: writes unavailable (s, each run) | node lost: new `/primary` 200 (s, each run) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for s in sizes {
        let runs = |pick: fn(&(f64, f64)) -> f64| {
            s.failovers.iter().map(|f| format!("{:.2}", pick(f))).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} |",
            s.members,
            s.leader_cpu,
            s.replica_cpu,
            s.etcd_cpu,
            s.etcd_requests_per_minute,
            runs(|f| f.0),
            runs(|f| f.1)
        );
    }
    let _ = writeln!(
        md,
        "\nThe node-lost runs kill the leader's agent, health API, controller and PostgreSQL at once, with HAProxy \
         (deploy/haproxy/haproxy-fast.cfg) in front and a client writing a row every 5 ms through it; the old \
         leader's node is restarted afterwards and the next run waits until every member streams again.\n"
    );
    let _ = writeln!(md, "## {} clusters of 3 members on one etcd\n", many.clusters);
    let _ = writeln!(md, "| what | CPU s/h, mean | CPU s/h, max |");
    let _ = writeln!(md, "|---|---|---|");
    for (kind, mean, max) in &many.services {
        let _ = writeln!(md, "| each {kind} | {mean:.1} | {max:.1} |");
    }
    let _ = writeln!(md, "| etcd | {:.1} | |", many.etcd_cpu);
    let _ = writeln!(
        md,
        "\netcd: {:.0} requests per minute from the {} members ({:.1} per member), {:.1} MiB RSS.\n",
        many.etcd_requests_per_minute,
        many.clusters * 3,
        many.etcd_requests_per_minute / (many.clusters * 3) as f64,
        many.etcd_rss_mib
    );
    md
}
