//! etcd with authentication on (`etcd3.username` / `password`): a node runs
//! on it, the health API answers `/cluster` after its token expired while it
//! was idle, and a wrong password is refused with a message naming the
//! setting, as `pgwardenctl` shows it.

use std::process::Command;
use std::time::Duration;

use pgwarden_integration_tests::process::{ChildGuard, TestDir};
use pgwarden_integration_tests::{PgwardenCluster, free_port, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run etcdctl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "etcdctl {args:?}: {text}");
    text
}

#[tokio::test]
async fn a_node_runs_on_an_etcd_with_authentication_and_a_wrong_password_is_refused() {
    init_logging();
    // An etcd whose auth tokens expire after 2 s of disuse.
    let dir = TestDir::new("etcd-auth");
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "auth0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("auth0={peer_url}"), "--auth-token-ttl", "2"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let _etcd = ChildGuard::spawn(&mut cmd, "etcd", &dir).expect("start etcd");
    wait_until("etcd to answer", UP, || async {
        let ok = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={client_url}"))
            .args(["endpoint", "health"])
            .output()
            .is_ok_and(|o| o.status.success());
        Ok::<_, String>(ok.then_some(()))
    })
    .await
    .expect("etcd up");
    etcdctl(&client_url, &["user", "add", "root:etcd-root-secret"]);
    etcdctl(&client_url, &["user", "add", "pgwarden:etcd-pgwarden-secret"]);
    etcdctl(&client_url, &["role", "add", "pgwarden"]);
    etcdctl(&client_url, &["role", "grant-permission", "pgwarden", "--prefix=true", "readwrite", "/itest/"]);
    etcdctl(&client_url, &["user", "grant-role", "pgwarden", "pgwarden"]);
    etcdctl(&client_url, &["auth", "enable"]);

    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("harness etcd");
    let etcd = |password: &str| {
        format!("etcd3:\n  hosts: 127.0.0.1:{client_port}\n  username: pgwarden\n  password: {password}\n")
    };
    cluster.add_node("node1", &etcd("etcd-pgwarden-secret")).expect("node");
    let node = &mut cluster.nodes[0];
    node.start_agent().expect("agent");
    node.start_health().expect("health");
    node.start_controller().expect("controller");
    assert_eq!(cluster.wait_primary(UP).await.expect("a primary on an etcd with authentication"), 0);

    // The health API reads etcd only for /cluster, /history and /config: its
    // token has expired by now, and the request must still be answered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(cluster.nodes[0].check("/cluster"), 200, "{}", cluster.nodes[0].health_log());

    // A wrong password: refused, with the setting to check named.
    let bad = cluster.nodes[0].dir.path().join("bad.yml");
    let config = cluster.nodes[0].config_path();
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("password: etcd-pgwarden-secret", "password: Zq9-not-it")
        // No controller there: the CLI reads etcd itself.
        .replace(
            &format!("controller_grpc_listen: 127.0.0.1:{}", cluster.nodes[0].controller_port),
            &format!("controller_grpc_listen: 127.0.0.1:{}", free_port()),
        );
    std::fs::write(&bad, text).expect("write");
    pgwarden_integration_tests::process::give_to_postgres(&bad);
    let bad = bad.display().to_string();
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &bad, "list"], &[]).expect("list");
    assert!(!ok, "a wrong etcd password must not read the cluster: {stdout}");
    println!("refused as: {}", stderr.trim());
    assert!(stderr.contains("etcd3.username") || stderr.contains("etcd3.password"), "names the setting: {stderr}");
    assert!(!stderr.contains("Zq9-not-it"), "the password is not echoed: {stderr}");
}
