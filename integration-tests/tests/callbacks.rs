//! Patroni's callbacks on a real cluster: a script records every role
//! change through a failover and the old primary's return; a primary that
//! cannot start again hears `demoted`; `pre_promote`
//! vetoes a promotion; an agent frozen in `pre_promote` does not promote
//! when it thaws.

use std::time::Duration;

use pgwarden_integration_tests::{Fault, LoadedCluster, PgwardenCluster, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

/// Adds `lines` (indented for the `postgresql:` section) to node `i`'s config.
fn add_to_postgresql_section(cluster: &PgwardenCluster, i: usize, lines: &str) {
    let path = cluster.nodes[i].config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replacen("\npostgresql:\n", &format!("\npostgresql:\n{lines}"), 1);
    std::fs::write(&path, text).expect("write config");
}

/// Starts etcd and `n` nodes, each configured by `configure` before it
/// starts; node1 first, so that it bootstraps and leads.
async fn start(n: usize, configure: impl Fn(&PgwardenCluster, usize)) -> PgwardenCluster {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    for i in 1..=n {
        cluster.add_node(&format!("node{i}"), "").expect("node");
    }
    for i in 0..n {
        configure(&cluster, i);
    }
    cluster.start_node1_first(UP).await.expect("start");
    cluster
}

fn recorded(cluster: &PgwardenCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.nodes[i].dir.path().join("callbacks.log")).unwrap_or_default()
}

/// Configures node `i`'s `on_start`, `on_stop` and `on_role_change` as a
/// script that appends its arguments to the node's `callbacks.log`.
fn record_callbacks(cluster: &PgwardenCluster, i: usize) {
    let log = cluster.nodes[i].dir.path().join("callbacks.log");
    let script = cluster.nodes[i].dir.path().join("callback.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display())).expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    pgwarden_integration_tests::process::give_to_postgres(&script);
    let s = script.display();
    add_to_postgresql_section(
        cluster,
        i,
        &format!("  callbacks:\n    on_start: {s}\n    on_stop: {s}\n    on_role_change: {s}\n"),
    );
}

#[tokio::test]
async fn a_callback_script_records_every_role_change_through_a_failover() {
    let mut cluster = start(3, record_callbacks).await;
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    wait_until("the start callbacks", UP, || async {
        let all = recorded(&cluster, leader).contains("on_start primary itest")
            && replicas.iter().all(|&i| recorded(&cluster, i).contains("on_start replica itest"));
        Ok::<_, String>(all.then_some(()))
    })
    .await
    .expect("on_start on every node");

    cluster.nodes[leader].kill_node();
    let new_leader = wait_until("a new leader", UP, || async {
        let primaries: Vec<usize> =
            replicas.iter().copied().filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] => Ok(Some(*one)),
            _ => Err(format!("{primaries:?}")),
        }
    })
    .await
    .expect("failover");
    wait_until("the new leader's role change callback", UP, || async {
        Ok::<_, String>(recorded(&cluster, new_leader).contains("on_role_change primary itest").then_some(()))
    })
    .await
    .expect("on_role_change primary");
    // The old primary comes back: rewound, it follows, and says so.
    cluster.nodes[leader].start_agent().expect("agent");
    cluster.nodes[leader].start_health().expect("health");
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy again"), new_leader);
    wait_until("the old primary's role change callback", UP, || async {
        Ok::<_, String>(recorded(&cluster, leader).contains("on_role_change replica itest").then_some(()))
    })
    .await
    .expect("on_role_change replica");
    for i in 0..3 {
        println!("{}: {}", cluster.nodes[i].name, recorded(&cluster, i).replace('\n', " | "));
    }
}

/// Patroni's "crashed primary demotes after failed attempt to start": the
/// primary's PostgreSQL crashes and cannot start again (a setting
/// PostgreSQL refuses in `postgresql.auto.conf`). Its agent gives the key
/// up, and its `on_role_change` hears `demoted`, as Patroni's does, so a
/// script that moves an address or tells a load balancer hears that this
/// node no longer leads although its PostgreSQL never ran as a replica.
#[tokio::test]
async fn a_primary_that_gives_the_key_up_after_a_failed_start_tells_its_callback_demoted() {
    let cluster = start(2, record_callbacks).await;
    cluster.patch_config(serde_json::json!({"primary_start_timeout": 300})).await.expect("a long start timeout");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    wait_until("the start callback", UP, || async {
        Ok::<_, String>(recorded(&cluster, leader).contains("on_start primary itest").then_some(()))
    })
    .await
    .expect("on_start primary");
    std::fs::write(cluster.nodes[leader].data_dir().join("postgresql.auto.conf"), "foo = bar\n")
        .expect("spoil postgresql.auto.conf");
    let pid = cluster.nodes[leader].postmaster_pid().expect("the primary runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let other = 1 - leader;
    wait_until("the other node leads", UP, || async {
        Ok::<_, String>((cluster.nodes[other].check("/primary") == 200).then_some(()))
    })
    .await
    .expect("failover");
    wait_until("the old primary's callback hears demoted", UP, || async {
        let log = recorded(&cluster, leader);
        Ok::<_, String>(log.contains("on_role_change demoted itest").then_some(()))
    })
    .await
    .expect("on_role_change demoted");
    let log = recorded(&cluster, leader);
    let stopped = log.find("on_stop primary itest").expect("on_stop primary first");
    assert!(stopped < log.find("on_role_change demoted itest").expect("demoted"), "{log}");
    assert!(!log.contains("on_role_change replica"), "its PostgreSQL never ran again: {log}");
}

#[tokio::test]
async fn pre_promote_failing_vetoes_the_promotion() {
    let mut cluster = start(2, |cluster, i| {
        if i == 1 {
            add_to_postgresql_section(cluster, i, "  pre_promote: exit 1;\n");
        }
    })
    .await;
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    assert_eq!(leader, 0, "node1 bootstrapped");
    cluster.nodes[0].kill_node();
    // node2 takes the key, its pre_promote fails, it gives the key up; again.
    wait_until("two vetoed promotions", UP, || async {
        let log = cluster.nodes[1].agent_log();
        Ok::<_, String>((log.matches("pre_promote vetoed the promotion").count() >= 2).then_some(()))
    })
    .await
    .expect("vetoed");
    assert_eq!(cluster.nodes[1].check("/primary"), 503);
    assert_eq!(cluster.nodes[1].psql("select pg_is_in_recovery()").expect("psql"), "t", "never promoted");
}

/// A stalled agent during `pre_promote` (issue 20, finding 5): the first
/// replica to enter its `pre_promote` has its agent frozen (SIGSTOP) there;
/// its lease runs out and the other replica takes over. Thawed, the frozen
/// agent must not promote: it re-checks that the key is still proven its own.
/// Three writers go through HAProxy and every node is probed for
/// writability throughout (the harness's loaded fixture).
#[tokio::test]
async fn an_agent_frozen_in_pre_promote_does_not_promote_when_it_thaws() {
    let cluster = start(3, |cluster, i| {
        if i > 0 {
            // The hook's arguments follow its command line: a script.
            let dir = cluster.nodes[i].dir.path();
            let script = dir.join("pre_promote.sh");
            let body = format!("#!/bin/sh\ntouch {}\nsleep 2\n", dir.join("in_pre_promote").display());
            std::fs::write(&script, body).expect("write the hook");
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
            add_to_postgresql_section(cluster, i, &format!("  pre_promote: {}\n", script.display()));
        }
    })
    .await;
    let mut loaded = LoadedCluster::load(cluster, 3).await.expect("the load");
    assert_eq!(loaded.leader, 0, "node1 bootstrapped");
    Fault::NodeLost.inject(&mut loaded.cluster, 0).await.expect("lose node1");
    let cluster = &loaded.cluster;
    let frozen = wait_until("a candidate in pre_promote", UP, || async {
        Ok::<_, String>((1..3).find(|&i| cluster.nodes[i].dir.path().join("in_pre_promote").exists()))
    })
    .await
    .expect("pre_promote runs");
    cluster.nodes[frozen].signal_agent(nix::sys::signal::Signal::SIGSTOP);
    let other = 3 - frozen;
    wait_until("the other replica to take over", UP, || async {
        Ok::<_, String>((cluster.nodes[other].check("/primary") == 200).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", cluster.nodes[other].agent_log()));
    cluster.nodes[frozen].signal_agent(nix::sys::signal::Signal::SIGCONT);
    wait_until("the thawed node to follow the new primary", UP, || async {
        Ok::<_, String>((cluster.nodes[frozen].check("/replica") == 200).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", cluster.nodes[frozen].agent_log()));
    println!("frozen in pre_promote: {}", cluster.nodes[frozen].name);
    // Thawed, the promotion was abandoned: the key is no longer proven its
    // own (or its lease is gone, which fails the member key's update first).
    // Its health API may confirm it a running replica a moment before the
    // agent logs that, so the log is waited for.
    wait_until("the thawed agent to log the abandoned promotion", UP, || async {
        let log = cluster.nodes[frozen].agent_log();
        let abandoned = log.lines().any(|l| l.contains("action=Promote") && l.contains("failed to"));
        if abandoned { Ok(Some(())) } else { Err(log) }
    })
    .await
    .expect("the promotion abandoned and logged");
    // Never two writable nodes, and the thawed node never wrote: node1,
    // then the other replica. Asynchronous replication: node1's last
    // commits may be lost with its node.
    let report = loaded.finish_asynchronous("an agent frozen in pre_promote").await;
    assert_eq!(report.probes.writers(), [0, other], "the nodes that accepted writes, in order");
}

/// `deploy/callbacks/vip.sh` as pgwarden calls it, with a real address on
/// the loopback interface (the test runs as root, so `ip` needs no sudo).
#[test]
fn the_vip_callback_of_deploy_moves_an_address_with_the_role() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/callbacks/vip.sh");
    let vip = "127.0.0.77";
    let call = |action: &str, role: &str| {
        let output = std::process::Command::new(script)
            .args([action, role, "itest"])
            .env("VIP", format!("{vip}/32"))
            .env("VIP_DEV", "lo")
            .env("IP", "ip")
            .env("VIP_CONF", "/nonexistent")
            .output()
            .expect("run vip.sh");
        assert!(output.status.success(), "vip.sh {action} {role}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let on_lo = || {
        let output = std::process::Command::new("ip").args(["-o", "addr", "show", "dev", "lo"]).output().expect("ip");
        String::from_utf8_lossy(&output.stdout).contains(&format!(" {vip}/32"))
    };
    call("on_stop", "replica"); // clean start, whatever an earlier run left
    assert!(!on_lo());
    assert!(call("on_role_change", "primary").contains("added"), "promoted: the VIP comes");
    assert!(on_lo(), "the address is on lo");
    assert!(call("on_start", "primary").contains("already"), "idempotent");
    assert!(call("on_role_change", "replica").contains("removed"), "demoted: the VIP goes");
    assert!(!on_lo());
    call("on_start", "replica");
    assert!(!on_lo(), "a replica never takes it");
    // A VIP left behind (the node crashed while primary) goes when it starts as a replica.
    call("on_role_change", "primary");
    assert!(on_lo());
    assert!(call("on_start", "replica").contains("removed"), "a stale VIP is removed");
    assert!(!on_lo());
    call("on_role_change", "primary");
    assert!(call("on_stop", "primary").contains("removed"), "stopped (or fenced): the VIP goes");
    assert!(!on_lo());
}
