//! Operator workflows: switchover, failover and their cancellation
//! ([`workflow`]), and the day-two operations, config edits, restart,
//! reinitialize and reload ([`operations`]). The active controller runs them
//! for its gRPC callers; `pgwardenctl` runs them itself when no controller
//! answers (as `patronictl` falls back to the DCS). They read the cluster
//! from etcd, express intent there with compare-and-swap, and ask the
//! members' agents over gRPC; they never write the `leader` key and never
//! promote or demote PostgreSQL (DESIGN.md "Who may touch what").

pub mod operations;
pub mod workflow;

use std::time::{SystemTime, UNIX_EPOCH};

use ha_proto::v1::{ClusterEvent, EventKind};
use tonic::{Code, Status};

pub use workflow::Cluster;

/// Why a workflow did not do what was asked. Each message names the cause
/// and what to do; the kind says who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// A named member, candidate or pending request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong: bad JSON, a time in the past, a
    /// candidate that is already the leader.
    #[error("{0}")]
    Invalid(String),
    /// The cluster is not in a state that allows it now: no leader, a
    /// candidate that may not take over, a config key not written yet.
    #[error("{0}")]
    Refused(String),
    /// etcd or a member's agent cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// A compare-and-swap lost to a change made at the same moment: nothing
    /// was written; read again and retry.
    #[error("{0}")]
    Conflict(String),
    /// A switchover or failover is already pending.
    #[error("{0}")]
    Pending(String),
    /// Started, and not finished within its deadline.
    #[error("{0}")]
    TimedOut(String),
    /// A member's agent refused or failed a request (its answer kept whole).
    #[error("{}", .0.message())]
    Agent(Status),
    /// A value could not be encoded (a bug, not an input).
    #[error("{0}")]
    Internal(String),
}

impl From<Status> for WorkflowError {
    fn from(status: Status) -> Self {
        WorkflowError::Agent(status)
    }
}

impl WorkflowError {
    /// The gRPC code a workflow's error is answered with.
    pub fn code(&self) -> Code {
        match self {
            WorkflowError::Agent(status) => status.code(),
            WorkflowError::NotFound(_) => Code::NotFound,
            WorkflowError::Invalid(_) => Code::InvalidArgument,
            WorkflowError::Refused(_) => Code::FailedPrecondition,
            WorkflowError::Unreachable(_) => Code::Unavailable,
            WorkflowError::Conflict(_) => Code::Aborted,
            WorkflowError::Pending(_) => Code::AlreadyExists,
            WorkflowError::TimedOut(_) => Code::DeadlineExceeded,
            WorkflowError::Internal(_) => Code::Internal,
        }
    }
}

/// The controller's answer, and `pgwardenctl`'s message (which names the
/// code) when it runs a workflow itself.
impl From<WorkflowError> for Status {
    fn from(error: WorkflowError) -> Self {
        match error {
            WorkflowError::Agent(status) => status,
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// A cluster event, stamped now (the controller's `WatchEvents` stream, and
/// a workflow's progress), with its kind also by name for older clients.
pub fn event(kind: EventKind, member: &str, message: String) -> ClusterEvent {
    let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    ClusterEvent { at_unix_ms, kind: kind_name(kind).into(), member: member.into(), message, event_kind: kind.into() }
}

/// The name `ClusterEvent.kind` carries for `kind`.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Unspecified => "",
        EventKind::Leader => "leader",
        EventKind::Role => "role",
        EventKind::Request => "request",
        EventKind::Workflow => "workflow",
        EventKind::Controller => "controller",
        EventKind::Config => "config",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's name is its proto name without the prefix, in lower
    /// case: what clients built before `event_kind` read.
    #[test]
    fn an_event_carries_its_kind_as_the_enum_and_by_name() {
        for kind in [
            EventKind::Leader,
            EventKind::Role,
            EventKind::Request,
            EventKind::Workflow,
            EventKind::Controller,
            EventKind::Config,
        ] {
            let e = event(kind, "m", "x".into());
            assert_eq!(e.event_kind(), kind);
            let proto_name = kind.as_str_name().strip_prefix("EVENT_KIND_").expect("prefixed");
            assert_eq!(e.kind, proto_name.to_ascii_lowercase());
        }
    }

    #[test]
    fn each_error_keeps_its_message_and_maps_to_one_code() {
        let cases = [
            (WorkflowError::NotFound("n".into()), Code::NotFound),
            (WorkflowError::Invalid("n".into()), Code::InvalidArgument),
            (WorkflowError::Refused("n".into()), Code::FailedPrecondition),
            (WorkflowError::Unreachable("n".into()), Code::Unavailable),
            (WorkflowError::Conflict("n".into()), Code::Aborted),
            (WorkflowError::Pending("n".into()), Code::AlreadyExists),
            (WorkflowError::TimedOut("n".into()), Code::DeadlineExceeded),
            (WorkflowError::Internal("n".into()), Code::Internal),
            (WorkflowError::Agent(Status::not_found("n")), Code::NotFound),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, "n"));
        }
    }
}
