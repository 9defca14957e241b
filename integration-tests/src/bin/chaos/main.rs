//! Chaos with real processes: a three-node pgwarden cluster, three etcd
//! members and HAProxy, each in its own network namespace, under a seeded
//! nemesis (partitions, one-way partitions, packet loss, slow links, killed
//! and frozen services, PostgreSQL and etcd members, lost nodes, full disks,
//! overlapping) and concurrent operator actions (switchover, pause and
//! resume, restart, config edits, reload), while several clients write,
//! transfer and read. Then it checks:
//!
//! - no two nodes accepted writes at the same moment (probes on every node
//!   through its Unix socket, which no partition cuts);
//! - in synchronous mode, every acknowledged write is on the final primary;
//!   in asynchronous mode the lost ones are counted and shown beside the
//!   replication lag at the fault that lost them;
//! - the accounts' total never changed (on the primary and on every read
//!   from a replica), and no acknowledged row a replica showed went away;
//! - the cluster converged (one primary, every member streaming) within
//!   a bound after the last heal, and writes resumed through HAProxy;
//! - no process crashed or is restarting in a loop.
//!
//! It prints a timeline and a summary, and writes `report.md`,
//! `timeline.svg` and `timeline.txt` to `--out`. A failing run names its seed.
//!
//!     chaos [--duration 20m] [--seed N] [--mode sync|async] [--out DIR]
//!
//! Needs root (namespaces, tmpfs), `ip`, `tc`, `nft`, etcd, HAProxy,
//! PostgreSQL and the workspace's binaries built.

mod cluster;
mod nemesis;
mod report;
mod workload;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use ha_sim::rng::Rng;

use cluster::{ChaosCluster, READ_PORT, WRITE_PORT, http};
use nemesis::{Active, Kind, Op, Scene};
use workload::{Clock, Monitor, Probes, Target, Workers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Sync,
    Async,
}

#[derive(Debug, Parser)]
#[command(about = "pgwarden under a nemesis in network namespaces, with concurrent clients and a checker")]
struct Args {
    /// How long the nemesis runs (e.g. 2m, 20m, 90s).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    duration: Duration,
    /// The nemesis's seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Synchronous replication (`synchronous_mode: true`) or asynchronous.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Where the report goes (default target/chaos/<mode>-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// `bootstrap.dcs.ttl` of the cluster (loop_wait 1, retry_timeout 3).
    #[arg(long, default_value_t = 10)]
    ttl: u32,
    /// A check of the checker: 20 s in, promote a replica behind pgwarden's
    /// back (`pg_ctl promote`). The run must then fail on two writers.
    #[arg(long)]
    sabotage: bool,
    /// `failsafe_mode: true`: a primary cut off from etcd runs on while
    /// every member promises (issue 23).
    #[arg(long)]
    failsafe: bool,
    /// How long the cluster may take to converge after the last heal.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    converge_within: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number with s, m or h (e.g. 20m)"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: the unit is s, m or h (e.g. 20m)")),
    }
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub id: usize,
    pub kind: Kind,
    pub what: String,
    pub from: f64,
    pub to: Option<f64>,
    /// The largest replica lag (bytes) the cluster showed when it was injected.
    pub lag: Option<u64>,
}

/// An operator action as it happened.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub at: f64,
    pub op: Op,
    pub what: String,
    pub status: Option<u16>,
    pub done: f64,
}

/// Everything the run saw, for the report.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub mode: String,
    pub duration: f64,
    pub ttl: u32,
    pub link_fault: String,
    pub faults: Vec<FaultRecord>,
    pub ops: Vec<OpRecord>,
    pub timeline: Vec<(f64, String)>,
    pub spans: Vec<workload::Span>,
    pub two_writers: Vec<(f64, f64, usize, usize)>,
    pub acks: Vec<workload::Acks>,
    /// Per writer table: acknowledged ids missing from the final primary.
    pub lost: Vec<(String, Vec<(i64, f64)>)>,
    pub transfers: u64,
    pub total: Option<i64>,
    pub reads: workload::ReadReport,
    pub vanished_acked: Vec<String>,
    pub converge_after_heal: Option<f64>,
    pub heal_at: f64,
    pub quiet_convergence: Vec<f64>,
    pub interrupted_quiet: usize,
    pub crashed: Vec<String>,
    pub failures: Vec<String>,
    pub looks: Vec<workload::Look>,
}

struct Log {
    clock: Clock,
    lines: Mutex<Vec<(f64, String)>>,
}

impl Log {
    fn say(&self, text: impl Into<String>) {
        let at = self.clock.now();
        let text = text.into();
        println!("[{at:7.1}s] {text}");
        self.lines.lock().expect("the timeline").push((at, text));
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    let mode = match args.mode {
        Mode::Sync => "sync",
        Mode::Async => "async",
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("target/chaos/{mode}-{seed}")));
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "chaos needs root (network namespaces, tmpfs mounts)");
    println!(
        "chaos: seed {seed}, mode {mode}{}, {} s of faults, ttl {}; report in {}",
        if args.failsafe { " with failsafe_mode" } else { "" },
        args.duration.as_secs(),
        args.ttl,
        out.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcome = runtime.block_on(run(&args, seed, mode))?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.md"), report::markdown(&outcome))?;
    std::fs::write(out.join("timeline.svg"), report::svg(&outcome))?;
    let text: String = outcome.timeline.iter().map(|(at, line)| format!("[{at:7.1}s] {line}\n")).collect();
    std::fs::write(out.join("timeline.txt"), text)?;
    println!("\n{}", report::summary(&outcome));
    if outcome.failures.is_empty() {
        println!("chaos passed (seed {seed}, mode {mode}); report: {}", out.join("report.md").display());
        Ok(())
    } else {
        for failure in &outcome.failures {
            eprintln!("FAILED: {failure}");
        }
        anyhow::bail!(
            "chaos failed (seed {seed}, mode {mode}): {} check(s) failed; replay with `make chaos SEED={seed} MODE={mode}`; report: {}",
            outcome.failures.len(),
            out.join("report.md").display()
        )
    }
}

/// One etcd member's own id and the leader it knows, if it answers within a second.
async fn etcd_status(ip: std::net::Ipv4Addr) -> Option<(u64, u64)> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(800));
    let ask = async {
        let mut client = etcd_client::Client::connect([format!("http://{ip}:2379")], Some(options)).await.ok()?;
        let status = client.status().await.ok()?;
        Some((status.header()?.member_id(), status.leader()))
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

/// The index of the etcd member the answering members call their leader.
async fn etcd_leader(ips: &[std::net::Ipv4Addr]) -> Option<usize> {
    let mut members = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if let Some((id, leader)) = etcd_status(*ip).await {
            members.push((i, id, leader));
        }
    }
    let leader = members.first()?.2;
    members.iter().find(|(_, id, _)| *id == leader).map(|(i, _, _)| *i)
}

async fn run(args: &Args, seed: u64, mode: &str) -> anyhow::Result<Outcome> {
    let clock = Clock::start();
    let log = Arc::new(Log { clock, lines: Mutex::new(Vec::new()) });
    let mut cluster = ChaosCluster::start(args.ttl, mode == "sync", args.failsafe)?;
    let result = drive(args, seed, mode, clock, &log, &mut cluster).await;
    let mut outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            cluster.keep();
            return Err(error.context(format!(
                "chaos run (seed {seed}, mode {mode}) could not finish; logs in {}",
                cluster.dir().display()
            )));
        }
    };
    outcome.timeline = std::mem::take(&mut *log.lines.lock().expect("the timeline"));
    if !outcome.failures.is_empty() {
        cluster.keep();
        outcome.failures.push(format!("logs and data kept in {}", cluster.dir().display()));
    }
    Ok(outcome)
}

async fn drive(
    args: &Args,
    seed: u64,
    mode: &str,
    clock: Clock,
    log: &Arc<Log>,
    cluster: &mut ChaosCluster,
) -> anyhow::Result<Outcome> {
    let node_ips: Vec<_> = cluster.nodes.iter().map(|n| n.ip).collect();
    let etcd_ips: Vec<_> = (0..3).map(|i| cluster.etcd_ip(i)).collect();
    let mut outcome = Outcome {
        seed,
        mode: mode.into(),
        ttl: args.ttl,
        link_fault: if cluster.net.netem {
            "netem delay".into()
        } else {
            "tbf rate limit (this kernel has no netem)".into()
        },
        ..Outcome::default()
    };
    log.say(format!(
        "network: {} hosts on {} (nodes {:?}, etcd {:?}, HAProxy {})",
        cluster.net.hosts.len(),
        cluster.net.cidr(),
        node_ips,
        etcd_ips,
        cluster.haproxy_ip()
    ));
    let says = log.clone();
    let monitor = Monitor::start(clock, node_ips.clone(), move |line| says.say(line));
    pgwarden_integration_tests::wait_until(
        "the cluster to form (one primary, two streaming replicas)",
        Duration::from_secs(240),
        || async {
            let look = monitor.latest();
            if look.converged(3) { Ok(Some(())) } else { Err(format!("{look:?}")) }
        },
    )
    .await?;
    log.say(format!("cluster formed: leader {}", monitor.latest().leader.unwrap_or_default()));

    let haproxy = Target::Tcp(cluster.haproxy_ip(), WRITE_PORT);
    let replicas = Target::Tcp(cluster.haproxy_ip(), READ_PORT);
    let mut tables: Vec<String> = (0..3).map(|i| format!("hap{i}")).collect();
    for n in &cluster.nodes {
        tables.push(format!("direct_{}", n.name));
        tables.push(format!("local_{}", n.name));
    }
    workload::create_tables(&haproxy, &tables).await?;
    let sockets: Vec<PathBuf> = cluster.nodes.iter().map(|n| n.socket_dir()).collect();
    let probes = Probes::start(clock, &sockets);
    probes.wait_answered(Duration::from_secs(60)).await?;
    let mut workers = Workers::new();
    for i in 0..3 {
        workers.writer(clock, haproxy.clone(), &format!("hap{i}"), Duration::from_millis(10));
    }
    for n in &cluster.nodes {
        workers.writer(
            clock,
            Target::Tcp(n.ip, cluster::PG_PORT),
            &format!("direct_{}", n.name),
            Duration::from_millis(25),
        );
        workers.writer(clock, Target::Socket(n.socket_dir()), &format!("local_{}", n.name), Duration::from_millis(25));
    }
    workers.transfers(haproxy.clone(), seed ^ 1);
    workers.transfers(haproxy.clone(), seed ^ 2);
    workers.reader(clock, replicas.clone(), "hap0");
    workers.reader(clock, replicas.clone(), "hap0");
    log.say("clients started: 3 writers through HAProxy, 1 direct and 1 local writer per node, 2 transfer clients, 2 readers on the replica port");

    // The nemesis and the operator.
    let mut rng = Rng::new(seed);
    let start = clock.now();
    let end = start + args.duration.as_secs_f64();
    let mut active: Vec<Active> = Vec::new();
    let mut next_fault = start + rng.range(2, 5) as f64;
    let mut next_op = start + rng.range(8, 20) as f64;
    let mut resume_at: Option<f64> = None;
    let mut resume_sent = false;
    let mut sabotaged = !args.sabotage;
    let mut fault_id = 0usize;
    // Who leads etcd, looked up beside the loop (a frozen member makes the
    // lookup slow, and heals must not wait for it).
    let etcd_leader_now: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
    let leader_lookup = {
        let (shared, ips) = (etcd_leader_now.clone(), etcd_ips.clone());
        tokio::spawn(async move {
            loop {
                let leader = etcd_leader(&ips).await;
                *shared.lock().expect("the etcd leader") = leader;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let ops: Arc<Mutex<Vec<OpRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let mut op_tasks = Vec::new();
    let mut faults: Vec<FaultRecord> = Vec::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let now = clock.now();
        if now >= end {
            break;
        }
        for i in (0..active.len()).rev() {
            if active[i].heal_at <= now {
                let fault = active.remove(i);
                if let Err(e) = nemesis::heal(cluster, &fault.undo) {
                    outcome.failures.push(format!("heal #{} ({}) failed: {e:#}", fault.id, fault.what));
                }
                log.say(format!("heal  #{} {}", fault.id, fault.what));
                if let Some(record) = faults.iter_mut().find(|f| f.id == fault.id) {
                    record.to = Some(clock.now());
                }
            }
        }
        if !sabotaged && now >= start + 20.0 {
            let latest = monitor.latest();
            if let Some(replica) = latest.replicas.first().copied().filter(|_| latest.primaries.len() == 1) {
                sabotaged = true;
                let node = &cluster.nodes[replica];
                let mut promote =
                    std::process::Command::new(pgwarden_integration_tests::postgres::binaries().path("pg_ctl"));
                promote.arg("-D").arg(node.data_dir()).args(["promote", "-W"]).stdout(std::process::Stdio::null());
                let promoted = pgwarden_integration_tests::process::run_as_postgres(&mut promote).status();
                log.say(format!("sabotage: {} promoted behind pgwarden's back ({promoted:?})", node.name));
            }
        }
        if now >= next_fault && active.len() < 2 {
            let latest = monitor.latest();
            let scene = Scene {
                nodes: node_ips.clone(),
                etcd: etcd_ips.clone(),
                haproxy: cluster.haproxy_ip(),
                gateway: cluster.net.gateway(),
                primary: (latest.primaries.len() == 1).then(|| latest.primaries[0]),
                etcd_leader: *etcd_leader_now.lock().expect("the etcd leader"),
            };
            if let Some((kind, node, etcd)) = nemesis::pick(&mut rng, &active, &scene) {
                fault_id += 1;
                let (what, undo) = match nemesis::inject(cluster, &mut rng, &scene, kind, node, etcd) {
                    Ok(done) => done,
                    Err(e) => {
                        outcome
                            .failures
                            .push(format!("fault #{fault_id} ({}) could not be injected: {e:#}", kind.label()));
                        log.say(format!("fault #{fault_id} ({}) could not be injected: {e:#}", kind.label()));
                        next_fault = clock.now() + 5.0;
                        continue;
                    }
                };
                let lasts = kind.lasts(&mut rng) as f64;
                let at = clock.now();
                log.say(format!("fault #{fault_id} {what} (for {lasts:.0} s; {})", kind.label()));
                faults.push(FaultRecord {
                    id: fault_id,
                    kind,
                    what: what.clone(),
                    from: at,
                    to: None,
                    lag: latest.max_lag,
                });
                active.push(Active { id: fault_id, kind, node, etcd, what, heal_at: at + lasts, undo });
            }
            next_fault = clock.now() + rng.range(3, 12) as f64;
        }
        if now >= next_op {
            let latest = monitor.latest();
            // A pause ends with a resume that is repeated until the cluster
            // shows it (a resume asked of an unreachable node is lost).
            let op = match resume_at {
                Some(at) if now >= at && resume_sent && !latest.paused => {
                    resume_at = None;
                    resume_sent = false;
                    None
                }
                Some(at) if now >= at => {
                    resume_sent = true;
                    Some(Op::Resume)
                }
                Some(_) => None,
                None => Some(
                    [Op::Switchover, Op::Switchover, Op::Pause, Op::Restart, Op::ConfigEdit, Op::Reload][rng.pick(6)],
                ),
            };
            if let Some(op) = op {
                if op == Op::Pause {
                    resume_at = Some(now + rng.range(3, 10) as f64);
                }
                let scene = Scene {
                    nodes: node_ips.clone(),
                    etcd: etcd_ips.clone(),
                    haproxy: cluster.haproxy_ip(),
                    gateway: cluster.net.gateway(),
                    primary: None,
                    etcd_leader: None,
                };
                let (ops, log, op_seed) = (ops.clone(), log.clone(), rng.next_u64());
                op_tasks.push(tokio::spawn(async move {
                    let at = clock.now();
                    let mut r = Rng::new(op_seed);
                    let (what, status, text) = nemesis::operate(&mut r, op, &scene, &latest).await;
                    let mut answer = status.map_or("no answer".to_string(), |s| s.to_string());
                    if status.is_some_and(|s| !(200..300).contains(&s)) {
                        // Why it was refused, in the answer's own words.
                        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                        answer = format!("{answer} {}", text.chars().take(160).collect::<String>());
                    }
                    log.say(format!("op    {what}: {answer}"));
                    ops.lock().expect("ops").push(OpRecord { at, op, what, status, done: clock.now() });
                }));
            }
            next_op = clock.now() + if resume_at.is_some() { 3 } else { rng.range(8, 25) } as f64;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut interrupt => {
                log.say("interrupted: healing and checking what ran so far");
                break;
            }
            _ = terminate.recv() => {
                log.say("terminated: healing and checking what ran so far");
                break;
            }
        }
    }
    leader_lookup.abort();

    // Heal everything, resume, and check.
    for fault in active.drain(..) {
        if let Err(e) = nemesis::heal(cluster, &fault.undo) {
            outcome.failures.push(format!("heal #{} ({}) failed: {e:#}", fault.id, fault.what));
        }
        log.say(format!("heal  #{} {}", fault.id, fault.what));
        if let Some(record) = faults.iter_mut().find(|f| f.id == fault.id) {
            record.to = Some(clock.now());
        }
    }
    cluster.net.heal_all()?;
    for task in op_tasks {
        let _ = task.await;
    }
    // The run ends resumed: asked of every node in turn until the cluster shows it.
    let resume_from = clock.now();
    let mut asked = 0usize;
    while resume_at.is_some() || monitor.latest().paused {
        let ip = node_ips[asked % node_ips.len()];
        asked += 1;
        let body = serde_json::json!({"pause": null});
        let answer = http(ip, "PATCH", "/config", Some(&body), Duration::from_secs(10)).await.map(|a| a.0);
        log.say(format!("op    resume at the end (asked of {ip}): {answer:?}"));
        ops.lock().expect("ops").push(OpRecord {
            at: clock.now(),
            op: Op::Resume,
            what: format!("resume at the end (asked of {ip})"),
            status: answer,
            done: clock.now(),
        });
        if answer == Some(200) {
            resume_at = None;
            let seen =
                pgwarden_integration_tests::wait_until("the resume to show", Duration::from_secs(10), || async {
                    Ok::<_, String>((!monitor.latest().paused).then_some(()))
                })
                .await;
            if seen.is_ok() {
                break;
            }
        }
        if clock.now() - resume_from > 120.0 {
            outcome.failures.push("the cluster could not be resumed at the end".into());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let heal_at = clock.now();
    outcome.heal_at = heal_at;
    outcome.duration = heal_at - start;
    log.say("every fault healed; waiting for the cluster to converge");
    // Converged means one primary and every other member streaming, held
    // for 2 s (three looks); the time is when it began.
    let mut since: Option<f64> = None;
    // While it takes long, what each node's HA loop says, every 10 s (a
    // passed run keeps no logs: this is what explains a slow convergence).
    let mut last_said = heal_at;
    let converged = loop {
        if clock.now() - last_said >= 10.0 {
            last_said = clock.now();
            log.say(format!("still converging: {}", ha_reasons(&node_ips).await));
        }
        let look = monitor.latest();
        if look.at > heal_at && look.converged(3) && !look.paused {
            let from = *since.get_or_insert(look.at);
            if look.at - from >= 2.0 {
                break Ok(from);
            }
        } else if look.at > heal_at {
            since = None;
        }
        if clock.now() - heal_at > args.converge_within.as_secs_f64() {
            break Err(format!("last look: {look:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    match converged {
        Ok(at) => {
            outcome.converge_after_heal = Some(at - heal_at);
            log.say(format!(
                "converged {:.1} s after the last heal: leader {}",
                at - heal_at,
                monitor.latest().leader.unwrap_or_default()
            ));
        }
        Err(e) => {
            outcome
                .failures
                .push(format!("the cluster did not converge within {:?} of the last heal: {e}", args.converge_within));
            log.say(format!("did not converge: {}", ha_reasons(&node_ips).await));
        }
    }
    // Writes must resume through HAProxy (within 30 s), and PostgreSQL must
    // stay up: sampled now and again after the checks below.
    let resumed_from = clock.now();
    let postmasters: Vec<Option<i32>> = cluster.nodes.iter().map(|n| n.postmaster_pid()).collect();
    if outcome.converge_after_heal.is_some() {
        let resumed =
            pgwarden_integration_tests::wait_until("writes through HAProxy", Duration::from_secs(30), || async {
                let stale: Vec<String> =
                    workers.last_acks("hap").into_iter().filter(|(_, at)| *at < resumed_from).map(|(t, _)| t).collect();
                if stale.is_empty() { Ok(Some(())) } else { Err(format!("no acknowledgement yet from {stale:?}")) }
            })
            .await;
        if let Err(e) = resumed {
            outcome.failures.push(format!("writes through HAProxy did not resume after convergence: {e:#}"));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acks, transfers, reads) = workers.stop().await?;
    let spans = probes.stop().await?;
    outcome.looks = monitor.stop().await;

    // One writer at a time.
    outcome.two_writers = workload::two_writer_intervals(&spans);
    for (from, to, a, b) in &outcome.two_writers {
        outcome.failures.push(format!(
            "node{} and node{} both accepted writes from {from:.2} s to {to:.2} s",
            a + 1,
            b + 1
        ));
    }
    outcome.spans = spans;
    // Acknowledged writes on the final primary.
    for a in &acks {
        let present = match workload::ids_in(&haproxy, &a.table).await {
            Ok(present) => present,
            Err(e) => {
                outcome.failures.push(format!("{} could not be read back: {e:#}", a.table));
                continue;
            }
        };
        let lost: Vec<(i64, f64)> = a.acked.iter().copied().filter(|(id, _)| !present.contains(id)).collect();
        if !lost.is_empty() {
            if mode == "sync" {
                outcome.failures.push(format!(
                    "{} acknowledged write(s) to {} lost in synchronous mode",
                    lost.len(),
                    a.table
                ));
            }
            outcome.lost.push((a.table.clone(), lost));
        }
    }
    // The transfers' invariant.
    outcome.transfers = transfers;
    match workload::total(&haproxy).await {
        Ok(total) => {
            outcome.total = Some(total);
            if total != workload::ACCOUNTS * workload::BALANCE {
                outcome
                    .failures
                    .push(format!("the accounts' total is {total}, not {}", workload::ACCOUNTS * workload::BALANCE));
            }
        }
        Err(e) => outcome.failures.push(format!("the accounts could not be read back: {e:#}")),
    }
    for (at, server, total) in &reads.wrong_totals {
        outcome.failures.push(format!("a read from {server} at {at:.1} s saw a total of {total}"));
    }
    // Rows a replica showed and then did not: fine if never acknowledged
    // (in asynchronous mode, counted with the losses).
    let hap0: HashSet<i64> = acks
        .iter()
        .find(|a| a.table == "hap0")
        .map(|a| a.acked.iter().map(|(id, _)| *id).collect())
        .unwrap_or_default();
    for v in &reads.vanished {
        let acked: Vec<i64> = ((v.to + 1)..=v.from).filter(|id| hap0.contains(id)).collect();
        if !acked.is_empty() {
            let line = format!(
                "{} showed hap0 up to id {} and later only up to {} at {:.1} s: {} acknowledged row(s) went away",
                v.server,
                v.from,
                v.to,
                v.at,
                acked.len()
            );
            if mode == "sync" {
                outcome.failures.push(line.clone());
            }
            outcome.vanished_acked.push(line);
        }
    }
    outcome.reads = reads;
    outcome.acks = acks;
    // No process crashed or is restarting in a loop.
    for node in &mut cluster.nodes {
        for service in node.crashed() {
            outcome.crashed.push(format!("{}'s {} exited", node.name, service.label()));
        }
    }
    for e in cluster.etcd_crashed() {
        outcome.crashed.push(format!("etcd{e} exited"));
    }
    if cluster.haproxy_crashed() {
        outcome.crashed.push("HAProxy exited".into());
    }
    let later: Vec<Option<i32>> = cluster.nodes.iter().map(|n| n.postmaster_pid()).collect();
    for (i, (before, after)) in postmasters.iter().zip(&later).enumerate() {
        if before != after || after.is_none() {
            outcome.crashed.push(format!(
                "node{}'s PostgreSQL restarted or stopped after convergence ({before:?} → {after:?})",
                i + 1
            ));
        }
    }
    for line in &outcome.crashed {
        outcome.failures.push(line.clone());
    }
    outcome.heal_at = heal_at;
    outcome.faults = faults;
    outcome.ops = std::mem::take(&mut *ops.lock().expect("ops"));
    outcome.ops.sort_by(|a, b| a.at.total_cmp(&b.at));
    report::quiet_convergence(&mut outcome);
    Ok(outcome)
}

/// Each node's HA loop's last reason (`/patroni`'s `pgwarden.ha`), or why
/// it cannot be read.
async fn ha_reasons(nodes: &[std::net::Ipv4Addr]) -> String {
    let mut said = Vec::new();
    for (i, &ip) in nodes.iter().enumerate() {
        let reason = match http(ip, "GET", "/patroni", None, Duration::from_secs(1)).await {
            Some((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|json| json["pgwarden"]["ha"].as_str().map(String::from))
                .unwrap_or_else(|| "no HA reason in /patroni".into()),
            None => "its health API does not answer".into(),
        };
        said.push(format!("node{}: {reason}", i + 1));
    }
    said.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_seconds_minutes_and_hours_and_name_the_fix_otherwise() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("20 minutes").expect_err("a word unit").contains("s, m or h"));
        assert!(parse_duration("m").expect_err("no number").contains("e.g. 20m"));
    }
}
