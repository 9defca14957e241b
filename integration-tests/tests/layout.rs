//! Debian's layout (`postgresql.config_dir`, `custom_conf`): the
//! configuration lives in `/etc/postgresql/<v>/main`-style directories, not in
//! the data directory. node1 keeps Debian's own `postgresql.conf` (its
//! `include_dir = 'conf.d'` too) as the base file; node2, cloned from it,
//! finds `pg_hba.conf` through the copies in the data directory and runs its
//! own `custom_conf`; a switchover each way works (pg_rewind told where the
//! configuration is).

use std::path::Path;
use std::time::Duration;

use pgwarden_integration_tests::postgres::binaries_major;
use pgwarden_integration_tests::process::give_to_postgres;
use pgwarden_integration_tests::service::run;
use pgwarden_integration_tests::{PgwardenCluster, init_logging, wait_until};
use serde_json::json;

const UP: Duration = Duration::from_secs(90);

/// Writes `path` and gives it, and its directories up to `owned_from`, to
/// `postgres` (Debian's `/etc/postgresql/<v>/main` belongs to it).
fn write_owned(owned_from: &Path, path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    let mut at = path;
    while at != owned_from {
        give_to_postgres(at);
        at = at.parent().expect("below owned_from");
    }
    give_to_postgres(owned_from);
}

async fn shows(cluster: &PgwardenCluster, node: usize, setting: &str, want: &str) {
    wait_until(&format!("{} to show {setting} = {want}", cluster.nodes[node].name), UP, || async {
        match cluster.nodes[node].psql(&format!("show {setting}")) {
            Ok(v) if v.trim() == want => Ok(Some(())),
            Ok(v) => Err(v),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect(setting);
}

async fn switchover_to(cluster: &PgwardenCluster, to: usize) {
    let config = cluster.nodes[0].config_path().display().to_string();
    let name = cluster.nodes[to].name.clone();
    let (ok, stdout, stderr) =
        run("pgwardenctl", &["-c", &config, "switchover", "--candidate", &name, "--force"], &[]).expect("ctl");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy after the switchover"), to);
}

#[tokio::test]
async fn a_debian_style_config_dir_and_custom_conf_are_used_in_place() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.add_node("node1", "").expect("node1");
    cluster.add_node("node2", "").expect("node2");

    // node1: Debian's files, as `pg_createcluster` leaves them.
    let n1 = &cluster.nodes[0];
    let etc1 = n1.dir.path().join("etc/15/main");
    write_owned(
        &etc1,
        &etc1.join("postgresql.conf"),
        &format!(
            "# Debian's postgresql.conf\ndata_directory = '{}'\nhba_file = '{}/pg_hba.conf'\nport = 5432\n\
             work_mem = '5MB'\ninclude_dir = 'conf.d'\n",
            n1.data_dir().display(),
            etc1.display()
        ),
    );
    write_owned(&etc1, &etc1.join("conf.d/tuning.conf"), "maintenance_work_mem = '77MB'\n");
    n1.merge_config(json!({"postgresql": {"config_dir": etc1.display().to_string()}})).expect("node1 config");

    // node2: its own directory with only conf.d, and its own custom_conf.
    let n2 = &cluster.nodes[1];
    let etc2 = n2.dir.path().join("etc/15/main");
    write_owned(&etc2, &etc2.join("conf.d/empty.conf"), "");
    let custom = n2.dir.path().join("custom.conf");
    write_owned(n2.dir.path(), &custom, "work_mem = '9MB'\n");
    n2.merge_config(json!({"postgresql": {
        "config_dir": etc2.display().to_string(),
        "custom_conf": custom.display().to_string(),
    }}))
    .expect("node2 config");

    cluster.nodes[0].start_agent().expect("agent");
    cluster.nodes[0].start_health().expect("health");
    cluster.nodes[0].start_controller().expect("controller");
    assert_eq!(cluster.wait_primary(UP).await.expect("node1 leads"), 0);
    cluster.start_all().expect("start node2");
    assert_eq!(cluster.wait_healthy(UP).await.expect("node2 streams"), 0);

    // node1 runs Debian's settings, from its config_dir.
    shows(&cluster, 0, "config_file", &etc1.join("postgresql.conf").display().to_string()).await;
    shows(&cluster, 0, "hba_file", &etc1.join("pg_hba.conf").display().to_string()).await;
    shows(&cluster, 0, "maintenance_work_mem", "77MB").await;
    shows(&cluster, 0, "work_mem", "5MB").await;
    let base = std::fs::read_to_string(etc1.join("postgresql.base.conf")).expect("the base file");
    assert!(base.starts_with("# Debian's postgresql.conf"), "Debian's file kept as the base: {base}");
    let data1 = cluster.nodes[0].data_dir();
    assert!(!data1.join("postgresql.conf").exists(), "no configuration left in the data directory");
    for copy in ["postgresql.base.conf.backup", "pg_hba.conf.backup"] {
        assert!(data1.join(copy).exists(), "{copy}: the copy a clone needs");
    }
    // Patroni's cache of the `config` key, in the data directory as Patroni keeps it.
    wait_until("patroni.dynamic.json on node1", UP, || async {
        let cached = std::fs::read_to_string(data1.join("patroni.dynamic.json")).unwrap_or_default();
        Ok::<_, String>(cached.contains("\"loop_wait\"").then_some(()))
    })
    .await
    .expect("the config key cached");

    // node2 runs its custom_conf, in its own config_dir.
    shows(&cluster, 1, "config_file", &etc2.join("postgresql.conf").display().to_string()).await;
    shows(&cluster, 1, "work_mem", "9MB").await;
    shows(&cluster, 1, "maintenance_work_mem", "64MB").await;
    assert!(etc2.join("pg_hba.conf").exists(), "pg_hba.conf from the clone's copy");
    assert!(!etc2.join("postgresql.base.conf").exists(), "custom_conf replaces the base file");
    // PostgreSQL 19's pg_hosts.conf (initdb writes one) lives beside
    // pg_hba.conf too, and reaches the clone through its copy.
    if binaries_major() >= 19 {
        for (node, etc) in [(0, &etc1), (1, &etc2)] {
            shows(&cluster, node, "hosts_file", &etc.join("pg_hosts.conf").display().to_string()).await;
            assert!(etc.join("pg_hosts.conf").exists(), "node{}: pg_hosts.conf in config_dir", node + 1);
            assert!(!cluster.nodes[node].data_dir().join("pg_hosts.conf").exists(), "node{}", node + 1);
        }
        assert!(data1.join("pg_hosts.conf.backup").exists(), "the copy a clone needs");
    }

    // A switchover each way: the old primary rejoins each time.
    cluster.nodes[0].psql("create table t (id int); insert into t values (1)").expect("a row");
    switchover_to(&cluster, 1).await;
    switchover_to(&cluster, 0).await;
    wait_until("the row on node2", UP, || async {
        Ok::<_, String>(cluster.nodes[1].psql("select count(*) from t").ok().filter(|c| c == "1"))
    })
    .await
    .expect("replicated");
    shows(&cluster, 0, "maintenance_work_mem", "77MB").await;
}
