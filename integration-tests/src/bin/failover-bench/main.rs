//! Failover benchmark, pgwarden side by side with Patroni: brings up etcd + 3
//! nodes + HAProxy (the same deploy/haproxy/haproxy-fast.cfg for every
//! system) on loopback, runs a client writing a row every 5 ms through
//! HAProxy, probes every node directly for writability (the harness's
//! `Load`, as the fault tests use it), injects one of the harness's `Fault`s
//! (or asks for a switchover) and measures:
//!
//! - write unavailability: the longest gap between acknowledged writes after the fault;
//! - the time to a new `/primary` 200;
//! - acknowledged rows missing on the final primary;
//! - seconds during which two nodes accepted writes (every node probed directly);
//! - the time until the old primary streams again (its agent restarted or
//!   thawed, its path to etcd restored, its node restarted).
//!
//! Systems (`--systems`): `pgwarden` (ttl 10, loop_wait 1, retry_timeout 3),
//! `pgwarden-ttl20` (Patroni's tightest timings), `patroni` (Patroni from PyPI
//! in the virtual environment of scripts/install-patroni.sh, ttl 20). Runs
//! alternate between systems (repetition, then scenario, then system), so that
//! machine noise hits all alike. Then the footprint at idle (RSS, CPU seconds
//! per hour, etcd requests per minute) and the health check under `wrk`.
//! The report (`benchmarks.md` and one SVG timeline per scenario) goes to
//! `--out` (default docs/).
//!
//!     failover-bench [--repeats N] [--systems a,b] [--out DIR] [--smoke] [SCENARIO...]
//!
//! Scenarios: switchover, postgres-killed, node-lost, agent-killed,
//! agent-frozen, etcd-cut (the default set), agent-stopped, etcd-stopped.
//! Needs the workspace's binaries built and root or the `postgres` user.

mod footprint;
mod report;
mod scale;
mod svg;
mod systems;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use pgwarden_integration_tests::{Fault, Load, wait_until};
use systems::{Cluster, System};

const UP: Duration = Duration::from_secs(120);

pub const DEFAULT_SCENARIOS: [&str; 6] =
    ["switchover", "postgres-killed", "node-lost", "agent-killed", "agent-frozen", "etcd-cut"];

/// Scenarios run only on request.
const EXTRA_SCENARIOS: [&str; 2] = ["agent-stopped", "etcd-stopped"];

#[derive(Debug, Parser)]
#[command(about = "pgwarden and Patroni failover benchmark on loopback")]
struct Args {
    /// Runs per scenario and system.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Systems to compare (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [System::Pgwarden, System::PgwardenTtl20, System::Patroni])]
    systems: Vec<System>,
    /// Where benchmarks.md and the SVG timelines go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Seconds each system idles for the footprint measurement.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Seconds a healthy cluster idles before the footprint window opens
    /// (start-up work such as slot creation and the first checkpoints).
    #[arg(long, default_value_t = 20)]
    warmup_seconds: u64,
    /// Only the footprint at idle and the health check, each on a fresh
    /// cluster per system (no failover scenarios; the report under
    /// target/bench-footprint unless --out says otherwise).
    #[arg(long)]
    footprint_only: bool,
    /// Seconds of `wrk` per system for the health-check measurement.
    #[arg(long, default_value_t = 5)]
    wrk_seconds: u64,
    /// CI's short mode: pgwarden only, one run of switchover and
    /// postgres-killed, 5 s of idle and 2 s of wrk, the report under target/.
    #[arg(long)]
    smoke: bool,
    /// Only the scale benchmark (pgwarden alone): one cluster of 3, 5 and 9
    /// members, then `--clusters` clusters of 3 on one etcd; the report under
    /// target/bench-scale unless --out says otherwise.
    #[arg(long)]
    scale: bool,
    /// Clusters of 3 members on one etcd, for `--scale`.
    #[arg(long, default_value_t = 20)]
    clusters: usize,
    /// Scenarios (default: the comparison set).
    scenarios: Vec<String>,
}

/// One run's measurements.
#[derive(Debug, Clone)]
pub struct Run {
    pub unavailable: Duration,
    pub to_primary: Duration,
    pub lost: usize,
    pub acked: usize,
    pub two_writers: f64,
    /// Fault to the old primary streaming again.
    pub rejoined: Option<Duration>,
    /// The old primary's return (agent restarted or thawed, etcd reachable,
    /// node restarted) to it streaming again: the rejoin itself.
    pub rejoin: Option<Duration>,
    /// Acknowledgement times, seconds relative to the fault (for the plot).
    pub acks: Vec<f64>,
    /// When each lost row had been acknowledged, seconds relative to the
    /// fault (asynchronous replication can lose what the old primary
    /// acknowledged last before it failed; a loss after the fault would
    /// be another matter).
    pub lost_at: Vec<f64>,
}

/// One fault on a running, healthy `cluster`; the rows go to `table` (new
/// for each run, so that earlier runs' rows cannot hide a lost one). The
/// cluster is left healthy again, unless the old primary did not rejoin.
/// Scenarios whose outage the lease sets: where in the leader's renewal
/// cycle the fault lands decides up to a renewal interval of it.
const LEASE_BOUND: [&str; 3] = ["node-lost", "agent-killed", "agent-frozen"];

/// How far into its renewal cycle run `run` of `runs` puts a lease-bound
/// fault: the middle of the run's share of the interval (pgwarden renews
/// every ttl/4, Patroni at every loop_wait), counted from the same point of
/// each run, so that the runs spread over the cycle rather than land where
/// the harness's own rhythm puts them. Other scenarios: none.
fn fault_phase(system: System, scenario: &str, run: usize, runs: usize) -> Duration {
    if !LEASE_BOUND.contains(&scenario) {
        return Duration::ZERO;
    }
    let timings = system.timings();
    let interval = match system {
        System::Patroni => Duration::from_secs(u64::from(timings.loop_wait)),
        _ => Duration::from_secs(u64::from(timings.ttl)) / 4,
    };
    interval.mul_f64((run as f64 - 0.5) / runs.max(1) as f64)
}

/// A benchmark scenario: a planned switchover, or a fault of the harness's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Switchover,
    Fault(Fault),
}

impl Scenario {
    fn named(name: &str) -> Option<Self> {
        if name == "switchover" { Some(Self::Switchover) } else { Fault::named(name).map(Self::Fault) }
    }
}

async fn run_once(cluster: &mut Cluster, table: &str, scenario: &str, phase: Duration) -> anyhow::Result<Run> {
    let scenario = Scenario::named(scenario).ok_or_else(|| anyhow::anyhow!("unknown scenario {scenario}"))?;
    let leader = cluster.wait_healthy(UP).await?;
    // One writer, a row every 5 ms, through HAProxy; every node probed.
    let mut load = Load::start(&cluster.backends(), 1, table, UP).await?;
    tokio::time::sleep(Duration::from_millis(700) + phase).await;
    let old_postmaster = cluster.postmaster_pid(leader);
    let fault = Instant::now();
    match scenario {
        Scenario::Switchover => cluster.switchover(leader).await?,
        Scenario::Fault(f) => f.inject(cluster.target(), leader).await?,
    }
    if scenario == Scenario::Fault(Fault::EtcdStopped) {
        // etcd returns once the primary stopped serving (fenced or demoted).
        wait_until("the old primary's /primary to fail", UP, || async {
            Ok::<_, String>((cluster.check(leader, "/primary") != 200).then_some(()))
        })
        .await?;
        Fault::EtcdStopped.recover(cluster.target(), leader).await?;
    }
    // A new primary: one node answers 200 on /primary and it is another node,
    // or the same node with a new postmaster (restarted in place). Patroni's
    // REST API can answer 200 from its last view while PostgreSQL is down,
    // so a 200 from the old postmaster does not count.
    wait_until("a new primary after the fault", UP, || async {
        match cluster.answering("/primary").as_slice() {
            [one] if *one != leader || cluster.postmaster_pid(*one).is_some_and(|pid| Some(pid) != old_postmaster) => {
                Ok(Some(*one))
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let to_primary = fault.elapsed();
    load.wait_writes_after(fault + to_primary, UP).await?;
    // Writes go on a little, so that the timeline shows them back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The old primary back: its agent restarted or thawed, etcd reachable
    // again, its node restarted; then streaming from the new primary. The
    // writer goes on through the rejoin (its rows are checked too); the
    // outage and the timeline end here.
    let returned = Instant::now();
    if let Scenario::Fault(f) = scenario
        && f != Fault::EtcdStopped
    {
        f.recover(cluster.target(), leader).await?;
    }
    let healthy = cluster.wait_healthy(UP).await.is_ok();
    let (rejoined, rejoin) = if healthy { (Some(fault.elapsed()), Some(returned.elapsed())) } else { (None, None) };
    let report = load.stop(UP).await?;
    let writer = report.writers.first().ok_or_else(|| anyhow::anyhow!("no writer"))?;
    let relative = |at: Instant| {
        if at >= fault { at.duration_since(fault).as_secs_f64() } else { -fault.duration_since(at).as_secs_f64() }
    };
    let acks = writer.acked.iter().filter(|(_, at)| *at < returned).map(|(_, at)| relative(*at)).collect();
    let missing = report.missing.first().map(Vec::as_slice).unwrap_or_default();
    let lost_at = writer.acked.iter().filter(|(id, _)| missing.contains(id)).map(|(_, at)| relative(*at)).collect();
    Ok(Run {
        unavailable: writer.max_gap_between(fault, returned),
        to_primary,
        lost: report.lost_rows,
        acked: report.acknowledged,
        two_writers: report.probes.two_writer_seconds(),
        rejoined,
        rejoin,
        acks,
        lost_at,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.systems = vec![System::Pgwarden];
        args.repeats = 1;
        args.idle_seconds = 5;
        args.warmup_seconds = 3;
        args.wrk_seconds = 2;
        if args.scenarios.is_empty() {
            args.scenarios = vec!["switchover".into(), "postgres-killed".into()];
        }
        if args.out == std::path::Path::new("docs") {
            args.out = PathBuf::from("target/bench-smoke");
        }
    }
    if args.scale {
        return scale_only(&args).await;
    }
    if args.footprint_only {
        return footprint_only(&args).await;
    }
    if args.scenarios.is_empty() {
        args.scenarios = DEFAULT_SCENARIOS.map(String::from).to_vec();
    }
    // A misspelt scenario is refused before any cluster starts.
    let known: Vec<&str> = DEFAULT_SCENARIOS.iter().chain(&EXTRA_SCENARIOS).copied().collect();
    if let Some(unknown) = args.scenarios.iter().find(|s| !known.contains(&s.as_str())) {
        anyhow::bail!("unknown scenario {unknown:?}; the scenarios are: {}", known.join(", "));
    }
    let started = Instant::now();
    let mut results = report::Results::new(&args.systems, &args.scenarios);
    println!(
        "failover benchmark: {} run(s) per scenario and system; systems: {}",
        args.repeats,
        args.systems.iter().map(|s| s.label()).collect::<Vec<_>>().join(", ")
    );
    let mut footprints = Vec::new();
    let mut health = Vec::new();
    let mut table = 0;
    for repetition in 1..=args.repeats {
        // Systems take turns, one repetition each, the first one rotating,
        // so that machine noise hits all alike. One cluster per system and
        // repetition serves every scenario in turn (each leaves it healthy);
        // a fresh one replaces it after a run that did not.
        let systems = args.systems.len();
        for turn in 0..systems {
            let system = args.systems[(repetition - 1 + turn) % systems];
            let mut cluster: Option<Cluster> = None;
            for scenario in &args.scenarios {
                let prefix = format!("[{repetition}/{}] {scenario:<16} {:<18}", args.repeats, system.label());
                table += 1;
                let rows = format!("bench_{table}");
                let phase = fault_phase(system, scenario, repetition, args.repeats);
                let outcome = match cluster.as_mut() {
                    Some(running) => run_once(running, &rows, scenario, phase).await,
                    None => match system.start().await {
                        Ok(started) => run_once(cluster.insert(started), &rows, scenario, phase).await,
                        Err(e) => Err(e.context("start the cluster")),
                    },
                };
                let run = match outcome {
                    Ok(run) => run,
                    Err(e) => {
                        println!("{prefix} FAILED: {e:#}");
                        results.fail(system, scenario, format!("{e:#}"));
                        cluster = None;
                        continue;
                    }
                };
                println!(
                    "{prefix} unavailable {:>6.2} s, new primary {:>6.2} s, lost {} of {}, two writers {:.3} s, rejoined {} ({} after its return)",
                    run.unavailable.as_secs_f64(),
                    run.to_primary.as_secs_f64(),
                    run.lost,
                    run.acked,
                    run.two_writers,
                    run.rejoined.map_or("no".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                    run.rejoin.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                );
                if !run.lost_at.is_empty() {
                    let at: Vec<String> = run.lost_at.iter().map(|t| format!("{t:+.3} s")).collect();
                    println!("{prefix} the lost rows were acknowledged at {} from the fault", at.join(", "));
                }
                if run.rejoined.is_none() {
                    cluster = None;
                }
                results.add(system, scenario, run);
            }
            if repetition == args.repeats {
                // The footprint at idle and the health check, on a fresh
                // cluster past its warm-up: what the faults leave behind
                // (a fencer whose deadline lapsed looks every 10 ms until
                // its node leads again) is not the idle cost.
                drop(cluster);
                let cluster = system.start().await?;
                let leader = cluster.wait_healthy(UP).await?;
                let (warmup, window) =
                    (Duration::from_secs(args.warmup_seconds), Duration::from_secs(args.idle_seconds));
                footprints.extend(footprint::idle_alone_and_behind_haproxy(system, &cluster, warmup, window).await?);
                health.push(footprint::health(system, &cluster, leader, args.wrk_seconds)?);
            }
        }
    }
    std::fs::create_dir_all(args.out.join("benchmarks"))?;
    let markdown = report::markdown(&results, &footprints, &health, &args.scenarios, args.repeats, started.elapsed());
    for scenario in &args.scenarios {
        let picture = svg::timeline(scenario, &results.median_runs(scenario));
        std::fs::write(args.out.join("benchmarks").join(format!("{scenario}.svg")), picture)?;
    }
    std::fs::write(args.out.join("benchmarks.md"), &markdown)?;
    println!("{markdown}");
    println!(
        "report written to {} ({:.0} s in all)",
        args.out.join("benchmarks.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--footprint-only`: each system's fresh cluster, healthy, idles and then
/// takes `wrk`; the report goes to `<out>/benchmarks-footprint.md`.
async fn footprint_only(args: &Args) -> anyhow::Result<()> {
    let out = if args.out == std::path::Path::new("docs") {
        PathBuf::from("target/bench-footprint")
    } else {
        args.out.clone()
    };
    let (warmup, window) = (Duration::from_secs(args.warmup_seconds), Duration::from_secs(args.idle_seconds));
    let (mut footprints, mut health) = (Vec::new(), Vec::new());
    for &system in &args.systems {
        let cluster = system.start().await?;
        let leader = cluster.wait_healthy(UP).await?;
        for measured in footprint::idle_alone_and_behind_haproxy(system, &cluster, warmup, window).await? {
            let all: f64 = measured.processes.iter().map(|p| p.cpu_seconds_per_hour).sum();
            let rss: f64 = measured.processes.iter().map(|p| p.rss_mib).sum();
            let anon: f64 = measured.processes.iter().map(|p| p.anon_mib).sum();
            println!(
                "{:<18} idle{}: {all:.1} CPU s/h per node, RSS {rss:.1} MiB ({anon:.1} MiB anonymous) per node",
                system.label(),
                if measured.behind_haproxy { " behind HAProxy" } else { "" }
            );
            for p in &measured.processes {
                println!(
                    "    {:<20} {:>6.1} CPU s/h, RSS {:>5.1} MiB, PSS {:>5.1} MiB, anonymous {:>5.1} MiB",
                    p.name, p.cpu_seconds_per_hour, p.rss_mib, p.pss_mib, p.anon_mib
                );
            }
            footprints.push(measured);
        }
        let h = footprint::health(system, &cluster, leader, args.wrk_seconds)?;
        println!(
            "{:<18} GET /primary: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            system.label(),
            h.requests_per_second,
            h.p50_ms,
            h.p99_ms
        );
        health.push(h);
    }
    std::fs::create_dir_all(&out)?;
    let path = out.join("benchmarks-footprint.md");
    std::fs::write(&path, report::footprint_markdown(&footprints, &health))?;
    println!("report: {}", path.display());
    Ok(())
}

/// `--scale`: see `scale.rs`; the report goes to `<out>/benchmarks-scale.md`.
async fn scale_only(args: &Args) -> anyhow::Result<()> {
    let out =
        if args.out == std::path::Path::new("docs") { PathBuf::from("target/bench-scale") } else { args.out.clone() };
    let (warmup, window) = (Duration::from_secs(args.warmup_seconds), Duration::from_secs(args.idle_seconds));
    let mut sizes = Vec::new();
    for members in [3, 5, 9] {
        let size = scale::size(members, warmup, window, args.repeats).await?;
        println!(
            "{members} members: leader {:.1} CPU s/h, a replica {:.1}, etcd {:.1} CPU s/h and {:.0} requests/min",
            size.leader_cpu, size.replica_cpu, size.etcd_cpu, size.etcd_requests_per_minute
        );
        sizes.push(size);
    }
    let many = scale::many(args.clusters, warmup, window).await?;
    println!(
        "{} clusters of 3 on one etcd: etcd {:.1} CPU s/h, {:.0} requests/min, {:.1} MiB",
        many.clusters, many.etcd_cpu, many.etcd_requests_per_minute, many.etcd_rss_mib
    );
    for (kind, mean, max) in &many.services {
        println!("    {kind:<20} mean {mean:.1} CPU s/h, max {max:.1}");
    }
    std::fs::create_dir_all(&out)?;
    let path = out.join("benchmarks-scale.md");
    std::fs::write(&path, scale::markdown(&sizes, &many, window, warmup))?;
    println!("report: {}", path.display());
    Ok(())
}
