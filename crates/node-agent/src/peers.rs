//! Asking a peer how far its WAL goes before racing for the leader key
//! (DESIGN invariant 4): over gRPC from a pgwarden agent, or `GET /patroni`
//! from a member that advertises no gRPC address (a Patroni member during a
//! migration). An unreachable peer answers `None` within the timeout.

use std::time::Duration;

use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{GetStatusRequest, PostgresState, Role};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A peer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its PostgreSQL has a data directory (it is a primary or a replica).
    pub has_data: bool,
    /// Its WAL position, while its PostgreSQL answers queries.
    pub lsn: Option<u64>,
    /// It is leaving (a clean agent stop): not a candidate.
    pub shutting_down: bool,
    /// Its PostgreSQL answers as a writable primary.
    pub primary: bool,
}

async fn over_grpc(url: String) -> Option<PeerStatus> {
    let channel = pgwarden_runtime::grpc::connect(&url, std::time::Duration::from_secs(1)).await.ok()?;
    let mut client = NodeAgentClient::new(channel);
    let status = client.get_status(GetStatusRequest::default()).await.ok()?.into_inner();
    let answering = status.postgres_state() == PostgresState::Running;
    Some(PeerStatus {
        has_data: matches!(status.role(), Role::Primary | Role::Replica | Role::StandbyLeader),
        lsn: answering.then(|| status.position()),
        shutting_down: status.shutting_down,
        primary: answering && status.role() == Role::Primary,
    })
}

/// Patroni's `/patroni` document as a peer status.
pub fn from_patroni_json(body: &Value) -> PeerStatus {
    let role = body.get("role").and_then(Value::as_str).unwrap_or("");
    let running = body.get("state").and_then(Value::as_str) == Some("running");
    let xlog = body.get("xlog");
    let field = |name: &str| xlog.and_then(|x| x.get(name)).and_then(Value::as_u64);
    let lsn = field("location").or_else(|| field("received_location").max(field("replayed_location")));
    PeerStatus {
        has_data: matches!(role, "primary" | "master" | "replica" | "standby_leader" | "demoted"),
        lsn: if running { lsn } else { None },
        shutting_down: false,
        primary: running && matches!(role, "primary" | "master"),
    }
}

/// `GET /patroni` over plain HTTP (an `https://` API URL is not asked).
async fn over_rest(api_url: String) -> Option<PeerStatus> {
    let rest = api_url.strip_prefix("http://")?;
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let request = format!("GET /patroni HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok().map(|json| from_patroni_json(&json))
}

/// Asks one peer, preferring gRPC, within `timeout`.
pub async fn ask(grpc_url: Option<String>, api_url: String, timeout: Duration) -> Option<PeerStatus> {
    let ask = async {
        match grpc_url {
            Some(url) => over_grpc(url).await,
            None => over_rest(api_url).await,
        }
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_patronis_status_document() {
        let replica = json!({"state": "running", "role": "replica",
            "xlog": {"received_location": 100, "replayed_location": 90, "paused": false}});
        let status = PeerStatus { has_data: true, lsn: Some(100), shutting_down: false, primary: false };
        assert_eq!(from_patroni_json(&replica), status);
        let primary = json!({"state": "running", "role": "primary", "xlog": {"location": 500}});
        assert_eq!(from_patroni_json(&primary).lsn, Some(500));
        assert!(from_patroni_json(&primary).primary, "a running primary blocks the race");
        let stopped = json!({"state": "stopped", "role": "replica"});
        let status = PeerStatus { has_data: true, lsn: None, shutting_down: false, primary: false };
        assert_eq!(from_patroni_json(&stopped), status);
        let stopped_primary = json!({"state": "stopped", "role": "primary"});
        assert!(!from_patroni_json(&stopped_primary).primary);
        let empty = json!({"state": "stopped", "role": "uninitialized"});
        assert!(!from_patroni_json(&empty).has_data);
    }
}
