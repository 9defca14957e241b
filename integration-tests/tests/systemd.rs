//! The services as systemd runs them (`Type=notify`, `WatchdogSec=`, see
//! `deploy/systemd/`): a datagram socket standing in for systemd's notify
//! socket receives what each service sends.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgwarden_integration_tests::cluster::PgwardenCluster;

const UP: Duration = Duration::from_secs(90);

/// systemd's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        // The services run as postgres: sending needs write permission.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        Self { path, socket, received: Vec::new() }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("NOTIFY_SOCKET".into(), self.path.display().to_string())]
    }

    /// Receives until `done` holds for everything received so far.
    fn wait_for(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + UP;
        let mut buf = [0u8; 4096];
        while !done(&self.received) {
            assert!(Instant::now() < deadline, "notify socket: no {what} within {UP:?}; received {:?}", self.received);
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

#[tokio::test]
async fn the_services_notify_systemd_and_the_agent_feeds_its_watchdog_at_the_ttl() {
    let mut cluster = PgwardenCluster::start(0).await.expect("etcd");
    let node = cluster.add_node("node1", "").expect("node");
    let dir = node.dir.path().to_path_buf();
    let mut agent = NotifySocket::bind(dir.join("agent.notify"));
    let mut health = NotifySocket::bind(dir.join("health.notify"));
    let mut controller = NotifySocket::bind(dir.join("controller.notify"));
    // As systemd sets them for `WatchdogSec=30` in pgwarden-agent.service.
    node.env = agent.env();
    node.env.push(("WATCHDOG_USEC".into(), "30000000".into()));
    node.start_agent().expect("agent");
    node.env = health.env();
    node.start_health().expect("health");
    node.env = controller.env();
    node.start_controller().expect("controller");

    // READY=1 once each serves (PostgreSQL, started by the agent, may send
    // its own READY=1 here too: systemd's NotifyAccess=main ignores it, the
    // STATUS line tells ours apart).
    let ready = |status: &'static str| {
        move |received: &[String]| {
            received
                .iter()
                .any(|m| has(m, "READY=1") && m.lines().any(|l| l.starts_with("STATUS=") && l.contains(status)))
        }
    };
    health.wait_for("READY=1 from pgwarden-health", ready("serving the REST API"));
    controller.wait_for("READY=1 from pgwarden-controller", ready("serving the Controller gRPC API"));
    agent.wait_for("READY=1 from pgwarden-agent", ready("serving the NodeAgent gRPC API"));

    // The unit's 30 s becomes ttl (10) - watchdog.safety_margin (5) = 5 s,
    // and the HA loop's pings keep coming.
    agent.wait_for("WATCHDOG_USEC=5000000", |r| r.iter().any(|m| has(m, "WATCHDOG_USEC=5000000")));
    let pings_before = agent.received.iter().filter(|m| has(m, "WATCHDOG=1")).count();
    agent.wait_for("three more WATCHDOG=1", |r| r.iter().filter(|m| has(m, "WATCHDOG=1")).count() >= pings_before + 3);
    let leader = cluster.wait_primary(UP).await.expect("the node leads");
    assert_eq!(leader, 0);
}
