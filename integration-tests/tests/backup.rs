//! Backups with a real pgBackRest (Debian's package) on a local repository:
//! replicas created by `create_replica_methods` (a failing script first, then
//! a pgBackRest restore, falling back in order), a replica that recovers from
//! the archive only through `postgresql.recovery_conf`, and a new cluster
//! bootstrapped by a point-in-time restore (`bootstrap.method` with
//! `recovery_conf`) and `post_bootstrap`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden_integration_tests::backrest::Backrest;
use pgwarden_integration_tests::process::give_to_postgres;
use pgwarden_integration_tests::{PgwardenCluster, init_logging, wait_until};
use serde_json::json;

const UP: Duration = Duration::from_secs(90);

/// An executable script in `dir`, readable and runnable by `postgres`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    give_to_postgres(&path);
    path
}

/// Makes the primary archive its current segment and waits until it is.
async fn archive_current_segment(cluster: &PgwardenCluster, primary: usize) {
    let segment = cluster.nodes[primary]
        .psql("select pg_walfile_name(pg_current_wal_lsn()); select pg_switch_wal()")
        .expect("switch WAL");
    let segment = segment.lines().next().unwrap_or_default().trim().to_string();
    wait_until("the segment archived", UP, || async {
        let archived = cluster.nodes[primary]
            .psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
            .map_err(|e| e.to_string())?;
        let archived = archived.trim().to_string();
        if archived.as_str() >= segment.as_str() { Ok(Some(())) } else { Err(format!("archived {archived:?}")) }
    })
    .await
    .expect("archived");
}

async fn rows_on(cluster: &PgwardenCluster, node: usize, sql: &str, want: &str) {
    wait_until(&format!("{} to show {want:?}", cluster.nodes[node].name), UP, || async {
        match cluster.nodes[node].psql(sql) {
            Ok(out) if out.trim() == want => Ok(Some(())),
            Ok(out) => Err(format!("got {:?}", out.trim())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("rows");
}

/// node1 leading a new cluster and archiving to a new pgBackRest repository,
/// with a table `t` holding row 1 (`first`) and a full backup of it; node1
/// runs with `max_connections = 120`.
async fn backed_up_primary(first: &str) -> (Backrest, PgwardenCluster) {
    init_logging();
    let backrest = Backrest::new();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.add_node("node1", "").expect("node1");
    let n1 = &cluster.nodes[0];
    n1.merge_config(backrest.archiving(&n1.data_dir())).expect("node1 config");
    // More connections than the other members' default (100): a standby or
    // restore of it must run with at least as many, as Patroni sees to.
    n1.merge_config(json!({"postgresql": {"parameters": {"max_connections": 120}}})).expect("node1 config");
    cluster.start_all().expect("start node1");
    assert_eq!(cluster.wait_primary(UP).await.expect("node1 leads"), 0);
    let n1 = &cluster.nodes[0];
    let (data1, socket1) = (n1.data_dir(), n1.dir.path().to_path_buf());
    backrest.run(&data1, &socket1, n1.pg_port, &["stanza-create"]);
    n1.psql(&format!("create table t (id int primary key, at text); insert into t values (1, '{first}')"))
        .expect("row 1");
    backrest.run(&data1, &socket1, n1.pg_port, &["--type=full", "backup"]);
    (backrest, cluster)
}

#[tokio::test]
async fn replicas_come_from_the_replica_methods_in_order_and_from_the_archive() {
    let (backrest, mut cluster) = backed_up_primary("before the backup").await;
    cluster.nodes[0].psql("insert into t values (2, 'after the backup')").expect("rows after");

    // node2: a method that fails (after leaving a file behind), then the
    // pgBackRest restore, then basebackup, which must not be needed.
    cluster.add_node("node2", "").expect("node2");
    let n2 = &cluster.nodes[1];
    let calls = n2.dir.path().join("broken-method.args");
    let broken = script(
        n2.dir.path(),
        "broken-method",
        &format!(
            "echo \"$@\" > {}\nfor a; do case $a in --datadir=*) touch \"${{a#--datadir=}}/junk\";; esac; done\nexit 3",
            calls.display()
        ),
    );
    let data2 = n2.data_dir();
    n2.merge_config(json!({"postgresql": {
        "create_replica_methods": ["broken", "pgbackrest", "basebackup"],
        "broken": {"command": broken.display().to_string(), "threshold": 10},
        "pgbackrest": {"command": backrest.command(&data2, "--delta restore"), "keep_data": true, "no_params": true},
        "recovery_conf": {"restore_command": backrest.restore_command(&data2)},
    }}))
    .expect("node2 config");
    cluster.start_all().expect("start node2");
    cluster.wait_healthy(UP).await.expect("node2 streams");
    rows_on(&cluster, 1, "select count(*) from t", "2").await;
    rows_on(&cluster, 1, "show max_connections", "120").await;

    let args = std::fs::read_to_string(&calls).expect("the failing method ran first");
    for expected in [
        "--threshold=10".to_string(),
        "--scope=itest".to_string(),
        "--role=replica".to_string(),
        format!("--datadir={}", data2.display()),
        format!("--connstring=dbname=postgres user=replicator host=127.0.0.1 port={}", cluster.nodes[0].pg_port),
    ] {
        assert!(args.contains(&expected), "the method got {args:?}, not {expected}");
    }
    assert!(!args.contains("password"), "no password on a command line: {args}");
    assert!(!data2.join("junk").exists(), "what the failed method left was removed before the next one");
    let log = cluster.nodes[1].agent_log();
    assert!(log.contains("replica created") && log.contains("pgbackrest"), "pgBackRest made the replica:\n{log}");
    let auto_conf = std::fs::read_to_string(data2.join("postgresql.auto.conf")).unwrap_or_default();
    assert!(auto_conf.contains("archive-get"), "a pgBackRest restore, not pg_basebackup: {auto_conf}");

    // node3 never streams (`nostream`): it sees the primary's writes only
    // through the archive, with recovery_conf's restore_command.
    cluster.add_node("node3", "").expect("node3");
    let n3 = &cluster.nodes[2];
    let data3 = n3.data_dir();
    n3.merge_config(json!({
        "tags": {"nostream": true},
        "postgresql": {"recovery_conf": {"restore_command": backrest.restore_command(&data3)}},
    }))
    .expect("node3 config");
    cluster.start_all().expect("start node3");
    rows_on(&cluster, 2, "select count(*) from t", "2").await;
    cluster.nodes[0].psql("insert into t values (3, 'archived only')").expect("row 3");
    archive_current_segment(&cluster, 0).await;
    rows_on(&cluster, 2, "select at from t where id = 3", "archived only").await;
    let receivers = cluster.nodes[0]
        .psql("select count(*) from pg_stat_replication where application_name = 'node3'")
        .expect("senders");
    assert_eq!(receivers.trim(), "0", "node3 must not stream");
    // Reported under Patroni's name, in /patroni and the metric.
    wait_until("node3 to report archive recovery", UP, || async {
        let body = cluster.nodes[2].get("/patroni").unwrap_or_default();
        if body.contains("\"replication_state\":\"in archive recovery\"") { Ok(Some(())) } else { Err(body) }
    })
    .await
    .expect("/patroni");
    let metrics = cluster.nodes[2].get("/metrics").expect("/metrics");
    assert!(metrics.contains("patroni_postgres_in_archive_recovery{scope=\"itest\",name=\"node3\"} 1"), "{metrics}");
    assert!(metrics.contains("patroni_postgres_streaming{scope=\"itest\",name=\"node3\"} 0"), "{metrics}");
}

#[tokio::test]
async fn a_new_cluster_is_bootstrapped_from_a_point_in_time_restore() {
    let (backrest, mut cluster) = backed_up_primary("in the backup").await;
    let n1 = &cluster.nodes[0];
    // Two statements, two transactions: psql -c would run both in one, and
    // the restore point would come before row 2's commit.
    n1.psql("insert into t values (2, 'before the target')").expect("2");
    n1.psql("select pg_create_restore_point('target')").expect("the restore point");
    n1.psql("insert into t values (3, 'after the target')").expect("3");
    archive_current_segment(&cluster, 0).await;

    // A second cluster (its own scope) restored to the restore point.
    cluster.scope = "restored".into();
    cluster.add_node("restored1", "").expect("restored1");
    let r1 = &cluster.nodes[1];
    let data = r1.data_dir();
    let seen = r1.dir.path().join("post-bootstrap.out");
    let post = script(
        r1.dir.path(),
        "post-bootstrap",
        &format!(
            "echo \"$1\" > {seen}\npsql \"$1\" -v ON_ERROR_STOP=1 -c \"create table made_by_post_bootstrap (x int)\" >> {seen} 2>&1",
            seen = seen.display()
        ),
    );
    r1.merge_config(json!({"bootstrap": {
        "method": "pitr",
        "pitr": {
            "command": backrest.command(&data, "restore"),
            "no_params": true,
            "recovery_conf": {
                "restore_command": backrest.restore_command(&data),
                "recovery_target_name": "target",
                "recovery_target_action": "promote",
            },
        },
        "post_bootstrap": post.display().to_string(),
    }}))
    .expect("restored1 config");
    cluster.start_all().expect("start restored1");
    // The recovery ran with node1's 120 connections (it aborts with fewer).
    rows_on(&cluster, 1, "select string_agg(at, ',' order by id) from t", "in the backup,before the target").await;
    wait_until("the restored member to lead its cluster", UP, || async {
        match cluster.nodes[1].check("/primary") {
            200 => Ok(Some(())),
            code => Err(format!("GET /primary: {code}")),
        }
    })
    .await
    .expect("restored1 leads");
    let out = std::fs::read_to_string(&seen).unwrap_or_default();
    assert!(out.contains("dbname=postgres") && !out.contains("test-superuser-secret"), "{out}");
    cluster.nodes[1].psql("select count(*) from made_by_post_bootstrap").expect("post_bootstrap ran");
    // The recovery settings were for the first start only.
    let conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
    assert!(!conf.contains("recovery_target_name"), "{conf}");
    assert_eq!(
        cluster.get_key("initialize").await.expect("etcd"),
        Some(cluster.nodes[0].psql("select system_identifier from pg_control_system()").expect("sysid").trim().into()),
        "the restored cluster keeps the backup's system identifier"
    );

    // A replica joins the restored cluster as any member does.
    cluster.add_node("restored2", "").expect("restored2");
    cluster.start_all().expect("start restored2");
    cluster.wait_healthy_among(&[1, 2], UP).await.expect("the restored cluster has a streaming replica");
    rows_on(&cluster, 2, "select count(*) from t", "2").await;
}
