//! A standby cluster (Patroni's `standby_cluster`): a second three-node
//! pgwarden cluster follows the first through HAProxy's write port. Its
//! leader is a standby leader (`/standby-leader` 200, never writable); it
//! follows the first cluster through a failover there, hands over to another
//! member of its own by switchover and when it is lost (still never
//! writable), and takes writes
//! only after `pgwardenctl promote-cluster`. Write probes on every member of
//! the standby cluster see none of them writable before that. Then
//! `demote-cluster` turns the first cluster into a standby of the second.

use std::time::Duration;

use pgwarden_integration_tests::cluster::{SUPERUSER_PASSWORD, psql_port};
use pgwarden_integration_tests::haproxy::deploy_config;
use pgwarden_integration_tests::probe::WriteProbe;
use pgwarden_integration_tests::service::run;
use pgwarden_integration_tests::{HaProxy, PgwardenCluster, free_port, init_logging, wait_until};
use serde_json::json;

const UP: Duration = Duration::from_secs(90);

/// Waits until `sql` gives `want` on each node of `nodes`.
async fn everywhere(cluster: &PgwardenCluster, nodes: &[usize], sql: &str, want: &str) {
    wait_until(&format!("{sql} = {want} on nodes {nodes:?}"), UP, || async {
        let got: Vec<String> = nodes.iter().map(|&i| cluster.nodes[i].psql(sql).unwrap_or_default()).collect();
        if got.iter().all(|g| g.trim() == want) { Ok(Some(())) } else { Err(format!("{got:?}")) }
    })
    .await
    .expect("everywhere");
}

/// Waits until exactly one of `nodes` answers 200 on `path`; returns it.
async fn the_one(cluster: &PgwardenCluster, nodes: &[usize], path: &str) -> usize {
    wait_until(&format!("one of {nodes:?} to answer {path}"), UP, || async {
        let ok: Vec<usize> = nodes.iter().copied().filter(|&i| cluster.nodes[i].check(path) == 200).collect();
        match ok.as_slice() {
            [one] => Ok(Some(*one)),
            _ => Err(format!("{path} 200 on {ok:?}")),
        }
    })
    .await
    .expect(path)
}

#[tokio::test]
async fn a_standby_cluster_follows_through_a_failover_on_each_side_and_takes_writes_only_when_promoted() {
    init_logging();
    // The primary cluster (scope itest), reached through HAProxy.
    let mut cluster = PgwardenCluster::start(3).await.expect("the primary cluster");
    let main_leader = cluster.wait_healthy(UP).await.expect("healthy");
    let (write_port, read_port, stats_port) = (free_port(), free_port(), free_port());
    let haproxy_config = deploy_config(write_port, read_port, stats_port, &cluster.backends());
    let _haproxy = HaProxy::start(&haproxy_config, &[write_port, read_port, stats_port]).await.expect("haproxy");
    // HAProxy routes once its first health checks have found the primary.
    wait_until("a write through HAProxy", UP, || async { Ok::<_, String>(psql_port(write_port, "select 1").ok()) })
        .await
        .expect("HAProxy routes to the primary");
    psql_port(write_port, "create table t (id int primary key, side text); insert into t values (1, 'before')")
        .expect("row 1");

    // The standby cluster (scope dr) on the same etcd.
    cluster.scope = "dr".into();
    for i in 1..=3 {
        let node = cluster.add_node(&format!("dr{i}"), "").expect("dr node");
        node.merge_config(
            json!({"bootstrap": {"dcs": {"standby_cluster": {"host": "127.0.0.1", "port": write_port}}}}),
        )
        .expect("standby_cluster");
    }
    let dr: Vec<usize> = vec![3, 4, 5];
    let ports: Vec<u16> = dr.iter().map(|&i| cluster.nodes[i].pg_port).collect();
    cluster.start_all().expect("start the standby cluster");
    let standby_leader = the_one(&cluster, &dr, "/standby-leader").await;
    everywhere(&cluster, &dr, "select count(*) from t", "1").await;
    let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
    probe.wait_answered(UP).await.expect("the probes reach every standby member");
    for &i in &dr {
        assert_eq!(cluster.nodes[i].check("/primary"), 503, "{} is no primary", cluster.nodes[i].name);
    }
    let body = cluster.nodes[standby_leader].get("/patroni").expect("/patroni");
    assert!(body.contains("\"role\":\"standby_leader\""), "{body}");
    let others: Vec<usize> = dr.iter().copied().filter(|&i| i != standby_leader).collect();
    wait_until("the other members to stream from the standby leader", UP, || async {
        let streaming = others
            .iter()
            .filter(|&&i| {
                cluster.nodes[i].get("/patroni").is_some_and(|b| b.contains("\"replication_state\":\"streaming\""))
            })
            .count();
        if streaming == others.len() { Ok(Some(())) } else { Err(format!("{streaming} streaming")) }
    })
    .await
    .expect("replicas of the standby leader");

    // A failover in the primary cluster: the standby leader follows the new
    // primary through HAProxy, on its new timeline.
    psql_port(write_port, "insert into t values (2, 'before the failover')").expect("row 2");
    everywhere(&cluster, &[0, 1, 2], "select count(*) from t", "2").await;
    everywhere(&cluster, &dr, "select count(*) from t", "2").await;
    cluster.nodes[main_leader].kill_node();
    let main: Vec<usize> = (0..3).filter(|&i| i != main_leader).collect();
    the_one(&cluster, &main, "/primary").await;
    wait_until("a write through HAProxy to the new primary", UP, || async {
        Ok::<_, String>(psql_port(write_port, "insert into t values (3, 'after the failover')").ok())
    })
    .await
    .expect("row 3");
    everywhere(&cluster, &dr, "select count(*) from t", "3").await;

    // A switchover inside the standby cluster: the standby leader hands the
    // key to the candidate, which follows the remote; the old one follows it.
    let candidate = others[0];
    let dr_config = cluster.nodes[standby_leader].config_path().display().to_string();
    let candidate_name = cluster.nodes[candidate].name.clone();
    let args = ["-c", &dr_config, "switchover", "--candidate", &candidate_name, "--force"];
    let (ok, stdout, stderr) = run("pgwardenctl", &args, &[]).expect("ctl");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(the_one(&cluster, &dr, "/standby-leader").await, candidate, "the candidate is the standby leader");
    psql_port(write_port, "insert into t values (31, 'after the standby switchover')").expect("row 31");
    everywhere(&cluster, &dr, "select count(*) from t", "4").await;
    let standby_leader = candidate;
    let others: Vec<usize> = dr.iter().copied().filter(|&i| i != standby_leader).collect();

    // The standby leader lost: another member of the standby cluster takes
    // over as standby leader, never as a primary.
    cluster.nodes[standby_leader].kill_node();
    let survivors: Vec<usize> = others.clone();
    let next = the_one(&cluster, &survivors, "/standby-leader").await;
    psql_port(write_port, "insert into t values (4, 'after the standby failover')").expect("row 4");
    everywhere(&cluster, &survivors, "select count(*) from t", "5").await;
    everywhere(&cluster, &survivors, "select pg_is_in_recovery()", "t").await;
    let report = probe.stop().await;
    assert!(report.writers().is_empty(), "standby members accepted writes: {:?}", report.spans);

    // promote-cluster: the standby leader promotes, the cluster takes writes.
    let config = cluster.nodes[next].config_path().display().to_string();
    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &config, "promote-cluster", "--force"], &[]).expect("ctl");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(the_one(&cluster, &survivors, "/primary").await, next, "the standby leader is promoted");
    cluster.nodes[next].psql("insert into t values (5, 'the standby cluster, promoted')").expect("a write");
    let replica = survivors.iter().copied().find(|&i| i != next).expect("a second survivor");
    everywhere(&cluster, &[replica], "select count(*) from t", "6").await;
    // The primary cluster never saw the promoted cluster's write.
    assert_eq!(psql_port(write_port, "select count(*) from t").expect("count").trim(), "5");

    // A ctl config of the standby cluster whose controller address is a
    // member of the other cluster (two clusters on the same hosts): `list`
    // shows the standby cluster's members, not the other's.
    let crafted = cluster.nodes[next].dir.path().join("ctl-elsewhere.yml");
    let yaml = std::fs::read_to_string(cluster.nodes[next].config_path()).expect("config");
    let mut yaml: serde_json::Value = serde_saphyr::from_str(&yaml).expect("yaml");
    yaml["pgwarden"]["controller_grpc_listen"] = json!(format!("127.0.0.1:{}", cluster.nodes[main[0]].controller_port));
    std::fs::write(&crafted, yaml.to_string()).expect("write");
    let crafted = crafted.display().to_string();
    let (ok, listed, stderr) = run("pgwardenctl", &["-c", &crafted, "list"], &[]).expect("ctl");
    assert!(ok, "{listed}{stderr}");
    assert!(listed.contains(&cluster.nodes[next].name) && !listed.contains("| node"), "{listed}");

    // demote-cluster: the first cluster becomes a standby cluster of the
    // promoted one. Its primary stops cleanly, is rewound onto the new
    // timeline and follows; its replica follows it.
    let main_config = cluster.nodes[main[0]].config_path().display().to_string();
    let dr_port = cluster.nodes[next].pg_port.to_string();
    let args = ["-c", &main_config, "demote-cluster", "--host", "127.0.0.1", "--port", &dr_port, "--force"];
    let (ok, stdout, stderr) = run("pgwardenctl", &args, &[]).expect("ctl");
    assert!(ok, "{stdout}{stderr}");
    the_one(&cluster, &main, "/standby-leader").await;
    everywhere(&cluster, &main, "select count(*) from t", "6").await;
    everywhere(&cluster, &main, "select pg_is_in_recovery()", "t").await;
}
