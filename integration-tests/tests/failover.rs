//! Faults with real processes: etcd, pgwarden nodes, HAProxy, three clients
//! writing numbered rows through HAProxy's write port and every node probed
//! for writability (the harness's `LoadedCluster`). Each fault test asserts
//! never two writable nodes, which nodes wrote, no acknowledged row lost
//! where the replication promises it, one primary afterwards and the old
//! primary streaming again; write unavailability is printed (measured, not
//! asserted: see the benchmark).

use std::time::{Duration, Instant};

use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use pgwarden_integration_tests::writer::{Writer, WriterReport, missing_rows};
use pgwarden_integration_tests::{ClusterSpec, Fault, LoadedCluster, PgwardenCluster, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

/// A cluster as `spec` says, one primary with streaming replicas.
async fn healthy(spec: ClusterSpec<'_>) -> PgwardenCluster {
    init_logging();
    let cluster = spec.start().await.expect("start the cluster");
    cluster.wait_healthy(UP).await.expect("healthy");
    cluster
}

/// A healthy cluster as `spec` says, under load: three writers through
/// HAProxy and every node probed for writability.
async fn loaded(spec: ClusterSpec<'_>) -> LoadedCluster {
    init_logging();
    LoadedCluster::start(spec, 3).await.expect("a loaded cluster")
}

/// Starts a client writing straight to `leader`'s PostgreSQL (not through
/// HAProxy: it sees every write that node accepts) and waits for its first write.
async fn direct_writer(cluster: &PgwardenCluster, leader: usize) -> Writer {
    let writer = Writer::start(cluster.nodes[leader].pg_port, SUPERUSER_PASSWORD, "direct", Duration::from_millis(5))
        .await
        .expect("start a direct writer");
    writer.wait_ack_after(Instant::now(), UP).await.expect("writes to the primary");
    writer
}

/// The LSN at which an agent's log says it held commit acknowledgements.
fn held_lsn(log: &str) -> Option<ha_core::Lsn> {
    let line = log.lines().find(|l| l.contains("holding commit acknowledgements"))?;
    let plain: String = pgwarden_integration_tests::strip_ansi(line);
    plain.split_whitespace().find_map(|word| word.strip_prefix("lsn=")).and_then(|lsn| lsn.parse().ok())
}

/// Waits until another node than `leader` is primary, then checks that the
/// old primary accepted no write after the promotion (the new timeline's
/// history file is written by the promotion, before the new primary accepts
/// a write). Returns the new leader.
async fn assert_one_writer_through_failover(
    cluster: &PgwardenCluster,
    leader: usize,
    direct: Writer,
    fault: &str,
) -> (usize, WriterReport) {
    let others: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != leader).collect();
    let new_leader = wait_until("a replica to take over", UP, || async {
        let primaries: Vec<usize> =
            others.iter().copied().filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] => Ok(Some(*one)),
            _ => Err(format!("{primaries:?}")),
        }
    })
    .await
    .expect("failover");
    let report = direct.stop().await;
    let promoted: f64 = cluster.nodes[new_leader]
        .psql("select extract(epoch from modification) from pg_stat_file('pg_wal/00000002.history')")
        .expect("promotion time")
        .parse()
        .expect("epoch seconds");
    let last_old_write = report
        .last_ack_wall
        .expect("the old primary accepted writes")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    println!("{fault}: last write on the old primary {:.3} s before the promotion", promoted - last_old_write);
    assert!(last_old_write < promoted, "{fault}: the old primary accepted a write after the promotion: two writers");
    (new_leader, report)
}

#[tokio::test]
async fn switchover_with_and_without_a_candidate_loses_no_acknowledged_row() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let candidate = (leader + 1) % 3;
    let cluster = &loaded.cluster;

    let first = Instant::now();
    let request =
        format!(r#"{{"leader":"{}","member":"{}"}}"#, cluster.nodes[leader].name, cluster.nodes[candidate].name);
    cluster.put_key("failover", &request).await.expect("request a switchover");
    wait_until("the candidate to lead", Duration::from_secs(30), || async {
        Ok::<_, String>((cluster.nodes[candidate].check("/primary") == 200).then_some(()))
    })
    .await
    .expect("the named candidate leads");
    let healthy = cluster.wait_healthy(UP).await.expect("the old primary streams again");
    assert_eq!(healthy, candidate);
    wait_until("the request to be cleared", Duration::from_secs(10), || async {
        let value = cluster.get_key("failover").await.map_err(|e| e.to_string())?;
        if value.is_none() { Ok(Some(())) } else { Err(format!("{value:?}")) }
    })
    .await
    .expect("the new leader clears the request");

    // Without a candidate: the leader picks the best replica.
    loaded.wait_writes_after(Instant::now()).await.expect("the writers write again");
    let cluster = &loaded.cluster;
    let second = Instant::now();
    // This time through the CLI, as an operator does (it follows the switchover to its end).
    let config = cluster.nodes[0].config_path().display().to_string();
    // Off the runtime's thread, so that the writers keep writing meanwhile.
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "switchover", "--force"], &[])
            .expect("pgwardenctl switchover")
    })
    .await
    .expect("join");
    assert!(ok && stdout.contains("Successfully switched over"), "{stdout}{stderr}");
    let new_leader = wait_until("another member to lead", Duration::from_secs(30), || async {
        let primaries: Vec<usize> = (0..3).filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] if *one != candidate => Ok(Some(*one)),
            _ => Err(format!("{primaries:?}")),
        }
    })
    .await
    .expect("a switchover without a candidate");
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy"), new_leader);
    let history = cluster.get_key("history").await.expect("read history").expect("history written");
    assert!(history.contains(&cluster.nodes[new_leader].name), "{history}");

    // No acknowledged row lost, one writable node at a time, and the nodes
    // that took writes were the three primaries in turn.
    let report = loaded.finish("two switchovers", &[leader, candidate, new_leader]).await;
    for writer in &report.writers {
        println!(
            "switchover write unavailability: named {:?}, unnamed {:?}; {} acknowledged, {} failed attempts",
            writer.max_gap_between(first, second),
            writer.max_gap_after(second),
            writer.acked.len(),
            writer.failed_attempts
        );
        assert!(
            writer.acked.iter().any(|(_, at)| *at > first && *at < second)
                && writer.acked.iter().any(|(_, at)| *at > second),
            "every writer wrote after each switchover"
        );
    }
}

#[tokio::test]
async fn postgres_killed_on_the_primary_restarts_in_place() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let killed = Instant::now();
    Fault::PostgresKilled.inject(&mut loaded.cluster, leader).await.expect("kill -9");
    let cluster = &loaded.cluster;
    wait_until("/primary 503 on the old primary", Duration::from_secs(1), || async {
        Ok::<_, String>((cluster.nodes[leader].check("/primary") == 503).then_some(()))
    })
    .await
    .expect("/primary fails within one second");
    let back = cluster.wait_primary(UP).await.expect("a primary again");
    assert_eq!(back, leader, "restarted in place, no failover");
    cluster.wait_healthy(UP).await.expect("healthy");
    loaded.wait_writes_after(Instant::now()).await.expect("the writers write again");
    println!("PostgreSQL killed: back as primary {:?} after the kill", killed.elapsed());
    // A restart in place loses no acknowledged row, and no other node wrote.
    loaded.finish("PostgreSQL killed on the primary", &[leader]).await;
}

#[tokio::test]
async fn node_lost_fails_over_and_the_old_primary_rejoins() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let lost = Instant::now();
    Fault::NodeLost.inject(&mut loaded.cluster, leader).await.expect("lose the primary's node");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = loaded.cluster.wait_healthy_among(&others, UP).await.expect("a replica takes over");
    println!("node lost: new /primary after {:?}", lost.elapsed());
    // The old primary comes back and rejoins as a replica.
    Fault::NodeLost.recover(&mut loaded.cluster, leader).await.expect("the old primary's services");
    assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("all three healthy"), new_leader);
    assert!(
        loaded.cluster.nodes[leader].agent_log().contains("running pg_rewind"),
        "the old primary was checked with pg_rewind"
    );
    // Asynchronous replication may lose the old primary's last commits;
    // never two writable nodes at once, and the old primary did not write
    // again after it rejoined.
    let report = loaded.finish_asynchronous("node lost").await;
    assert_eq!(report.probes.writers(), [leader, new_leader], "the nodes that accepted writes, in order");
    let gap = report.writers.iter().map(|w| w.max_gap_after(lost)).max().unwrap_or_default();
    println!(
        "node lost: write unavailability {gap:?}; {} of {} acknowledged rows lost (asynchronous replication)",
        report.lost_rows, report.acknowledged
    );
}

#[tokio::test]
async fn nofailover_and_failover_priority_are_respected() {
    let tags = |i: usize| match i {
        2 => "tags:\n  nofailover: true\n".to_string(),
        // As in Patroni, a written `nofailover: false` wins over the
        // priority beside it: node3 may lead.
        3 => "tags:\n  nofailover: false\n  failover_priority: 0\n".to_string(),
        4 => "tags:\n  failover_priority: 3\n".to_string(),
        _ => String::new(),
    };
    let mut cluster = healthy(ClusterSpec::nodes(4).node_yaml(tags)).await;
    let leader = cluster.wait_primary(UP).await.expect("a primary");
    assert_eq!(leader, 0, "node1 bootstraps (it starts first)");
    cluster.nodes[0].kill_node();
    let new_leader = cluster.wait_healthy_among(&[1, 2, 3], UP).await.expect("a replica takes over");
    assert_eq!(cluster.nodes[new_leader].name, "node4", "the highest failover_priority wins");
    cluster.nodes[3].kill_node();
    let next = cluster.wait_healthy_among(&[1, 2], UP).await.expect("a replica takes over");
    assert_eq!(cluster.nodes[next].name, "node3", "the nofailover member never leads; node3's nofailover: false wins");
    assert_eq!(cluster.nodes[1].check("/primary"), 503);
}

#[tokio::test]
async fn pause_blocks_failover_and_resume_restores_it() {
    let mut cluster = healthy(ClusterSpec::nodes(3)).await;
    let leader = cluster.wait_primary(UP).await.expect("a primary");
    let config = cluster.nodes[0].config_path().display().to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["-c", config.as_str()];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) =
            pgwarden_integration_tests::service::run("pgwardenctl", &all, &[]).expect("pgwardenctl");
        assert!(ok, "pgwardenctl {args:?}: {stdout}{stderr}");
    };
    ctl(&["pause", "--wait"]);
    wait_until("every member to report the pause", Duration::from_secs(10), || async {
        let paused = (0..3).all(|i| cluster.nodes[i].get("/patroni").is_some_and(|b| b.contains("\"pause\":true")));
        Ok::<_, String>(paused.then_some(()))
    })
    .await
    .expect("paused");
    // A replay paused by hand during the pause shows in /patroni (xlog.paused)
    // and in /metrics, and the agent leaves it paused, as Patroni does.
    let replica = (leader + 1) % 3;
    let node = &cluster.nodes[replica];
    node.psql("select pg_wal_replay_pause()").expect("pause the replay");
    let replay_paused = || {
        node.get("/patroni")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|j| j["xlog"]["paused"] == true)
    };
    wait_until("/patroni to report the paused replay", Duration::from_secs(10), || async {
        Ok::<_, String>(replay_paused().then_some(()))
    })
    .await
    .expect("xlog.paused");
    let metrics = node.get("/metrics").expect("/metrics");
    let line = metrics.lines().find(|l| l.starts_with("patroni_xlog_paused{")).expect("the metric");
    assert!(line.ends_with(" 1"), "{line}");
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        assert_eq!(node.psql("select pg_is_wal_replay_paused()").expect("psql"), "t", "the agent resumed the replay");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(replay_paused());
    node.psql("select pg_wal_replay_resume()").expect("resume the replay");
    cluster.nodes[leader].kill_node();
    // Longer than the ttl: without the pause a replica would have taken over.
    tokio::time::sleep(Duration::from_secs(14)).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i != leader {
            assert_eq!(node.check("/primary"), 503, "{} must not take over while paused", node.name);
        }
    }
    ctl(&["resume"]);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.wait_healthy_among(&others, UP).await.expect("a replica takes over after resume");
}

/// Patroni parity (issue 23): in pause, with the leader's PostgreSQL
/// stopped, a parameter edit is accepted (checked locally only), a restart
/// request starts PostgreSQL again, and resume is accepted with it stopped
/// again (it changes no PostgreSQL parameter, so nothing asks the stopped
/// PostgreSQL); then the HA loop acts and the cluster serves again.
#[tokio::test]
async fn resume_and_edits_work_while_the_leaders_postgres_is_stopped_in_pause() {
    let cluster = healthy(ClusterSpec::nodes(3)).await;
    let leader = cluster.wait_primary(UP).await.expect("a primary");
    let config = cluster.nodes[0].config_path().display().to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["-c", config.as_str()];
        all.extend_from_slice(args);
        pgwarden_integration_tests::service::run("pgwardenctl", &all, &[]).expect("pgwardenctl")
    };
    let (ok, out, err) = ctl(&["pause", "--wait"]);
    assert!(ok, "{out}{err}");
    cluster.nodes[leader].stop_postgres();
    wait_until("the leader to report PostgreSQL stopped", UP, || async {
        let body = cluster.nodes[leader].get("/patroni").unwrap_or_default();
        Ok::<_, String>(body.contains("\"state\":\"stopped\"").then_some(()))
    })
    .await
    .expect("stopped");
    let (ok, out, err) = ctl(&["edit-config", "--force", "-p", "work_mem=8MB"]);
    assert!(ok, "a parameter edit with the leader's PostgreSQL down: {out}{err}");
    // A restart request starts a stopped PostgreSQL, still in pause, as
    // Patroni's does: the leader's as the primary.
    let name = cluster.nodes[leader].name.clone();
    let (ok, out, err) = ctl(&["restart", "--force", &name]);
    assert!(ok, "restart of a stopped PostgreSQL in pause: {out}{err}");
    wait_until("the leader's PostgreSQL back as the primary", UP, || async {
        Ok::<_, String>((cluster.nodes[leader].check("/primary") == 200).then_some(()))
    })
    .await
    .expect("started on request");
    cluster.nodes[leader].stop_postgres();
    let (ok, out, err) = ctl(&["resume"]);
    assert!(ok, "resume with the leader's PostgreSQL down: {out}{err}");
    let serving = cluster.wait_healthy(UP).await.expect("healthy after the resume");
    let work_mem = cluster.nodes[serving].psql("show work_mem").expect("psql");
    assert_eq!(work_mem, "8MB");
}

/// Patroni's race order with real processes, under three writers: the more
/// advanced WAL position wins and `failover_priority` only breaks a tie
/// (session 26; before, a higher priority within `maximum_lag_on_failover`
/// went first, losing the commits only the other replica had). node2 has
/// the higher priority but its WAL receiver is frozen while the writers go
/// on, so node3 holds WAL node2 lacks (well within the lag limit) when the
/// primary's node is lost: node3 takes over, node2 says why in Patroni's
/// words, and it follows node3 once thawed. Never two writable nodes.
#[tokio::test]
async fn a_more_advanced_replica_wins_the_race_over_a_lagging_one_of_higher_priority() {
    let tags = |i: usize| if i == 2 { "tags:\n  failover_priority: 3\n".to_string() } else { String::new() };
    let mut loaded = loaded(ClusterSpec::nodes(3).node_yaml(tags)).await;
    let leader = loaded.leader;
    assert_eq!(leader, 0, "node1 bootstraps (it starts first)");
    let (preferred, advanced) = (1, 2);
    let receiver: i32 = loaded.cluster.nodes[preferred]
        .psql("select pid from pg_stat_wal_receiver")
        .expect("walreceiver pid")
        .parse()
        .expect("a pid");
    let signal = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(receiver), signal);
    signal(nix::sys::signal::Signal::SIGSTOP).expect("freeze node2's WAL receiver");
    let frozen = Instant::now();
    let received = |i: usize| {
        let text = loaded.cluster.nodes[i].psql("select pg_last_wal_receive_lsn()").unwrap_or_default();
        text.trim().parse::<ha_core::Lsn>().map(|lsn| lsn.0).unwrap_or_default()
    };
    loaded.wait_writes_after(frozen).await.expect("the writers write on");
    let ahead = wait_until("node3 to receive WAL that node2 lacks", UP, || async {
        let (a, p) = (received(advanced), received(preferred));
        if a > p { Ok(Some(a - p)) } else { Err(format!("node3 at {a}, node2 at {p}")) }
    })
    .await
    .expect("node3 ahead");
    assert!(ahead < 1 << 20, "within maximum_lag_on_failover: node2 could lead but for its position ({ahead} bytes)");
    let lost = Instant::now();
    Fault::NodeLost.inject(&mut loaded.cluster, leader).await.expect("lose the primary's node");
    let new_leader = loaded.cluster.wait_primary(UP).await.expect("a replica takes over");
    println!("node3 {ahead} bytes ahead of node2; new /primary after {:?}", lost.elapsed());
    assert_eq!(new_leader, advanced, "the more advanced node3 wins over node2's higher failover_priority");
    let said = wait_until("node2 to say why it does not lead", UP, || async {
        let log = loaded.cluster.nodes[preferred].agent_log();
        Ok::<_, String>(
            log.lines().find(|l| l.contains("Wal position of node3 is ahead of my wal position")).map(String::from),
        )
    })
    .await
    .expect("Patroni's words in node2's log");
    println!("node2: {said}");
    signal(nix::sys::signal::Signal::SIGCONT).expect("thaw node2's WAL receiver");
    Fault::NodeLost.recover(&mut loaded.cluster, leader).await.expect("the old primary's services");
    assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("all three healthy"), advanced);
    // Asynchronous replication: the old primary's last commits may be lost;
    // never two writable nodes, and only node1 then node3 wrote.
    let report = loaded.finish_asynchronous("the primary lost, node2 lagging").await;
    assert_eq!(report.probes.writers(), [leader, advanced], "the nodes that accepted writes, in order");
}

/// A primary whose agent stops cleanly has sent its replicas every WAL
/// record by the time it gives the key up, so the race compares equal
/// positions and the highest `failover_priority` takes over, every time:
/// four handovers under three writers (priorities 1, 2, 3 on node1..node3:
/// node3, node2, node3, node2). Each side of the race compares looks of
/// PostgreSQL begun after the key went; with a node's own look up to 100 ms
/// old and a peer's up to 50 ms, two replicas once compared positions from
/// either side of the old primary's shutdown checkpoint and the lower
/// priority won (Patroni's `priority_failover` scenario). Never two
/// writable nodes, and no acknowledged row lost.
#[tokio::test]
async fn a_clean_stop_hands_the_key_to_the_highest_priority_replica_every_time() {
    let tags = |i: usize| format!("tags:\n  failover_priority: {}\n", i + 1);
    let mut loaded = loaded(ClusterSpec::nodes(3).node_yaml(tags)).await;
    let mut leader = loaded.leader;
    assert_eq!(leader, 0, "node1 bootstraps (it starts first)");
    for round in 1..=4 {
        let stopped = Instant::now();
        assert!(loaded.cluster.nodes[leader].stop_agent(), "node{} stops cleanly", leader + 1);
        // The highest priority among the two left: the higher index.
        let expected = (0..3).filter(|&i| i != leader).max().expect("two replicas");
        let new_leader = loaded.cluster.wait_primary(UP).await.expect("a replica takes over");
        println!(
            "round {round}: node{} stopped, node{} primary after {:?}",
            leader + 1,
            new_leader + 1,
            stopped.elapsed()
        );
        let other = (0..3).find(|&i| i != leader && i != expected).expect("the other replica");
        assert_eq!(
            new_leader,
            expected,
            "round {round}: node{} of priority {} should have won; node{}'s log:\n{}",
            expected + 1,
            expected + 1,
            other + 1,
            loaded.cluster.nodes[other].agent_log()
        );
        loaded.cluster.nodes[leader].start_agent().expect("the stopped node's agent again");
        assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("all three healthy"), new_leader);
        loaded.wait_writes_after(Instant::now()).await.expect("the writers write on");
        leader = new_leader;
    }
    let report = loaded.finish_asynchronous("four clean stops of the primary").await;
    assert!(report.lost.is_empty(), "a clean stop sends every record first: {:?}", report.lost);
}

#[tokio::test]
async fn a_candidate_lagging_beyond_maximum_lag_on_failover_is_never_promoted() {
    // node2 may never lead; node3 is made to lag: nobody may take over.
    let tags = |i| if i == 2 { "tags:\n  nofailover: true\n".into() } else { String::new() };
    let mut cluster = healthy(ClusterSpec::nodes(3).node_yaml(tags)).await;
    let leader = cluster.wait_primary(UP).await.expect("a primary");
    assert_eq!(leader, 0);
    let lagging = &cluster.nodes[2];
    let receiver: i32 =
        lagging.psql("select pid from pg_stat_wal_receiver").expect("walreceiver pid").parse().expect("a pid");
    let stop = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(receiver), signal);
    let optime = || cluster.optime();
    let before = optime().await;
    stop(nix::sys::signal::Signal::SIGSTOP).expect("freeze node3's WAL receiver");
    // About 8 MB of WAL, beyond the default maximum_lag_on_failover of 1 MB.
    cluster.nodes[0]
        .psql("create table filler as select g, repeat('x', 500) as pad from generate_series(1, 15000) g")
        .expect("write WAL");
    wait_until("the leader to publish its new position", Duration::from_secs(10), || async {
        Ok::<_, String>((optime().await > before + (7 << 20)).then_some(()))
    })
    .await
    .expect("status.optime moved by the written WAL");
    cluster.nodes[0].kill_node();
    // Longer than the ttl: the key is long gone, and still nobody leads.
    tokio::time::sleep(Duration::from_secs(16)).await;
    for i in [1, 2] {
        assert_eq!(cluster.nodes[i].check("/primary"), 503, "{} must not lead", cluster.nodes[i].name);
    }
    let reason = cluster.nodes[2].get("/patroni").unwrap_or_default();
    let _ = stop(nix::sys::signal::Signal::SIGCONT);
    assert!(reason.contains("behind the last leader"), "node3 says why it does not take over: {reason}");
}

#[tokio::test]
async fn a_frozen_agent_is_fenced_before_a_replica_is_promoted() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let direct = direct_writer(&loaded.cluster, leader).await;
    Fault::AgentFrozen.inject(&mut loaded.cluster, leader).await.expect("freeze");
    let cluster = &loaded.cluster;
    let (new_leader, _) = assert_one_writer_through_failover(cluster, leader, direct, "frozen agent").await;
    assert!(cluster.nodes[leader].health_log().contains("fencing"), "the fencer stopped the old primary");
    assert!(
        cluster.nodes[leader].postmaster_pid().is_none_or(|pid| !pgwarden_integration_tests::process::is_running(pid))
    );
    // The alert rules' signal that the fencer fired (deploy/monitoring/).
    let metrics = cluster.nodes[leader].get("/metrics").expect("the old primary's metrics");
    let fences = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgwarden_fencer_fences_total{").and_then(|l| l.split_once("} ")))
        .and_then(|(_, n)| n.trim().parse::<u64>().ok());
    assert_eq!(fences, Some(1), "{metrics}");
    // Thawed, the old agent finds its key gone and rejoins as a replica.
    Fault::AgentFrozen.recover(&mut loaded.cluster, leader).await.expect("thaw");
    assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("healthy again"), new_leader);
    loaded.finish("frozen agent", &[leader, new_leader]).await;
}

#[tokio::test]
async fn a_primary_cut_off_from_etcd_fences_itself_before_a_replica_is_promoted() {
    // Each node reaches etcd only through its own proxy, which the test can cut.
    let mut loaded = loaded(ClusterSpec::nodes(3).behind_proxies()).await;
    let leader = loaded.leader;
    let direct = direct_writer(&loaded.cluster, leader).await;
    Fault::EtcdCut.inject(&mut loaded.cluster, leader).await.expect("cut");
    let cluster = &loaded.cluster;
    let (new_leader, direct) =
        assert_one_writer_through_failover(cluster, leader, direct, "etcd cut from the primary").await;
    // The ordered fence (issue 20, finding 12): before its deadline the old
    // primary stopped acknowledging commits, and the new primary's timeline
    // begins past that point, so every commit acknowledged on the old one,
    // directly or through HAProxy, is on the new one.
    let log = cluster.nodes[leader].agent_log();
    let held = held_lsn(&log).unwrap_or_else(|| panic!("the old primary never held acknowledgements:\n{log}"));
    let history = cluster.nodes[new_leader].psql("select pg_read_file('pg_wal/00000002.history')").expect("history");
    let switch: ha_core::Lsn = history.split('\t').nth(1).expect("a switch point").parse().expect("an LSN");
    println!("etcd cut from the primary: acknowledgements held at {held}, the new timeline starts at {switch}");
    assert!(switch >= held, "the new timeline starts at {switch}, before the hold at {held}");
    let missing = missing_rows(loaded.write_port(), SUPERUSER_PASSWORD, "direct", &direct.ids()).await.expect("read");
    assert!(missing.is_empty(), "rows acknowledged by the old primary lost: {missing:?}");
    // Back on etcd, the old primary rejoins as a replica.
    Fault::EtcdCut.recover(&mut loaded.cluster, leader).await.expect("restore");
    assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("healthy again"), new_leader);
    loaded.finish("etcd cut from the primary", &[leader, new_leader]).await;
}

#[tokio::test]
async fn the_primarys_agent_killed_alone_is_fenced_before_a_replica_is_promoted() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let direct = direct_writer(&loaded.cluster, leader).await;
    // SIGKILL: PostgreSQL keeps running, nothing renews the key any more.
    Fault::AgentKilled.inject(&mut loaded.cluster, leader).await.expect("kill");
    let (new_leader, _) =
        assert_one_writer_through_failover(&loaded.cluster, leader, direct, "agent killed alone").await;
    assert!(loaded.cluster.nodes[leader].health_log().contains("fencing"), "the fencer stopped the old primary");
    Fault::AgentKilled.recover(&mut loaded.cluster, leader).await.expect("restart the agent");
    assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("healthy again"), new_leader);
    loaded.finish("agent killed alone", &[leader, new_leader]).await;
}

/// The postmaster's `startup` process (crash recovery) of the postmaster
/// in `data_dir`, if one runs.
fn startup_process(postmaster: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let ppid: i32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).ok()?;
        (ppid == postmaster && cmdline.contains("startup")).then_some(pid)
    })
}

/// Patroni parity (issue 23): `master_start_timeout: 0` (the old name of
/// `primary_start_timeout`) fails over at once when the primary's
/// PostgreSQL crashes. The old primary gives its key up and, back read-only
/// with the most WAL, leaves the race to the replicas (it used to take the
/// key back 0.3 s later, so no replica was ever promoted); it then rejoins
/// the new leader. Three writers through HAProxy and a write probe on every
/// node throughout. In synchronous mode, where no acknowledged row may be
/// lost: asynchronously a row the primary acknowledged just before the
/// crash may not have reached the replica that takes over at once (as in
/// Patroni), so zero loss is not promised there.
#[tokio::test]
async fn master_start_timeout_zero_fails_over_at_once_after_a_crash() {
    init_logging();
    let cluster = PgwardenCluster::start(3).await.expect("start");
    cluster.wait_primary(UP).await.expect("primary");
    cluster
        .patch_config(serde_json::json!({"master_start_timeout": 0, "synchronous_mode": true}))
        .await
        .expect("write config");
    wait_until("a synchronous standby", UP, || async {
        let sync = cluster.get_key("sync").await.map_err(|e| e.to_string())?.unwrap_or_default();
        Ok::<_, String>(sync.contains("\"sync_standby\":\"").then_some(()))
    })
    .await
    .expect("a synchronous standby");
    let mut loaded = LoadedCluster::load(cluster, 3).await.expect("load");
    let leader = loaded.leader;
    Fault::PostgresKilled.inject(&mut loaded.cluster, leader).await.expect("kill");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let cluster = &loaded.cluster;
    let new_leader = wait_until("a replica to take over", UP, || async {
        let primaries: Vec<usize> = (0..3).filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] if *one != leader => Ok(Some(*one)),
            _ => Err(format!("primaries {primaries:?}")),
        }
    })
    .await
    .expect("a replica leads");
    assert!(others.contains(&new_leader));
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy again"), new_leader);
    loaded.finish("master_start_timeout 0", &[leader, new_leader]).await;
}

/// Crash recovery longer than `primary_start_timeout` (issue 20, finding 4):
/// the primary's PostgreSQL is killed, the agent restarts it in place, and
/// its crash recovery is held (its `startup` process stopped, as a slow disk
/// would). `pg_ctl start` gives up, but the postmaster would finish recovery
/// as a writable primary: the agent must stop it before it releases the key.
/// Three writers go through HAProxy and every node is probed for
/// writability; recovery is let go once a primary runs again.
#[tokio::test]
async fn a_primary_still_in_crash_recovery_past_primary_start_timeout_is_stopped_before_a_replica_takes_over() {
    init_logging();
    let cluster = ClusterSpec::nodes(3).start().await.expect("start");
    let leader = cluster.wait_primary(UP).await.expect("primary");
    cluster.patch_config(serde_json::json!({"primary_start_timeout": 2})).await.expect("write config");
    // WAL that crash recovery must replay: no checkpoint covers it.
    cluster.nodes[leader]
        .psql("checkpoint; create table filler as select g, repeat('x', 600) as pad from generate_series(1, 60000) g")
        .expect("filler");
    let mut loaded = LoadedCluster::load(cluster, 3).await.expect("the load");
    assert_eq!(loaded.leader, leader);
    let old = loaded.cluster.nodes[leader].postmaster_pid().expect("postmaster");
    Fault::PostgresKilled.inject(&mut loaded.cluster, leader).await.expect("kill");
    let setup = &loaded.cluster;
    // Catch the restarted postmaster's recovery and hold it (polled every
    // 2 ms: recovery of the filler's WAL takes far longer).
    let node = &setup.nodes[leader];
    let deadline = Instant::now() + Duration::from_secs(30);
    let startup = loop {
        let restarted = node.postmaster_pid().filter(|pid| *pid != old);
        if let Some(pid) = restarted.and_then(startup_process) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).expect("stop");
            break pid;
        }
        assert!(Instant::now() < deadline, "no crash recovery seen on {}: {}", node.name, node.agent_log());
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // A primary again: a replica, or the old primary itself once its stuck
    // postmaster is gone (it then has the most WAL of all and may win the race).
    let new_leader = wait_until("a primary after the stuck one was stopped", UP, || async {
        let primaries: Vec<usize> = (0..3).filter(|&i| setup.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] => Ok(Some(*one)),
            _ => Err(format!("{primaries:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", setup.nodes[leader].agent_log()));
    // Recovery goes on (if the process is still there, the stuck postmaster was not stopped).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(startup), nix::sys::signal::Signal::SIGCONT);
    // Every other node streams from the new primary (the old one, if it
    // lost the race, only as a replica).
    wait_until("every other node streaming from the new primary", UP, || async {
        let lagging: Vec<usize> =
            (0..3).filter(|&i| i != new_leader && setup.nodes[i].check("/replica") != 200).collect();
        if lagging.is_empty() { Ok(Some(())) } else { Err(format!("not streaming: {lagging:?}")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", setup.nodes[leader].agent_log()));
    let log = setup.nodes[leader].agent_log();
    assert!(log.contains("stop it before releasing the leader key"), "{log}");
    let name = (setup.nodes[leader].name.clone(), setup.nodes[new_leader].name.clone());
    // Asynchronous mode: rows the new primary lacks are reported, not
    // asserted; never two writable nodes at once.
    let report = loaded.finish_asynchronous("crash recovery held").await;
    println!("crash recovery held on {}: new primary {}; {} rows lost", name.0, name.1, report.lost_rows);
}

/// Fence mechanics (issue 20, finding 12): the primary's agent frozen and
/// its postmaster frozen too (SIGSTOP: `pg_ctl stop` cannot stop it). At the
/// deadline the fencer must kill the postmaster and every one of its
/// processes (a backend outlives a killed postmaster and could still
/// acknowledge a commit), check that they are gone, and only then say
/// "fenced"; a replica then takes over, and no two nodes ever accept writes.
/// Three writers go through HAProxy throughout: their backends on the old
/// primary are among the processes the fence must kill.
#[tokio::test]
async fn a_fence_that_pg_ctl_cannot_do_kills_every_postgres_process_and_checks() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let cluster = &loaded.cluster;
    // The writers' backends are among the processes the fence must kill.
    let postmaster = cluster.nodes[leader].postmaster_pid().expect("postmaster");
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == postmaster).then_some(pid)
        })
        .collect();
    assert!(!children.is_empty(), "the postmaster has processes");
    cluster.nodes[leader].signal_agent(nix::sys::signal::Signal::SIGSTOP);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), nix::sys::signal::Signal::SIGSTOP).expect("stop");
    let new_leader = wait_until("a replica to take over", UP, || async {
        let primaries: Vec<usize> = (0..3).filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] if *one != leader => Ok(Some(*one)),
            _ => Err(format!("{primaries:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", cluster.nodes[leader].health_log()));
    let log = cluster.nodes[leader].health_log();
    assert!(log.contains("killing its processes and the postmaster"), "{log}");
    assert!(log.contains("fenced: the postmaster is gone"), "{log}");
    let alive: Vec<i32> = children
        .iter()
        .chain([&postmaster])
        .copied()
        .filter(|&pid| pgwarden_integration_tests::process::is_running(pid))
        .collect();
    assert!(alive.is_empty(), "processes of the fenced instance still run: {alive:?}");
    cluster.nodes[leader].signal_agent(nix::sys::signal::Signal::SIGCONT);
    println!("fence by kill: new primary {}", cluster.nodes[new_leader].name);
    // Asynchronous mode: what the fenced primary acknowledged last may be
    // lost; never two writable nodes, and it wrote no more once fenced.
    let report = loaded.finish_asynchronous("fence by kill").await;
    assert_eq!(report.probes.writers(), [leader, new_leader], "the nodes that accepted writes, in order");
}

/// The 20-minute asynchronous chaos run (seed 2026120505) left a standby
/// `starting` for ever: its pages reflected WAL past where its timeline
/// ended in the new leader's history, and the new timeline's history file,
/// which its WAL receiver had fetched from the new leader before finding
/// the fork, made its data directory look as if it were on the leader's
/// timeline, so it was started as a replica instead of rewound.
/// Three nodes behind HAProxy, node `never_leads` tagged `nofailover`, node1
/// leading, with writers and probes watching.
async fn node1_leading_and_one_that_never_leads(never_leads: usize) -> LoadedCluster {
    // Its own pg_rewind options too (Patroni's `postgresql.rewind`): one it
    // may give, and one pgwarden sets itself (dropped with a warning).
    let tags = |i| {
        if i == never_leads {
            "tags:\n  nofailover: true\npostgresql:\n  rewind:\n  - no-sync\n  - dry-run\n".into()
        } else {
            String::new()
        }
    };
    let loaded = loaded(ClusterSpec::nodes(3).node_yaml(tags)).await;
    assert_eq!(loaded.leader, 0, "node1 bootstraps (it starts first)");
    loaded
}

/// Freezes node1's WAL sender to `frozen` (SIGSTOP: nothing more reaches
/// it; a frozen receiver would still find what the kernel buffered for it),
/// runs `sql` on node1 and waits until node `replayer` replayed it. Returns
/// the frozen sender's PID.
async fn write_past_a_frozen_standby(cluster: &PgwardenCluster, frozen: &str, sql: &str, replayer: usize) -> i32 {
    let sender: i32 = cluster.nodes[0]
        .psql(&format!("select pid from pg_stat_replication where application_name = '{frozen}'"))
        .expect("the frozen standby's WAL sender")
        .parse()
        .expect("a pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sender), nix::sys::signal::Signal::SIGSTOP)
        .expect("freeze node1's WAL sender");
    cluster.nodes[0].psql(sql).expect("write");
    let end = cluster.nodes[0].psql("select pg_current_wal_lsn()").expect("the primary's position");
    wait_until("the other standby to replay it", UP, || async {
        let sql = format!("select pg_last_wal_replay_lsn() >= '{end}'::pg_lsn");
        Ok::<_, String>((cluster.nodes[replayer].psql(&sql).map_err(|e| e.to_string())? == "t").then_some(()))
    })
    .await
    .expect("the other standby replays");
    sender
}

/// Kills node1 and its frozen WAL sender (stopped, it outlived its
/// postmaster) and waits for node `next` to lead; returns it.
async fn kill_the_primary_for(cluster: &mut PgwardenCluster, sender: i32, next: usize) -> usize {
    cluster.nodes[0].kill_node();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sender), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the frozen WAL sender");
    wait_until("the standby ahead to take over", UP, || async {
        Ok::<_, String>((cluster.nodes[next].check("/primary") == 200).then_some(next))
    })
    .await
    .expect("the standby ahead leads")
}

#[tokio::test]
async fn a_standby_whose_data_passed_the_fork_is_rewound_even_with_the_new_timelines_history() {
    // node2 never leads, so the member ahead must follow; node3 lags.
    let mut loaded = node1_leading_and_one_that_never_leads(2).await;
    let cluster = &mut loaded.cluster;
    // WAL node3 never gets, replayed by node2 and checkpointed there (a
    // restartpoint flushes its pages: its minimum recovery point passes
    // where node3 will fork).
    let sender = write_past_a_frozen_standby(
        cluster,
        "node3",
        "create table ahead as select g from generate_series(1, 1000) g; checkpoint",
        1,
    )
    .await;
    cluster.nodes[1].psql("checkpoint").expect("a restartpoint on node2");
    cluster.nodes[1].kill_node();
    let new_leader = kill_the_primary_for(cluster, sender, 2).await;
    // What node2's WAL receiver fetched in the chaos run: the new
    // timeline's history file, in its pg_wal beside WAL that passed the fork.
    let history = "pg_wal/00000002.history";
    std::fs::copy(cluster.nodes[2].data_dir().join(history), cluster.nodes[1].data_dir().join(history))
        .expect("copy the history file");
    let postgres = pgwarden_integration_tests::process::postgres_user().expect("the postgres user");
    nix::unistd::chown(&cluster.nodes[1].data_dir().join(history), Some(postgres.uid), Some(postgres.gid))
        .expect("chown the history file");
    cluster.nodes[1].start_agent().expect("restart node2's agent");
    cluster.nodes[1].start_health().expect("restart node2's health API");
    assert_eq!(cluster.wait_healthy_among(&[1, 2], UP).await.expect("node2 streams from node3"), new_leader);
    let log = cluster.nodes[1].agent_log();
    assert!(log.contains("past where timeline 1 ended"), "node2 says why it rewinds:\n{log}");
    assert!(log.contains("rewound onto the leader's timeline"), "node2 was rewound:\n{log}");
    assert!(log.contains(r#"options=["--no-sync"]"#), "postgresql.rewind reached pg_rewind, dry-run dropped:\n{log}");
    assert!(cluster.nodes[1].psql("select to_regclass('ahead') is null").expect("read") == "t", "rewound past it");
    let marker = cluster.nodes[1].data_dir().with_file_name("data.pgwarden.rewinding");
    assert!(!marker.exists(), "a finished pg_rewind leaves no marker");
    loaded.finish_asynchronous("a standby past the fork (asynchronous, node3's receiver frozen)").await;
}

/// The 2-minute synchronous chaos run's stuck node (seed 20261205): a
/// standby killed in recovery, short of where the new leader's timeline
/// forked, must rejoin without a WAL record of its own. Left to pg_rewind,
/// its crash recovery in single-user mode ended the recovery with a
/// checkpoint at the end of the local WAL; pg_rewind then found nothing to
/// rewind, and the standby never read past that record again ("record with
/// incorrect prev-link") nor streamed.
#[tokio::test]
async fn a_standby_killed_behind_the_fork_rejoins_the_new_timeline_without_a_record_of_its_own() {
    // node2 never leads: node3, which has more WAL, takes over.
    let mut loaded = node1_leading_and_one_that_never_leads(1).await;
    let cluster = &mut loaded.cluster;
    // node2 stays behind while node3 replays on.
    let sender = write_past_a_frozen_standby(
        cluster,
        "node2",
        "create table after as select g from generate_series(1, 1000) g",
        2,
    )
    .await;
    // Killed in recovery: pg_controldata says `in archive recovery`.
    cluster.nodes[1].kill_node();
    let new_leader = kill_the_primary_for(cluster, sender, 2).await;
    cluster.nodes[1].start_agent().expect("restart node2's agent");
    cluster.nodes[1].start_health().expect("restart node2's health API");
    assert_eq!(cluster.wait_healthy_among(&[1, 2], UP).await.expect("node2 streams from node3"), new_leader);
    let log = cluster.nodes[1].agent_log();
    assert!(log.contains("a standby killed in recovery"), "node2 stops cleanly before pg_rewind:\n{log}");
    assert_eq!(cluster.nodes[1].psql("select count(*) from after").expect("read"), "1000", "node2 has node3's WAL");
    loaded.finish_asynchronous("a standby killed behind the fork (asynchronous)").await;
}

/// The 20-minute asynchronous chaos run's second stuck node (seed
/// 2026120505, replayed): pg_rewind lost its source midway and left the
/// timeline history files it had begun to copy empty; every later pg_rewind
/// failed ("could not find common ancestor"), every second, for ever. A
/// rewind that stopped midway leaves its marker; the agent then moves the
/// data directory aside (kept) and clones afresh.
#[tokio::test]
async fn a_data_directory_a_rewind_left_half_copied_is_moved_aside_and_cloned_afresh() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let cluster = &mut loaded.cluster;
    cluster.nodes[leader].psql("create table before_the_rewind as select 1 as x").expect("write");
    let replica = (leader + 1) % 3;
    let node = &mut cluster.nodes[replica];
    node.stop_agent();
    node.stop_postgres();
    // What a pg_rewind stopped midway leaves beside the data directory.
    let marker = node.data_dir().with_file_name("data.pgwarden.rewinding");
    std::fs::write(&marker, "node1").expect("write the marker");
    node.start_agent().expect("restart the agent");
    cluster.wait_healthy(UP).await.expect("the replica streams again");
    let node = &cluster.nodes[replica];
    assert!(!marker.exists(), "the marker is cleared");
    let parent = node.data_dir().parent().expect("parent").to_path_buf();
    let aside = std::fs::read_dir(&parent)
        .expect("list")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("data.rewind-interrupted."));
    assert!(aside, "the half-rewound directory is kept aside");
    assert!(node.agent_log().contains("stopped midway"), "the agent says why");
    assert_eq!(node.psql("select x from before_the_rewind").expect("read"), "1", "cloned afresh");
    loaded.finish("half-rewound replica", &[leader]).await;
}

/// `failsafe_mode` on a cluster of one, as Patroni's own `dcs_failsafe_mode`
/// scenario runs it: with etcd gone the lone leader has nobody to ask and
/// nobody who could take over, so it keeps writing past its ttl, and
/// `/primary` says `failsafe_mode_is_active`. Once etcd is back it leads on.
#[tokio::test]
async fn failsafe_mode_keeps_a_lone_leader_writing_while_etcd_is_stopped() {
    lone_leader_through_an_etcd_outage(false).await;
}

/// The same with etcd frozen (SIGSTOP) rather than killed, as Patroni's own
/// scenario takes the DCS down: its connections stay open, and nothing
/// answers on them.
#[tokio::test]
async fn failsafe_mode_keeps_a_lone_leader_writing_while_etcd_is_frozen() {
    lone_leader_through_an_etcd_outage(true).await;
}

/// Turns `failsafe_mode` on and waits for the `failsafe` key to list node1.
async fn failsafe_mode_on_listing_node1(cluster: &PgwardenCluster) {
    cluster.patch_config(serde_json::json!({"failsafe_mode": true})).await.expect("failsafe_mode on");
    wait_until("the failsafe key to list node1", UP, || async {
        let failsafe = cluster.get_key("failsafe").await.map_err(|e| e.to_string())?.unwrap_or_default();
        Ok::<_, String>(failsafe.contains("\"node1\"").then_some(()))
    })
    .await
    .expect("failsafe key");
}

/// An idle lone leader (nothing changes in etcd, so the HA loop keeps its
/// view of the cluster from the cache) at ttl 20, as Patroni's acceptance
/// scenario runs it: etcd frozen, `failsafe_mode_is_active` shows within
/// the scenario's 12 s, and `/patroni`'s `dcs_last_seen` stays at the last
/// answer from etcd (a view from the cache is not one).
#[tokio::test]
async fn failsafe_mode_counts_etcd_gone_from_its_last_answer_not_from_a_view_kept_in_the_cache() {
    init_logging();
    let cluster = ClusterSpec::nodes(1).ttl(20).start().await.expect("start");
    cluster.wait_primary(UP).await.expect("a primary");
    failsafe_mode_on_listing_node1(&cluster).await;
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    cluster.etcd.pause(0, true);
    let frozen_at = unix_now();
    wait_until("failsafe_mode_is_active on /primary", Duration::from_secs(12), || async {
        let body = cluster.nodes[0].get("/primary").unwrap_or_default();
        Ok::<_, String>(body.contains("\"failsafe_mode_is_active\":true").then_some(()))
    })
    .await
    .expect("failsafe active within Patroni's 12 s");
    let patroni: serde_json::Value =
        serde_json::from_str(&cluster.nodes[0].get("/patroni").expect("/patroni")).expect("JSON");
    let seen = patroni["dcs_last_seen"].as_u64().expect("dcs_last_seen");
    assert!(seen <= frozen_at, "dcs_last_seen {seen} is after etcd froze at {frozen_at}: {patroni}");
    assert_eq!(cluster.nodes[0].check("/primary"), 200, "still the primary");
    cluster.etcd.pause(0, false);
}

async fn lone_leader_through_an_etcd_outage(frozen: bool) {
    init_logging();
    let mut cluster = PgwardenCluster::start(1).await.expect("start");
    cluster.wait_primary(UP).await.expect("a primary");
    failsafe_mode_on_listing_node1(&cluster).await;
    let writer = direct_writer(&cluster, 0).await;
    if frozen {
        cluster.etcd.pause(0, true);
    } else {
        cluster.etcd.kill(0);
    }
    let gone = Instant::now();
    let ttl = Duration::from_secs(10);
    writer.wait_ack_after(gone + 3 * ttl, UP).await.expect("writes go on three ttls after etcd went");
    assert_eq!(cluster.nodes[0].check("/primary"), 200, "still the primary for HAProxy");
    let body = cluster.nodes[0].get("/primary").expect("/primary's status");
    assert!(body.contains("\"failsafe_mode_is_active\":true"), "{body}");
    assert!(cluster.nodes[0].agent_log().contains("every member accepts: running on"), "the agent says why");
    if frozen {
        cluster.etcd.pause(0, false);
    } else {
        cluster.etcd.restart(0).await.expect("etcd back");
    }
    wait_until("node1 to lead with etcd again", UP, || async {
        let body = cluster.nodes[0].get("/primary").unwrap_or_default();
        let leads = cluster.nodes[0].check("/primary") == 200 && !body.contains("failsafe_mode_is_active");
        Ok::<_, String>(leads.then_some(()))
    })
    .await
    .expect("node1 leads, no longer in failsafe");
    let report = writer.stop().await;
    println!(
        "lone leader, etcd {} for 30 s: {} writes acknowledged",
        if frozen { "frozen" } else { "stopped" },
        report.acked.len()
    );
}

/// `failsafe_mode` (issue 23) when etcd is lost by the primary alone, the
/// case where a promise is all that keeps the replicas (which still reach
/// etcd) from racing: synchronous mode, three writers through HAProxy and
/// a write probe on every node. The primary goes on writing well past the
/// ttl on its replicas' promises while its key expires in etcd; nobody else
/// takes the key. Back on etcd it finds its lease gone (etcd's answer, not a
/// failure to retry) and fences at once; then it resumes as the last primary
/// or, once its promise ends, the synchronous standby takes over, whichever
/// takes the key first. Never two writable nodes, no acknowledged row lost.
#[tokio::test]
async fn failsafe_mode_keeps_a_primary_cut_off_from_etcd_alone_and_then_hands_over_safely() {
    init_logging();
    let cluster = ClusterSpec::nodes(3).behind_proxies().start().await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    cluster
        .patch_config(serde_json::json!({"failsafe_mode": true, "synchronous_mode": true}))
        .await
        .expect("failsafe and synchronous mode on");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    wait_until("the failsafe key to list every member, and a synchronous standby", UP, || async {
        let failsafe = cluster.get_key("failsafe").await.map_err(|e| e.to_string())?.unwrap_or_default();
        let sync = cluster.get_key("sync").await.map_err(|e| e.to_string())?.unwrap_or_default();
        let listed = cluster.nodes.iter().all(|n| failsafe.contains(&format!("\"{}\"", n.name)));
        if listed && sync.contains("\"sync_standby\":\"") { Ok(Some(())) } else { Err(format!("{failsafe} {sync}")) }
    })
    .await
    .expect("failsafe key and sync standby");
    let mut loaded = LoadedCluster::load(cluster, 3).await.expect("load");
    assert_eq!(loaded.leader, leader);
    Fault::EtcdCut.inject(&mut loaded.cluster, leader).await.expect("cut");
    let cut = Instant::now();
    let ttl = Duration::from_secs(10);
    loaded.wait_writes_after(cut + 3 * ttl).await.expect("writes go on three ttls after the cut");
    let cluster = &loaded.cluster;
    assert_eq!(cluster.get_key("leader").await.expect("read the leader key"), None, "the key expired in etcd");
    for other in (0..3).filter(|&i| i != leader) {
        assert_eq!(cluster.nodes[other].check("/primary"), 503, "node {other} took over");
    }
    cluster.proxies[leader].restore();
    let restored = Instant::now();
    // Back on etcd, the old primary finds its lease gone and fences; then
    // whoever takes the key first leads: the old primary itself (the last
    // primary, nothing promoted since: it resumes on its timeline) or, once
    // its promise ends, the synchronous standby.
    wait_until("the old primary to see its lease gone", UP, || async {
        Ok::<_, String>(cluster.nodes[leader].agent_log().contains("expired or was revoked").then_some(()))
    })
    .await
    .expect("lease loss seen");
    let new_leader = cluster.wait_healthy(UP).await.expect("healthy again");
    println!(
        "failsafe, etcd cut from the primary alone: writes went on; node{} leads {:?} after the cut healed",
        new_leader + 1,
        restored.elapsed()
    );
    let log = cluster.nodes[leader].agent_log();
    assert!(log.contains("every member accepts: running on"), "{log}");
    loaded.finish("failsafe, etcd cut from the primary alone", &[leader, new_leader]).await;
}

/// Patroni's "crashed primary demotes after failed attempt to start": the
/// primary's PostgreSQL crashes and its restart in place fails outright (a
/// setting PostgreSQL refuses, as Patroni's behave scenario spoils
/// `postgresql.auto.conf`). The key goes at once, not after
/// `primary_start_timeout` (300 s here, longer than the wait below), and a
/// replica takes over; the old primary wrote nothing after the promotion.
#[tokio::test]
async fn a_primary_whose_restart_fails_outright_hands_over_without_waiting_for_the_timeout() {
    let mut loaded = loaded(ClusterSpec::nodes(3)).await;
    let leader = loaded.leader;
    let cluster = &mut loaded.cluster;
    cluster.patch_config(serde_json::json!({"primary_start_timeout": 300})).await.expect("a long start timeout");
    std::fs::write(cluster.nodes[leader].data_dir().join("postgresql.auto.conf"), "foo = bar\n")
        .expect("spoil postgresql.auto.conf");
    Fault::PostgresKilled.inject(cluster, leader).await.expect("kill");
    let killed = Instant::now();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = wait_until("a replica to take over", UP, || async {
        let primaries: Vec<usize> =
            others.iter().copied().filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        if let [one] = primaries[..] { Ok(Some(one)) } else { Err(format!("{primaries:?}")) }
    })
    .await
    .expect("a replica takes over");
    println!("restart failed outright: node{} leads {:?} after the crash", new_leader + 1, killed.elapsed());
    let log = cluster.nodes[leader].agent_log();
    assert!(log.contains("failed to start as primary: release the leader key"), "{log}");
    // The old primary wrote nothing once the new one did.
    let report = loaded.finish_asynchronous("restart fails outright").await;
    assert_eq!(report.probes.writers(), [leader, new_leader], "the nodes that accepted writes, in order");
}

/// Patroni's `primary_race_backoff` (issue 23): once the leader key is
/// gone, a replica waits before it races (at least a `loop_wait`, longer
/// while WAL still arrives), says so in Patroni's words, and then takes
/// over; under several writers, never two writable nodes.
#[tokio::test]
async fn primary_race_backoff_holds_the_race_for_a_loop_and_then_fails_over() {
    let yaml = |_| "bootstrap:\n  dcs:\n    primary_race_backoff: 5\n".to_string();
    let mut loaded = loaded(ClusterSpec::nodes(3).node_yaml(yaml)).await;
    let leader = loaded.leader;
    Fault::NodeLost.inject(&mut loaded.cluster, leader).await.expect("lose the primary's node");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = loaded.cluster.wait_healthy_among(&others, UP).await.expect("a replica takes over");
    let log = loaded.cluster.nodes[new_leader].agent_log();
    assert!(
        log.contains("wal position moved since last heart beat loop") && log.contains("(primary_race_backoff)"),
        "the new leader said it held the race:\n{log}"
    );
    Fault::NodeLost.recover(&mut loaded.cluster, leader).await.expect("the old primary's services");
    assert_eq!(loaded.cluster.wait_healthy(UP).await.expect("all three healthy"), new_leader);
    let report = loaded.finish_asynchronous("primary_race_backoff").await;
    assert_eq!(report.probes.writers(), [leader, new_leader], "the nodes that accepted writes, in order");
}
