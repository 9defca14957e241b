//! The health-check decisions, as a pure function of the agent's latest status
//! and the time, so that every rule is unit-tested (DESIGN.md invariant 2:
//! only fresh state answers 200; unknown state answers 503).

use std::time::{Duration, Instant};

use ha_proto::v1::{NodeStatus, PostgresState, Role};
use http::StatusCode;
use serde_json::{Value, json};

use crate::feed::Latest;

/// State older than this is unknown.
pub const FRESH_FOR: Duration = Duration::from_millis(500);

/// Who this node is, for the JSON bodies.
#[derive(Debug, Clone)]
pub struct Identity {
    pub scope: String,
    pub name: String,
}

/// The answer to one request: status code and, for GET, a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Option<Value>,
}

fn fresh(latest: &Latest, now: Instant) -> Option<&NodeStatus> {
    match latest {
        Some((status, at)) if now.saturating_duration_since(*at) <= FRESH_FOR => Some(status),
        _ => None,
    }
}

fn state_name(status: &NodeStatus) -> &'static str {
    match status.postgres_state() {
        PostgresState::Running => "running",
        PostgresState::Starting => "starting",
        PostgresState::Stopping => "stopping",
        PostgresState::Stopped | PostgresState::Uninitialized => "stopped",
        PostgresState::Unspecified => "unknown",
    }
}

fn role_name(status: &NodeStatus) -> &'static str {
    match status.role() {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::StandbyLeader => "standby_leader",
        Role::Demoted => "demoted",
        Role::Uninitialized | Role::Unspecified => "uninitialized",
    }
}

/// The `/patroni` document: always answerable, saying why when state is unknown.
pub fn patroni_json(identity: &Identity, latest: &Latest, now: Instant) -> Value {
    let patroni = json!({"version": env!("CARGO_PKG_VERSION"), "scope": identity.scope, "name": identity.name});
    match (fresh(latest, now), latest) {
        (Some(status), _) => json!({
            "state": state_name(status),
            "role": role_name(status),
            "patroni": patroni,
        }),
        (None, Some((_, at))) => json!({
            "state": "unknown",
            "role": "unknown",
            "patroni": patroni,
            "pgwarden": {"agent": format!("no status from the agent for {} ms", now.saturating_duration_since(*at).as_millis())},
        }),
        (None, None) => json!({
            "state": "unknown",
            "role": "unknown",
            "patroni": patroni,
            "pgwarden": {"agent": "the agent's status stream is not connected"},
        }),
    }
}

/// Answers one health-check path. Checks that need the leader key (`/primary`
/// and the other role checks) answer 503 until the agent reports holding it.
pub fn answer(path: &str, identity: &Identity, latest: &Latest, now: Instant) -> Answer {
    let status = fresh(latest, now);
    let running = status.is_some_and(|s| s.postgres_state() == PostgresState::Running);
    let code = |ok: bool| {
        if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
    };
    let body = Some(patroni_json(identity, latest, now));
    match path {
        "/patroni" => Answer { status: StatusCode::OK, body },
        "/health" => Answer { status: code(running), body },
        // The agent is alive and publishing: its loop runs.
        "/liveness" => Answer { status: code(status.is_some()), body: None },
        // Every other check, known or not, fails closed.
        _ => Answer { status: StatusCode::SERVICE_UNAVAILABLE, body },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity { scope: "batman".into(), name: "pg0".into() }
    }

    fn status(state: PostgresState, role: Role) -> NodeStatus {
        NodeStatus { postgres_state: state as i32, role: role as i32, ..NodeStatus::default() }
    }

    #[test]
    fn health_is_200_only_for_fresh_running_postgres() {
        let now = Instant::now();
        let running = Some((status(PostgresState::Running, Role::Primary), now));
        assert_eq!(answer("/health", &identity(), &running, now).status, StatusCode::OK);
        let stale = Some((status(PostgresState::Running, Role::Primary), now));
        let later = now + FRESH_FOR + Duration::from_millis(1);
        assert_eq!(answer("/health", &identity(), &stale, later).status, StatusCode::SERVICE_UNAVAILABLE);
        let stopped = Some((status(PostgresState::Stopped, Role::Primary), now));
        assert_eq!(answer("/health", &identity(), &stopped, now).status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer("/health", &identity(), &None, now).status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn unknown_and_leader_checks_never_answer_200_yet() {
        let now = Instant::now();
        let running = Some((status(PostgresState::Running, Role::Primary), now));
        for path in ["/primary", "/", "/read-write", "/leader", "/replica", "/nonsense"] {
            assert_eq!(answer(path, &identity(), &running, now).status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
    }

    #[test]
    fn patroni_says_why_state_is_unknown() {
        let now = Instant::now();
        let body = patroni_json(&identity(), &None, now);
        assert_eq!(body["state"], "unknown");
        assert!(body["pgwarden"]["agent"].as_str().is_some_and(|s| s.contains("not connected")));
        let running = Some((status(PostgresState::Running, Role::Replica), now));
        let body = patroni_json(&identity(), &running, now);
        assert_eq!((body["state"].as_str(), body["role"].as_str()), (Some("running"), Some("replica")));
        assert_eq!(body["patroni"]["scope"], "batman");
    }
}
