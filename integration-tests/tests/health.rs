//! Every health endpoint on a real 3-node cluster, on the leader and on
//! replicas, as HAProxy, probes and Prometheus call them.

use std::time::Duration;

use pgwarden_integration_tests::service::{http, response_headers};
use pgwarden_integration_tests::{PgwardenCluster, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

fn code(port: u16, method: &str, path: &str) -> u16 {
    http(method, port, path).map_or(0, |(status, _)| status)
}

#[tokio::test]
async fn every_endpoint_on_the_leader_and_on_replicas() {
    init_logging();
    let tags = |i: usize| match i {
        2 => "tags:\n  dc: east\n  noloadbalance: false\n".to_string(),
        3 => "tags:\n  dc: west\n".to_string(),
        _ => String::new(),
    };
    let mut cluster = PgwardenCluster::start_with(3, tags).await.expect("start the cluster");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    assert_eq!(leader, 0);
    let (l, r2, r3) = (cluster.nodes[0].rest_port, cluster.nodes[1].rest_port, cluster.nodes[2].rest_port);

    // Role checks, by GET, HEAD and OPTIONS alike.
    let expectations: &[(&str, [u16; 3])] = &[
        ("/", [200, 503, 503]),
        ("/primary", [200, 503, 503]),
        ("/read-write", [200, 503, 503]),
        ("/leader", [200, 503, 503]),
        ("/standby-leader", [503, 503, 503]),
        ("/replica", [503, 200, 200]),
        ("/read-only", [200, 200, 200]),
        ("/sync", [503, 503, 503]),
        ("/async", [503, 200, 200]),
        ("/read-only-sync", [200, 503, 503]),
        ("/health", [200, 200, 200]),
        ("/liveness", [200, 200, 200]),
        ("/readiness", [200, 200, 200]),
        ("/patroni", [200, 200, 200]),
        ("/cluster", [200, 200, 200]),
        ("/history", [200, 200, 200]),
        ("/config", [200, 200, 200]),
        ("/metrics", [200, 200, 200]),
        ("/no-such-check", [503, 503, 503]),
        ("/replica?tag_dc=east", [503, 200, 503]),
        ("/replica?tag_dc=west", [503, 503, 200]),
        ("/replica?tag_rack=1", [503, 503, 503]),
        ("/replica?lag=1MB", [503, 200, 200]),
    ];
    // Each answer must settle within a few seconds of the cluster being healthy
    // (a replica's WAL receiver may still be reconnecting right after start).
    for (path, expected) in expectations {
        for method in ["GET", "HEAD", "OPTIONS"] {
            wait_until(&format!("{method} {path} to answer {expected:?}"), Duration::from_secs(5), || async {
                let got = [code(l, method, path), code(r2, method, path), code(r3, method, path)];
                if &got == expected { Ok(Some(())) } else { Err(format!("{got:?}")) }
            })
            .await
            .expect("the expected answers");
        }
    }
    // HEAD and OPTIONS carry no body; GET of a check carries the status JSON.
    let (_, body) = http("HEAD", l, "/primary").expect("HEAD");
    assert!(body.is_empty(), "HEAD has no body: {body}");
    let (_, body) = http("GET", r2, "/replica").expect("GET");
    assert!(body.contains("\"role\":\"replica\""), "{body}");
    let (status, _) = http("POST", l, "/primary").expect("POST");
    assert_eq!(status, 405);

    let (_, metrics) = http("GET", l, "/metrics").expect("metrics");
    for name in [
        "patroni_primary",
        "patroni_postgres_running",
        "patroni_xlog_location",
        "patroni_postgres_timeline",
        "pgwarden_leader_lease_seconds_left",
    ] {
        assert!(metrics.contains(&format!("{name}{{scope=\"itest\",name=\"node1\"}}")), "{name} missing:\n{metrics}");
    }
    assert!(metrics.contains("patroni_primary{scope=\"itest\",name=\"node1\"} 1"));
    let (_, metrics) = http("GET", r2, "/metrics").expect("metrics");
    assert!(metrics.contains("patroni_replica{scope=\"itest\",name=\"node2\"} 1"), "{metrics}");
    assert!(metrics.contains("patroni_postgres_streaming{scope=\"itest\",name=\"node2\"} 1"), "{metrics}");

    // A replica made to lag: its WAL receiver frozen while the leader writes ~4 MB.
    let receiver: i32 =
        cluster.nodes[2].psql("select pid from pg_stat_wal_receiver").expect("pid").parse().expect("a pid");
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(receiver), s);
    signal(nix::sys::signal::Signal::SIGSTOP).expect("freeze the WAL receiver");
    cluster.nodes[0]
        .psql("create table filler as select g, repeat('x', 500) as pad from generate_series(1, 8000) g")
        .expect("write WAL");
    let lagging = wait_until("node3 to fail /replica?lag=1MB", Duration::from_secs(15), || async {
        Ok::<_, String>((code(r3, "GET", "/replica?lag=1MB") == 503).then_some(()))
    })
    .await;
    let lagging_readiness = code(r3, "GET", "/readiness");
    let still_replica = code(r3, "GET", "/replica");
    let big_limit = code(r3, "GET", "/replica?lag=1GB");
    signal(nix::sys::signal::Signal::SIGCONT).expect("thaw the WAL receiver");
    lagging.expect("a lagging replica fails /replica?lag=1MB");
    assert_eq!(lagging_readiness, 503, "a replica lagging beyond maximum_lag_on_failover is not ready");
    assert_eq!(still_replica, 200, "without ?lag= a lagging replica still serves reads");
    assert_eq!(big_limit, 200);
    assert_eq!(code(r2, "GET", "/replica?lag=1MB"), 200, "the other replica keeps up");
    wait_until("node3 to catch up", Duration::from_secs(30), || async {
        Ok::<_, String>((code(r3, "GET", "/replica?lag=1MB") == 200).then_some(()))
    })
    .await
    .expect("caught up");

    // The agent frozen: its stream sends only changes, so nothing tells the
    // health API; a check finds the state unconfirmed for 500 ms, asks the
    // agent, gets no answer, and fails closed. Thawed, checks pass again.
    let frozen_replica = cluster.nodes[1].name.clone();
    assert_eq!(code(r2, "GET", "/replica"), 200, "{frozen_replica} before the freeze");
    cluster.nodes[1].signal_agent(nix::sys::signal::Signal::SIGSTOP);
    let failed_closed = wait_until("a frozen agent's checks to fail closed", Duration::from_secs(2), || async {
        Ok::<_, String>((code(r2, "GET", "/replica") == 503).then_some(()))
    })
    .await;
    let patroni_while_frozen = http("GET", r2, "/patroni").map(|(_, body)| body).unwrap_or_default();
    cluster.nodes[1].signal_agent(nix::sys::signal::Signal::SIGCONT);
    failed_closed.expect("a frozen agent fails every check closed");
    assert!(patroni_while_frozen.contains("\"state\":\"unknown\""), "{patroni_while_frozen}");
    wait_until("the thawed agent's checks to pass", Duration::from_secs(5), || async {
        Ok::<_, String>((code(r2, "GET", "/replica") == 200).then_some(()))
    })
    .await
    .expect("a thawed agent confirms its state again");

    // The agent stopped: every role check on that node answers 503.
    cluster.nodes[1].kill_agent();
    wait_until("node2's checks to fail closed", Duration::from_secs(2), || async {
        Ok::<_, String>((code(r2, "GET", "/replica") == 503).then_some(()))
    })
    .await
    .expect("stale state is unknown");
    for path in
        ["/", "/primary", "/leader", "/replica", "/read-only", "/sync", "/async", "/health", "/liveness", "/readiness"]
    {
        assert_eq!(code(r2, "GET", path), 503, "{path} with the agent gone");
    }
    let (status, body) = http("GET", r2, "/patroni").expect("/patroni");
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"unknown\"") && body.contains("agent"), "{body}");

    // Patroni's restapi.http_extra_headers and server_tokens: on every
    // response, checks and errors alike; https_extra_headers only with TLS.
    assert!(!response_headers(r3, "/health").expect("headers").iter().any(|(n, _)| n == "server"));
    cluster.nodes[2]
        .merge_config(serde_json::json!({"restapi": {
            "http_extra_headers": {"X-Frame-Options": "SAMEORIGIN", "Cache-Control": "no-store"},
            "https_extra_headers": {"Strict-Transport-Security": "max-age=31536000"},
            "server_tokens": "ProductOnly",
        }}))
        .expect("extra headers");
    cluster.nodes[2].kill_health();
    cluster.nodes[2].start_health().expect("restart the health API");
    wait_until("node3's health API back", UP, || async {
        Ok::<_, String>((code(r3, "GET", "/replica") == 200).then_some(()))
    })
    .await
    .expect("back");
    for path in ["/replica", "/primary", "/patroni", "/no-such-endpoint"] {
        let headers = response_headers(r3, path).expect("headers");
        let has = |name: &str, value: &str| headers.iter().any(|(n, v)| n == name && v == value);
        assert!(has("x-frame-options", "SAMEORIGIN") && has("cache-control", "no-store"), "{path}: {headers:?}");
        assert!(has("server", "pgwarden"), "{path}: {headers:?}");
        assert!(!headers.iter().any(|(n, _)| n == "strict-transport-security"), "{path}: no TLS here: {headers:?}");
    }
}

/// The hardening probe's idle-connection flood: 20,000 idle TCP connections
/// kept the REST server from answering `/primary`. Now connections past the
/// cap push out the oldest idle one, an idle connection is closed, and so is
/// a client that never finishes its request header (slowloris). Bounded: it
/// stops by itself within a minute.
#[tokio::test]
async fn idle_and_slow_clients_cannot_keep_the_health_checks_out() {
    use std::io::{Read as _, Write as _};
    init_logging();
    let mut cluster = PgwardenCluster::start_with(0, |_| String::new()).await.expect("etcd");
    cluster.add_node("node1", "").expect("node");
    cluster.nodes[0].start_health().expect("health API");
    let port = cluster.nodes[0].rest_port;
    wait_until("the health API to answer", UP, || async {
        Ok::<_, String>((code(port, "GET", "/patroni") != 0).then_some(()))
    })
    .await
    .expect("up");
    // Twice the cap of idle connections, and a slowloris header.
    let idle: Vec<std::net::TcpStream> =
        (0..512).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect")).collect();
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /patroni HTTP/1.1\r\nHost: x\r\n").expect("half a header");
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_ne!(code(port, "GET", "/patroni"), 0, "a check answered despite the idle connections");
    }
    println!("20 checks beside 512 idle connections in {:?}", started.elapsed());
    // The slow client is cut off after the header timeout (5 s).
    slow.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut buffer = [0u8; 512];
    let read = slow.read(&mut buffer);
    let closed = match &read {
        Ok(0) => true,
        Ok(n) => String::from_utf8_lossy(&buffer[..*n]).contains("408"),
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    assert!(closed, "the slow client was not cut off: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "closed after {:?}", started.elapsed());
    // Every idle connection is closed by the server (evicted or timed out).
    let mut open = idle;
    wait_until("the server to close the idle connections", Duration::from_secs(40), || {
        // Still open: a read would block. Closed: end of stream or a reset.
        open.retain(|stream| {
            stream.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            matches!((&*stream).read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        let left = open.len();
        async move { if left == 0 { Ok(Some(())) } else { Err(format!("{left} still open")) } }
    })
    .await
    .expect("idle connections closed");
}
