//! The agent's status stream, kept open and timestamped on arrival, so that a
//! check can tell fresh state from stale state.

use std::time::{Duration, Instant};

use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{FencerAck, NodeStatus, WatchStatusRequest};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the fencer's acknowledgement is sent.
const ACK_EVERY: Duration = Duration::from_millis(500);

/// The latest status and when it arrived; `None` until the first arrives.
pub type Latest = Option<(NodeStatus, Instant)>;

/// Connects to the agent at `url` and publishes every status it streams,
/// reconnecting after a failure. While connected, it acknowledges the fencer
/// to the agent every `ACK_EVERY` (the agent leads only while acknowledged
/// within `FENCER_ACK_MAX_AGE_MS`, 2 s: four tries).
pub async fn follow_agent(
    url: String,
    tx: watch::Sender<Latest>,
    member: String,
    fencer: watch::Receiver<crate::fencer::FencerState>,
    fencer_token: Option<std::path::PathBuf>,
) {
    let mut connected = false;
    loop {
        match stream_once(&url, &tx, &mut connected, &member, &fencer, fencer_token.clone()).await {
            Ok(()) => warn!(%url, "the agent closed its status stream"),
            Err(e) if connected => warn!(%url, "lost the agent's status stream: {e}"),
            Err(_) => {}
        }
        connected = false;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stream_once(
    url: &str,
    tx: &watch::Sender<Latest>,
    connected: &mut bool,
    member: &str,
    fencer: &watch::Receiver<crate::fencer::FencerState>,
    fencer_token: Option<std::path::PathBuf>,
) -> Result<(), tonic::Status> {
    let channel = pgwarden_runtime::grpc::connect(url, Duration::from_secs(1))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let mut client = NodeAgentClient::new(channel);
    let mut stream = client.watch_status(WatchStatusRequest {}).await?.into_inner();
    info!(%url, "following the agent's status stream");
    *connected = true;
    let mut ack_client = client.clone();
    let (member, fencer) = (member.to_string(), fencer.clone());
    // Without a fencer (no PostgreSQL binaries) nothing is acknowledged: the
    // agent must not lead on the word of a fencer that does not run.
    let acks = fencer_token.map(|token_path| {
        tokio::spawn(async move {
            let mut last_error = String::new();
            loop {
                let armed_deadline_boot_ns = fencer.borrow().armed_deadline_ns();
                let mut ack = tonic::Request::new(FencerAck { member: member.clone(), armed_deadline_boot_ns });
                let result = match std::fs::read_to_string(&token_path) {
                    Ok(token) => match token.trim().parse() {
                        Ok(value) => {
                            ack.metadata_mut().insert(pg_local::FENCER_TOKEN_METADATA, value);
                            ack_client.acknowledge_fencer(ack).await.map(|_| ()).map_err(|e| e.message().to_string())
                        }
                        Err(_) => Err(format!("{} does not hold a token", token_path.display())),
                    },
                    Err(e) => Err(format!("cannot read the fencer token {}: {e}", token_path.display())),
                };
                match result {
                    Ok(()) => last_error.clear(),
                    Err(e) if e != last_error => {
                        warn!("failed to acknowledge the fencer to the agent: {e}");
                        last_error = e;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(ACK_EVERY).await;
            }
        })
    });
    let result = async {
        while let Some(status) = stream.message().await? {
            tx.send_replace(Some((status, Instant::now())));
        }
        Ok(())
    }
    .await;
    if let Some(acks) = acks {
        acks.abort();
    }
    result
}
