//! Quorum commit (`synchronous_mode: quorum`) on a real cluster: every
//! healthy standby a voter, `synchronous_standby_names = 'ANY k (...)'` and
//! the `sync` key's `quorum` following `synchronous_node_count`, the REST
//! checks and roles Patroni's users know, and under concurrent writers a
//! voter that lacks commits another voter acknowledged never takes over
//! alone (no acknowledged commit lost, never two writable nodes).

use std::time::{Duration, Instant};

use pgwarden_integration_tests::{Fault, LoadedCluster, PgwardenCluster, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

/// The `sync` key as `(leader, standbys, quorum)`.
async fn sync_key(cluster: &PgwardenCluster) -> Option<(String, String, u64)> {
    let value = cluster.get_key("sync").await.ok().flatten()?;
    let json: serde_json::Value = serde_json::from_str(&value).expect("sync JSON");
    Some((
        json["leader"].as_str().unwrap_or_default().to_string(),
        json["sync_standby"].as_str().unwrap_or_default().to_string(),
        json["quorum"].as_u64()?,
    ))
}

/// Waits until the `sync` key and the leader's `synchronous_standby_names`
/// are these.
async fn wait_for(cluster: &PgwardenCluster, leader: usize, standbys: &str, quorum: u64, names: &str) {
    let want = (cluster.nodes[leader].name.clone(), standbys.to_string(), quorum);
    wait_until(&format!("sync key {want:?} and synchronous_standby_names {names}"), UP, || async {
        let key = sync_key(cluster).await;
        let live = cluster.nodes[leader].psql("show synchronous_standby_names").map_err(|e| e.to_string())?;
        Ok::<_, String>((key.as_ref() == Some(&want) && live == names).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: sync key {:?}", futures_block(sync_key(cluster))));
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

async fn quorum_cluster() -> (PgwardenCluster, usize) {
    init_logging();
    let cluster = PgwardenCluster::start(3).await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    let leader = cluster.wait_primary(UP).await.expect("a primary");
    assert_eq!(leader, 0, "node1 bootstraps (it starts first)");
    cluster.patch_config(serde_json::json!({"synchronous_mode": "quorum"})).await.expect("quorum commit on");
    wait_for(&cluster, 0, "node2,node3", 1, "ANY 1 (\"node2\",\"node3\")").await;
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_commit_lists_every_standby_and_follows_synchronous_node_count() {
    let (cluster, _) = quorum_cluster().await;
    // Patroni's checks and roles: a quorum standby is neither sync nor async.
    for replica in [1, 2] {
        let node = &cluster.nodes[replica];
        wait_until("/quorum on a voter", UP, || async {
            Ok::<_, String>((node.check("/quorum") == 200).then_some(()))
        })
        .await
        .expect("/quorum 200");
        assert_eq!(node.check("/sync"), 503);
        assert_eq!(node.check("/async"), 503);
        assert_eq!(node.check("/read-only-quorum"), 200);
        let patroni: serde_json::Value = serde_json::from_str(&node.get("/patroni").expect("/patroni")).expect("JSON");
        assert_eq!(patroni["quorum_standby"], true, "{patroni}");
    }
    assert_eq!(cluster.nodes[0].check("/read-only-quorum"), 200, "the primary");
    assert_eq!(cluster.nodes[0].check("/quorum"), 503, "the primary");
    let listing: serde_json::Value =
        serde_json::from_str(&cluster.nodes[0].get("/cluster").expect("/cluster")).expect("JSON");
    let roles: Vec<&str> =
        listing["members"].as_array().expect("members").iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["leader", "quorum_standby", "quorum_standby"], "{listing}");
    // Two of two: every commit waits for both, any voter may take over.
    cluster.patch_config(serde_json::json!({"synchronous_node_count": 2})).await.expect("patch");
    wait_for(&cluster, 0, "node2,node3", 0, "ANY 2 (\"node2\",\"node3\")").await;
    cluster.patch_config(serde_json::json!({"synchronous_node_count": 1})).await.expect("patch");
    wait_for(&cluster, 0, "node2,node3", 1, "ANY 1 (\"node2\",\"node3\")").await;
    // A nosync standby leaves: out of the setting, then out of the voters.
    cluster.nodes[2].merge_config(serde_json::json!({"tags": {"nosync": true}})).expect("tag node3");
    cluster.nodes[2].signal_agent(nix::sys::signal::Signal::SIGHUP);
    wait_for(&cluster, 0, "node2", 0, "ANY 1 (\"node2\")").await;
    wait_until("/quorum 503 on the nosync standby", UP, || async {
        Ok::<_, String>((cluster.nodes[2].check("/quorum") == 503).then_some(()))
    })
    .await
    .expect("node3 no longer a quorum standby");
    // Back to synchronous mode on: one synchronous standby, quorum 0.
    cluster.patch_config(serde_json::json!({"synchronous_mode": true})).await.expect("patch");
    wait_for(&cluster, 0, "node2", 0, "\"node2\"").await;
    assert_eq!(cluster.nodes[1].check("/sync"), 200);
}

/// node1 leads with node2 and node3 voting (`ANY 1`, quorum 1) under three
/// writers. node1's WAL sender to node3 is frozen, so every commit from then
/// on is acknowledged by node2 alone; then node1 and node2 are lost
/// together. node3 is listed, but it alone is not a quorum, and it lacks
/// those commits: it must not take over. Once node2 is back, node2 (ahead,
/// with node3's vote) takes over with every acknowledged row.
#[tokio::test(flavor = "multi_thread")]
async fn quorum_commit_a_voter_alone_does_not_take_over_without_the_commits_another_acknowledged() {
    let (cluster, _) = quorum_cluster().await;
    let mut loaded = LoadedCluster::load_writing_every(cluster, 3, Duration::from_millis(2)).await.expect("the load");
    assert_eq!(loaded.leader, 0);
    let cluster = &mut loaded.cluster;
    let sender: i32 = cluster.nodes[0]
        .psql("select pid from pg_stat_replication where application_name = 'node3'")
        .expect("node3's WAL sender")
        .parse()
        .expect("a pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sender), nix::sys::signal::Signal::SIGSTOP)
        .expect("freeze node1's WAL sender to node3");
    let frozen_at = Instant::now();
    loaded.wait_writes_after(frozen_at + Duration::from_millis(500)).await.expect("acknowledged by node2 alone");
    let cluster = &mut loaded.cluster;
    Fault::NodeLost.inject(cluster, 0).await.expect("lose node1");
    Fault::NodeLost.inject(cluster, 1).await.expect("lose node2");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sender), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the frozen WAL sender");
    let lost_at = Instant::now();
    // node3's agent sees no quorum: it says so, tick after tick, past the
    // leader key's expiry (ttl 10 s in the harness).
    wait_until("node3 to wait for a quorum past the key's expiry", UP, || async {
        assert_ne!(cluster.nodes[2].check("/primary"), 200, "node3 took over alone, without node2's commits");
        let log = cluster.nodes[2].agent_log();
        let waits = log.matches("quorum commit needs 2 of node1, node2, node3").count();
        Ok::<_, String>((waits >= 5 && lost_at.elapsed() > Duration::from_secs(15)).then_some(()))
    })
    .await
    .expect("node3 waits for a quorum");
    Fault::NodeLost.recover(cluster, 1).await.expect("node2's services");
    wait_until("node2 to take over", UP, || async {
        Ok::<_, String>((cluster.nodes[1].check("/primary") == 200).then_some(()))
    })
    .await
    .expect("node2 leads");
    // Every acknowledged commit on node2, never two writable nodes, and
    // node3 never wrote: node1, then node2.
    loaded.finish("quorum: node1 and node2 lost, node3 behind", &[0, 1]).await;
}
