//! Commands that change the cluster: switchover and failover through the
//! controller (or, when none answers, the same workflow run here against
//! etcd, as `patronictl` falls back to the DCS), and `pause` in the `config`
//! key.
//! Every write is a compare-and-swap; nothing is written before the request
//! is checked.

use pgwarden_runtime::grpc::AuthChannel;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dcs::{ClusterView, Etcd, EtcdSettings, Keys};
use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::{CancelSwitchoverRequest, FailoverRequest, SwitchoverRequest, WatchEventsRequest};
use pgwarden_config::Config;

pub struct Target {
    pub etcd: Etcd,
    pub keys: Keys,
    pub scope: String,
}

pub async fn target(config: &Config, cluster: Option<String>) -> anyhow::Result<Target> {
    let scope = cluster.unwrap_or_else(|| config.scope.clone());
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let etcd = dcs::connect(&EtcdSettings::from_config(&config.etcd, timeout)).await?;
    Ok(Target { etcd, keys: Keys::new(&config.namespace, &scope), scope })
}

async fn read(target: &Target) -> anyhow::Result<ClusterView> {
    dcs::read_cluster(&target.etcd, &target.keys)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read cluster {} from etcd: {}", target.scope, dcs::describe_error(&e)))
}

/// Asks for confirmation on a terminal; without one, `--force` is required.
pub fn confirm(question: &str, force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} needs confirmation: run it on a terminal, or add --force");
    }
    print!("{question} [y/N]: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") { Ok(()) } else { bail!("aborted") }
}

/// How a switchover or failover reaches the cluster: the controller's gRPC
/// API (progress streamed live), or, when no controller answers, the same
/// workflow run here against etcd (as `patronictl` falls back to the DCS).
pub enum Workflow {
    Switchover { leader: String, candidate: String, scheduled_at: String },
    Failover { candidate: String },
    Cancel,
}

pub(crate) fn time_of(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]")).ok()
        })
        .unwrap_or_default()
}

pub(crate) async fn controller_client(config: &Config, scope: &str) -> Option<ControllerClient<AuthChannel>> {
    if !crate::source::controller_serves(config, scope) {
        return None;
    }
    let url = config.pgwarden.controller_grpc_url();
    let connect = |url: String| async move {
        pgwarden_runtime::grpc::connect(&url, Duration::from_secs(2)).await.ok().map(ControllerClient::new)
    };
    let mut client = connect(url).await?;
    // Talk to the active controller itself: it runs the operation, so its
    // event stream carries the operation's progress.
    let answer = client.get_active(ha_proto::v1::GetActiveRequest {}).await.ok().map(tonic::Response::into_inner);
    // The address the config names may be another cluster's member (a
    // second cluster on the same hosts): never send this cluster's
    // operation there; etcd serves instead.
    if let Some(other) = answer.as_ref().map(|a| a.scope.as_str()).filter(|s| !s.is_empty() && *s != scope) {
        eprintln!("the controller the config names serves cluster {other}, not {scope}: working against etcd");
        return None;
    }
    if let Some(active) = answer
        && !active.this_one
        && !active.url.is_empty()
        && let Some(active) = connect(active.url).await
    {
        client = active;
    }
    Some(client)
}

/// A refusal from the controller, or from a workflow run here: its message and code.
pub(crate) fn failed(status: impl Into<tonic::Status>) -> anyhow::Error {
    let status = status.into();
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// Runs `workflow`, printing the controller's events while it runs.
pub async fn run_workflow(config: &Config, target: &Target, workflow: Workflow) -> anyhow::Result<()> {
    let Some(mut client) = controller_client(config, &target.scope).await else {
        eprintln!("no controller answers: running the workflow here, against etcd");
        let cluster = workflows::workflow::Cluster {
            etcd: target.etcd.clone(),
            keys: target.keys.clone(),
            scope: target.scope.clone(),
        };
        let message = match workflow {
            Workflow::Switchover { leader, candidate, scheduled_at } => {
                workflows::workflow::switchover(&cluster, &leader, &candidate, &scheduled_at).await.map(|r| r.message)
            }
            Workflow::Failover { candidate } => {
                workflows::workflow::failover(&cluster, &candidate).await.map(|r| r.message)
            }
            Workflow::Cancel => workflows::workflow::cancel(&cluster).await,
        };
        println!("{}", message.map_err(failed)?);
        return Ok(());
    };
    // Subscribe before asking, so that no step is missed.
    let mut events = client.watch_events(WatchEventsRequest {}).await.map_err(failed)?.into_inner();
    let printer = tokio::spawn(async move {
        while let Ok(Some(event)) = events.message().await {
            println!("{}  {}", time_of(event.at_unix_ms), event.message);
        }
    });
    let outcome = match workflow {
        Workflow::Switchover { leader, candidate, scheduled_at } => client
            .switchover(SwitchoverRequest { leader, candidate, scheduled_at })
            .await
            .map(|r| r.into_inner().message),
        Workflow::Failover { candidate } => {
            client.failover(FailoverRequest { candidate }).await.map(|r| r.into_inner().message)
        }
        Workflow::Cancel => client.cancel_switchover(CancelSwitchoverRequest {}).await.map(|r| r.into_inner().message),
    };
    // The last events (the new leader's role change) follow the outcome closely.
    tokio::time::sleep(Duration::from_millis(300)).await;
    printer.abort();
    println!("{}", outcome.map_err(failed)?);
    Ok(())
}

pub async fn switchover(
    config: &Config,
    target: &Target,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let view = read(target).await?;
    let Some(current) = view.leader.as_ref().map(|l| l.name.clone()) else {
        bail!(
            "cluster {} has no leader: a switchover needs one (use `pgwardenctl failover --candidate NAME`)",
            target.scope
        );
    };
    no_candidates_check(&view, Some(&current), "switchover")?;
    let to = candidate.clone().unwrap_or_else(|| "the best replica".into());
    let when = scheduled.clone().filter(|s| s != "now").map_or_else(|| "now".to_string(), |at| format!("at {at}"));
    confirm(&format!("Switch over cluster {} from {current} to {to}, {when}?", target.scope), force)?;
    let workflow = Workflow::Switchover {
        leader: leader.unwrap_or_default(),
        candidate: candidate.unwrap_or_default(),
        scheduled_at: scheduled.unwrap_or_default(),
    };
    run_workflow(config, target, workflow).await
}

/// The members that could take over from `leader`: every other member
/// whose tags let it lead, by name (patronictl's list, checked before it asks
/// anything).
fn candidates<'v>(view: &'v ClusterView, leader: Option<&str>) -> Vec<&'v str> {
    let mut names: Vec<&str> = view
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != leader && !m.data.known_tags().never_leads())
        .map(|m| m.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

/// Refuses, in patronictl's words, an `action` no member could take.
fn no_candidates_check(view: &ClusterView, leader: Option<&str>, action: &str) -> anyhow::Result<()> {
    if candidates(view, leader).is_empty() {
        bail!("No candidates found to {action} to");
    }
    Ok(())
}

pub async fn failover(config: &Config, target: &Target, candidate: String, force: bool) -> anyhow::Result<()> {
    let view = read(target).await?;
    no_candidates_check(&view, view.leader.as_ref().map(|l| l.name.as_str()), "failover")?;
    let from = view.leader.as_ref().map_or_else(|| "no leader".to_string(), |l| format!("leader {}", l.name));
    confirm(&format!("Fail cluster {} over to {candidate} ({from} now)?", target.scope), force)?;
    run_workflow(config, target, Workflow::Failover { candidate }).await
}

/// Sets or clears `pause` in the `config` key (compare-and-swap); with
/// `wait`, until every member's key reports it.
pub async fn set_pause(target: &Target, pause: bool, wait: bool) -> anyhow::Result<()> {
    let view = read(target).await?;
    let Some((mut config, revision)) = view.config.clone() else {
        bail!("cluster {} has no config key yet (is it bootstrapped?)", target.scope);
    };
    let paused = config.get("pause").and_then(serde_json::Value::as_bool) == Some(true);
    if paused == pause {
        bail!("cluster {} is already {}", target.scope, if pause { "paused" } else { "resumed" });
    }
    let map = config.as_object_mut().context("the config key is not a JSON object")?;
    if pause {
        map.insert("pause".into(), serde_json::Value::Bool(true));
    } else {
        map.remove("pause");
    }
    let key = target.keys.config();
    if target.etcd.put_if_revision(&key, config.to_string(), revision).await.context("write the config")?.is_none() {
        bail!("the config changed at the same moment; try again");
    }
    println!(
        "{}",
        if pause { "Success: cluster management is paused" } else { "Success: cluster management is resumed" }
    );
    if wait {
        let started = Instant::now();
        loop {
            let now = read(target).await?;
            let pending: Vec<&str> =
                now.members.iter().filter(|m| m.data.paused() != pause).map(|m| m.name.as_str()).collect();
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > workflows::workflow::deadline(&now) {
                bail!("members not yet reporting it: {}", pending.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// What `version` prints for a member: pgwarden's and PostgreSQL's versions
/// from its agent, or Patroni's from its member key (a Patroni member in a
/// cluster being migrated).
pub async fn member_version(view: &ClusterView, member: &dcs::MemberEntry) -> String {
    if member.data.grpc_url.is_some() {
        let ask = async {
            let mut client = workflows::workflow::agent(view, &member.name).await.map_err(|e| e.to_string())?;
            client
                .get_status(ha_proto::v1::GetStatusRequest::default())
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| s.message().to_string())
        };
        return match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok(status)) => {
                let postgres = u32::try_from(status.server_version)
                    .ok()
                    .filter(|v| *v > 0)
                    .map(|v| format!(" PostgreSQL {}", ha_core::format_postgres_version(v)))
                    .unwrap_or_default();
                format!("pgwarden {}{postgres}", status.version)
            }
            Ok(Err(why)) => format!("failed to get version: {why}"),
            Err(_) => "failed to get version: its agent did not answer within 5 s".into(),
        };
    }
    match member.data.version() {
        Some(version) => format!("Patroni {version}"),
        None => "failed to get version: no agent address and no version in its member key".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, tags: &str) -> dcs::MemberEntry {
        let raw = format!(r#"{{"conn_url":"postgres://h:5432/postgres","state":"running","tags":{tags}}}"#);
        dcs::MemberEntry { name: name.into(), data: dcs::MemberData::parse(raw.as_bytes()).expect("member"), lease: 0 }
    }

    /// patronictl's check: no member but the leader, or only members that
    /// may never lead, leaves nobody to switch or fail over to.
    #[test]
    fn a_cluster_with_nobody_to_take_over_is_refused_in_patronictls_words() {
        let lone = ClusterView { members: vec![member("pg0", "{}")], ..ClusterView::default() };
        let error = no_candidates_check(&lone, Some("pg0"), "switchover").expect_err("nobody");
        assert_eq!(error.to_string(), "No candidates found to switchover to");
        let barred = ClusterView {
            members: vec![
                member("pg0", "{}"),
                member("pg1", r#"{"nofailover":true}"#),
                member("pg2", r#"{"failover_priority":0}"#),
            ],
            ..ClusterView::default()
        };
        assert!(candidates(&barred, Some("pg0")).is_empty());
        assert_eq!(
            no_candidates_check(&barred, Some("pg0"), "failover").expect_err("nobody").to_string(),
            "No candidates found to failover to"
        );
        let two = ClusterView {
            members: vec![member("pg2", "{}"), member("pg0", "{}"), member("pg1", r#"{"nofailover":"true"}"#)],
            ..ClusterView::default()
        };
        assert_eq!(candidates(&two, Some("pg0")), ["pg2"]);
        assert_eq!(candidates(&two, None), ["pg0", "pg2"]);
        assert!(no_candidates_check(&two, Some("pg0"), "switchover").is_ok());
    }
}
