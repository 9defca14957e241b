//! The four binaries against real etcd and PostgreSQL: the agent observes
//! PostgreSQL and streams its status, the health API answers from that stream
//! and fails closed, the controller lists members from etcd, `pgwardenctl
//! list` prints them, and bad start-ups are refused with clear messages.

use std::time::Duration;

use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{GetStatusRequest, ListMembersRequest, PostgresState, Role};
use pgwarden_integration_tests::service::{http, run, spawn};
use pgwarden_integration_tests::{EtcdCluster, PgInstance, TestDir, free_port, init_logging, wait_until};

struct Ports {
    rest: u16,
    agent: u16,
    controller: u16,
}

fn write_config(dir: &TestDir, etcd: &EtcdCluster, pg: &PgInstance, ports: &Ports) -> String {
    let hosts = etcd.host_ports().join(",");
    let yaml = format!(
        "scope: svc\nname: node1\nnamespace: /itest/\n\
         restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
         etcd3:\n  hosts: {hosts}\n\
         postgresql:\n  listen: 127.0.0.1:{pgport}\n  data_dir: {data}\n\
         pgwarden:\n  agent_grpc_listen: 127.0.0.1:{agent}\n  controller_grpc_listen: 127.0.0.1:{controller}\n\
         watchdog:\n  mode: off\n",
        rest = ports.rest,
        agent = ports.agent,
        controller = ports.controller,
        pgport = pg.port(),
        data = pg.data_dir().display(),
    );
    let path = dir.path().join("pgwarden.yml");
    std::fs::write(&path, yaml).expect("write config");
    path.display().to_string()
}

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
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let pg = PgInstance::init("svc-pg").expect("initdb");
    pg.start().await.expect("start postgres");
    let dir = TestDir::new("svc");
    let ports = Ports { rest: free_port(), agent: free_port(), controller: free_port() };
    let config = write_config(&dir, &etcd, &pg, &ports);

    let (ok, stdout, stderr) = run("pgwarden-agent", &["--validate-config", &config], &[]).expect("validate");
    assert!(ok, "the test config is valid: {stdout}{stderr}");

    let mut agent = spawn("pgwarden-agent", &[&config], &dir, "agent").expect("start agent");
    let _health = spawn("pgwarden-health", &["--config", &config], &dir, "health").expect("start health");
    let _controller = spawn("pgwarden-controller", &[&config], &dir, "controller").expect("start controller");

    // The agent's gRPC status reflects the running primary.
    let url = format!("http://127.0.0.1:{}", ports.agent);
    let status = wait_until("the agent's gRPC API", Duration::from_secs(15), || {
        let url = url.clone();
        async move {
            let mut client = NodeAgentClient::connect(url).await.map_err(|e| e.to_string())?;
            let status = client.get_status(GetStatusRequest {}).await.map_err(|e| e.to_string())?.into_inner();
            Ok((status.postgres_state() == PostgresState::Running).then_some(status))
        }
    })
    .await
    .expect("agent reports running postgres");
    assert_eq!(status.role(), Role::Primary);
    assert_eq!(status.member, "node1");
    assert_eq!(status.postmaster_pid as i32, pg.postmaster_pid().expect("postmaster pid"));

    // A second agent on the same data directory is refused, naming the holder.
    let (ok, _, stderr) = run("pgwarden-agent", &[&config], &[]).expect("second agent runs");
    assert!(!ok && stderr.contains("another pgwarden-agent already supervises"), "{stderr}");

    // The health API answers from the agent's stream and fails closed.
    let body = health(ports.rest, "/health", 200, Duration::from_secs(15)).await;
    assert!(body.contains("\"state\":\"running\""), "{body}");
    let (code, _) = http("GET", ports.rest, "/primary").expect("GET /primary");
    assert_eq!(code, 503, "no leader key is held yet, so /primary fails closed");
    let (code, _) = http("HEAD", ports.rest, "/health").expect("HEAD /health");
    assert_eq!(code, 200);
    let (code, _) = http("POST", ports.rest, "/health").expect("POST /health");
    assert_eq!(code, 405);

    pg.stop();
    health(ports.rest, "/health", 503, Duration::from_secs(2)).await;
    pg.start().await.expect("restart postgres");
    health(ports.rest, "/health", 200, Duration::from_secs(5)).await;

    agent.kill();
    let body = health(ports.rest, "/health", 503, Duration::from_secs(2)).await;
    assert!(body.contains("\"state\":\"unknown\""), "stale state is unknown: {body}");
    let body = health(ports.rest, "/patroni", 200, Duration::from_secs(1)).await;
    assert!(body.contains("agent"), "/patroni says why: {body}");

    // The controller and the CLI read Patroni-shaped keys from etcd.
    let mut admin = etcd.client().await.expect("etcd client");
    admin.put("/itest/svc/initialize", "7277694203142172922", None).await.expect("put initialize");
    admin.put("/itest/svc/leader", "pg-a", None).await.expect("put leader");
    let member = r#"{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"primary","version":"4.1.0","xlog_location":100663296,"timeline":2}"#;
    admin.put("/itest/svc/members/pg-a", member, None).await.expect("put member");
    let url = format!("http://127.0.0.1:{}", ports.controller);
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
    assert_eq!(members.system_identifier, "7277694203142172922");
    assert_eq!(members.leader, "pg-a");
    assert_eq!(members.members.len(), 1);
    assert!(members.members[0].is_leader);
    assert_eq!(members.members[0].xlog_location, Some(100_663_296));

    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &config, "list"], &[]).expect("pgwardenctl list");
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("+ Cluster: svc (7277694203142172922) "), "{stdout}");
    assert!(stdout.contains("| pg-a   | 127.0.0.1:5433 | Leader | running |  2 |"), "{stdout}");
    let (ok, stdout, _) = run("pgwardenctl", &["list"], &[("PATRONICTL_CONFIG_FILE", &config)]).expect("list via env");
    assert!(ok && stdout.contains("pg-a"), "PATRONICTL_CONFIG_FILE is honoured: {stdout}");
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

    let yaml = std::fs::read_to_string(&config).expect("read config");
    let (ok, stdout, stderr) =
        run("pgwarden-agent", &["--validate-config"], &[("PATRONI_CONFIGURATION", yaml.as_str())])
            .expect("validate env");
    assert!(ok, "PATRONI_CONFIGURATION holds the whole YAML: {stdout}{stderr}");
}
