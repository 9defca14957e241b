//! The switchover and failover workflows. A request is checked against the
//! cluster as etcd and the candidates' agents report it, written to the
//! `failover` key with compare-and-swap (create-if-absent), and followed
//! until the leader key changes hands. The agents carry it out (DESIGN.md
//! "Who may touch what"); nothing here writes `leader` or touches PostgreSQL.
//!

use pgwarden_runtime::grpc::AuthChannel;
use std::time::{Duration, Instant};

use dcs::{ClusterView, Etcd, Failover, Keys};
use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{GetStatusRequest, NodeStatus, WorkflowOutcome, WorkflowResponse};
use pgwarden_config::DynamicConfig;

use crate::WorkflowError;

/// The cluster a workflow runs against.
#[derive(Clone)]
pub struct Cluster {
    pub etcd: Etcd,
    pub keys: Keys,
    pub scope: String,
}

impl Cluster {
    pub async fn read(&self) -> Result<ClusterView, WorkflowError> {
        dcs::read_cluster(&self.etcd, &self.keys).await.map_err(|e| {
            WorkflowError::Unreachable(format!(
                "cannot read cluster {} from etcd: {}",
                self.scope,
                dcs::describe_error(&e)
            ))
        })
    }
}

/// The dynamic config in force (`config` key, else defaults).
pub fn dynamic(view: &ClusterView) -> DynamicConfig {
    view.dynamic_config().unwrap_or_default()
}

/// How long a request is followed: Patroni's `2 * max(10, loop_wait)`.
pub fn deadline(view: &ClusterView) -> Duration {
    Duration::from_secs(2 * dynamic(view).loop_wait().as_secs().max(10))
}

fn never_leads(view: &ClusterView, member: &str) -> bool {
    view.member(member).is_some_and(|m| m.data.known_tags().never_leads())
}

/// A client of `member`'s agent, from the gRPC address its key advertises.
pub async fn agent(view: &ClusterView, member: &str) -> Result<NodeAgentClient<AuthChannel>, WorkflowError> {
    let url = view
        .member(member)
        .and_then(|m| m.data.grpc_url.clone())
        .ok_or_else(|| WorkflowError::NotFound(format!("{member} is not a pgwarden member of this cluster")))?;
    pgwarden_runtime::grpc::connect(&url, Duration::from_secs(2))
        .await
        .map(NodeAgentClient::new)
        .map_err(|e| WorkflowError::Unreachable(format!("{member}'s agent does not answer: {e:#}")))
}

/// A member's status from its agent (`None`: unreachable or not a pgwarden member).
async fn agent_status(view: &ClusterView, member: &str) -> Option<NodeStatus> {
    let ask = async {
        let mut client = agent(view, member).await.ok()?;
        client.get_status(GetStatusRequest::default()).await.ok().map(tonic::Response::into_inner)
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

/// Why `candidate` cannot take over from a running leader now, if it cannot:
/// unknown, or barred by the candidate rule (`ha_core::CandidateRules::problem`, the one
/// `decide` and the leader apply), with a message that says what to do.
/// `action` (`switchover` or `failover`) words the refusal of a candidate
/// that may never lead as Patroni's.
async fn candidate_problem(
    view: &ClusterView,
    action: &str,
    candidate: &str,
    leader_position: u64,
) -> Option<WorkflowError> {
    let Some(member) = view.member(candidate) else {
        return Some(WorkflowError::NotFound(format!(
            "candidate does not exists: {candidate} is not a member of this cluster"
        )));
    };
    let status = agent_status(view, candidate).await;
    let dynamic = dynamic(view);
    let sync_standbys: Vec<String> =
        view.sync.as_ref().map(|s| s.members().into_iter().map(String::from).collect()).unwrap_or_default();
    let failsafe_members: Vec<String> = match &view.failsafe {
        Some(members) if dynamic.failsafe_mode => members.keys().cloned().collect(),
        _ => Vec::new(),
    };
    // The rule `ha_core::decide` and the leader apply (DESIGN invariant 4).
    let rules = ha_core::CandidateRules {
        sync_mode: dynamic.synchronous_mode != pgwarden_config::SyncMode::Off,
        sync_standbys: &sync_standbys,
        sync_leader: view.sync.as_ref().and_then(|s| s.leader.as_deref()),
        history_timeline: view.history.iter().map(|h| h.timeline).max(),
        cluster_optime: Some(leader_position),
        maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
        failsafe_members: &failsafe_members,
    };
    let contender = ha_core::Contender {
        name: candidate,
        nofailover: never_leads(view, candidate),
        priority: 1,
        running: status.as_ref().is_some_and(|s| !s.system_identifier.is_empty() && !s.shutting_down),
        can_lead: member.data.fencer_ready(),
        timeline: status.as_ref().map(|s| s.timeline),
        lsn: status.as_ref().map(NodeStatus::position),
    };
    let problem = rules.problem(&contender)?;
    Some(match problem {
        // Patroni's answer, word for word (clients match it); the log says which tag.
        ha_core::Ineligible::NeverLeads => {
            tracing::warn!(
                candidate,
                "refused: the candidate is tagged nofailover (or failover_priority 0 without nofailover): it never \
                 takes the leader key"
            );
            WorkflowError::Refused(format!("{action} is not possible: no good candidates have been found"))
        }
        ha_core::Ineligible::NotSynchronous => WorkflowError::Refused(format!(
            "candidate name does not match with sync_standby: {candidate} is not a synchronous standby (the \
             sync key lists: {}); in synchronous \
             mode only a listed standby may take over without losing commits: choose one of those, or wait \
             until the leader makes {candidate} synchronous",
            if sync_standbys.is_empty() { "none".to_string() } else { sync_standbys.join(", ") }
        )),
        ha_core::Ineligible::NotRunning | ha_core::Ineligible::NoPosition if status.is_none() => {
            WorkflowError::Refused(format!("candidate {candidate} does not answer: its agent is unreachable"))
        }
        ha_core::Ineligible::NotRunning | ha_core::Ineligible::NoPosition => {
            WorkflowError::Refused(format!("candidate {candidate}'s PostgreSQL is not running"))
        }
        ha_core::Ineligible::FencerSilent => WorkflowError::Refused(format!(
            "candidate {candidate}'s fencer does not acknowledge: nobody would fence it as primary, so it may \
             not take the leader key; check pgwarden-health on {candidate}"
        )),
        ha_core::Ineligible::EndedTimeline { timeline, ended } => WorkflowError::Refused(format!(
            "candidate {candidate} is on timeline {timeline}, which ended with a promotion the history key records \
             (from timeline {ended}): promoting it would fork a second history; wait for it to follow the new \
             timeline"
        )),
        ha_core::Ineligible::NotInFailsafe => WorkflowError::Refused(format!(
            "candidate {candidate} is not listed in the failsafe key (failsafe_mode is on): the leader lists every \
             member at its next loop; try again then"
        )),
        ha_core::Ineligible::Lagging { lag, limit } => WorkflowError::Refused(format!(
            "candidate {candidate} is {lag} bytes behind the leader (maximum_lag_on_failover is {limit}); \
             wait for it to catch up or choose another candidate"
        )),
    })
}

fn parse_time(at: &str) -> Result<time::OffsetDateTime, WorkflowError> {
    dcs::parse_scheduled_at(at).ok_or_else(|| {
        WorkflowError::Invalid(format!(
            "scheduled_at {at:?}: expected an ISO 8601 time with a time zone, e.g. 2026-12-01T03:00:00+00:00"
        ))
    })
}

/// A planned switchover from `leader` (empty: the current one) to
/// `candidate` (empty: the best eligible replica), now or at `scheduled_at`.
#[tracing::instrument(skip_all, fields(scope = %cluster.scope, leader, candidate, scheduled_at, request = tracing::field::Empty))]
pub async fn switchover(
    cluster: &Cluster,
    leader: &str,
    candidate: &str,
    scheduled_at: &str,
) -> Result<WorkflowResponse, WorkflowError> {
    hand_over(cluster, "switchover", leader, candidate, scheduled_at).await
}

/// A switchover, asked for as `action` (`switchover`, or `failover` with a
/// running leader), which words Patroni's refusals.
async fn hand_over(
    cluster: &Cluster,
    action: &str,
    leader: &str,
    candidate: &str,
    scheduled_at: &str,
) -> Result<WorkflowResponse, WorkflowError> {
    let view = cluster.read().await?;
    let paused = dynamic(&view).pause;
    let Some(current) = view.leader.as_ref().map(|l| l.name.clone()) else {
        return Err(WorkflowError::Refused(format!(
            "cluster {} has no leader: a switchover needs one (fail over to a named candidate instead)",
            cluster.scope
        )));
    };
    if !leader.is_empty() && leader != current {
        return Err(WorkflowError::Refused(format!("leader name does not match: {current} leads, not {leader}")));
    }
    if candidate == current {
        return Err(WorkflowError::Invalid("Switchover target and source are the same".into()));
    }
    let scheduled_at = match scheduled_at {
        "" | "now" => None,
        at if paused => {
            return Err(WorkflowError::Invalid(format!("Can't schedule switchover in the paused state ({at})")));
        }
        at => {
            if parse_time(at)? <= time::OffsetDateTime::now_utc() {
                return Err(WorkflowError::Invalid(format!("scheduled_at {at} is in the past")));
            }
            Some(at.to_string())
        }
    };
    if paused && candidate.is_empty() {
        return Err(WorkflowError::Invalid(
            "Switchover is possible only to a specific candidate in a paused state".into(),
        ));
    }
    let leader_position = match agent_status(&view, &current).await {
        Some(status) => status.position(),
        None => view.status.as_ref().map_or(0, |s| s.optime),
    };
    if candidate.is_empty() {
        let others: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).filter(|n| *n != current).collect();
        if others.is_empty() {
            return Err(WorkflowError::Refused(
                "switchover is not possible: cluster does not have members except leader".into(),
            ));
        }
        let mut reasons = Vec::new();
        for other in others {
            if never_leads(&view, other) {
                reasons.push(format!("{other} is tagged nofailover"));
                continue;
            }
            match candidate_problem(&view, "switchover", other, leader_position).await {
                None => {
                    reasons.clear();
                    break;
                }
                Some(why) => reasons.push(why.to_string()),
            }
        }
        if !reasons.is_empty() {
            return Err(WorkflowError::Refused(format!(
                "switchover is not possible: no good candidates have been found ({})",
                reasons.join("; ")
            )));
        }
    } else if let Some(problem) = candidate_problem(&view, action, candidate, leader_position).await {
        return Err(problem);
    }
    let request = Failover {
        leader: Some(current.clone()),
        member: (!candidate.is_empty()).then(|| candidate.to_string()),
        scheduled_at,
    };
    write_and_follow(cluster, &view, request).await
}

/// A manual failover to `candidate`. With a running leader it is a
/// switchover to `candidate`; without one, the lag checks are skipped (the
/// named candidate takes the key if it can, even if behind).
#[tracing::instrument(skip_all, fields(scope = %cluster.scope, candidate, request = tracing::field::Empty))]
pub async fn failover(cluster: &Cluster, candidate: &str) -> Result<WorkflowResponse, WorkflowError> {
    if candidate.is_empty() {
        return Err(WorkflowError::Invalid("Failover could be performed only to a specific candidate".into()));
    }
    let view = cluster.read().await?;
    if view.leader.as_ref().is_some_and(|l| l.name == candidate) {
        return Err(WorkflowError::Invalid(format!("{candidate} is already the leader")));
    }
    if view.leader.is_some() {
        return hand_over(cluster, "failover", "", candidate, "").await;
    }
    // The same checks as a switchover's, against the last leader's position
    // (the agents enforce them too: a named member that fails one is passed over).
    let optime = view.status.as_ref().map_or(0, |s| s.optime);
    if let Some(problem) = candidate_problem(&view, "failover", candidate, optime).await {
        return Err(problem);
    }
    let request = Failover { leader: None, member: Some(candidate.to_string()), scheduled_at: None };
    write_and_follow(cluster, &view, request).await
}

/// Drops a pending switchover (compare-and-swap on the key's revision).
#[tracing::instrument(skip_all, fields(scope = %cluster.scope))]
pub async fn cancel(cluster: &Cluster) -> Result<String, WorkflowError> {
    let view = cluster.read().await?;
    if view.failover.is_none() {
        return Err(WorkflowError::NotFound("no switchover is scheduled".into()));
    }
    let key = cluster.keys.failover();
    let done = cluster
        .etcd
        .delete_if_revision(&key, view.failover_revision)
        .await
        .map_err(|e| WorkflowError::Unreachable(dcs::describe_error(&e)))?;
    if !done {
        return Err(WorkflowError::Conflict(
            "the request changed while deleting it (compare-and-swap lost); look again".into(),
        ));
    }
    Ok("scheduled switchover deleted".to_string())
}

/// Writes the request iff no other is pending, then (unless scheduled)
/// follows it until a new leader holds the key.
async fn write_and_follow(
    cluster: &Cluster,
    view: &ClusterView,
    request: Failover,
) -> Result<WorkflowResponse, WorkflowError> {
    if let Some(pending) = &view.failover {
        return Err(WorkflowError::Pending(format!(
            "a switchover or failover is already pending ({}); wait for it or cancel it",
            serde_json::to_string(pending).unwrap_or_default()
        )));
    }
    let key = cluster.keys.failover();
    let value = serde_json::to_string(&request).map_err(|e| WorkflowError::Internal(e.to_string()))?;
    let started = Instant::now();
    let written = cluster
        .etcd
        .create_at_revision(&key, value, None)
        .await
        .map_err(|e| WorkflowError::Unreachable(dcs::describe_error(&e)))?;
    let Some(revision) = written else {
        return Err(WorkflowError::Conflict(
            "another request was written at the same moment (compare-and-swap lost)".into(),
        ));
    };
    // The key's revision names this request in every service's log: the
    // agents' actions on it carry the same `request` field.
    tracing::Span::current().record("request", revision);
    tracing::info!(request = revision, "wrote the failover key");
    if request.scheduled_at.is_some() {
        return Ok(WorkflowResponse {
            outcome: WorkflowOutcome::Scheduled as i32,
            new_leader: String::new(),
            message: "Switchover scheduled".into(),
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    let old_leader = view.leader.as_ref().map(|l| l.name.clone());
    let budget = deadline(view);
    while started.elapsed() < budget {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = cluster.read().await?;
        let leader = now.leader.as_ref().map(|l| l.name.clone());
        if let Some(new_leader) = leader.clone().filter(|l| Some(l) != old_leader.as_ref()) {
            // Done once the new leader also cleared the request, so that the
            // next request is not refused as "already pending" (bounded: the
            // leader clears it on its next tick).
            let cleared_by = Instant::now() + Duration::from_secs(5);
            while Instant::now() < cleared_by && cluster.read().await?.failover.is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let message = match request.member.as_deref() {
                Some(wanted) if wanted != new_leader => {
                    format!("Switched over to \"{new_leader}\" instead of \"{wanted}\"")
                }
                _ => format!("Successfully switched over to \"{new_leader}\""),
            };
            return Ok(WorkflowResponse {
                outcome: WorkflowOutcome::Done as i32,
                new_leader,
                message,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        if now.failover.is_none() && leader == old_leader {
            return Err(WorkflowError::Unreachable(
                "Switchover failed: the leader dropped the request (see its agent's log for why)".into(),
            ));
        }
    }
    Err(WorkflowError::TimedOut(format!(
        "Switchover status unknown after {} seconds: check `pgwardenctl list`",
        budget.as_secs()
    )))
}
