//! Patroni's `failsafe_mode`, fenced as pgwarden fences.
//!
//! A leader whose renewals do not reach etcd calls every member the
//! `failsafe` key lists (its gRPC `Failsafe`). A member accepts unless it runs
//! as a primary or holds or is taking the leader key; accepting is a promise:
//! for the hold the call names (or its own ttl, if longer), counted from the
//! moment it accepted, it takes no part in any race and treats the caller as
//! the leader (`ha_core::Observed::failsafe_leader`). Only when every listed
//! member accepted does the leader's deadline move, to its sending time plus
//! the hold less its fence margin, and the lease's renewal task publishes it
//! (`election::spawn_renewal_extended`): the fencer, the acknowledgement hold,
//! the watchdog and the health checks follow it as they follow a renewal.
//! The leader's deadline therefore always falls before the end of every
//! promise (it sent before they accepted; the margin covers the clocks'
//! rates), and a member that did not promise is not listed, and a member not
//! listed never takes the key (`ha_core::CandidateRules::failsafe_allows`).
//! A promise survives an agent restart (kept in
//! `<data_dir>.pgwarden.failsafe-promise`); across a reboot, whose boot clock
//! starts over, it is kept for a whole hold from the agent's start.
//!
//! When etcd answers again the renewals go on: after an outage of etcd
//! itself, its new leader has refreshed every lease and the key is still
//! ours; after a partition of this leader alone, the lease expired and the
//! renewal reports the loss, so the leader fences at once and a member takes
//! over once its promise ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use election::{BootInstant, LeaseState};
use ha_proto::v1::node_agent_client::NodeAgentClient;
use ha_proto::v1::{FailsafeReply, FailsafeRequest, NodeStatus, PostgresState, Role};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

/// A promise this member made to a leader cut off from etcd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Promise {
    pub leader: String,
    /// Until then, on `CLOCK_BOOTTIME` (nanoseconds).
    pub until_boot_ns: u64,
    /// The hold the leader counted on (milliseconds).
    pub hold_ms: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was made.
    pub boot_id: String,
}

/// The failsafe state the gRPC handler and the HA loop share.
#[derive(Debug, Default)]
pub struct Failsafe {
    pub promise: Option<Promise>,
    /// This member holds the leader key or is taking it: it promises nothing.
    pub leading: bool,
    /// On a leader cut off from etcd: when every member last accepted.
    pub kept_running_since: Option<BootInstant>,
    /// On that leader: the WAL position each member gave in its last
    /// acceptance (what its slot here may be moved along to).
    pub member_positions: std::collections::BTreeMap<String, u64>,
    /// The slot positions the promised leader's last call carried, and its
    /// PostgreSQL's URL (to copy a logical slot afresh from).
    pub leader_slots: std::collections::BTreeMap<String, u64>,
    pub leader_conn_url: String,
}

pub type SharedFailsafe = Arc<Mutex<Failsafe>>;

impl Failsafe {
    /// The leader this member promised, while the promise runs.
    pub fn promised_to(&self, now: BootInstant) -> Option<&str> {
        self.promise.as_ref().filter(|p| BootInstant::from_nanos(p.until_boot_ns) > now).map(|p| p.leader.as_str())
    }

    /// The answer to a `Failsafe` call, given this member's last status:
    /// the promise is recorded when accepted.
    pub fn answer(
        &mut self,
        me: &str,
        request: &FailsafeRequest,
        status: &NodeStatus,
        now: BootInstant,
    ) -> FailsafeReply {
        let refuse = |message: &str| FailsafeReply { accepted: false, message: message.to_string(), lsn: 0 };
        if !status.failsafe_mode {
            return refuse("failsafe_mode is off on this member");
        }
        if request.leader.is_empty() || request.leader == me {
            return refuse("the call must name another member as the leader");
        }
        let primary = status.role() == Role::Primary && status.postgres_state() == PostgresState::Running;
        if self.leading || status.holds_leader || primary {
            return refuse("Running as a leader");
        }
        let hold = Duration::from_millis(request.hold_ms).max(Duration::from_secs(u64::from(status.ttl)));
        let until = (now + hold).as_nanos();
        // A promise is never shortened by a later call, also not by one from
        // another leader: the earlier caller counts on it to its end.
        let until_boot_ns = self.promise.as_ref().map_or(until, |p| until.max(p.until_boot_ns));
        self.promise = Some(Promise {
            leader: request.leader.clone(),
            until_boot_ns,
            hold_ms: hold.as_millis() as u64,
            boot_id: boot_id(),
        });
        self.leader_slots = request.slots.iter().map(|(name, lsn)| (name.clone(), *lsn)).collect();
        self.leader_conn_url = request.conn_url.clone();
        FailsafeReply { accepted: true, message: "Accepted".into(), lsn: status.position() }
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `<data_dir>.pgwarden.failsafe-promise`.
pub fn promise_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".pgwarden.failsafe-promise");
    data_dir.with_file_name(name)
}

/// Writes the promise down (0600) before the call is answered.
pub fn save(data_dir: &Path, promise: &Promise) -> anyhow::Result<()> {
    crate::postgres::write_private(&promise_path(data_dir), &serde_json::to_string(promise)?)
}

/// The promise a previous run of this agent made, still running. After a
/// reboot (another boot id) the boot clock started over: the promise is
/// kept for a whole hold from now.
pub fn load(data_dir: &Path) -> Option<Promise> {
    let text = std::fs::read_to_string(promise_path(data_dir)).ok()?;
    let mut promise: Promise = serde_json::from_str(&text).ok()?;
    if promise.boot_id != boot_id() {
        promise.until_boot_ns = (BootInstant::now() + Duration::from_millis(promise.hold_ms)).as_nanos();
        promise.boot_id = boot_id();
    }
    (BootInstant::from_nanos(promise.until_boot_ns) > BootInstant::now()).then_some(promise)
}

/// What the leader's calls need, as the HA loop last saw it.
#[derive(Debug, Clone, Default)]
pub struct CallPlan {
    /// `failsafe_mode` is on.
    pub enabled: bool,
    /// This member is in the `failsafe` key (read or written).
    pub listed: bool,
    /// The other members to call: name and gRPC URL (`None`: it advertises
    /// none, so it cannot be asked, and no extension is granted).
    pub members: Vec<(String, Option<String>)>,
    pub conn_url: String,
    pub api_url: String,
    /// The hold asked for (the ttl) and this agent's fence margin.
    pub hold: Duration,
    pub margin: Duration,
    /// How often to call while etcd does not answer (the renewal interval).
    pub every: Duration,
    /// When etcd last answered this agent (a read, a write, a renewal).
    pub etcd_seen: Option<BootInstant>,
    /// The slots whose positions the calls carry: the permanent ones and
    /// the listed members' (as the `status` key's `slots`).
    pub slot_names: Vec<String>,
    /// Their positions on this leader, read while etcd does not answer.
    pub slots: std::collections::BTreeMap<String, u64>,
}

/// One member's answer (`None`: no answer in time).
async fn call(url: Option<String>, request: FailsafeRequest, timeout: Duration) -> Option<FailsafeReply> {
    let url = url?;
    let ask = async {
        let channel = pgwarden_runtime::grpc::connect(&url, timeout).await.ok()?;
        NodeAgentClient::new(channel).failsafe(request).await.ok().map(tonic::Response::into_inner)
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// etcd is cut off once it has not answered for this long: one and a half
/// renewal intervals, so that the gap between two renewals of a healthy
/// lease (an interval, and the round trip) never counts.
fn cut_off_after(every: Duration) -> Duration {
    every + every / 2
}

/// How long `keep_running` sleeps: until etcd's last answer is
/// `cut_off_after` old (it then calls at once), else an interval.
fn next_look(plan: &CallPlan, every: Duration, now: BootInstant) -> Duration {
    let cut_off = cut_off_after(every);
    match plan.etcd_seen {
        Some(seen) if now.saturating_duration_since(seen) < cut_off => cut_off - now.saturating_duration_since(seen),
        _ => every,
    }
}

/// The leader's side, beside its renewal task while it proves the key:
/// once the HA loop has not read etcd for a renewal interval, calls every
/// listed member each interval and, when all accept, extends the deadline.
/// The first time, it calls `running_on`, which publishes
/// `failsafe_mode_is_active` and wakes the HA loop, so that the health API
/// reports it without waiting for a tick (one may be waiting for an etcd
/// call to time out).
/// Ends when the lease is lost.
pub async fn keep_running(
    me: String,
    mut plan: watch::Receiver<CallPlan>,
    mut lease: watch::Receiver<LeaseState>,
    extension: watch::Sender<Option<BootInstant>>,
    shared: SharedFailsafe,
    running_on: impl Fn(),
) {
    // One round of calls per interval: each extension moves the lease
    // (and the HA loop's plan may change every tick), and a wake-up for
    // either must not start the next round early (it called every member
    // a few hundred times a second).
    let mut last_round: Option<BootInstant> = None;
    loop {
        let every = plan.borrow().every.max(Duration::from_millis(250));
        let now = BootInstant::now();
        let wait = next_look(&plan.borrow(), every, now);
        let wait = match last_round {
            Some(last) => wait.max((last + every).saturating_duration_since(now)),
            None => wait,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = lease.changed() => if changed.is_err() { return },
            changed = plan.changed() => if changed.is_err() { return },
        }
        if matches!(*lease.borrow(), LeaseState::Lost { .. }) {
            shared.lock().await.kept_running_since = None;
            return;
        }
        if last_round.is_some_and(|last| BootInstant::now() < last + every) {
            continue;
        }
        let current = plan.borrow().clone();
        let cut_off = current
            .etcd_seen
            .is_none_or(|seen| BootInstant::now().saturating_duration_since(seen) >= cut_off_after(every));
        if !(current.enabled && current.listed && cut_off) {
            shared.lock().await.kept_running_since = None;
            continue;
        }
        let sent = BootInstant::now();
        last_round = Some(sent);
        let request = FailsafeRequest {
            leader: me.clone(),
            conn_url: current.conn_url.clone(),
            api_url: current.api_url.clone(),
            hold_ms: current.hold.as_millis() as u64,
            slots: current.slots.iter().map(|(name, lsn)| (name.clone(), *lsn)).collect(),
        };
        let timeout = every.min(Duration::from_secs(2));
        let answers = futures_util::future::join_all(
            current.members.iter().map(|(_, url)| call(url.clone(), request.clone(), timeout)),
        )
        .await;
        let refused: Vec<String> = current
            .members
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| !answer.as_ref().is_some_and(|a| a.accepted))
            .map(|((name, _), answer)| match answer {
                Some(a) => format!("{name} ({})", a.message),
                None => format!("{name} (no answer)"),
            })
            .collect();
        if !refused.is_empty() {
            warn!(refused = %refused.join(", "), "failsafe: not every member accepts: no extension, the deadline stands");
            shared.lock().await.kept_running_since = None;
            continue;
        }
        let until = sent + current.hold.saturating_sub(current.margin);
        let mut state = shared.lock().await;
        state.member_positions = current
            .members
            .iter()
            .zip(&answers)
            .filter_map(|((name, _), answer)| Some((name.clone(), answer.as_ref().map(|a| a.lsn).filter(|&l| l > 0)?)))
            .collect();
        let first = state.kept_running_since.is_none();
        if first {
            info!(
                members = current.members.len(),
                "failsafe: etcd is out of reach and every member accepts: running on"
            );
            state.kept_running_since = Some(sent);
        }
        drop(state);
        extension.send_if_modified(|current| {
            let later = current.is_none_or(|c| until > c);
            if later {
                *current = Some(until);
            }
            later
        });
        if first {
            running_on();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_looks_again_the_moment_etcds_last_answer_is_an_interval_and_a_half_old() {
        let now = BootInstant::from_nanos(100_000_000_000);
        let every = Duration::from_millis(2500);
        let seen = |ago_ms: u64| CallPlan {
            etcd_seen: Some(BootInstant::from_nanos(100_000_000_000 - ago_ms * 1_000_000)),
            ..CallPlan::default()
        };
        assert_eq!(next_look(&seen(1000), every, now), Duration::from_millis(2750));
        assert_eq!(next_look(&seen(2600), every, now), Duration::from_millis(1150), "a renewal is due, not late");
        assert_eq!(next_look(&seen(3750), every, now), every, "cut off: call each interval");
        assert_eq!(next_look(&seen(9000), every, now), every);
        assert_eq!(next_look(&CallPlan::default(), every, now), every, "never read etcd");
    }

    fn status(role: Role, running: bool) -> NodeStatus {
        let mut status = NodeStatus { failsafe_mode: true, ttl: 10, receive_lsn: 7, ..NodeStatus::default() };
        status.set_role(role);
        status.set_postgres_state(if running { PostgresState::Running } else { PostgresState::Stopped });
        status
    }

    fn request(hold_ms: u64) -> FailsafeRequest {
        FailsafeRequest { leader: "a".into(), hold_ms, ..FailsafeRequest::default() }
    }

    #[test]
    fn a_replica_accepts_and_promises_for_the_longer_of_the_hold_and_its_ttl() {
        let mut failsafe = Failsafe::default();
        let now = BootInstant::now();
        let reply = failsafe.answer("b", &request(4_000), &status(Role::Replica, true), now);
        assert!(reply.accepted && reply.message == "Accepted" && reply.lsn == 7, "{reply:?}");
        assert_eq!(failsafe.promised_to(now), Some("a"));
        assert_eq!(failsafe.promised_to(now + Duration::from_millis(9_999)), Some("a"), "its own ttl is longer");
        assert_eq!(failsafe.promised_to(now + Duration::from_secs(10)), None);
        failsafe.answer("b", &request(30_000), &status(Role::Replica, true), now);
        assert_eq!(failsafe.promised_to(now + Duration::from_secs(29)), Some("a"), "the caller's longer hold");
        // A later, shorter call never shortens it, not even another leader's.
        failsafe.answer("b", &request(1_000), &status(Role::Replica, true), now);
        assert_eq!(failsafe.promised_to(now + Duration::from_secs(29)), Some("a"));
        let other = FailsafeRequest { leader: "c".into(), ..request(1_000) };
        failsafe.answer("b", &other, &status(Role::Replica, true), now);
        assert!(failsafe.promised_to(now + Duration::from_secs(29)).is_some(), "a's promise still binds");
    }

    #[test]
    fn a_primary_a_leader_or_a_member_without_failsafe_mode_refuses_and_promises_nothing() {
        let now = BootInstant::now();
        let cases = [
            ("running primary", status(Role::Primary, true), false, "Running as a leader"),
            (
                "holds the key",
                NodeStatus { holds_leader: true, ..status(Role::Replica, true) },
                false,
                "Running as a leader",
            ),
            ("taking the key", status(Role::Replica, true), true, "Running as a leader"),
            (
                "mode off",
                NodeStatus { failsafe_mode: false, ..status(Role::Replica, true) },
                false,
                "failsafe_mode is off",
            ),
        ];
        for (why, status, leading, message) in cases {
            let mut failsafe = Failsafe { leading, ..Failsafe::default() };
            let reply = failsafe.answer("b", &request(10_000), &status, now);
            assert!(!reply.accepted && reply.message.contains(message), "{why}: {reply:?}");
            assert_eq!(failsafe.promise, None, "{why}");
        }
        let mut failsafe = Failsafe::default();
        assert!(!failsafe.answer("a", &request(10_000), &status(Role::Replica, true), now).accepted, "itself");
        // A stopped primary's data directory promises (it cannot write).
        assert!(failsafe.answer("b", &request(10_000), &status(Role::Primary, false), now).accepted);
    }

    #[test]
    fn a_promise_survives_a_restart_and_a_reboot_keeps_a_whole_hold() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let live = Promise {
            leader: "a".into(),
            until_boot_ns: (BootInstant::now() + Duration::from_secs(60)).as_nanos(),
            hold_ms: 10_000,
            boot_id: boot_id(),
        };
        save(&data_dir, &live).expect("save");
        assert_eq!(load(&data_dir), Some(live.clone()));
        let over = Promise { until_boot_ns: BootInstant::now().as_nanos(), ..live.clone() };
        save(&data_dir, &over).expect("save");
        assert_eq!(load(&data_dir), None, "a promise that ran out");
        let other_boot = Promise { boot_id: "another boot".into(), until_boot_ns: 0, ..live };
        save(&data_dir, &other_boot).expect("save");
        let reloaded = load(&data_dir).expect("kept after a reboot");
        let left = BootInstant::from_nanos(reloaded.until_boot_ns).remaining();
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10), "{left:?}");
    }
}
