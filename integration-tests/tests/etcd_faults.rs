//! etcd faults under a running cluster, with three clients writing numbered
//! rows through HAProxy and every node probed directly for writability
//! throughout: etcd stopped for everyone, one etcd member killed, the etcd
//! leader killed. Also the watchdog layers of fencing.

use std::time::{Duration, Instant};

use base64::Engine as _;

use ha_proto::v1::SwitchoverRequest;
use pgwarden_integration_tests::process::is_running;
use pgwarden_integration_tests::watchdog::{Call, TestWatchdog};
use pgwarden_integration_tests::{
    ClusterSpec, LoadedCluster, PgwardenCluster, TestDir, grpc, init_logging, service, wait_until,
};

const UP: Duration = Duration::from_secs(90);
/// The clusters' ttl (integration-tests/src/cluster.rs).
const TTL: Duration = Duration::from_secs(10);

/// Waits until every node's agent has logged `text`.
async fn every_agent_logs(cluster: &PgwardenCluster, text: &str, what: &str) {
    wait_until(what, UP, || async {
        let missing: Vec<String> =
            cluster.nodes.iter().filter(|n| !n.agent_log().contains(text)).map(|n| n.name.clone()).collect();
        if missing.is_empty() { Ok(Some(())) } else { Err(format!("not yet: {missing:?}")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// A healthy cluster under load (three clients writing through HAProxy,
/// every node probed for writability) and the leader's timeline before the
/// fault.
async fn loaded(etcd_members: usize) -> (LoadedCluster, (String, String)) {
    init_logging();
    let spec = ClusterSpec::nodes(3).etcd_members(etcd_members);
    let setup = LoadedCluster::start(spec, 3).await.expect("a loaded cluster");
    let before = timeline(&setup.cluster, setup.leader);
    (setup, before)
}

/// The checkpoint's timeline and the number of timeline history files: a
/// promotion would raise the one and add to the other.
fn timeline(cluster: &PgwardenCluster, node: usize) -> (String, String) {
    let psql = |sql: &str| cluster.nodes[node].psql(sql).expect("psql");
    (
        psql("select timeline_id from pg_control_checkpoint()"),
        psql("select count(*) from pg_ls_waldir() where name like '%.history'"),
    )
}

#[tokio::test]
async fn etcd_stopped_for_everyone_fences_the_primary_which_resumes_on_the_same_timeline() {
    let (mut setup, before) = loaded(1).await;
    let leader = setup.leader;
    let pid = setup.cluster.nodes[leader].postmaster_pid().expect("the primary runs");

    setup.cluster.etcd.kill(0);
    let stopped = Instant::now();
    // No one can prove the key: the primary fences itself before its deadline.
    wait_until("the primary to fence itself", UP, || async { Ok::<_, String>((!is_running(pid)).then_some(())) })
        .await
        .expect("fenced");
    let fenced_after = stopped.elapsed();
    println!("etcd stopped: the primary fenced after {fenced_after:?} (ttl {TTL:?})");
    assert!(fenced_after < TTL, "fenced before the lease could expire");

    setup.cluster.etcd.restart(0).await.expect("etcd back");
    let back = Instant::now();
    // Nothing happened elsewhere: the same node resumes, on the same timeline.
    let resumed = setup.cluster.wait_healthy(UP).await.expect("healthy again");
    println!("etcd back: healthy again after {:?}", back.elapsed());
    assert_eq!(resumed, leader, "the old primary resumes");
    assert_eq!(timeline(&setup.cluster, leader), before, "same timeline, no promotion");
    let log = setup.cluster.nodes[leader].agent_log();
    assert!(log.contains("resume on timeline"), "the agent says why it resumed");
    // It resumed only after reading that its WAL reaches the published optime
    // (issue 20, finding 3): the fence stopped it immediately, mid-stream.
    assert!(log.contains("read where the local WAL ends"), "{log}");
    // The ordered fence held acknowledgements before the deadline (issue 20,
    // finding 12); the hold is gone once it resumed (writes flow below).
    assert!(log.contains("holding commit acknowledgements"), "{log}");
    let auto_conf = std::fs::read_to_string(setup.cluster.nodes[leader].data_dir().join("postgresql.auto.conf"))
        .expect("postgresql.auto.conf");
    assert!(!auto_conf.contains("pgwarden_fence_hold"), "{auto_conf}");
    setup.finish("etcd stopped", &[setup.leader]).await;
}

/// `pgwarden_etcd_read_duration_seconds` on `node` (`None`: not published).
fn etcd_read_seconds(cluster: &PgwardenCluster, node: usize) -> Option<f64> {
    let body = cluster.nodes[node].get("/metrics")?;
    let line = body.lines().find(|l| l.starts_with("pgwarden_etcd_read_duration_seconds{"))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// A frozen etcd (every call waits out its 1 s timeout; the writers keep
/// writing) does not hold the HA loops up: once a read has failed, a tick
/// waits for etcd at most 250 ms (a read in the background watches for its
/// return), so each node's last etcd read soon takes well under the
/// timeout, and the primary still fences before its lease could expire.
/// Thawed, every agent says etcd answers again, and no acknowledged row is
/// lost whoever leads next.
#[tokio::test]
async fn a_frozen_etcd_does_not_hold_the_ha_loops_up() {
    let (mut setup, before) = loaded(1).await;
    let leader = setup.leader;
    let pid = setup.cluster.nodes[leader].postmaster_pid().expect("the primary runs");
    setup.cluster.etcd.pause(0, true);
    let frozen = Instant::now();
    let cluster = &setup.cluster;
    wait_until("the primary to fence itself", UP, || async { Ok::<_, String>((!is_running(pid)).then_some(())) })
        .await
        .expect("fenced");
    let fenced_after = frozen.elapsed();
    println!("etcd frozen: the primary fenced after {fenced_after:?} (ttl {TTL:?})");
    assert!(fenced_after < TTL, "fenced before the lease could expire");
    every_agent_logs(cluster, "ticks no longer wait for it", "every agent to stop waiting for etcd").await;
    for node in 0..cluster.nodes.len() {
        wait_until("a tick that did not wait for the frozen etcd", UP, || async {
            match etcd_read_seconds(cluster, node) {
                Some(seconds) if seconds < 0.6 => Ok(Some(())),
                other => Err(format!("{}: last etcd read took {other:?} s", cluster.nodes[node].name)),
            }
        })
        .await
        .expect("ticks go on without waiting for etcd");
    }
    setup.cluster.etcd.pause(0, false);
    every_agent_logs(&setup.cluster, "etcd answers again", "every agent to read etcd again").await;
    // The freeze outlasted the ttl: thawed, etcd expires every lease, the
    // leader key with them, and the members race (the fenced primary, its
    // PostgreSQL stopped, is no rival: a replica may win). Either way no
    // acknowledged row is lost (the ordered fence held acknowledgements
    // until the replicas had them) and one node at a time accepts writes.
    let next = setup.cluster.wait_healthy(UP).await.expect("healthy again");
    if next == leader {
        assert_eq!(timeline(&setup.cluster, leader), before, "same timeline, no promotion");
    }
    println!("etcd thawed: {} leads", setup.cluster.nodes[next].name);
    setup.finish("etcd frozen", &[leader, next]).await;
}

#[tokio::test]
async fn losing_an_etcd_follower_and_then_the_etcd_leader_keeps_the_primary() {
    let (mut setup, before) = loaded(3).await;
    let leader = setup.leader;

    // One etcd follower killed: quorum holds, nothing may change for a ttl.
    let etcd_leader = setup.cluster.etcd.leader_index().await.expect("etcd leader");
    let follower = (0..3).find(|&i| i != etcd_leader).expect("a follower");
    setup.cluster.etcd.kill(follower);
    setup.wait_writes_after(Instant::now() + TTL).await.expect("writes go on for a ttl");
    setup.cluster.etcd.restart(follower).await.expect("follower back");

    // The etcd leader killed: the other two elect a new one; the lease and
    // the leader key survive the change.
    let etcd_leader = setup.cluster.etcd.leader_index().await.expect("etcd leader");
    setup.cluster.etcd.kill(etcd_leader);
    setup.wait_writes_after(Instant::now() + TTL).await.expect("writes go on for a ttl");
    setup.cluster.etcd.restart(etcd_leader).await.expect("etcd leader back");

    assert_eq!(setup.cluster.wait_healthy(UP).await.expect("healthy"), leader, "same primary");
    assert_eq!(timeline(&setup.cluster, leader), before, "same timeline");
    setup.finish("etcd member, then etcd leader, killed", &[setup.leader]).await;

    // The unit-level fence (systemd ExecStopPost): nothing unless the unit's
    // watchdog expired; then PostgreSQL stops at once. Tried on a replica
    // whose agent was killed, as systemd kills a hung agent before the fence.
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    let node = &mut setup.cluster.nodes[replica];
    let pid = node.postmaster_pid().expect("the replica runs");
    node.kill_agent();
    let config = node.config_path().display().to_string();
    let args = ["--fence-if-watchdog", config.as_str()];
    let (ok, stdout, _) = service::run("pgwarden-agent", &args, &[("SERVICE_RESULT", "exit-code")]).expect("run");
    assert!(ok && stdout.contains("nothing to fence"), "{stdout}");
    assert!(is_running(pid), "no watchdog expiry: PostgreSQL untouched");
    let (ok, _, stderr) = service::run("pgwarden-agent", &args, &[("SERVICE_RESULT", "watchdog")]).expect("run");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("watchdog expired"), "{stderr}");
    // pg_ctl returns once the pid file is gone; the process exits just after.
    wait_until("the fenced postmaster to exit", Duration::from_secs(5), || async {
        Ok::<_, String>((!is_running(pid)).then_some(()))
    })
    .await
    .expect("the watchdog fence stopped PostgreSQL");
    // The restarted agent brings the replica back.
    node.start_agent().expect("restart the agent");
    assert_eq!(setup.cluster.wait_healthy(UP).await.expect("healthy"), leader);
}

#[tokio::test]
async fn a_required_watchdog_that_cannot_be_armed_keeps_the_node_from_leading() {
    init_logging();
    let extra = |_| "watchdog:\n  mode: required\n  device: /nonexistent/watchdog\n".to_string();
    let cluster = PgwardenCluster::start_with(1, extra).await.expect("start");
    let node = &cluster.nodes[0];
    wait_until("the agent to refuse leading without a watchdog", UP, || async {
        Ok::<_, String>(node.agent_log().contains("watchdog.mode is required").then_some(()))
    })
    .await
    .expect("refused");
    let log = node.agent_log();
    assert!(log.contains("/nonexistent/watchdog") && log.contains("modprobe softdog"), "names the device and the fix");
    assert_eq!(cluster.get_key("initialize").await.expect("etcd"), None, "no bootstrap without the watchdog");
    assert!(node.postmaster_pid().is_none(), "no data directory was built");
}

/// Patroni's `testing` watchdog driver, read by the test: the leader arms
/// its device at its lease's ttl - safety_margin before it leads, feeds it
/// on each renewal, and closes it when it stops leading (a switchover) and
/// when its agent stops; a replica leaves its own closed. A ttl edited
/// while leading does not move the device: the leader's lease, and so its
/// key, keeps the ttl it was granted with until the key changes hands (a
/// timeout raised with the edit would fire after the key could expire); the
/// next leader arms with its own lease's ttl.
#[tokio::test]
async fn the_leaders_watchdog_follows_its_lease_and_is_closed_when_it_stops_leading() {
    init_logging();
    let pipes = TestDir::new("watchdog");
    let devices: Vec<TestWatchdog> =
        (1..=2).map(|i| TestWatchdog::create(&pipes.path().join(format!("node{i}.fifo"))).expect("pipe")).collect();
    let paths: Vec<String> = devices.iter().map(|d| d.path().display().to_string()).collect();
    let extra = |i: usize| {
        format!("watchdog:\n  mode: required\n  driver: testing\n  device: {}\n  safety_margin: 5\n", paths[i - 1])
    };
    let mut cluster = PgwardenCluster::start_with(2, extra).await.expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    let replica = 1 - leader;
    let fed = |device: &TestWatchdog, timeout: u32| {
        device.timeouts().last() == Some(&timeout) && device.keepalives_since_armed() >= 2
    };
    wait_until("the leader's device armed at 10 - 5 s and fed", UP, || async {
        Ok::<_, String>(fed(&devices[leader], 5).then_some(()))
    })
    .await
    .expect("armed");
    assert_eq!(devices[leader].timeouts(), [5], "armed once");
    // The loser of the bootstrap race may have armed its device for the
    // race (a node that may not lead does not build the cluster): closed
    // since, and never fed.
    let calls = devices[replica].calls();
    assert!(
        calls.last().is_none_or(|c| *c == Call::MagicClose) && !calls.contains(&Call::Keepalive),
        "a replica leaves its device closed: {calls:?}"
    );

    cluster.patch_config(serde_json::json!({"ttl": 20})).await.expect("ttl 20");
    let replica_key = format!("members/{}", cluster.nodes[replica].name);
    wait_until("the replica's member lease granted at the new ttl", UP, || async {
        let ttl = cluster.lease_ttl(&replica_key).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((ttl == Some(20)).then_some(()))
    })
    .await
    .expect("a new member lease");
    let leader_key = cluster.lease_ttl("leader").await.expect("etcd");
    assert_eq!(leader_key, Some(10), "the leader's lease keeps its ttl");
    let fed_before = devices[leader].keepalives_since_armed();
    wait_until("four more renewals on the leader", UP, || async {
        Ok::<_, String>((devices[leader].keepalives_since_armed() >= fed_before + 4).then_some(()))
    })
    .await
    .expect("renewals");
    assert_eq!(devices[leader].timeouts(), [5], "the device keeps the lease's timeout: {:?}", devices[leader].calls());
    assert!(!devices[leader].is_closed(), "still armed: {:?}", devices[leader].calls());

    let mut controller = wait_until("the controller to answer", UP, || {
        let url = cluster.nodes[leader].controller_url();
        async move { Ok::<_, String>(grpc::controller(url).await.ok()) }
    })
    .await
    .expect("controller");
    let request = SwitchoverRequest { candidate: cluster.nodes[replica].name.clone(), ..Default::default() };
    let response = controller.switchover(request).await.expect("switchover").into_inner();
    assert_eq!(response.new_leader, cluster.nodes[replica].name, "{response:?}");
    wait_until("the new leader's device armed at 15 s and fed", UP, || async {
        Ok::<_, String>(fed(&devices[replica], 15).then_some(()))
    })
    .await
    .expect("armed");
    assert!(devices[leader].is_closed(), "the old leader closed its device: {:?}", devices[leader].calls());

    assert!(cluster.nodes[replica].stop_agent(), "the agent stops");
    assert!(devices[replica].is_closed(), "closed when its agent stopped: {:?}", devices[replica].calls());
    for device in &devices {
        assert_eq!(device.overruns(), Vec::<Duration>::new(), "never unfed past its timeout while armed");
    }
}

/// `failsafe_mode` on, and the `failsafe` key listing all three members.
async fn enable_failsafe(cluster: &PgwardenCluster) {
    cluster.patch_config(serde_json::json!({"failsafe_mode": true})).await.expect("failsafe_mode on");
    wait_until("the failsafe key to list every member", UP, || async {
        let key = cluster.get_key("failsafe").await.map_err(|e| e.to_string())?;
        let members: serde_json::Map<String, serde_json::Value> =
            key.as_deref().and_then(|k| serde_json::from_str(k).ok()).unwrap_or_default();
        if cluster.nodes.iter().all(|n| members.contains_key(&n.name)) { Ok(Some(())) } else { Err(format!("{key:?}")) }
    })
    .await
    .expect("failsafe key");
}

/// `failsafe_mode` (issue 23): etcd stopped for everyone, and the primary
/// keeps taking writes through HAProxy while both replicas accept its calls,
/// three ttls past the moment it would otherwise have fenced itself;
/// `/patroni`, `/failsafe` and the metric say so. When etcd is back, the
/// same primary goes on, on the same timeline; no row lost, never two
/// writers.
#[tokio::test]
async fn failsafe_mode_keeps_the_primary_writing_while_etcd_is_stopped_for_everyone() {
    let (mut setup, before) = loaded(1).await;
    let leader = setup.leader;
    enable_failsafe(&setup.cluster).await;
    // Patroni's `POST /failsafe` (a Patroni leader during a migration):
    // credentials needed; a running primary refuses.
    let post = |node: usize, auth: bool| {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            pgwarden_integration_tests::cluster::REST_USER,
            pgwarden_integration_tests::cluster::REST_PASSWORD
        ));
        let header = format!("Basic {credentials}");
        let headers: Vec<(&str, &str)> = if auth { vec![("Authorization", header.as_str())] } else { vec![] };
        let body = r#"{"name": "patroni-leader", "conn_url": "postgres://10.9.9.9:5432/postgres", "api_url": "http://10.9.9.9:8008/patroni"}"#;
        service::http_with("POST", setup.cluster.nodes[node].rest_port, "/failsafe", &headers, body, UP)
            .expect("POST /failsafe")
    };
    assert_eq!(post(leader, false).0, 401, "without credentials");
    let (status, text) = post(leader, true);
    assert!(status == 500 && text.contains("Running as a leader"), "{status} {text}");
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    let (status, text) = post(replica, true);
    assert!(status == 200 && text.contains("Accepted"), "{status} {text}");
    setup.cluster.etcd.kill(0);
    let stopped = Instant::now();
    setup.wait_writes_after(stopped + 3 * TTL).await.expect("writes go on three ttls after etcd stopped");
    println!("etcd stopped: writes still acknowledged {:?} later", stopped.elapsed());
    let node = &setup.cluster.nodes[leader];
    let patroni = node.get("/patroni").expect("/patroni");
    assert!(patroni.contains("\"failsafe_mode_is_active\":true"), "{patroni}");
    let listed = node.get("/failsafe").expect("/failsafe");
    for member in &setup.cluster.nodes {
        assert!(listed.contains(&format!("\"{}\"", member.name)), "{listed}");
    }
    let metrics = node.get("/metrics").expect("/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("patroni_failsafe_mode_is_active{") && l.ends_with(" 1")),
        "{metrics}"
    );
    for replica in (0..3).filter(|&i| i != leader) {
        let patroni = setup.cluster.nodes[replica].get("/patroni").expect("/patroni");
        assert!(patroni.contains("\"failsafe_mode_is_active\":true"), "replica {replica} promised: {patroni}");
    }
    assert!(node.agent_log().contains("every member accepts: running on"), "the leader says why it runs on");

    setup.cluster.etcd.restart(0).await.expect("etcd back");
    assert_eq!(setup.cluster.wait_healthy(UP).await.expect("healthy again"), leader, "the same primary");
    assert_eq!(timeline(&setup.cluster, leader), before, "same timeline, no promotion");
    setup.finish("etcd stopped, failsafe_mode", &[setup.leader]).await;
}

/// The combined fault: etcd stopped for everyone and a replica's agent
/// killed (it cannot promise). Failsafe cannot keep the primary: it fences
/// by its deadline, as without the mode; with etcd and the agent back the
/// cluster is whole again. Never two writers, no row lost.
#[tokio::test]
async fn failsafe_mode_fences_the_primary_when_a_member_cannot_promise() {
    let (mut setup, _before) = loaded(1).await;
    let leader = setup.leader;
    enable_failsafe(&setup.cluster).await;
    let pid = setup.cluster.nodes[leader].postmaster_pid().expect("the primary runs");
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    setup.cluster.nodes[replica].kill_agent();
    setup.cluster.etcd.kill(0);
    let stopped = Instant::now();
    wait_until("the primary to fence itself", UP, || async { Ok::<_, String>((!is_running(pid)).then_some(())) })
        .await
        .expect("fenced");
    println!("etcd stopped, a replica's agent killed: the primary fenced after {:?}", stopped.elapsed());
    let log = setup.cluster.nodes[leader].agent_log();
    assert!(log.contains("not every member accepts"), "{log}");
    setup.cluster.etcd.restart(0).await.expect("etcd back");
    setup.cluster.nodes[replica].start_agent().expect("agent back");
    setup.cluster.wait_healthy(UP).await.expect("healthy again");
    // Whoever leads afterwards: no row lost, never two writers.
    let report = setup.finish_asynchronous("etcd stopped, a replica's agent killed").await;
    assert!(report.acknowledged > 0 && report.lost.is_empty(), "{report:?}");
}

/// `failsafe_mode` with etcd frozen for everyone: no `status` key carries
/// the leader's slot positions then, so the leader's failsafe calls carry
/// them (read for each round), and the replicas' copies of the permanent
/// slots (a physical and a logical one) follow the consumers on the leader,
/// as with Patroni's failsafe. Found by Patroni's `dcs_failsafe_mode`
/// scenarios: the copies stood still until etcd came back.
#[tokio::test]
async fn failsafe_mode_moves_the_replicas_slot_copies_along_while_etcd_is_frozen() {
    init_logging();
    let slots = serde_json::json!({"bootstrap": {"dcs": {
        "postgresql": {"parameters": {"wal_level": "logical"}},
        "slots": {
            "keep": {"type": "physical"},
            "cdc": {"type": "logical", "database": "postgres", "plugin": "test_decoding"},
        },
    }}});
    let mut cluster = PgwardenCluster::start(0).await.expect("etcd");
    for i in 1..=3 {
        let mut config = slots.clone();
        if i == 3 {
            // node3 cascades from node2: the leader's slot for it is inactive.
            config["tags"] = serde_json::json!({"replicatefrom": "node2"});
        }
        cluster.add_node(&format!("node{i}"), "").expect("node").merge_config(config).expect("config");
    }
    let position = |cluster: &PgwardenCluster, i: usize, slot: &str| {
        let sql = format!(
            "select coalesce(confirmed_flush_lsn, restart_lsn) from pg_replication_slots where slot_name = '{slot}'"
        );
        cluster.nodes[i].psql(&sql).unwrap_or_default().trim().to_string()
    };
    // node2 clones once the logical slot exists and the WAL it starts in is
    // behind a checkpoint: the leader's slot begins before node2's oldest
    // WAL, so node2 copies it only once the consumer has moved it on.
    cluster.start_node(0).expect("node1");
    assert_eq!(cluster.wait_primary(UP).await.expect("node1 leads"), 0);
    wait_until("the logical slot on node1", UP, || async {
        Ok::<_, String>((!position(&cluster, 0, "cdc").is_empty()).then_some(()))
    })
    .await
    .expect("cdc on node1");
    cluster.nodes[0].psql("select pg_switch_wal()").expect("switch");
    cluster.nodes[0].psql("checkpoint").expect("checkpoint");
    cluster.start_all().expect("node2 and node3");
    enable_failsafe(&cluster).await;
    // (From 17 on PostgreSQL's slot sync worker keeps the logical copy: it
    // waits the same way, with a temporary slot of its own.)
    let own_copies = pgwarden_integration_tests::postgres::binaries_major() < 17;
    wait_until("node2's copy of the physical slot, and none yet of the logical one", UP, || async {
        let copies = (position(&cluster, 1, "keep"), position(&cluster, 1, "cdc"));
        let waits = cluster.nodes[1].agent_log().contains("not copying the leader's logical slot yet");
        if own_copies && !copies.1.is_empty() {
            return Err(format!("node2 copied a slot it has not the WAL for: {copies:?}"));
        }
        Ok((!copies.0.is_empty() && (waits || !own_copies)).then_some(()))
    })
    .await
    .expect("copies on node2");
    cluster.nodes[0]
        .psql("create table before (id int); insert into before select generate_series(1, 1000)")
        .expect("rows");
    cluster.nodes[0].psql("select pg_switch_wal()").expect("switch");
    cluster.nodes[0].psql("checkpoint").expect("checkpoint");
    let consume = || cluster.nodes[0].psql("select count(*) from pg_logical_slot_get_changes('cdc', NULL, NULL)");
    wait_until("node2's copy of the logical slot once the consumer moved past node2's oldest WAL", UP, || async {
        consume().map_err(|e| e.to_string())?;
        let (copy, consumed) = (position(&cluster, 1, "cdc"), position(&cluster, 0, "cdc"));
        Ok::<_, String>((!copy.is_empty() && copy == consumed).then_some(()))
    })
    .await
    .expect("the logical copy on node2");
    wait_until("node3 streaming from node2", UP, || async {
        let sql = "select active from pg_replication_slots where slot_name = 'node3'";
        let on = |i: usize| cluster.nodes[i].psql(sql).unwrap_or_default().trim().to_string();
        let (leader, upstream) = (on(0), on(1));
        if (leader.as_str(), upstream.as_str()) == ("f", "t") {
            Ok(Some(()))
        } else {
            Err(format!("node3's slot active on node1 {leader:?}, on node2 {upstream:?}"))
        }
    })
    .await
    .expect("cascading");

    // Frozen, not frozen: every etcd call waits out its timeout, as in
    // Patroni's `DCS is down` (each HA tick then waits too).
    cluster.etcd.pause(0, true);
    let frozen = Instant::now();
    wait_until("failsafe_mode_is_active on node1", UP, || async {
        let body = cluster.nodes[0].get("/primary").unwrap_or_default();
        Ok::<_, String>(body.contains("\"failsafe_mode_is_active\":true").then_some(()))
    })
    .await
    .expect("failsafe active");
    // The consumers move on the leader while etcd is gone.
    cluster.nodes[0]
        .psql("create table moved (id int); insert into moved select generate_series(1, 1000)")
        .expect("rows");
    cluster.nodes[0]
        .psql("select pg_replication_slot_advance('keep', pg_current_wal_lsn())")
        .expect("the physical slot's consumer");
    cluster.nodes[0].psql("select count(*) from pg_logical_slot_get_changes('cdc', NULL, NULL)").expect("decoded");
    let wanted = (position(&cluster, 0, "keep"), position(&cluster, 0, "cdc"));
    let consumed = Instant::now();
    let written: ha_core::Lsn =
        cluster.nodes[0].psql("select pg_current_wal_lsn()").expect("lsn").trim().parse().expect("an LSN");
    wait_until("node2's copies at the leader's positions with etcd frozen", UP, || async {
        let copies = (position(&cluster, 1, "keep"), position(&cluster, 1, "cdc"));
        if copies == wanted { Ok(Some(())) } else { Err(format!("{copies:?}, the leader's {wanted:?}")) }
    })
    .await
    .expect("the copies follow");
    println!("with etcd frozen the copies on node2 followed the consumers in {:?}", consumed.elapsed());
    // The leader's slot for node3, which streams from node2, follows the
    // position node3 gives with its promise.
    wait_until("node1's slot for the cascading node3 past the rows", UP, || async {
        let slot = position(&cluster, 0, "node3");
        let moved = slot.parse::<ha_core::Lsn>().is_ok_and(|lsn| lsn >= written);
        if moved { Ok(Some(())) } else { Err(format!("node3's slot on node1 at {slot:?}, the rows end at {written}")) }
    })
    .await
    .expect("the cascading member's slot follows");
    assert_eq!(cluster.nodes[0].check("/primary"), 200, "node1 still the primary");
    // One round of calls per renewal interval (2.5 s at ttl 10), each
    // extending the deadline once: not a round at every wake-up.
    let rounds = cluster.nodes[0].agent_log().matches("deadline extended (failsafe)").count();
    let bound = (frozen.elapsed().as_secs_f64() / 2.5).ceil() as usize + 2;
    assert!(rounds <= bound, "{rounds} extensions in {:?} of outage (at most {bound})", frozen.elapsed());
    cluster.etcd.pause(0, false);
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy again"), 0, "the same primary");
}

/// `etcd3.use_proxies` off, Patroni's default: nodes whose `hosts` name one
/// etcd member of three look the other two up (etcd's member list) and
/// outlive that member: the primary keeps its key through two ttls after
/// the kill, no replica is promoted, and the writers go on. Without the
/// look-up every node loses etcd with its one member: the primary fences at
/// its deadline and nobody can take over.
#[tokio::test]
async fn nodes_listing_one_etcd_member_find_the_others_and_outlive_it() {
    init_logging();
    let etcd = pgwarden_integration_tests::EtcdCluster::start(3).await.expect("etcd");
    let first = etcd.client_port(0);
    let mut cluster = PgwardenCluster::empty(etcd, "itest", TTL.as_secs() as u32);
    for i in 1..=3 {
        cluster.add_node(&format!("node{i}"), &format!("etcd3:\n  hosts: 127.0.0.1:{first}\n")).expect("add a node");
    }
    cluster.start_all().expect("start");
    let mut loaded = LoadedCluster::load(cluster, 3).await.expect("a loaded cluster");
    let leader = loaded.leader;
    let cluster = &loaded.cluster;
    every_agent_logs(cluster, "etcd members discovered", "every agent to find etcd's other members").await;
    let before = timeline(cluster, leader);
    loaded.cluster.etcd.kill(0);
    let killed = Instant::now();
    // A window to watch, not a wait for a condition: the key would expire
    // one ttl after the last renewal that reached etcd.
    let cluster = &loaded.cluster;
    while killed.elapsed() < 2 * TTL {
        assert_eq!(
            cluster.nodes[leader].check("/primary"),
            200,
            "the primary lost its key {:?} after the listed etcd member died:\n{}",
            killed.elapsed(),
            cluster.nodes[leader].agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(timeline(cluster, leader), before, "no promotion");
    loaded.wait_writes_after(killed + TTL).await.expect("writes go on past the ttl");
    loaded.finish("the one listed etcd member lost", &[leader]).await;
}

/// A member that advertises a client URL of another etcd cluster (a
/// loopback address seen from another host, a copied config): the nodes
/// look the members up, find that URL answering with another cluster ID,
/// and never use it, so no key of this cluster is ever written there.
#[tokio::test]
async fn an_advertised_url_of_another_etcd_cluster_is_never_used() {
    init_logging();
    let foreign = pgwarden_integration_tests::EtcdCluster::start(1).await.expect("another etcd cluster");
    let foreign_url = foreign.endpoints()[0].clone();
    let etcd = pgwarden_integration_tests::EtcdCluster::start_advertising(1, std::slice::from_ref(&foreign_url))
        .await
        .expect("etcd advertising the other's URL");
    let mut cluster = PgwardenCluster::empty(etcd, "itest", TTL.as_secs() as u32);
    for i in 1..=2 {
        cluster.add_node(&format!("node{i}"), "").expect("add a node");
    }
    cluster.start_all().expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    every_agent_logs(&cluster, "which answers for another etcd cluster", "every agent to refuse the foreign URL").await;
    for node in &cluster.nodes {
        assert!(!node.agent_log().contains("etcd members discovered"), "{}: added a URL", node.name);
    }
    let client = etcd_client::Client::connect([foreign_url.as_str()], None).await.expect("the other etcd");
    let mut kv = client.kv_client();
    let keys = kv
        .get("", Some(etcd_client::GetOptions::new().with_all_keys().with_count_only()))
        .await
        .expect("count the other etcd's keys");
    assert_eq!(keys.count(), 0, "nothing was written to the other etcd cluster");
}

/// A DNS server of the test's own (dnsmasq on a loopback address of its
/// own, port 53, authoritative for `.test`), and the `resolv.conf` that
/// names it; killed on drop.
struct TestDns {
    resolv_conf: std::path::PathBuf,
    _server: pgwarden_integration_tests::process::ChildGuard,
}

impl TestDns {
    fn start(dir: &TestDir, records: &[String]) -> TestDns {
        // 127.53.x.y: a loopback address no other test's server binds.
        let pid = std::process::id();
        let address = format!("127.53.{}.{}", (pid >> 8) % 250 + 1, pid % 250 + 1);
        let mut cmd = std::process::Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--local=/test/",
            "--log-queries",
            "--log-facility=-",
            "--pid-file=",
        ])
        .arg(format!("--listen-address={address}"))
        .args(records)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("dnsmasq.log")).expect("dnsmasq log"));
        let server =
            pgwarden_integration_tests::process::ChildGuard::spawn(&mut cmd, "dnsmasq", dir).expect("start dnsmasq");
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {address}\noptions timeout:1 attempts:2\n"))
            .expect("write resolv.conf");
        TestDns { resolv_conf, _server: server }
    }
}

/// `etcd3.srv` (Patroni's DNS discovery): node1 finds etcd by the client
/// record `_etcd-client._tcp.<domain>`, node2 (an `etcd:` section) by the peer record
/// `_etcd-server._tcp.<domain>` and etcd's `/members` on the peer port,
/// both through the system resolver pointed at the test's DNS server, and
/// neither config lists an etcd address. They form one cluster (node2
/// clones from node1 and streams). A domain without records refuses to
/// start, naming every record it asked.
#[tokio::test]
async fn etcd_is_found_through_dns_srv_records() {
    init_logging();
    let etcd = pgwarden_integration_tests::EtcdCluster::start(1).await.expect("etcd");
    let (client_port, peer_port) = (etcd.client_port(0), etcd.peer_port(0));
    let mut cluster = PgwardenCluster::empty(etcd, "itest", TTL.as_secs() as u32);
    let dns_dir = TestDir::new("dns");
    let dns = TestDns::start(
        &dns_dir,
        &[
            "--host-record=etcd-a.pgwarden.test,127.0.0.1".to_string(),
            format!("--srv-host=_etcd-client._tcp.clients.test,etcd-a.pgwarden.test,{client_port}"),
            format!("--srv-host=_etcd-server._tcp.peers.test,etcd-a.pgwarden.test,{peer_port}"),
        ],
    );
    for (name, domain) in [("node1", "clients.test"), ("node2", "peers.test"), ("node3", "missing.test")] {
        let node = cluster.add_node(name, "").expect("add a node");
        let path = node.config_path();
        let mut config: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("read config")).expect("parse config");
        // Only the domain: no etcd address in the file. node2 writes the
        // v2-era `etcd:` section, whose v2 keyspace check (and fencer) must
        // use the endpoints the records gave.
        let section = if name == "node2" { "etcd" } else { "etcd3" };
        config.as_object_mut().expect("a mapping").remove("etcd3");
        config[section] = serde_json::json!({"srv": domain});
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("config")).expect("write config");
        node.resolv_conf = Some(dns.resolv_conf.clone());
    }
    for i in 0..2 {
        let node = &mut cluster.nodes[i];
        node.start_agent().expect("agent");
        node.start_health().expect("health");
        node.start_controller().expect("controller");
    }
    let leader = cluster.wait_healthy_among(&[0, 1], UP).await.expect("a primary and a streaming replica");
    let key = cluster.get_key("leader").await.expect("etcd").expect("the leader key");
    assert_eq!(key, cluster.nodes[leader].name, "the leader key was written to the etcd the records name");
    assert!(
        cluster.nodes[0].agent_log().contains(&format!(
            "etcd endpoints from DNS SRV _etcd-client._tcp.clients.test: http://etcd-a.pgwarden.test:{client_port}"
        )),
        "node1 used the client record: {}",
        cluster.nodes[0].agent_log()
    );
    assert!(
        cluster.nodes[1].agent_log().contains(&format!(
            "etcd endpoints from DNS SRV _etcd-server._tcp.peers.test: http://127.0.0.1:{client_port}"
        )),
        "node2 used the peer record and etcd's member list: {}",
        cluster.nodes[1].agent_log()
    );
    // The health checks may answer from the agent's status before its next
    // tick has written the member key: waited for, not read once.
    for name in ["node1", "node2"] {
        wait_until(&format!("{name}'s member key to say it runs"), UP, || async {
            let member = cluster.get_key(&format!("members/{name}")).await.map_err(|e| e.to_string())?;
            let member = member.unwrap_or_default();
            if member.contains("\"state\":\"running\"") { Ok(Some(())) } else { Err(member) }
        })
        .await
        .expect("the member key in the etcd the records name");
    }

    cluster.nodes[2].start_agent().expect("agent");
    let code = cluster.nodes[2].wait_agent_exit(Duration::from_secs(60)).await;
    let log = cluster.nodes[2].agent_log();
    assert_ne!(code, Some(0), "an agent that finds no etcd does not run: {log}");
    assert!(
        log.contains("no SRV record gave an etcd URL (asked _etcd-client-ssl._tcp.missing.test, _etcd-client._tcp.missing.test, _etcd-ssl._tcp.missing.test, _etcd._tcp.missing.test, _etcd-server-ssl._tcp.missing.test, _etcd-server._tcp.missing.test)"),
        "the refusal names every record asked: {log}"
    );
    assert!(
        log.contains("add the records to DNS") && log.contains("or list etcd in etcd3.hosts"),
        "and the fix: {log}"
    );
}
