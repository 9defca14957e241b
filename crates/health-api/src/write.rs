//! Patroni's REST write endpoints, forwarded to the controller's gRPC API:
//! `POST /switchover`, `POST /failover`, `DELETE /switchover`, `PATCH` and
//! `PUT /config`, and for this node `POST /restart`, `POST /reinitialize`,
//! `POST /reload` (`DELETE /restart`: no scheduled restarts exist), with
//! Patroni's request bodies and status codes, behind
//! `restapi.authentication` (HTTP basic auth) when it is set. GET endpoints
//! are never authenticated.

use pgwarden_runtime::grpc::AuthChannel;
use std::time::Duration;

use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::{CancelSwitchoverRequest, FailoverRequest, SwitchoverRequest, WorkflowOutcome, WorkflowResponse};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use tonic::{Code, Status};

/// A request body larger than this is refused (they are a few fields).
const MAX_BODY: usize = 64 * 1024;

/// A plain-text answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub text: String,
    /// Ask for credentials (`WWW-Authenticate`).
    pub challenge: bool,
}

fn reply(status: StatusCode, text: impl Into<String>) -> Reply {
    Reply { status, text: text.into(), challenge: false }
}

/// Whether `method path` is a write endpoint this module answers.
pub fn handles(method: &Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&Method::POST, "/switchover" | "/failover" | "/restart" | "/reinitialize" | "/reload" | "/failsafe")
            | (&Method::DELETE, "/switchover" | "/restart")
            | (&Method::PATCH | &Method::PUT, "/config")
    )
}

pub use pgwarden_runtime::grpc::authorized;

/// Patroni's status code for a controller error.
fn status_of(error: &Status, deleting: bool) -> StatusCode {
    match error.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound if deleting => StatusCode::NOT_FOUND,
        Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists => StatusCode::PRECONDITION_FAILED,
        Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn from_workflow(result: Result<tonic::Response<WorkflowResponse>, Status>) -> Reply {
    match result {
        Ok(response) => {
            let response = response.into_inner();
            let status = if response.outcome == WorkflowOutcome::Scheduled as i32 {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            reply(status, response.message)
        }
        Err(error) => reply(status_of(&error, false), error.message()),
    }
}

/// The JSON object of a request body (empty body: an empty object).
async fn body_object(body: Incoming) -> Result<serde_json::Map<String, serde_json::Value>, Reply> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes: Bytes = limited
        .collect()
        .await
        .map_err(|e| reply(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(reply(StatusCode::BAD_REQUEST, "the request body must be a JSON object")),
        Err(e) => Err(reply(StatusCode::BAD_REQUEST, format!("the request body is not valid JSON: {e}"))),
    }
}

fn text_field(body: &serde_json::Map<String, serde_json::Value>, name: &str) -> Result<String, Reply> {
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(reply(StatusCode::BAD_REQUEST, format!("{name} must be a string, not {other}"))),
    }
}

async fn controller(controller_url: &str) -> Result<ControllerClient<AuthChannel>, Reply> {
    match pgwarden_runtime::grpc::connect(controller_url, Duration::from_secs(3)).await {
        Ok(channel) => Ok(ControllerClient::new(channel)),
        Err(e) if e.is_local_configuration() => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the controller cannot be reached with this node's settings: {e}"),
        )),
        Err(e) => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the controller does not answer ({e}): is pgwarden-controller running?"),
        )),
    }
}

/// A number of seconds as Patroni's `parse_int(value, 's')` reads it: a
/// number, or text with an optional unit (`ms`, `s`, `min`, `h`, `d`).
fn seconds(value: &serde_json::Value) -> Option<u32> {
    let (number, unit) = match value {
        serde_json::Value::Number(n) => (n.as_f64()?, "s"),
        serde_json::Value::String(text) => {
            let text = text.trim();
            let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
            (text[..split].parse::<f64>().ok()?, text[split..].trim())
        }
        _ => return None,
    };
    let per_unit = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    let seconds = (number * per_unit).round();
    (seconds.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&seconds)).then_some(seconds as u32)
}

/// The node-scoped and configuration endpoints.
async fn answer_operation(
    method: &Method,
    path: &str,
    body: serde_json::Map<String, serde_json::Value>,
    controller_url: &str,
    member: &str,
) -> Reply {
    use ha_proto::v1::{
        PatchConfigRequest, PutConfigRequest, ReinitializeMemberRequest, ReloadMembersRequest, RestartMembersRequest,
    };
    if (method, path) == (&Method::DELETE, "/restart") {
        let mut client = match controller(controller_url).await {
            Ok(client) => client,
            Err(reply) => return reply,
        };
        let request = ha_proto::v1::CancelRestartMembersRequest { members: vec![member.to_string()] };
        return match client.cancel_restart(request).await {
            Ok(_) => reply(StatusCode::OK, "scheduled restart deleted"),
            Err(error) if error.code() == Code::NotFound => reply(StatusCode::NOT_FOUND, "no restarts are scheduled"),
            Err(error) => reply(StatusCode::SERVICE_UNAVAILABLE, error.message()),
        };
    }
    if path == "/restart" {
        let known = ["restart_pending", "role", "schedule", "timeout", "postgres_version"];
        if let Some(unknown) = body.keys().find(|k| !known.contains(&k.as_str())) {
            return reply(StatusCode::BAD_REQUEST, format!("Unknown filter for the scheduled restart: {unknown}"));
        }
        // Patroni's checks and words.
        let postgres_version = match body.get("postgres_version") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(text)) => match ha_core::parse_postgres_version(text) {
                Ok(_) => text.clone(),
                Err(why) => return reply(StatusCode::BAD_REQUEST, why),
            },
            Some(other) => {
                return reply(StatusCode::BAD_REQUEST, format!("Invalid PostgreSQL version: {other}"));
            }
        };
        let timeout_seconds = match body.get("timeout") {
            None | Some(serde_json::Value::Null) => 0,
            Some(value) => match seconds(value) {
                Some(seconds) if seconds > 0 => seconds,
                _ => return reply(StatusCode::BAD_REQUEST, "Timeout should be a positive number of seconds"),
            },
        };
        let schedule = match body.get("schedule") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(at)) => at.clone(),
            Some(other) => return reply(StatusCode::BAD_REQUEST, format!("schedule {other}: expected a time")),
        };
        let role = match body.get("role") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(role)) if role == "primary" || role == "replica" => role.clone(),
            Some(other) => return reply(StatusCode::BAD_REQUEST, format!("role {other}: expected primary or replica")),
        };
        // Patroni's rule: restart_pending is a boolean; "yes" must not read as
        // "restart unconditionally".
        // Written as Patroni's clients write it too: "True", "on", 1.
        let pending_only = match body.get("restart_pending") {
            None | Some(serde_json::Value::Null) => false,
            Some(value) => match pgwarden_config::parse_bool(value) {
                Some(pending) => pending,
                None => {
                    return reply(StatusCode::BAD_REQUEST, format!("restart_pending {value}: expected true or false"));
                }
            },
        };
        let mut client = match controller(controller_url).await {
            Ok(client) => client,
            Err(reply) => return reply,
        };
        let scheduled = !schedule.is_empty();
        let request = RestartMembersRequest {
            members: vec![member.to_string()],
            role,
            pending_only,
            switchover_leader: false,
            schedule,
            postgres_version,
            timeout_seconds,
            any: false,
        };
        return match client.restart(request).await {
            Ok(_) if scheduled => reply(StatusCode::ACCEPTED, "Restart scheduled"),
            Err(error) if error.code() == Code::AlreadyExists => reply(StatusCode::CONFLICT, error.message()),
            Err(error) if error.code() == Code::InvalidArgument => {
                reply(StatusCode::UNPROCESSABLE_ENTITY, error.message())
            }
            Ok(response) => {
                let outcome = response.into_inner().outcomes.into_iter().next();
                match outcome {
                    Some(o) if o.done => reply(StatusCode::OK, "restarted successfully"),
                    // Patroni answers 503 when the conditions are not met,
                    // and when PostgreSQL is not back within `timeout`.
                    Some(o) if o.message.starts_with("skipped") => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("restart conditions are not satisfied: {}", o.message),
                    ),
                    Some(o) => reply(StatusCode::SERVICE_UNAVAILABLE, o.message),
                    None => reply(StatusCode::SERVICE_UNAVAILABLE, "restart failed"),
                }
            }
            Err(error) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("restart failed: {}", error.message())),
        };
    }
    let mut client = match controller(controller_url).await {
        Ok(client) => client,
        Err(reply) => return reply,
    };
    match path {
        "/reinitialize" => {
            // Patroni's body: `from_leader` (and `force`, which has nothing
            // to cancel here: operations run one at a time).
            let from_leader = body.get("from_leader").and_then(serde_json::Value::as_bool).unwrap_or(false);
            let request = ReinitializeMemberRequest { member: member.to_string(), from_leader, wait: false };
            match client.reinitialize(request).await {
                Ok(_) => reply(StatusCode::OK, "reinitialize started"),
                Err(error) => reply(StatusCode::SERVICE_UNAVAILABLE, error.message()),
            }
        }
        "/reload" => match client.reload(ReloadMembersRequest { members: vec![member.to_string()] }).await {
            Ok(_) => reply(StatusCode::ACCEPTED, "reload scheduled"),
            Err(error) => reply(StatusCode::SERVICE_UNAVAILABLE, error.message()),
        },
        _ => {
            let json = serde_json::Value::Object(body).to_string();
            let result = if *method == Method::PUT {
                client.put_config(PutConfigRequest { config_json: json, expected_revision: 0 }).await
            } else {
                client.patch_config(PatchConfigRequest { patch_json: json, expected_revision: 0 }).await
            };
            match result {
                Ok(response) => reply(StatusCode::OK, response.into_inner().config_json),
                Err(error) => {
                    let status = match error.code() {
                        Code::InvalidArgument => StatusCode::BAD_REQUEST,
                        Code::Aborted => StatusCode::CONFLICT,
                        Code::FailedPrecondition | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    reply(status, error.message())
                }
            }
        }
    }
}

/// `POST /failsafe` (Patroni's: a leader cut off from etcd, here a Patroni
/// one during a migration, asks this member to stay out of any race): the
/// body's `name`, `conn_url`, `api_url` and `slots` go to the agent's
/// `Failsafe` call, which promises for this member's ttl. 200 `Accepted`; 500 with the
/// reason when refused (`Running as a leader`); 502 when `failsafe_mode` is
/// off, as Patroni answers.
pub async fn failsafe(body: Incoming, agent_url: &str) -> Reply {
    let body = match body_object(body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let fields = (|| Ok((text_field(&body, "name")?, text_field(&body, "conn_url")?, text_field(&body, "api_url")?)))();
    let (leader, conn_url, api_url) = match fields {
        Ok(fields) => fields,
        Err(reply) => return reply,
    };
    if leader.is_empty() {
        return reply(StatusCode::BAD_REQUEST, "name: the calling leader's member name is required");
    }
    let channel = match pgwarden_runtime::grpc::connect(agent_url, Duration::from_secs(2)).await {
        Ok(channel) => channel,
        Err(e) => return reply(StatusCode::SERVICE_UNAVAILABLE, format!("the agent does not answer: {e:#}")),
    };
    // Patroni's leader sends its slots' positions too: this member's copies
    // follow them while etcd is out of reach.
    let slots = body
        .get("slots")
        .and_then(serde_json::Value::as_object)
        .map(|slots| slots.iter().filter_map(|(name, lsn)| Some((name.clone(), lsn.as_u64()?))).collect())
        .unwrap_or_default();
    let request = ha_proto::v1::FailsafeRequest { leader, conn_url, api_url, hold_ms: 0, slots };
    match ha_proto::v1::node_agent_client::NodeAgentClient::new(channel).failsafe(request).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            match (answer.accepted, answer.message.as_str()) {
                (true, _) => reply(StatusCode::OK, "Accepted"),
                (false, m) if m.contains("failsafe_mode is off") => reply(StatusCode::BAD_GATEWAY, m),
                (false, m) => reply(StatusCode::INTERNAL_SERVER_ERROR, m),
            }
        }
        Err(error) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("the agent failed: {}", error.message())),
    }
}

/// A `/switchover` or `/failover` request's fields, checked.
#[derive(Debug, PartialEq, Eq)]
struct TransferRequest {
    leader: String,
    candidate: String,
    scheduled_at: String,
}

/// Checks a `/switchover` or `/failover` body as far as no cluster state is
/// needed, answering as Patroni does where it answers.
fn transfer_request(
    method: &Method,
    failover: bool,
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<TransferRequest, Reply> {
    // Cancelling a scheduled switchover needs nothing from the body, and
    // Patroni reads none: whatever it holds is ignored.
    if *method == Method::DELETE {
        return Ok(TransferRequest { leader: String::new(), candidate: String::new(), scheduled_at: String::new() });
    }
    let leader = text_field(body, "leader")?;
    let candidate = text_field(body, "candidate")?;
    let member = text_field(body, "member")?;
    let scheduled_at = text_field(body, "scheduled_at")?;
    let candidate = if candidate.is_empty() { member } else { candidate };
    // Input checks that need no cluster state, with Patroni's wording.
    if *method == Method::POST {
        if failover && candidate.is_empty() {
            return Err(reply(StatusCode::BAD_REQUEST, "Failover could be performed only to a specific candidate"));
        }
        if !failover && leader.is_empty() {
            return Err(reply(StatusCode::BAD_REQUEST, "Switchover could be performed only from a specific leader"));
        }
        if failover && !scheduled_at.is_empty() {
            return Err(reply(StatusCode::BAD_REQUEST, "Failover can't be scheduled"));
        }
        if !leader.is_empty() && leader == candidate {
            return Err(reply(StatusCode::BAD_REQUEST, "Switchover target and source are the same"));
        }
    }
    // Patroni ignores a field it does not know; a request that would run
    // with one is refused here instead, as a misspelt `candidate` would
    // otherwise hand over to whichever replica is best. Patroni's own
    // answers to a request missing what it needs come first (above).
    let known = ["leader", "candidate", "member", "scheduled_at"];
    if let Some(unknown) = body.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(reply(StatusCode::BAD_REQUEST, format!("unknown field {unknown:?}; expected one of {known:?}")));
    }
    Ok(TransferRequest { leader, candidate, scheduled_at })
}

/// Answers one write request through the controller at `controller_url`.
pub async fn answer(method: &Method, path: &str, body: Incoming, controller_url: &str, member: &str) -> Reply {
    let body = match body_object(body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    if !matches!(path, "/switchover" | "/failover") {
        if matches!(path, "/config") && body.is_empty() {
            return reply(StatusCode::BAD_REQUEST, "an empty configuration change: send a JSON object");
        }
        return answer_operation(method, path, body, controller_url, member).await;
    }
    let failover = path == "/failover";
    let TransferRequest { leader, candidate, scheduled_at } = match transfer_request(method, failover, &body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let mut client = match controller(controller_url).await {
        Ok(client) => client,
        Err(reply) => return reply,
    };
    match (method, failover) {
        (&Method::DELETE, _) => match client.cancel_switchover(CancelSwitchoverRequest {}).await {
            Ok(response) => reply(StatusCode::OK, response.into_inner().message),
            Err(error) => reply(status_of(&error, true), error.message()),
        },
        // With a leader named, a failover is a switchover (as in Patroni).
        (_, true) if leader.is_empty() => from_workflow(client.failover(FailoverRequest { candidate }).await),
        _ => from_workflow(client.switchover(SwitchoverRequest { leader, candidate, scheduled_at }).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().expect("an object").clone()
    }

    /// Patroni's answers to a request missing what it needs come before the
    /// refusal of a field nobody knows (Patroni's behave `patroni_api`:
    /// `POST /failover {"foo": "bar"}`); a request that would run with an
    /// unknown field is refused, not run without it.
    #[test]
    fn a_transfer_request_answers_as_patroni_and_refuses_a_misspelt_field_that_would_run() {
        let refused = |failover, json| transfer_request(&Method::POST, failover, &body(json)).expect_err("refused");
        let r = refused(true, serde_json::json!({"foo": "bar"}));
        assert_eq!(
            (r.status, r.text.as_str()),
            (StatusCode::BAD_REQUEST, "Failover could be performed only to a specific candidate")
        );
        let r = refused(false, serde_json::json!({"canditate": "pg1"}));
        assert_eq!(r.text, "Switchover could be performed only from a specific leader");
        let r = refused(false, serde_json::json!({"leader": "pg0", "canditate": "pg1"}));
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.text.starts_with("unknown field \"canditate\""), "{}", r.text);
        let r = refused(true, serde_json::json!({"candidate": 5}));
        assert_eq!(r.text, "candidate must be a string, not 5");
        // DELETE /switchover cancels whatever the body says, as Patroni's.
        for json in [serde_json::json!({"foo": "bar"}), serde_json::json!({"candidate": 5})] {
            assert!(transfer_request(&Method::DELETE, false, &body(json)).is_ok());
        }
        let ok = transfer_request(&Method::POST, true, &body(serde_json::json!({"member": "pg1"}))).expect("runs");
        assert_eq!(ok, TransferRequest { leader: String::new(), candidate: "pg1".into(), scheduled_at: String::new() });
    }

    #[test]
    fn controller_errors_map_to_patroni_codes() {
        assert_eq!(status_of(&Status::invalid_argument("x"), false), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(&Status::failed_precondition("x"), false), StatusCode::PRECONDITION_FAILED);
        assert_eq!(status_of(&Status::not_found("x"), false), StatusCode::PRECONDITION_FAILED);
        assert_eq!(status_of(&Status::not_found("x"), true), StatusCode::NOT_FOUND);
        assert_eq!(status_of(&Status::aborted("x"), true), StatusCode::CONFLICT);
        assert_eq!(status_of(&Status::deadline_exceeded("x"), false), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn restart_timeouts_read_as_patroni_reads_them() {
        use serde_json::json;
        assert_eq!(seconds(&json!(30)), Some(30));
        assert_eq!(seconds(&json!("30")), Some(30));
        assert_eq!(seconds(&json!("2min")), Some(120));
        assert_eq!(seconds(&json!("1500ms")), Some(2));
        assert_eq!(seconds(&json!(" 1h ")), Some(3600));
        for wrong in [json!("soon"), json!("3 weeks"), json!(true), json!([1]), json!(-1), json!("1e999")] {
            assert_eq!(seconds(&wrong), None, "{wrong}");
        }
    }
}
