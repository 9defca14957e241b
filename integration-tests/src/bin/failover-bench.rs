//! Failover benchmark: brings up etcd + 3 pgwarden nodes + HAProxy on
//! loopback (ttl 10, loop_wait 1, retry_timeout 3; the fast HAProxy checks of
//! deploy/haproxy/haproxy-fast.cfg), runs a client writing a row every 5 ms through
//! HAProxy, probes every node directly for writability, injects a fault, and
//! reports the write-unavailability window (last acknowledged write before the
//! fault to the first after), the time to a new `/primary` 200, acknowledged
//! rows lost, seconds during which two nodes accepted writes, and the time
//! until the old primary streams again.
//!
//!     cargo run -p pgwarden-integration-tests --bin failover-bench -- [REPEATS] [SCENARIO...]
//!
//! Scenarios: switchover (asked of the controller over gRPC), postgres-killed, agent-stopped, agent-killed (SIGKILL,
//! PostgreSQL left running), agent-frozen (SIGSTOP, SIGCONT once a replica
//! took over), etcd-cut (the primary's path to etcd black-holed, restored
//! once a replica took over), etcd-stopped (etcd killed for everyone,
//! restarted once the primary fenced itself: the same node resumes),
//! node-lost. Needs the
//! workspace's binaries built (`cargo build --workspace --bins`) and root or
//! the `postgres` user, as the tests do.

use std::time::{Duration, Instant};

use ha_proto::v1::SwitchoverRequest;
use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use pgwarden_integration_tests::haproxy::deploy_config;
use pgwarden_integration_tests::probe::WriteProbe;
use pgwarden_integration_tests::writer::{Writer, missing_rows};
use pgwarden_integration_tests::{HaProxy, PgwardenCluster, free_port, wait_until};

const UP: Duration = Duration::from_secs(90);

struct Run {
    unavailable: Duration,
    to_primary: Duration,
    lost: usize,
    acked: usize,
    two_writers: f64,
    /// Fault to the old primary streaming again (`None`: the node is gone).
    rejoined: Option<Duration>,
}

async fn run_once(scenario: &str) -> anyhow::Result<Run> {
    // etcd-cut needs each node behind its own proxy to etcd.
    let (mut cluster, proxies) = if scenario == "etcd-cut" {
        PgwardenCluster::start_behind_proxies(3).await?
    } else {
        (PgwardenCluster::start(3).await?, Vec::new())
    };
    cluster.wait_healthy(UP).await?;
    let (write, read, stats) = (free_port(), free_port(), free_port());
    let _haproxy =
        HaProxy::start(&deploy_config(write, read, stats, &cluster.backends()), &[write, read, stats]).await?;
    let writer = Writer::start(write, SUPERUSER_PASSWORD, "bench", Duration::from_millis(5)).await?;
    let leader = cluster.wait_primary(UP).await?;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.pg_port).collect();
    let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    match scenario {
        "switchover" => {
            // As an operator asks: the controller's gRPC API (it answers when done).
            let mut controller =
                pgwarden_integration_tests::grpc::controller(cluster.nodes[leader].controller_url()).await?;
            tokio::spawn(async move { controller.switchover(SwitchoverRequest::default()).await });
        }
        "postgres-killed" => {
            let pid = cluster.nodes[leader].postmaster_pid().ok_or_else(|| anyhow::anyhow!("no postmaster"))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        }
        "node-lost" => cluster.nodes[leader].kill_node(),
        "agent-stopped" => {
            cluster.nodes[leader].stop_agent();
        }
        "agent-killed" => cluster.nodes[leader].kill_agent(),
        "agent-frozen" => cluster.nodes[leader].signal_agent(nix::sys::signal::Signal::SIGSTOP),
        "etcd-cut" => proxies[leader].cut(),
        "etcd-stopped" => cluster.etcd.kill(0),
        other => anyhow::bail!("unknown scenario {other}"),
    }
    // The time to a /primary 200 on any node, polled every 10 ms.
    // The same node comes back as primary in these two.
    let same_node = matches!(scenario, "postgres-killed" | "etcd-stopped");
    if same_node {
        // The old primary must first stop answering 200 (restart in place, or
        // its fence before the deadline when etcd is gone, follows).
        wait_until("/primary 503", UP, || async {
            Ok::<_, String>((cluster.nodes[leader].check("/primary") != 200).then_some(()))
        })
        .await?;
    }
    if scenario == "etcd-stopped" {
        cluster.etcd.restart(0).await?;
    }
    let primary = wait_until("a primary after the fault", UP, || async {
        let answers: Vec<usize> = (0..3).filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match answers.as_slice() {
            [one] if *one != leader || same_node => Ok(Some(*one)),
            _ => Err(format!("{answers:?}")),
        }
    })
    .await?;
    let to_primary = fault.elapsed();
    // The writer gets through again, then measure.
    writer.wait_ack_after(fault + to_primary, UP).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = writer.stop().await;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        let times: Vec<String> = report
            .acked
            .iter()
            .filter(|(_, at)| *at > fault)
            .map(|(id, at)| format!("{id}@{:.3}", at.duration_since(fault).as_secs_f64()))
            .collect();
        eprintln!("{scenario}: fault→{:?}; acks: {}", to_primary, times.join(" "));
    }
    let lost = missing_rows(cluster.nodes[primary].pg_port, SUPERUSER_PASSWORD, "bench", &report.ids()).await?.len();
    // The old primary back: its agent restarted or thawed, then streaming.
    let rejoined = match scenario {
        "node-lost" => None,
        _ => {
            match scenario {
                "agent-stopped" | "agent-killed" => cluster.nodes[leader].start_agent()?,
                "agent-frozen" => cluster.nodes[leader].signal_agent(nix::sys::signal::Signal::SIGCONT),
                "etcd-cut" => proxies[leader].restore(),
                _ => {}
            }
            cluster.wait_healthy(UP).await?;
            Some(fault.elapsed())
        }
    };
    let two_writers = probe.stop().await.two_writer_seconds();
    Ok(Run {
        unavailable: report.max_gap_after(fault),
        to_primary,
        lost,
        acked: report.acked.len(),
        two_writers,
        rejoined,
    })
}

fn summary(values: &mut [Duration]) -> String {
    values.sort();
    let median = values[values.len() / 2];
    format!(
        "{:>7.2} s  [{:.2} .. {:.2}]",
        median.as_secs_f64(),
        values[0].as_secs_f64(),
        values[values.len() - 1].as_secs_f64()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let repeats: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
    let mut scenarios: Vec<String> = args.collect();
    if scenarios.is_empty() {
        scenarios = [
            "switchover",
            "postgres-killed",
            "agent-stopped",
            "agent-killed",
            "agent-frozen",
            "etcd-cut",
            "etcd-stopped",
            "node-lost",
        ]
        .map(String::from)
        .to_vec();
    }
    println!(
        "pgwarden failover benchmark: {repeats} run(s) per scenario, ttl 10, loop_wait 1, retry_timeout 3, fast HAProxy checks"
    );
    println!(
        "scenario         write unavailable (median [min..max])   new /primary 200               acked rows lost   \
         two writers (s)   old primary streaming"
    );

    for scenario in &scenarios {
        let mut unavailable = Vec::new();
        let mut to_primary = Vec::new();
        let mut rejoined = Vec::new();
        let (mut lost, mut acked, mut two_writers) = (0, 0, 0.0);
        for _ in 0..repeats {
            let run = run_once(scenario).await?;
            unavailable.push(run.unavailable);
            to_primary.push(run.to_primary);
            rejoined.extend(run.rejoined);
            lost += run.lost;
            acked += run.acked;
            two_writers += run.two_writers;
        }
        let rejoined = if rejoined.is_empty() { "n/a (node gone)".to_string() } else { summary(&mut rejoined) };
        println!(
            "{scenario:<16} {:<38} {:<30} {:<17} {two_writers:<17.3} {rejoined}",
            summary(&mut unavailable),
            summary(&mut to_primary),
            format!("{lost} of {acked}")
        );
    }
    Ok(())
}
