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
