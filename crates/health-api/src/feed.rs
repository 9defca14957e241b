//! The agent's status stream, kept open and timestamped on arrival, so that a
//! check can tell fresh state from stale state.
//!
//! The agent streams changes, not heartbeats (a look at PostgreSQL that finds
//! nothing new is not sent), so a quiet stream proves nothing about the agent.
//! A reader that needs state confirmed within `checks::FRESH_FOR` calls
//! [`Feed::confirm_fresh`]: when nothing arrived within that time it asks the
//! agent for its latest status (`GetStatus{latest}`, no new look), and only an
//! answer within `PING_TIMEOUT` confirms it. A frozen agent therefore fails
//! every check closed within 500 ms of its last word, as before, while an idle
//! node that nobody checks costs no wake-up at all.

use std::time::{Duration, Instant};

use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{FencerAck, GetStatusRequest, NodeStatus, WatchStatusRequest};
use pgwarden_runtime::grpc::AuthChannel;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::checks::FRESH_FOR;

/// How often the fencer's acknowledgement is sent.
const ACK_EVERY: Duration = Duration::from_secs(1);

/// How long a check waits for the agent to confirm its status.
const PING_TIMEOUT: Duration = Duration::from_millis(250);

/// After a confirmation failed, checks answer from what they have (stale:
/// 503) for this long before the agent is asked again, so that a frozen
/// agent costs each check no wait.
const PING_RETRY: Duration = Duration::from_millis(250);

/// The agent looks at PostgreSQL at least every 500 ms; a status whose look is
/// older than this comes from an observer that stopped, and confirms nothing.
const OBSERVED_WITHIN_MS: i64 = 2_000;

/// The latest status and when it was confirmed current (its arrival on the
/// stream, or when a confirming `GetStatus` was sent); `None` until the first
/// arrives.
pub type Latest = Option<(NodeStatus, Instant)>;

/// The agent's status as the stream and confirmations deliver it.
pub struct Feed {
    tx: watch::Sender<Latest>,
    /// The agent's gRPC client while the stream is connected.
    client: std::sync::Mutex<Option<NodeAgentClient<AuthChannel>>>,
    /// Held while a confirmation is under way (concurrent checks wait for it
    /// instead of asking again); holds when the last one failed.
    confirming: tokio::sync::Mutex<Option<Instant>>,
}

impl Feed {
    pub fn new() -> (std::sync::Arc<Feed>, watch::Receiver<Latest>) {
        let (tx, rx) = watch::channel(None);
        let feed = Feed { tx, client: std::sync::Mutex::new(None), confirming: tokio::sync::Mutex::new(None) };
        (std::sync::Arc::new(feed), rx)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        // A confirmation sent after `now` confirms it too.
        self.tx.borrow().as_ref().is_some_and(|(_, at)| now.saturating_duration_since(*at) <= FRESH_FOR)
    }

    /// Confirms the latest status current within `FRESH_FOR` of `now` (when
    /// the request arrived) if the agent answers; else it stays as it was, and
    /// a check then finds it stale and answers 503. The caller judges the
    /// status at the same `now`: judged at a later instant, a status that
    /// was fresh here could turn stale in between (a 503 from a healthy node).
    pub async fn confirm_fresh(&self, now: Instant) {
        if !self.is_fresh(now) {
            self.confirm(now).await;
        }
    }

    /// The latest status (borrowed: hold it only for a computation).
    pub fn latest(&self) -> watch::Ref<'_, Latest> {
        self.tx.borrow()
    }

    async fn confirm(&self, asked: Instant) {
        let mut failed_at = self.confirming.lock().await;
        // Confirmed while this one waited, or failed a moment ago.
        if self.is_fresh(asked) || failed_at.is_some_and(|at| Instant::now().saturating_duration_since(at) < PING_RETRY)
        {
            return;
        }
        let client = self.client.lock().map(|c| c.clone()).unwrap_or(None);
        let Some(mut client) = client else { return };
        let sent = Instant::now();
        let answer = tokio::time::timeout(PING_TIMEOUT, client.get_status(GetStatusRequest { latest: true })).await;
        let failure = match answer {
            Ok(Ok(reply)) => {
                let status = reply.into_inner();
                let observed_ms_ago = crate::now_unix_ms() - status.observed_at_unix_ms;
                if observed_ms_ago > OBSERVED_WITHIN_MS {
                    format!("the agent answers, but its last look at PostgreSQL was {observed_ms_ago} ms ago")
                } else {
                    if failed_at.take().is_some() {
                        info!("the agent confirms its status again");
                    }
                    self.tx.send_if_modified(|latest| match latest {
                        // A newer status arrived on the stream meanwhile: it
                        // confirms itself (it arrived after `sent`).
                        Some((current, _)) if current.sequence > status.sequence => false,
                        _ => {
                            *latest = Some((status, sent));
                            true
                        }
                    });
                    return;
                }
            }
            Ok(Err(e)) => format!("the agent did not confirm its status: {}", e.message()),
            Err(_) => format!("the agent did not confirm its status within {PING_TIMEOUT:?}"),
        };
        // Logged when confirmations start failing; checks answer 503 meanwhile.
        if failed_at.is_none() {
            warn!("{failure}: health checks answer 503 until it does");
        } else {
            debug!("{failure}");
        }
        *failed_at = Some(Instant::now());
    }
}

/// Connects to the agent at `url` and publishes every status it streams,
/// reconnecting after a failure. While connected, it acknowledges the fencer
/// to the agent every `ACK_EVERY` (the agent leads only while acknowledged
/// within `FENCER_ACK_MAX_AGE_MS`, 2 s: two tries).
pub async fn follow_agent(
    url: String,
    feed: std::sync::Arc<Feed>,
    member: String,
    fencer: watch::Receiver<crate::fencer::FencerState>,
    fencer_token: Option<std::path::PathBuf>,
) {
    let mut connected = false;
    loop {
        match stream_once(&url, &feed, &mut connected, &member, &fencer, fencer_token.clone()).await {
            Ok(()) => warn!(%url, "the agent closed its status stream"),
            Err(e) if connected => warn!(%url, "lost the agent's status stream: {e}"),
            Err(_) => {}
        }
        connected = false;
        if let Ok(mut client) = feed.client.lock() {
            *client = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stream_once(
    url: &str,
    feed: &Feed,
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
    if let Ok(mut slot) = feed.client.lock() {
        *slot = Some(client.clone());
    }
    let mut ack_client = client.clone();
    let (member, fencer) = (member.to_string(), fencer.clone());
    // Without a fencer (no PostgreSQL binaries) nothing is acknowledged: the
    // agent must not lead on the word of a fencer that does not run.
    let acks = fencer_token.map(|token_path| {
        tokio::spawn(async move {
            let mut last_error = String::new();
            // Read once, and again after any failure (the agent writes a new
            // token each time it starts).
            let mut token = None;
            loop {
                let armed_deadline_boot_ns = fencer.borrow().armed_deadline_ns();
                let mut ack = tonic::Request::new(FencerAck { member: member.clone(), armed_deadline_boot_ns });
                if token.is_none() {
                    token = Some(match std::fs::read_to_string(&token_path) {
                        Ok(text) => {
                            text.trim().parse().map_err(|_| format!("{} does not hold a token", token_path.display()))
                        }
                        Err(e) => Err(format!("cannot read the fencer token {}: {e}", token_path.display())),
                    });
                }
                let result = match token.clone().expect("read above") {
                    Ok(value) => {
                        ack.metadata_mut().insert(pg_local::FENCER_TOKEN_METADATA, value);
                        ack_client.acknowledge_fencer(ack).await.map(|_| ()).map_err(|e| e.message().to_string())
                    }
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    token = None;
                }
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
            feed.tx.send_replace(Some((status, Instant::now())));
        }
        Ok(())
    }
    .await;
    if let Some(acks) = acks {
        acks.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status is judged at the instant the request arrived: fresh then is
    /// fresh for the answer, however long the request takes; with no agent
    /// to ask, a stale one stays stale.
    #[tokio::test]
    async fn a_request_judges_the_status_at_its_arrival() {
        let (feed, _rx) = Feed::new();
        let arrived = Instant::now();
        feed.tx.send_replace(Some((NodeStatus::default(), arrived)));
        let asked = arrived + FRESH_FOR;
        feed.confirm_fresh(asked).await;
        assert!(feed.is_fresh(asked), "fresh at its arrival, with no agent asked");
        let stale = arrived + FRESH_FOR + Duration::from_millis(1);
        feed.confirm_fresh(stale).await;
        assert!(!feed.is_fresh(stale), "no agent to confirm it");
        assert!(feed.is_fresh(asked), "still fresh at the earlier arrival");
    }
}
