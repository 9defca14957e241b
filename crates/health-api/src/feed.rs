//! The agent's status stream, kept open and timestamped on arrival, so that a
//! check can tell fresh state from stale state.

use std::time::{Duration, Instant};

use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{FencerAck, NodeStatus, WatchStatusRequest};
use tokio::sync::watch;
use tracing::{info, warn};

/// The latest status and when it arrived; `None` until the first arrives.
pub type Latest = Option<(NodeStatus, Instant)>;

/// Connects to the agent at `url` and publishes every status it streams,
/// reconnecting after a failure. While connected, it acknowledges the fencer
/// to the agent every 250 ms (the agent leads only while acknowledged).
pub async fn follow_agent(
    url: String,
    tx: watch::Sender<Latest>,
    member: String,
    fencer: watch::Receiver<crate::fencer::FencerState>,
) {
    let mut connected = false;
    loop {
        match stream_once(&url, &tx, &mut connected, &member, &fencer).await {
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
    let acks = tokio::spawn(async move {
        loop {
            let armed_deadline_boot_ns = fencer.borrow().armed_deadline_ns();
            let ack = FencerAck { member: member.clone(), armed_deadline_boot_ns };
            if let Err(e) = ack_client.acknowledge_fencer(ack).await {
                warn!("failed to acknowledge the fencer to the agent: {}", e.message());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let result = async {
        while let Some(status) = stream.message().await? {
            tx.send_replace(Some((status, Instant::now())));
        }
        Ok(())
    }
    .await;
    acks.abort();
    result
}
