//! A standby cluster (Patroni's `standby_cluster`): a second three-node
//! pgwarden cluster follows the first through HAProxy's write port. Its
//! leader is a standby leader (`/standby-leader` 200, never writable); it
//! follows the first cluster through a failover there, hands over to another
//! member of its own by switchover and when it is lost (still never
//! writable), and takes writes
//! only after `pgwardenctl promote-cluster`. Write probes on every member of
//! the standby cluster see none of them writable before that. Then
//! `demote-cluster` turns the first cluster into a standby of the second;
//! also to an archive only, which the promoted cluster replayed too.

use std::time::Duration;

use pgwarden_integration_tests::cluster::{SUPERUSER_PASSWORD, psql_port};
use pgwarden_integration_tests::haproxy::deploy_config;
use pgwarden_integration_tests::probe::WriteProbe;
use pgwarden_integration_tests::service::run;
use pgwarden_integration_tests::writer::Writers;
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

/// HAProxy in front of the cluster's members, once it routes writes to the
/// primary; returns it with its write port.
async fn behind_haproxy(cluster: &PgwardenCluster) -> (HaProxy, u16) {
    let (write_port, read_port, stats_port) = (free_port(), free_port(), free_port());
    let haproxy_config = deploy_config(write_port, read_port, stats_port, &cluster.backends());
    let haproxy = HaProxy::start(&haproxy_config, &[write_port, read_port, stats_port]).await.expect("haproxy");
    // HAProxy routes once its first health checks have found the primary.
    wait_until("a write through HAProxy", UP, || async { Ok::<_, String>(psql_port(write_port, "select 1").ok()) })
        .await
        .expect("HAProxy routes to the primary");
    (haproxy, write_port)
}

/// Adds `members` nodes (`dr1`, ...) of a standby cluster (scope `dr`, on
/// the same etcd) following the remote primary at `write_port`, starts
/// them, and returns their indices.
fn start_standby_cluster(
    cluster: &mut PgwardenCluster,
    members: usize,
    write_port: u16,
    extra: serde_json::Value,
) -> Vec<usize> {
    cluster.scope = "dr".into();
    let first = cluster.nodes.len();
    for i in 1..=members {
        let node = cluster.add_node(&format!("dr{i}"), "").expect("dr node");
        node.merge_config(
            json!({"bootstrap": {"dcs": {"standby_cluster": {"host": "127.0.0.1", "port": write_port}}}}),
        )
        .expect("standby_cluster");
        node.merge_config(extra.clone()).expect("extra config");
    }
    cluster.start_all().expect("start the standby cluster");
    (first..first + members).collect()
}

#[tokio::test]
async fn a_standby_cluster_follows_through_a_failover_on_each_side_and_takes_writes_only_when_promoted() {
    init_logging();
    // The primary cluster (scope itest), reached through HAProxy.
    let mut cluster = PgwardenCluster::start(3).await.expect("the primary cluster");
    let main_leader = cluster.wait_healthy(UP).await.expect("healthy");
    let (_haproxy, write_port) = behind_haproxy(&cluster).await;
    psql_port(write_port, "create table t (id int primary key, side text); insert into t values (1, 'before')")
        .expect("row 1");

    // The standby cluster (scope dr) on the same etcd.
    let dr = start_standby_cluster(&mut cluster, 3, write_port, json!({}));
    let ports: Vec<u16> = dr.iter().map(|&i| cluster.nodes[i].pg_port).collect();
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

/// Each table's row count and highest id on `node`, as one line.
fn rows(cluster: &PgwardenCluster, node: usize) -> String {
    let sql = "select coalesce(string_agg(c.relname || '=' || (xpath('/row/n/text()', \
               query_to_xml(format('select count(*) || '':'' || coalesce(max(id), 0) as n from %I', c.relname), \
               false, true, '')))[1]::text, ' ' order by c.relname), '') \
               from pg_class c where c.relkind = 'r' and c.relnamespace = 'public'::regnamespace";
    cluster.nodes[node].psql(sql).unwrap_or_default().trim().to_string()
}

/// A two-node primary cluster behind HAProxy, any member allowed to take
/// over however far behind, with one row written: the cluster, its HAProxy,
/// the write port, the primary and the other member.
async fn two_node_primary_cluster() -> (PgwardenCluster, HaProxy, u16, usize, usize) {
    init_logging();
    let cluster = PgwardenCluster::start(2).await.expect("the primary cluster");
    let old = cluster.wait_healthy(UP).await.expect("healthy");
    cluster.patch_config(json!({"maximum_lag_on_failover": 1u64 << 30})).await.expect("maximum_lag_on_failover");
    let (haproxy, write_port) = behind_haproxy(&cluster).await;
    psql_port(write_port, "create table shared (id int primary key); insert into shared values (1)").expect("row 1");
    everywhere(&cluster, &[0, 1], "select count(*) from shared", "1").await;
    (cluster, haproxy, write_port, old, 1 - old)
}

/// Waits until each of `nodes` has exactly `want` (as [`rows`] gives it).
async fn converge(cluster: &PgwardenCluster, nodes: &[usize], want: &str, what: &str) {
    wait_until(what, UP, || async {
        let got: Vec<String> = nodes.iter().map(|&i| rows(cluster, i)).collect();
        if got.iter().all(|g| g == want) { Ok(Some(())) } else { Err(format!("{got:?} against {want}")) }
    })
    .await
    .expect(what);
}

/// Makes `lagging` stop streaming from the primary `old` (`nostream`, by a
/// reload), so that it falls behind.
async fn stop_streaming(cluster: &PgwardenCluster, lagging: usize, old: usize) {
    cluster.nodes[lagging].merge_config(json!({"tags": {"nostream": true}})).expect("nostream");
    cluster.nodes[lagging].signal_agent(nix::sys::signal::Signal::SIGHUP);
    let streams =
        format!("select count(*) from pg_stat_replication where application_name = '{}'", cluster.nodes[lagging].name);
    everywhere(cluster, &[old], &streams, "0").await;
}

/// Three writers on the primary `old` through `write_port` for `seconds`
/// (none of their acknowledged rows missing there), then waits until the
/// standby members `dr` have exactly `old`'s rows.
async fn write_ahead(cluster: &PgwardenCluster, write_port: u16, old: usize, dr: &[usize], seconds: u64) {
    let ahead = Writers::start(write_port, SUPERUSER_PASSWORD, "ahead", 3, UP).await.expect("writers");
    ahead.wait_ack_after(std::time::Instant::now() + Duration::from_secs(seconds), UP).await.expect("writes");
    let (acked, lost) = ahead.stop_and_check(UP).await.expect("the old primary's writers");
    assert!(acked > 0 && lost.is_empty(), "{acked} acknowledged, lost: {lost:?}");
    converge(cluster, dr, &rows(cluster, old), "the standby cluster to have the old primary's rows").await;
}

/// The remote cluster fails over asynchronously to a member that had less
/// WAL than the standby leader (a `nostream` replica that stopped streaming
/// while writers kept writing): the new primary's timeline 2 forks off
/// before the standby leader's position, which PostgreSQL can never follow.
/// The standby leader reads the fork from the history file its WAL receiver
/// fetched, stops, is rewound onto the remote primary and follows it; its
/// own replica, past the fork as well, is rewound onto it. No standby
/// member is writable meanwhile, and both end with exactly the new
/// primary's rows.
#[tokio::test]
async fn a_standby_leader_past_the_remote_s_asynchronous_failover_is_rewound_onto_the_new_primary() {
    let (mut cluster, _haproxy, write_port, old, lagging) = two_node_primary_cluster().await;
    // The standby cluster, two members, following through HAProxy.
    let dr = start_standby_cluster(&mut cluster, 2, write_port, json!({}));
    let ports: Vec<u16> = dr.iter().map(|&i| cluster.nodes[i].pg_port).collect();
    let standby_leader = the_one(&cluster, &dr, "/standby-leader").await;
    everywhere(&cluster, &dr, "select count(*) from shared", "1").await;
    let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
    probe.wait_answered(UP).await.expect("the probes reach every standby member");

    // The member that will be promoted stops streaming (and so falls
    // behind). The fork comes after the standby cluster was cloned: its WAL
    // holds the last checkpoint both sides share, which pg_rewind needs.
    stop_streaming(&cluster, lagging, old).await;

    // Writers on the old primary: the standby cluster receives their rows,
    // the lagging member does not.
    write_ahead(&cluster, write_port, old, &dr, 2).await;
    assert_eq!(
        cluster.nodes[lagging]
            .psql("select count(*) from pg_class where relname like 'ahead%'")
            .expect("the lagging member answers")
            .trim(),
        "0"
    );

    // The old primary lost: the lagging member is promoted (asynchronous
    // loss of the writers' rows on the primary side, as configured).
    cluster.nodes[old].kill_node();
    assert_eq!(the_one(&cluster, &[lagging], "/primary").await, lagging);
    let after = Writers::start(write_port, SUPERUSER_PASSWORD, "after", 3, UP).await.expect("writers");
    after.wait_ack_after(std::time::Instant::now() + Duration::from_secs(1), UP).await.expect("writes");
    let (acked, lost) = after.stop_and_check(UP).await.expect("the new primary's writers");
    assert!(acked > 0 && lost.is_empty(), "{acked} acknowledged, lost: {lost:?}");

    // The standby cluster converges on exactly the new primary's rows.
    let primary_rows = rows(&cluster, lagging);
    assert!(!primary_rows.contains("ahead"), "{primary_rows}");
    converge(&cluster, &dr, &primary_rows, "the standby cluster rewound onto the new primary's timeline").await;
    everywhere(&cluster, &dr, "select pg_is_in_recovery()", "t").await;
    assert_eq!(the_one(&cluster, &dr, "/standby-leader").await, standby_leader, "the standby leader kept its key");
    let log = cluster.nodes[standby_leader].agent_log();
    assert!(log.contains("diverged from the remote primary"), "the standby leader rewound: {log}");

    // A changed standby_cluster reaches the running standby leader (as
    // Patroni's PATCH /config): here, the new primary's own port instead
    // of HAProxy's.
    let direct = cluster.nodes[lagging].pg_port;
    cluster
        .patch_config(json!({"standby_cluster": {"host": "127.0.0.1", "port": direct}}))
        .await
        .expect("a new remote for the standby cluster");
    wait_until("the standby leader to stream from the new primary's own port", UP, || async {
        let port = cluster.nodes[standby_leader]
            .psql("select sender_port from pg_stat_wal_receiver where status = 'streaming'")
            .unwrap_or_default();
        if port.trim() == direct.to_string() { Ok(Some(())) } else { Err(port) }
    })
    .await
    .expect("the standby leader follows the changed standby_cluster");

    // The first cluster demoted to replay an archive only (no host, as
    // Patroni's "demote cluster" scenario): nothing to rewind against, so
    // its primary restarts as a standby leader (it stayed stopped before).
    cluster.scope = "itest".into();
    cluster
        .patch_config(json!({"standby_cluster": {"restore_command": "false"}}))
        .await
        .expect("demote the first cluster to archive recovery");
    assert_eq!(the_one(&cluster, &[lagging], "/standby-leader").await, lagging);
    everywhere(&cluster, &[lagging], "select pg_is_in_recovery()", "t").await;
    let report = probe.stop().await;
    assert!(report.writers().is_empty(), "standby members accepted writes: {:?}", report.spans);
}

/// As above, but the remote's new primary stopped streaming before the
/// standby cluster was cloned: its fork point lies before anything the
/// standby leader has, and pg_rewind cannot run ("could not find previous WAL
/// record"). With `remove_data_directory_on_rewind_failure` the standby
/// leader moves its data aside and copies the remote primary afresh (as a
/// rejoin onto a leader of its own cluster does); its replica then does the
/// same from it. Neither is ever writable.
#[tokio::test]
async fn a_standby_leader_that_cannot_be_rewound_is_copied_afresh_when_configured() {
    let (mut cluster, _haproxy, write_port, old, lagging) = two_node_primary_cluster().await;
    stop_streaming(&cluster, lagging, old).await;
    let dr = start_standby_cluster(
        &mut cluster,
        2,
        write_port,
        json!({"postgresql": {"remove_data_directory_on_rewind_failure": true}}),
    );
    let ports: Vec<u16> = dr.iter().map(|&i| cluster.nodes[i].pg_port).collect();
    let standby_leader = the_one(&cluster, &dr, "/standby-leader").await;
    let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
    probe.wait_answered(UP).await.expect("the probes reach every standby member");
    write_ahead(&cluster, write_port, old, &dr, 1).await;

    cluster.nodes[old].kill_node();
    assert_eq!(the_one(&cluster, &[lagging], "/primary").await, lagging);
    wait_until("a write through HAProxy to the new primary", UP, || async {
        Ok::<_, String>(psql_port(write_port, "insert into shared values (2)").ok())
    })
    .await
    .expect("a row on the new primary");
    let primary_rows = rows(&cluster, lagging);
    converge(&cluster, &dr, &primary_rows, "the standby cluster copied afresh from the new primary").await;
    everywhere(&cluster, &dr, "select pg_is_in_recovery()", "t").await;
    let log = cluster.nodes[standby_leader].agent_log();
    assert!(log.contains("copying the remote primary afresh"), "{log}");
    let kept = std::fs::read_dir(cluster.nodes[standby_leader].dir.path())
        .expect("the node's directory")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("rewind-failed"));
    assert!(kept, "the old data directory is kept aside");
    let report = probe.stop().await;
    assert!(report.writers().is_empty(), "standby members accepted writes: {:?}", report.spans);
}

/// Patroni's "demote cluster" then "promote cluster" with an archive only
/// (no host): a standby cluster `dr` replays the first cluster's WAL
/// archive; the first cluster is demoted to replay that archive too, then
/// `dr` is promoted. Its new timeline must fork after the first cluster's
/// shutdown checkpoint, or the demoted leader (with no server to rewind
/// from) can never follow it: so the demotion archives the WAL file with
/// the shutdown checkpoint (which the archiver never sends: it is not
/// full), as Patroni's does. Writers on every member of both clusters see
/// at most one writable node at any moment.
#[tokio::test]
async fn a_cluster_demoted_to_an_archive_follows_the_other_cluster_promoted_from_it() {
    init_logging();
    let archive = tempfile::tempdir().expect("archive dir");
    std::fs::set_permissions(archive.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let dir = archive.path().display();
    let restore = format!("cp {dir}/%f %p");
    let archiving = json!({"bootstrap": {"dcs": {"postgresql": {"parameters": {
        "archive_mode": "on",
        "archive_command": format!("test ! -f {dir}/%f && cp %p {dir}/%f"),
        "wal_keep_size": "64MB",
    }}}}});
    let mut cluster = PgwardenCluster::start(0).await.expect("etcd");
    let node = cluster.add_node("node1", "").expect("node1");
    node.merge_config(archiving.clone()).expect("archiving");
    cluster.start_all().expect("node1");
    assert_eq!(cluster.wait_primary(UP).await.expect("node1 leads"), 0);
    cluster.nodes[0].psql("create table t (id int primary key); insert into t values (1)").expect("row 1");
    // Separately: one query string is one transaction, and its commit
    // would come after the switch.
    cluster.nodes[0].psql("select pg_switch_wal()").expect("switch");
    // The standby cluster: cloned from node1, then replaying the archive only.
    let write_port = cluster.nodes[0].pg_port;
    let dr = start_standby_cluster(&mut cluster, 1, write_port, archiving);
    let dr1 = dr[0];
    assert_eq!(the_one(&cluster, &dr, "/standby-leader").await, dr1);
    everywhere(&cluster, &dr, "select count(*) from t", "1").await;
    cluster
        .patch_config(json!({"standby_cluster": {"restore_command": restore}}))
        .await
        .expect("dr replays the archive only");
    wait_until("dr1 to replay the archive only", UP, || async {
        let body = cluster.nodes[dr1].get("/patroni").unwrap_or_default();
        Ok::<_, String>(body.contains("\"replication_state\":\"in archive recovery\"").then_some(()))
    })
    .await
    .expect("archive recovery");
    let ports: Vec<u16> = [0, dr1].iter().map(|&i| cluster.nodes[i].pg_port).collect();
    let probe = WriteProbe::start(&ports, SUPERUSER_PASSWORD);
    probe.wait_answered(UP).await.expect("the probes reach both clusters");
    cluster.nodes[0].psql("insert into t values (2)").expect("row 2");
    cluster.nodes[0].psql("select pg_switch_wal()").expect("switch");
    everywhere(&cluster, &dr, "select count(*) from t", "2").await;

    // demote-cluster, to the same archive: node1 stops cleanly, archives
    // the file with its shutdown checkpoint and replays the archive.
    let node1_config = cluster.nodes[0].config_path().display().to_string();
    let args = ["-c", &node1_config, "demote-cluster", "--restore-command", &restore, "--force"];
    let (ok, stdout, stderr) = run("pgwardenctl", &args, &[]).expect("ctl");
    assert!(ok, "{stdout}{stderr}");
    cluster.scope = "itest".into();
    assert_eq!(the_one(&cluster, &[0], "/standby-leader").await, 0);
    everywhere(&cluster, &[0], "select pg_is_in_recovery()", "t").await;
    let log = cluster.nodes[0].agent_log();
    assert!(log.contains("archived the WAL file with the shutdown checkpoint"), "{log}");

    // promote-cluster on dr, once it replayed everything node1 has (the
    // shutdown checkpoint included: only the archived file holds it): its
    // new timeline then forks after it.
    let replayed = cluster.nodes[0].psql("select pg_last_wal_replay_lsn()").expect("node1's position");
    let caught_up = format!("select pg_last_wal_replay_lsn() >= '{}'::pg_lsn", replayed.trim());
    everywhere(&cluster, &dr, &caught_up, "t").await;
    let dr_config = cluster.nodes[dr1].config_path().display().to_string();
    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &dr_config, "promote-cluster", "--force"], &[]).expect("ctl");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(the_one(&cluster, &dr, "/primary").await, dr1);
    cluster.nodes[dr1].psql("insert into t values (3)").expect("row 3 on dr1");
    cluster.nodes[dr1].psql("select pg_switch_wal()").expect("switch");
    // node1 follows dr1's new timeline from the archive, with no rewind.
    everywhere(&cluster, &[0], "select count(*) from t", "3").await;
    everywhere(&cluster, &[0], "select pg_is_in_recovery()", "t").await;
    let report = probe.stop().await;
    assert_eq!(report.two_writer_seconds(), 0.0, "two writable nodes: {:?}", report.spans);
}
