//! Day-two operations on a real 3-node cluster: parameter changes applied by
//! reload or flagged for a restart, validation that writes nothing, the
//! compare-and-swap on concurrent edits, a rolling restart under writes,
//! reinit, reload of a changed config file, and `remove`.

use std::time::{Duration, Instant};

use ha_proto::v1::{GetConfigRequest, PatchConfigRequest, ReinitializeMemberRequest};
use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use pgwarden_integration_tests::grpc;
use pgwarden_integration_tests::haproxy::deploy_config;
use pgwarden_integration_tests::service::{http_with, run, run_with_input};
use pgwarden_integration_tests::writer::{Writer, Writers, missing_rows};
use pgwarden_integration_tests::{HaProxy, PgwardenCluster, free_port, init_logging, wait_until};
use tonic::Code;

const UP: Duration = Duration::from_secs(90);

async fn cluster() -> (PgwardenCluster, usize) {
    init_logging();
    let cluster = PgwardenCluster::start(3).await.expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    (cluster, leader)
}

fn ctl(cluster: &PgwardenCluster, args: &[&str]) -> (bool, String, String) {
    let config = cluster.nodes[0].config_path().display().to_string();
    let mut all = vec!["-c", config.as_str()];
    all.extend_from_slice(args);
    run("pgwardenctl", &all, &[]).expect("run pgwardenctl")
}

/// Waits until `sql` gives `expected` on every node.
async fn everywhere(cluster: &PgwardenCluster, sql: &str, expected: &str) {
    wait_until(&format!("{sql} = {expected} on every node"), UP, || async {
        let values: Vec<String> = cluster.nodes.iter().map(|n| n.psql(sql).unwrap_or_default()).collect();
        if values.iter().all(|v| v == expected) { Ok(Some(())) } else { Err(format!("{values:?}")) }
    })
    .await
    .expect("applied everywhere");
}

fn auth() -> String {
    pgwarden_integration_tests::cluster::rest_authorization()
}

/// `PATCH /config` with `body` through node `node`'s REST API, which must
/// answer 200.
fn patch_config(cluster: &PgwardenCluster, node: usize, body: &str) {
    let (status, text) = http_with(
        "PATCH",
        cluster.nodes[node].rest_port,
        "/config",
        &[("Authorization", &auth())],
        body,
        Duration::from_secs(30),
    )
    .expect("PATCH /config");
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn parameter_changes_are_applied_by_reload_or_flagged_and_cleared_by_restart_pending() {
    let (cluster, _) = cluster().await;
    // A reloadable parameter, through the CLI: applied on every node.
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--pg", "work_mem=8MB", "--force"]);
    assert!(ok && stdout.contains("+") && stdout.contains("Configuration changed"), "{stdout}{stderr}");
    everywhere(&cluster, "show work_mem", "8MB").await;
    // And through Patroni's REST API.
    patch_config(&cluster, 1, r#"{"postgresql":{"parameters":{"work_mem":"16MB"}}}"#);
    everywhere(&cluster, "show work_mem", "16MB").await;

    // One that needs a restart: flagged, then cleared by `restart --pending`.
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--pg", "max_connections=120", "--force"]);
    assert!(ok && stdout.contains("max_connections"), "{stdout}{stderr}");
    wait_until("every member to report a restart pending", UP, || async {
        let (_, list, _) = ctl(&cluster, &["list"]);
        let marked =
            list.lines().filter(|l| l.contains("node")).filter(|l| l.split('|').any(|c| c.trim() == "*")).count();
        // Patroni's reason column: the value running and the one written.
        let reasons = list.matches("max_connections: 100->120").count();
        if marked == 3 && reasons == 3 { Ok(Some(())) } else { Err(list) }
    })
    .await
    .expect("pending_restart shown in list");
    // ... and in each member's /patroni, as Patroni's.
    wait_until("/patroni to give the reason on every member", UP, || async {
        let bodies: Vec<String> = cluster.nodes.iter().map(|n| n.get("/patroni").unwrap_or_default()).collect();
        let given = |body: &String| {
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let reason = &json["pending_restart_reason"]["max_connections"];
            reason["old_value"] == "100" && reason["new_value"] == "120"
        };
        if bodies.iter().all(given) { Ok(Some(())) } else { Err(bodies.join("\n")) }
    })
    .await
    .expect("pending_restart_reason in /patroni");
    let (ok, stdout, stderr) = ctl(&cluster, &["restart", "--pending", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("streaming after"), "progress per member: {stdout}");
    everywhere(&cluster, "show max_connections", "120").await;
    let (_, list, _) = ctl(&cluster, &["list"]);
    assert!(!list.contains("Pending restart"), "{list}");
}

#[tokio::test]
async fn invalid_edits_write_nothing_and_a_concurrent_edit_loses_the_compare_and_swap() {
    let (cluster, leader) = cluster().await;
    let before = cluster.get_key("config").await.expect("etcd").expect("config");
    // A type error and a parameter PostgreSQL would refuse.
    let (ok, _, stderr) = ctl(&cluster, &["edit-config", "--set", "ttl=soon", "--force"]);
    assert!(!ok && stderr.contains("ttl"), "{stderr}");
    let (ok, _, stderr) = ctl(&cluster, &["edit-config", "--pg", "wal_level=banana", "--force"]);
    assert!(!ok && stderr.contains("wal_level"), "{stderr}");
    let (ok, _, stderr) = ctl(&cluster, &["edit-config", "--pg", "no_such_parameter=1", "--force"]);
    assert!(!ok && stderr.contains("no such parameter"), "{stderr}");
    // The hardening probe's cases: a value that would add a line to
    // postgresql.conf on every member, garbage after a unit, a NUL byte.
    for value in
        [r#""1MB'\narchive_command = 'touch /tmp/pwned""#, r#""64MBgarbage""#, r#""10 ; x""#, r#""64MB\u0000""#]
    {
        let (status, body) = http_with(
            "PATCH",
            cluster.nodes[leader].rest_port,
            "/config",
            &[("Authorization", &auth())],
            &format!(r#"{{"postgresql":{{"parameters":{{"work_mem":{value}}}}}}}"#),
            Duration::from_secs(30),
        )
        .expect("PATCH /config");
        assert!(status == 400 || status == 422, "{value}: {status} {body}");
        assert!(body.contains("work_mem"), "{value}: {body}");
    }
    // POST /restart with a restart_pending that is no boolean: 400, no
    // restart (it restarted unconditionally); with one, also written as
    // Patroni's clients write it ("yes", "True"), and nothing pending:
    // Patroni's 503.
    let started = cluster.nodes[leader].psql("select pg_postmaster_start_time()").expect("psql");
    for (body, expected) in [
        (r#"{"restart_pending":"banana"}"#, 400),
        (r#"{"restart_pending":"yes"}"#, 503),
        (r#"{"restart_pending":"True"}"#, 503),
        (r#"{"restart_pending":true}"#, 503),
    ] {
        let (status, text) = http_with(
            "POST",
            cluster.nodes[leader].rest_port,
            "/restart",
            &[("Authorization", &auth())],
            body,
            Duration::from_secs(60),
        )
        .expect("POST /restart");
        assert_eq!(status, expected, "{body}: {text}");
    }
    assert_eq!(cluster.nodes[leader].psql("select pg_postmaster_start_time()").expect("psql"), started, "no restart");
    // A standby_cluster with nothing to follow (no host, no restore_command).
    let (ok, _, stderr) = ctl(&cluster, &["edit-config", "--set", "standby_cluster.port=5433", "--force"]);
    assert!(!ok && stderr.contains("standby_cluster") && stderr.contains("restore_command"), "{stderr}");
    let (ok, _, stderr) = ctl(&cluster, &["edit-config", "--pg", "shared_buffers=5min", "--force"]);
    assert!(!ok && stderr.contains("shared_buffers"), "{stderr}");
    assert_eq!(cluster.get_key("config").await.expect("etcd").expect("config"), before, "nothing written");
    let conf = std::fs::read_to_string(cluster.nodes[leader].data_dir().join("postgresql.conf")).expect("conf");
    assert!(!conf.contains("archive_command") && !conf.contains("garbage"), "{conf}");

    // Two editors read the same revision; the second loses.
    let mut client = grpc::controller(cluster.nodes[leader].controller_url()).await.expect("controller");
    let revision = client.get_config(GetConfigRequest {}).await.expect("get").into_inner().revision;
    let patch = |json: &str| PatchConfigRequest { patch_json: json.into(), expected_revision: revision };
    client.patch_config(patch(r#"{"maximum_lag_on_failover": 2097152}"#)).await.expect("first edit wins");
    let lost = client.patch_config(patch(r#"{"maximum_lag_on_failover": 4194304}"#)).await.expect_err("second loses");
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert!(lost.message().contains("changed since revision"), "{lost:?}");
    let now = cluster.get_key("config").await.expect("etcd").expect("config");
    assert!(now.contains("2097152") && !now.contains("4194304"), "{now}");

    // The timing rule broken (ttl 10 < loop_wait 5 + 2 * retry_timeout 5):
    // accepted with a warning, as Patroni accepts it; every node reads it
    // corrected the same way (loop_wait 1, retry_timeout 4) and goes on.
    let (ok, _, stderr) =
        ctl(&cluster, &["edit-config", "--set", "loop_wait=5", "--set", "retry_timeout=5", "--force"]);
    assert!(ok && stderr.contains("warning") && stderr.contains("loop_wait"), "{stderr}");
    let now = cluster.get_key("config").await.expect("etcd").expect("config");
    assert!(now.contains("\"retry_timeout\":5"), "written as given, as Patroni writes it: {now}");
    cluster.wait_healthy(UP).await.expect("healthy with the corrected timings");

    // Pause through the REST config: shown everywhere, /liveness stays 200.
    patch_config(&cluster, leader, r#"{"pause": true}"#);
    wait_until("every member to report the pause", UP, || async {
        let paused =
            cluster.nodes.iter().filter(|n| n.get("/patroni").is_some_and(|b| b.contains("\"pause\":true"))).count();
        if paused == 3 { Ok(Some(())) } else { Err(format!("{paused} paused")) }
    })
    .await
    .expect("paused");
    assert!(cluster.nodes.iter().all(|n| n.check("/liveness") == 200));
    let (_, list, _) = ctl(&cluster, &["list"]);
    assert!(list.contains("Maintenance mode: on"), "{list}");
}

#[tokio::test]
async fn a_rolling_restart_with_a_switchover_keeps_writes_going() {
    let (cluster, leader) = cluster().await;
    let (write_port, read, stats) = (free_port(), free_port(), free_port());
    let config = deploy_config(write_port, read, stats, &cluster.backends());
    let _haproxy = HaProxy::start(&config, &[write_port, read, stats]).await.expect("haproxy");
    let writer =
        Writer::start(write_port, SUPERUSER_PASSWORD, "acked", Duration::from_millis(5)).await.expect("writer");
    writer.wait_ack_after(Instant::now(), UP).await.expect("writes");
    let started_at: Vec<String> =
        cluster.nodes.iter().map(|n| n.psql("select pg_postmaster_start_time()").expect("psql")).collect();
    let timeline_before = cluster.nodes[leader].psql("select timeline_id from pg_control_checkpoint()").expect("psql");
    let started = Instant::now();
    // Off the runtime's thread: the writer must keep running meanwhile.
    let config = cluster.nodes[0].config_path().display().to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run("pgwardenctl", &["-c", &config, "restart", "--switchover", "--force"], &[]).expect("run pgwardenctl")
    })
    .await
    .expect("join");
    assert!(ok, "{stdout}{stderr}");
    let new_leader = cluster.wait_healthy(UP).await.expect("healthy");
    assert_ne!(new_leader, leader, "the leader was switched over before its restart");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let now = node.psql("select pg_postmaster_start_time()").expect("psql");
        assert_ne!(now, started_at[i], "{} restarted", node.name);
    }
    writer.wait_ack_after(Instant::now(), UP).await.expect("writes go on");
    let report = writer.stop().await;
    let missing = missing_rows(write_port, SUPERUSER_PASSWORD, "acked", &report.ids()).await.expect("read");
    assert!(missing.is_empty(), "{missing:?}");
    let gap = report.max_gap_after(started);
    println!("rolling restart of 3 nodes: {:?}; longest write gap {gap:?}", started.elapsed());
    // Writes were refused only during the one switchover, never for a
    // primary's restart: exactly one promotion, and the new leader was
    // restarted (as a replica) before it, not after.
    let new = &cluster.nodes[new_leader];
    let timeline: u64 = new.psql("select timeline_id from pg_control_checkpoint()").expect("psql").parse().expect("tl");
    assert_eq!(timeline, timeline_before.parse::<u64>().expect("tl") + 1, "one promotion");
    // When the agent asked for the promotion, from its log (microseconds; the
    // history file's mtime has whole seconds only, too coarse now that the
    // loop reacts at once to a restarted replica).
    let log = new.agent_log();
    let line =
        log.lines().rfind(|l| l.contains("promoting PostgreSQL")).expect("the promotion in the new leader's log");
    let at = line.split_whitespace().next().expect("a timestamp");
    let promoted: f64 =
        new.psql(&format!("select extract(epoch from '{at}'::timestamptz)")).expect("psql").parse().expect("epoch");
    let restarted: f64 =
        new.psql("select extract(epoch from pg_postmaster_start_time())").expect("psql").parse().expect("epoch");
    assert!(restarted < promoted, "the new leader restarted after its promotion (a primary restart)");
}

#[tokio::test]
async fn reinit_re_clones_a_replica_and_is_refused_on_the_leader() {
    let (cluster, leader) = cluster().await;
    cluster.nodes[leader].psql("create table kept as select 1 as x").expect("write");
    let mut client = grpc::controller(cluster.nodes[leader].controller_url()).await.expect("controller");
    let refused = client
        .reinitialize(ReinitializeMemberRequest { member: cluster.nodes[leader].name.clone(), ..Default::default() })
        .await
        .expect_err("refused on the leader");
    assert!(refused.message().contains("I am the leader"), "{refused:?}");
    let replica = (leader + 1) % 3;
    let name = cluster.nodes[replica].name.clone();
    let (ok, stdout, stderr) = ctl(&cluster, &["reinit", "itest", &name, "--force", "--wait"]);
    assert!(ok && stdout.contains("re-cloned and streaming"), "{stdout}{stderr}");
    let parent = cluster.nodes[replica].data_dir().parent().expect("parent").to_path_buf();
    let aside = std::fs::read_dir(&parent)
        .expect("list")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("data.reinit."));
    assert!(aside, "the old data directory is kept aside");
    assert_eq!(cluster.nodes[replica].psql("select x from kept").expect("psql"), "1");
    cluster.wait_healthy(UP).await.expect("healthy");
    // In a pause too, as in Patroni (`reinit --wait` used to hang there: the
    // data directory went aside and the paused loop never cloned).
    let (ok, stdout, stderr) = ctl(&cluster, &["pause", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    let other = (leader + 2) % 3;
    let name = cluster.nodes[other].name.clone();
    let (ok, stdout, stderr) = ctl(&cluster, &["reinit", "itest", &name, "--force", "--wait"]);
    assert!(ok && stdout.contains("re-cloned and streaming"), "{stdout}{stderr}");
    assert_eq!(cluster.nodes[other].psql("select x from kept").expect("psql"), "1");
    let (ok, stdout, stderr) = ctl(&cluster, &["resume", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    cluster.wait_healthy(UP).await.expect("healthy");
}

#[tokio::test]
async fn a_clone_shows_its_progress_in_list_and_in_reinits_output() {
    let (mut cluster, leader) = cluster().await;
    let replica = (leader + 1) % 3;
    let name = cluster.nodes[replica].name.clone();
    // A copy slow enough to watch (pg_basebackup --max-rate, as Patroni
    // passes the `postgresql.basebackup` options).
    cluster.nodes[replica].stop_agent();
    cluster.nodes[replica]
        .merge_config(serde_json::json!({"postgresql": {"basebackup": [{"max-rate": "2M"}]}}))
        .expect("slow the copy down");
    cluster.nodes[replica].start_agent().expect("restart the agent");
    cluster.wait_healthy(UP).await.expect("healthy");
    let config = cluster.nodes[leader].config_path().display().to_string();
    let reinit = {
        let (config, name) = (config.clone(), name.clone());
        std::thread::spawn(move || {
            run("pgwardenctl", &["-c", &config, "reinit", "itest", &name, "--force", "--wait"], &[])
                .expect("run pgwardenctl")
        })
    };
    let row = wait_until("list to show the clone's progress", UP, || async {
        let (_, stdout, _) = ctl(&cluster, &["list"]);
        match stdout.lines().find(|l| l.contains(&format!("| {name} "))) {
            Some(row) if row.contains("creating replica") && row.contains("% (") && row.contains("MB/s") => {
                Ok(Some(row.to_string()))
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("progress in list");
    println!("{row}");
    let (ok, stdout, stderr) = reinit.join().expect("reinit thread");
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("copying the data directory: ") && stdout.contains("MB/s"), "{stdout}");
    assert!(stdout.contains("re-cloned and streaming"), "{stdout}");
    // Done: the member key says no more about a copy.
    let (_, list, _) = ctl(&cluster, &["list"]);
    assert!(!list.contains("creating replica"), "{list}");
}

#[tokio::test]
async fn reload_applies_a_changed_config_file_and_remove_needs_the_name() {
    let (mut cluster, _) = cluster().await;
    // node2's own config file gains a parameter; `reload node2` applies it.
    let path = cluster.nodes[1].config_path();
    let text = std::fs::read_to_string(&path).expect("read");
    let text = text.replace("    shared_buffers: 16MB\n", "    shared_buffers: 16MB\n    work_mem: 12MB\n");
    // ... and a tag, which /patroni and the member key show after the reload.
    let text = format!("{text}tags:\n  new_tag: new_value\n");
    std::fs::write(&path, text).expect("write");
    let (ok, stdout, stderr) = ctl(&cluster, &["reload", "itest", "node2", "--force"]);
    assert!(ok && stdout.contains("reloaded"), "{stdout}{stderr}");
    wait_until("node2 to use work_mem 12MB", UP, || async {
        let value = cluster.nodes[1].psql("show work_mem").unwrap_or_default();
        if value == "12MB" { Ok(Some(())) } else { Err(value) }
    })
    .await
    .expect("reloaded");
    assert_ne!(cluster.nodes[0].psql("show work_mem").expect("psql"), "12MB", "only node2 changed");
    wait_until("node2's /patroni to show the new tag", UP, || async {
        let body = cluster.nodes[1].get("/patroni").unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if json["tags"]["new_tag"] == "new_value" { Ok(Some(())) } else { Err(body) }
    })
    .await
    .expect("tags after a reload");
    // REST POST /reload answers 202.
    let (status, _) = http_with(
        "POST",
        cluster.nodes[2].rest_port,
        "/reload",
        &[("Authorization", &auth())],
        "",
        Duration::from_secs(30),
    )
    .expect("POST /reload");
    assert_eq!(status, 202);

    // remove: refused while members run, refused with the wrong name.
    let config = cluster.nodes[0].config_path().display().to_string();
    let (ok, _, stderr) = run_with_input("pgwardenctl", &["-c", &config, "remove", "itest"], "itest\n").expect("run");
    assert!(!ok && stderr.contains("are running"), "{stderr}");
    for node in &mut cluster.nodes {
        node.stop_agent();
    }
    let (ok, _, stderr) =
        run_with_input("pgwardenctl", &["-c", &config, "remove", "itest", "--force"], "other\n").expect("run");
    assert!(!ok && stderr.contains("nothing removed"), "{stderr}");
    assert!(cluster.get_key("initialize").await.expect("etcd").is_some(), "keys intact");
    let (ok, stdout, stderr) =
        run_with_input("pgwardenctl", &["-c", &config, "remove", "itest", "--force"], "itest\n").expect("run");
    assert!(ok && stdout.contains("Removed cluster itest"), "{stdout}{stderr}");
    assert_eq!(cluster.get_key("initialize").await.expect("etcd"), None);
    assert_eq!(cluster.get_key("config").await.expect("etcd"), None);
}

#[tokio::test]
async fn a_scheduled_restart_happens_on_time_and_can_be_deleted() {
    let (cluster, leader) = cluster().await;
    let replica = (leader + 1) % 3;
    let node = &cluster.nodes[replica];
    let at = |seconds: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    // Through REST: scheduled (202), a second one refused (409), deleted (200), none left (404).
    let post = |body: String| {
        http_with("POST", node.rest_port, "/restart", &[("Authorization", &auth())], &body, Duration::from_secs(30))
            .expect("POST /restart")
    };
    let (status, text) = post(format!(r#"{{"schedule":"{}"}}"#, at(3600)));
    assert_eq!((status, text.as_str()), (202, "Restart scheduled"));
    let (_, list, _) = ctl(&cluster, &["list"]);
    assert!(list.contains("Scheduled restart"), "{list}");
    let (status, text) = post(format!(r#"{{"schedule":"{}"}}"#, at(7200)));
    assert_eq!(status, 409, "{text}");
    let (status, text) = post(r#"{"schedule":"2020-01-01T00:00:00+00:00"}"#.to_string());
    assert_eq!(status, 422, "{text}");
    let delete = || {
        http_with("DELETE", node.rest_port, "/restart", &[("Authorization", &auth())], "", Duration::from_secs(30))
            .expect("DELETE /restart")
    };
    assert_eq!(delete(), (200, "scheduled restart deleted".to_string()));
    assert_eq!(delete(), (404, "no restarts are scheduled".to_string()));
    // And through the CLI: `flush restart`.
    let (status, _) = post(format!(r#"{{"schedule":"{}"}}"#, at(3600)));
    assert_eq!(status, 202);
    let (ok, stdout, stderr) = ctl(&cluster, &["flush", "itest", "restart", "--force"]);
    assert!(ok && stdout.contains("scheduled restart deleted"), "{stdout}{stderr}");
    assert_eq!(delete(), (404, "no restarts are scheduled".to_string()));

    // Through the CLI, a few seconds ahead: carried out then, not before.
    let before = node.psql("select pg_postmaster_start_time()").expect("psql");
    let when = at(4);
    let due = Instant::now() + Duration::from_secs(3);
    let name = node.name.clone();
    let (ok, stdout, stderr) = ctl(&cluster, &["restart", &name, "--scheduled", &when, "--force"]);
    assert!(ok && stdout.contains("Restart scheduled"), "{stdout}{stderr}");
    wait_until("the scheduled restart", UP, || async {
        let now = node.psql("select pg_postmaster_start_time()").unwrap_or_default();
        Ok::<_, String>((!now.is_empty() && now != before).then_some(()))
    })
    .await
    .expect("restarted");
    assert!(Instant::now() >= due, "not before its time");
    cluster.wait_healthy(UP).await.expect("healthy");
}

#[tokio::test]
async fn a_ttl_edit_reaches_the_leases_and_a_demoted_primary_keeps_member_slots_that_move_along() {
    let (cluster, leader) = cluster().await;
    let name = |i: usize| cluster.nodes[i].name.clone();
    assert_eq!(cluster.lease_ttl("leader").await.expect("etcd"), Some(10), "bootstrap ttl");
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--set", "ttl=20", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    let replica = (leader + 1) % 3;
    wait_until("the replicas' member leases at ttl 20", UP, || async {
        let ttls = [
            cluster.lease_ttl(&format!("members/{}", name(replica))).await.map_err(|e| e.to_string())?,
            cluster.lease_ttl(&format!("members/{}", name((leader + 2) % 3))).await.map_err(|e| e.to_string())?,
        ];
        Ok::<_, String>((ttls == [Some(20), Some(20)]).then_some(()))
    })
    .await
    .expect("member leases follow the live ttl");
    assert_eq!(cluster.lease_ttl("leader").await.expect("etcd"), Some(10), "the leader keeps its lease meanwhile");
    let (ok, stdout, stderr) = ctl(&cluster, &["switchover", "--candidate", &name(replica), "--force"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy"), replica);
    assert_eq!(cluster.lease_ttl("leader").await.expect("etcd"), Some(20), "the new leader's key has the live ttl");
    // The old primary, now a replica that may lead again, keeps a slot for
    // each other member, as Patroni does (a later failover to it finds its
    // followers' slots ready), and moves them along to the members'
    // positions, so that they pin no more WAL than the members need.
    let others: Vec<String> =
        (0..3).filter(|&i| i != leader).map(|i| cluster.nodes[i].name.replace('-', "_")).collect();
    wait_until("the demoted primary to keep exactly the other members' slots", UP, || async {
        let names: Vec<String> = slots_of(&cluster, leader).into_iter().map(|s| s.0).collect();
        if names == others { Ok(Some(())) } else { Err(format!("{names:?}")) }
    })
    .await
    .expect("member slots on the old primary");
    let before = cluster.nodes[replica].psql("select pg_current_wal_lsn()").expect("the new leader's position");
    cluster.nodes[replica].psql("create table moved_on as select generate_series(1, 10000) g").expect("write");
    wait_until("the kept slots to move past the earlier position", UP, || async {
        let slots = slots_of(&cluster, leader);
        let moved = slots.iter().all(|s| {
            cluster.nodes[leader]
                .psql(&format!("select '{}'::pg_lsn >= '{before}'::pg_lsn", s.2))
                .is_ok_and(|t| t == "t")
        });
        if moved && slots.len() == 2 { Ok(Some(())) } else { Err(format!("{slots:?}, before {before}")) }
    })
    .await
    .expect("kept slots moved along");
    assert_eq!(
        cluster.nodes[leader].psql("show cluster_name").expect("psql"),
        cluster.scope,
        "cluster_name is the scope"
    );
}

/// patronictl's options on a real cluster, as a Patroni user types them:
/// `list -e -t`, `-d` without a config file, `dsn -r`, `query`, `version`,
/// `reload -r`, `restart --pg-version/--any`, `edit-config --replace -q`,
/// and `POST /restart`'s `postgres_version` and `timeout` checks.
#[tokio::test]
async fn patronictl_options_work_on_a_real_cluster() {
    init_logging();
    // Patroni's log settings too: node2 logs to a directory, rotated by size;
    // node3 logs json with a static field, each decision once.
    let logs = std::env::temp_dir().join(format!("pgwarden-itest-logs-{}", std::process::id()));
    // (`extra` numbers the nodes from 1, as their names.)
    let extra = |i: usize| match i {
        2 => format!("log:\n  dir: {}\n  file_size: 600\n  file_num: 2\n", logs.display()),
        3 => "log:\n  type: json\n  deduplicate_heartbeat_logs: true\n  static_fields:\n    app: itest\n".into(),
        _ => String::new(),
    };
    let cluster = PgwardenCluster::start_with(3, extra).await.expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // list -e -t: a time line, then every optional column.
    let (ok, stdout, stderr) = ctl(&cluster, &["list", "-e", "-t"]);
    assert!(ok, "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.len() == 19 && first.as_bytes()[4] == b'-' && first.as_bytes()[13] == b':', "{stdout}");
    assert!(stdout.contains("| Pending restart | Pending restart reason | Scheduled restart | Tags |"), "{stdout}");

    // -d: another etcd than a config's, and no config file at all.
    let etcd = cluster.etcd.endpoints()[0].trim_start_matches("http://").to_string();
    let url = format!("etcd3://{etcd}/itest");
    let (ok, stdout, stderr) = run("pgwardenctl", &["-d", &url, "list", "itest", "-f", "json"], &[]).expect("run");
    assert!(ok, "{stderr}");
    assert!(names.iter().all(|n| stdout.contains(&format!("\"Member\":\"{n}\""))), "{stdout}");
    let (ok, _, stderr) = run("pgwardenctl", &["-d", "etcd://127.0.0.1:2379", "list", "itest"], &[]).expect("run");
    assert!(!ok && stderr.contains("v2 keyspace"), "{stderr}");
    // No config file at all (no -c, none at ~/.config/patroni): patronictl
    // runs on the environment for the cluster the command names.
    let home = std::env::temp_dir().join(format!("pgwarden-itest-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("an empty home");
    let home = home.display().to_string();
    let env = [("HOME", home.as_str()), ("PATRONI_ETCD3_HOSTS", etcd.as_str()), ("PATRONI_NAMESPACE", "/itest/")];
    let (ok, stdout, stderr) = run("pgwardenctl", &["list", "itest", "-f", "json"], &env).expect("run");
    assert!(ok, "{stderr}");
    assert!(names.iter().all(|n| stdout.contains(&format!("\"Member\":\"{n}\""))), "{stdout}");
    let (ok, _, stderr) = run("pgwardenctl", &["list"], &[("HOME", home.as_str())]).expect("run");
    assert!(!ok && stderr.contains("no config file") && stderr.contains("PATRONI_ETCD3_HOSTS"), "{stderr}");
    let _ = std::fs::remove_dir_all(&home);

    // dsn -r replica: a replica's address.
    let (ok, stdout, _) = ctl(&cluster, &["dsn", "-r", "replica"]);
    let ports: Vec<String> = replicas.iter().map(|&i| format!("port={}", cluster.nodes[i].pg_port)).collect();
    assert!(ok && ports.iter().any(|p| stdout.trim().ends_with(p.as_str())), "{stdout}");

    // query: the leader by default, a role, a member; tsv, json; an error row.
    let su = [("PGPASSWORD", SUPERUSER_PASSWORD)];
    let query = |args: &[&str]| {
        let config = cluster.nodes[0].config_path().display().to_string();
        let mut all = vec!["-c", config.as_str(), "query", "-U", "postgres", "-d", "postgres"];
        all.extend_from_slice(args);
        run("pgwardenctl", &all, &su).expect("run query")
    };
    let (ok, stdout, stderr) = query(&["-c", "select 1 as x, null as y; select pg_is_in_recovery() as r, 2 as z"]);
    assert!(ok && stdout == "r\tz\nf\t2\n", "the last statement, on the leader: {stdout:?} {stderr}");
    let (_, stdout, _) = query(&["-r", "replica", "-c", "select pg_is_in_recovery() as r, null as n"]);
    assert_eq!(stdout, "r\tn\nt\tNone\n");
    let member = &names[replicas[0]];
    let (_, stdout, _) = query(&["-m", member, "--format", "json", "-c", "select current_setting('port') as port"]);
    assert_eq!(stdout.trim(), format!("[{{\"port\":\"{}\"}}]", cluster.nodes[replicas[0]].pg_port));
    let (ok, stdout, _) = query(&["-c", "select * from no_such_table"]);
    assert!(ok && stdout.contains("ERROR, SQLSTATE: 42P01"), "{stdout}");
    let (ok, _, stderr) = query(&["-r", "replica", "-m", member, "-c", "select 1"]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");

    // version: pgwardenctl's, then each member's pgwarden and PostgreSQL.
    let (ok, stdout, _) = ctl(&cluster, &["version", "itest"]);
    assert!(ok && stdout.starts_with("pgwardenctl version "), "{stdout}");
    for name in &names {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{name}: "))).unwrap_or_default();
        let postgres = format!(" PostgreSQL {}.", pgwarden_integration_tests::postgres::binaries_major());
        assert!(line.contains(": pgwarden ") && line.contains(&postgres), "{stdout}");
    }

    // reload -r replica: only the replicas.
    let (ok, stdout, stderr) = ctl(&cluster, &["reload", "itest", "-r", "replica", "--force"]);
    assert!(ok, "{stderr}");
    for &i in &replicas {
        assert!(stdout.contains(&format!("{0}: reloaded the config of {0}", names[i])), "{stdout}");
    }
    assert!(!stdout.contains(&format!("of {}", names[leader])), "{stdout}");

    // restart --pg-version: nobody runs anything older than 9.6.24.
    let (ok, stdout, stderr) = ctl(&cluster, &["restart", "itest", "--pg-version", "9.6.24", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    for name in &names {
        let major = pgwarden_integration_tests::postgres::binaries_major();
        let skipped = format!("{name}: skipped: {name} runs PostgreSQL {major}.");
        assert!(stdout.lines().any(|l| l.starts_with(&skipped) && l.ends_with("not below 9.6.24")), "{stdout}");
    }
    let (ok, _, stderr) = ctl(&cluster, &["restart", "itest", "--pg-version", "15", "--force"]);
    assert!(!ok && stderr.contains("X.Y or X.Y.Z"), "{stderr}");
    // restart --any -r replica: exactly one replica.
    let (ok, stdout, stderr) = ctl(&cluster, &["restart", "itest", "--any", "-r", "replica", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    let restarted: Vec<&str> =
        stdout.lines().filter(|l| names.iter().any(|n| l.starts_with(&format!("{n}: restarted ")))).collect();
    assert_eq!(restarted.len(), 1, "{stdout}");
    assert!(restarted[0].contains("(replica)"), "{stdout}");
    cluster.wait_healthy(UP).await.expect("healthy after the restart");

    // edit-config --replace -q: the whole config from a file, no diff shown.
    let (_, before, _) = ctl(&cluster, &["show-config", "-f", "json"]);
    let mut config: serde_json::Value = serde_json::from_str(&before).expect("json");
    config["maximum_lag_on_failover"] = 2_097_152.into();
    let file = cluster.nodes[0].dir.path().join("replace.json");
    std::fs::write(&file, config.to_string()).expect("write");
    nix::unistd::chown(&file, pgwarden_integration_tests::process::postgres_user().map(|u| u.uid), None).expect("own");
    let path = file.display().to_string();
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--replace", &path, "-q", "--force"]);
    assert!(ok && stdout.contains("Configuration changed") && !stdout.contains("+++"), "{stdout}{stderr}");
    let (_, after, _) = ctl(&cluster, &["show-config", "-f", "json"]);
    let after: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(after, config);

    // POST /restart: Patroni's checks and words.
    let post = |body: &str| {
        http_with(
            "POST",
            cluster.nodes[replicas[0]].rest_port,
            "/restart",
            &[("Authorization", &auth())],
            body,
            Duration::from_secs(60),
        )
        .expect("POST /restart")
    };
    let (status, body) = post(r#"{"postgres_version": "10"}"#);
    assert!(status == 400 && body.contains("X.Y or X.Y.Z"), "{status} {body}");
    let (status, body) = post(r#"{"timeout": "soon"}"#);
    assert_eq!((status, body.as_str()), (400, "Timeout should be a positive number of seconds"));
    let (status, body) = post(r#"{"when": "now"}"#);
    assert_eq!((status, body.as_str()), (400, "Unknown filter for the scheduled restart: when"));
    let (status, body) = post(r#"{"postgres_version": "9.6.24"}"#);
    assert!(status == 503 && body.starts_with("restart conditions are not satisfied"), "{status} {body}");
    let (status, body) = post(r#"{"postgres_version": "99.0", "timeout": "2min"}"#);
    assert_eq!((status, body.as_str()), (200, "restarted successfully"));
    cluster.wait_healthy(UP).await.expect("healthy at the end");

    // log.dir with log.file_size/file_num: rotated, two old files kept.
    let file = |suffix: &str| logs.join(format!("pgwarden-agent.log{suffix}"));
    assert!(file("").exists() && file(".1").exists() && file(".2").exists(), "{:?}", std::fs::read_dir(&logs));
    assert!(!file(".3").exists(), "file_num 2 keeps two old files");
    // Each rotated file stays within file_size, unless it holds one longer line.
    let rotated = std::fs::read_to_string(file(".1")).expect("read");
    assert!(rotated.len() <= 600 || rotated.lines().count() == 1, "{rotated}");
    assert!(cluster.nodes[1].agent_log().trim().is_empty(), "node2 logs to its log.dir, not stderr");
    // A decision that does not change is logged again once per loop_wait
    // (Patroni's heartbeat), unless log.deduplicate_heartbeat_logs.
    let repeats = |log: &str| {
        let reasons: Vec<&str> = log.lines().filter(|l| l.contains("ha tick")).collect();
        reasons.windows(2).any(|w| w[0].split("ha tick").last() == w[1].split("ha tick").last())
    };
    assert!(repeats(&cluster.nodes[0].agent_log()), "node1 repeats its unchanged decision");
    let json = cluster.nodes[2].agent_log();
    let ticks: Vec<serde_json::Value> = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|record| record["fields"]["message"] == "ha tick")
        .collect();
    assert!(ticks.len() >= 2 && ticks.iter().all(|t| t["app"] == "itest"), "{json}");
    let same = ticks
        .windows(2)
        .any(|w| w[0]["fields"]["reason"] == w[1]["fields"]["reason"] && w[1]["fields"]["action"] == "None");
    assert!(!same, "node3 logs each decision once: {json}");
    let _ = std::fs::remove_dir_all(&logs);
}

/// Every process of the PostgreSQL whose data directory is `data_dir`: the
/// postmaster first.
fn postgres_processes(data_dir: &std::path::Path, postmaster: i32) -> Vec<i32> {
    let data_dir = std::fs::canonicalize(data_dir).expect("data directory");
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != postmaster)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .collect();
    pids.insert(0, postmaster);
    pids
}

/// `POST /restart` with a `timeout` on the leader (Patroni: "return an
/// error and fail over if necessary when restarting takes longer"): with
/// every PostgreSQL process frozen the restart cannot finish; it answers 503
/// once the timeout passes, and a replica takes over although
/// `primary_start_timeout` (set to 300 s here) has not passed.
#[tokio::test]
async fn a_leader_restart_past_its_timeout_answers_503_and_hands_over() {
    let (cluster, leader) = cluster().await;
    cluster.patch_config(serde_json::json!({"primary_start_timeout": 300})).await.expect("primary_start_timeout");
    everywhere_config(&cluster, "primary_start_timeout", 300).await;
    let postmaster = cluster.nodes[leader].postmaster_pid().expect("the leader's postmaster");
    let frozen = postgres_processes(&cluster.nodes[leader].data_dir(), postmaster);
    let signal = |signal| {
        for pid in &frozen {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
        }
    };
    // Thawed whatever happens, so that the cluster's teardown can stop them.
    struct Thaw(Vec<i32>);
    impl Drop for Thaw {
        fn drop(&mut self) {
            for pid in &self.0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGCONT);
            }
        }
    }
    let _thaw = Thaw(frozen.clone());
    signal(nix::sys::signal::Signal::SIGSTOP);
    let asked = Instant::now();
    let (status, body) = http_with(
        "POST",
        cluster.nodes[leader].rest_port,
        "/restart",
        &[("Authorization", &auth())],
        r#"{"timeout": 3}"#,
        Duration::from_secs(60),
    )
    .expect("POST /restart");
    let answered = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("postgres is still starting"), "{body}");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = wait_until("a replica to take over", Duration::from_secs(60), || async {
        let primaries: Vec<usize> =
            others.iter().copied().filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        primaries.first().copied().map(Some).ok_or_else(|| "no replica leads yet".to_string())
    })
    .await
    .expect("hand-over");
    println!(
        "restart answered 503 after {answered:?}; {} leads {:?} after the request",
        cluster.nodes[new_leader].name,
        asked.elapsed()
    );
    assert!(cluster.nodes[leader].agent_log().contains("not back within primary_start_timeout"));
    signal(nix::sys::signal::Signal::SIGCONT);
    cluster.wait_healthy(UP).await.expect("the old leader rejoins");
}

/// Waits until every node's `/config` shows `key` = `value`.
async fn everywhere_config(cluster: &PgwardenCluster, key: &str, value: i64) {
    wait_until(&format!("{key} = {value} in every node's /config"), UP, || async {
        let seen: Vec<Option<i64>> = cluster
            .nodes
            .iter()
            .map(|n| {
                n.get("/config")
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|config| config[key].as_i64())
            })
            .collect();
        if seen.iter().all(|v| *v == Some(value)) { Ok(Some(())) } else { Err(format!("{seen:?}")) }
    })
    .await
    .expect("config applied");
}

/// The slots of `node` as (name, type, restart or confirmed position).
fn slots_of(cluster: &PgwardenCluster, node: usize) -> Vec<(String, String, String)> {
    let text = cluster.nodes[node]
        .psql(
            "select string_agg(slot_name || ',' || slot_type || ',' || \
             coalesce(confirmed_flush_lsn, restart_lsn)::text, ';' order by slot_name) from pg_replication_slots",
        )
        .unwrap_or_default();
    text.split(';')
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let mut parts = s.split(',');
            Some((parts.next()?.to_string(), parts.next()?.to_string(), parts.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Patroni's `slots` and `ignore_slots` (issue 23): permanent slots on every
/// leader (the physical one also on the replicas, moved along to the
/// leader's position), a slot the config ignores never dropped, any other
/// slot nobody claims dropped after `member_slots_ttl`, and the permanent
/// slots on the new leader after a switchover.
#[tokio::test]
async fn permanent_slots_are_kept_and_ignored_slots_never_dropped() {
    let (mut cluster, leader) = cluster().await;
    // Logical slots need wal_level logical: a restart of every member.
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--pg", "wal_level=logical", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    everywhere(&cluster, "select pending_restart from pg_settings where name = 'wal_level'", "t").await;
    // `restart --pending` picks the members by their keys, which say so a
    // moment after PostgreSQL does.
    wait_until("every member key to say pending_restart", UP, || async {
        let mut pending = Vec::new();
        for node in &cluster.nodes {
            let key = cluster.get_key(&format!("members/{}", node.name)).await.map_err(|e| e.to_string())?;
            pending.push(key.is_some_and(|k| k.contains("\"pending_restart\":true")));
        }
        if pending.iter().all(|p| *p) { Ok(Some(())) } else { Err(format!("{pending:?}")) }
    })
    .await
    .expect("pending everywhere");
    let (ok, stdout, stderr) = ctl(&cluster, &["restart", "--pending", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    everywhere(&cluster, "show wal_level", "logical").await;
    for slot in ["manual", "stray"] {
        cluster.nodes[leader]
            .psql(&format!("select pg_create_physical_replication_slot('{slot}', true)"))
            .expect("a slot made by hand");
    }
    let sets = [
        "member_slots_ttl=1",
        "slots.archive.type=physical",
        "slots.node4.type=physical",
        "slots.cdc.type=logical",
        "slots.cdc.database=postgres",
        "slots.cdc.plugin=pgoutput",
        "ignore_slots=[{name: manual}]",
    ];
    let mut args = vec!["edit-config", "--force"];
    for set in &sets {
        args.extend(["--set", set]);
    }
    let (ok, stdout, stderr) = ctl(&cluster, &args);
    assert!(ok, "{stdout}{stderr}");
    let names = |node: usize| -> Vec<String> { slots_of(&cluster, node).into_iter().map(|s| s.0).collect() };
    wait_until("the leader's slots: permanent ones made, the ignored one kept, the stray one dropped", UP, || async {
        let on_leader = names(leader);
        let wanted = ["archive", "cdc", "manual"].iter().all(|s| on_leader.iter().any(|n| n == s));
        if wanted && !on_leader.iter().any(|n| n == "stray") { Ok(Some(())) } else { Err(format!("{on_leader:?}")) }
    })
    .await
    .expect("slots on the leader");
    assert!(slots_of(&cluster, leader).iter().any(|s| s.0 == "cdc" && s.1 == "logical"));
    // The leader's archive slot moves on (a consumer would); the replicas'
    // copies follow it, through the status key.
    cluster.nodes[leader].psql("create table moved as select generate_series(1, 1000) g").expect("write");
    let target = cluster.nodes[leader]
        .psql("select end_lsn from pg_replication_slot_advance('archive', pg_current_wal_lsn())")
        .expect("advance the leader's slot")
        .trim()
        .to_string();
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    wait_until("each replica's archive slot at the leader's position", UP, || async {
        let positions: Vec<Option<String>> = replicas
            .iter()
            .map(|&i| slots_of(&cluster, i).into_iter().find(|s| s.0 == "archive").map(|s| s.2))
            .collect();
        if positions.iter().all(|p| p.as_deref() == Some(target.as_str())) {
            Ok(Some(()))
        } else {
            Err(format!("{positions:?}, leader's {target}"))
        }
    })
    .await
    .expect("replica copies advanced");
    let status = cluster.get_key("status").await.expect("read status").expect("a status key");
    assert!(status.contains("\"archive\""), "the leader publishes the permanent slots' positions: {status}");
    // ... and, as Patroni, every member's slot (the leader's own at its
    // position) and the members' slot names to retain.
    let json: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    for node in &cluster.nodes {
        assert!(json["slots"].get(&node.name).is_some(), "{} in status.slots: {status}", node.name);
        let retained = json["retain_slots"].as_array().is_some_and(|r| r.iter().any(|n| n == &node.name));
        assert!(retained, "{} in status.retain_slots: {status}", node.name);
    }
    assert!(json["slots"]["archive"].is_u64() && !json["retain_slots"].to_string().contains("archive"));
    // A switchover: the new leader has both permanent slots.
    let (ok, stdout, stderr) = ctl(&cluster, &["switchover", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    let new_leader = cluster.wait_healthy(UP).await.expect("healthy after the switchover");
    assert_ne!(new_leader, leader);
    wait_until("the new leader's permanent slots", UP, || async {
        let there = names(new_leader);
        if ["archive", "cdc"].iter().all(|s| there.iter().any(|n| n == s)) {
            Ok(Some(()))
        } else {
            Err(format!("{there:?}"))
        }
    })
    .await
    .expect("permanent slots on the new leader");

    // A member joins whose slot was there already as a permanent one
    // (Patroni's "permanent physical slots that match with member names"):
    // it is that member's slot, and the leader goes on keeping the others
    // (a failed creation of the existing slot used to stop it every tick).
    cluster.add_node("node4", "").expect("node4");
    cluster.start_all().expect("start node4");
    wait_until("node4 to stream", UP, || async {
        let streams = streams_to(&cluster, new_leader);
        if streams.iter().any(|s| s == "node4") { Ok(Some(())) } else { Err(format!("{streams:?}")) }
    })
    .await
    .expect("node4 streams");
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--force", "--set", "slots.late.type=physical"]);
    assert!(ok, "{stdout}{stderr}");
    wait_until("a permanent slot added after node4 joined", UP, || async {
        let there: Vec<String> = slots_of(&cluster, new_leader).into_iter().map(|s| s.0).collect();
        if there.iter().any(|n| n == "late") { Ok(Some(())) } else { Err(format!("{there:?}")) }
    })
    .await
    .expect("the leader still keeps its slots");
    let log = cluster.nodes[new_leader].agent_log();
    assert!(!log.contains("failed to keep the replication slots"), "{log}");
}

/// Patroni's "permanent physical replication slot on replica after
/// failover": the slots a former primary kept for its replicas hold the xmin
/// their hot_standby_feedback left. Once it is a replica nobody streams from
/// them, so they are made afresh without it (kept, that xmin would hold back
/// vacuum for good, and on the new primary too through this standby's own
/// feedback).
#[tokio::test]
async fn a_former_primarys_member_slots_lose_the_xmin_their_feedback_left() {
    let (cluster, leader) = cluster().await;
    let (ok, stdout, stderr) = ctl(&cluster, &["edit-config", "--pg", "hot_standby_feedback=on", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    let physical = "select coalesce(string_agg(slot_name || ':' || coalesce(xmin::text, '-'), ',' order by slot_name), '') \
                    from pg_replication_slots where slot_type = 'physical'";
    wait_until("the replicas' feedback xmin on the leader's slots", UP, || async {
        let slots = cluster.nodes[leader].psql(physical).map_err(|e| e.to_string())?;
        let with_xmin = slots.split(',').filter(|s| !s.is_empty() && !s.ends_with(":-")).count();
        if with_xmin == 2 { Ok(Some(())) } else { Err(slots) }
    })
    .await
    .expect("feedback xmin");
    let (ok, stdout, stderr) = ctl(&cluster, &["switchover", "--force"]);
    assert!(ok, "{stdout}{stderr}");
    let new_leader = cluster.wait_healthy(UP).await.expect("healthy after the switchover");
    assert_ne!(new_leader, leader);
    let mut others: Vec<String> =
        (0..3).filter(|&i| i != leader).map(|i| format!("{}:-", cluster.nodes[i].name)).collect();
    others.sort();
    let want = others.join(",");
    wait_until("the former primary's member slots without an xmin", UP, || async {
        let slots = cluster.nodes[leader].psql(physical).map_err(|e| e.to_string())?;
        if slots == want { Ok(Some(())) } else { Err(slots) }
    })
    .await
    .expect("no stale xmin on the former primary");
}

/// The members a node's PostgreSQL streams WAL to (its walsenders'
/// application names), sorted.
fn streams_to(cluster: &PgwardenCluster, node: usize) -> Vec<String> {
    cluster.nodes[node]
        .psql("select string_agg(application_name, ',' order by application_name) from pg_stat_replication where state = 'streaming'")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits until node1 (the leader) streams to exactly `from_leader` and node2
/// to exactly `from_node2`, and node3's own WAL receiver streams from node
/// `node3_from` (a clone's pg_basebackup also shows among the WAL senders
/// under the member's name).
async fn wait_streams(
    cluster: &PgwardenCluster,
    what: &str,
    from_leader: &[&str],
    from_node2: &[&str],
    node3_from: usize,
) {
    wait_until(what, UP, || async {
        let (one, two) = (streams_to(cluster, 0), streams_to(cluster, 1));
        let receiver = cluster.nodes[2]
            .psql("select sender_port from pg_stat_wal_receiver where status = 'streaming'")
            .unwrap_or_default();
        let upstream = cluster.nodes[node3_from].pg_port.to_string();
        if one == from_leader && two == from_node2 && receiver == upstream {
            Ok(Some(()))
        } else {
            Err(format!("node1 -> {one:?}, node2 -> {two:?}, node3's receiver on port {receiver:?}"))
        }
    })
    .await
    .expect(what);
}

/// Patroni's topology tags end to end: `clonefrom` (new members copy their
/// data from that replica), `replicatefrom` (node3 streams from node2 with a
/// slot there, falls back to the leader while node2 is lost, and goes back
/// to it), `nostream` (node4 recovers without streaming and has no slot on
/// the leader). Two writers run on the leader throughout; every row they
/// had acknowledged reaches node3.
#[tokio::test(flavor = "multi_thread")]
async fn replicatefrom_cascades_and_falls_back_nostream_never_streams_and_clonefrom_is_the_clone_source() {
    init_logging();
    let mut cluster = PgwardenCluster::start(1).await.expect("start");
    assert_eq!(cluster.wait_healthy(UP).await.expect("node1 leads"), 0);
    cluster.add_node("node2", "tags:\n  clonefrom: true\n").expect("add node2");
    cluster.start_all().expect("start node2");
    assert_eq!(cluster.wait_healthy(UP).await.expect("node2 streams"), 0);
    let writers =
        Writers::start(cluster.nodes[0].pg_port, SUPERUSER_PASSWORD, "cascade", 2, UP).await.expect("writers");
    cluster.add_node("node3", "tags:\n  replicatefrom: node2\n").expect("add node3");
    cluster.add_node("node4", "tags:\n  nostream: true\n").expect("add node4");
    cluster.start_all().expect("start node3 and node4");
    wait_streams(&cluster, "node3 streaming from node2, node4 from nobody", &["node2"], &["node3"], 1).await;
    for node in [2, 3] {
        let log = cluster.nodes[node].agent_log();
        assert!(log.contains("clone from node2"), "node{} cloned from the clonefrom member:\n{log}", node + 1);
    }
    // node3's slot is on node2; the leader keeps one too (for a fall-back),
    // moved along to node3's position; node4 has none anywhere.
    let slot = |node: usize, name: &str| slots_of(&cluster, node).into_iter().find(|s| s.0 == name);
    assert!(slot(1, "node3").is_some(), "node2 holds node3's slot: {:?}", slots_of(&cluster, 1));
    assert!(slot(0, "node4").is_none() && slot(1, "node4").is_none(), "no slot for a nostream member");
    let before = slot(0, "node3").expect("the leader keeps node3's slot").2;
    wait_until("the leader's slot for node3 moved along", UP, || async {
        let now = slot(0, "node3").map(|s| s.2).unwrap_or_default();
        let moved =
            cluster.nodes[0].psql(&format!("select '{now}'::pg_lsn > '{before}'::pg_lsn")).is_ok_and(|t| t == "t");
        if moved { Ok(Some(())) } else { Err(format!("{before} -> {now}")) }
    })
    .await
    .expect("slot advanced");
    assert_eq!(cluster.nodes[3].psql("select pg_is_in_recovery()").expect("node4 answers"), "t");
    assert_eq!(
        cluster.nodes[3].psql("select count(*) from pg_stat_wal_receiver").expect("node4's receiver"),
        "0",
        "a nostream member has no WAL receiver"
    );
    // node2 is lost: node3 falls back to the leader (once node2's member key
    // is gone or says it does not run), and returns to node2 when it is back.
    cluster.nodes[1].kill_node();
    wait_streams(&cluster, "node3 streaming from the leader while node2 is lost", &["node3"], &[], 0).await;
    cluster.start_all().expect("restart node2");
    wait_streams(&cluster, "node3 back on node2", &["node2"], &["node3"], 1).await;
    let (acked, lost) = writers.stop_and_check(UP).await.expect("writers stop");
    assert!(acked > 0 && lost.is_empty(), "acknowledged {acked}, lost on the leader: {lost:?}");
    let count = |node: usize| {
        cluster.nodes[node]
            .psql("select (select count(*) from cascade0) + (select count(*) from cascade1)")
            .unwrap_or_default()
    };
    wait_until("node3 to hold every row the leader has", UP, || async {
        let (leader, three) = (count(0), count(2));
        if leader == three { Ok(Some(())) } else { Err(format!("leader {leader}, node3 {three}")) }
    })
    .await
    .expect("every acknowledged row on node3");
}

/// A switchover right after the leader's PostgreSQL restarted (Patroni's
/// acceptance scenario does this in a pause): the candidate's WAL receiver
/// is still reconnecting, and a leader that stopped at once would stop
/// before the candidate could receive its shutdown checkpoint. The leader
/// waits for the candidate to stream first; the switchover goes through,
/// the candidate promotes and the former leader rejoins as its replica, all
/// in the pause.
#[tokio::test]
async fn a_switchover_in_a_pause_right_after_the_leaders_restart_waits_for_the_candidate_and_completes() {
    let (cluster, leader) = cluster().await;
    let candidate = (leader + 1) % cluster.nodes.len();
    let (leader_name, candidate_name) = (cluster.nodes[leader].name.clone(), cluster.nodes[candidate].name.clone());
    let (ok, stdout, stderr) = ctl(&cluster, &["pause", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) = ctl(&cluster, &["restart", &leader_name, "--force"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("Success: restart on member {leader_name}")), "{stdout}");
    let (ok, stdout, stderr) =
        ctl(&cluster, &["switchover", "--leader", &leader_name, "--candidate", &candidate_name, "--force"]);
    assert!(ok, "{stdout}{stderr}");
    wait_until("the candidate to lead", UP, || async {
        Ok::<_, String>((cluster.nodes[candidate].check("/primary") == 200).then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        let tail = |i: usize| {
            let log = cluster.nodes[i].agent_log();
            log.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        panic!("{e}\n{leader_name}:\n{}\n{candidate_name}:\n{}", tail(leader), tail(candidate))
    });
    let log = cluster.nodes[leader].agent_log();
    assert!(!log.contains("did not receive the shutdown checkpoint"), "the first attempt failed");
    // Still paused: the former leader rejoins as the new leader's replica.
    wait_until("the former leader to stream from the new one", UP, || async {
        let state = cluster.nodes[leader].psql("select status from pg_stat_wal_receiver").unwrap_or_default();
        Ok::<_, String>((state == "streaming" && cluster.nodes[leader].check("/replica") == 200).then_some(()))
    })
    .await
    .expect("the former leader is a replica");
    let (ok, stdout, stderr) = ctl(&cluster, &["resume", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
}

/// `postgresql.pg_hba` and `postgresql.pg_ident` in the dynamic config reach
/// every member by a reload as soon as they change (as Patroni), and a
/// member's own `postgresql.pg_ident` wins over the dynamic one.
#[tokio::test]
async fn pg_hba_and_pg_ident_from_the_dynamic_config_are_written_and_reloaded_on_every_member() {
    let (cluster, _) = cluster().await;
    // node3 keeps its own ident map, read at a reload of its config file.
    cluster.nodes[2]
        .merge_config(serde_json::json!({"postgresql": {"pg_ident": ["local_map  os_carol  carol"]}}))
        .expect("node3's own pg_ident");
    let (ok, stdout, stderr) = ctl(&cluster, &["reload", "itest", "node3", "--force"]);
    assert!(ok && stdout.contains("reloaded"), "{stdout}{stderr}");
    let mapping = |map: &str| format!("select count(*) from pg_ident_file_mappings where map_name = '{map}'");
    wait_until("node3's own ident map", UP, || async {
        let count = cluster.nodes[2].psql(&mapping("local_map")).unwrap_or_default();
        if count == "1" { Ok(Some(())) } else { Err(count) }
    })
    .await
    .expect("node3 wrote its pg_ident.conf");

    // The dynamic config gains both: no reload asked, no restart.
    let body = serde_json::json!({"postgresql": {
        "pg_hba": [
            "local all all scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host replication replicator 127.0.0.1/32 scram-sha-256",
            "local shop carol peer map=ops",
        ],
        "pg_ident": ["ops  os_carol  carol", "ops  os_dave  carol"],
    }});
    patch_config(&cluster, 0, &body.to_string());
    let carol = "select count(*) from pg_hba_file_rules where 'carol' = any(user_name) and error is null";
    everywhere(&cluster, carol, "1").await;
    everywhere(&cluster, "select count(*) from pg_hba_file_rules where error is not null", "0").await;
    let counts = |map: &str| -> Vec<String> {
        cluster.nodes.iter().map(|n| n.psql(&mapping(map)).unwrap_or_default()).collect()
    };
    wait_until("the dynamic ident map on node1 and node2", UP, || async {
        let ops = counts("ops");
        if ops[..2] == ["2", "2"] { Ok(Some(())) } else { Err(format!("{ops:?}")) }
    })
    .await
    .expect("the dynamic pg_ident reached node1 and node2");
    assert_eq!(counts("ops")[2], "0", "node3's own pg_ident wins");
    assert_eq!(counts("local_map")[2], "1");
    let file = cluster.nodes[0].data_dir().join("pg_ident.conf");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).expect("pg_ident.conf").permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    assert!(cluster.nodes[0].agent_log().contains("auth_files_changed=true"), "the agent says why it reloaded");
    // Nothing needs a restart, and the cluster is whole.
    everywhere(&cluster, "select count(*) from pg_settings where pending_restart", "0").await;
    cluster.wait_healthy(UP).await.expect("healthy");
}

/// Patroni's role-based settings (issue 23): `parameters_primary` and
/// `parameters_replica` from the dynamic config, a member's own
/// `parameters_replica` over them, `pg_hba_replica` replacing `pg_hba` on the
/// replicas only, and a protected parameter that a role may not change; each
/// follows the members' roles through a switchover.
#[tokio::test]
async fn role_based_parameters_and_pg_hba_follow_the_roles_through_a_switchover() {
    let (cluster, leader) = cluster().await;
    let (candidate, other) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.nodes[other]
        .merge_config(serde_json::json!({"postgresql": {"parameters_replica": {"work_mem": "5MB"}}}))
        .expect("the other replica's own parameters_replica");
    let (ok, stdout, stderr) = ctl(&cluster, &["reload", "itest", &cluster.nodes[other].name, "--force"]);
    assert!(ok, "{stdout}{stderr}");
    let hba = [
        "local all all scram-sha-256",
        "host all all 127.0.0.1/32 scram-sha-256",
        "host replication replicator 127.0.0.1/32 scram-sha-256",
    ];
    let mut replica_hba: Vec<&str> = hba.to_vec();
    replica_hba.push("host all replica_only 127.0.0.1/32 reject");
    let body = serde_json::json!({"postgresql": {
        "pg_hba": hba,
        "parameters_primary": {"work_mem": "8MB", "max_connections": 500},
        "parameters_replica": {"work_mem": "3MB"},
        "pg_hba_replica": replica_hba,
    }});
    patch_config(&cluster, 0, &body.to_string());

    let marker = "select count(*) from pg_hba_file_rules where 'replica_only' = any(user_name)";
    let expect = |want: [(usize, &'static str, &'static str); 3]| {
        let cluster = &cluster;
        async move {
            wait_until("each member's role-based settings", UP, || async {
                let got: Vec<(usize, String, String)> = want
                    .iter()
                    .map(|(i, _, _)| {
                        let node = &cluster.nodes[*i];
                        (*i, node.psql("show work_mem").unwrap_or_default(), node.psql(marker).unwrap_or_default())
                    })
                    .collect();
                let wanted: Vec<(usize, String, String)> =
                    want.iter().map(|(i, w, m)| (*i, w.to_string(), m.to_string())).collect();
                if got == wanted { Ok(Some(())) } else { Err(format!("{got:?}, want {wanted:?}")) }
            })
            .await
            .expect("role-based settings applied");
        }
    };
    // The leader: parameters_primary, the base pg_hba; the replicas:
    // parameters_replica (the other one's own wins) and pg_hba_replica.
    expect([(leader, "8MB", "0"), (candidate, "3MB", "1"), (other, "5MB", "1")]).await;
    assert_eq!(cluster.nodes[leader].psql("show max_connections").expect("psql"), "100", "protected");

    let (ok, stdout, stderr) = ctl(&cluster, &["switchover", "--candidate", &cluster.nodes[candidate].name, "--force"]);
    assert!(ok && stdout.contains("Successfully switched over"), "{stdout}{stderr}");
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy"), candidate);
    // The promoted member takes the primary's settings without a restart;
    // the old primary starts again as a replica with the replica's.
    expect([(candidate, "8MB", "0"), (leader, "3MB", "1"), (other, "5MB", "1")]).await;
    everywhere(
        &cluster,
        "select coalesce(string_agg(name, ','), 'none') from pg_settings where pending_restart",
        "none",
    )
    .await;
}

/// The `postgresql` settings Patroni merges from the dynamic config under
/// each member's own (issue 23): `recovery_conf` and `basebackup` from the
/// dynamic config reach every member that sets none (a change of
/// `recovery_conf` by a reload), and a member's own `use_slots: false` and
/// `database` win over the cluster's.
#[tokio::test]
async fn dynamic_postgresql_settings_apply_under_each_members_own() {
    init_logging();
    let own = |i: usize| {
        if i == 3 { "postgresql:\n  use_slots: false\n  database: template1\n".to_string() } else { String::new() }
    };
    let cluster = pgwarden_integration_tests::ClusterSpec::nodes(3).node_yaml(own).start().await.expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    assert_eq!(leader, 0, "node1 bootstraps (it starts first)");
    // node3 streams without a slot, node2 with its own; node3's key names its database.
    assert_eq!(cluster.nodes[1].psql("show primary_slot_name").expect("psql"), "node2");
    assert_eq!(cluster.nodes[2].psql("show primary_slot_name").expect("psql"), "");
    let member = cluster.get_key("members/node3").await.expect("read").expect("node3's key");
    assert!(member.contains("/template1\""), "{member}");

    patch_config(
        &cluster,
        0,
        r#"{"postgresql": {"recovery_conf": {"recovery_min_apply_delay": "5ms"},
            "basebackup": [{"label": "from-the-dynamic-config"}], "pg_ctl_timeout": 45}}"#,
    );
    wait_until("the replicas to take the dynamic recovery_conf", UP, || async {
        let delays: Vec<String> =
            (1..3).map(|i| cluster.nodes[i].psql("show recovery_min_apply_delay").unwrap_or_default()).collect();
        if delays == ["5ms", "5ms"] { Ok(Some(())) } else { Err(format!("{delays:?}")) }
    })
    .await
    .expect("recovery_conf from the dynamic config, by a reload");

    let (ok, stdout, stderr) = ctl(&cluster, &["reinit", "itest", "node2", "--force", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    cluster.wait_healthy(UP).await.expect("healthy after the reinit");
    // PostgreSQL keeps the clone's backup label as backup_label.old.
    let label =
        std::fs::read_to_string(cluster.nodes[1].data_dir().join("backup_label.old")).expect("backup_label.old");
    assert!(label.contains("LABEL: from-the-dynamic-config"), "pg_basebackup got the dynamic options: {label}");
}

/// Patroni's `postgresql.config_base_name` (issue 23): pgwarden writes
/// `<name>.conf`, keeps initdb's file as `<name>.base.conf`, and PostgreSQL
/// reads the first, on the leader and on a clone; a parameter change
/// reaches it.
#[tokio::test]
async fn config_base_name_names_the_files_postgresql_reads() {
    init_logging();
    let yaml = |_| "postgresql:\n  config_base_name: shop\n".to_string();
    let cluster = pgwarden_integration_tests::ClusterSpec::nodes(2).node_yaml(yaml).start().await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    for node in &cluster.nodes {
        let file = node.psql("show config_file").expect("psql");
        assert_eq!(std::path::PathBuf::from(&file), node.data_dir().join("shop.conf"), "{}", node.name);
        let written = std::fs::read_to_string(&file).expect("shop.conf");
        assert!(written.starts_with("# Written by pgwarden-agent") && written.contains("include 'shop.base.conf'"));
        assert!(node.data_dir().join("shop.base.conf").exists(), "{}: initdb's file kept as the base", node.name);
    }
    patch_config(&cluster, 0, r#"{"postgresql": {"parameters": {"work_mem": "9MB"}}}"#);
    everywhere(&cluster, "show work_mem", "9MB").await;
}
