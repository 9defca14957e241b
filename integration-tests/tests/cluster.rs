//! A running cluster with real etcd, PostgreSQL and HAProxy: bootstrap, streaming
//! replicas, routing through HAProxy by the health checks, restarts that keep
//! the data, and a foreign data directory that refuses to join untouched.

use std::collections::BTreeMap;
use std::time::Duration;

use pgwarden_integration_tests::cluster::psql_port;
use pgwarden_integration_tests::haproxy::deploy_config;
use pgwarden_integration_tests::{HaProxy, PgInstance, PgwardenCluster, free_port, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

async fn wait_row_everywhere(cluster: &PgwardenCluster, sql: &str, expected: &str) {
    for node in &cluster.nodes {
        wait_until(&format!("{sql} = {expected} on {}", node.name), Duration::from_secs(20), || async {
            match node.psql(sql) {
                Ok(value) if value == expected => Ok(Some(())),
                Ok(value) => Err(value),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .expect("the row reaches every node");
    }
}

#[tokio::test]
async fn three_nodes_one_leader_two_streaming_replicas_behind_haproxy() {
    init_logging();
    // node1 has a pooler next to it (Patroni's proxy_address).
    let pooler = |i| if i == 1 { "postgresql:\n  proxy_address: 127.0.0.1:6432\n".to_string() } else { String::new() };
    let cluster = PgwardenCluster::start_with(3, pooler).await.expect("start the cluster");
    let leader = cluster.wait_healthy(UP).await.expect("one leader and two streaming replicas");
    for (name, proxy_url) in
        [("node1", serde_json::json!("postgres://127.0.0.1:6432/postgres")), ("node2", serde_json::Value::Null)]
    {
        let value = cluster.get_key(&format!("members/{name}")).await.expect("etcd").expect("the member key");
        let member: serde_json::Value = serde_json::from_str(&value).expect("json");
        assert_eq!(member["proxy_url"], proxy_url, "{name}: proxy_url only where proxy_address is set");
    }
    let primaries = cluster.nodes.iter().filter(|n| n.check("/primary") == 200).count();
    assert_eq!(primaries, 1, "/primary is 200 on exactly one node");
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(node.check("/health"), 200, "{} runs PostgreSQL", node.name);
        if i != leader {
            assert_eq!(node.check("/primary"), 503, "{} is not primary", node.name);
            assert_eq!(node.psql("select pg_is_in_recovery()").expect("query"), "t");
        }
    }

    let (write, read, stats) = (free_port(), free_port(), free_port());
    let config = deploy_config(write, read, stats, &cluster.backends());
    let _haproxy = HaProxy::start(&config, &[write, read, stats]).await.expect("start haproxy");
    // HAProxy marks servers up by the health checks: wait for the write port.
    let wrote_on = wait_until("a write through HAProxy's write port", Duration::from_secs(20), || async {
        psql_port(
            write,
            "create table if not exists t(id int primary key, note text); \
                          insert into t values (1, 'through haproxy') on conflict do nothing; \
                          select inet_server_port()",
        )
        .map(Some)
        .map_err(|e| e.to_string())
    })
    .await
    .expect("write through haproxy");
    assert!(
        wrote_on.ends_with(&cluster.nodes[leader].pg_port.to_string()),
        "the write landed on the leader: {wrote_on}"
    );
    wait_row_everywhere(&cluster, "select note from t where id = 1", "through haproxy").await;

    let mut seen_ports = BTreeMap::new();
    for _ in 0..6 {
        let answer = wait_until("a read through HAProxy's read port", Duration::from_secs(20), || async {
            psql_port(read, "select pg_is_in_recovery()::text || ':' || inet_server_port()")
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("read through haproxy");
        let (recovery, port) = answer.split_once(':').expect("two fields");
        assert_eq!(recovery, "true", "the read port lands on a replica");
        *seen_ports.entry(port.to_string()).or_insert(0) += 1;
    }
    assert!(!seen_ports.contains_key(&cluster.nodes[leader].pg_port.to_string()));

    // /cluster comes from the member keys, which trail /patroni by up to a loop_wait.
    let body =
        wait_until("/cluster to show one leader and two streaming replicas", Duration::from_secs(10), || async {
            let body = cluster.nodes[0].get("/cluster").ok_or("no answer")?;
            let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let members = json["members"].as_array().cloned().unwrap_or_default();
            let leaders = members.iter().filter(|m| m["role"] == "leader").count();
            let streaming = members.iter().filter(|m| m["role"] == "replica" && m["state"] == "streaming").count();
            if leaders == 1 && streaming == 2 { Ok(Some(body)) } else { Err(body) }
        })
        .await
        .expect("/cluster");
    assert!(body.contains(&format!("\"name\":\"{}\"", cluster.nodes[leader].name)), "{body}");

    // The replication user's password is only in the 0600 pgpass file, never on a command line.
    for node in &cluster.nodes {
        let pgpass = node.data_dir().with_file_name("data.pgpass");
        let mode =
            std::fs::metadata(&pgpass).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        assert_eq!(mode.expect("pgpass exists"), 0o600, "{}", pgpass.display());
        // Each line names the one server it is for (the leader this replica
        // streams from), never any host.
        let contents = std::fs::read_to_string(&pgpass).expect("read pgpass");
        if node.name != cluster.nodes[leader].name {
            let scope = format!("127.0.0.1:{}:*:", cluster.nodes[leader].pg_port);
            assert!(!contents.is_empty() && contents.lines().all(|l| l.starts_with(&scope)), "{contents}");
        }
        assert!(
            !node.agent_log().contains(pgwarden_integration_tests::cluster::REPLICATION_PASSWORD),
            "password in the log"
        );
    }
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().expect("ps");
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(pgwarden_integration_tests::cluster::REPLICATION_PASSWORD));
}

#[tokio::test]
async fn restarts_keep_the_data_and_do_not_reclone() {
    init_logging();
    let mut cluster = PgwardenCluster::start(3).await.expect("start the cluster");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    let sysid = cluster.system_identifier().await.expect("system identifier");
    cluster.nodes[leader].psql("create table kept(v text); insert into kept values ('still here')").expect("write");
    wait_row_everywhere(&cluster, "select v from kept", "still here").await;

    // A replica's agent restarts: it comes back without re-cloning.
    let replica = (leader + 1) % 3;
    let marker = cluster.nodes[replica].data_dir().join("pgwarden_test_marker");
    std::fs::write(&marker, "kept").expect("write marker");
    assert!(cluster.nodes[replica].stop_agent(), "the agent stops on SIGTERM");
    assert!(cluster.nodes[replica].postmaster_pid().is_none(), "a clean agent stop stops PostgreSQL");
    cluster.nodes[replica].start_agent().expect("restart the agent");
    cluster.wait_healthy(UP).await.expect("healthy again");
    assert!(marker.exists(), "the replica was not re-cloned");
    assert_eq!(cluster.nodes[replica].agent_log().matches("cloning with pg_basebackup").count(), 1, "cloned once only");

    // The whole cluster stops (replicas first, the leader last, as an
    // operator stops it without failing over) and starts: same system
    // identifier, same data.
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    let order: Vec<usize> = (0..3).filter(|&i| i != leader).chain([leader]).collect();
    for i in order {
        let node = &mut cluster.nodes[i];
        assert!(node.stop_agent(), "{} stops cleanly", node.name);
    }
    for node in &cluster.nodes {
        assert!(node.postmaster_pid().is_none(), "{} stopped PostgreSQL", node.name);
    }
    for node in &mut cluster.nodes {
        node.start_agent().expect("start again");
    }
    cluster.wait_healthy(UP).await.expect("healthy after a full restart");
    assert_eq!(cluster.system_identifier().await.expect("system identifier"), sysid);
    wait_row_everywhere(&cluster, "select v from kept", "still here").await;
    for node in &cluster.nodes {
        assert_eq!(
            node.agent_log().matches("running initdb").count(),
            usize::from(node.agent_log().contains("won the bootstrap race: initialising"))
        );
    }
}

#[tokio::test]
async fn a_node_with_a_foreign_data_directory_refuses_and_touches_nothing() {
    init_logging();
    let mut cluster = PgwardenCluster::start(1).await.expect("start the cluster");
    cluster.wait_healthy(UP).await.expect("healthy");
    // A data directory from another cluster, initialised but not running.
    let foreign = PgInstance::init("foreign").expect("initdb elsewhere");
    let node = cluster.add_node("intruder", "").expect("add a node");
    let data = node.data_dir();
    std::fs::rename(foreign.data_dir(), &data).expect("move the foreign data in");
    let snapshot = |dir: &std::path::Path| -> Vec<(String, u64, std::time::SystemTime)> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                let entry = entry.expect("entry");
                let meta = entry.metadata().expect("metadata");
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    files.push((entry.path().display().to_string(), meta.len(), meta.modified().expect("mtime")));
                }
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&data);
    node.start_agent().expect("start the intruder's agent");
    node.start_health().expect("start its health API");
    let body = wait_until("the intruder to refuse", Duration::from_secs(30), || async {
        match node.get("/patroni") {
            Some(body) if body.contains("refused") => Ok(Some(body)),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("refusal reported");
    assert!(body.contains("refusing to join"), "{body}");
    // Give it several loop_waits to misbehave.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.postmaster_pid().is_none(), "PostgreSQL was not started on foreign data");
    assert_eq!(snapshot(&data), before, "the foreign data directory is untouched");
    assert!(node.agent_log().contains("refusing to join"));
    assert_eq!(node.check("/health"), 503);
}

/// A primary pgwarden finds running in a scope etcd knows nothing of (no
/// `initialize`, no `leader`: someone else's cluster, such as one run by
/// Patroni on etcd's v2 API or under another namespace) is neither managed
/// nor stopped: not by the agent's HA loop (it used to fence it at once), not
/// when the agent stops (it used to stop whatever ran in `data_dir`), and not
/// by the fencer running without an agent.
#[tokio::test]
async fn a_primary_in_a_scope_etcd_does_not_know_is_neither_managed_nor_stopped() {
    init_logging();
    let mut cluster = PgwardenCluster::start(0).await.expect("etcd");
    let foreign = PgInstance::init("unmanaged").expect("initdb");
    let node = cluster.add_node("node1", "").expect("node");
    let data = node.data_dir();
    std::fs::rename(foreign.data_dir(), &data).expect("move the data directory in");
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
    text.push_str(&format!("port = {}\nunix_socket_directories = '{}'\n", node.pg_port, node.dir.path().display()));
    std::fs::write(&conf, text).expect("write postgresql.conf");
    let mut start = std::process::Command::new(pgwarden_integration_tests::postgres::binaries().path("pg_ctl"));
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(node.dir.path().join("unmanaged.log"))
        .args(["start", "-w", "-t", "60"])
        .current_dir(node.dir.path())
        .stdin(std::process::Stdio::null());
    let started = pgwarden_integration_tests::process::run_as_postgres(&mut start).status().expect("pg_ctl");
    assert!(started.success(), "the unmanaged primary starts");
    let postmaster = node.postmaster_pid().expect("a postmaster");

    node.start_agent().expect("agent");
    node.start_health().expect("health API");
    wait_until("the agent to refuse", UP, || async {
        Ok::<_, String>(node.agent_log().contains("etcd holds no cluster under this scope").then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", node.agent_log()));
    assert!(node.stop_agent(), "the agent stops on SIGTERM");
    assert!(node.agent_log().contains("leaving PostgreSQL as it is"), "{}", node.agent_log());
    assert_eq!(node.postmaster_pid(), Some(postmaster), "the agent left the primary running");
    assert_eq!(node.psql("select pg_is_in_recovery()").expect("psql"), "f");

    // The fencer, restarted with no agent beside it, judges it and leaves it.
    let node = &mut cluster.nodes[0];
    node.kill_health();
    node.start_health().expect("health API again");
    let node = &cluster.nodes[0];
    wait_until("the fencer's judgement", UP, || async {
        Ok::<_, String>(node.health_log().contains("leaving it running").then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", node.health_log()));
    assert_eq!(node.postmaster_pid(), Some(postmaster), "the fencer left the primary running");
}

/// DESIGN invariant 3: a duplicate member name is refused. A fourth node
/// started with a running member's name (its own ports and data) waits out
/// the other key for ttl + 5 s, then exits with 78, having written nothing:
/// the running member's key is untouched.
#[tokio::test]
async fn a_second_node_with_a_members_name_is_refused() {
    init_logging();
    let mut cluster = PgwardenCluster::start(2).await.expect("start the cluster");
    cluster.wait_healthy(UP).await.expect("healthy");
    let before = cluster.get_key("members/node2").await.expect("etcd").expect("node2's key");
    let twin = cluster.add_node("node2", "").expect("a twin named node2");
    twin.start_agent().expect("agent");
    let started = std::time::Instant::now();
    let code = cluster.nodes[2].wait_agent_exit(UP).await;
    let log = cluster.nodes[2].agent_log();
    assert_eq!(code, Some(78), "{log}");
    // Its agent answers at other addresses: refused at once, in Patroni's words.
    assert!(log.contains("Can't start; there is already a node named \"node2\" running"), "{log}");
    println!("refused after {:?}", started.elapsed());
    assert!(!cluster.nodes[2].data_dir().join("PG_VERSION").exists(), "no data written");
    let after = cluster.get_key("members/node2").await.expect("etcd").expect("node2's key");
    let api = |json: &str| serde_json::from_str::<serde_json::Value>(json).expect("json")["api_url"].clone();
    assert_eq!(api(&after), api(&before), "the running member's key is its own");

    // A twin that even advertises node2's REST address is told apart by its
    // PostgreSQL address (its key is waited out: asking that address could
    // reach the twin's own REST API).
    let node2_rest = cluster.nodes.iter().find(|n| n.name == "node2").expect("node2").rest_port;
    let twin = cluster.add_node("node2", "").expect("a second twin");
    let path = twin.config_path();
    let own = format!("connect_address: 127.0.0.1:{}", twin.rest_port);
    let yaml = std::fs::read_to_string(&path).expect("config");
    assert!(yaml.contains(&own), "{yaml}");
    std::fs::write(&path, yaml.replace(&own, &format!("connect_address: 127.0.0.1:{node2_rest}"))).expect("write");
    twin.start_agent().expect("agent");
    let code = cluster.nodes[3].wait_agent_exit(UP).await;
    let log = cluster.nodes[3].agent_log();
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains("is in use by another node"), "{log}");
    let after = cluster.get_key("members/node2").await.expect("etcd").expect("node2's key");
    let conn = |json: &str| serde_json::from_str::<serde_json::Value>(json).expect("json")["conn_url"].clone();
    assert_eq!((api(&after), conn(&after)), (api(&before), conn(&before)), "the running member's key is its own");
}

/// Patroni parity (issue 23): a node whose `data_dir` lies under directories
/// that do not exist yet creates them (0700) and joins, as Patroni's does;
/// pgwarden used to refuse to start.
#[tokio::test]
async fn a_data_dir_under_missing_directories_is_created() {
    init_logging();
    let mut cluster = PgwardenCluster::start(1).await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    let node = cluster.add_node("node2", "").expect("node2");
    let nested = node.dir.path().join("not/yet/there/data");
    let yaml = std::fs::read_to_string(node.config_path()).expect("config");
    let own = format!("data_dir: {}", node.data_dir().display());
    assert!(yaml.contains(&own), "{yaml}");
    std::fs::write(node.config_path(), yaml.replace(&own, &format!("data_dir: {}", nested.display()))).expect("write");
    cluster.start_all().expect("start node2");
    wait_until("node2 to stream from node1", UP, || async {
        let body = cluster.nodes[1].get("/patroni").ok_or("no answer")?;
        Ok::<_, String>(body.contains("\"replication_state\":\"streaming\"").then_some(()))
    })
    .await
    .expect("node2 streams");
    let mode = std::fs::metadata(nested.parent().expect("parent")).expect("created").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
    assert!(nested.join("PG_VERSION").exists());
}

/// The version matrix (`make test-pg-versions`) runs the suite with another
/// PostgreSQL first on `PATH` and `PGWARDEN_TEST_PG_MAJOR` naming it: the
/// cluster must really run that version (else the matrix proves nothing).
/// Without the variable, the first installation on `PATH` (Debian's 15).
#[tokio::test]
async fn the_cluster_runs_the_postgresql_major_the_test_asks_for() {
    init_logging();
    let wanted: u32 = match std::env::var("PGWARDEN_TEST_PG_MAJOR") {
        Ok(major) => major.parse().expect("PGWARDEN_TEST_PG_MAJOR is a major version"),
        Err(_) => pgwarden_integration_tests::postgres::binaries_major(),
    };
    let cluster = PgwardenCluster::start(2).await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    for node in &cluster.nodes {
        let body: serde_json::Value = serde_json::from_str(&node.get("/patroni").expect("/patroni")).expect("json");
        let version = body["server_version"].as_u64().expect("server_version");
        assert_eq!(version / 10_000, u64::from(wanted), "{} runs {version}", node.name);
        assert!(node.agent_log().contains(&format!("major={wanted}")), "the agent says which binaries it runs");
    }
}
