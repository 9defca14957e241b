//! Synchronous replication on a real cluster: turned on and off at run time,
//! no acknowledged commit lost and never two writable nodes under faults
//! (single and compound) injected at random moments into three concurrent
//! writers (the seed is printed; set PGWARDEN_TEST_SEED to replay one), a
//! lost sync standby replaced (non-strict) or writes blocked until one
//! returns (strict).

use std::time::{Duration, Instant};

use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use pgwarden_integration_tests::loaded as harness;
use pgwarden_integration_tests::writer::{Writer, missing_rows};
use pgwarden_integration_tests::{ClusterSpec, LoadedCluster, PgwardenCluster, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

/// The standbys the `sync` key lists.
async fn sync_standbys(cluster: &PgwardenCluster) -> Vec<String> {
    let Some(value) = cluster.get_key("sync").await.ok().flatten() else { return Vec::new() };
    let json: serde_json::Value = serde_json::from_str(&value).expect("sync JSON");
    json["sync_standby"].as_str().map(|s| s.split(',').map(String::from).collect()).unwrap_or_default()
}

/// Waits until the `sync` key lists exactly one standby other than `not`; returns its index.
async fn one_sync_standby(cluster: &PgwardenCluster, not: Option<usize>) -> usize {
    wait_until("a synchronous standby", UP, || async {
        let listed = sync_standbys(cluster).await;
        match listed.as_slice() {
            [one] => {
                let idx = cluster.nodes.iter().position(|n| &n.name == one);
                Ok(idx.filter(|i| Some(*i) != not))
            }
            _ => Err(format!("sync key lists {listed:?}")),
        }
    })
    .await
    .expect("sync standby")
}

/// `spec` started and healthy, then synchronous mode turned on at run time
/// (strict if asked).
async fn synchronous(spec: ClusterSpec<'_>, strict: bool) -> PgwardenCluster {
    init_logging();
    let cluster = spec.start().await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    cluster
        .patch_config(serde_json::json!({"synchronous_mode": true, "synchronous_mode_strict": strict}))
        .await
        .expect("write config");
    cluster
}

/// A small deterministic generator for the fault's moment.
fn seed() -> u64 {
    std::env::var("PGWARDEN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}

fn delay_from(seed: u64) -> Duration {
    let mut x = seed | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_millis(x % 2000)
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// One of the harness's faults, injected into the primary.
    Single(harness::Fault),
    /// The sync standby's PostgreSQL killed, then the primary's node lost
    /// within a second (the safety review's compound fault).
    SyncStandbyKilledThenPrimaryLost,
    /// The primary's agent killed and started again under its running
    /// PostgreSQL (synchronous_standby_names must survive the restart).
    AgentRestarted,
}

const WRITERS: usize = 3;

/// Exactly one node answers `/primary` (and it is not `leader`, unless `or_leader`).
async fn one_primary(cluster: &PgwardenCluster, leader: usize, or_leader: bool) -> Result<Option<usize>, String> {
    let primaries: Vec<usize> = (0..3).filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
    match primaries.as_slice() {
        [one] if *one != leader || or_leader => Ok(Some(*one)),
        _ => Err(format!("{primaries:?}")),
    }
}

/// Three clients commit numbered rows through HAProxy (`synchronous_commit
/// = on`), each to its own table, while the fault hits the primary at a
/// random moment, and every node is probed for writability many times a
/// second. Not one acknowledged row may be missing from the final primary,
/// which (after a failover) must have been a listed sync standby, and no two
/// nodes may ever accept writes at the same time.
async fn no_acknowledged_commit_lost(fault: Fault) {
    let seed = seed();
    let delay = delay_from(seed);
    println!("{fault:?}: seed {seed} (PGWARDEN_TEST_SEED={seed} replays it), fault {delay:?} into the writes");
    let spec = ClusterSpec::nodes(3);
    let spec = if let Fault::Single(harness::Fault::EtcdCut) = fault { spec.behind_proxies() } else { spec };
    let cluster = synchronous(spec, false).await;
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let sync = one_sync_standby(&cluster, Some(leader)).await;
    let mut loaded =
        LoadedCluster::load_writing_every(cluster, WRITERS, Duration::from_millis(2)).await.expect("the load");
    assert_eq!(loaded.leader, leader);
    // Not a sleep standing in for a condition: the fault's moment is the variable under test.
    tokio::time::sleep(delay).await;
    let cluster = &mut loaded.cluster;
    match fault {
        Fault::Single(single) => single.inject(cluster, leader).await.expect("inject"),
        Fault::SyncStandbyKilledThenPrimaryLost => {
            harness::Fault::PostgresKilled.inject(cluster, sync).await.expect("kill the sync standby's PostgreSQL");
            // Within a second, as the review's run: the fault's moment again.
            tokio::time::sleep(delay_from(seed.rotate_left(17)) / 2).await;
            harness::Fault::NodeLost.inject(cluster, leader).await.expect("lose the primary's node");
        }
        Fault::AgentRestarted => {
            harness::Fault::AgentKilled.inject(cluster, leader).await.expect("kill the agent");
            harness::Fault::AgentKilled.recover(cluster, leader).await.expect("agent again");
        }
    }
    let injected = Instant::now();
    let stays = matches!(fault, Fault::Single(harness::Fault::PostgresKilled) | Fault::AgentRestarted);
    let mut new_leader =
        wait_until("a primary after the fault", Duration::from_secs(60), || one_primary(cluster, leader, stays)).await;
    if let (Err(e), Fault::SyncStandbyKilledThenPrimaryLost) = (&new_leader, fault) {
        // The leader took the standby out of `sync` before it was lost:
        // nobody else may take over (the other replica may lack commits
        // acknowledged without it), and the cluster waits for the old
        // primary, as documented (docs/operations.md, section 10).
        let listed = sync_standbys(cluster).await;
        let other = (0..3).find(|&i| i != leader && i != sync).expect("a third node");
        assert!(!listed.contains(&cluster.nodes[other].name), "{e}: the other replica is in sync: {listed:?}");
        println!("{fault:?}: no primary while the old one is down ({e}); sync lists {listed:?}: bringing it back");
        harness::Fault::NodeLost.recover(cluster, leader).await.expect("the old primary's services");
        new_leader = wait_until("the old primary back", UP, || one_primary(cluster, leader, true)).await;
    }
    let new_leader = new_leader.expect("a primary again");
    if new_leader != leader {
        // DESIGN invariant 4: only a member listed in `sync` when it took
        // the key. The leader may have put the other replica in `sync`
        // between the two faults of the compound one (after it caught up).
        let at_takeover = cluster.key_before_the_leader_took_over("sync").await.expect("read sync's history");
        let listed: Vec<String> = at_takeover
            .and_then(|value| serde_json::from_str::<serde_json::Value>(&value).ok())
            .and_then(|json| json["sync_standby"].as_str().map(|s| s.split(',').map(String::from).collect()))
            .unwrap_or_default();
        let name = &cluster.nodes[new_leader].name;
        assert!(
            listed.contains(name),
            "{fault:?}: only a synchronous standby may take over; {name} took the key while sync listed {listed:?}"
        );
        if new_leader != sync {
            println!("{fault:?}: {name} took over, in sync since the first standby left it");
        }
    }
    println!("{fault:?} (seed {seed}): new primary {} after {:?}", cluster.nodes[new_leader].name, injected.elapsed());
    // No acknowledged commit missing, never two writable nodes, and only the
    // old and the new primary accepted writes, in that order.
    let report = loaded.finish(&format!("{fault:?} (seed {seed})"), &[leader, new_leader]).await;
    let window = report.writers.iter().map(|w| w.max_gap_after(injected)).max().unwrap_or_default();
    println!("{fault:?}: write window {window:?}");
    if let Fault::Single(single @ (harness::Fault::AgentFrozen | harness::Fault::EtcdCut)) = fault {
        single.recover(&mut loaded.cluster, leader).await.expect("recover");
    }
}

#[tokio::test]
async fn sync_mode_postgres_killed_loses_no_acknowledged_commit() {
    no_acknowledged_commit_lost(Fault::Single(harness::Fault::PostgresKilled)).await;
}

#[tokio::test]
async fn sync_mode_node_lost_loses_no_acknowledged_commit() {
    no_acknowledged_commit_lost(Fault::Single(harness::Fault::NodeLost)).await;
}

#[tokio::test]
async fn sync_mode_agent_frozen_loses_no_acknowledged_commit() {
    no_acknowledged_commit_lost(Fault::Single(harness::Fault::AgentFrozen)).await;
}

#[tokio::test]
async fn sync_mode_etcd_cut_from_the_primary_loses_no_acknowledged_commit() {
    no_acknowledged_commit_lost(Fault::Single(harness::Fault::EtcdCut)).await;
}

#[tokio::test]
async fn sync_mode_sync_standby_killed_then_primary_lost_loses_no_acknowledged_commit() {
    no_acknowledged_commit_lost(Fault::SyncStandbyKilledThenPrimaryLost).await;
}

#[tokio::test]
async fn sync_mode_agent_restarted_under_the_primary_loses_no_acknowledged_commit() {
    no_acknowledged_commit_lost(Fault::AgentRestarted).await;
}

#[tokio::test]
async fn sync_mode_turns_on_and_off_at_run_time_and_shows_everywhere() {
    let cluster = &synchronous(ClusterSpec::nodes(3), false).await;
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let sync = one_sync_standby(cluster, Some(leader)).await;
    let other = (0..3).find(|&i| i != leader && i != sync).expect("the third node");
    let names = cluster.nodes[leader].psql("show synchronous_standby_names").expect("psql");
    assert_eq!(names, format!("\"{}\"", cluster.nodes[sync].name));
    wait_until("/sync and /async to agree with the key", UP, || async {
        let checks = (
            cluster.nodes[sync].check("/sync"),
            cluster.nodes[other].check("/async"),
            cluster.nodes[other].check("/sync"),
            cluster.nodes[leader].check("/read-only-sync"),
        );
        Ok::<_, String>((checks == (200, 200, 503, 200)).then_some(()))
    })
    .await
    .expect("health checks");
    let body = cluster.nodes[leader].get("/cluster").expect("/cluster");
    assert!(body.contains("\"sync_standby\""), "{body}");
    // Patroni's /patroni marks the synchronous replica, and only it.
    let marked = |i: usize| cluster.nodes[i].get("/patroni").is_some_and(|b| b.contains("\"sync_standby\":true"));
    assert!(marked(sync) && !marked(other) && !marked(leader));
    let config = cluster.nodes[0].config_path().display().to_string();
    let (ok, stdout, _) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "list"], &[]).expect("list");
    assert!(ok && stdout.contains("Sync Standby"), "{stdout}");
    // A switchover to the asynchronous standby is refused, with the reason.
    let (status, text) = pgwarden_integration_tests::service::http_with(
        "POST",
        cluster.nodes[leader].rest_port,
        "/switchover",
        &[("Authorization", &rest_auth())],
        &format!(r#"{{"leader":"{}","candidate":"{}"}}"#, cluster.nodes[leader].name, cluster.nodes[other].name),
        Duration::from_secs(30),
    )
    .expect("REST");
    assert_eq!(status, 412, "{text}");
    assert!(text.contains("not a synchronous standby"), "{text}");

    // Off at run time: the key goes and commits no longer wait.
    cluster.patch_config(serde_json::json!({"synchronous_mode": false})).await.expect("write config");
    wait_until("the sync key to go", UP, || async {
        let names = cluster.nodes[leader].psql("show synchronous_standby_names").map_err(|e| e.to_string())?;
        let key = cluster.get_key("sync").await.map_err(|e| e.to_string())?;
        Ok::<_, String>((key.is_none() && names.is_empty()).then_some(()))
    })
    .await
    .expect("synchronous mode off");
}

fn rest_auth() -> String {
    use base64::Engine as _;
    let credentials = format!(
        "{}:{}",
        pgwarden_integration_tests::cluster::REST_USER,
        pgwarden_integration_tests::cluster::REST_PASSWORD
    );
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

#[tokio::test]
async fn a_lost_sync_standby_is_replaced_when_not_strict() {
    let cluster = synchronous(ClusterSpec::nodes(3), false).await;
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let sync = one_sync_standby(&cluster, Some(leader)).await;
    let mut loaded = LoadedCluster::load(cluster, WRITERS).await.expect("the load");
    harness::Fault::NodeLost.inject(&mut loaded.cluster, sync).await.expect("lose the sync standby");
    let killed = Instant::now();
    let replacement = one_sync_standby(&loaded.cluster, Some(sync)).await;
    assert_ne!(replacement, leader);
    loaded.wait_writes_after(Instant::now()).await.expect("writes go on with the new sync standby");
    let report = loaded.finish("sync standby lost", &[leader]).await;
    let gap = report.writers.iter().map(|w| w.max_gap_after(killed)).max().unwrap_or_default();
    println!("sync standby lost: replaced after {:?}; longest write gap {gap:?}", killed.elapsed());
}

#[tokio::test]
async fn strict_mode_blocks_writes_without_a_standby_and_resumes_when_one_returns() {
    let cluster = synchronous(ClusterSpec::nodes(2), true).await;
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let standby = one_sync_standby(&cluster, Some(leader)).await;
    let mut loaded = LoadedCluster::load(cluster, WRITERS).await.expect("the load");
    harness::Fault::NodeLost.inject(&mut loaded.cluster, standby).await.expect("lose the standby");
    let killed = Instant::now();
    // The leader drops the dead standby and lists the placeholder: commits wait.
    let leader_node = &loaded.cluster.nodes[leader];
    wait_until("the placeholder to be listed", UP, || async {
        let names = leader_node.psql("show synchronous_standby_names").map_err(|e| e.to_string())?;
        Ok::<_, String>(names.contains("placeholder").then_some(()))
    })
    .await
    .expect("strict placeholder");
    let blocked_from = Instant::now();
    // Observe a window of blocked writes: an acknowledgement to any writer
    // inside it fails the test.
    let window = Duration::from_secs(4);
    let early = loaded.load.wait_any_write_after(blocked_from, window).await;
    assert!(early.is_err(), "a commit was acknowledged with no synchronous standby in strict mode");
    // The standby returns: writes resume, and none acknowledged is missing.
    harness::Fault::NodeLost.recover(&mut loaded.cluster, standby).await.expect("the standby's services");
    loaded.wait_writes_after(Instant::now()).await.expect("writes resume with the standby back");
    loaded.finish("strict, standby lost and back", &[leader]).await;
    println!("strict: writes blocked from {:?} after the kill until the standby returned", blocked_from - killed);
}

/// Patroni parity (issue 23): tags written as strings are read as Patroni
/// reads them by every member, not only by the node that has them, and a
/// boolean tag that is false is left out of what a member publishes. With
/// node1 leading, node2 tagged `nosync: 'true'` and node3 `sync_priority:
/// '0'` may never be the synchronous standby: the `sync` key stays empty.
/// node3's `nofailover: false` is not published, so `/replica?tag_nofailover=false`
/// fails on it as on Patroni, while `nosync: 'true'` is published as written.
#[tokio::test]
async fn tags_written_as_strings_are_honoured_by_every_member_and_false_ones_are_not_published() {
    init_logging();
    // `start_with` numbers the nodes from 1, as their names.
    let cluster = PgwardenCluster::start_with(3, |i| match i {
        2 => "tags:\n  nosync: 'true'\n".to_string(),
        3 => "tags:\n  sync_priority: '0'\n  nofailover: false\n".to_string(),
        _ => String::new(),
    })
    .await
    .expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    if leader != 0 {
        let request = format!(r#"{{"leader":"{}","member":"{}"}}"#, cluster.nodes[leader].name, cluster.nodes[0].name);
        cluster.put_key("failover", &request).await.expect("request a switchover");
        wait_until("node1 to lead", UP, || async {
            Ok::<_, String>((cluster.nodes[0].check("/primary") == 200).then_some(()))
        })
        .await
        .expect("node1 leads");
    }
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy"), 0);
    cluster.patch_config(serde_json::json!({"synchronous_mode": true})).await.expect("write config");
    // The leader takes synchronous mode up: the sync key names it.
    wait_until("the sync key", UP, || async {
        let value = cluster.get_key("sync").await.map_err(|e| e.to_string())?.unwrap_or_default();
        Ok::<_, String>(value.contains("\"leader\":\"node1\"").then_some(()))
    })
    .await
    .expect("the leader writes the sync key");
    // Several loops later no standby has been chosen.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let listed = sync_standbys(&cluster).await;
        assert!(
            listed.iter().all(String::is_empty),
            "a standby tagged out of synchronous replication listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node3 = cluster.get_key("members/node3").await.expect("etcd").expect("node3's key");
    let tags: serde_json::Value = serde_json::from_str::<serde_json::Value>(&node3).expect("json")["tags"].clone();
    assert_eq!(tags, serde_json::json!({"sync_priority": "0"}), "false boolean tags are not published");
    assert_eq!(cluster.nodes[2].check("/replica?tag_nofailover=false"), 503);
    assert_eq!(cluster.nodes[1].check("/replica?tag_nosync=true"), 200);
}

/// A cluster whose `bootstrap.dcs` turns synchronous mode on from the start
/// (as the guides' configs do) forms: the bootstrap's own commits (the
/// roles) do not wait for a synchronous standby that cannot exist yet, and
/// once a replica streams it becomes the synchronous standby and commits
/// wait for it.
#[tokio::test]
async fn a_cluster_bootstrapped_in_synchronous_mode_forms_and_takes_a_sync_standby() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.synchronous = true;
    for i in 1..=2 {
        cluster.add_node(&format!("node{i}"), "").expect("add a node");
    }
    cluster.start_all().expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("the cluster forms in synchronous mode");
    let standby = one_sync_standby(&cluster, Some(leader)).await;
    let names = cluster.nodes[leader].psql("show synchronous_standby_names").expect("show");
    assert!(names.contains(&cluster.nodes[standby].name), "the leader waits for {names:?}");
    cluster.nodes[leader]
        .psql("create table after_bootstrap(id int); insert into after_bootstrap values (1)")
        .expect("a commit");
}

/// `maximum_lag_on_syncnode`: a synchronous standby whose WAL receiver hangs
/// (SIGSTOP: still connected, still `streaming` to the primary, flushing
/// nothing) holds every commit until its lag passes the limit; then it is
/// swapped out (the `sync` key first) for the other standby, and the
/// commits waiting for it go through. Without the limit they wait until the
/// walsender's timeout, a minute later. Two writers run throughout, and the
/// held transaction writes more WAL than the limit.
#[tokio::test]
async fn a_hung_sync_standby_past_maximum_lag_on_syncnode_is_swapped_out() {
    let cluster = synchronous(ClusterSpec::nodes(3), false).await;
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let hung = one_sync_standby(&cluster, Some(leader)).await;
    cluster.patch_config(serde_json::json!({"maximum_lag_on_syncnode": 1_048_576})).await.expect("set the limit");
    let mut loaded = LoadedCluster::load(cluster, 2).await.expect("the load");
    let cluster = &loaded.cluster;
    let receiver: i32 = cluster.nodes[hung]
        .psql("select pid from pg_stat_wal_receiver")
        .expect("the sync standby's WAL receiver")
        .parse()
        .expect("a pid");
    let pid = nix::unistd::Pid::from_raw(receiver);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP the WAL receiver");
    let stopped = Instant::now();
    // About 8 MB of WAL in one transaction, held at its commit.
    let port = cluster.nodes[leader].pg_port;
    let big = tokio::task::spawn_blocking(move || {
        pgwarden_integration_tests::cluster::psql_port(
            port,
            "create table lagbig as select g, repeat('x', 100) as pad from generate_series(1, 60000) g",
        )
    });
    let replacement = one_sync_standby(cluster, Some(hung)).await;
    let swapped = stopped.elapsed();
    assert_ne!(replacement, leader);
    // Swapped for its lag, not dropped by the walsender's timeout: the
    // primary still counts it as streaming.
    let still = cluster.nodes[leader]
        .psql(&format!("select state from pg_stat_replication where application_name = '{}'", cluster.nodes[hung].name))
        .expect("pg_stat_replication");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(still, "streaming", "the hung standby was still connected when it was swapped out");
    big.await.expect("join").expect("the held transaction commits once the standby is swapped out");
    loaded.wait_writes_after(Instant::now()).await.expect("writes go on");
    loaded.finish("hung sync standby", &[leader]).await;
    println!("hung sync standby swapped out after {swapped:?}");
}

/// Patroni's sync_priority when the synchronous standby is already chosen
/// (issue 23): a standby with a higher priority that arrives later takes
/// its place. It joins `synchronous_standby_names` and the `sync` key
/// first, and only then does the other one leave, so the key never names a
/// standby without every acknowledged commit. Writers run throughout.
#[tokio::test]
async fn a_later_standby_with_a_higher_sync_priority_takes_the_synchronous_role() {
    init_logging();
    let mut cluster = PgwardenCluster::start(2).await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    cluster.patch_config(serde_json::json!({"synchronous_mode": true})).await.expect("synchronous mode on");
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let first = one_sync_standby(&cluster, Some(leader)).await;
    let writer = Writer::start(cluster.nodes[leader].pg_port, SUPERUSER_PASSWORD, "prio", Duration::from_millis(5))
        .await
        .expect("writer");
    cluster.add_node("node3", "tags:\n  sync_priority: 5\n").expect("add node3");
    cluster.start_all().expect("start node3");
    let chosen = wait_until("node3 to be the synchronous standby", UP, || async {
        let listed = sync_standbys(&cluster).await;
        if listed == ["node3"] { Ok(Some(listed)) } else { Err(format!("sync key lists {listed:?}")) }
    })
    .await
    .expect("the higher priority takes the role");
    assert_ne!(first, 2);
    let log = cluster.nodes[leader].agent_log();
    let both = log.lines().position(|l| {
        l.contains("published the sync key") && l.contains("node3") && l.contains(&cluster.nodes[first].name)
    });
    assert!(both.is_some(), "the key listed both before the first one left:\n{log}");
    writer.wait_ack_after(Instant::now(), UP).await.expect("writes go on");
    let report = writer.stop().await;
    let missing =
        missing_rows(cluster.nodes[2].pg_port, SUPERUSER_PASSWORD, "prio", &report.ids()).await.expect("read");
    println!(
        "sync standby swapped for a higher priority: {chosen:?}; {} rows, missing on node3: {}",
        report.ids().len(),
        missing.len()
    );
    wait_until("node3 to hold every acknowledged row", UP, || async {
        let missing = missing_rows(cluster.nodes[2].pg_port, SUPERUSER_PASSWORD, "prio", &report.ids())
            .await
            .map_err(|e| e.to_string())?;
        if missing.is_empty() { Ok(Some(())) } else { Err(format!("{} missing", missing.len())) }
    })
    .await
    .expect("node3 has every acknowledged row");
}

/// With `synchronous_commit: remote_apply` a standby's lag is its replay's,
/// as Patroni measures it: a synchronous standby whose replay is paused
/// (it still receives and flushes everything) holds every commit, and past
/// `maximum_lag_on_syncnode` it is swapped out for the other standby.
#[tokio::test]
async fn with_remote_apply_a_sync_standby_whose_replay_is_paused_is_swapped_out() {
    let cluster = &synchronous(ClusterSpec::nodes(3), false).await;
    let leader = cluster.wait_primary(UP).await.expect("primary");
    let paused = one_sync_standby(cluster, Some(leader)).await;
    cluster
        .patch_config(serde_json::json!({
            "maximum_lag_on_syncnode": 1_048_576,
            "postgresql": {"parameters": {"synchronous_commit": "remote_apply"}},
        }))
        .await
        .expect("set the limit and remote_apply");
    wait_until("remote_apply on the leader", UP, || async {
        let value = cluster.nodes[leader].psql("show synchronous_commit").unwrap_or_default();
        if value == "remote_apply" { Ok(Some(())) } else { Err(value) }
    })
    .await
    .expect("remote_apply");
    cluster.nodes[paused].psql("select pg_wal_replay_pause()").expect("pause replay");
    let port = cluster.nodes[leader].pg_port;
    let big = tokio::task::spawn_blocking(move || {
        pgwarden_integration_tests::cluster::psql_port(
            port,
            "create table applybig as select g, repeat('x', 100) as pad from generate_series(1, 60000) g",
        )
    });
    let replacement = one_sync_standby(cluster, Some(paused)).await;
    assert_ne!(replacement, leader);
    let state = cluster.nodes[leader]
        .psql(&format!(
            "select state from pg_stat_replication where application_name = '{}'",
            cluster.nodes[paused].name
        ))
        .expect("pg_stat_replication");
    cluster.nodes[paused].psql("select pg_wal_replay_resume()").expect("resume replay");
    assert_eq!(state, "streaming", "swapped for its replay lag while still streaming");
    big.await.expect("join").expect("the held transaction commits once the standby is swapped out");
}
