//! A cluster built by the guides lives in etcd's v2 keyspace: their
//! `patroni.yml` has an `etcd:` section, which Patroni drives through the v2
//! API. pgwarden speaks v3, where that cluster is invisible. These tests run
//! real Patroni (PyPI) on a guide's config and check that pgwarden, started
//! there as a new user would, refuses and touches nothing (before the fix: a
//! second writable primary behind the same HAProxy, and a paused primary
//! shut down 40 ms after start), and that the documented path from v2 to v3
//! and then to pgwarden keeps every acknowledged write.

use std::time::Duration;

use pgwarden_integration_tests::guides::{self, Guide, GuideNode};
use pgwarden_integration_tests::migration::{
    PgwardenConfig, UP, assert_every_acknowledged_row_everywhere, haproxy_and_writer, move_to_pgwarden, patronictl,
    pgwardenctl, try_pgwardenctl,
};
use pgwarden_integration_tests::patroni::PatroniCluster;
use pgwarden_integration_tests::{init_logging, wait_until};

/// A guide-built Patroni cluster on etcd's v2 API: three nodes, healthy.
async fn guide_cluster_on_v2(nodes: usize) -> (PatroniCluster, usize) {
    let mut cluster = PatroniCluster::empty(Guide::Classic.scope()).await.expect("etcd");
    for i in 1..=nodes {
        add_guide_node(&mut cluster, &format!("node{i}"));
    }
    cluster.start_all().expect("start Patroni");
    let leader = cluster.wait_healthy(UP).await.expect("a Patroni cluster on v2");
    (cluster, leader)
}

fn add_guide_node(cluster: &mut PatroniCluster, name: &str) {
    let etcd = cluster.etcd.host_ports()[0].clone();
    cluster
        .add_node_from(name, |node| {
            guides::config(
                Guide::Classic,
                &GuideNode {
                    name,
                    rest_port: node.rest_port,
                    pg_port: node.pg_port,
                    dir: node.dir.path(),
                    etcd: &etcd,
                },
            )
        })
        .expect("node config");
}

/// Every key etcd's v3 keyspace holds (the whole keyspace).
async fn v3_keys(cluster: &PatroniCluster) -> Vec<String> {
    let mut client = cluster.etcd.client().await.expect("etcd client");
    let all =
        client.get("\0", Some(etcd_client::GetOptions::new().with_from_key().with_keys_only())).await.expect("get");
    all.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
}

/// Waits until the agent of node `i` exits; returns its exit code.
async fn agent_exit(cluster: &mut PatroniCluster, i: usize) -> Option<i32> {
    let node = &mut cluster.nodes[i];
    let started = std::time::Instant::now();
    while started.elapsed() < UP {
        if let Some(code) = node.agent_exit_code() {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent on {} did not exit: {}", node.name, node.agent_log());
}

#[tokio::test]
async fn pgwarden_refuses_a_guide_cluster_in_etcds_v2_keyspace_and_touches_nothing() {
    init_logging();
    let (mut cluster, leader) = guide_cluster_on_v2(3).await;
    let sysid = cluster.nodes[leader].psql_system_identifier();

    // A new, empty node started under pgwarden with the guide's config.
    add_guide_node(&mut cluster, "node4");
    let config = cluster.nodes[3].config_path();
    cluster.nodes[3].start_pgwarden_on(&config).expect("start pgwarden");
    assert_eq!(agent_exit(&mut cluster, 3).await, Some(78), "EX_CONFIG: refused, no restart loop");
    let log = cluster.nodes[3].agent_log();
    assert!(log.contains("etcd's v2 keyspace holds a live cluster"), "{log}");
    assert!(log.contains("migrate-v2"), "the refusal says what to do: {log}");
    assert!(!cluster.nodes[3].data_dir().join("PG_VERSION").exists(), "no initdb");
    assert_eq!(v3_keys(&cluster).await, Vec::<String>::new(), "nothing written to etcd's v3 keyspace");
    cluster.nodes[3].stop_pgwarden();

    // The guide's running primary, with Patroni stopped during a pause (as a
    // user trying pgwarden in place would): pgwarden starts beside it and
    // must neither stop it nor take it over.
    let leader_yml = cluster.nodes[leader].config_path();
    patronictl(&leader_yml, &["pause", "--wait"]);
    let postmaster = cluster.nodes[leader].postmaster_pid().expect("the primary runs");
    assert!(cluster.nodes[leader].stop(), "Patroni stops on SIGTERM");
    cluster.nodes[leader].start_pgwarden_on(&leader_yml).expect("start pgwarden");
    assert_eq!(agent_exit(&mut cluster, leader).await, Some(78));
    // The fencer beside it judges the primary once the agent has been silent
    // for its grace period, and leaves it running.
    let node = &cluster.nodes[leader];
    wait_until("the fencer's judgement", UP, || async {
        Ok::<_, String>(node.health_log().contains("leaving it running").then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", node.health_log()));
    assert_eq!(node.postmaster_pid(), Some(postmaster), "the primary was not stopped");
    assert_eq!(node.psql("select pg_is_in_recovery()").expect("psql"), "f", "still a writable primary");
    assert_eq!(node.psql_system_identifier(), sysid);
    assert_eq!(v3_keys(&cluster).await, Vec::<String>::new(), "nothing written to etcd's v3 keyspace");

    // Patroni takes its node back; the cluster is as it was.
    cluster.nodes[leader].stop_pgwarden();
    assert_eq!(cluster.nodes[leader].postmaster_pid(), Some(postmaster));
    cluster.nodes[leader].start().expect("Patroni again");
    patronictl(&leader_yml, &["resume", "--wait"]);
    cluster.nodes.truncate(3);
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy again"), leader);
}

/// Renames the node's `etcd:` section to `etcd3:`, the one change the move
/// to v3 makes in a guide's `patroni.yml`.
fn to_etcd3(path: &std::path::Path) {
    let yaml = std::fs::read_to_string(path).expect("patroni.yml");
    assert!(yaml.contains("\netcd:\n"), "a guide config with an etcd: section");
    std::fs::write(path, yaml.replace("\netcd:\n", "\netcd3:\n")).expect("write patroni.yml");
}

#[tokio::test]
async fn a_guide_cluster_moves_from_etcds_v2_keyspace_to_pgwarden_without_losing_a_write() {
    init_logging();
    let (mut cluster, leader) = guide_cluster_on_v2(3).await;
    let (_haproxy, writer) = haproxy_and_writer(&cluster, leader, "from_v2").await;
    let flowing = |what: &'static str| {
        let writer = &writer;
        async move {
            writer
                .wait_ack_after(std::time::Instant::now(), UP)
                .await
                .unwrap_or_else(|e| panic!("writes after {what}: {e}"));
        }
    };
    let leader_yml = cluster.nodes[leader].config_path();

    // From v2 to v3 (docs/migrating-from-patroni.md, "A cluster on etcd's v2 API").
    // migrate-v2 refuses an unpaused cluster, copies nothing.
    let (ok, _, stderr) = try_pgwardenctl(&leader_yml, &["migrate-v2"]);
    assert!(!ok && stderr.contains("not paused"), "{stderr}");
    patronictl(&leader_yml, &["pause", "--wait"]);
    let copied = pgwardenctl(&leader_yml, &["migrate-v2"]);
    assert!(copied.contains("initialize") && copied.contains("config"), "{copied}");
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in replicas.iter().chain(std::iter::once(&leader)) {
        let pid = cluster.nodes[i].postmaster_pid();
        assert!(cluster.nodes[i].stop(), "Patroni stops on SIGTERM");
        assert_eq!(cluster.nodes[i].postmaster_pid(), pid, "paused: PostgreSQL left running");
        to_etcd3(&cluster.nodes[i].config_path());
        cluster.nodes[i].start().expect("Patroni on etcd3");
        flowing("a node moved to etcd's v3 keyspace").await;
    }
    // The v2 copy goes once no member is left there (their keys expire after ttl).
    let removed = wait_until("the v2 member keys to expire", UP, || async {
        let (ok, stdout, stderr) = try_pgwardenctl(&leader_yml, &["migrate-v2", "--remove-v2"]);
        if ok { Ok(Some(stdout)) } else { Err(stderr) }
    })
    .await
    .expect("the v2 copy removed");
    assert!(removed.contains("Removed"), "{removed}");
    patronictl(&leader_yml, &["resume", "--wait"]);
    let leader = cluster.wait_healthy(UP).await.expect("Patroni healthy on etcd's v3 keyspace");
    flowing("the resume on v3").await;

    // Then to pgwarden, reading each node's patroni.yml unchanged.
    let pgwarden_yml = move_to_pgwarden(&mut cluster, leader, &writer, PgwardenConfig::Unchanged).await;

    let report = writer.stop().await;
    println!(
        "{} writes acknowledged, {} failed attempts; longest gap {:?}",
        report.acked.len(),
        report.failed_attempts,
        report.max_gap_after(report.acked[0].1)
    );
    assert_every_acknowledged_row_everywhere(&cluster, "from_v2", &report.ids()).await;
    // The members table (from the member keys) says streaming for both.
    let listed = wait_until("pgwardenctl list to show two replicas streaming", UP, || async {
        let listed = pgwardenctl(&pgwarden_yml, &["list"]);
        if listed.matches("streaming").count() == 2 { Ok(Some(listed)) } else { Err(listed) }
    })
    .await
    .expect("two replicas streaming");
    println!("{listed}");
    for node in &cluster.nodes {
        let slots = node.psql("select string_agg(slot_name || ':' || active, ',') from pg_replication_slots");
        println!("{} slots: {slots:?}", node.name);
    }
    // The old Patroni leader, adopted by pgwarden as a replica and never
    // leading under it, keeps the member slots Patroni kept on it.
    let kept = cluster.nodes[leader]
        .psql("select count(*) from pg_replication_slots where slot_type = 'physical' and not active")
        .expect("psql");
    assert_ne!(kept, "0", "the adopted replica {} keeps its member slots", cluster.nodes[leader].name);
    // Every promotion is in the history, Patroni's switchover included.
    let history = pgwardenctl(&pgwarden_yml, &["history"]);
    println!("{history}");
    let timeline: u64 = cluster.nodes[0]
        .get("/patroni")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["timeline"].as_u64())
        .expect("timeline");
    let timelines: Vec<u64> = history
        .lines()
        .filter_map(|line| line.trim_start_matches('|').split('|').next()?.trim().parse().ok())
        .collect();
    assert!(timeline >= 3, "two switchovers: timeline {timeline}");
    assert_eq!(timelines, (1..timeline).collect::<Vec<_>>(), "one history entry per promotion: {history}");
    // The promotions pgwarden made carry their time and new leader.
    assert!(history.lines().filter(|l| l.contains("T") && l.contains(":")).count() >= 2, "{history}");
}
