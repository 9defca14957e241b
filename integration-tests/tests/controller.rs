//! The controller's workflows on a real 3-node cluster: switchover with and
//! without a candidate through gRPC, REST and the CLI; a scheduled switchover
//! and its cancellation; refusals that change nothing; a manual failover with
//! no leader; the active controller killed in the middle of a switchover;
//! the controller key taken, deleted and compacted under the controllers.

use std::time::{Duration, Instant};

use base64::Engine as _;
use ha_proto::v1::{FailoverRequest, GetActiveRequest, SwitchoverRequest, WorkflowOutcome, WorkflowResponse};
use pgwarden_integration_tests::cluster::{REST_PASSWORD, REST_USER};
use pgwarden_integration_tests::grpc;
use pgwarden_integration_tests::service::{http_with, run};
use pgwarden_integration_tests::{PgwardenCluster, init_logging, wait_until};
use tonic::Code;

const UP: Duration = Duration::from_secs(90);

async fn cluster(extra: impl Fn(usize) -> String) -> (PgwardenCluster, usize) {
    init_logging();
    let cluster = PgwardenCluster::start_with(3, extra).await.expect("start");
    let leader = cluster.wait_healthy(UP).await.expect("healthy");
    (cluster, leader)
}

async fn client(cluster: &PgwardenCluster, node: usize) -> grpc::Controller {
    let url = cluster.nodes[node].controller_url();
    wait_until("the controller to answer", UP, || {
        let url = url.clone();
        async move { Ok::<_, String>(grpc::controller(url).await.ok()) }
    })
    .await
    .expect("controller")
}

/// Waits until some controller is active; returns its node index.
async fn active_controller(cluster: &PgwardenCluster, among: &[usize]) -> usize {
    wait_until("a controller to be active", UP, || async {
        for &i in among {
            let Ok(mut c) = grpc::controller(cluster.nodes[i].controller_url()).await else { continue };
            if let Ok(active) = c.get_active(GetActiveRequest {}).await
                && active.get_ref().this_one
            {
                return Ok(Some(i));
            }
        }
        Err("none active yet".to_string())
    })
    .await
    .expect("an active controller")
}

fn auth() -> String {
    pgwarden_integration_tests::cluster::rest_authorization()
}

/// A REST write on `node`: (status, body).
fn rest(cluster: &PgwardenCluster, node: usize, method: &str, path: &str, body: &str, authed: bool) -> (u16, String) {
    let authorization = auth();
    let headers: Vec<(&str, &str)> = if authed {
        vec![("Authorization", authorization.as_str()), ("Content-Type", "application/json")]
    } else {
        vec![]
    };
    http_with(method, cluster.nodes[node].rest_port, path, &headers, body, Duration::from_secs(60)).expect("REST call")
}

fn leader_name(cluster: &PgwardenCluster, i: usize) -> String {
    cluster.nodes[i].name.clone()
}

/// After a finished switchover: one primary (the expected one, if given),
/// every replica streaming, the request cleared.
async fn settled(cluster: &PgwardenCluster, expected: Option<usize>) -> usize {
    let leader = cluster.wait_healthy(UP).await.expect("healthy after the switchover");
    if let Some(expected) = expected {
        assert_eq!(leader, expected, "the named candidate leads");
    }
    wait_until("the request to be cleared", Duration::from_secs(20), || async {
        Ok::<_, String>(cluster.get_key("failover").await.ok().flatten().is_none().then_some(()))
    })
    .await
    .expect("cleared");
    leader
}

/// Waits until exactly one node other than `leader` is primary.
async fn another_primary(cluster: &PgwardenCluster, leader: usize) -> usize {
    wait_until("another member to lead", UP, || async {
        let primaries: Vec<usize> = (0..3).filter(|&i| cluster.nodes[i].check("/primary") == 200).collect();
        match primaries.as_slice() {
            [one] if *one != leader => Ok(Some(*one)),
            _ => Err(format!("{primaries:?}")),
        }
    })
    .await
    .expect("switched over")
}

fn done(response: &WorkflowResponse, leader: &str) {
    assert_eq!(response.outcome, WorkflowOutcome::Done as i32, "{response:?}");
    assert_eq!(response.new_leader, leader, "{response:?}");
}

#[tokio::test]
async fn switchover_with_and_without_a_candidate_through_grpc_rest_and_the_cli() {
    let (cluster, mut leader) = cluster(|_| String::new()).await;
    let mut grpc = client(&cluster, (leader + 1) % 3).await;
    let mut timings = Vec::new();

    // gRPC, named candidate (asked of a controller that may have to forward).
    let candidate = (leader + 1) % 3;
    let started = Instant::now();
    let response = grpc
        .switchover(SwitchoverRequest { candidate: leader_name(&cluster, candidate), ..Default::default() })
        .await
        .expect("gRPC switchover")
        .into_inner();
    timings.push(("gRPC, named", started.elapsed()));
    done(&response, &leader_name(&cluster, candidate));
    assert!(response.message.contains("Successfully switched over"), "{response:?}");
    // One request followed across services: the revision the active
    // controller wrote the `failover` key at names both agents' actions on it.
    let request = cluster
        .nodes
        .iter()
        .flat_map(|n| {
            pgwarden_integration_tests::strip_ansi(&n.controller_log()).lines().map(String::from).collect::<Vec<_>>()
        })
        .filter(|line| line.contains("wrote the failover key"))
        .find_map(|line| {
            line.split_whitespace().find_map(|w| {
                w.strip_prefix("request=").map(|n| n.trim_end_matches(|c: char| !c.is_ascii_digit()).to_string())
            })
        })
        .expect("the controller logs the request's revision");
    for node in [leader, candidate] {
        let log = pgwarden_integration_tests::strip_ansi(&cluster.nodes[node].agent_log());
        assert!(
            log.lines().any(|l| l.contains("ha_action{") && l.contains(&format!("request={request}}}"))),
            "node {node}'s actions on request {request} say so:\n{log}"
        );
    }
    leader = settled(&cluster, Some(candidate)).await;

    // gRPC, no candidate: the best replica.
    let started = Instant::now();
    let response = grpc.switchover(SwitchoverRequest::default()).await.expect("gRPC switchover").into_inner();
    timings.push(("gRPC, best replica", started.elapsed()));
    assert_ne!(response.new_leader, leader_name(&cluster, leader));
    leader = settled(&cluster, None).await;
    assert_eq!(response.new_leader, leader_name(&cluster, leader));

    // REST: refused without credentials, nothing written.
    let body = format!(r#"{{"leader":"{}"}}"#, leader_name(&cluster, leader));
    let (status, text) = rest(&cluster, leader, "POST", "/switchover", &body, false);
    assert_eq!(status, 401, "{text}");
    assert_eq!(cluster.get_key("failover").await.expect("etcd"), None, "nothing written");
    // REST, no candidate.
    let started = Instant::now();
    let (status, text) = rest(&cluster, leader, "POST", "/switchover", &body, true);
    timings.push(("REST, best replica", started.elapsed()));
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("Successfully switched over to"), "{text}");
    leader = settled(&cluster, None).await;
    // REST, named candidate, asked of a replica's health API.
    let candidate = (leader + 1) % 3;
    let body = format!(
        r#"{{"leader":"{}","candidate":"{}"}}"#,
        leader_name(&cluster, leader),
        leader_name(&cluster, candidate)
    );
    let started = Instant::now();
    let (status, text) = rest(&cluster, (leader + 2) % 3, "POST", "/switchover", &body, true);
    timings.push(("REST, named", started.elapsed()));
    assert_eq!(
        (status, text.as_str()),
        (200, format!("Successfully switched over to \"{}\"", leader_name(&cluster, candidate)).as_str())
    );
    leader = settled(&cluster, Some(candidate)).await;

    // The CLI, named and not; it prints the workflow's events as they happen.
    let config = cluster.nodes[0].config_path().display().to_string();
    let candidate = (leader + 1) % 3;
    let name = leader_name(&cluster, candidate);
    let started = Instant::now();
    let (ok, stdout, stderr) =
        run("pgwardenctl", &["-c", &config, "switchover", "--candidate", &name, "--force"], &[]).expect("run");
    timings.push(("CLI, named", started.elapsed()));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{name} took the leader key")), "the CLI shows progress: {stdout}");
    assert!(stdout.contains(&format!("Successfully switched over to \"{name}\"")), "{stdout}");
    leader = settled(&cluster, Some(candidate)).await;
    let started = Instant::now();
    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &config, "switchover", "--force"], &[]).expect("run");
    timings.push(("CLI, best replica", started.elapsed()));
    assert!(ok && stdout.contains("Successfully switched over"), "{stdout}{stderr}");
    assert_ne!(settled(&cluster, None).await, leader);
    for (how, took) in timings {
        println!("switchover through {how}: {took:?} from the request to the new leader");
    }
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    // node3 never leads.
    let (cluster, leader) =
        cluster(|i| if i == 3 { "tags:\n  nofailover: true\n".into() } else { String::new() }).await;
    let mut grpc = client(&cluster, leader).await;
    let current = leader_name(&cluster, leader);
    let refused = |result: Result<tonic::Response<WorkflowResponse>, tonic::Status>, code: Code, words: &str| {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(words), "{status:?}");
    };
    let ask = |candidate: &str| SwitchoverRequest { candidate: candidate.into(), ..Default::default() };
    // Patroni's own words first, so scripts that match them still do.
    refused(grpc.switchover(ask("nobody")).await, Code::NotFound, "candidate does not exists: nobody is not a member");
    let none_good = "is not possible: no good candidates have been found";
    refused(grpc.switchover(ask("node3")).await, Code::FailedPrecondition, &format!("switchover {none_good}"));
    refused(
        grpc.failover(FailoverRequest { candidate: "node3".into() }).await,
        Code::FailedPrecondition,
        &format!("failover {none_good}"),
    );
    refused(grpc.switchover(ask(&current)).await, Code::InvalidArgument, "same");
    refused(
        grpc.switchover(SwitchoverRequest { leader: "node9".into(), ..Default::default() }).await,
        Code::FailedPrecondition,
        "leader name does not match",
    );
    refused(
        grpc.switchover(SwitchoverRequest { scheduled_at: "tomorrow".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "ISO 8601",
    );
    refused(
        grpc.failover(FailoverRequest { candidate: String::new() }).await,
        Code::InvalidArgument,
        "specific candidate",
    );

    // A lagging candidate: node2's WAL receiver frozen while the leader writes.
    assert!(leader < 2, "node3 is nofailover, so node1 or node2 leads");
    let lagging = 1 - leader;
    let receiver: i32 = cluster.nodes[lagging]
        .psql("select pid from pg_stat_wal_receiver")
        .expect("walreceiver pid")
        .parse()
        .expect("a pid");
    let freeze = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(receiver), signal);
    let optime = || cluster.optime();
    let before = optime().await;
    freeze(nix::sys::signal::Signal::SIGSTOP).expect("freeze the WAL receiver");
    cluster.nodes[leader]
        .psql("create table filler as select g, repeat('x', 500) as pad from generate_series(1, 15000) g")
        .expect("write about 8 MB of WAL");
    // Asked once the leader has reported its new position.
    wait_until("the leader to publish its new position", Duration::from_secs(10), || async {
        Ok::<_, String>((optime().await > before + (7 << 20)).then_some(()))
    })
    .await
    .expect("status.optime moved by the written WAL");
    let lagging_name = leader_name(&cluster, lagging);
    let result = grpc.switchover(ask(&lagging_name)).await;
    freeze(nix::sys::signal::Signal::SIGCONT).expect("thaw");
    refused(result, Code::FailedPrecondition, "bytes behind the leader");

    // The same refusals through REST, with Patroni's codes.
    for candidate in ["nobody", "node3"] {
        let body = format!(r#"{{"leader":"{current}","candidate":"{candidate}"}}"#);
        let (status, text) = rest(&cluster, leader, "POST", "/switchover", &body, true);
        assert_eq!(status, 412, "{candidate}: {text}");
    }
    let (status, text) = rest(&cluster, leader, "POST", "/switchover", "{}", true);
    assert_eq!((status, text.as_str()), (400, "Switchover could be performed only from a specific leader"));
    let (status, text) = rest(&cluster, leader, "POST", "/failover", r#"{"leader":"x"}"#, true);
    assert_eq!((status, text.as_str()), (400, "Failover could be performed only to a specific candidate"));
    let (status, text) = rest(&cluster, leader, "POST", "/switchover", "{not json", true);
    assert_eq!(status, 400, "{text}");
    let (status, _) = rest(&cluster, leader, "DELETE", "/switchover", "", true);
    assert_eq!(status, 404, "no switchover is scheduled");

    // gRPC without credentials (or with a wrong password): the state-changing
    // calls of the controller and the agents are refused; reads are open.
    let other = leader_name(&cluster, 1 - leader);
    let url = cluster.nodes[leader].controller_url();
    let mut anonymous = ha_proto::v1::controller_client::ControllerClient::connect(url).await.expect("connect");
    let status = anonymous.switchover(ask(&other)).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("restapi.authentication"), "{status:?}");
    anonymous.list_members(ha_proto::v1::ListMembersRequest {}).await.expect("reads need no credentials");
    let mut agent = ha_proto::v1::node_agent_client::NodeAgentClient::connect(format!(
        "http://127.0.0.1:{}",
        cluster.nodes[leader].agent_port
    ))
    .await
    .expect("connect to the agent");
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{REST_USER}:nope")));
    let mut restart = tonic::Request::new(ha_proto::v1::RestartRequest::default());
    restart.metadata_mut().insert("authorization", wrong.parse().expect("header"));
    let status = agent.restart(restart).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    agent.get_status(ha_proto::v1::GetStatusRequest::default()).await.expect("reads need no credentials");
    // CheckParameters, which the hardening probe flooded anonymously, needs
    // the credentials too, and refuses an oversized request at once.
    let many = |n: usize| ha_proto::v1::CheckParametersRequest {
        parameters: (0..n).map(|i| (format!("p{i}"), "1".to_string())).collect(),
    };
    let status = agent.check_parameters(many(1)).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let right =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{REST_USER}:{REST_PASSWORD}")));
    let mut flood = tonic::Request::new(many(20_000));
    flood.metadata_mut().insert("authorization", right.parse().expect("header"));
    let status = agent.check_parameters(flood).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut one = tonic::Request::new(ha_proto::v1::CheckParametersRequest {
        parameters: [("work_mem".to_string(), "64MBgarbage".to_string())].into(),
    });
    one.metadata_mut().insert("authorization", right.parse().expect("header"));
    let reply = agent.check_parameters(one).await.expect("checked").into_inner();
    assert!(reply.problems.iter().any(|p| p.contains("work_mem")), "{reply:?}");
    // Failed authentication is logged with the client's address, on gRPC and REST.
    let log = cluster.nodes[leader].agent_log();
    assert!(
        log.lines().any(|l| l.contains("refused a gRPC call: authentication failed") && l.contains("127.0.0.1")),
        "{log}"
    );
    let (status, _) = http_with(
        "POST",
        cluster.nodes[leader].rest_port,
        "/switchover",
        &[("Authorization", &wrong)],
        r#"{"candidate":"node3"}"#,
        Duration::from_secs(10),
    )
    .expect("POST /switchover");
    assert_eq!(status, 401);
    let log = cluster.nodes[leader].health_log();
    assert!(
        log.lines().any(|l| l.contains("refused a write request: authentication failed")
            && l.contains("127.0.0.1")
            && l.contains("wrong")),
        "{log}"
    );

    // Nothing changed.
    assert_eq!(cluster.get_key("failover").await.expect("etcd"), None);
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy"), leader);
}

#[tokio::test]
async fn a_scheduled_switchover_can_be_cancelled_or_carried_out_on_time() {
    let (cluster, leader) = cluster(|_| String::new()).await;
    let mut grpc = client(&cluster, leader).await;
    let at = |seconds: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let response = grpc
        .switchover(SwitchoverRequest { scheduled_at: at(3600), ..Default::default() })
        .await
        .expect("scheduled")
        .into_inner();
    assert_eq!(response.outcome, WorkflowOutcome::Scheduled as i32, "{response:?}");
    let key = cluster.get_key("failover").await.expect("etcd").expect("the request is written");
    assert!(key.contains("scheduled_at"), "{key}");
    // /cluster shows it as Patroni's does.
    let body = cluster.nodes[leader].get("/cluster").expect("/cluster");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["scheduled_switchover"]["from"], cluster.nodes[leader].name.as_str(), "{body}");
    assert!(json["scheduled_switchover"]["at"].as_str().is_some_and(|a| !a.is_empty()), "{body}");
    // A second request while one is pending is refused.
    let again = grpc.switchover(SwitchoverRequest::default()).await.expect_err("one at a time");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    // Cancelled through REST.
    let (status, text) = rest(&cluster, leader, "DELETE", "/switchover", "", true);
    assert_eq!((status, text.as_str()), (200, "scheduled switchover deleted"));
    assert_eq!(cluster.get_key("failover").await.expect("etcd"), None);

    // Scheduled a few seconds ahead through the CLI: carried out on time.
    let config = cluster.nodes[0].config_path().display().to_string();
    let when = at(4);
    let due = Instant::now() + Duration::from_secs(3);
    let (ok, stdout, stderr) =
        run("pgwardenctl", &["-c", &config, "switchover", "--scheduled", &when, "--force"], &[]).expect("run");
    assert!(ok && stdout.contains("Switchover scheduled"), "{stdout}{stderr}");
    let new_leader = another_primary(&cluster, leader).await;
    assert!(Instant::now() >= due, "not before its time");
    assert_eq!(settled(&cluster, None).await, new_leader);
}

#[tokio::test]
async fn manual_failover_to_a_named_member_after_the_leader_is_gone() {
    let (mut cluster, leader) = cluster(|_| String::new()).await;
    let config = cluster.nodes[0].config_path().display().to_string();
    // Paused: nobody takes over by themselves.
    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &config, "pause", "--wait"], &[]).expect("run");
    assert!(ok, "{stdout}{stderr}");
    cluster.nodes[leader].kill_node();
    wait_until("the leader key to expire", UP, || async {
        Ok::<_, String>(cluster.get_key("leader").await.ok().flatten().is_none().then_some(()))
    })
    .await
    .expect("no leader");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let candidate = others[1];
    let mut grpc = client(&cluster, others[0]).await;
    let response = grpc
        .failover(FailoverRequest { candidate: leader_name(&cluster, candidate) })
        .await
        .expect("manual failover")
        .into_inner();
    done(&response, &leader_name(&cluster, candidate));
    let (ok, stdout, stderr) = run("pgwardenctl", &["-c", &config, "resume", "--wait"], &[]).expect("run");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(cluster.wait_healthy_among(&others, UP).await.expect("healthy"), candidate);
}

#[tokio::test]
async fn the_active_controller_killed_mid_switchover_leaves_one_primary_and_another_controller_active() {
    let (mut cluster, leader) = cluster(|_| String::new()).await;
    let active = active_controller(&cluster, &[0, 1, 2]).await;
    let mut grpc = client(&cluster, active).await;
    // Scheduled beyond the dead controller's lease (ttl 10 s), so that the
    // next one takes over while the workflow is pending.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(14))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let response = grpc
        .switchover(SwitchoverRequest { scheduled_at: at, ..Default::default() })
        .await
        .expect("scheduled")
        .into_inner();
    assert_eq!(response.outcome, WorkflowOutcome::Scheduled as i32);
    cluster.nodes[active].kill_controller();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != active).collect();
    let next = active_controller(&cluster, &survivors).await;
    // The agents carry the switchover out; the new active controller follows it.
    let new_leader = another_primary(&cluster, leader).await;
    assert_eq!(settled(&cluster, None).await, new_leader);
    assert!(
        cluster.nodes[next].controller_log().contains("following: switchover"),
        "the new active controller picked the workflow up"
    );
    // The new active controller serves requests.
    let mut grpc = client(&cluster, next).await;
    let response = grpc.switchover(SwitchoverRequest::default()).await.expect("switchover").into_inner();
    assert_eq!(response.outcome, WorkflowOutcome::Done as i32);
    settled(&cluster, None).await;
}

#[tokio::test]
async fn a_restarted_controller_frees_its_own_stale_key_and_serves() {
    let (mut cluster, leader) = cluster(|_| String::new()).await;
    let active = active_controller(&cluster, &[0, 1, 2]).await;
    // Killed: its key stays behind, naming this member and URL.
    cluster.nodes[active].kill_controller();
    cluster.nodes[active].start_controller().expect("restart the controller");
    // The new process must neither forward to itself nor wait out a ttl.
    let mut grpc = client(&cluster, active).await;
    let response = grpc.switchover(SwitchoverRequest::default()).await.expect("switchover").into_inner();
    assert_eq!(response.outcome, WorkflowOutcome::Done as i32, "{response:?}");
    assert_ne!(settled(&cluster, None).await, leader);
    assert!(
        cluster.nodes[active].controller_log().contains("previous run")
            || active_controller(&cluster, &[0, 1, 2]).await != active,
        "the stale key was freed, or another controller took over"
    );
}

/// The hardening probe: a switchover to a member whose fencer was down made
/// the leader step down, the candidate refuse the key (no fencer), and the
/// cluster go without a primary for 50 s. Each member now publishes whether
/// its fencer acknowledges (`fencer_ready`); the leader hands over only to
/// one that does, and keeps leading otherwise.
#[tokio::test]
async fn a_switchover_to_a_member_without_its_fencer_is_refused_and_the_leader_keeps_leading() {
    let (mut cluster, leader) = cluster(|_| String::new()).await;
    let candidate = (leader + 1) % 3;
    let name = leader_name(&cluster, candidate);
    cluster.nodes[candidate].kill_health();
    wait_until("the candidate to publish that it cannot lead", UP, || async {
        Ok::<_, String>((!fencer_ready(&cluster, &name).await).then_some(()))
    })
    .await
    .expect("fencer_ready false");
    let mut grpc = client(&cluster, leader).await;
    let request = SwitchoverRequest { candidate: name.clone(), ..Default::default() };
    let outcome = grpc.switchover(request).await;
    println!("switchover to {name} without its fencer: {outcome:?}");
    // The controller applies the candidate rule the leader applies
    // (`ha_core::CandidateRules`): refused before anything is written.
    let refusal = outcome.expect_err("a switchover to a member whose fencer is silent is refused");
    assert_eq!(refusal.code(), tonic::Code::FailedPrecondition, "{refusal:?}");
    assert!(refusal.message().contains("fencer does not acknowledge"), "{refusal:?}");
    // The leader never stepped down: it still answers /primary, on the same timeline.
    assert_eq!(cluster.nodes[leader].check("/primary"), 200, "the leader kept leading");
    assert_eq!(cluster.nodes[leader].psql("select pg_is_in_recovery()").expect("psql"), "f");
    wait_until("the request to be cleared", UP, || async {
        Ok::<_, String>(cluster.get_key("failover").await.map_err(|e| e.to_string())?.is_none().then_some(()))
    })
    .await
    .expect("request cleared");
    assert_eq!(cluster.nodes[leader].check("/primary"), 200, "the leader kept leading");
}

/// Whether member `name`'s key says its fencer acknowledges.
async fn fencer_ready(cluster: &PgwardenCluster, name: &str) -> bool {
    let key = format!("members/{name}");
    cluster.get_key(&key).await.ok().flatten().unwrap_or_default().contains("\"fencer_ready\":true")
}

/// The hardening probe's spoof: with a member's fencer down, another process
/// calling `AcknowledgeFencer` let that member be made primary. An
/// acknowledgement now carries a secret only the local `pgwarden-health` can
/// read (0600, beside the data directory): valid REST credentials are not
/// enough, and the member keeps saying it cannot lead.
#[tokio::test]
async fn a_foreign_process_cannot_pose_as_a_members_fencer() {
    let (mut cluster, leader) = cluster(|_| String::new()).await;
    let replica = (leader + 1) % 3;
    let name = leader_name(&cluster, replica);
    cluster.nodes[replica].kill_health();
    wait_until("the replica to publish that it cannot lead", UP, || async {
        Ok::<_, String>((!fencer_ready(&cluster, &name).await).then_some(()))
    })
    .await
    .expect("fencer_ready false");
    let mut agent = ha_proto::v1::node_agent_client::NodeAgentClient::connect(format!(
        "http://127.0.0.1:{}",
        cluster.nodes[replica].agent_port
    ))
    .await
    .expect("connect to the agent");
    let credentials = auth();
    for _ in 0..12 {
        let mut ack = tonic::Request::new(ha_proto::v1::FencerAck { member: name.clone(), armed_deadline_boot_ns: 0 });
        ack.metadata_mut().insert("authorization", credentials.parse().expect("header"));
        let status = agent.acknowledge_fencer(ack).await.expect_err("a spoofed acknowledgement is refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!fencer_ready(&cluster, &name).await, "the spoofed acknowledgements did not count");
    // Its own fencer back: it may lead again.
    cluster.nodes[replica].start_health().expect("health API");
    wait_until("the replica's own fencer to acknowledge", UP, || async {
        Ok::<_, String>(fencer_ready(&cluster, &name).await.then_some(()))
    })
    .await
    .expect("fencer_ready true");
}

/// `restapi.allowlist` (Patroni's): a write from an address outside it is
/// refused with 403 before the credentials are looked at, and writes
/// nothing; a network that holds the client lets it through to the usual
/// checks; `allowlist_include_members` lets in the hosts of the members'
/// own addresses (here 127.0.0.1).
#[tokio::test]
async fn writes_from_outside_restapi_allowlist_are_refused() {
    let (mut cluster, leader) = cluster(|_| String::new()).await;
    let path = cluster.nodes[leader].config_path();
    let original = std::fs::read_to_string(&path).expect("read config");
    let body = format!(r#"{{"leader":"{}","candidate":"nobody"}}"#, leader_name(&cluster, leader));
    let authorization = auth();
    let headers = [("Authorization", authorization.as_str()), ("Content-Type", "application/json")];
    let port = cluster.nodes[leader].rest_port;
    let with_allowlist = async |cluster: &mut PgwardenCluster, lines: &str| -> (u16, String) {
        let node = &mut cluster.nodes[leader];
        node.kill_health();
        let text = original.replacen("\nrestapi:\n", &format!("\nrestapi:\n{lines}"), 1);
        std::fs::write(&path, text).expect("write config");
        node.start_health().expect("health API");
        wait_until("the health API to answer a write", UP, || async {
            match http_with("POST", port, "/switchover", &headers, &body, Duration::from_secs(30)) {
                Ok((status, text)) if status != 503 => Ok(Some((status, text))),
                Ok((status, text)) => Err(format!("{status} {text}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .expect("an answer")
    };

    let (status, text) = with_allowlist(&mut cluster, "  allowlist: ['10.255.255.1', '192.0.2.0/24']\n").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("Access is denied"), "{text}");
    assert_eq!(cluster.get_key("failover").await.expect("etcd"), None, "nothing written");
    assert!(cluster.nodes[leader].health_log().contains("not in restapi.allowlist"));

    // A network that holds the client: the request reaches the usual checks
    // (an unknown candidate: refused by the controller, not by the allowlist).
    let (status, text) = with_allowlist(&mut cluster, "  allowlist: ['10.255.255.1', '127.0.0.0/8']\n").await;
    assert_ne!(status, 403, "{text}");
    assert!(text.contains("nobody"), "{text}");

    // Only the members' hosts.
    let (status, text) =
        with_allowlist(&mut cluster, "  allowlist: ['10.255.255.1']\n  allowlist_include_members: true\n").await;
    assert_ne!(status, 403, "{text}");
    assert!(text.contains("nobody"), "{text}");
    assert_eq!(cluster.get_key("failover").await.expect("etcd"), None, "an unknown candidate writes nothing");
}

/// Whom each controller names as active: (member, this_one) per node.
async fn named_active(cluster: &PgwardenCluster) -> Result<Vec<(String, bool)>, String> {
    let mut named = Vec::new();
    for node in &cluster.nodes {
        let mut c = grpc::controller(node.controller_url()).await.map_err(|e| e.to_string())?;
        let active = c.get_active(GetActiveRequest {}).await.map_err(|e| e.to_string())?.into_inner();
        named.push((active.member, active.this_one));
    }
    Ok(named)
}

const STEPPED_DOWN: &str = "no longer the active controller";

/// The active controller keeps its key with lease keep-alives and a watch on
/// the key, not a proving request at every renewal: a key someone else
/// writes or deletes ends its term at once, and every controller follows the
/// holder. After etcd compacts away the key's revision, a controller that
/// starts waits quietly: it watches from the revision it read, not the key's
/// own (a watch from a compacted revision is cancelled at once, and was
/// retried in a tight loop).
#[tokio::test]
async fn controllers_follow_their_key_when_it_is_taken_deleted_or_compacted() {
    let (mut cluster, _leader) = cluster(|_| String::new()).await;
    let active = active_controller(&cluster, &[0, 1, 2]).await;

    // Written by someone else (no lease): the active one steps down and
    // every controller names the new holder.
    let intruder = r#"{"member":"intruder","url":"http://127.0.0.1:9"}"#;
    cluster.put_key("pgwarden-controller", intruder).await.expect("overwrite the key");
    wait_until("every controller to follow the new holder", Duration::from_secs(20), || async {
        let named = named_active(&cluster).await?;
        match named.iter().all(|(member, this_one)| member == "intruder" && !this_one) {
            true => Ok(Some(())),
            false => Err(format!("{named:?}")),
        }
    })
    .await
    .expect("followed");
    assert!(cluster.nodes[active].controller_log().contains(STEPPED_DOWN), "the active controller said why it stopped");

    // Compacted past the key's revision, then a controller restarted: it
    // reads the holder and waits on a watch, asking etcd nothing meanwhile.
    // (Two writes after the key's first: at idle nothing else moves etcd's
    // revision, and the compaction must pass the key's.)
    for value in ["1", "2"] {
        cluster.put_key("filler", value).await.expect("write another key");
    }
    let mut client = cluster.etcd.client().await.expect("etcd client");
    let revision = client.get("/", None).await.expect("read the revision").header().expect("header").revision();
    client.compact(revision, None).await.expect("compact");
    let restarted = (active + 1) % 3;
    cluster.nodes[restarted].kill_controller();
    cluster.nodes[restarted].start_controller().expect("restart the controller");
    wait_until("the restarted controller to name the holder", UP, || async {
        let Ok(mut c) = grpc::controller(cluster.nodes[restarted].controller_url()).await else {
            return Ok::<_, String>(None);
        };
        let named = c.get_active(GetActiveRequest {}).await.ok().map(|a| a.into_inner().member);
        Ok((named.as_deref() == Some("intruder")).then_some(()))
    })
    .await
    .expect("the restarted controller follows the holder");
    // A measuring window, not a wait for a condition: the whole cluster's
    // requests (lease renewals, safety reads) are about 8 in 5 s here; a
    // controller retrying a watch from the compacted revision made 106-108.
    let before = cluster.etcd.messages_received().expect("etcd metrics");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = cluster.etcd.messages_received().expect("etcd metrics") - before;
    assert!(requests < 50.0, "{requests} etcd requests in 5 s with every controller standing by");

    // Deleted: a controller takes the key; deleted under that one, it steps
    // down at once and a controller takes it again.
    cluster.delete_key("pgwarden-controller").await.expect("delete the key");
    let active = active_controller(&cluster, &[0, 1, 2]).await;
    let said = cluster.nodes[active].controller_log().matches(STEPPED_DOWN).count();
    cluster.delete_key("pgwarden-controller").await.expect("delete the key");
    wait_until("the active controller to step down", Duration::from_secs(20), || async {
        Ok::<_, String>((cluster.nodes[active].controller_log().matches(STEPPED_DOWN).count() > said).then_some(()))
    })
    .await
    .expect("stepped down");
    active_controller(&cluster, &[0, 1, 2]).await;
}

/// A switchover the leader gives up (its candidate's agent does not answer,
/// so the candidate cannot be seen streaming) drops the request it acted on,
/// and only that one: a request an operator wrote meanwhile (here a
/// switchover scheduled an hour ahead) stays. The leader keeps leading.
#[tokio::test]
async fn a_switchover_given_up_leaves_a_request_written_meanwhile() {
    let (cluster, leader) = cluster(|_| String::new()).await;
    let candidate = (leader + 1) % 3;
    cluster.nodes[candidate].signal_agent(nix::sys::signal::Signal::SIGSTOP);
    let request =
        serde_json::json!({"leader": leader_name(&cluster, leader), "member": leader_name(&cluster, candidate)});
    cluster.put_key("failover", &request.to_string()).await.expect("write the request");
    wait_until("the leader to start the switchover", Duration::from_secs(20), || async {
        Ok::<_, String>(cluster.nodes[leader].agent_log().contains("Switchover {").then_some(()))
    })
    .await
    .expect("started");
    let at = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let newer = serde_json::json!({"leader": leader_name(&cluster, leader), "scheduled_at": at}).to_string();
    cluster.put_key("failover", &newer).await.expect("write a newer request");
    wait_until("the leader to give the switchover up", UP, || async {
        Ok::<_, String>(cluster.nodes[leader].agent_log().contains("staying primary").then_some(()))
    })
    .await
    .expect("given up");
    cluster.nodes[candidate].signal_agent(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(cluster.get_key("failover").await.expect("read the request"), Some(newer), "the newer request stays");
    assert_eq!(cluster.wait_healthy(UP).await.expect("healthy"), leader, "the leader keeps leading");
    assert!(cluster.nodes[leader].agent_log().contains("the switchover request changed meanwhile: left in place"));
}
