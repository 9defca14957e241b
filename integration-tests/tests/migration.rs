//! docs/migrating-from-patroni.md carried out for real: a three-node cluster
//! run by Patroni from PyPI (`scripts/install-patroni.sh`) is moved to
//! pgwarden node by node, each node's pgwarden reading the same patroni.yml,
//! while a client writes through HAProxy (the classic checks the document
//! asks for during the migration). No acknowledged write may be lost, and
//! every node ends streaming from one pgwarden primary.

use std::process::Command;
use std::time::Duration;

use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use pgwarden_integration_tests::haproxy::deploy_config_from;
use pgwarden_integration_tests::patroni::{PATRONI_MIN, PatroniCluster, venv};
use pgwarden_integration_tests::writer::{Writer, missing_rows};
use pgwarden_integration_tests::{HaProxy, free_port, init_logging, wait_until};

const UP: Duration = Duration::from_secs(120);

/// `patronictl -c <node's patroni.yml> args...`; panics with its output on failure.
fn patronictl(config: &std::path::Path, args: &[&str]) -> String {
    let output =
        Command::new(venv().join("bin/patronictl")).arg("-c").arg(config).args(args).output().expect("run patronictl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "patronictl {args:?}: {text}");
    text
}

/// `pgwardenctl -c <config> args...`; panics with its output on failure.
fn pgwardenctl(config: &std::path::Path, args: &[&str]) -> String {
    let config = config.display().to_string();
    let mut all = vec!["-c", config.as_str()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = pgwarden_integration_tests::service::run("pgwardenctl", &all, &[]).expect("run");
    assert!(ok, "pgwardenctl {args:?}: {stdout}{stderr}");
    stdout
}

/// The servers HAProxy's write section (`listen primary`) has UP, from its stats CSV.
fn write_servers_up(stats_port: u16) -> Vec<String> {
    let Ok((_, csv)) =
        pgwarden_integration_tests::service::http_with("GET", stats_port, "/;csv", &[], "", Duration::from_secs(2))
    else {
        return Vec::new();
    };
    csv.lines()
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > 17 && f[0] == "primary" && f[1] != "FRONTEND" && f[1] != "BACKEND" && f[17] == "UP")
        .map(|f| f[1].to_string())
        .collect()
}

/// Waits until node `i` answers `path` with 200 and, for `/replica`, streams.
async fn wait_role(cluster: &PatroniCluster, i: usize, path: &str) {
    let node = &cluster.nodes[i];
    wait_until(&format!("{} {path}", node.name), UP, || async {
        let streaming = path != "/replica"
            || node.get("/patroni").is_some_and(|b| b.replace(' ', "").contains("\"replication_state\":\"streaming\""));
        Ok::<_, String>((node.check(path) == 200 && streaming).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log of {}:\n{}", node.name, node.agent_log()));
}

/// The Patroni → pgwarden step on node `i`: Patroni stopped (the cluster is
/// paused, so PostgreSQL keeps running), pgwarden started on the same config.
async fn swap(cluster: &mut PatroniCluster, i: usize) {
    let was_running = cluster.nodes[i].postmaster_pid();
    assert!(cluster.nodes[i].stop(), "Patroni stops on SIGTERM");
    assert_eq!(cluster.nodes[i].postmaster_pid(), was_running, "paused: PostgreSQL left running");
    cluster.nodes[i].write_pgwarden_config().expect("pgwarden.yml");
    cluster.nodes[i].start_pgwarden().expect("start pgwarden");
}

#[tokio::test]
async fn a_patroni_cluster_moves_to_pgwarden_node_by_node_without_losing_a_write() {
    init_logging();
    println!("Patroni: {}", pgwarden_integration_tests::patroni::patroni_version().expect("installed"));
    let mut cluster = PatroniCluster::start(3, PATRONI_MIN, false).await.expect("start Patroni");
    let leader = cluster.wait_healthy(UP).await.expect("a Patroni cluster");
    let (write, read, stats) = (free_port(), free_port(), free_port());
    let haproxy_config = deploy_config_from("haproxy-classic.cfg", write, read, stats, &cluster.backends());
    let _haproxy = HaProxy::start(&haproxy_config, &[write, read, stats]).await.expect("HAProxy");
    // HAProxy's classic checks take a few seconds to mark the replicas DOWN:
    // the migration starts once only the leader takes writes.
    wait_until("HAProxy to route writes to the leader only", UP, || async {
        let up = write_servers_up(stats);
        Ok::<_, String>((up == [cluster.nodes[leader].name.clone()]).then_some(()).ok_or(format!("{up:?}")).ok())
    })
    .await
    .expect("HAProxy settled");
    let writer =
        Writer::start(write, SUPERUSER_PASSWORD, "migration", Duration::from_millis(10)).await.expect("writer");
    let (first, second) = ((leader + 1) % 3, (leader + 2) % 3);
    // After each step, as an operator would, wait until writes get through again.
    let flowing = |what: &'static str| {
        let writer = &writer;
        async move {
            writer
                .wait_ack_after(std::time::Instant::now(), UP)
                .await
                .unwrap_or_else(|e| panic!("writes after {what}: {e}"));
        }
    };
    let patroni_yml = cluster.nodes[leader].config_path();

    // Step 1: pause. Step 2: each replica to pgwarden.
    patronictl(&patroni_yml, &["pause", "--wait"]);
    for replica in [first, second] {
        swap(&mut cluster, replica).await;
        wait_role(&cluster, replica, "/replica").await;
        flowing("a replica moved to pgwarden").await;
    }
    let pgwarden_yml = cluster.nodes[first].dir.path().join("pgwarden.yml");
    let listed = pgwardenctl(&pgwarden_yml, &["list"]);
    assert!(listed.contains("Maintenance mode: on"), "{listed}");

    // Step 3: resume; the pgwarden replicas follow the Patroni leader; switch over to one.
    pgwardenctl(&pgwarden_yml, &["resume", "--wait"]);
    for replica in [first, second] {
        wait_role(&cluster, replica, "/replica").await;
    }
    let (old, new) = (cluster.nodes[leader].name.clone(), cluster.nodes[first].name.clone());
    patronictl(&patroni_yml, &["switchover", "--leader", &old, "--candidate", &new, "--force"]);
    wait_role(&cluster, first, "/primary").await;
    wait_role(&cluster, leader, "/replica").await;
    flowing("the switchover from Patroni to pgwarden").await;

    // Step 4: pause, move the old leader (now a Patroni replica). Step 5: resume.
    pgwardenctl(&pgwarden_yml, &["pause", "--wait"]);
    swap(&mut cluster, leader).await;
    wait_role(&cluster, leader, "/replica").await;
    pgwardenctl(&pgwarden_yml, &["resume", "--wait"]);
    for replica in [leader, second] {
        wait_role(&cluster, replica, "/replica").await;
    }
    flowing("the last node moved").await;

    // Step 5: PostgreSQL restarted once under pgwarden, replicas first, then
    // the leader after a switchover to a restarted node.
    for node in [leader, second] {
        cluster.nodes[node].stop_pgwarden();
        cluster.nodes[node].start_pgwarden().expect("start pgwarden");
        wait_role(&cluster, node, "/replica").await;
        flowing("a replica restarted under pgwarden").await;
    }
    pgwardenctl(&pgwarden_yml, &["switchover", "--candidate", &cluster.nodes[second].name.clone(), "--force"]);
    wait_role(&cluster, second, "/primary").await;
    cluster.nodes[first].stop_pgwarden();
    cluster.nodes[first].start_pgwarden().expect("start pgwarden");
    for node in [leader, first] {
        wait_role(&cluster, node, "/replica").await;
    }

    // Every acknowledged write is on the final primary and on both replicas.
    flowing("the final switchover").await;
    let report = writer.stop().await;
    let span = report.acked.last().expect("acks").1.duration_since(report.acked[0].1);
    println!(
        "{} writes acknowledged over {span:?}, {} failed attempts; longest gap {:?}",
        report.acked.len(),
        report.failed_attempts,
        report.max_gap_after(report.acked[0].1)
    );
    let ids = report.ids();
    for node in &cluster.nodes {
        let missing = wait_until(&format!("{} to hold every acknowledged row", node.name), UP, || async {
            let missing =
                missing_rows(node.pg_port, SUPERUSER_PASSWORD, "migration", &ids).await.map_err(|e| e.to_string())?;
            if missing.is_empty() { Ok(Some(missing)) } else { Err(format!("{} missing", missing.len())) }
        })
        .await;
        assert!(missing.is_ok(), "{}: {missing:?}", node.name);
    }
    let listed = pgwardenctl(&pgwarden_yml, &["list"]);
    println!("{listed}");
    assert_eq!(listed.matches("streaming").count(), 2, "two replicas streaming: {listed}");
    for node in &cluster.nodes {
        assert!(node.log().lines().count() > 0, "{} ran under Patroni first", node.name);
        assert!(node.agent_log().contains("config loaded"), "{} runs pgwarden now", node.name);
    }
}
