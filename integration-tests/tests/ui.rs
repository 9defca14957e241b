//! The status page (`GET /ui`) in a real headless Chromium on a running
//! 3-node cluster: it shows the members, the leader and its lease; a
//! switchover shows on the open page (new leader, the controller's events)
//! without a reload; with `restapi.authentication` set (as on every test
//! node), the page and its event stream need it and `/ui/state` does not.

use std::path::PathBuf;
use std::time::Duration;

use ha_proto::v1::SwitchoverRequest;
use pgwarden_integration_tests::browser::Browser;
use pgwarden_integration_tests::cluster::{REST_PASSWORD, REST_USER};
use pgwarden_integration_tests::service::http_with;
use pgwarden_integration_tests::{PgwardenCluster, TestDir, grpc, init_logging, wait_until};

const UP: Duration = Duration::from_secs(90);

/// Where the screenshot goes (`PGWARDEN_UI_SCREENSHOT`, else the target
/// directory); docs/status-page.png is a copy.
fn screenshot_path() -> PathBuf {
    std::env::var_os("PGWARDEN_UI_SCREENSHOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png"), PathBuf::from)
}

/// What the open page shows: the leader, the members' names, the events' text.
fn shown(browser: &Browser) -> Result<(String, Vec<String>, String), String> {
    let value = browser
        .eval(
            "return [document.getElementById('leader').textContent, \
             Array.from(document.querySelectorAll('#members tr')).map(r => r.dataset.member), \
             document.getElementById('events').innerText];",
        )
        .map_err(|e| e.to_string())?;
    let leader = value[0].as_str().unwrap_or_default().to_string();
    let members = value[1].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect());
    let events = value[2].as_str().unwrap_or_default().to_string();
    Ok((leader, members.unwrap_or_default(), events))
}

#[tokio::test]
async fn the_status_page_shows_the_cluster_and_a_switchover_live() {
    init_logging();
    let cluster = PgwardenCluster::start_with(3, |_| String::new()).await.expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    let name = |i: usize| cluster.nodes[i].name.clone();
    let dir = TestDir::new("ui");
    let browser = Browser::start(&dir).await.expect("headless Chromium");
    // What the browser sends once its user answered the page's prompt.
    let credentials = format!("Basic {}", base64_of(&format!("{REST_USER}:{REST_PASSWORD}")));
    browser.set_headers(&[("Authorization", credentials.as_str())]).expect("credentials");
    let viewer = (leader + 1) % 3;
    browser.open(&format!("http://127.0.0.1:{}/ui", cluster.nodes[viewer].rest_port)).expect("open /ui");

    let mut names: Vec<String> = (0..3).map(name).collect();
    names.sort();
    wait_until("the page to show the members and the leader with its lease", UP, || async {
        let (shown_leader, mut members, _) = shown(&browser)?;
        members.sort();
        let lease = browser.eval("return document.getElementById('lease').textContent").map_err(|e| e.to_string())?;
        let lease = lease.as_str().unwrap_or_default().to_string();
        if shown_leader == name(leader) && members == names && lease.contains(" s of ") {
            Ok(Some(()))
        } else {
            Err(format!("leader {shown_leader:?}, members {members:?}, lease {lease:?}"))
        }
    })
    .await
    .expect("the page shows the cluster");
    // The controller's stream is followed before the switchover, so that
    // its events reach the open page.
    wait_until("the page to follow the controller's events", UP, || async {
        let status =
            browser.eval("return document.getElementById('events-status').textContent").map_err(|e| e.to_string())?;
        let text = status.as_str().unwrap_or_default().to_string();
        if text.contains("live") { Ok(Some(())) } else { Err(text) }
    })
    .await
    .expect("events followed");
    let path = screenshot_path();
    browser.screenshot(&path).expect("screenshot");
    let png = std::fs::read(&path).expect("read the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
    println!("screenshot: {}", path.display());

    let candidate = (leader + 2) % 3;
    let mut controller = grpc::controller(cluster.nodes[viewer].controller_url()).await.expect("controller");
    let request = SwitchoverRequest { leader: name(leader), candidate: name(candidate), ..Default::default() };
    controller.switchover(request).await.expect("switchover");
    wait_until("the open page to show the new leader and the switchover", UP, || async {
        let (shown_leader, _, events) = shown(&browser)?;
        if shown_leader == name(candidate) && events.contains("switchover") {
            Ok(Some(events))
        } else {
            Err(format!("leader {shown_leader:?}, events {events:?}"))
        }
    })
    .await
    .expect("the switchover shows without a reload");
    let after = screenshot_path().with_file_name("status-page-after-switchover.png");
    browser.screenshot(&after).expect("screenshot after the switchover");

    // Read-only.
    let port = cluster.nodes[viewer].rest_port;
    let authed = [("Authorization", credentials.as_str())];
    let (status, _) = http_with("POST", port, "/ui", &authed, "", Duration::from_secs(5)).expect("POST /ui");
    assert_eq!(status, 405, "read-only");
}

#[tokio::test]
async fn the_page_and_its_events_need_the_rest_credentials_and_its_state_does_not() {
    init_logging();
    let mut cluster = PgwardenCluster::start_with(1, |_| String::new()).await.expect("start");
    cluster.wait_healthy(UP).await.expect("healthy");
    let port = cluster.nodes[0].rest_port;
    let get = |path: &str, headers: &[(&str, &str)]| {
        http_with("GET", port, path, headers, "", Duration::from_secs(5)).expect("GET")
    };
    let wrong = format!("Basic {}", base64_of(&format!("{REST_USER}:wrong")));
    let right = format!("Basic {}", base64_of(&format!("{REST_USER}:{REST_PASSWORD}")));
    for path in ["/ui", "/ui/app.js", "/ui/style.css", "/ui/events"] {
        let (status, body) = get(path, &[]);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("restapi.authentication"), "{path}: {body}");
        assert_eq!(get(path, &[("Authorization", wrong.as_str())]).0, 401, "{path}");
        assert_eq!(get(path, &[("Authorization", right.as_str())]).0, 200, "{path}");
    }
    let (status, page) = get("/ui", &[("Authorization", right.as_str())]);
    assert_eq!(status, 200);
    assert!(page.contains("/ui/app.js") && !page.contains("<script>"), "{page}");
    let (status, body) = get("/ui/state", &[]);
    assert_eq!(status, 200, "/ui/state says what /cluster says, and is open like it: {body}");
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(state["cluster"]["members"].as_array().map(Vec::len), Some(1), "{state}");
    assert!(state["lease"]["ttl_left"].as_i64().is_some_and(|t| t > 0), "{state}");
    let (status, body) = get("/ui/events", &[("Authorization", right.as_str())]);
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(events["events"].is_array(), "{events}");
    assert_eq!(get("/ui/nothing", &[("Authorization", right.as_str())]).0, 404);
    let (status, _) = http_with("POST", port, "/ui/state", &[], "{}", Duration::from_secs(5)).expect("POST");
    assert_eq!(status, 405, "read-only, also where no credentials are needed");
    // etcd gone: the page's state says so (the page shows the text), not an empty cluster.
    cluster.etcd.kill(0);
    let reason = wait_until("/ui/state to report etcd gone", UP, || async {
        match get("/ui/state", &[]) {
            (503, body) => Ok(Some(body)),
            (status, body) => Err(format!("{status}: {body}")),
        }
    })
    .await
    .expect("503 without etcd");
    assert!(reason.contains("etcd does not answer") && reason.contains("etcd3"), "{reason}");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
