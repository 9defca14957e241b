//! Footprint at idle (RSS, CPU seconds per hour of each HA process, etcd
//! requests per minute) and the health check under `wrk`.

use std::process::Command;
use std::time::{Duration, Instant};

use pgwarden_integration_tests::haproxy::deploy_config;
use pgwarden_integration_tests::{HaProxy, free_port};

use crate::systems::{Cluster, System};

/// One HA process kind's figures, averaged over the three nodes.
#[derive(Debug, Clone)]
pub struct Process {
    pub name: &'static str,
    pub rss_mib: f64,
    /// Proportional set size: shared pages (the binary's code, libc)
    /// divided among the processes that map them.
    pub pss_mib: f64,
    /// Anonymous memory (heap, stacks): what the process alone holds.
    pub anon_mib: f64,
    pub cpu_seconds_per_hour: f64,
}

#[derive(Debug, Clone)]
pub struct Footprint {
    pub system: System,
    pub processes: Vec<Process>,
    /// Messages etcd received per minute from the whole cluster (unary
    /// calls, and each message on a stream such as lease keep-alives).
    pub etcd_requests_per_minute: f64,
    pub window: Duration,
    /// Idle before the window, not counted.
    pub warmup: Duration,
    /// Measured with HAProxy (deploy/haproxy/haproxy-fast.cfg) checking
    /// every node, as in a deployment; otherwise nothing but the cluster.
    pub behind_haproxy: bool,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub system: System,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rss_after_mib: f64,
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Some(ticks as f64 / per_second)
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A field of `/proc/<pid>/smaps_rollup` (`Pss`, `Anonymous`), in MiB.
fn smaps_mib(pid: u32, field: &str) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let prefix = format!("{field}:");
    let kib: f64 = rollup.lines().find(|l| l.starts_with(&prefix))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Σ `grpc_server_msg_received_total` on etcd's metrics endpoint.
fn etcd_messages(cluster: &Cluster) -> anyhow::Result<f64> {
    cluster.etcd().messages_received()
}

/// The idle footprint twice: the cluster alone, then with HAProxy's checks
/// (deploy/haproxy/haproxy-fast.cfg, as `make demo` and the guides run it:
/// about eleven checks a second on every node, `downinter 100ms` on the two
/// backends where it is DOWN), each after `warmup`.
pub async fn idle_alone_and_behind_haproxy(
    system: System,
    cluster: &Cluster,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Vec<Footprint>> {
    let alone = idle(system, cluster, warmup, window, false).await?;
    let (write, read, stats) = (free_port(), free_port(), free_port());
    let _haproxy =
        HaProxy::start(&deploy_config(write, read, stats, &cluster.backends()), &[write, read, stats]).await?;
    let behind = idle(system, cluster, warmup, window, true).await?;
    Ok(vec![alone, behind])
}

/// Lets the healthy cluster idle for `window` and measures it.
pub async fn idle(
    system: System,
    cluster: &Cluster,
    warmup: Duration,
    window: Duration,
    behind_haproxy: bool,
) -> anyhow::Result<Footprint> {
    // Past start-up work (slot creation, first checkpoints, a replica's
    // first restartpoint) and whatever a fault left to finish.
    tokio::time::sleep(warmup).await;
    let pids: Vec<(&'static str, u32)> = (0..3).flat_map(|i| cluster.ha_processes(i)).collect();
    let cpu_before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0)).collect();
    let etcd_before = etcd_messages(cluster)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed();
    let etcd_after = etcd_messages(cluster)?;
    let mut processes: Vec<Process> = Vec::new();
    for (index, (name, pid)) in pids.iter().enumerate() {
        let cpu = cpu_seconds(*pid).unwrap_or(0.0) - cpu_before[index];
        let per_hour = cpu * 3600.0 / elapsed.as_secs_f64();
        let rss = rss_mib(*pid).unwrap_or(0.0);
        let pss = smaps_mib(*pid, "Pss").unwrap_or(0.0);
        let anon = smaps_mib(*pid, "Anonymous").unwrap_or(0.0);
        match processes.iter_mut().find(|p| p.name == *name) {
            Some(p) => {
                p.rss_mib += rss / 3.0;
                p.pss_mib += pss / 3.0;
                p.anon_mib += anon / 3.0;
                p.cpu_seconds_per_hour += per_hour / 3.0;
            }
            None => processes.push(Process {
                name,
                rss_mib: rss / 3.0,
                pss_mib: pss / 3.0,
                anon_mib: anon / 3.0,
                cpu_seconds_per_hour: per_hour / 3.0,
            }),
        }
    }
    Ok(Footprint {
        system,
        processes,
        etcd_requests_per_minute: (etcd_after - etcd_before) * 60.0 / elapsed.as_secs_f64(),
        window: elapsed,
        warmup,
        behind_haproxy,
    })
}

/// `wrk` against the leader's `GET /primary`, the REST server pinned to CPU
/// 0 and wrk to CPU 1.
pub fn health(system: System, cluster: &Cluster, leader: usize, seconds: u64) -> anyhow::Result<Health> {
    let pid = cluster.rest_server(leader).ok_or_else(|| anyhow::anyhow!("no REST server process"))?;
    let url = format!("http://127.0.0.1:{}/primary", cluster.rest_port(leader));
    let pin = Command::new("taskset").args(["-a", "-pc", "0", &pid.to_string()]).output()?;
    anyhow::ensure!(pin.status.success(), "taskset: {}", String::from_utf8_lossy(&pin.stderr));
    let output = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c16", &format!("-d{seconds}s"), "--latency", &url])
        .output()
        .map_err(|e| anyhow::anyhow!("run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let _ = Command::new("taskset").args(["-a", "-pc", "0-1", &pid.to_string()]).output();
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(String::from)
    };
    let requests_per_second: f64 = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let non_2xx = text.lines().find(|l| l.contains("Non-2xx")).map(str::trim).unwrap_or("").to_string();
    anyhow::ensure!(non_2xx.is_empty(), "GET /primary on the leader must answer 200: {non_2xx}");
    Ok(Health {
        system,
        requests_per_second,
        p50_ms: field("50%").map_or(0.0, |v| wrk_ms(&v)),
        p99_ms: field("99%").map_or(0.0, |v| wrk_ms(&v)),
        rss_after_mib: rss_mib(pid).unwrap_or(0.0),
    })
}

/// wrk's latency (`812.00us`, `1.23ms`, `1.02s`) in milliseconds.
fn wrk_ms(value: &str) -> f64 {
    let split = value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len());
    let number: f64 = value[..split].parse().unwrap_or(0.0);
    match &value[split..] {
        "us" => number / 1000.0,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => number,
    }
}
