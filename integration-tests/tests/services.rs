//! The four binaries against real etcd and PostgreSQL: the agent observes
//! PostgreSQL and streams its status, the health API answers from that stream
//! and fails closed, the controller lists members from etcd, `pgwardenctl
//! list` prints them, and bad start-ups are refused with clear messages.

use std::time::Duration;

use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{GetStatusRequest, ListMembersRequest, PostgresState, Role, WatchStatusRequest};
use pgwarden_integration_tests::service::{http, run, spawn};
use pgwarden_integration_tests::{PgwardenCluster, TestDir, free_port, init_logging, wait_until};

async fn health(port: u16, path: &str, expected: u16, within: Duration) -> String {
    wait_until(&format!("GET {path} to answer {expected}"), within, || async move {
        match http("GET", port, path) {
            Ok((status, body)) if status == expected => Ok(Some(body)),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("health answer")
}

#[tokio::test]
async fn agent_health_controller_and_cli_work_together() {
    init_logging();
    let mut cluster = PgwardenCluster::start(1).await.expect("start a one-node cluster");
    cluster.wait_healthy(Duration::from_secs(60)).await.expect("the node leads");
    let node = &mut cluster.nodes[0];
    let pg_port = node.pg_port;
    let config = node.config_path().display().to_string();

    let (ok, stdout, stderr) = run("pgwarden-agent", &["--validate-config", &config], &[]).expect("validate");
    assert!(ok, "the test config is valid: {stdout}{stderr}");

    // The agent's gRPC status reflects the running primary holding the key.
    let url = format!("http://127.0.0.1:{}", node.agent_port);
    let mut client = NodeAgentClient::connect(url).await.expect("connect to the agent");
    let status = client.get_status(GetStatusRequest::default()).await.expect("GetStatus").into_inner();
    assert_eq!(status.postgres_state(), PostgresState::Running);
    assert_eq!(status.role(), Role::Primary);
    assert!(status.holds_leader, "{status:?}");
    assert_eq!(status.member, "node1");
    assert_eq!(status.postmaster_pid as i32, node.postmaster_pid().expect("postmaster pid"));
    let mut stream = client.watch_status(WatchStatusRequest {}).await.expect("WatchStatus").into_inner();
    let first = stream.message().await.expect("stream").expect("a status");
    let second = stream.message().await.expect("stream").expect("another status");
    assert!(second.observed_at_unix_ms >= first.observed_at_unix_ms, "the stream keeps publishing");

    // A second agent on the same data directory is refused, naming the holder.
    let (ok, _, stderr) = run("pgwarden-agent", &[&config], &[]).expect("second agent runs");
    assert!(!ok && stderr.contains("another pgwarden-agent already supervises"), "{stderr}");

    let (code, _) = http("HEAD", node.rest_port, "/primary").expect("HEAD /primary");
    assert_eq!(code, 200);
    let (code, _) = http("OPTIONS", node.rest_port, "/replica").expect("OPTIONS /replica");
    assert_eq!(code, 503);
    let (code, _) = http("POST", node.rest_port, "/health").expect("POST /health");
    assert_eq!(code, 405);

    // PostgreSQL dies under the agent and cannot come back (a foreign process
    // holds its lock file): /primary and /health answer 503 while the agent
    // still holds the leader key.
    let pid = node.postmaster_pid().expect("postmaster pid");
    let pidfile = node.data_dir().join("postmaster.pid");
    let original = std::fs::read_to_string(&pidfile).expect("read postmaster.pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .expect("kill postmaster");
    let fake: Vec<String> = original
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            0 => std::process::id().to_string(),
            7 => "ready   ".to_string(),
            _ => line.to_string(),
        })
        .collect();
    std::fs::write(&pidfile, fake.join("\n") + "\n").expect("write a foreign postmaster.pid");
    health(node.rest_port, "/primary", 503, Duration::from_secs(2)).await;
    assert_eq!(node.check("/health"), 503);
    assert_eq!(node.check("/leader"), 200, "the agent still holds the key");
    // The lock file goes away: the agent restarts PostgreSQL as primary.
    std::fs::remove_file(&pidfile).expect("remove the foreign lock file");
    health(node.rest_port, "/primary", 200, Duration::from_secs(20)).await;

    // The agent killed: its stream goes stale and every check fails closed.
    node.kill_agent();
    let body = health(node.rest_port, "/health", 503, Duration::from_secs(2)).await;
    assert!(body.contains("\"state\":\"unknown\""), "stale state is unknown: {body}");
    assert_eq!(node.check("/primary"), 503);
    let body = health(node.rest_port, "/patroni", 200, Duration::from_secs(1)).await;
    assert!(body.contains("agent"), "/patroni says why: {body}");

    // Without a controller the CLI reads etcd directly.
    node.kill_controller();
    let (ok, stdout, stderr) =
        run("pgwardenctl", &["-c", &config, "-v", "list", "-f", "json"], &[]).expect("list json");
    assert!(ok && stderr.contains("from etcd"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("list -f json is JSON");
    assert_eq!(rows[0]["Member"], "node1");
    assert_eq!(rows[0]["Role"], "Leader");

    // The controller and the CLI read the cluster from etcd.
    let dir = TestDir::new("controller");
    let _controller = spawn("pgwarden-controller", &[&config], &dir, "controller").expect("start controller");
    let controller_port: u16 = std::fs::read_to_string(&config)
        .expect("read config")
        .lines()
        .find_map(|l| l.trim().strip_prefix("controller_grpc_listen: 127.0.0.1:").map(|p| p.parse().expect("port")))
        .expect("controller port in config");
    let url = format!("http://127.0.0.1:{controller_port}");
    let members = wait_until("the controller's gRPC API", Duration::from_secs(15), || {
        let url = url.clone();
        async move {
            let mut client = ControllerClient::connect(url).await.map_err(|e| e.to_string())?;
            let response = client.list_members(ListMembersRequest {}).await.map_err(|e| e.to_string())?;
            Ok(Some(response.into_inner()))
        }
    })
    .await
    .expect("list members");
    let sysid = cluster.system_identifier().await.expect("sysid");
    assert_eq!(members.system_identifier, sysid);
    assert_eq!(members.leader, "node1");
    assert_eq!(members.members.len(), 1);
    assert!(members.members[0].is_leader);
    assert!(members.members[0].grpc_url.starts_with("http://127.0.0.1:"));

    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &config, "list"], &[]).expect("pgwardenctl list");
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with(&format!("+ Cluster: itest ({sysid}) ")), "{stdout}");
    assert!(stdout.contains("| node1  |") && stdout.contains("| Leader |"), "{stdout}");
    let (ok, stdout, stderr) =
        run("pgwardenctl", &["-v", "list"], &[("PATRONICTL_CONFIG_FILE", &config)]).expect("list via env");
    assert!(ok && stdout.contains("node1"), "PATRONICTL_CONFIG_FILE is honoured: {stdout}");
    assert!(stderr.contains("from controller"), "with a controller, the CLI asks it: {stderr}");
    let (ok, stdout, _) = run("pgwardenctl", &["-c", &config, "list", "-f", "yaml"], &[]).expect("list yaml");
    assert!(ok && stdout.contains("Member: node1"), "{stdout}");
    let (ok, stdout, _) = run("pgwardenctl", &["-c", &config, "topology"], &[]).expect("topology");
    assert!(ok && stdout.contains("| node1"), "{stdout}");
    let (ok, stdout, _) = run("pgwardenctl", &["-c", &config, "dsn"], &[]).expect("dsn");
    assert!(ok && stdout.trim() == format!("host=127.0.0.1 port={pg_port}"), "{stdout}");
    let (ok, stdout, _) = run("pgwardenctl", &["-c", &config, "show-config"], &[]).expect("show-config");
    assert!(ok && stdout.contains("ttl: 10") && stdout.contains("loop_wait: 1"), "{stdout}");
    let (ok, stdout, _) = run("pgwardenctl", &["-c", &config, "history", "-f", "json"], &[]).expect("history");
    assert!(ok && stdout.trim().starts_with('['), "{stdout}");
    let (ok, _, stderr) = run("pgwardenctl", &["-c", &config, "dsn", "-m", "nobody"], &[]).expect("dsn nobody");
    assert!(!ok && stderr.contains("nobody is not a member"), "{stderr}");
}

#[tokio::test]
async fn bad_start_ups_are_refused_with_the_cause_and_the_fix() {
    init_logging();
    let dir = TestDir::new("bad");
    // Nothing listens on this etcd port.
    let dead_etcd = free_port();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let yaml = format!(
        "scope: bad\nname: n1\nrestapi:\n  listen: 127.0.0.1:{taken_port}\netcd3:\n  hosts: 127.0.0.1:{dead_etcd}\n\
         postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: {}/data\n",
        dir.path().display()
    );
    let config = dir.path().join("bad.yml");
    std::fs::write(&config, yaml).expect("write config");
    let config = config.display().to_string();

    let (ok, _, stderr) = run("pgwarden-health", &[&config], &[]).expect("run health");
    assert!(!ok, "health must refuse a port in use");
    assert!(
        stderr.contains(&format!("listen on 127.0.0.1:{taken_port}")) && stderr.contains("restapi.listen"),
        "{stderr}"
    );

    let (ok, _, stderr) = run("pgwardenctl", &["-c", &config, "list"], &[]).expect("run ctl");
    assert!(!ok, "list must fail without etcd");
    assert!(stderr.contains("cannot read cluster bad from etcd") && stderr.contains("etcd3.hosts"), "{stderr}");

    let (ok, _, stderr) = run(
        "pgwarden-agent",
        &["--validate-config", &config],
        &[("PATRONI_RESTAPI_LISTEN", "nonsense"), ("PATRONI_BOOTSTRAP_DCS_TTL", "x")],
    )
    .expect("validate with env");
    assert!(!ok && stderr.contains("restapi.listen: expected host:port"), "env overrides are validated: {stderr}");

    // A data directory owned by another user (root) is refused, untouched.
    let foreign = dir.path().join("data");
    std::fs::create_dir_all(&foreign).expect("create a root-owned data dir");
    std::fs::write(foreign.join("keep"), "x").expect("a file in it");
    if pgwarden_integration_tests::postgres_user().is_some() {
        let (ok, _, stderr) = run("pgwarden-agent", &[&config], &[]).expect("run agent");
        assert!(!ok && stderr.contains("belongs to root") && stderr.contains("chown"), "{stderr}");
        assert_eq!(std::fs::read_to_string(foreign.join("keep")).expect("still there"), "x");
    }

    let yaml = std::fs::read_to_string(&config).expect("read config");
    let (ok, stdout, stderr) =
        run("pgwarden-agent", &["--validate-config"], &[("PATRONI_CONFIGURATION", yaml.as_str())])
            .expect("validate env");
    assert!(ok, "PATRONI_CONFIGURATION holds the whole YAML: {stdout}{stderr}");
    // A key like nothing known is ignored with a warning, as Patroni ignores
    // it; --strict refuses it; a misspelled real key is always refused.
    let other_tool = format!("{yaml}\nmy_tool_settings:\n  color: blue\n");
    let env = [("PATRONI_CONFIGURATION", other_tool.as_str())];
    let (ok, stdout, stderr) = run("pgwarden-agent", &["--validate-config"], &env).expect("validate");
    assert!(ok && stderr.contains("my_tool_settings: unknown key"), "{stdout}{stderr}");
    let (ok, _, stderr) = run("pgwarden-agent", &["--validate-config", "--strict"], &env).expect("validate");
    assert!(!ok && stderr.contains("refused by --strict"), "{stderr}");
    let typo = format!("{yaml}\nnamespce: /service/\n");
    let (ok, _, stderr) =
        run("pgwarden-agent", &["--validate-config"], &[("PATRONI_CONFIGURATION", typo.as_str())]).expect("validate");
    assert!(!ok && stderr.contains("did you mean"), "{stderr}");
}

#[tokio::test]
async fn log_dir_writes_each_service_to_its_own_file() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    let logs = TestDir::new("logs");
    pgwarden_integration_tests::process::give_to_postgres(logs.path());
    let extra = format!("log:\n  level: INFO\n  dir: {}\n", logs.path().display());
    cluster.add_node("node1", &extra).expect("node");
    cluster.nodes[0].start_health().expect("health");
    let file = logs.path().join("pgwarden-health.log");
    wait_until("the health API to log into log.dir", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        Ok::<_, String>(text.contains("serving the REST API").then_some(()))
    })
    .await
    .expect("log file");
    assert!(
        !cluster.nodes[0].health_log().contains("serving the REST API"),
        "with log.dir, nothing goes to standard error"
    );
    // Not the umask's 0644: the log names members, addresses and refused clients.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).expect("log file").permissions());
    assert_eq!(mode & 0o777, 0o600, "log.mode's default");
}
