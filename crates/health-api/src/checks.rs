//! The health-check decisions, as a pure function of the agent's latest status
//! and the time, so that every rule is unit-tested (DESIGN.md invariant 2:
//! only fresh state answers 200; unknown state answers 503).

use std::collections::BTreeMap;
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

fn tags(status: &NodeStatus) -> serde_json::Map<String, Value> {
    serde_json::from_str::<Value>(&status.tags_json).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default()
}

/// The `/patroni` document: always answerable, saying why when state is unknown.
pub fn patroni_json(identity: &Identity, latest: &Latest, now: Instant) -> Value {
    let patroni = json!({"version": env!("CARGO_PKG_VERSION"), "scope": identity.scope, "name": identity.name});
    let Some(status) = fresh(latest, now) else {
        let why = match latest {
            Some((_, at)) => {
                format!("no status from the agent for {} ms", now.saturating_duration_since(*at).as_millis())
            }
            None => "the agent's status stream is not connected".to_string(),
        };
        return json!({"state": "unknown", "role": "unknown", "patroni": patroni, "pgwarden": {"agent": why}});
    };
    let mut body = json!({
        "state": state_name(status),
        "role": role_name(status),
        "patroni": patroni,
        // When etcd last answered the agent (Patroni's: the last contact
        // with the DCS), not the agent's last tick.
        "dcs_last_seen": status.dcs_last_seen_unix_ms / 1000,
        "pgwarden": {"ha": status.ha_state, "holds_leader": status.holds_leader},
    });
    let map = body.as_object_mut().expect("built as an object");
    let tags = tags(status);
    if !tags.is_empty() {
        map.insert("tags".into(), Value::Object(tags));
    }
    if !status.refused.is_empty() {
        map.insert("pgwarden".into(), json!({"ha": status.ha_state, "refused": status.refused}));
    }
    if state_name(status) == "running" {
        map.insert("server_version".into(), json!(status.server_version));
        map.insert("timeline".into(), json!(status.timeline));
        map.insert("database_system_identifier".into(), json!(status.system_identifier));
        map.insert("postmaster_start_time".into(), json!(status.postmaster_start_time));
        if status.role() == Role::Primary {
            map.insert("xlog".into(), json!({"location": status.xlog_location}));
            let replication: Vec<Value> = status
                .replication
                .iter()
                .map(|r| {
                    json!({"usename": r.usename, "application_name": r.application_name, "client_addr": r.client_addr,
                           "state": r.state, "sync_state": r.sync_state, "sync_priority": r.sync_priority})
                })
                .collect();
            map.insert("replication".into(), Value::Array(replication));
        } else {
            map.insert(
                "xlog".into(),
                json!({"received_location": status.receive_lsn, "replayed_location": status.replay_lsn,
                       "replayed_timestamp": if status.replayed_timestamp.is_empty() {
                           Value::Null
                       } else {
                           json!(status.replayed_timestamp)
                       },
                       "paused": status.replay_paused}),
            );
            if !status.replication_state.is_empty() {
                map.insert("replication_state".into(), json!(status.replication_state));
            }
            // Patroni's marks of a synchronous or quorum standby (the
            // `sync` key lists it).
            if status.quorum_standby {
                map.insert("quorum_standby".into(), json!(true));
            }
            if status.sync_standby {
                map.insert("sync_standby".into(), json!(true));
            }
        }
    }
    if status.paused {
        map.insert("pause".into(), json!(true));
    }
    if status.pending_restart {
        map.insert("pending_restart".into(), json!(true));
    }
    if let Ok(reason @ Value::Object(_)) = serde_json::from_str::<Value>(&status.pending_restart_reason_json) {
        map.insert("pending_restart_reason".into(), reason);
    }
    if status.failsafe_active {
        map.insert("failsafe_mode_is_active".into(), json!(true));
    }
    if !status.holds_leader && status.leader.is_empty() && state_name(status) == "running" {
        map.insert("cluster_unlocked".into(), json!(true));
    }
    body
}

/// `/primary`: a running primary whose agent proves it holds the leader key.
fn is_primary(status: &NodeStatus) -> bool {
    status.postgres_state() == PostgresState::Running && status.role() == Role::Primary && status.holds_leader
}

/// `/standby-leader`: a standby cluster's leader, running as a standby of
/// the remote primary with the leader key proven.
fn is_standby_leader(status: &NodeStatus) -> bool {
    status.postgres_state() == PostgresState::Running && status.role() == Role::StandbyLeader && status.holds_leader
}

/// `/replica` with its query: running replica, not `noloadbalance`, within
/// `?lag=` of the leader's published position, matching every `?tag_k=v`.
fn is_replica(status: &NodeStatus, query: &BTreeMap<String, String>) -> bool {
    if status.postgres_state() != PostgresState::Running || status.role() != Role::Replica || status.noloadbalance {
        return false;
    }
    if let Some(limit) = query.get("lag") {
        let Some(limit) = ha_core::parse_lag(limit) else { return false };
        let position = status.position();
        if status.cluster_optime.saturating_sub(position) > limit {
            return false;
        }
    }
    tags_match(status, query)
}

fn tags_match(status: &NodeStatus, query: &BTreeMap<String, String>) -> bool {
    let tags = tags(status);
    query.iter().filter_map(|(k, v)| k.strip_prefix("tag_").map(|name| (name, v))).all(|(name, wanted)| {
        match tags.get(name) {
            Some(Value::String(s)) => s.to_lowercase() == wanted.to_lowercase(),
            Some(other) => other.to_string().to_lowercase() == wanted.to_lowercase(),
            None => false,
        }
    })
}

/// Parses a query string into a map (last value wins).
pub fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

/// The agent's view of etcd is recent: its last successful read is within a ttl.
fn dcs_reachable(status: &NodeStatus) -> bool {
    status.dcs_last_seen_unix_ms > 0
        && status.observed_at_unix_ms - status.dcs_last_seen_unix_ms <= i64::from(status.ttl.max(1)) * 1000
}

/// `/readiness`: the leader, or a streaming replica within `?lag=` (default
/// `maximum_lag_on_failover`) by its replayed (`mode=apply`, default) or
/// received (`mode=write`) position.
fn is_ready(status: &NodeStatus, query: &BTreeMap<String, String>) -> bool {
    if status.holds_leader && status.postgres_state() == PostgresState::Running {
        return true;
    }
    if status.postgres_state() != PostgresState::Running || status.replication_state != "streaming" {
        return false;
    }
    let limit = match query.get("lag") {
        Some(text) => match ha_core::parse_lag(text) {
            Some(limit) => limit,
            None => return false,
        },
        None => status.maximum_lag_on_failover,
    };
    let position =
        if query.get("mode").map(String::as_str) == Some("write") { status.receive_lsn } else { status.replay_lsn };
    status.cluster_optime.saturating_sub(position) <= limit
}

/// `/liveness`: the agent publishes and its HA loop ran within the ttl (twice
/// the ttl on a replica); always alive while paused, as Patroni.
fn is_alive(status: &NodeStatus) -> bool {
    if status.paused {
        return true;
    }
    let ttl_ms = i64::from(status.ttl.max(1)) * 1000;
    let limit = if status.role() == Role::Primary { ttl_ms } else { 2 * ttl_ms };
    status.observed_at_unix_ms - status.last_tick_unix_ms <= limit
}

/// Answers one health-check path from the agent's latest status only: no
/// query to PostgreSQL or etcd on the request path. The JSON body is built
/// only `with_body` (a GET: HAProxy's `OPTIONS` and `HEAD` checks need none).
pub fn answer(
    path: &str,
    query: &BTreeMap<String, String>,
    identity: &Identity,
    latest: &Latest,
    now: Instant,
    with_body: bool,
) -> Answer {
    let status = fresh(latest, now);
    let code = |ok: bool| if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = with_body.then(|| patroni_json(identity, latest, now));
    let check = |f: &dyn Fn(&NodeStatus) -> bool| Answer { status: code(status.is_some_and(f)), body: body.clone() };
    let bare = |f: &dyn Fn(&NodeStatus) -> bool| Answer { status: code(status.is_some_and(f)), body: None };
    match path {
        "/patroni" => Answer { status: StatusCode::OK, body },
        // The `failsafe` key's members (Patroni: 502 without one).
        "/failsafe" => match status.and_then(|s| serde_json::from_str::<Value>(&s.failsafe_json).ok()) {
            Some(members) => Answer { status: StatusCode::OK, body: Some(members) },
            None => Answer { status: StatusCode::BAD_GATEWAY, body: None },
        },
        "/" | "/primary" | "/read-write" | "/master" => check(&is_primary),
        "/leader" => check(&|s| s.holds_leader),
        "/standby-leader" | "/standby_leader" => check(&is_standby_leader),
        "/replica" => check(&|s| is_replica(s, query)),
        "/read-only" => check(&|s| is_primary(s) || is_standby_leader(s) || is_replica(s, query)),
        "/sync" | "/synchronous" => check(&|s| dcs_reachable(s) && s.sync_standby && is_replica(s, query)),
        "/async" | "/asynchronous" => {
            check(&|s| dcs_reachable(s) && !s.sync_standby && !s.quorum_standby && is_replica(s, query))
        }
        "/read-only-sync" | "/read-only-synchronous" => {
            check(&|s| is_primary(s) || (dcs_reachable(s) && s.sync_standby && is_replica(s, query)))
        }
        "/quorum" => check(&|s| dcs_reachable(s) && s.quorum_standby && is_replica(s, query)),
        "/read-only-quorum" => check(&|s| {
            is_primary(s) || is_standby_leader(s) || (dcs_reachable(s) && s.quorum_standby && is_replica(s, query))
        }),
        "/health" => check(&|s| s.postgres_state() == PostgresState::Running && tags_match(s, query)),
        "/liveness" => bare(&is_alive),
        "/readiness" => bare(&|s| is_ready(s, query)),
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
        NodeStatus {
            postgres_state: state as i32,
            role: role as i32,
            ttl: 10,
            observed_at_unix_ms: 1_000_000,
            last_tick_unix_ms: 999_000,
            dcs_last_seen_unix_ms: 999_000,
            maximum_lag_on_failover: 1 << 20,
            ..NodeStatus::default()
        }
    }

    fn ask(path: &str, query: &str, latest: &Latest, now: Instant) -> StatusCode {
        answer(path, &parse_query(Some(query)), &identity(), latest, now, false).status
    }

    #[test]
    fn health_is_200_only_for_fresh_running_postgres() {
        let now = Instant::now();
        let running = Some((status(PostgresState::Running, Role::Primary), now));
        assert_eq!(ask("/health", "", &running, now), StatusCode::OK);
        let later = now + FRESH_FOR + Duration::from_millis(1);
        assert_eq!(ask("/health", "", &running, later), StatusCode::SERVICE_UNAVAILABLE);
        let stopped = Some((status(PostgresState::Stopped, Role::Primary), now));
        assert_eq!(ask("/health", "", &stopped, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/health", "", &None, now), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn primary_needs_the_proven_leader_key_and_fresh_state() {
        let now = Instant::now();
        let without_key = Some((status(PostgresState::Running, Role::Primary), now));
        for path in ["/primary", "/", "/read-write", "/leader"] {
            assert_eq!(ask(path, "", &without_key, now), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let leader = Some((NodeStatus { holds_leader: true, ..status(PostgresState::Running, Role::Primary) }, now));
        for path in ["/primary", "/", "/read-write", "/leader", "/read-only"] {
            assert_eq!(ask(path, "", &leader, now), StatusCode::OK, "{path}");
        }
        assert_eq!(ask("/replica", "", &leader, now), StatusCode::SERVICE_UNAVAILABLE);
        let stale = now + FRESH_FOR * 2;
        assert_eq!(ask("/primary", "", &leader, stale), StatusCode::SERVICE_UNAVAILABLE);
        let dead = Some((NodeStatus { holds_leader: true, ..status(PostgresState::Stopped, Role::Primary) }, now));
        assert_eq!(ask("/primary", "", &dead, now), StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL down means 503");
    }

    #[test]
    fn replica_honours_lag_tags_and_noloadbalance() {
        let now = Instant::now();
        let replica = NodeStatus {
            replay_lsn: 1000,
            cluster_optime: 1000 + 20 * 1024,
            tags_json: r#"{"dc":"east","nofailover":true}"#.into(),
            ..status(PostgresState::Running, Role::Replica)
        };
        let latest = Some((replica.clone(), now));
        assert_eq!(ask("/replica", "", &latest, now), StatusCode::OK);
        assert_eq!(ask("/read-only", "", &latest, now), StatusCode::OK);
        assert_eq!(ask("/replica", "lag=16kB", &latest, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/replica", "lag=1MB", &latest, now), StatusCode::OK);
        assert_eq!(ask("/replica", "lag=30000", &latest, now), StatusCode::OK);
        assert_eq!(ask("/replica", "lag=nonsense", &latest, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/replica", "tag_dc=east", &latest, now), StatusCode::OK);
        assert_eq!(ask("/replica", "tag_dc=west", &latest, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/replica", "tag_nofailover=true", &latest, now), StatusCode::OK);
        assert_eq!(ask("/replica", "tag_missing=x", &latest, now), StatusCode::SERVICE_UNAVAILABLE);
        let hidden = Some((NodeStatus { noloadbalance: true, ..replica }, now));
        assert_eq!(ask("/replica", "", &hidden, now), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn sync_async_readiness_and_liveness() {
        let now = Instant::now();
        let replica = NodeStatus {
            replication_state: "streaming".into(),
            replay_lsn: 1000,
            receive_lsn: 3000,
            cluster_optime: 3000,
            ..status(PostgresState::Running, Role::Replica)
        };
        let sync = Some((NodeStatus { sync_standby: true, ..replica.clone() }, now));
        let not_sync = Some((replica.clone(), now));
        assert_eq!(ask("/sync", "", &sync, now), StatusCode::OK);
        assert_eq!(ask("/async", "", &sync, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/async", "", &not_sync, now), StatusCode::OK);
        assert_eq!(ask("/read-only-sync", "", &sync, now), StatusCode::OK);
        assert_eq!(ask("/read-only-sync", "", &not_sync, now), StatusCode::SERVICE_UNAVAILABLE);
        // Quorum commit: a quorum standby is neither synchronous nor asynchronous.
        let quorum = Some((NodeStatus { quorum_standby: true, ..replica.clone() }, now));
        assert_eq!(ask("/quorum", "", &quorum, now), StatusCode::OK);
        assert_eq!(ask("/quorum", "", &sync, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/quorum", "", &not_sync, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/sync", "", &quorum, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/async", "", &quorum, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/read-only-quorum", "", &quorum, now), StatusCode::OK);
        assert_eq!(ask("/read-only-quorum", "", &not_sync, now), StatusCode::SERVICE_UNAVAILABLE);
        let primary = Some((NodeStatus { holds_leader: true, ..status(PostgresState::Running, Role::Primary) }, now));
        assert_eq!(ask("/read-only-quorum", "", &primary, now), StatusCode::OK);
        let identity = identity();
        assert_eq!(patroni_json(&identity, &quorum, now)["quorum_standby"], true, "Patroni marks a quorum standby");
        assert!(patroni_json(&identity, &quorum, now).get("sync_standby").is_none());
        assert_eq!(patroni_json(&identity, &sync, now)["sync_standby"], true, "Patroni marks the sync standby");
        let pending = Some((
            NodeStatus {
                pending_restart: true,
                pending_restart_reason_json: r#"{"max_connections":{"old_value":"100","new_value":"120"}}"#.into(),
                ..replica.clone()
            },
            now,
        ));
        let json = patroni_json(&identity, &pending, now);
        assert_eq!(json["pending_restart_reason"]["max_connections"]["new_value"], "120", "{json}");
        assert!(patroni_json(&identity, &not_sync, now).get("pending_restart_reason").is_none());
        assert!(patroni_json(&identity, &not_sync, now).get("sync_standby").is_none());
        let paused = Some((
            NodeStatus {
                replay_paused: true,
                replayed_timestamp: "2026-12-05 09:10:40.5+00:00".into(),
                ..replica.clone()
            },
            now,
        ));
        let xlog = &patroni_json(&identity, &paused, now)["xlog"];
        assert_eq!(
            (xlog["paused"].clone(), xlog["replayed_timestamp"].clone()),
            (json!(true), json!("2026-12-05 09:10:40.5+00:00"))
        );
        assert_eq!(patroni_json(&identity, &not_sync, now)["xlog"]["replayed_timestamp"], Value::Null);
        let no_dcs = Some((NodeStatus { dcs_last_seen_unix_ms: 900_000, ..replica.clone() }, now));
        assert_eq!(ask("/async", "", &no_dcs, now), StatusCode::SERVICE_UNAVAILABLE, "without etcd, 503");
        assert_eq!(ask("/readiness", "", &not_sync, now), StatusCode::OK);
        assert_eq!(ask("/readiness", "lag=1kB", &not_sync, now), StatusCode::SERVICE_UNAVAILABLE, "replay lag 2000 B");
        assert_eq!(ask("/readiness", "lag=1kB&mode=write", &not_sync, now), StatusCode::OK, "receive lag 0");
        let not_streaming = Some((NodeStatus { replication_state: String::new(), ..replica.clone() }, now));
        assert_eq!(ask("/readiness", "", &not_streaming, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("/liveness", "", &not_sync, now), StatusCode::OK);
        let stuck = Some((NodeStatus { last_tick_unix_ms: 900_000, ..replica.clone() }, now));
        assert_eq!(ask("/liveness", "", &stuck, now), StatusCode::SERVICE_UNAVAILABLE, "no tick for 2 ttl");
        let paused = Some((NodeStatus { last_tick_unix_ms: 900_000, paused: true, ..replica }, now));
        assert_eq!(ask("/liveness", "", &paused, now), StatusCode::OK, "always alive in pause");
        for path in ["/standby-leader", "/standby_leader"] {
            assert_eq!(ask(path, "", &sync, now), StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn a_standby_leader_answers_as_patroni_s() {
        let now = Instant::now();
        let leading = NodeStatus { holds_leader: true, ..status(PostgresState::Running, Role::StandbyLeader) };
        let standby_leader = Some((leading.clone(), now));
        for (path, code) in [
            ("/standby-leader", StatusCode::OK),
            ("/standby_leader", StatusCode::OK),
            ("/leader", StatusCode::OK),
            ("/read-only", StatusCode::OK),
            ("/primary", StatusCode::SERVICE_UNAVAILABLE),
            ("/read-write", StatusCode::SERVICE_UNAVAILABLE),
            ("/replica", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            assert_eq!(ask(path, "", &standby_leader, now), code, "{path}");
        }
        let lost_key = Some((NodeStatus { holds_leader: false, ..leading }, now));
        assert_eq!(ask("/standby-leader", "", &lost_key, now), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(patroni_json(&identity(), &standby_leader, now)["role"], "standby_leader");
    }

    #[test]
    fn unknown_paths_never_answer_200() {
        let now = Instant::now();
        let leader = Some((NodeStatus { holds_leader: true, ..status(PostgresState::Running, Role::Primary) }, now));
        for path in ["/nonsense", "/primaryx", "/sync-ish"] {
            assert_eq!(ask(path, "", &leader, now), StatusCode::SERVICE_UNAVAILABLE, "{path}");
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
        assert!(body["xlog"]["replayed_location"].is_u64());
    }
}
