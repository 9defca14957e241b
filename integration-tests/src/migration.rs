//! docs/migrating-from-patroni.md as code, shared by the migration tests:
//! `patronictl` and `pgwardenctl` as an operator runs them, and the node by
//! node move of a running Patroni cluster (on etcd's v3 keyspace) to pgwarden.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::patroni::{PatroniCluster, venv};
use crate::wait::wait_until;
use crate::writer::Writer;

pub const UP: Duration = Duration::from_secs(180);

/// `patronictl -c <config> args...`; panics with its output on failure.
pub fn patronictl(config: &Path, args: &[&str]) -> String {
    let output =
        Command::new(venv().join("bin/patronictl")).arg("-c").arg(config).args(args).output().expect("run patronictl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "patronictl {args:?}: {text}");
    text
}

/// `pgwardenctl -c <config> args...`: success, stdout and stderr.
pub fn try_pgwardenctl(config: &Path, args: &[&str]) -> (bool, String, String) {
    let config = config.display().to_string();
    let mut all = vec!["-c", config.as_str()];
    all.extend_from_slice(args);
    crate::service::run("pgwardenctl", &all, &[]).expect("run pgwardenctl")
}

/// `pgwardenctl -c <config> args...`; panics with its output on failure.
pub fn pgwardenctl(config: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = try_pgwardenctl(config, args);
    assert!(ok, "pgwardenctl {args:?}: {stdout}{stderr}");
    stdout
}

/// The servers HAProxy's write section (`listen primary`) has UP, from its stats CSV.
pub fn write_servers_up(stats_port: u16) -> Vec<String> {
    let Ok((_, csv)) = crate::service::http_with("GET", stats_port, "/;csv", &[], "", Duration::from_secs(2)) else {
        return Vec::new();
    };
    csv.lines()
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > 17 && f[0] == "primary" && f[1] != "FRONTEND" && f[1] != "BACKEND" && f[17] == "UP")
        .map(|f| f[1].to_string())
        .collect()
}

/// Waits until node `i` answers `path` with 200 and, for `/replica`, streams.
pub async fn wait_role(cluster: &PatroniCluster, i: usize, path: &str) {
    let node = &cluster.nodes[i];
    wait_until(&format!("{} {path}", node.name), UP, || async {
        let streaming = path != "/replica"
            || node.get("/patroni").is_some_and(|b| b.replace(' ', "").contains("\"replication_state\":\"streaming\""));
        Ok::<_, String>((node.check(path) == 200 && streaming).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log of {}:\n{}", node.name, node.agent_log()));
}

/// Which file pgwarden reads on a migrated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgwardenConfig {
    /// `pgwarden.yml`: patroni.yml with its own pgpass file and gRPC ports
    /// (`PatroniNode::write_pgwarden_config`).
    Derived,
    /// The node's `patroni.yml` itself, unchanged (pgwarden's services on
    /// their default ports, REST + 1000 and + 2000).
    Unchanged,
}

fn config_of(cluster: &PatroniCluster, i: usize, kind: PgwardenConfig) -> PathBuf {
    match kind {
        PgwardenConfig::Derived => cluster.nodes[i].dir.path().join("pgwarden.yml"),
        PgwardenConfig::Unchanged => cluster.nodes[i].config_path(),
    }
}

/// The Patroni → pgwarden step on node `i`: Patroni stopped (the cluster is
/// paused, so PostgreSQL keeps running), pgwarden started on the same node.
pub fn swap(cluster: &mut PatroniCluster, i: usize, kind: PgwardenConfig) {
    let was_running = cluster.nodes[i].postmaster_pid();
    assert!(cluster.nodes[i].stop(), "Patroni stops on SIGTERM");
    assert_eq!(cluster.nodes[i].postmaster_pid(), was_running, "paused: PostgreSQL left running");
    if kind == PgwardenConfig::Derived {
        cluster.nodes[i].write_pgwarden_config().expect("pgwarden.yml");
    }
    let config = config_of(cluster, i, kind);
    cluster.nodes[i].start_pgwarden_on(&config).expect("start pgwarden");
}

/// Steps 1 to 5 of docs/migrating-from-patroni.md on a healthy Patroni
/// cluster on etcd's v3 keyspace whose leader is `leader`, while `writer`
/// writes through HAProxy. Returns the config pgwarden reads on a node.
pub async fn move_to_pgwarden(
    cluster: &mut PatroniCluster,
    leader: usize,
    writer: &Writer,
    kind: PgwardenConfig,
) -> PathBuf {
    let (first, second) = ((leader + 1) % 3, (leader + 2) % 3);
    // After each step, as an operator would, wait until writes get through again.
    let flowing = |what: &'static str| async move {
        writer
            .wait_ack_after(std::time::Instant::now(), UP)
            .await
            .unwrap_or_else(|e| panic!("writes after {what}: {e}"));
    };
    let patroni_yml = cluster.nodes[leader].config_path();

    // Step 1: pause. Step 2: each replica to pgwarden.
    patronictl(&patroni_yml, &["pause", "--wait"]);
    for replica in [first, second] {
        swap(cluster, replica, kind);
        wait_role(cluster, replica, "/replica").await;
        flowing("a replica moved to pgwarden").await;
    }
    let pgwarden_yml = config_of(cluster, first, kind);
    let listed = pgwardenctl(&pgwarden_yml, &["list"]);
    assert!(listed.contains("Maintenance mode: on"), "{listed}");

    // Step 3: resume; the pgwarden replicas follow the Patroni leader; switch over to one.
    pgwardenctl(&pgwarden_yml, &["resume", "--wait"]);
    for replica in [first, second] {
        wait_role(cluster, replica, "/replica").await;
    }
    let (old, new) = (cluster.nodes[leader].name.clone(), cluster.nodes[first].name.clone());
    patronictl(&patroni_yml, &["switchover", "--leader", &old, "--candidate", &new, "--force"]);
    wait_role(cluster, first, "/primary").await;
    wait_role(cluster, leader, "/replica").await;
    flowing("the switchover from Patroni to pgwarden").await;

    // Step 4: pause, move the old leader (now a Patroni replica). Step 5: resume.
    pgwardenctl(&pgwarden_yml, &["pause", "--wait"]);
    swap(cluster, leader, kind);
    wait_role(cluster, leader, "/replica").await;
    pgwardenctl(&pgwarden_yml, &["resume", "--wait"]);
    for replica in [leader, second] {
        wait_role(cluster, replica, "/replica").await;
    }
    flowing("the last node moved").await;

    // Step 5: PostgreSQL restarted once under pgwarden, replicas first, then
    // the leader after a switchover to a restarted node.
    for node in [leader, second] {
        cluster.nodes[node].stop_pgwarden();
        let config = config_of(cluster, node, kind);
        cluster.nodes[node].start_pgwarden_on(&config).expect("start pgwarden");
        wait_role(cluster, node, "/replica").await;
        flowing("a replica restarted under pgwarden").await;
    }
    pgwardenctl(&pgwarden_yml, &["switchover", "--candidate", &cluster.nodes[second].name.clone(), "--force"]);
    wait_role(cluster, second, "/primary").await;
    cluster.nodes[first].stop_pgwarden();
    let config = config_of(cluster, first, kind);
    cluster.nodes[first].start_pgwarden_on(&config).expect("start pgwarden");
    for node in [leader, first] {
        wait_role(cluster, node, "/replica").await;
    }
    flowing("the final switchover").await;
    pgwarden_yml
}

/// Waits until every node of `cluster` holds every row `ids` (the writer's
/// acknowledged ids) in `table`; panics naming the node that lacks some.
pub async fn assert_every_acknowledged_row_everywhere(cluster: &PatroniCluster, table: &str, ids: &[i64]) {
    for node in &cluster.nodes {
        let missing = wait_until(&format!("{} to hold every acknowledged row", node.name), UP, || async {
            let missing = crate::writer::missing_rows(node.pg_port, crate::cluster::SUPERUSER_PASSWORD, table, ids)
                .await
                .map_err(|e| e.to_string())?;
            if missing.is_empty() { Ok(Some(missing)) } else { Err(format!("{} missing", missing.len())) }
        })
        .await;
        assert!(missing.is_ok(), "{}: {missing:?}", node.name);
    }
}

/// HAProxy with the classic checks (as the migration page asks) in front of
/// `cluster`, and a writer through it once only the leader takes writes
/// (the classic checks take a few seconds to mark the replicas DOWN).
pub async fn haproxy_and_writer(cluster: &PatroniCluster, leader: usize, table: &str) -> (crate::HaProxy, Writer) {
    use crate::free_port;
    let (write, read, stats) = (free_port(), free_port(), free_port());
    let config = crate::haproxy::deploy_config_from("haproxy-classic.cfg", write, read, stats, &cluster.backends());
    let haproxy = crate::HaProxy::start(&config, &[write, read, stats]).await.expect("HAProxy");
    wait_until("HAProxy to route writes to the leader only", UP, || async {
        let up = write_servers_up(stats);
        Ok::<_, String>((up == [cluster.nodes[leader].name.clone()]).then_some(()).ok_or(format!("{up:?}")).ok())
    })
    .await
    .expect("HAProxy settled");
    let writer = Writer::start(write, crate::cluster::SUPERUSER_PASSWORD, table, Duration::from_millis(10))
        .await
        .expect("writer");
    (haproxy, writer)
}
