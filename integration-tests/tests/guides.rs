//! The guides' users: each config written as the public Patroni + etcd +
//! HAProxy guides write them (`pgwarden_integration_tests::guides`) boots
//! three pgwarden nodes unchanged to one leader and two streaming replicas
//! behind HAProxy; Patroni (from PyPI) boots the same text as the reference.
//! Before the fix, none of them bootstrapped under pgwarden: it logged in
//! over the Unix socket, which the guides' `pg_hba` does not open, and ran
//! initdb again and again.

use std::time::Duration;

use pgwarden_integration_tests::cluster::{PgwardenCluster, psql_port};
use pgwarden_integration_tests::guides::{self, Guide, GuideNode};
use pgwarden_integration_tests::haproxy::{Backend, deploy_config_from};
use pgwarden_integration_tests::patroni::PatroniCluster;
use pgwarden_integration_tests::{HaProxy, free_port, init_logging, wait_until};

/// Patroni with the guides' loop_wait of 10 s takes about 40 s to stream.
const UP: Duration = Duration::from_secs(180);

/// Writes through HAProxy's write port and reads the row back through its
/// read port, as the guides' applications do.
async fn through_haproxy(backends: &[Backend], label: &str) {
    let (write, read, stats) = (free_port(), free_port(), free_port());
    let config = deploy_config_from("haproxy-classic.cfg", write, read, stats, backends);
    let _haproxy = HaProxy::start(&config, &[write, read, stats]).await.expect("HAProxy");
    wait_until(&format!("{label}: a write through HAProxy"), UP, || async {
        match psql_port(write, "create table if not exists guide (id int); insert into guide values (1)") {
            Ok(_) => Ok(Some(())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("writes reach the primary through HAProxy");
    wait_until(&format!("{label}: the row read through HAProxy's replica port"), UP, || async {
        match psql_port(read, "select count(*) from guide") {
            Ok(count) if count == "1" => Ok(Some(())),
            Ok(count) => Err(format!("{count} rows")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("reads reach a replica through HAProxy");
}

/// The guide's text for one node (the same for pgwarden and Patroni).
fn guide_config(guide: Guide, name: &str, rest_port: u16, pg_port: u16, dir: &std::path::Path, etcd: &str) -> String {
    guides::config(guide, &GuideNode { name, rest_port, pg_port, dir, etcd })
}

async fn boots_under_pgwarden(guide: Guide) {
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    let etcd = cluster.etcd.host_ports()[0].clone();
    for i in 1..=3 {
        let name = format!("node{i}");
        cluster
            .add_node_from(&name, |node| {
                guide_config(guide, &name, node.rest_port, node.pg_port, node.dir.path(), &etcd)
            })
            .expect("node config");
    }
    cluster.start_all().expect("start pgwarden");
    let leader = match cluster.wait_healthy(UP).await {
        Ok(leader) => leader,
        Err(e) => {
            let logs: Vec<String> =
                cluster.nodes.iter().map(|n| format!("--- {} agent:\n{}", n.name, n.agent_log())).collect();
            panic!("{guide:?} under pgwarden: {e}\n{}", logs.join("\n"));
        }
    };
    // One initdb in the whole cluster: no bootstrap loop.
    let initdbs: usize = cluster.nodes.iter().map(|n| n.agent_log().matches("running initdb").count()).sum();
    assert_eq!(initdbs, 1, "{guide:?}: initdb runs");
    let leader_node = &cluster.nodes[leader];
    let hba = std::fs::read_to_string(leader_node.data_dir().join("pg_hba.conf")).expect("pg_hba.conf");
    match guide {
        Guide::Classic | Guide::ShortTtl => {
            // Patroni's rule: initdb's file, the guide's lines appended.
            assert!(hba.contains("Appended by pgwarden-agent from bootstrap.pg_hba"), "{hba}");
            assert!(hba.contains("host all all 0.0.0.0/0 md5"), "{hba}");
            let admin = leader_node.psql("select count(*) from pg_roles where rolname = 'admin'").expect("psql");
            assert_eq!(admin, "1", "{guide:?}: bootstrap.users made the admin role");
        }
        Guide::PatroniSample | Guide::Etcd3Socket => {
            assert!(hba.contains("Written by pgwarden-agent"), "{hba}");
        }
    }
    if guide == Guide::Classic {
        // wal_keep_segments: 8 became wal_keep_size (8 x 16 MB).
        assert_eq!(leader_node.psql("show wal_keep_size").expect("psql"), "128MB");
    }
    through_haproxy(&cluster.backends(), &format!("{guide:?} under pgwarden")).await;
}

async fn boots_under_patroni(guide: Guide) {
    let mut cluster = PatroniCluster::empty(guide.scope()).await.expect("etcd");
    let etcd = cluster.etcd.host_ports()[0].clone();
    for i in 1..=3 {
        let name = format!("node{i}");
        cluster
            .add_node_from(&name, |node| {
                guide_config(guide, &name, node.rest_port, node.pg_port, node.dir.path(), &etcd)
            })
            .expect("node config");
    }
    cluster.start_all().expect("start Patroni");
    if let Err(e) = cluster.wait_healthy(UP).await {
        let logs: Vec<String> = cluster.nodes.iter().map(|n| format!("--- {}:\n{}", n.name, n.log())).collect();
        panic!("{guide:?} under Patroni (the reference): {e}\n{}", logs.join("\n"));
    }
    through_haproxy(&cluster.backends(), &format!("{guide:?} under Patroni")).await;
}

#[tokio::test]
async fn the_classic_guide_config_boots_unchanged() {
    init_logging();
    boots_under_pgwarden(Guide::Classic).await;
    boots_under_patroni(Guide::Classic).await;
}

#[tokio::test]
async fn a_guide_config_with_a_short_ttl_boots_unchanged() {
    init_logging();
    boots_under_pgwarden(Guide::ShortTtl).await;
    boots_under_patroni(Guide::ShortTtl).await;
}

#[tokio::test]
async fn patronis_sample_config_boots_unchanged() {
    init_logging();
    boots_under_pgwarden(Guide::PatroniSample).await;
    boots_under_patroni(Guide::PatroniSample).await;
}

#[tokio::test]
async fn an_etcd3_config_with_a_socket_and_its_own_pg_hba_boots_unchanged() {
    init_logging();
    boots_under_pgwarden(Guide::Etcd3Socket).await;
    boots_under_patroni(Guide::Etcd3Socket).await;
}

#[test]
fn every_guide_style_is_tested() {
    assert_eq!(Guide::ALL.len(), 4, "add a test above for each new guide style");
}
