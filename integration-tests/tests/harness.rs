//! The harness itself: real processes start, serve, and are gone after drop.

use std::time::Duration;

use pgwarden_integration_tests::postgres::psql_at;
use pgwarden_integration_tests::{EtcdCluster, HaProxy, PgInstance, free_port, init_logging, wait_until};

fn port_is_closed(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[tokio::test]
async fn etcd_serves_and_is_stopped_on_drop() {
    init_logging();
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let mut client = etcd.client().await.expect("client");
    client.put("/harness/k", "v", None).await.expect("put");
    let got = client.get("/harness/k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v");
    let port: u16 = etcd.host_ports()[0].rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    drop(etcd);
    assert!(port_is_closed(port), "etcd still listens after drop");
}

#[tokio::test]
async fn postgres_runs_as_postgres_behind_haproxy_and_stops_by_data_dir() {
    init_logging();
    let pg = PgInstance::init("pg").expect("initdb");
    pg.start().await.expect("start postgres");
    let user = pg.psql("select current_user").expect("query");
    assert_eq!(user, "postgres");
    // The postmaster (long-lived, unlike a backend) runs as postgres.
    let postmaster = pg.postmaster_pid().expect("postmaster.pid");
    let owner = std::fs::metadata(format!("/proc/{postmaster}")).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if let Some(postgres) = pgwarden_integration_tests::postgres_user() {
        assert_eq!(owner.expect("postmaster visible"), postgres.uid.as_raw(), "PostgreSQL runs as postgres");
    }
    pg.psql("create table t(id int); insert into t values (42)").expect("write");

    let front = free_port();
    let config = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         listen pg\n  bind 127.0.0.1:{front}\n  server pg0 127.0.0.1:{} check inter 500ms\n",
        pg.port()
    );
    let mut haproxy = HaProxy::start(&config, &[front]).await.expect("start haproxy");
    let through = wait_until("a query through HAProxy", Duration::from_secs(10), || async {
        psql_at("127.0.0.1", front, "select id from t").map(Some).map_err(|e| e.to_string())
    })
    .await
    .expect("query through haproxy");
    assert_eq!(through, "42");
    haproxy.stop();
    assert!(port_is_closed(front), "haproxy still listens after stop");

    let pid = pg.postmaster_pid().expect("postmaster.pid");
    let port = pg.port();
    drop(pg);
    assert!(port_is_closed(port), "postgres still listens after drop");
    wait_until("the postmaster to exit", Duration::from_secs(5), || async move {
        Ok::<_, String>((!pgwarden_integration_tests::process::is_running(pid)).then_some(()))
    })
    .await
    .expect("the postmaster exits after a stop by data directory");
}
