//! HTTPS on the REST API with certificates generated here (rcgen): a client
//! certificate required at the handshake, or only for the write endpoints;
//! a missing or foreign client certificate, plain HTTP and a wrong password
//! refused with a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgwarden_integration_tests::cluster::{REST_PASSWORD, REST_USER, rest_authorization};
use pgwarden_integration_tests::postgres::{binaries, binaries_major};
use pgwarden_integration_tests::process::{give_to_postgres, run_as_postgres};
use pgwarden_integration_tests::service::http_with;
use pgwarden_integration_tests::{PgwardenCluster, init_logging, wait_until};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const UP: Duration = Duration::from_secs(90);
/// The server names of the SNI test (`pg_hosts`).
const PRIMARY_NAME: &str = "primary.sni.test";
const REPLICA_NAME: &str = "replica.sni.test";

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
    /// Self-signed and its own CA (`CA:TRUE`), listed in the cafile: how
    /// Patroni's test suite sets up its REST certificates.
    own_ca_cert: PathBuf,
    own_ca_key: PathBuf,
    /// A client certificate for PostgreSQL's `cert` authentication of the
    /// replication user (its common name is the user's name).
    replicator_cert: PathBuf,
    replicator_key: PathBuf,
    /// Server certificates for one name each (PostgreSQL 19's SNI map).
    primary_sni: (PathBuf, PathBuf),
    replica_sni: (PathBuf, PathBuf),
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    give_to_postgres(&path);
    path
}

/// Certificate parameters with their own subject name (rcgen's default
/// name would make every certificate look self-issued).
fn params(names: &[&str], common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = params(&[], "pgwarden test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server = params(&["localhost", "127.0.0.1"], "localhost").signed_by(&server_key, &issuer).expect("sign");
    let client_key = KeyPair::generate().expect("key");
    let client = params(&["operator"], "operator").signed_by(&client_key, &issuer).expect("sign");
    let rogue_key = KeyPair::generate().expect("key");
    let rogue = params(&["operator"], "rogue").self_signed(&rogue_key).expect("self-signed");
    let own_ca_key = KeyPair::generate().expect("key");
    let mut own_ca_params = params(&["operator"], "its own CA");
    own_ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let own_ca = own_ca_params.self_signed(&own_ca_key).expect("self-signed CA");
    let replicator_key = KeyPair::generate().expect("key");
    let replicator = params(&["replicator"], "replicator").signed_by(&replicator_key, &issuer).expect("sign");
    let named = |name: &str, file: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = params(&[name], name).signed_by(&key, &issuer).expect("sign");
        (write(dir, &format!("{file}.pem"), &cert.pem()), write(dir, &format!("{file}.key"), &key.serialize_pem()))
    };
    Pki {
        primary_sni: named(PRIMARY_NAME, "primary-sni"),
        replica_sni: named(REPLICA_NAME, "replica-sni"),
        replicator_cert: write(dir, "replicator.pem", &replicator.pem()),
        replicator_key: write(dir, "replicator.key", &replicator_key.serialize_pem()),
        ca: write(dir, "ca.pem", &format!("{}{}", ca_cert.pem(), own_ca.pem())),
        server_cert: write(dir, "server.pem", &server.pem()),
        server_key: write(dir, "server.key", &server_key.serialize_pem()),
        client_cert: write(dir, "client.pem", &client.pem()),
        client_key: write(dir, "client.key", &client_key.serialize_pem()),
        rogue_cert: write(dir, "rogue.pem", &rogue.pem()),
        rogue_key: write(dir, "rogue.key", &rogue_key.serialize_pem()),
        own_ca_cert: write(dir, "own-ca.pem", &own_ca.pem()),
        own_ca_key: write(dir, "own-ca.key", &own_ca_key.serialize_pem()),
    }
}

/// curl against the node's REST port over HTTPS: (exit ok, status code, stderr).
fn curl(port: u16, pki: &Pki, client: Option<(&Path, &Path)>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(&pki.ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let output = cmd.args(args).output().expect("run curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn set_tls(cluster: &PgwardenCluster, pki: &Pki, verify_client: &str) {
    let path = cluster.nodes[0].config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    let tls = format!(
        "  certfile: {}\n  keyfile: {}\n  cafile: {}\n  verify_client: {verify_client}\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let text = text.replacen("\nrestapi:\n", &format!("\nrestapi:\n{tls}"), 1);
    std::fs::write(&path, text).expect("write config");
}

#[tokio::test]
async fn https_with_client_certificates_refuses_what_it_must() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.add_node("node1", "").expect("node");
    let pki = pki(cluster.nodes[0].dir.path());
    set_tls(&cluster, &pki, "required");
    let node = &mut cluster.nodes[0];
    node.start_agent().expect("agent");
    node.start_health().expect("health");
    node.start_controller().expect("controller");
    let port = node.rest_port;
    let me = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let url = |path: &str| format!("https://localhost:{port}{path}");
    wait_until("/primary 200 over HTTPS with a client certificate", UP, || async {
        let (_, code, stderr) = curl(port, &pki, me, &[&url("/primary")]);
        if code == "200" { Ok(Some(())) } else { Err(format!("{code} {stderr}")) }
    })
    .await
    .expect("HTTPS");
    let (ok, _, stderr) = curl(port, &pki, None, &[&url("/primary")]);
    assert!(!ok, "no client certificate: refused at the handshake ({stderr})");
    let (ok, _, stderr) = curl(port, &pki, Some((&pki.rogue_cert, &pki.rogue_key)), &[&url("/primary")]);
    assert!(!ok, "a certificate from another CA: refused ({stderr})");
    // Patroni parity (issue 23): a self-signed certificate that is its own CA,
    // listed in the cafile, is accepted as Python's ssl accepts it (webpki
    // alone refuses it: CaUsedAsEndEntity).
    let (_, code, stderr) = curl(port, &pki, Some((&pki.own_ca_cert, &pki.own_ca_key)), &[&url("/primary")]);
    assert_eq!(code, "200", "{stderr}");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://127.0.0.1:{port}/primary")])
        .output()
        .expect("curl");
    assert!(
        !plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("\"role\""),
        "plain HTTP gets no answer"
    );
    let (_, code, _) = curl(
        port,
        &pki,
        me,
        &["-X", "POST", "-u", &format!("{REST_USER}:wrong"), "-d", r#"{"leader":"node1"}"#, &url("/switchover")],
    );
    assert_eq!(code, "401", "a wrong password is refused");
    assert!(cluster.nodes[0].health_log().contains("refused a TLS connection"), "the refusals are logged");

    // Optional: reads without a certificate, writes only with one.
    cluster.nodes[0].kill_health();
    let path = cluster.nodes[0].config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, text.replace("verify_client: required", "verify_client: optional")).expect("write");
    cluster.nodes[0].start_health().expect("health");
    wait_until("HTTPS reads without a client certificate", UP, || async {
        let (_, code, stderr) = curl(port, &pki, None, &[&url("/primary")]);
        if code == "200" { Ok(Some(())) } else { Err(format!("{code} {stderr}")) }
    })
    .await
    .expect("optional");
    let credentials = format!("{REST_USER}:{REST_PASSWORD}");
    let post = ["-X", "POST", "-u", credentials.as_str(), "-d", r#"{"leader":"node1"}"#];
    let (_, code, _) = curl(port, &pki, None, &[&post[..], &[url("/switchover").as_str()]].concat());
    assert_eq!(code, "403", "a write without a client certificate");
    let (_, code, _) = curl(port, &pki, me, &[&post[..], &[url("/switchover").as_str()]].concat());
    assert_eq!(code, "412", "with one, the request reaches the controller (one node: no candidate)");
}

#[tokio::test]
async fn the_cluster_runs_on_an_etcd_that_requires_tls_and_client_certificates() {
    use pgwarden_integration_tests::process::{ChildGuard, TestDir};
    init_logging();
    // An etcd serving HTTPS only, requiring client certificates from our CA.
    let dir = TestDir::new("etcd-tls");
    let pki = pki(dir.path());
    let (client_port, peer_port) = (pgwarden_integration_tests::free_port(), pgwarden_integration_tests::free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "tls0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls0={peer_url}")])
        .arg("--cert-file")
        .arg(&pki.server_cert)
        .arg("--key-file")
        .arg(&pki.server_key)
        .arg("--trusted-ca-file")
        .arg(&pki.ca)
        .arg("--client-cert-auth")
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let _etcd = ChildGuard::spawn(&mut cmd, "etcd", &dir).expect("start etcd");

    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("harness etcd");
    let etcd = |cert: &Path, key: &Path| {
        format!(
            "etcd3:\n  protocol: https\n  hosts: 127.0.0.1:{client_port}\n  cacert: {}\n  cert: {}\n  key: {}\n",
            pki.ca.display(),
            cert.display(),
            key.display()
        )
    };
    cluster.add_node("node1", &etcd(&pki.client_cert, &pki.client_key)).expect("node");
    let node = &mut cluster.nodes[0];
    node.start_agent().expect("agent");
    node.start_health().expect("health");
    node.start_controller().expect("controller");
    assert_eq!(cluster.wait_primary(UP).await.expect("a primary over a TLS etcd"), 0);
    let config = cluster.nodes[0].config_path().display().to_string();
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "list"], &[]).expect("list");
    assert!(ok && stdout.contains("Leader"), "{stdout}{stderr}");

    // A client whose certificate is not from the CA etcd trusts is refused, clearly.
    let bad = cluster.nodes[0].dir.path().join("bad.yml");
    let text = std::fs::read_to_string(&config).expect("read");
    let text = text
        .replace(&pki.client_cert.display().to_string(), &pki.rogue_cert.display().to_string())
        .replace(&pki.client_key.display().to_string(), &pki.rogue_key.display().to_string())
        // No controller there: the CLI reads etcd itself.
        .replace(
            &format!("controller_grpc_listen: 127.0.0.1:{}", cluster.nodes[0].controller_port),
            &format!("controller_grpc_listen: 127.0.0.1:{}", pgwarden_integration_tests::free_port()),
        );
    std::fs::write(&bad, text).expect("write");
    give_to_postgres(&bad);
    let bad = bad.display().to_string();
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &bad, "list"], &[]).expect("list");
    assert!(!ok, "a foreign client certificate must not read the cluster: {stdout}");
    println!("refused as: {}", stderr.trim());
    assert!(stderr.contains("etcd3.cert"), "the error names the setting to check: {stderr}");
}

/// Turns on mutual TLS for the gRPC APIs in `node`'s config.
fn set_grpc_tls(cluster: &PgwardenCluster, node: usize, pki: &Pki) {
    let path = cluster.nodes[node].config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    let tls = format!(
        "  grpc_certfile: {}\n  grpc_keyfile: {}\n  grpc_cafile: {}\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    std::fs::write(&path, text.replacen("\npgwarden:\n", &format!("\npgwarden:\n{tls}"), 1)).expect("write config");
}

/// A `GetStatus` call to `port` over TLS with the given client identity.
async fn agent_status(port: u16, pki: &Pki, identity: Option<(&Path, &Path)>) -> Result<(), String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let ca = std::fs::read(&pki.ca).expect("CA");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).expect("cert"), std::fs::read(key).expect("key")));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(3));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = ha_proto::v1::node_agent_client::NodeAgentClient::new(channel);
    client.get_status(ha_proto::v1::GetStatusRequest::default()).await.map(|_| ()).map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn grpc_apis_use_mutual_tls_and_a_switchover_runs_over_it() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.add_node("node1", "").expect("node1");
    cluster.add_node("node2", "").expect("node2");
    let pki = pki(cluster.nodes[0].dir.path());
    for i in 0..2 {
        set_grpc_tls(&cluster, i, &pki);
    }
    for node in &mut cluster.nodes {
        node.start_agent().expect("agent");
        node.start_health().expect("health");
        node.start_controller().expect("controller");
    }
    let leader = cluster.wait_healthy(UP).await.expect("a primary and a streaming replica over gRPC TLS");
    let member = cluster.get_key(&format!("members/node{}", leader + 1)).await.expect("etcd").expect("member key");
    assert!(member.contains("\"grpc_url\":\"https://"), "the advertised gRPC URL is https: {member}");

    // The CLI goes through the active controller over mutual TLS (ctl falls
    // back to pgwarden.grpc_*), and the switchover it asks for runs.
    let config = cluster.nodes[leader].config_path().display().to_string();
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "-v", "list"], &[]).expect("list");
    assert!(ok && stderr.contains("from controller https://"), "read through the controller: {stdout}{stderr}");
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "switchover", "--force"], &[])
            .expect("switchover");
    assert!(ok, "switchover over gRPC TLS: {stdout}{stderr}");
    let new_leader = wait_until("the other node to lead", UP, || async {
        let leader_now = cluster.wait_healthy(Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((leader_now != leader).then_some(leader_now))
    })
    .await
    .expect("switched over");

    // Refused: plain HTTP/2, TLS without a client certificate, a certificate from another CA.
    let port = cluster.nodes[new_leader].agent_port;
    agent_status(port, &pki, Some((&pki.client_cert, &pki.client_key))).await.expect("our CA's client certificate");
    let plain = ha_proto::v1::node_agent_client::NodeAgentClient::connect(format!("http://127.0.0.1:{port}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut client) => client.get_status(ha_proto::v1::GetStatusRequest::default()).await.is_err(),
    };
    assert!(refused, "plain HTTP/2 gets no answer from a TLS agent");
    let no_cert = agent_status(port, &pki, None).await.expect_err("no client certificate");
    println!("without a client certificate: {no_cert}");
    let rogue = agent_status(port, &pki, Some((&pki.rogue_cert, &pki.rogue_key))).await.expect_err("foreign CA");
    println!("with a foreign certificate: {rogue}");
    let log = std::fs::read_to_string(cluster.nodes[new_leader].dir.path().join("agent.log")).expect("agent log");
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("tls accept error")).collect();
    assert!(refusals.len() >= 2, "the agent logs each refused handshake: {refusals:?}");
    println!("{}", refusals.join("\n"));
}

/// PostgreSQL serving TLS in `node`'s config, replication (and pg_rewind)
/// only over TLS with the server certificate verified against `ca`.
fn set_postgres_tls(cluster: &PgwardenCluster, node: usize, pki: &Pki, ca: &Path) {
    let path = cluster.nodes[node].config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    let verify = format!("      sslmode: verify-full\n      sslrootcert: {}\n", ca.display());
    let text = text
        .replacen(
            "  parameters:\n",
            &format!(
                "  pg_hba:\n  - local all all scram-sha-256\n  - hostssl replication replicator 127.0.0.1/32 scram-sha-256\n  \
                 - hostnossl replication all 127.0.0.1/32 reject\n  - host all all 127.0.0.1/32 scram-sha-256\n  \
                 parameters:\n    ssl: 'on'\n    ssl_cert_file: {}\n    ssl_key_file: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            ),
            1,
        )
        .replacen(
            &format!("      password: {}\n", pgwarden_integration_tests::cluster::REPLICATION_PASSWORD),
            &format!("      password: {}\n{verify}", pgwarden_integration_tests::cluster::REPLICATION_PASSWORD),
            1,
        )
        .replacen(
            &format!("      password: {}\n", pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD),
            &format!("      password: {}\n{verify}", pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD),
            1,
        );
    std::fs::write(&path, text).expect("write config");
}

#[tokio::test]
async fn replicas_clone_and_stream_over_verified_tls_and_a_foreign_ca_is_refused() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    for name in ["node1", "node2", "node3"] {
        cluster.add_node(name, "").expect("node");
    }
    let pki = pki(cluster.nodes[0].dir.path());
    for i in 0..2 {
        set_postgres_tls(&cluster, i, &pki, &pki.ca);
    }
    // node3 trusts another CA: it must not clone from a server it cannot verify.
    set_postgres_tls(&cluster, 2, &pki, &pki.rogue_cert);
    // A permanent logical slot: the replica copies it from the primary over
    // the superuser's verified TLS connection (sqlx, not libpq).
    for node in &cluster.nodes {
        node.merge_config(serde_json::json!({
            "bootstrap": {"dcs": {
                "postgresql": {"parameters": {"wal_level": "logical"}},
                "slots": {"cdc": {"type": "logical", "database": "postgres", "plugin": "test_decoding"}},
            }},
        }))
        .expect("a permanent logical slot");
    }
    for node in &mut cluster.nodes {
        node.start_agent().expect("agent");
        node.start_health().expect("health");
    }
    let leader =
        cluster.wait_healthy_among(&[0, 1], UP).await.expect("node1 and node2: a primary and a streaming replica");
    let replica = 1 - leader;
    // The copy restarts the replica once (a slot is loaded only at start).
    wait_until("the replica's copy of the logical slot, read from the primary over TLS", UP, || async {
        let slots = cluster.nodes[replica]
            .psql("select string_agg(slot_name, ',') from pg_replication_slots where slot_type = 'logical'")
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((slots == "cdc").then_some(()))
    })
    .await
    .expect("the logical slot copied over TLS");
    let want = format!("node{}:true", replica + 1);
    wait_until("the one replica streaming over TLS", UP, || async {
        let streams = cluster.nodes[leader]
            .psql(
                "select application_name || ':' || ssl from pg_stat_replication r join pg_stat_ssl s using (pid) \
                 order by 1",
            )
            .map_err(|e| e.to_string())?;
        if streams == want { Ok(Some(())) } else { Err(streams) }
    })
    .await
    .expect("the one replica streams over TLS");
    // A clean switchover: the old primary follows the new one, again over TLS.
    let config = cluster.nodes[leader].config_path().display().to_string();
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "switchover", "--force"], &[])
            .expect("switchover");
    assert!(ok, "{stdout}{stderr}");
    wait_until("the old primary streaming over TLS from the new one", UP, || async {
        let streams = cluster.nodes[replica]
            .psql("select application_name || ':' || ssl from pg_stat_replication r join pg_stat_ssl s using (pid)")
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((streams == format!("node{}:true", leader + 1)).then_some(()))
    })
    .await
    .expect("streaming after the switchover");

    // node3 never got a copy: pg_basebackup refused the server's certificate.
    let refused = wait_until("node3's clone to be refused", UP, || async {
        let log = cluster.nodes[2].agent_log();
        Ok::<_, String>(log.lines().find(|l| l.contains("certificate verify failed")).map(String::from))
    })
    .await
    .expect("a clear refusal in node3's log");
    println!("node3: {refused}");
    assert!(!cluster.nodes[2].data_dir().join("PG_VERSION").exists(), "node3 has no data directory");
    assert_ne!(cluster.nodes[2].check("/replica"), 200);
}

/// libpq's `sslpassword` (issue 23): the replication user authenticates
/// with a client certificate whose key is encrypted. The clone
/// (pg_basebackup, which takes the passphrase from the 0600 service file,
/// never from its command line) and the streaming (`primary_conninfo`, in
/// PostgreSQL's own 0600 file) both need it; without it the key does not
/// load and the replica never gets its data.
#[tokio::test]
async fn a_replica_clones_and_streams_with_an_encrypted_client_key_and_its_sslpassword() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    for name in ["node1", "node2"] {
        cluster.add_node(name, "").expect("node");
    }
    let dir = cluster.nodes[0].dir.path().to_path_buf();
    let pki = pki(&dir);
    let passphrase = "open sesame 42";
    let encrypted = encrypt_key(&dir, &pki.replicator_key, passphrase);
    for node in &cluster.nodes {
        node.merge_config(serde_json::json!({"postgresql": {
            "pg_hba": [
                "local all all scram-sha-256",
                "hostssl replication replicator 127.0.0.1/32 cert",
                "hostnossl replication all 127.0.0.1/32 reject",
                "host all all 127.0.0.1/32 scram-sha-256",
            ],
            "parameters": {
                "ssl": "on",
                "ssl_cert_file": pki.server_cert.display().to_string(),
                "ssl_key_file": pki.server_key.display().to_string(),
                "ssl_ca_file": pki.ca.display().to_string(),
            },
            "authentication": {"replication": {
                "sslmode": "verify-full",
                "sslrootcert": pki.ca.display().to_string(),
                "sslcert": pki.replicator_cert.display().to_string(),
                "sslkey": encrypted.display().to_string(),
                "sslpassword": passphrase,
            }},
        }}))
        .expect("TLS and a client certificate for replication");
    }
    for node in &mut cluster.nodes {
        node.start_agent().expect("agent");
        node.start_health().expect("health");
    }
    let leader = cluster.wait_healthy(UP).await.expect("a primary and a replica streaming with the client certificate");
    let replica = 1 - leader;
    let streams = cluster.nodes[leader]
        .psql(
            "select r.application_name || ':' || s.ssl || ':' || coalesce(s.client_dn, '') \
             from pg_stat_replication r join pg_stat_ssl s using (pid)",
        )
        .expect("pg_stat_replication");
    assert_eq!(streams, format!("node{}:true:/CN=replicator", replica + 1), "streams over TLS with the certificate");
    // The passphrase: in the replica's postgresql.conf and the service file
    // (both 0600), never in a log or on a command line.
    // The harness sets no `pgpass`: the agent's default, beside the data directory.
    let mut name = cluster.nodes[replica].data_dir().into_os_string();
    name.push(".pgpass.service");
    let service = PathBuf::from(name);
    let text = std::fs::read_to_string(&service).expect("service file");
    assert_eq!(text, format!("[pgwarden_replication]\nsslpassword={passphrase}\n"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&service).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", service.display());
    for node in &cluster.nodes {
        assert!(!node.agent_log().contains(passphrase), "{}: the passphrase in the agent's log", node.name);
    }
    for entry in std::fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(!String::from_utf8_lossy(&cmdline).contains(passphrase), "on a command line: {:?}", entry.path());
        }
    }
}

/// `key` encrypted with `passphrase` as OpenSSL 3 writes it (PKCS#8,
/// AES-256-CBC), beside it, 0600 and the postgres user's.
fn encrypt_key(dir: &Path, key: &Path, passphrase: &str) -> PathBuf {
    let stem = key.file_stem().expect("a key file").to_string_lossy().into_owned();
    let pass_file = write(dir, &format!("{stem}.pass"), passphrase);
    let encrypted = dir.join(format!("{stem}.enc.key"));
    let status = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
        .arg(key)
        .arg("-out")
        .arg(&encrypted)
        .arg("-passout")
        .arg(format!("file:{}", pass_file.display()))
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl pkcs8 -topk8");
    std::fs::set_permissions(&encrypted, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    give_to_postgres(&encrypted);
    assert!(std::fs::read_to_string(&encrypted).expect("key").contains("ENCRYPTED PRIVATE KEY"));
    encrypted
}

/// Patroni's `restapi.keyfile_password`, `ctl.keyfile_password` and
/// `restapi.ciphers` (issue 23): the REST API serves HTTPS with an
/// encrypted key and only the TLS 1.2 suites allowed, and pgwardenctl
/// presents an encrypted client key to the controller; a wrong passphrase
/// is refused naming the setting.
#[tokio::test]
async fn encrypted_keys_open_with_their_keyfile_password_and_ciphers_limit_tls12() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.add_node("node1", "").expect("node");
    let dir = cluster.nodes[0].dir.path().to_path_buf();
    let pki = pki(&dir);
    let server_key = encrypt_key(&dir, &pki.server_key, "rest secret");
    let client_key = encrypt_key(&dir, &pki.client_key, "ctl secret");
    set_grpc_tls(&cluster, 0, &pki);
    let ctl = |password: &str| {
        serde_json::json!({
            "restapi": {
                "certfile": pki.server_cert.display().to_string(),
                "keyfile": server_key.display().to_string(),
                "keyfile_password": "rest secret",
            },
            "ctl": {
                "cacert": pki.ca.display().to_string(),
                "certfile": pki.client_cert.display().to_string(),
                "keyfile": client_key.display().to_string(),
                "keyfile_password": password,
            },
        })
    };
    cluster.nodes[0].merge_config(ctl("ctl secret")).expect("TLS with encrypted keys");
    // And `restapi.ciphers`, as OpenSSL reads it: of TLS 1.2's suites only
    // this one (the test certificates are ECDSA); TLS 1.3 stays on.
    cluster.nodes[0]
        .merge_config(serde_json::json!({"restapi": {"ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256:!aNULL:!MD5"}}))
        .expect("ciphers");
    let node = &mut cluster.nodes[0];
    node.start_agent().expect("agent");
    node.start_health().expect("health");
    node.start_controller().expect("controller");
    let port = node.rest_port;
    wait_until("/primary 200 over HTTPS served with the encrypted key", UP, || async {
        let (_, code, stderr) = curl(port, &pki, None, &[&format!("https://localhost:{port}/primary")]);
        if code == "200" { Ok(Some(())) } else { Err(format!("{code} {stderr}")) }
    })
    .await
    .expect("HTTPS with restapi.keyfile_password");
    let tls12 = |cipher: &str| {
        let url = format!("https://localhost:{port}/primary");
        curl(port, &pki, None, &["--tls-max", "1.2", "--ciphers", cipher, &url])
    };
    let (_, code, stderr) = tls12("ECDHE-ECDSA-AES128-GCM-SHA256");
    assert_eq!(code, "200", "the allowed TLS 1.2 suite: {stderr}");
    let (ok, _, stderr) = tls12("ECDHE-ECDSA-AES256-GCM-SHA384");
    assert!(!ok, "a TLS 1.2 suite restapi.ciphers leaves out is refused ({stderr})");
    let config = cluster.nodes[0].config_path().display().to_string();
    let list = || pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "-v", "list"], &[]);
    let (ok, stdout, stderr) = list().expect("list");
    assert!(ok && stderr.contains("from controller https://"), "through the controller: {stdout}{stderr}");
    cluster.nodes[0].merge_config(ctl("wrong")).expect("a wrong ctl passphrase");
    let (ok, stdout, stderr) = list().expect("list");
    assert!(!ok && stderr.contains("ctl.keyfile_password"), "refused naming the setting: {stdout}{stderr}");

    // `ctl.insecure` and `-k` (patronictl's): with a CA that did not sign
    // the controller's certificate, the controller is refused (the CLI
    // reads etcd instead) unless verification is off; the (encrypted)
    // client certificate is still presented, which the controller requires.
    let foreign_ca = |insecure: bool| {
        let mut settings = ctl("ctl secret");
        settings["ctl"]["cacert"] = serde_json::json!(pki.rogue_cert.display().to_string());
        settings["ctl"]["insecure"] = serde_json::json!(insecure);
        settings
    };
    cluster.nodes[0].merge_config(foreign_ca(false)).expect("a foreign ctl.cacert");
    let (ok, stdout, stderr) = list().expect("list");
    assert!(ok && stderr.contains("from etcd"), "the controller is not trusted, etcd read instead: {stdout}{stderr}");
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "-k", "-v", "list"], &[])
            .expect("list");
    assert!(ok && stderr.contains("from controller https://"), "-k: {stdout}{stderr}");
    cluster.nodes[0].merge_config(foreign_ca(true)).expect("ctl.insecure");
    let (ok, stdout, stderr) = list().expect("list");
    assert!(ok && stderr.contains("from controller https://"), "ctl.insecure: {stdout}{stderr}");
    // Without the client certificate the controller still refuses.
    let mut no_identity = foreign_ca(true);
    no_identity["ctl"]["certfile"] = serde_json::json!(pki.rogue_cert.display().to_string());
    no_identity["ctl"]["keyfile"] = serde_json::json!(pki.rogue_key.display().to_string());
    cluster.nodes[0].merge_config(no_identity).expect("a foreign client certificate");
    let (ok, stdout, stderr) = list().expect("list");
    assert!(ok && stderr.contains("from etcd"), "a foreign client certificate is refused: {stdout}{stderr}");
}

/// A `pg_hosts.conf` line: the name, the certificate and its key.
fn hosts_line(name: &str, (cert, key): (&Path, &Path)) -> String {
    format!("{name} {} {}", cert.display(), key.display())
}

/// Connects to `node`'s PostgreSQL asking for the server name `name` (SNI)
/// and verifying that the certificate is for that name against the test CA.
fn connect_as(cluster: &PgwardenCluster, node: usize, name: &str, pki: &Pki) -> Result<(), String> {
    let conninfo = format!(
        "host={name} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslsni=1 \
         sslrootcert={} connect_timeout=3",
        cluster.nodes[node].pg_port,
        pki.ca.display()
    );
    let mut cmd = Command::new(binaries().bin_dir.join("psql"));
    cmd.args(["-X", "-A", "-t", "-d", &conninfo, "-c", "select 1"])
        .env("PGPASSWORD", pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD)
        .current_dir("/")
        .stdin(std::process::Stdio::null());
    let output = run_as_postgres(&mut cmd).output().map_err(|e| e.to_string())?;
    if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).trim().to_string()) }
}

/// PostgreSQL 19's server name indication (`ssl_sni` with `pg_hosts.conf`),
/// configured as Patroni's `pg_hosts` (issue 23): every member writes the
/// lines of its role (`pg_hosts_replica` on the replica), an edit of the
/// dynamic config reaches PostgreSQL by a reload, and a switchover hands
/// each member its new role's lines. A client asking for a name with
/// `sslmode=verify-full` is served the certificate the lines name for it (a
/// name that is not listed gets the default one, which does not verify).
/// Before PostgreSQL 19 the lines are not written, with a warning, and the
/// cluster runs (18 would refuse the unknown `hosts_file`).
#[tokio::test]
async fn pg_hosts_gives_each_server_name_its_certificate_by_role_and_edits_are_reloaded() {
    init_logging();
    let major = binaries_major();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    for name in ["node1", "node2"] {
        cluster.add_node(name, "").expect("node");
    }
    let pki = pki(cluster.nodes[0].dir.path());
    let default_line = hosts_line("*", (&pki.server_cert, &pki.server_key));
    let primary_line = hosts_line(PRIMARY_NAME, (&pki.primary_sni.0, &pki.primary_sni.1));
    let replica_line = hosts_line(REPLICA_NAME, (&pki.replica_sni.0, &pki.replica_sni.1));
    // SSL only where the lines take effect (PyPI's PostgreSQL 13 has no
    // OpenSSL: `ssl = on` would keep it from starting).
    let parameters = if major >= 19 {
        serde_json::json!({
            "ssl": "on",
            "ssl_sni": "on",
            "ssl_cert_file": pki.server_cert,
            "ssl_key_file": pki.server_key,
        })
    } else {
        serde_json::json!({})
    };
    for node in &cluster.nodes {
        node.merge_config(serde_json::json!({"bootstrap": {"dcs": {"postgresql": {
            "parameters": parameters,
            "pg_hosts": [primary_line, default_line],
        }}}}))
        .expect("pg_hosts in the dynamic config");
    }
    cluster.start_all().expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("a primary and a streaming replica");
    let replica = 1 - leader;
    if major < 19 {
        for node in &cluster.nodes {
            let warning = wait_until("the warning that pg_hosts is not written", UP, || async {
                Ok::<_, String>(
                    node.agent_log().lines().find(|l| l.contains("pg_hosts.conf is read from")).map(String::from),
                )
            })
            .await
            .expect("a warning naming the version");
            assert!(warning.contains(&format!("PostgreSQL {major}")), "{warning}");
            assert!(!node.data_dir().join("pg_hosts.conf").exists(), "{} wrote pg_hosts.conf", node.name);
        }
        println!("PostgreSQL {major}: pg_hosts not written, warned");
        return;
    }
    // The primary serves its name; the replica's name is nobody's yet.
    wait_until("the primary serving primary.sni.test", UP, || async {
        connect_as(&cluster, leader, PRIMARY_NAME, &pki).map(Some)
    })
    .await
    .expect("the primary's named certificate");
    let refused = connect_as(&cluster, leader, REPLICA_NAME, &pki).expect_err("an unlisted name");
    assert!(refused.contains("does not match host name"), "{refused}");
    for node in &cluster.nodes {
        let file = node.data_dir().join("pg_hosts.conf");
        let text = std::fs::read_to_string(&file).expect("pg_hosts.conf");
        assert!(text.contains(PRIMARY_NAME), "{text}");
        let mode = std::fs::metadata(&file).expect("meta").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    // The replica's own lines, through Patroni's REST API: reloaded, no restart.
    let started = cluster.nodes[replica].postmaster_pid();
    let body = serde_json::json!({"postgresql": {"pg_hosts_replica": [replica_line, default_line]}}).to_string();
    let (status, text) = http_with(
        "PATCH",
        cluster.nodes[leader].rest_port,
        "/config",
        &[("Authorization", &rest_authorization())],
        &body,
        Duration::from_secs(30),
    )
    .expect("PATCH /config");
    assert_eq!(status, 200, "{text}");
    wait_until("the replica serving replica.sni.test", UP, || async {
        connect_as(&cluster, replica, REPLICA_NAME, &pki).map(Some)
    })
    .await
    .expect("the replica's named certificate");
    assert_eq!(cluster.nodes[replica].postmaster_pid(), started, "a reload, not a restart");
    assert!(connect_as(&cluster, replica, PRIMARY_NAME, &pki).is_err(), "the replica's lines replace pg_hosts");
    connect_as(&cluster, leader, PRIMARY_NAME, &pki).expect("the primary keeps pg_hosts");

    // A switchover: each member takes its new role's lines.
    let config = cluster.nodes[leader].config_path().display().to_string();
    let (ok, stdout, stderr) =
        pgwarden_integration_tests::service::run("pgwardenctl", &["-c", &config, "switchover", "--force"], &[])
            .expect("switchover");
    assert!(ok, "{stdout}{stderr}");
    wait_until("the new primary serving primary.sni.test, the new replica replica.sni.test", UP, || async {
        match (connect_as(&cluster, replica, PRIMARY_NAME, &pki), connect_as(&cluster, leader, REPLICA_NAME, &pki)) {
            (Ok(()), Ok(())) => Ok(Some(())),
            (a, b) => Err(format!("{a:?} {b:?}")),
        }
    })
    .await
    .expect("the roles' lines after the switchover");
    cluster.wait_healthy(UP).await.expect("healthy after the switchover");
}
