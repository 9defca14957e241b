//! docs/migrating-from-patroni.md carried out for real: a three-node cluster
//! run by Patroni from PyPI (`scripts/install-patroni.sh`) is moved to
//! pgwarden node by node, each node's pgwarden reading the same patroni.yml,
//! while a client writes through HAProxy (the classic checks the document
//! asks for during the migration). No acknowledged write may be lost, and
//! every node ends streaming from one pgwarden primary.

use pgwarden_integration_tests::init_logging;
use pgwarden_integration_tests::migration::{
    PgwardenConfig, UP, assert_every_acknowledged_row_everywhere, haproxy_and_writer, move_to_pgwarden, pgwardenctl,
};
use pgwarden_integration_tests::patroni::{PATRONI_MIN, PatroniCluster};

#[tokio::test]
async fn a_patroni_cluster_moves_to_pgwarden_node_by_node_without_losing_a_write() {
    init_logging();
    println!("Patroni: {}", pgwarden_integration_tests::patroni::patroni_version().expect("installed"));
    let mut cluster = PatroniCluster::start(3, PATRONI_MIN, false).await.expect("start Patroni");
    let leader = cluster.wait_healthy(UP).await.expect("a Patroni cluster");
    let (_haproxy, writer) = haproxy_and_writer(&cluster, leader, "migration").await;
    let pgwarden_yml = move_to_pgwarden(&mut cluster, leader, &writer, PgwardenConfig::Derived).await;

    // Every acknowledged write is on the final primary and on both replicas.
    let report = writer.stop().await;
    let span = report.acked.last().expect("acks").1.duration_since(report.acked[0].1);
    println!(
        "{} writes acknowledged over {span:?}, {} failed attempts; longest gap {:?}",
        report.acked.len(),
        report.failed_attempts,
        report.max_gap_after(report.acked[0].1)
    );
    assert_every_acknowledged_row_everywhere(&cluster, "migration", &report.ids()).await;
    let listed = pgwardenctl(&pgwarden_yml, &["list"]);
    println!("{listed}");
    assert_eq!(listed.matches("streaming").count(), 2, "two replicas streaming: {listed}");
    for node in &cluster.nodes {
        assert!(node.log().lines().count() > 0, "{} ran under Patroni first", node.name);
        assert!(node.agent_log().contains("config loaded"), "{} runs pgwarden now", node.name);
    }
}

/// The same migration for a cluster whose replicas Patroni made with a
/// backup tool: `create_replica_methods: [pgbackrest, basebackup]` with a
/// real pgBackRest repository the primary archives to, and
/// `recovery_conf.restore_command`. pgwarden reads the same config, keeps
/// every acknowledged write through the move, and its own re-clone of a
/// replica (`reinit`) goes through pgBackRest too.
#[tokio::test]
async fn a_patroni_cluster_with_pgbackrest_replicas_moves_to_pgwarden_without_losing_a_write() {
    use pgwarden_integration_tests::backrest::Backrest;
    init_logging();
    let backrest = Backrest::new();
    let mut cluster = PatroniCluster::empty("bench").await.expect("etcd");
    let hosts = cluster.etcd.host_ports().join(",");
    for i in 1..=3 {
        let node = cluster.add_node(&format!("node{i}"), &hosts, PATRONI_MIN).expect("node");
        let data = node.data_dir();
        let mut patch = backrest.archiving(&data);
        patch["postgresql"]["create_replica_methods"] = serde_json::json!(["pgbackrest", "basebackup"]);
        patch["postgresql"]["pgbackrest"] = serde_json::json!({
            "command": backrest.command(&data, "--delta restore"),
            "keep_data": true,
            "no_params": true,
        });
        patch["postgresql"]["recovery_conf"] = serde_json::json!({"restore_command": backrest.restore_command(&data)});
        node.merge_config(patch).expect("patroni.yml");
    }
    cluster.nodes[0].start().expect("start node1");
    pgwarden_integration_tests::wait_until("node1 to lead", UP, || async {
        Ok::<_, String>((cluster.nodes[0].check("/primary") == 200).then_some(()))
    })
    .await
    .expect("node1 leads");
    let n1 = &cluster.nodes[0];
    backrest.run(&n1.data_dir(), n1.dir.path(), n1.pg_port, &["stanza-create"]);
    backrest.run(&n1.data_dir(), n1.dir.path(), n1.pg_port, &["--type=full", "backup"]);
    cluster.start_all().expect("start node2 and node3");
    let leader = cluster.wait_healthy(UP).await.expect("a Patroni cluster");
    for node in &cluster.nodes[1..] {
        assert!(
            node.log().contains("replica has been created using pgbackrest"),
            "{}: Patroni cloned it with pgBackRest",
            node.name
        );
    }

    let (_haproxy, writer) = haproxy_and_writer(&cluster, leader, "backrest").await;
    let pgwarden_yml = move_to_pgwarden(&mut cluster, leader, &writer, PgwardenConfig::Derived).await;

    // pgwarden re-clones a replica with the same method.
    let replica = (0..3).find(|&i| cluster.nodes[i].check("/replica") == 200).expect("a replica");
    let name = cluster.nodes[replica].name.clone();
    pgwardenctl(&pgwarden_yml, &["reinit", &name, "--force", "--wait"]);
    let log = cluster.nodes[replica].agent_log();
    assert!(log.contains("replica created") && log.contains("method=pgbackrest"), "{name}:\n{log}");

    let report = writer.stop().await;
    assert_every_acknowledged_row_everywhere(&cluster, "backrest", &report.ids()).await;
    let listed = pgwardenctl(&pgwarden_yml, &["list"]);
    assert_eq!(listed.matches("streaming").count(), 2, "two replicas streaming: {listed}");
}
