//! `GET /ui`: a read-only status page, served from the binary (no build
//! step, no external assets: it works air-gapped). The page polls two JSON
//! endpoints of the same server:
//!
//! - `/ui/state`: what `/cluster` and `/history` say, and the leader key's
//!   lease time left as etcd reports it; open like `/cluster`.
//! - `/ui/events`: the controller's event stream (switchovers, failovers,
//!   role and leader changes), as this node's controller reports it, buffered
//!   here.
//!
//! With `restapi.authentication` set, everything but `/ui/state` needs it
//! (the page asks once; the event stream says more than `/cluster` does).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::{ClusterEvent, WatchEventsRequest};
use serde_json::{Value, json};
use tracing::debug;

pub const PAGE: &str = include_str!("ui/index.html");
pub const SCRIPT: &str = include_str!("ui/app.js");
pub const STYLE: &str = include_str!("ui/style.css");

/// What the page's resources may do: nothing but load themselves and call
/// this server.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How many events are kept for the page.
const KEPT: usize = 200;

/// How long one `/ui/state` answer serves every page (the page polls every
/// second): however many pages are open, or whoever hammers the path, the
/// node reads etcd for it at most once per this.
pub const STATE_REUSED_FOR: Duration = Duration::from_millis(900);

/// The last `/ui/state` answer and when it was made.
#[derive(Debug, Default)]
pub struct StateCache {
    last: Option<(std::time::Instant, hyper::body::Bytes)>,
}

impl StateCache {
    /// The last answer, if it is younger than `STATE_REUSED_FOR` at `now`.
    pub fn fresh(&self, now: std::time::Instant) -> Option<hyper::body::Bytes> {
        self.last
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < STATE_REUSED_FOR)
            .map(|(_, body)| body.clone())
    }

    pub fn store(&mut self, at: std::time::Instant, body: hyper::body::Bytes) {
        self.last = Some((at, body));
    }
}

/// The controller's latest events, numbered in the order they arrived.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<EventsInner>,
}

#[derive(Debug, Default)]
struct EventsInner {
    next: u64,
    kept: VecDeque<(u64, ClusterEvent)>,
    following: bool,
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, EventsInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn push(&self, event: ClusterEvent) {
        let mut inner = self.lock();
        inner.next += 1;
        let seq = inner.next;
        inner.kept.push_back((seq, event));
        while inner.kept.len() > KEPT {
            inner.kept.pop_front();
        }
    }

    pub fn set_following(&self, following: bool) {
        self.lock().following = following;
    }

    /// The events after `after` (all kept ones for 0), and whether the
    /// controller's stream is followed now.
    pub fn json(&self, after: u64) -> Value {
        let inner = self.lock();
        let events: Vec<Value> = inner
            .kept
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(seq, e)| {
                json!({"seq": seq, "at_unix_ms": e.at_unix_ms, "kind": e.kind, "member": e.member, "message": e.message})
            })
            .collect();
        json!({"following": inner.following, "last": inner.next, "events": events})
    }
}

/// Follows the controller's `WatchEvents` stream at `url` into `events`,
/// reconnecting a second after it ends or fails, for ever.
pub async fn follow_controller(url: String, events: std::sync::Arc<Events>) {
    loop {
        match pgwarden_runtime::grpc::connect(&url, Duration::from_secs(3)).await {
            Ok(channel) => match ControllerClient::new(channel).watch_events(WatchEventsRequest {}).await {
                Ok(stream) => {
                    events.set_following(true);
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(event)) => events.push(event),
                            Ok(None) => break,
                            Err(e) => {
                                debug!("the controller's event stream ended: {e}");
                                break;
                            }
                        }
                    }
                    events.set_following(false);
                }
                Err(e) => debug!("the controller refused its event stream: {e}"),
            },
            Err(e) => debug!("the controller does not answer: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `/ui/state`: `/cluster`'s and `/history`'s answers, and the leader key's
/// lease (`ttl_left` in seconds, as etcd reports it; `null` without a leader).
pub async fn state_json(scope: &str, etcd: &dcs::Etcd, view: &dcs::ClusterView) -> Value {
    let lease = match &view.leader {
        Some(leader) => {
            let id = leader.lease;
            match etcd.call(|mut client| async move { client.lease_time_to_live(id, None).await }).await {
                Ok(answer) => {
                    json!({"holder": leader.name, "ttl_left": answer.ttl(), "granted_ttl": answer.granted_ttl()})
                }
                Err(e) => json!({"holder": leader.name, "error": dcs::describe_error(&e)}),
            }
        }
        None => Value::Null,
    };
    json!({
        "cluster": crate::cluster::cluster_json(scope, view),
        "history": crate::cluster::history_json(view),
        "lease": lease,
    })
}

/// The `after=` query parameter of `/ui/events` (0 when absent or unreadable).
pub fn after(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("after="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str) -> ClusterEvent {
        ClusterEvent {
            at_unix_ms: 1,
            kind: "leader".into(),
            member: "a".into(),
            message: message.into(),
            event_kind: ha_proto::v1::EventKind::Leader.into(),
        }
    }

    #[test]
    fn events_are_numbered_kept_to_a_bound_and_read_after_a_number() {
        let events = Events::default();
        for i in 0..(KEPT + 5) {
            events.push(event(&format!("e{i}")));
        }
        let all = events.json(0);
        assert_eq!(all["events"].as_array().expect("list").len(), KEPT);
        assert_eq!(all["last"], json!(KEPT + 5));
        assert_eq!(all["events"][0]["message"], json!("e5"), "the oldest went first");
        let newer = events.json(KEPT as u64 + 3);
        let messages: Vec<&str> =
            newer["events"].as_array().expect("list").iter().map(|e| e["message"].as_str().expect("text")).collect();
        assert_eq!(messages, [format!("e{}", KEPT + 3), format!("e{}", KEPT + 4)]);
        assert_eq!(newer["following"], json!(false));
    }

    #[test]
    fn a_state_answer_is_reused_for_less_than_a_second() {
        let t0 = std::time::Instant::now();
        let mut cache = StateCache::default();
        assert_eq!(cache.fresh(t0), None);
        cache.store(t0, hyper::body::Bytes::from_static(b"{}"));
        assert_eq!(cache.fresh(t0 + Duration::from_millis(899)).as_deref(), Some(&b"{}"[..]));
        assert_eq!(cache.fresh(t0 + STATE_REUSED_FOR), None);
    }

    #[test]
    fn the_after_parameter_is_read_leniently() {
        assert_eq!(after(None), 0);
        assert_eq!(after(Some("after=42")), 42);
        assert_eq!(after(Some("x=1&after=7")), 7);
        assert_eq!(after(Some("after=-1")), 0);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{text}");
        }
        assert!(PAGE.contains(r#"<script src="/ui/app.js""#));
        assert!(!PAGE.contains("<script>"), "no inline script: the policy forbids it");
    }
}
