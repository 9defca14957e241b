//! Patroni's REST write endpoints, forwarded to the controller's gRPC API:
//! `POST /switchover`, `POST /failover`, `DELETE /switchover`, with Patroni's
//! request bodies and status codes, behind `restapi.authentication` (HTTP
//! basic auth) when it is set. GET endpoints are never authenticated.

use std::time::Duration;

use base64::Engine as _;
use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::{CancelSwitchoverRequest, FailoverRequest, SwitchoverRequest, WorkflowOutcome, WorkflowResponse};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use pgwarden_config::BasicAuth;
use tonic::{Code, Status};

/// A request body larger than this is refused (they are a few fields).
const MAX_BODY: usize = 64 * 1024;

/// A plain-text answer.
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
    matches!((method, path), (&Method::POST, "/switchover" | "/failover") | (&Method::DELETE, "/switchover"))
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Basic ...` against `restapi.authentication`.
pub fn authorized(header: Option<&http::HeaderValue>, auth: Option<&BasicAuth>) -> bool {
    let Some(auth) = auth else { return true };
    let Some(encoded) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", auth.username, auth.password.expose());
    same(&decoded, expected.as_bytes())
}

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

/// Answers one write request through the controller at `controller_url`.
pub async fn answer(method: &Method, path: &str, body: Incoming, controller_url: &str) -> Reply {
    let body = match body_object(body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let known = ["leader", "candidate", "member", "scheduled_at"];
    if let Some(unknown) = body.keys().find(|k| !known.contains(&k.as_str())) {
        return reply(StatusCode::BAD_REQUEST, format!("unknown field {unknown:?}; expected one of {known:?}"));
    }
    let fields = (|| {
        Ok((
            text_field(&body, "leader")?,
            text_field(&body, "candidate")?,
            text_field(&body, "member")?,
            text_field(&body, "scheduled_at")?,
        ))
    })();
    let (leader, candidate, member, scheduled_at) = match fields {
        Ok(fields) => fields,
        Err(reply) => return reply,
    };
    let candidate = if candidate.is_empty() { member } else { candidate };
    // Input checks that need no cluster state, with Patroni's wording.
    let failover = path == "/failover";
    if *method == Method::POST {
        if failover && candidate.is_empty() {
            return reply(StatusCode::BAD_REQUEST, "Failover could be performed only to a specific candidate");
        }
        if !failover && leader.is_empty() {
            return reply(StatusCode::BAD_REQUEST, "Switchover could be performed only from a specific leader");
        }
        if failover && !scheduled_at.is_empty() {
            return reply(StatusCode::BAD_REQUEST, "Failover can't be scheduled");
        }
        if !leader.is_empty() && leader == candidate {
            return reply(StatusCode::BAD_REQUEST, "Switchover target and source are the same");
        }
    }
    let connect = tokio::time::timeout(Duration::from_secs(3), ControllerClient::connect(controller_url.to_string()));
    let mut client = match connect.await {
        Ok(Ok(client)) => client,
        _ => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the controller at {controller_url} does not answer: is pgwarden-controller running?"),
            );
        }
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
    use pgwarden_config::Secret;

    #[test]
    fn basic_auth_is_checked_exactly() {
        let auth = BasicAuth { username: "admin".into(), password: Secret::new("s3cret") };
        let header = |text: &str| http::HeaderValue::from_str(text).expect("header");
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:s3cret"));
        let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:s3cre"));
        assert!(authorized(Some(&header(&good)), Some(&auth)));
        assert!(!authorized(Some(&header(&wrong)), Some(&auth)));
        assert!(!authorized(Some(&header("Basic !!!")), Some(&auth)));
        assert!(!authorized(None, Some(&auth)));
        assert!(authorized(None, None), "no authentication configured: open");
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
}
