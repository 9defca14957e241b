//! docs/migrating-from-patroni.md carried out for real: a three-node cluster
//! run by Patroni from PyPI (`scripts/install-patroni.sh`) is moved to
//! pgwarden node by node, each node's pgwarden reading the same patroni.yml,
//! while a client writes through HAProxy (the classic checks the document
//! asks for during the migration). No acknowledged write may be lost, and
//! every node ends streaming from one pgwarden primary.

use std::time::Duration;

use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use pgwarden_integration_tests::haproxy::deploy_config_from;
use pgwarden_integration_tests::migration::{PgwardenConfig, UP, move_to_pgwarden, pgwardenctl, write_servers_up};
use pgwarden_integration_tests::patroni::{PATRONI_MIN, PatroniCluster};
use pgwarden_integration_tests::writer::{Writer, missing_rows};
use pgwarden_integration_tests::{HaProxy, free_port, init_logging, wait_until};

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
