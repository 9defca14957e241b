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
    /// the listed members' (as the `status` key's `slots`). Read from the
    /// local PostgreSQL for each round (`SlotReader`).
    pub slot_names: Vec<String>,
}

/// Reads the leader's slot positions for a round of calls, from its own
/// connection: each round carries what the consumers have confirmed at that
/// moment, not what an HA tick read (a tick waits first for its etcd read
/// to time out, and the positions then reached the members' copies up to
/// three such waits late).
#[derive(Clone)]
pub struct SlotReader {
    pub config: pgwarden_config::Config,
    pub local: pgwarden_config::hba::LocalConnection,
    pub port: u16,
}

impl SlotReader {
    /// The positions of the `names` slots that exist here and have one.
    pub async fn read(&self, names: &[String]) -> anyhow::Result<Positions> {
        let mut conn = crate::sql::connect(&self.config, &self.local, self.port, Duration::from_millis(500)).await?;
        let slots = crate::sql::slots(&mut conn).await;
        crate::sql::close(conn).await;
        Ok(slots?
            .into_iter()
            .filter(|slot| names.contains(&slot.name))
            .filter_map(|slot| Some((slot.name, slot.position?)))
            .collect())
    }
}

/// Slot name to WAL position.
pub type Positions = std::collections::BTreeMap<String, u64>;

/// Where a leader's rounds get their slot positions: `SlotReader`, or a
/// test's stand-in.
pub trait ReadSlots: Send + Sync + 'static {
    fn read(&self, names: &[String]) -> impl std::future::Future<Output = anyhow::Result<Positions>> + Send;
}

impl ReadSlots for SlotReader {
    async fn read(&self, names: &[String]) -> anyhow::Result<Positions> {
        SlotReader::read(self, names).await
    }
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
    slots: impl ReadSlots,
    running_on: impl Fn(),
) {
    // One round of calls per interval: each extension moves the lease
    // (and the HA loop's plan may change every tick), and a wake-up for
    // either must not start the next round early (it called every member
    // a few hundred times a second).
    let mut last_round: Option<BootInstant> = None;
    // The positions last read: carried again when a read fails (PostgreSQL
    // restarting, say), as the `status` key keeps its last ones.
    let mut positions = Positions::new();
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
        let timeout = every.min(Duration::from_secs(2));
        if !current.slot_names.is_empty() {
            match tokio::time::timeout(timeout, slots.read(&current.slot_names)).await {
                Ok(Ok(read)) => positions = read,
                Ok(Err(e)) => warn!("failsafe: the slot positions could not be read, sending the last ones: {e:#}"),
                Err(_) => warn!("failsafe: reading the slot positions timed out, sending the last ones"),
            }
        }
        // Taken after the read and before any call: it precedes every
        // acceptance, so the deadline below ends before every promise.
        let sent = BootInstant::now();
        last_round = Some(sent);
        let request = FailsafeRequest {
            leader: me.clone(),
            conn_url: current.conn_url.clone(),
            api_url: current.api_url.clone(),
            hold_ms: current.hold.as_millis() as u64,
            slots: positions
                .iter()
                .filter(|(name, _)| current.slot_names.contains(name))
                .map(|(n, l)| (n.clone(), *l))
                .collect(),
        };
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

    /// Positions that move on at every read, as a consumer's would.
    struct Moving(std::sync::atomic::AtomicU64);

    impl ReadSlots for Arc<Moving> {
        async fn read(&self, names: &[String]) -> anyhow::Result<Positions> {
            let at = self.0.fetch_add(100, std::sync::atomic::Ordering::SeqCst) + 100;
            Ok(names.iter().map(|name| (name.clone(), at)).collect())
        }
    }

    /// B14 (Patroni's `dcs_failsafe_mode`): each round carries the slot
    /// positions read for it, with no HA tick in between (a tick waits out
    /// its etcd read first), and the member that accepts wakes its HA loop
    /// to move its copies at once. Against the member's own gRPC handler.
    #[tokio::test]
    async fn each_round_carries_positions_read_for_it_and_wakes_the_member() {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = format!(
            "scope: s\nname: b\nrestapi:\n  listen: 127.0.0.1:8008\netcd3:\n  hosts: 127.0.0.1:2379\n\
             postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: {}\n",
            dir.path().join("data").display()
        );
        let source = pgwarden_config::Source { origin: "test".into(), yaml };
        let config = pgwarden_config::load_from(&source, std::iter::empty(), pgwarden_config::Purpose::Service)
            .expect("a valid config")
            .config;
        let (_status_tx, status_rx) = watch::channel(status(Role::Replica, true));
        let (commands, _commands_rx) = tokio::sync::mpsc::channel(1);
        let checker = Arc::new(crate::grpc::ParameterChecker {
            config,
            local: pgwarden_config::hba::LocalConnection::Tcp("127.0.0.1".into()),
            port: 1,
            permits: tokio::sync::Semaphore::new(1),
        });
        let member = SharedFailsafe::default();
        let waker = Arc::new(crate::ha::ClusterWatch::default());
        let service =
            crate::grpc::AgentService::new(status_rx, "b".into(), Default::default(), "t".into(), commands, checker)
                .with_failsafe(member.clone(), dir.path().join("data"))
                .with_waker(waker.clone())
                .into_server();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let (_plan_tx, plan_rx) = watch::channel(CallPlan {
            enabled: true,
            listed: true,
            members: vec![("b".into(), Some(format!("http://{address}")))],
            hold: Duration::from_secs(10),
            margin: Duration::from_secs(1),
            every: Duration::from_millis(250),
            etcd_seen: None,
            slot_names: vec!["cdc".into(), "keep".into()],
            ..CallPlan::default()
        });
        let (_lease_tx, lease_rx) =
            watch::channel(LeaseState::Held { lease: 1, deadline: BootInstant::now() + Duration::from_secs(60) });
        let (extension_tx, mut extension_rx) = watch::channel(None);
        let reads = Arc::new(Moving(std::sync::atomic::AtomicU64::new(0)));
        let leader = tokio::spawn(keep_running(
            "a".into(),
            plan_rx,
            lease_rx,
            extension_tx,
            SharedFailsafe::default(),
            reads.clone(),
            || {},
        ));

        tokio::time::timeout(Duration::from_secs(10), waker.wake.notified())
            .await
            .expect("the accepting member's HA loop is woken");
        extension_rx.changed().await.expect("the deadline is extended");
        let third = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let carried = member.lock().await.leader_slots.clone();
                if carried.get("cdc").is_some_and(|&at| at >= 300) {
                    return carried;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a third round's positions reach the member");
        // Both slots from the same read: the latest one, not an older plan's.
        assert_eq!(third.get("keep"), third.get("cdc"), "{third:?}");
        assert!(third["cdc"] <= reads.0.load(std::sync::atomic::Ordering::SeqCst), "{third:?}");
        assert_eq!(member.lock().await.promised_to(BootInstant::now()), Some("a"));
        leader.abort();
        server.abort();
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
