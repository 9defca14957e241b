//! Day-two operations: the dynamic configuration (read, patch, replace,
//! each validated before anything is written and written with
//! compare-and-swap), and restart, reinitialize and reload carried out by
//! the members' agents over gRPC, one member at a time.

use std::time::{Duration, Instant};

use crate::WorkflowError;
use crate::workflow::{self, Cluster, agent};
use dcs::ClusterView;
use ha_proto::v1::{
    CancelRestartRequest, CheckParametersRequest, ClusterEvent, ConfigResponse, EventKind, GetStatusRequest,
    MemberOutcome, MembersResponse, ReinitializeRequest, ReloadRequest, RestartRequest,
};
use pgwarden_config::{DynamicConfig, Problems, Severity};
use serde_json::Value;

/// Where progress goes (the controller's event stream, or nowhere).
pub type Progress<'a> = &'a (dyn Fn(ClusterEvent) + Sync);

fn say(progress: Progress<'_>, member: &str, message: String) {
    tracing::info!(member, "{message}");
    progress(crate::event(EventKind::Workflow, member, message));
}

pub async fn get_config(cluster: &Cluster) -> Result<ConfigResponse, WorkflowError> {
    let view = cluster.read().await?;
    let (config, revision) = view.config.clone().unwrap_or((Value::Object(Default::default()), 0));
    Ok(ConfigResponse { config_json: config.to_string(), revision, need_restart: Vec::new(), warnings: Vec::new() })
}

/// Patroni's patch of the dynamic configuration (RFC 7396 where a key
/// exists): objects merge, `null` deletes an existing key, anything else
/// replaces; a key the configuration does not have yet takes the patch's
/// value as given, `null`s inside included (`{"slots": {"s1": null}}` is a
/// permanent physical slot `s1`, as in Patroni).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let map = target.as_object_mut().expect("made an object");
            for (key, value) in patch {
                match map.get_mut(key) {
                    _ if value.is_null() => {
                        map.remove(key);
                    }
                    Some(existing) if existing.is_object() && value.is_object() => merge_patch(existing, value),
                    Some(existing) => *existing = value.clone(),
                    None => {
                        map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Patches (`replace` false) or replaces the dynamic configuration.
#[tracing::instrument(skip_all, fields(scope = %cluster.scope, replace, expected_revision))]
pub async fn change_config(
    cluster: &Cluster,
    json: &str,
    replace: bool,
    expected_revision: i64,
) -> Result<ConfigResponse, WorkflowError> {
    let input: Value = serde_json::from_str(json)
        .map_err(|e| WorkflowError::Invalid(format!("the configuration change is not valid JSON: {e}")))?;
    if !input.is_object() {
        return Err(WorkflowError::Invalid("the configuration change must be a JSON object".into()));
    }
    let view = cluster.read().await?;
    let Some((current, revision)) = view.config.clone() else {
        return Err(WorkflowError::Refused(format!(
            "cluster {} has no config key yet (is it bootstrapped?)",
            cluster.scope
        )));
    };
    if expected_revision != 0 && expected_revision != revision {
        return Err(WorkflowError::Conflict(format!(
            "the configuration changed since revision {expected_revision} (it is at {revision} now): read it again and retry"
        )));
    }
    let mut new = if replace { Value::Object(Default::default()) } else { current };
    merge_patch(&mut new, &input);
    let (need_restart, warnings) = validate(&view, &new).await?;
    let key = cluster.keys.config();
    let written = cluster
        .etcd
        .put_if_revision(&key, new.to_string(), revision)
        .await
        .map_err(|e| WorkflowError::Unreachable(dcs::describe_error(&e)))?;
    let Some(revision) = written else {
        return Err(WorkflowError::Conflict(
            "another edit changed the configuration at the same moment (compare-and-swap lost); nothing was written: read it again and retry".into(),
        ));
    };
    Ok(ConfigResponse { config_json: new.to_string(), revision, need_restart, warnings })
}

/// Everything a node would say of `config` before it is written: types
/// (an error refuses the edit), what the nodes will correct or ignore (the
/// timing rule, unused keys: accepted with warnings, as Patroni accepts
/// them), and PostgreSQL's view of the changed parameters (asked of the
/// leader's agent). Returns the parameters that need a restart, and the
/// warnings.
async fn validate(view: &ClusterView, config: &Value) -> Result<(Vec<String>, Vec<String>), WorkflowError> {
    let mut problems = Problems::default();
    let (dynamic, _) = DynamicConfig::read(config, "", &mut problems);
    let problems = problems.into_vec();
    let warnings: Vec<String> = problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let refused: Vec<String> = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    if !refused.is_empty() {
        return Err(WorkflowError::Invalid(format!(
            "the configuration is not valid; nothing was written: {}",
            refused.join("; ")
        )));
    }
    // Only the parameters this edit changes are asked of PostgreSQL: an edit
    // that changes none (`pause`, `ttl`) needs no running leader, as in
    // Patroni.
    let before = view.dynamic_config();
    let changed: Vec<(String, String)> = dynamic
        .parameters
        .iter()
        .filter(|(name, value)| before.as_ref().and_then(|b| b.parameters.get(*name)) != Some(*value))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if changed.is_empty() {
        return Ok((Vec::new(), warnings));
    }
    let names = changed.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ");
    // Without a leader whose PostgreSQL answers, the local checks above
    // (types, units, control characters) are all there is: accepted with a
    // warning, as Patroni accepts them; PostgreSQL says the rest when it loads
    // them.
    let unchecked = |why: String| {
        tracing::warn!(parameters = %names, "{why}: the parameters are accepted after the local checks only");
        let mut warnings = warnings.clone();
        warnings.push(format!("{names}: checked locally only ({why})"));
        Ok((Vec::new(), warnings))
    };
    let Some(leader) = view.leader.as_ref().map(|l| l.name.clone()) else {
        return unchecked("the cluster has no leader to check PostgreSQL parameters against".into());
    };
    let mut agent = match agent(view, &leader).await {
        Ok(agent) => agent,
        Err(e) => return unchecked(format!("the leader's agent cannot be reached ({e})")),
    };
    let checked =
        match agent.check_parameters(CheckParametersRequest { parameters: changed.iter().cloned().collect() }).await {
            Ok(checked) => checked.into_inner(),
            Err(e) if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::FailedPrecondition) => {
                return unchecked(format!("the leader's PostgreSQL cannot answer ({})", e.message()));
            }
            Err(e) => return Err(e.into()),
        };
    if !checked.problems.is_empty() {
        return Err(WorkflowError::Invalid(format!(
            "PostgreSQL would refuse these parameters; nothing was written: {}",
            checked.problems.join("; ")
        )));
    }
    Ok((checked.need_restart, warnings))
}

/// The named members (all when empty), each checked to exist.
fn members(view: &ClusterView, names: &[String]) -> Result<Vec<String>, WorkflowError> {
    if names.is_empty() {
        return Ok(view.members.iter().map(|m| m.name.clone()).collect());
    }
    for name in names {
        if view.member(name).is_none() {
            return Err(WorkflowError::NotFound(format!("{name} is not a member of this cluster")));
        }
    }
    Ok(names.to_vec())
}

/// Waits until `member` streams from the leader again (or, as leader, answers).
async fn wait_streaming(
    cluster: &Cluster,
    member: &str,
    within: Duration,
    progress: Progress<'_>,
) -> Result<Duration, WorkflowError> {
    let started = Instant::now();
    let mut reported: Option<(Instant, dcs::CloneProgress)> = None;
    loop {
        let view = cluster.read().await?;
        // A clone under way: how far it has come, every 2 s while it moves.
        if let Some(copy) = view.member(member).and_then(|m| m.data.clone_progress())
            && reported.is_none_or(|(at, last)| at.elapsed() >= Duration::from_secs(2) && last != copy)
        {
            say(progress, member, format!("{member}: copying the data directory: {copy}"));
            reported = Some((Instant::now(), copy));
        }
        let leading = view.leader.as_ref().is_some_and(|l| l.name == member);
        if let Ok(mut client) = agent(&view, member).await
            && let Ok(status) = client.get_status(GetStatusRequest::default()).await
        {
            let status = status.into_inner();
            let answering = !status.system_identifier.is_empty();
            if answering && (leading || status.replication_state == "streaming") {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > within {
            return Err(WorkflowError::TimedOut(format!(
                "{member} is not streaming again after {} s: see its agent's log",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `Restart` request: scheduled on each member, or a rolling restart now.
#[tracing::instrument(skip_all, fields(scope = %cluster.scope, members = ?r.members, schedule = %r.schedule))]
pub async fn restart_members(
    cluster: &Cluster,
    r: &ha_proto::v1::RestartMembersRequest,
    progress: Progress<'_>,
) -> Result<MembersResponse, WorkflowError> {
    if !matches!(r.role.as_str(), "" | "primary" | "replica") {
        return Err(WorkflowError::Invalid(format!("role {:?}: expected primary or replica", r.role)));
    }
    let below_version = match r.postgres_version.trim() {
        "" => 0,
        text => ha_core::parse_postgres_version(text).map_err(WorkflowError::Invalid)?,
    };
    let agent_request = |schedule: &str| RestartRequest {
        only_if_pending: r.pending_only,
        role: r.role.clone(),
        schedule: schedule.to_string(),
        below_version,
        timeout_seconds: r.timeout_seconds,
    };
    if r.schedule.is_empty() {
        restart(cluster, r, &agent_request(""), progress).await
    } else {
        schedule_restart(cluster, &r.members, &agent_request(&r.schedule), progress).await
    }
}

/// Schedules a restart on each member (each carries it out by itself at
/// its `schedule`, its conditions checked then).
async fn schedule_restart(
    cluster: &Cluster,
    names: &[String],
    request: &RestartRequest,
    progress: Progress<'_>,
) -> Result<MembersResponse, WorkflowError> {
    let view = cluster.read().await?;
    let mut outcomes = Vec::new();
    for member in members(&view, names)? {
        let reply = agent(&view, &member).await?.restart(request.clone()).await?.into_inner();
        say(progress, &member, format!("{member}: {}", reply.message));
        outcomes.push(MemberOutcome { member, done: reply.done, message: reply.message });
    }
    Ok(MembersResponse { outcomes })
}

/// Drops the scheduled restarts of the members (all when none named); a
/// member with none is reported, not an error, unless it was named alone.
#[tracing::instrument(skip_all, fields(scope = %cluster.scope, members = ?names))]
pub async fn cancel_restart(cluster: &Cluster, names: &[String]) -> Result<MembersResponse, WorkflowError> {
    let view = cluster.read().await?;
    let targets = members(&view, names)?;
    let mut outcomes = Vec::new();
    for member in &targets {
        match agent(&view, member).await?.cancel_restart(CancelRestartRequest {}).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                outcomes.push(MemberOutcome { member: member.clone(), done: true, message: reply.message });
            }
            Err(status) if status.code() == tonic::Code::NotFound && targets.len() > 1 => {
                outcomes.push(MemberOutcome { member: member.clone(), done: false, message: status.message().into() });
            }
            Err(status) => return Err(status.into()),
        }
    }
    Ok(MembersResponse { outcomes })
}

/// A rolling restart: replicas first, one at a time, each streaming again
/// before the next; the leader last (in place, or after a switchover).
/// `any`: the first member in that order that the conditions let restart.
async fn restart(
    cluster: &Cluster,
    r: &ha_proto::v1::RestartMembersRequest,
    request: &RestartRequest,
    progress: Progress<'_>,
) -> Result<MembersResponse, WorkflowError> {
    let view = cluster.read().await?;
    let leader = view.leader.as_ref().map(|l| l.name.clone());
    let mut order = members(&view, &r.members)?;
    order.sort_by_key(|m| (Some(m) == leader.as_ref(), m.clone()));
    let mut outcomes = Vec::new();
    for member in order {
        let view = cluster.read().await?;
        let is_leader = view.leader.as_ref().is_some_and(|l| l.name == member);
        if is_leader && r.switchover_leader && r.role != "replica" {
            say(progress, &member, format!("{member} leads: switching over before its restart"));
            let done = workflow::switchover(cluster, &member, "", "").await?;
            say(progress, &member, format!("{} ({} ms)", done.message, done.duration_ms));
            wait_streaming(cluster, &member, Duration::from_secs(120), progress).await?;
        }
        let view = cluster.read().await?;
        let mut client = agent(&view, &member).await?;
        say(progress, &member, format!("{member}: restarting"));
        let reply = client.restart(request.clone()).await?.into_inner();
        if reply.done {
            let took = wait_streaming(cluster, &member, Duration::from_secs(120), progress).await?;
            say(progress, &member, format!("{} ; back and streaming after {} ms", reply.message, took.as_millis()));
        } else {
            say(progress, &member, reply.message.clone());
        }
        let (done, skipped) = (reply.done, reply.message.starts_with("skipped"));
        outcomes.push(MemberOutcome { member, done, message: reply.message });
        // One restarted (`any`), or one not back in time: the rest wait (a
        // rolling restart never takes a second member down meanwhile).
        if (r.any && done) || (!done && !skipped) {
            break;
        }
    }
    Ok(MembersResponse { outcomes })
}

/// Re-clones a replica (from the leader with `from_leader`); with `wait`,
/// answers once it streams again.
#[tracing::instrument(skip_all, fields(scope = %cluster.scope, member = %r.member, from_leader = r.from_leader))]
pub async fn reinitialize(
    cluster: &Cluster,
    r: &ha_proto::v1::ReinitializeMemberRequest,
    progress: Progress<'_>,
) -> Result<MembersResponse, WorkflowError> {
    let member = r.member.as_str();
    let view = cluster.read().await?;
    members(&view, &[member.to_string()])?;
    let request = ReinitializeRequest { from_leader: r.from_leader };
    let reply = agent(&view, member).await?.reinitialize(request).await?.into_inner();
    say(progress, member, format!("{member}: {}", reply.message));
    if r.wait {
        let took = wait_streaming(cluster, member, Duration::from_secs(600), progress).await?;
        say(progress, member, format!("{member}: re-cloned and streaming after {} ms", took.as_millis()));
    }
    Ok(MembersResponse { outcomes: vec![MemberOutcome { member: member.into(), done: true, message: reply.message }] })
}

/// Makes each member's agent re-read its config file.
pub async fn reload(
    cluster: &Cluster,
    names: &[String],
    progress: Progress<'_>,
) -> Result<MembersResponse, WorkflowError> {
    let view = cluster.read().await?;
    let mut outcomes = Vec::new();
    for member in members(&view, names)? {
        let reply = agent(&view, &member).await?.reload(ReloadRequest {}).await?.into_inner();
        say(progress, &member, reply.message.clone());
        outcomes.push(MemberOutcome { member, done: reply.done, message: reply.message });
    }
    Ok(MembersResponse { outcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = serde_json::json!({"ttl": 30, "postgresql": {"parameters": {"a": "1", "b": "2"}}});
        merge_patch(&mut target, &serde_json::json!({"ttl": 20, "postgresql": {"parameters": {"a": null, "c": "3"}}}));
        assert_eq!(target, serde_json::json!({"ttl": 20, "postgresql": {"parameters": {"b": "2", "c": "3"}}}));
        // A key not there yet takes the value as given, nulls included.
        merge_patch(&mut target, &serde_json::json!({"slots": {"s1": null, "s2": {"type": "physical"}}}));
        assert_eq!(target["slots"], serde_json::json!({"s1": null, "s2": {"type": "physical"}}));
        // Where it exists, a null removes.
        merge_patch(&mut target, &serde_json::json!({"slots": {"s1": null}}));
        assert_eq!(target["slots"], serde_json::json!({"s2": {"type": "physical"}}));
    }
}
