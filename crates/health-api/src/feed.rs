//! The agent's status stream, kept open and timestamped on arrival, so that a
//! check can tell fresh state from stale state.

use std::time::{Duration, Instant};

use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{NodeStatus, WatchStatusRequest};
use tokio::sync::watch;
use tracing::{info, warn};

/// The latest status and when it arrived; `None` until the first arrives.
pub type Latest = Option<(NodeStatus, Instant)>;

/// Connects to the agent at `url` and publishes every status it streams,
/// reconnecting after a failure.
pub async fn follow_agent(url: String, tx: watch::Sender<Latest>) {
    let mut connected = false;
    loop {
        match stream_once(&url, &tx, &mut connected).await {
            Ok(()) => warn!(%url, "the agent closed its status stream"),
            Err(e) if connected => warn!(%url, "lost the agent's status stream: {e}"),
            Err(_) => {}
        }
        connected = false;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stream_once(url: &str, tx: &watch::Sender<Latest>, connected: &mut bool) -> Result<(), tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(1));
    let channel = endpoint.connect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = NodeAgentClient::new(channel);
    let mut stream = client.watch_status(WatchStatusRequest {}).await?.into_inner();
    info!(%url, "following the agent's status stream");
    *connected = true;
    while let Some(status) = stream.message().await? {
        tx.send_replace(Some((status, Instant::now())));
    }
    Ok(())
}
