//! The HA loop: observe (local PostgreSQL, the cluster in etcd, the lease),
//! decide (`ha_core::decide`), execute at most one irreversible action, keep
//! this member's key and (as leader) the cluster's keys current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dcs::{ClusterView, Etcd, Keys, MemberData, Status};
use election::{Acquired, BootInstant, Election, ElectionSettings, Lease, LeaseState, RenewalHandle, spawn_renewal};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use ha_core::{Action, DataDir, Observed, Peer, PgRun, decide};
use pgwarden_config::{Config, DynamicConfig, Problems};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::local::Local;
use crate::postgres::{Postgres, StartAs, Upstream, slot_name};
use crate::sql;

/// What the HA loop publishes for the status stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaView {
    pub leader: Option<String>,
    /// Deadline up to which the leader key is proven ours.
    pub leader_deadline: Option<BootInstant>,
    pub cluster_optime: Option<u64>,
    pub reason: String,
    pub refused: Option<String>,
    pub upstream: Option<String>,
    pub last_tick_unix_ms: i64,
    pub shutting_down: bool,
    pub paused: bool,
    pub sync_standby: bool,
    pub ttl: u32,
    pub maximum_lag_on_failover: u64,
    pub tick_duration: Duration,
    pub etcd_read_duration: Duration,
    pub dcs_last_seen_unix_ms: i64,
}

/// The reason of the `history` entry a candidate writes before it promotes
/// (replaced by PostgreSQL's own entry once promoted).
const PROMOTING: &str = "pgwarden: promoting";

/// The device watchdog, even after a panic while it was held (it only
/// holds a file and counters).
fn lock_watchdog(
    watchdog: &crate::watchdog::SharedWatchdog,
) -> std::sync::MutexGuard<'_, crate::watchdog::DeviceWatchdog> {
    watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Each renewal of a leader's lease, as the lease keeper makes it: its
/// deadline reaches the fencer (and the health checks) at once, not at the
/// end of a loop that may be busy for a long while (a promotion, a start in
/// crash recovery), so a healthy leader is not fenced on an old deadline;
/// and it keeps the watchdog device alive (DESIGN invariant 1). Only a
/// deadline the loop already published is moved: the loop alone says the
/// key is held.
async fn forward_renewals(
    mut lease_rx: watch::Receiver<LeaseState>,
    view: watch::Sender<HaView>,
    watchdog: crate::watchdog::SharedWatchdog,
) {
    while lease_rx.changed().await.is_ok() {
        let deadline = lease_rx.borrow().live_deadline();
        let mut leading = false;
        view.send_if_modified(|v| {
            leading = v.leader_deadline.is_some();
            let moved = leading && v.leader_deadline != deadline;
            if moved {
                v.leader_deadline = deadline;
            }
            moved
        });
        if leading && deadline.is_some() {
            lock_watchdog(&watchdog).keepalive();
        }
    }
}

/// The agent's state between ticks.
pub struct Agent {
    config: Config,
    pg: Postgres,
    etcd: Etcd,
    keys: Keys,
    lease: Option<Lease>,
    /// The ttl (seconds) asked for when `lease` was granted.
    lease_ttl: u32,
    /// When a replica last looked for member slots left from a term as primary.
    replica_slots_checked: Option<Instant>,
    renewal: Option<RenewalHandle>,
    /// The renewal task proves the leader key (not only the lease).
    renewal_proves_leader: bool,
    upstream: Option<String>,
    sysid: Option<String>,
    last_member_json: Option<String>,
    last_optime: Option<u64>,
    /// The end of the stopped data directory's WAL, by REDO point.
    wal_end_cache: Option<((String, u64), Option<u64>)>,
    /// The latest checkpoint's REDO point and timeline, as last read while
    /// PostgreSQL was stopped.
    redo: Option<(String, u64)>,
    /// The agent has acted on the local PostgreSQL, or found it in a cluster
    /// etcd knows: only then does a shutdown stop it.
    managed: bool,
    /// This agent has held the leader key since it started: member slots on
    /// its PostgreSQL, once a replica again, are its own term's leftovers.
    led_here: bool,
    /// The last answer of `why_not_streaming`, and when it was looked up.
    not_streaming_cache: Option<(Instant, String)>,
    /// (timeline, history entries) last completed from the timeline history file.
    history_checked: Option<(u64, usize)>,
    slot_absent_since: HashMap<String, Instant>,
    /// Since when a peer with data has not reported its WAL position.
    peer_unknown_since: HashMap<String, u64>,
    /// Since when (`now_ms`) PostgreSQL has not run as primary while we hold the key.
    primary_down_since_ms: Option<u64>,
    last_dcs_seen_unix_ms: i64,
    /// Set between taking the key and the first checkpoint after promotion,
    /// published as `checkpoint_after_promote: false` (rejoining nodes wait).
    checkpoint_pending: bool,
    /// When (`now_ms`) this agent last gave the leader key up on purpose.
    released_at_ms: Option<u64>,
    /// The `watchdog:` device, armed while leading.
    watchdog: crate::watchdog::SharedWatchdog,
    /// Synchronous mode, as leader: the standbys in
    /// `synchronous_standby_names` (P) and the one joining.
    sync_configured: Vec<String>,
    sync_pending: Option<ha_core::sync::Pending>,
    /// `sync_configured` was rebuilt from PostgreSQL's live setting since
    /// this agent last took the leader key.
    sync_rebuilt: bool,

    last_reason: String,
    loop_wait: Duration,
    local: watch::Receiver<Local>,
    view: watch::Sender<HaView>,
    wake: std::sync::Arc<ClusterWatch>,
    /// The last cluster view read from etcd, the watch generation it was
    /// read at and when: reused while the watch reports no change.
    cached_view: Option<(ClusterView, u64, Instant)>,
    fencer_acks: crate::grpc::FencerAcks,
    /// When this agent started.
    started: Instant,
    /// Restart, reinitialize, reload, parameter checks: carried out between ticks.
    commands: tokio::sync::mpsc::Receiver<crate::grpc::CommandMsg>,
    /// The config file, re-read by a reload.
    config_path: Option<std::path::PathBuf>,
    /// A restart to carry out at a time.
    scheduled_restart: Option<ScheduledRestart>,
    callbacks: crate::callbacks::Callbacks,
    /// PostgreSQL's role when last seen answering (`None`: not answering),
    /// and the last role it had: what `on_start`, `on_stop` and
    /// `on_role_change` are derived from.
    seen_running: Option<&'static str>,
    last_role: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct ScheduledRestart {
    at: time::OffsetDateTime,
    text: String,
    only_if_pending: bool,
    role: String,
}

/// Where operator requests come from: the gRPC API's channel, and the
/// config file a reload re-reads.
pub struct Requests {
    pub commands: tokio::sync::mpsc::Receiver<crate::grpc::CommandMsg>,
    pub config_path: Option<std::path::PathBuf>,
}

/// A fencer acknowledgement older than this does not count.
pub const FENCER_ACK_MAX_AGE: Duration = Duration::from_secs(2);
/// A leader whose fencer has been silent this long hands over (a restarted
/// agent first waits this long for its fencer to reconnect).
const FENCER_LOST_AFTER: Duration = Duration::from_secs(10);

/// How long a cluster view read from etcd is reused while the watch on the
/// cluster's prefix reports no change (a safety net against a watch that
/// went quiet without an error).
const MAX_VIEW_AGE: Duration = Duration::from_secs(10);

/// The cluster watch's signals to the HA loop: a wake-up on every change,
/// a generation that grows with every change (and whenever the watch starts
/// or ends, as events may have been missed), and whether a watch runs.
#[derive(Debug, Default)]
pub struct ClusterWatch {
    pub wake: Notify,
    pub generation: AtomicU64,
    pub watching: AtomicBool,
}

impl ClusterWatch {
    /// Something under the prefix changed (or may have).
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Wakes the HA loop without invalidating its view of etcd (a local
    /// change, such as the fencer acknowledging again, to publish at once).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    pub fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::SeqCst);
        self.changed();
    }
}

impl Agent {
    pub fn new(
        config: Config,
        pg: Postgres,
        etcd: Etcd,
        local: watch::Receiver<Local>,
        view: watch::Sender<HaView>,
        fencer_acks: crate::grpc::FencerAcks,
        requests: Requests,
    ) -> Self {
        let Requests { commands, config_path } = requests;
        let keys = Keys::new(&config.namespace, &config.scope);
        let watchdog = crate::watchdog::DeviceWatchdog::new(config.watchdog.clone()).shared();
        let callbacks = crate::callbacks::Callbacks::new(&config);
        // The role the data directory last had, so that a former primary
        // coming back as a replica counts as a role change.
        let last_role = pg.has_data().then(|| if pg.was_primary() { "primary" } else { "replica" });
        Self {
            config,
            pg,
            etcd,
            keys,
            lease: None,
            lease_ttl: 0,
            replica_slots_checked: None,
            renewal: None,
            renewal_proves_leader: false,
            upstream: None,
            sysid: None,
            last_member_json: None,
            last_optime: None,
            wal_end_cache: None,
            redo: None,
            history_checked: None,
            not_streaming_cache: None,
            led_here: false,
            managed: false,
            slot_absent_since: HashMap::new(),
            peer_unknown_since: HashMap::new(),
            primary_down_since_ms: None,
            checkpoint_pending: false,
            released_at_ms: None,
            watchdog,
            sync_configured: Vec::new(),
            sync_pending: None,
            sync_rebuilt: false,
            commands,
            config_path,
            scheduled_restart: None,
            callbacks,
            seen_running: None,
            last_role,
            last_dcs_seen_unix_ms: 0,
            last_reason: String::new(),
            loop_wait: Duration::from_secs(1),
            local,
            view,
            wake: std::sync::Arc::new(ClusterWatch::default()),
            cached_view: None,
            fencer_acks,
            started: Instant::now(),
        }
    }

    /// An election on the leader key whose new leases get `dynamic.ttl`: the
    /// live ttl from the `config` key, not the local file's `bootstrap.dcs`
    /// (a migrated or edited cluster's may differ).
    fn election(&self, dynamic: &DynamicConfig) -> Election {
        Election::new(
            self.etcd.clone(),
            ElectionSettings {
                key: self.keys.leader(),
                member: self.config.name.clone(),
                ttl: Duration::from_secs(u64::from(dynamic.ttl)),
                fence_margin: self.config.pgwarden.fence_margin,
                request_timeout: self.etcd.settings().request_timeout,
            },
        )
    }

    /// Renewal pace: a quarter of the shorter of the live ttl and the ttl the
    /// held lease was granted with (a lease granted before a ttl increase
    /// must still be renewed before it expires).
    fn renew_interval(&self, dynamic: &DynamicConfig) -> Duration {
        let live = Duration::from_secs(u64::from(dynamic.ttl));
        let granted = self.lease.map_or(live, |lease| lease.granted_ttl);
        election::default_interval(live.min(granted))
    }

    /// The current lease state, if a renewal task runs.
    fn lease_state(&self) -> Option<LeaseState> {
        self.renewal.as_ref().map(RenewalHandle::current)
    }

    fn leader_deadline(&self) -> Option<BootInstant> {
        if !self.renewal_proves_leader {
            return None;
        }
        self.lease_state().and_then(|s| s.live_deadline())
    }

    /// Makes sure a live lease exists and a renewal task keeps it.
    async fn ensure_lease(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let ttl_changed = self.lease.is_some() && self.lease_ttl != dynamic.ttl;
        if let Some(LeaseState::Held { .. }) = self.lease_state() {
            // A member lease follows a ttl change at once (a new lease, the
            // member key put again on it); the leader's lease keeps its ttl
            // until the key changes hands.
            if !ttl_changed || self.renewal_proves_leader {
                return Ok(());
            }
            info!(ttl = dynamic.ttl, "ttl changed: a new member lease");
        }
        if let Some(LeaseState::Lost { reason, .. }) = self.lease_state() {
            warn!(reason, "lease lost");
        }
        if let Some(handle) = self.renewal.take() {
            let _ = handle.stop().await;
        }
        self.renewal_proves_leader = false;
        // The old lease may still live (only the leader proof failed): keep it.
        let mut election = self.election(dynamic);
        let mut kept = self.lease.filter(|_| !ttl_changed);
        let alive = match kept.as_mut() {
            Some(lease) => election.keep_alive(lease).await.is_ok(),
            None => false,
        };
        let lease = match kept {
            Some(lease) if alive => lease,
            _ => {
                let lease = election.grant().await.context("grant a lease")?;
                self.lease_ttl = dynamic.ttl;
                info!(lease = format_args!("{:x}", lease.id), ttl = ?lease.granted_ttl, "lease granted");
                self.last_member_json = None;
                lease
            }
        };
        self.lease = Some(lease);
        self.renewal = Some(spawn_renewal(election, lease, self.renew_interval(dynamic), false));
        Ok(())
    }

    /// Switches the renewal task to proving the leader key.
    async fn prove_leader(&mut self, dynamic: &DynamicConfig, mut lease: Lease) {
        if let Some(handle) = self.renewal.take() {
            // Carry the lease's latest deadline over (never an older one).
            if let LeaseState::Held { deadline, .. } = handle.current() {
                lease.deadline = lease.deadline.max(deadline);
            }
            let _ = handle.stop().await;
        }
        self.lease = Some(lease);
        let handle = spawn_renewal(self.election(dynamic), lease, self.renew_interval(dynamic), true);
        tokio::spawn(forward_renewals(handle.subscribe(), self.view.clone(), self.watchdog.clone()));
        // The ordered fence's first step: no acknowledgement in the last
        // moments of a lease nobody renews (issue 20, finding 12).
        let hold = crate::ackhold::AckHold {
            config: self.config.clone(),
            local: self.pg.local.clone(),
            port: self.pg.port,
            data_dir: self.pg.data_dir.clone(),
            lead: crate::ackhold::lead(dynamic.ttl, self.config.pgwarden.fence_margin),
        };
        tokio::spawn(crate::ackhold::hold_acks_near_deadline(handle.subscribe(), self.view.subscribe(), hold));
        self.renewal = Some(handle);
        self.renewal_proves_leader = true;
    }

    fn dynamic(&self, view: Option<&ClusterView>) -> DynamicConfig {
        match view.and_then(|v| v.config.as_ref()) {
            Some((json, _)) => {
                let mut problems = Problems::default();
                let (dynamic, _) = DynamicConfig::read(json, "", &mut problems);
                dynamic
            }
            None => self.config.bootstrap.dcs.clone(),
        }
    }

    /// The data directory's system identifier (cached) and, while
    /// PostgreSQL is stopped, its latest checkpoint's timeline.
    async fn local_identity(&mut self, running_timeline: Option<u64>) -> Option<(String, u64)> {
        if !self.pg.has_data() {
            self.sysid = None;
            return None;
        }
        if let (Some(sysid), Some(timeline)) = (&self.sysid, running_timeline) {
            return Some((sysid.clone(), timeline));
        }
        match self.pg.identity().await {
            Ok((sysid, timeline, redo)) => {
                self.sysid = Some(sysid.clone());
                self.redo = redo;
                Some((sysid, timeline.max(self.pg.latest_history_timeline())))
            }
            Err(e) => {
                warn!("failed to read pg_controldata: {e:#}");
                self.sysid.clone().map(|sysid| (sysid, 0))
            }
        }
    }

    /// The end of a stopped data directory's WAL, read once per REDO point
    /// (the data cannot change while PostgreSQL is stopped, except by
    /// pg_rewind, which moves the REDO point). `None` when it cannot be read.
    /// The REDO point is the one `local_identity` read this tick.
    async fn stopped_wal_end(&mut self) -> Option<u64> {
        let Some(redo) = self.redo.clone() else {
            warn!("pg_controldata gave no REDO point: this node will not resume as primary");
            return None;
        };
        if let Some((key, end)) = &self.wal_end_cache
            && *key == redo
        {
            return *end;
        }
        let end = match self.pg.wal_end(&redo.0, redo.1).await {
            Ok(end) => {
                info!(redo = %redo.0, end = %ha_core::Lsn(end), "read where the local WAL ends");
                Some(end)
            }
            Err(e) => {
                warn!("failed to read where the local WAL ends (this node will not resume as primary): {e:#}");
                None
            }
        };
        self.wal_end_cache = Some((redo, end));
        end
    }

    async fn observed(&mut self, view: Option<&ClusterView>, local: &Local) -> Observed {
        let me = self.config.name.clone();
        let running_timeline = local.sql.as_ref().map(|s| s.timeline);
        let mut data = self.local_identity(running_timeline).await.map(|(sysid, timeline)| DataDir {
            sysid,
            was_primary: self.pg.was_primary(),
            timeline,
            wal_end: None,
        });
        let pg = match (&local.sql, local.postmaster.state) {
            (Some(sql), _) if !sql.in_recovery => PgRun::Primary { lsn: sql.xlog_location, timeline: sql.timeline },
            (Some(sql), _) => {
                PgRun::Replica { lsn: sql.xlog_location, timeline: sql.timeline, upstream: self.upstream.clone() }
            }
            (None, ha_proto::v1::PostgresState::Stopped | ha_proto::v1::PostgresState::Uninitialized) => PgRun::Stopped,
            (None, _) => PgRun::Transitioning,
        };
        // A stopped former primary resumes only if its WAL reaches the last
        // published position (decide's may_resume): read where it ends.
        if let Some(data) = data.as_mut().filter(|d| d.was_primary && pg == PgRun::Stopped) {
            data.wal_end = self.stopped_wal_end().await;
        }
        if pg == PgRun::Stopped {
            self.upstream = None;
        }
        let not_streaming = match &local.sql {
            Some(sql) if sql.in_recovery && sql.replication_state != "streaming" => {
                Some(self.why_not_streaming(&sql.receiver_status))
            }
            _ => None,
        };
        let dynamic = self.dynamic(view);
        let priority_of =
            |data: &MemberData| data.tag_number("failover_priority").and_then(|p| u32::try_from(p).ok()).unwrap_or(1);
        let mut peers: Vec<Peer> = view
            .map(|v| {
                v.members
                    .iter()
                    .filter(|m| m.name != me)
                    .map(|m| Peer {
                        name: m.name.clone(),
                        running: m.data.state == "running",
                        lsn: m.data.xlog_location,
                        nofailover: m.data.tag_flag("nofailover"),
                        clonefrom: m.data.tag_flag("clonefrom"),
                        reachable: m.data.host_port().is_some(),
                        priority: priority_of(&m.data),
                        timeline: m.data.timeline,
                        has_data: m.data.state == "running"
                            || m.data.xlog_location.is_some()
                            || m.data.timeline.is_some()
                            || matches!(m.data.role.as_str(), "primary" | "master" | "replica" | "standby_leader"),
                        can_lead: m.data.extra.get("fencer_ready") != Some(&serde_json::Value::Bool(false)),
                        released: m.data.extra.get("released_leader") == Some(&serde_json::Value::Bool(true)),
                        primary: m.data.state == "running" && matches!(m.data.role.as_str(), "primary" | "master"),
                        position_unknown_since_ms: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Without a leader, a member keys' positions may be a loop old: ask
        // each peer's agent directly (DESIGN invariant 4).
        if let Some(view) = view
            && view.leader.is_none()
        {
            self.ask_peers(view, &mut peers).await;
        }
        let leader = view.and_then(|v| v.leader.as_ref());
        // Without etcd, the proven deadline alone says whether the key is
        // still ours (DESIGN invariant 1): lead until it passes, then fence.
        let holds_leader = self.leader_deadline().is_some()
            && (view.is_none()
                || leader.is_some_and(|l| l.name == me && Some(l.lease) == self.lease.map(|lease| lease.id)));
        let leader_member = leader.and_then(|l| view.and_then(|v| v.member(&l.name)));
        let now_ms = self.now_ms();
        if holds_leader && !matches!(pg, PgRun::Primary { .. }) {
            self.primary_down_since_ms.get_or_insert(now_ms);
        } else {
            self.primary_down_since_ms = None;
        }
        let failover = view.and_then(|v| v.failover.as_ref()).map(|f| ha_core::FailoverRequest {
            leader: f.leader.clone(),
            candidate: f.member.clone(),
            scheduled: match f.scheduled_at.as_deref() {
                None | Some("") => ha_core::Schedule::Now,
                Some(at) => match time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339) {
                    Ok(when) => ha_core::Schedule::At((when.unix_timestamp_nanos() / 1_000_000) as i64),
                    Err(_) => ha_core::Schedule::Unreadable(at.to_string()),
                },
            },
        });
        Observed {
            me,
            data,
            pg_starting: local.sql.is_none() && local.postmaster.state == ha_proto::v1::PostgresState::Starting,
            pg,
            initialize: view.and_then(|v| v.initialize.clone()),
            leader: if view.is_none() && holds_leader {
                Some(self.config.name.clone())
            } else {
                leader.map(|l| l.name.clone())
            },
            holds_leader,
            peers,
            nofailover: self.config.tags.nofailover,
            priority: self.config.tags.failover_priority.unwrap_or(1),
            cluster_optime: view.and_then(|v| v.status.as_ref()).map(|s| s.optime),
            maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
            leader_timeline: leader_member.and_then(|m| m.data.timeline),
            leader_checkpointed: leader_member
                .is_none_or(|m| m.data.extra.get("checkpoint_after_promote") != Some(&serde_json::Value::Bool(false))),
            paused: dynamic.pause,
            failover,
            now_ms,
            now_unix_ms: crate::now_unix_ms(),
            ttl_ms: u64::from(dynamic.ttl) * 1000,
            primary_down_since_ms: self.primary_down_since_ms,
            primary_start_timeout_ms: u64::from(dynamic.primary_start_timeout) * 1000,
            history_timeline: view.and_then(|v| v.history.iter().map(|entry| entry.0).max()),
            // Only switch points PostgreSQL's own timeline history confirmed:
            // the entry a candidate writes before it promotes carries its
            // position of a moment before, which a replica holding the old
            // primary's last records has passed without having diverged.
            history_switches: view
                .map(|v| v.history.iter().filter(|h| h.2 != PROMOTING).map(|h| (h.0, h.1)).collect())
                .unwrap_or_default(),
            history_author: view
                .and_then(|v| v.history.iter().max_by_key(|entry| entry.0))
                .and_then(|entry| entry.4.clone()),
            released_at_ms: self.released_at_ms,
            sync_mode: dynamic.synchronous_mode != pgwarden_config::SyncMode::Off,
            sync_standbys: view
                .and_then(|v| v.sync.as_ref())
                .map(|s| s.members().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            sync_leader: view.and_then(|v| v.sync.as_ref()).and_then(|s| s.leader.clone()),
            etcd_answered: view.is_some(),
            can_lead: self.fencer_ready(),
            fencer_lost: self.fencer_lost(),
            not_streaming,
            unsupported: if dynamic.standby_cluster {
                Some(
                    "the cluster's config key sets standby_cluster, which pgwarden does not implement (a standby \
                     cluster run as an independent one would be a second writer); keep Patroni for this cluster or \
                     remove standby_cluster from the config key"
                        .into(),
                )
            } else if view.and_then(|v| v.sync.as_ref()).and_then(|s| s.quorum).is_some_and(|q| q > 0) {
                Some(
                    "the sync key carries Patroni's quorum commit (quorum > 0), which pgwarden does not implement; \
                     set synchronous_mode to on (or off) with Patroni before moving to pgwarden"
                        .into(),
                )
            } else {
                None
            },
        }
    }

    /// Why the local replica's WAL receiver does not stream: its status, and
    /// the last complaint of the WAL receiver in PostgreSQL's log (a missing
    /// replication slot, a refused login). Looked up at most every 2 s.
    fn why_not_streaming(&mut self, receiver_status: &str) -> String {
        if let Some((at, why)) = &self.not_streaming_cache
            && at.elapsed() < Duration::from_secs(2)
        {
            return why.clone();
        }
        let mut why = if receiver_status.is_empty() {
            "no WAL receiver runs".to_string()
        } else {
            format!("the WAL receiver is {receiver_status}")
        };
        if let Some(line) = last_receiver_complaint(&self.pg.log_file) {
            why.push_str(&format!("; PostgreSQL's log: {line}"));
        }
        self.not_streaming_cache = Some((Instant::now(), why.clone()));
        why
    }

    /// Waits until the observer reports what an action just did, so that the
    /// next tick does not act on an observation from before it.
    async fn await_local(&mut self, what: &str, done: impl Fn(&Local) -> bool) -> anyhow::Result<()> {
        let timeout = self.config.postgresql.pg_ctl_timeout;
        let mut rx = self.local.clone();
        let wait = async {
            loop {
                if done(&rx.borrow_and_update()) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    bail!("the observer stopped");
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .with_context(|| format!("see PostgreSQL {what} within {timeout:?}"))?
    }

    /// Replaces each peer's key-reported state with what its agent says now.
    /// Unreachable agents are skipped; for a peer whose PostgreSQL has data
    /// but does not answer yet, since when (`decide` waits for it at most
    /// one ttl: `Observed::takes_part`).
    async fn ask_peers(&mut self, view: &ClusterView, peers: &mut [Peer]) {
        let timeout = Duration::from_millis(800);
        let asks = peers.iter().map(|peer| {
            let member = view.member(&peer.name);
            let grpc_url = member.and_then(|m| m.data.grpc_url.clone());
            let api_url = member.map(|m| m.data.api_url.clone()).unwrap_or_default();
            crate::peers::ask(grpc_url, api_url, timeout)
        });
        let answers = futures_util::future::join_all(asks).await;
        let now_ms = self.now_ms();
        for (peer, answer) in peers.iter_mut().zip(answers) {
            let Some(status) = answer else {
                peer.running = false;
                peer.primary = false;
                continue;
            };
            peer.running = status.has_data && !status.shutting_down;
            peer.lsn = status.lsn;
            peer.primary = status.primary;
            if peer.running && peer.lsn.is_none() {
                peer.position_unknown_since_ms =
                    Some(*self.peer_unknown_since.entry(peer.name.clone()).or_insert(now_ms));
            } else {
                self.peer_unknown_since.remove(&peer.name);
            }
        }
    }

    fn upstream_of(&self, view: &ClusterView, member: &str) -> anyhow::Result<Upstream> {
        let entry = view
            .member(member)
            .with_context(|| format!("find member {member} to copy or stream from: it has no key in etcd yet"))?;
        let (host, port) = entry
            .data
            .host_port()
            .with_context(|| format!("find member {member}'s PostgreSQL: it advertises no conn_url"))?;
        Ok(Upstream { member: member.to_string(), host, port })
    }

    /// One tick. Returns whether to tick again at once.
    pub async fn tick(&mut self) -> bool {
        let started = Instant::now();
        // A leader whose deadline passed without a renewal fences before
        // anything else: no etcd round trip first (it may take the whole
        // request timeout, longer than fence_margin) and no cached view that
        // still names it leader (DESIGN invariant 1). The fencer does the
        // same; this covers a fencer that is down.
        if self.renewal_proves_leader && self.leader_deadline().is_none() {
            let local = self.local.borrow().clone();
            let writable = match &local.sql {
                Some(sql) => !sql.in_recovery,
                None => !matches!(
                    local.postmaster.state,
                    ha_proto::v1::PostgresState::Stopped | ha_proto::v1::PostgresState::Uninitialized
                ),
            };
            self.cached_view = None;
            if ha_core::fence_at_once(self.renewal_proves_leader, self.leader_deadline().is_some(), writable) {
                warn!("the leader deadline passed without a renewal: stopping PostgreSQL before anything else");
                match self.pg.stop("immediate").await {
                    Ok(()) => info!(from = "primary", to = "stopped", "role change: fenced"),
                    Err(e) => error!("failed to fence PostgreSQL: {e:#}"),
                }
            }
        }
        let generation = self.wake.generation.load(Ordering::SeqCst);
        let cached = self.cached_view.as_ref().filter(|(_, read_at, at)| {
            self.wake.watching.load(Ordering::SeqCst) && *read_at == generation && at.elapsed() < MAX_VIEW_AGE
        });
        let view = match cached {
            Some((view, _, _)) => {
                self.last_dcs_seen_unix_ms = crate::now_unix_ms();
                Some(view.clone())
            }
            None => match dcs::read_cluster(&self.etcd, &self.keys).await {
                Ok(view) => {
                    self.last_dcs_seen_unix_ms = crate::now_unix_ms();
                    self.cached_view = Some((view.clone(), generation, Instant::now()));
                    Some(view)
                }
                Err(e) => {
                    warn!("failed to read the cluster from etcd: {}", dcs::describe_error(&e));
                    self.cached_view = None;
                    None
                }
            },
        };
        let etcd_read_duration = started.elapsed();
        let dynamic = self.dynamic(view.as_ref());
        self.loop_wait = dynamic.loop_wait();
        if view.is_some()
            && let Err(e) = self.ensure_lease(&dynamic).await
        {
            warn!("failed to {e:#}");
        }
        let local = self.local.borrow().clone();
        // Peers must see this member (and whether it has data) before it
        // acts, so that a race waits for its WAL position.
        if view.is_some()
            && let Err(e) = self.publish_member(&local).await
        {
            warn!("failed to update the member key: {e:#}");
        }
        let obs = self.observed(view.as_ref(), &local).await;
        if !obs.holds_leader {
            // Not leading: no standby is ours to wait for. In synchronous
            // mode the placeholder, never '': a primary that lost the key
            // must not release the commits waiting on it as acknowledged,
            // and a promotion starts with commits waiting until the leader's
            // first synchronous step (DESIGN invariant 4).
            self.sync_configured.clear();
            self.sync_pending = None;
            self.sync_rebuilt = false;
            self.pg.set_sync_names(
                (dynamic.synchronous_mode != pgwarden_config::SyncMode::Off)
                    .then(|| ha_core::sync::standby_names(&[], true)),
            );
        }
        // Without etcd, `decide` acts only on a primary (or one starting)
        // that can no longer prove the key: everything else waits.
        let decision = decide(&obs);
        if decision.reason != self.last_reason || decision.action.is_some() {
            if decision.refused {
                error!(reason = %decision.reason, "ha tick");
            } else {
                info!(reason = %decision.reason, action = ?decision.action, "ha tick");
            }
            self.last_reason = decision.reason.clone();
        }
        // PostgreSQL here is this agent's to stop once the agent has acted on
        // it or found it in a cluster etcd knows; never one it only refused.
        self.managed |=
            !decision.refused && obs.etcd_answered && (obs.initialize.is_some() || decision.action.is_some());
        let mut again = false;
        if let (Some(action), Some(view)) = (&decision.action, view.as_ref()) {
            match self.execute(action, view, &dynamic, &obs).await {
                Ok(tick_again) => again = tick_again,
                Err(e) => {
                    warn!(?action, "failed to {e:#}");
                    // Not again before loop_wait: etcd events wake the loop
                    // many times a second, and a failure that repeats (a
                    // permission, a refused clone) would spin and flood the log.
                    tokio::time::sleep(self.loop_wait).await;
                }
            }
        } else if decision.action == Some(Action::Demote) {
            // No etcd and no proof: fence all the same.
            if let Err(e) = self.pg.stop("immediate").await {
                error!("failed to fence PostgreSQL: {e:#}");
            }
        }
        self.derive_callbacks();
        // A scheduled restart whose time has come (its conditions checked now).
        if let Some(due) = self.scheduled_restart.clone().filter(|s| s.at <= time::OffsetDateTime::now_utc()) {
            self.scheduled_restart = None;
            info!(schedule = %due.text, "carrying out the scheduled restart");
            let restart = crate::grpc::Command::Restart {
                only_if_pending: due.only_if_pending,
                role: due.role,
                schedule: String::new(),
            };
            match self.command(restart).await {
                Ok(crate::grpc::Outcome::Action(reply)) => info!("scheduled restart: {}", reply.message),
                Err(status) => warn!("scheduled restart failed: {}", status.message()),
            }
        }
        // A changed parameter (dynamic config or a reload) reaches PostgreSQL
        // by a reload; one that needs a restart shows as pending_restart.
        if let Some(view) = &view
            && local.sql.is_some()
            && self.pg.written_parameters().is_some_and(|written| written != self.pg.parameters(&dynamic, false))
        {
            info!("PostgreSQL parameters changed: rewriting the config and reloading");
            match self.rewrite_running_config(Some(view), &dynamic).await {
                Ok(()) => {
                    if let Some(role) = self.seen_running {
                        self.callbacks.fire("reload", role);
                    }
                }
                Err(e) => warn!("failed to apply the changed parameters: {e:#}"),
            }
        }
        // The lease keeper's renewals keep the device alive while leading
        // (`forward_renewals`); here it is only disarmed.
        if self.leader_deadline().is_none() {
            lock_watchdog(&self.watchdog).disarm();
        }
        if let Some(view) = &view {
            let local = self.local.borrow().clone();
            if let Err(e) = self.publish_member(&local).await {
                warn!("failed to update the member key: {e:#}");
            }
            self.led_here |= obs.holds_leader;
            if obs.holds_leader
                && let Err(e) = self.leader_housekeeping(view, &local, &dynamic).await
            {
                warn!("failed to keep the cluster keys: {e:#}");
            }
            if !obs.holds_leader
                && let Err(e) = self.drop_replica_slots(view, &local).await
            {
                warn!("failed to drop the member slots kept from a term as primary: {e:#}");
            }
        }
        self.view.send_replace(HaView {
            leader: view.as_ref().and_then(|v| v.leader.as_ref().map(|l| l.name.clone())),
            leader_deadline: self.leader_deadline(),
            cluster_optime: view.as_ref().and_then(|v| v.status.as_ref()).map(|s| s.optime),
            reason: decision.reason.clone(),
            refused: decision.refused.then(|| decision.reason.clone()),
            upstream: self.upstream.clone(),
            last_tick_unix_ms: crate::now_unix_ms(),
            shutting_down: false,
            paused: dynamic.pause,
            sync_standby: view
                .as_ref()
                .and_then(|v| v.sync.as_ref())
                .is_some_and(|sync| sync.members().contains(&self.config.name.as_str())),
            ttl: dynamic.ttl,
            maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
            tick_duration: started.elapsed(),
            etcd_read_duration,
            dcs_last_seen_unix_ms: self.last_dcs_seen_unix_ms,
        });
        again
    }

    async fn execute(
        &mut self,
        action: &Action,
        view: &ClusterView,
        dynamic: &DynamicConfig,
        obs: &Observed,
    ) -> anyhow::Result<bool> {
        match action {
            Action::Bootstrap => self.bootstrap(dynamic).await.map(|()| true),
            Action::Clone { source } => {
                let upstream = self.upstream_of(view, source)?;
                self.pg.write_pgpass(Some(&upstream))?;
                self.pg.prepare_empty_data_dir()?;
                if let Err(e) = self.pg.basebackup(&upstream).await {
                    self.pg.remove_unfinished_data_dir();
                    return Err(e);
                }
                // A clone is a replica's data directory from the first moment:
                // it must never look like a former primary to be rewound.
                std::fs::write(self.pg.data_dir.join("standby.signal"), "").context("write standby.signal")?;
                self.sysid = None;
                Ok(true)
            }
            Action::StartReplica { upstream } => {
                let upstream = match upstream {
                    Some(member) => Some(self.upstream_of(view, member)?),
                    None => None,
                };
                self.pg.write_pgpass(upstream.as_ref())?;
                self.pg.write_config(dynamic, &StartAs::Replica { upstream: upstream.clone() }, false)?;
                self.pg.start().await?;
                self.upstream = upstream.map(|u| u.member);
                self.await_local("answer as a replica", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
                Ok(true)
            }
            Action::Follow { upstream } => {
                let target = self.upstream_of(view, upstream)?;
                // The new primary_conninfo names the pgpass file: it must
                // hold the password before the WAL receiver reconnects (an
                // adopted replica may never have had it written).
                self.pg.write_pgpass(Some(&target))?;
                self.pg.write_config(dynamic, &StartAs::Replica { upstream: Some(target) }, false)?;
                self.pg.reload().await?;
                info!(upstream, "following");
                self.upstream = Some(upstream.clone());
                Ok(false)
            }
            Action::AcquireLeader => {
                // Re-binding its own key under a running primary needs no
                // fencer: it already leads, and the proven deadline lets this
                // agent fence by itself (without it, nobody would).
                let rebind = matches!(obs.pg, PgRun::Primary { .. }) && obs.leader.as_deref() == Some(obs.me.as_str());
                self.acquire_leader(dynamic, rebind).await
            }
            Action::StartPrimary => {
                // Restart in place, but never past primary_start_timeout:
                // after that the key goes to a replica.
                let budget = Duration::from_secs(u64::from(dynamic.primary_start_timeout));
                let spent = Duration::from_millis(
                    self.primary_down_since_ms.map_or(0, |since| self.now_ms().saturating_sub(since)),
                );
                self.pg.write_config(dynamic, &StartAs::Primary, false)?;
                if self.leader_deadline().is_none() {
                    bail!("start as primary: the leader key is no longer proven ours (its deadline passed)");
                }
                self.pg.start_within(budget.saturating_sub(spent).max(Duration::from_secs(1))).await?;
                self.await_local("answer", |l| l.sql.is_some()).await?;
                info!(from = "stopped", to = "primary", "role change: restarted in place");
                Ok(true)
            }
            Action::ReleaseLeader => {
                self.release_leader(dynamic).await?;
                Ok(true)
            }
            Action::ClearFailover => {
                if self.delete_at_revision(self.keys.failover(), view.failover_revision).await? {
                    info!("cleared the switchover request");
                }
                Ok(true)
            }
            Action::Switchover { candidate } => self.switchover(view, dynamic, obs, candidate.clone()).await,
            Action::Rejoin { leader } => self.rejoin(view, dynamic, leader).await,
            Action::Promote => {
                if let Err(e) = self.callbacks.pre_promote().await {
                    error!("pre_promote vetoed the promotion: {e:#}; giving the leader key up");
                    self.checkpoint_pending = false;
                    self.release_leader(dynamic).await?;
                    bail!("pre_promote vetoed the promotion: {e:#}");
                }
                self.checkpoint_pending = true;
                let local = self.local.borrow().clone();
                self.publish_member(&local).await?;
                // pre_promote and the member key took time (the agent may
                // even have been frozen): promote only while the key is
                // still proven ours, never on the tick's old view.
                if self.leader_deadline().is_none() {
                    self.checkpoint_pending = false;
                    bail!("promote: the leader key is no longer proven ours (its deadline passed); not promoting");
                }
                // Synchronous mode: the sync key names this leader with no
                // standby before PostgreSQL may acknowledge anything; a stale
                // key could let a standby that never confirmed our commits
                // take over (finding 8 of the safety review).
                // Out of synchronous mode too: a key another leader left
                // would count the moment the mode is turned on.
                let stale = view.sync.as_ref().is_some_and(|k| k.leader.as_deref() != Some(self.config.name.as_str()));
                if stale || (dynamic.synchronous_mode != pgwarden_config::SyncMode::Off && view.sync.is_none()) {
                    self.reset_sync_key(view).await.inspect_err(|_| self.checkpoint_pending = false)?;
                }
                // The promotion is recorded before it happens, at the WAL
                // position it will switch at (corrected from the timeline
                // history file once promoted): if this node dies right after,
                // no former primary resumes and no replica races on the
                // old timeline (finding 3 of the safety review).
                // The position now, not the observer's last look: WAL the old
                // primary sent last (its shutdown checkpoint) may have arrived
                // since.
                // The timeline is the observer's (it keeps the WAL
                // receiver's while the receiver is down).
                let mut conn = self.connect().await?;
                let fresh = sql::status(&mut conn).await.ok().map(|sql| sql.xlog_location);
                sql::close(conn).await;
                let position = self.local.borrow().sql.as_ref().map(|sql| (sql.timeline, sql.xlog_location));
                let (timeline, lsn) = position.context("promote: PostgreSQL does not answer")?;
                let lsn = lsn.max(fresh.unwrap_or(0));
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                if let Err(e) = self.append_history(view, (timeline, lsn, PROMOTING.into(), now)).await {
                    self.checkpoint_pending = false;
                    bail!("promote: record the promotion in the history key first: {e:#}");
                }
                self.pg.promote().await?;
                self.upstream = None;
                self.await_local("answer as a primary", |l| l.sql.as_ref().is_some_and(|s| !s.in_recovery)).await?;
                info!(from = "replica", to = "primary", "role change: promoted");
                // The followers' slots first, so they can stream at once.
                if dynamic.use_slots
                    && let Err(e) = self.manage_slots(view, dynamic).await
                {
                    warn!("failed to create the replication slots: {e:#}");
                }
                let mut conn = self.connect().await?;
                sql::checkpoint(&mut conn).await?;
                let entry = sql::latest_history_entry(&mut conn).await;
                sql::close(conn).await;
                self.checkpoint_pending = false;
                self.pg.write_config(dynamic, &StartAs::Primary, false)?;
                match entry {
                    Ok(Some(entry)) => {
                        if let Err(e) = self.append_history(view, entry).await {
                            warn!("failed to write the history key: {e:#}");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!("failed to read the timeline history: {e:#}"),
                }
                Ok(true)
            }
            Action::WithdrawPromotion { timeline } => {
                let mut history = view.history.clone();
                history.retain(|h| h.0 < *timeline);
                let key = self.keys.history();
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, view.history_revision)])
                    .and_then([TxnOp::put(key.as_str(), serde_json::to_string(&history)?, None)]);
                if self.etcd.txn(txn).await?.succeeded() {
                    warn!(timeline, "withdrew the promotion this member recorded and never made");
                }
                Ok(true)
            }
            Action::Demote => {
                let replica = matches!(obs.pg, PgRun::Replica { .. });
                self.pg.stop(if replica { "fast" } else { "immediate" }).await?;
                // Gone, not only silent: a postmaster still in crash recovery
                // answers no query either.
                self.await_local("stopped", |l| {
                    l.sql.is_none()
                        && matches!(
                            l.postmaster.state,
                            ha_proto::v1::PostgresState::Stopped | ha_proto::v1::PostgresState::Uninitialized
                        )
                })
                .await?;
                if replica {
                    info!(from = "replica", to = "stopped", "role change: stopped to rewind");
                } else {
                    info!(from = "primary", to = "stopped", "role change: fenced");
                }
                Ok(true)
            }
        }
    }

    /// Writes the `sync` key as this leader's with no standby
    /// (compare-and-swap against the tick's view).
    async fn reset_sync_key(&mut self, view: &ClusterView) -> anyhow::Result<()> {
        if !self.write_sync_key(view, &[]).await? {
            bail!("promote: the sync key changed while resetting it; not promoting");
        }
        info!("synchronous mode: the sync key names this leader, with no standby yet");
        Ok(())
    }

    /// Writes the `sync` key: this leader and `standbys`, by compare-and-swap
    /// on the revision the view read (created iff absent). Returns whether it
    /// was written.
    async fn write_sync_key(&self, view: &ClusterView, standbys: &[String]) -> anyhow::Result<bool> {
        let value = serde_json::to_string(&dcs::SyncState {
            leader: Some(self.config.name.clone()),
            sync_standby: (!standbys.is_empty()).then(|| standbys.join(",")),
            quorum: None,
        })?;
        let key = self.keys.sync();
        let compare = if view.sync.is_some() {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, view.sync_revision)
        } else {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(key.as_str(), value, None)]);
        Ok(self.etcd.txn(txn).await?.succeeded())
    }

    /// Gives the leader key up (iff ours) and goes back to renewing only the lease.
    async fn release_leader(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let mut lease = self.lease.context("no lease")?;
        if let Some(handle) = self.renewal.take() {
            if let LeaseState::Held { deadline, .. } = handle.current() {
                lease.deadline = lease.deadline.max(deadline);
            }
            let _ = handle.stop().await;
        }
        self.lease = Some(lease);
        self.renewal_proves_leader = false;
        let mut election = self.election(dynamic);
        let released = election.release(&lease).await;
        self.renewal = Some(spawn_renewal(election, lease, self.renew_interval(dynamic), false));
        self.released_at_ms = Some(self.now_ms());
        if released? {
            info!("released the leader key");
        }
        Ok(())
    }

    /// The planned hand-over (DESIGN "Who may touch what"): checkpoint, clean
    /// shutdown, wait until the candidate has received the shutdown
    /// checkpoint, release the key. If the candidate never gets it, start
    /// again as primary and drop the request.
    async fn switchover(
        &mut self,
        view: &ClusterView,
        dynamic: &DynamicConfig,
        obs: &Observed,
        candidate: Option<String>,
    ) -> anyhow::Result<bool> {
        let candidate = match candidate {
            Some(candidate) => candidate,
            None => {
                // The best eligible replica, named in the request so that the
                // others (and this node) defer to it.
                let best = ha_core::switchover_candidate(obs).context("no candidate for the switchover")?;
                let key = self.keys.failover();
                let value = serde_json::to_string(&dcs::Failover {
                    leader: Some(self.config.name.clone()),
                    member: Some(best.clone()),
                    scheduled_at: None,
                })?;
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, view.failover_revision)])
                    .and_then([TxnOp::put(key.as_str(), value, None)]);
                if !self.etcd.txn(txn).await?.succeeded() {
                    bail!("the switchover request changed while choosing a candidate");
                }
                best
            }
        };
        let grpc = view
            .member(&candidate)
            .and_then(|m| m.data.grpc_url.clone())
            .with_context(|| format!("candidate {candidate} advertises no gRPC address"))?;
        self.callbacks.before_stop("primary").await;
        info!(candidate, "switchover: checkpoint, then a clean shutdown");
        let mut conn = self.connect().await?;
        sql::checkpoint(&mut conn).await?;
        sql::close(conn).await;
        self.pg.stop("fast").await?;
        self.await_local("stopped", |l| l.sql.is_none()).await?;
        let checkpoint = self.pg.latest_checkpoint().await?;
        let wait = Duration::from_secs(u64::from(dynamic.retry_timeout).max(5));
        let received = tokio::time::timeout(wait, async {
            loop {
                if let Ok(channel) = pgwarden_runtime::grpc::connect(&grpc, Duration::from_secs(1)).await
                    && let Ok(status) = ha_proto::v1::node_agent_client::NodeAgentClient::new(channel)
                        .get_status(ha_proto::v1::GetStatusRequest {})
                        .await
                {
                    let status = status.into_inner();
                    if status.receive_lsn.max(status.replay_lsn) > checkpoint {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if received.is_err() {
            warn!(candidate, "switchover: the candidate did not receive the shutdown checkpoint; staying primary");
            let key = self.keys.failover();
            let _ = self.etcd.txn(Txn::new().and_then([TxnOp::delete(key.as_str(), None)])).await;
            return Ok(true);
        }
        info!(candidate, checkpoint = %ha_core::Lsn(checkpoint), "switchover: the candidate has the shutdown checkpoint");
        self.release_leader(dynamic).await?;
        info!(from = "primary", to = "stopped", candidate, "role change: switched over");
        Ok(true)
    }

    /// A data directory on an older timeline joins the leader: pg_rewind
    /// (or, where the config allows, a re-clone with the old directory moved
    /// aside), then start as its replica (DESIGN invariant 5).
    async fn rejoin(&mut self, view: &ClusterView, dynamic: &DynamicConfig, leader: &str) -> anyhow::Result<bool> {
        let upstream = self.upstream_of(view, leader)?;
        self.pg.write_pgpass(Some(&upstream))?;
        let use_rewind = self.config.postgresql.use_pg_rewind.unwrap_or(dynamic.use_pg_rewind);
        let outcome = self.pg.rewind(&upstream, !use_rewind).await;
        match outcome {
            Ok(false) => info!(leader, "no divergence: following"),
            Ok(true) if use_rewind => info!(leader, "rewound onto the leader's timeline"),
            Ok(true) if self.config.postgresql.remove_data_directory_on_diverged_timelines => {
                self.pg.move_aside("diverged")?;
                self.sysid = None;
                return Ok(true);
            }
            Ok(true) => bail!(
                "the data directory diverged from {leader}'s timeline and use_pg_rewind is off: set \
                 postgresql.use_pg_rewind (or remove_data_directory_on_diverged_timelines to re-clone)"
            ),
            Err(e) if self.config.postgresql.remove_data_directory_on_rewind_failure => {
                warn!("pg_rewind failed, re-cloning as configured: {e:#}");
                self.pg.move_aside("rewind-failed")?;
                self.sysid = None;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        self.pg.write_config(dynamic, &StartAs::Replica { upstream: Some(upstream.clone()) }, false)?;
        self.pg.start().await?;
        self.upstream = Some(upstream.member);
        self.await_local("answer as a replica", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
        Ok(true)
    }

    /// Appends the promotion to the `history` key (Patroni's shape).
    async fn append_history(&self, view: &ClusterView, entry: (u64, u64, String, String)) -> anyhow::Result<()> {
        let (timeline, lsn, reason, timestamp) = entry;
        let mut history = view.history.clone();
        history.retain(|h| h.0 < timeline);
        history.push(dcs::HistoryEntry(timeline, lsn, reason, Some(timestamp), Some(self.config.name.clone())));
        let value = serde_json::to_string(&history)?;
        let key = self.keys.history();
        self.etcd
            .call(|mut client| {
                let (key, value) = (key.clone(), value.clone());
                async move { client.put(key, value, None).await }
            })
            .await?;
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<sqlx::postgres::PgConnection> {
        sql::connect(&self.config, &self.pg.local, self.pg.port, Duration::from_secs(5)).await
    }

    /// This agent gave the leader key up on purpose within the last two
    /// ttls (a replica is taking it over): `ha_core::released_recently`.
    fn released_recently(&self, ttl: u32) -> bool {
        ha_core::released_recently(self.released_at_ms, self.now_ms(), u64::from(ttl) * 1000)
    }

    /// The agent's monotonic clock for `decide`: milliseconds since it started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the independent fencer (pgwarden-health) has acknowledged
    /// recently, or the config does without it.
    /// The fencer has been silent for `FENCER_LOST_AFTER`: since its last
    /// acknowledgement, or since this agent started when it never sent one.
    fn fencer_lost(&self) -> bool {
        if !self.config.pgwarden.require_fencer {
            return false;
        }
        let last = self.fencer_acks.lock().ok().and_then(|ack| *ack);
        last.unwrap_or(self.started).elapsed() > FENCER_LOST_AFTER
    }

    fn fencer_ready(&self) -> bool {
        !self.config.pgwarden.require_fencer
            || self.fencer_acks.lock().ok().and_then(|ack| *ack).is_some_and(|at| at.elapsed() <= FENCER_ACK_MAX_AGE)
    }

    fn require_fencer(&self) -> anyhow::Result<()> {
        if self.fencer_ready() {
            Ok(())
        } else {
            bail!(
                "take the leader key: no fencer has acknowledged in the last {FENCER_ACK_MAX_AGE:?}; \
                 run pgwarden-health beside the agent (or set pgwarden.require_fencer: false)"
            )
        }
    }

    async fn acquire_leader(&mut self, dynamic: &DynamicConfig, rebind: bool) -> anyhow::Result<bool> {
        let lease = self.lease.context("no lease yet")?;
        if !rebind {
            self.require_fencer()?;
        }
        lock_watchdog(&self.watchdog).arm(dynamic.ttl)?;
        // A replica about to promote says so before it holds the key, so no
        // rejoining node can rewind against it before its first checkpoint.
        let promoting = self.local.borrow().sql.as_ref().is_some_and(|s| s.in_recovery);
        if promoting {
            self.checkpoint_pending = true;
            let local = self.local.borrow().clone();
            self.publish_member(&local).await?;
        }
        let mut election = self.election(dynamic);
        match election.acquire(&lease).await? {
            Acquired::Won { .. } => {
                info!("took the leader key");
                self.prove_leader(dynamic, lease).await;
                Ok(true)
            }
            Acquired::Held(holder) if holder.member == self.config.name => {
                // Our own key from before a restart or an etcd outage: re-bind
                // it to this lease, only while it still names us (decide asks
                // this of a running primary, or of the stopped last primary
                // resuming on its timeline).
                let key = self.keys.leader();
                let txn = Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, self.config.name.as_str())])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        self.config.name.as_str(),
                        Some(PutOptions::new().with_lease(lease.id)),
                    )]);
                let done = self.etcd.txn(txn).await?.succeeded();
                if done {
                    info!("re-bound the leader key to this agent's lease");
                    self.prove_leader(dynamic, lease).await;
                }
                Ok(done)
            }
            Acquired::Held(holder) => {
                info!(holder = %holder.member, "the leader key went to another member");
                self.checkpoint_pending = false;
                Ok(true)
            }
        }
    }

    /// Deletes `key` iff it is still at `revision` (compare-and-swap);
    /// returns whether it was deleted.
    async fn delete_at_revision(&self, key: String, revision: i64) -> anyhow::Result<bool> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        Ok(self.etcd.txn(txn).await?.succeeded())
    }

    /// Create-if-absent of a key with an optional lease; returns whether it was created.
    async fn create(&self, key: String, value: String, lease: Option<i64>) -> anyhow::Result<bool> {
        let put = lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.as_str(), put)]);
        Ok(self.etcd.txn(txn).await?.succeeded())
    }

    /// Races for `initialize` and builds the cluster (DESIGN: bootstrap).
    async fn bootstrap(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let lease = self.lease.context("no lease yet")?;
        // A node that may not lead (watchdog required, none usable) must not
        // build the cluster either.
        lock_watchdog(&self.watchdog).arm(dynamic.ttl)?;
        // Bound to our lease while we bootstrap: if we die, the key goes away
        // and another member can try.
        if !self.create(self.keys.initialize(), String::new(), Some(lease.id)).await? {
            info!("another member won the bootstrap race");
            return Ok(());
        }
        info!("won the bootstrap race: initialising a new cluster");
        let result = self.build_cluster(dynamic, lease).await;
        if let Err(e) = &result {
            error!("bootstrap failed, cleaning up so another attempt can run: {e:#}");
            let _ = self.pg.stop("immediate").await;
            self.pg.remove_unfinished_data_dir();
            self.sysid = None;
            let key = self.keys.initialize();
            let txn = Txn::new()
                .when([
                    Compare::value(key.as_str(), CompareOp::Equal, ""),
                    Compare::lease(key.as_str(), CompareOp::Equal, lease.id),
                ])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            let _ = self.etcd.txn(txn).await;
        }
        result
    }

    async fn build_cluster(&mut self, dynamic: &DynamicConfig, lease: Lease) -> anyhow::Result<()> {
        if self.pg.data_dir.exists() && std::fs::read_dir(&self.pg.data_dir)?.next().is_some() {
            bail!("{} is not empty: refusing to run initdb over it", self.pg.data_dir.display());
        }
        self.pg.initdb().await?;
        self.pg.write_bootstrap_hba(dynamic)?;
        self.pg.write_pgpass(None)?;
        // Local connections only until we hold the leader key.
        self.pg.write_config(dynamic, &StartAs::Primary, true)?;
        self.pg.start().await?;
        let mut conn = self.connect().await?;
        sql::create_roles(&mut conn, &self.config).await?;
        sql::close(conn).await;
        let sysid = self.pg.system_identifier().await?;
        self.sysid = Some(sysid.clone());
        // The identifier replaces the placeholder and leaves our lease: the
        // cluster now exists whoever leads it.
        let key = self.keys.initialize();
        let txn = Txn::new().when([Compare::value(key.as_str(), CompareOp::Equal, "")]).and_then([TxnOp::put(
            key.as_str(),
            sysid.as_str(),
            None,
        )]);
        let written = self.etcd.txn(txn).await?.succeeded();
        if !written {
            bail!("the initialize key changed while bootstrapping");
        }
        self.create(self.keys.config(), self.config.bootstrap.dcs_json.to_string(), None).await?;
        // The fencer beside us must be watching before we lead.
        let waited = Instant::now();
        while !self.fencer_ready() && waited.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.require_fencer()?;
        let mut election = self.election(dynamic);
        match election.acquire(&lease).await? {
            Acquired::Won { .. } => {}
            Acquired::Held(holder) => bail!("{} took the leader key during bootstrap", holder.member),
        }
        self.prove_leader(dynamic, lease).await;
        info!(system_identifier = %sysid, "cluster initialised; opening PostgreSQL to the network");
        self.pg.write_config(dynamic, &StartAs::Primary, false)?;
        self.pg.stop("fast").await?;
        self.pg.start().await?;
        self.await_local("answer as a primary", |l| l.sql.as_ref().is_some_and(|s| !s.in_recovery)).await?;
        Ok(())
    }

    /// Writes this member's key when its content changed.
    async fn publish_member(&mut self, local: &Local) -> anyhow::Result<()> {
        let Some(lease) = self.lease else { return Ok(()) };
        let connect = self
            .config
            .postgresql
            .connect_address
            .clone()
            .or_else(|| {
                self.config.postgresql.listen.as_ref().map(|l| {
                    let host = l.hosts.first().map(String::as_str).unwrap_or("127.0.0.1");
                    let host = if host == "*" || host == "0.0.0.0" { "127.0.0.1" } else { host };
                    pgwarden_config::HostPort::new(host, l.port)
                })
            })
            .context("no PostgreSQL address to advertise")?;
        let state = match local.postmaster.state {
            ha_proto::v1::PostgresState::Running if local.sql.is_some() => "running",
            ha_proto::v1::PostgresState::Running | ha_proto::v1::PostgresState::Starting => "starting",
            ha_proto::v1::PostgresState::Stopping => "stopping",
            _ => "stopped",
        };
        // While PostgreSQL does not answer, only the leader key makes a primary.
        let role = match (&local.sql, self.pg.has_data()) {
            (Some(sql), _) if !sql.in_recovery => "primary",
            (Some(_), _) => "replica",
            (None, _) if self.leader_deadline().is_some() => "primary",
            (None, true) => "replica",
            (None, false) => "uninitialized",
        };
        let member = MemberData {
            conn_url: format!("postgres://{connect}/postgres"),
            api_url: self.config.restapi.api_url(),
            state: state.into(),
            role: role.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            xlog_location: local.sql.as_ref().map(|s| s.xlog_location),
            timeline: local.sql.as_ref().map(|s| s.timeline),
            receive_lsn: local.sql.as_ref().filter(|s| s.in_recovery).map(|s| s.receive_lsn),
            replay_lsn: local.sql.as_ref().filter(|s| s.in_recovery).map(|s| s.replay_lsn),
            replication_state: local
                .sql
                .as_ref()
                .filter(|s| s.in_recovery && !s.replication_state.is_empty())
                .map(|s| s.replication_state.clone()),
            tags: self.config.tags.json.clone(),
            grpc_url: Some(self.config.pgwarden.agent_grpc_url()),
            extra: {
                let mut extra = serde_json::Map::new();
                if self.checkpoint_pending {
                    extra.insert("checkpoint_after_promote".into(), serde_json::Value::Bool(false));
                }
                // Patroni's members say `pause: true` while the cluster is paused.
                if self.view.borrow().paused {
                    extra.insert("pause".into(), serde_json::Value::Bool(true));
                }
                if local.sql.as_ref().is_some_and(|s| s.pending_restart) {
                    extra.insert("pending_restart".into(), serde_json::Value::Bool(true));
                }
                // Whether this member may take the leader key (its fencer
                // acknowledges): a leader hands over only to one that may.
                extra.insert("fencer_ready".into(), serde_json::Value::Bool(self.fencer_ready()));
                // It gave the key up itself lately: the others race without
                // waiting for it (decide's `released_leader`).
                if self.released_recently(self.view.borrow().ttl) {
                    extra.insert("released_leader".into(), serde_json::Value::Bool(true));
                }
                // Patroni's member field for a scheduled restart.
                if let Some(scheduled) = &self.scheduled_restart {
                    let mut restart = serde_json::Map::new();
                    restart.insert("schedule".into(), scheduled.text.clone().into());
                    if scheduled.only_if_pending {
                        restart.insert("restart_pending".into(), true.into());
                    }
                    if !scheduled.role.is_empty() {
                        restart.insert("role".into(), scheduled.role.clone().into());
                    }
                    extra.insert("scheduled_restart".into(), serde_json::Value::Object(restart));
                }
                extra
            },
        };
        let json = serde_json::to_string(&member)?;
        if self.last_member_json.as_deref() == Some(json.as_str()) {
            return Ok(());
        }
        let key = self.keys.member(&self.config.name);
        let value = json.clone();
        self.etcd
            .call(|mut client| {
                let (key, value) = (key.clone(), value.clone());
                async move { client.put(key, value, Some(PutOptions::new().with_lease(lease.id))).await }
            })
            .await?;
        self.last_member_json = Some(json);
        Ok(())
    }

    /// The leader's duties: `status.optime`, the `config` and `initialize`
    /// keys, and a replication slot per member.
    async fn leader_housekeeping(
        &mut self,
        view: &ClusterView,
        local: &Local,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<()> {
        let Some(sql) = local.sql.as_ref().filter(|s| !s.in_recovery) else { return Ok(()) };
        if self.last_optime != Some(sql.xlog_location) {
            let mut status = view.status.clone().unwrap_or_default();
            status.optime = sql.xlog_location;
            // Slot positions are not published: a stale copy (Patroni's
            // last, after a migration) would mislead a Patroni member.
            let status =
                Status { optime: sql.xlog_location, slots: Default::default(), retain_slots: Vec::new(), ..status };
            let value = serde_json::to_string(&status)?;
            let key = self.keys.status();
            self.etcd
                .call(|mut client| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { client.put(key, value, None).await }
                })
                .await?;
            self.last_optime = Some(sql.xlog_location);
        }
        if view.config.is_none() {
            self.create(self.keys.config(), self.config.bootstrap.dcs_json.to_string(), None).await?;
        }
        if view.initialize.as_deref().is_none_or(str::is_empty)
            && let Some(sysid) = &self.sysid
        {
            let _ = self.create(self.keys.initialize(), sysid.clone(), None).await?;
        }
        self.complete_history(view, sql.timeline).await?;
        if dynamic.use_slots {
            self.manage_slots(view, dynamic).await?;
        }
        self.manage_sync(view, local, dynamic).await
    }

    /// Adds to the `history` key the promotions PostgreSQL's timeline history
    /// file records and the key lacks (one made by Patroni during a
    /// migration, or by an agent that died before writing its entry), as
    /// Patroni rebuilds it. Read once per timeline and history revision.
    async fn complete_history(&mut self, view: &ClusterView, timeline: u64) -> anyhow::Result<()> {
        if timeline <= 1 || self.history_checked == Some((timeline, view.history.len())) {
            return Ok(());
        }
        let file = self.pg.data_dir.join("pg_wal").join(ha_core::timeline::history_file_name(timeline));
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                warn!("failed to read the timeline history file {}: {e}", file.display());
                self.history_checked = Some((timeline, view.history.len()));
                return Ok(());
            }
        };
        // Read afresh and written only if unchanged since: this tick's view
        // predates an entry the promotion may have appended a moment ago.
        let key = self.keys.history();
        let current = self
            .etcd
            .call(|mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await?;
        let (history, revision) = match current.kvs().first() {
            Some(kv) => {
                (serde_json::from_slice::<Vec<dcs::HistoryEntry>>(kv.value()).unwrap_or_default(), kv.mod_revision())
            }
            None => (Vec::new(), 0),
        };
        let known: Vec<u64> = history.iter().map(|h| h.0).collect();
        let switches = ha_core::timeline::parse_history_file(&text);
        let missing = ha_core::timeline::missing_switches(&known, &switches);
        if !missing.is_empty() {
            let mut history = history.clone();
            history.extend(missing.iter().map(|s| dcs::HistoryEntry(s.timeline, s.lsn, s.reason.clone(), None, None)));
            history.sort_by_key(|h| h.0);
            let value = serde_json::to_string(&history)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)]);
            if !self.etcd.txn(txn).await?.succeeded() {
                // Changed meanwhile: look again at the next tick.
                return Ok(());
            }
            info!(
                timelines = ?missing.iter().map(|s| s.timeline).collect::<Vec<_>>(),
                "history: added the promotions PostgreSQL's timeline history records and the key lacked"
            );
        }
        self.history_checked = Some((timeline, view.history.len()));
        Ok(())
    }

    /// `synchronous_standby_names` for the config files: none outside
    /// synchronous mode, else P (or, strict, a placeholder when P is empty).
    fn sync_names(&self, dynamic: &DynamicConfig) -> Option<String> {
        (dynamic.synchronous_mode != pgwarden_config::SyncMode::Off)
            .then(|| ha_core::sync::standby_names(&self.sync_configured, dynamic.synchronous_mode_strict))
    }

    /// Synchronous replication as leader: one step of `ha_core::sync` per
    /// tick; out of synchronous mode, the `sync` key goes.
    async fn manage_sync(&mut self, view: &ClusterView, local: &Local, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        use ha_core::sync::{Standby, SyncInput, SyncStep, next_step};
        let Some(sql) = local.sql.as_ref().filter(|s| !s.in_recovery) else { return Ok(()) };
        if dynamic.synchronous_mode == pgwarden_config::SyncMode::Off {
            self.sync_configured.clear();
            self.sync_pending = None;
            if self.pg.set_sync_names(None) {
                info!("synchronous mode off: synchronous_standby_names cleared");
                self.pg.write_config(dynamic, &StartAs::Primary, false)?;
                self.pg.reload().await?;
            }
            if view.sync.is_some() && self.delete_at_revision(self.keys.sync(), view.sync_revision).await? {
                info!("synchronous mode off: removed the sync key");
            }
            return Ok(());
        }
        let me = self.config.name.clone();
        let key_is_mine = view.sync.as_ref().is_some_and(|s| s.leader.as_deref() == Some(me.as_str()));
        let published: Vec<String> = view
            .sync
            .as_ref()
            .filter(|_| key_is_mine)
            .map(|s| s.members().into_iter().map(String::from).collect())
            .unwrap_or_default();
        let nosync = |name: &str| {
            view.member(name).is_none_or(|m| m.data.tag_flag("nosync") || m.data.tag_number("sync_priority") == Some(0))
        };
        let standbys = sql
            .replication
            .iter()
            .map(|r| Standby {
                name: r.application_name.clone(),
                streaming: r.state == "streaming",
                sync: r.sync_state == "sync" || r.sync_state == "quorum",
                flush_lsn: r.flush_lsn,
                eligible: !nosync(&r.application_name),
                priority: view
                    .member(&r.application_name)
                    .and_then(|m| m.data.tag_number("sync_priority"))
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(1),
            })
            .collect();
        // Leading again (an agent restarted under a running primary, or a
        // promotion): P starts from what PostgreSQL runs with and every
        // member of S, never from an empty memory (DESIGN invariant 4).
        if !self.sync_rebuilt {
            let mut conn = self.connect().await?;
            let live = sql::show(&mut conn, "synchronous_standby_names").await;
            sql::close(conn).await;
            let mut names = ha_core::sync::parse_standby_names(&live?);
            names.extend(published.iter().cloned());
            names.sort();
            names.dedup();
            self.sync_configured = names;
            self.sync_rebuilt = true;
            if !self.sync_configured.is_empty() {
                info!(standbys = ?self.sync_configured, "synchronous_standby_names rebuilt from PostgreSQL");
            }
        }
        let input = SyncInput {
            node_count: dynamic.synchronous_node_count as usize,
            published,
            key_is_mine,
            configured: self.sync_configured.clone(),
            pending: self.sync_pending.clone(),
            standbys,
            primary_lsn: sql.xlog_location,
        };
        // The configured names as PostgreSQL must have them (after a restart
        // or a promotion, before any step).
        if self.pg.set_sync_names(self.sync_names(dynamic)) {
            self.apply_sync_names(dynamic).await?;
        }
        match next_step(&input) {
            SyncStep::Idle => {}
            SyncStep::Mark(lsn) => {
                if let Some(pending) = &mut self.sync_pending {
                    info!(standby = %pending.name, lsn = %ha_core::Lsn(lsn), "synchronous: the standby confirms; waiting for it to flush this far");
                    pending.since_lsn = Some(lsn);
                }
            }
            SyncStep::Configure { names, pending } => {
                info!(standbys = ?names, joining = ?pending.as_ref().map(|p| &p.name), "synchronous_standby_names");
                self.sync_configured = names;
                self.sync_pending = pending;
                self.pg.set_sync_names(self.sync_names(dynamic));
                self.apply_sync_names(dynamic).await?;
            }
            SyncStep::Publish(names) => {
                if self.write_sync_key(view, &names).await? {
                    info!(standbys = ?names, "published the sync key");
                    if self.sync_pending.as_ref().is_some_and(|p| names.contains(&p.name)) {
                        self.sync_pending = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// Rewrites the config with the current `synchronous_standby_names`,
    /// reloads, and waits until PostgreSQL uses it.
    async fn apply_sync_names(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let wanted = self.sync_names(dynamic).unwrap_or_default();
        self.pg.write_config(dynamic, &StartAs::Primary, false)?;
        self.pg.reload().await?;
        let mut conn = self.connect().await?;
        let started = Instant::now();
        loop {
            let current = sql::show(&mut conn, "synchronous_standby_names").await?;
            if current == wanted {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("PostgreSQL did not take synchronous_standby_names = {wanted:?} within 5 s (it has {current:?})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sql::close(conn).await;
        Ok(())
    }

    async fn manage_slots(&mut self, view: &ClusterView, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let wanted: Vec<String> =
            view.members.iter().filter(|m| m.name != self.config.name).map(|m| slot_name(&m.name)).collect();
        let mut conn = self.connect().await?;
        let existing = sql::physical_slots(&mut conn).await?;
        for slot in wanted.iter().filter(|s| !existing.contains(s)) {
            info!(slot, "creating a replication slot");
            sql::create_slot(&mut conn, slot).await?;
        }
        let now = Instant::now();
        self.slot_absent_since.retain(|slot, _| !wanted.contains(slot));
        for slot in existing.iter().filter(|s| !wanted.contains(s)) {
            let since = *self.slot_absent_since.entry(slot.clone()).or_insert(now);
            if now.duration_since(since) >= dynamic.member_slots_ttl {
                info!(slot, "dropping the slot of a member gone longer than member_slots_ttl");
                sql::drop_slot(&mut conn, slot).await?;
                self.slot_absent_since.remove(slot);
            }
        }
        sql::close(conn).await;
        Ok(())
    }

    /// On a replica: drops the inactive member slots it kept from a term as
    /// primary (they pin WAL forever; the next leader creates its own).
    /// Checked when the replica starts and then once a minute.
    async fn drop_replica_slots(&mut self, view: &ClusterView, local: &Local) -> anyhow::Result<()> {
        if !local.sql.as_ref().is_some_and(|s| s.in_recovery) {
            self.replica_slots_checked = None;
            return Ok(());
        }
        if self.replica_slots_checked.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return Ok(());
        }
        let mut conn = self.connect().await?;
        let stale = sql::inactive_physical_slots(&mut conn).await?;
        let members: Vec<String> = view.members.iter().map(|m| slot_name(&m.name)).collect();
        for slot in stale.iter().filter(|s| members.contains(s)) {
            if self.led_here {
                info!(slot, "dropping a member slot kept from a term as primary");
                sql::drop_slot(&mut conn, slot).await?;
            } else {
                // A replica adopted from Patroni keeps the member slots Patroni
                // kept on it (ready for a failover to this node); they are
                // moved along with replay, as Patroni does, so that they do
                // not pin WAL here.
                sql::advance_slot_to_replay(&mut conn, slot).await?;
            }
        }
        sql::close(conn).await;
        self.replica_slots_checked = Some(Instant::now());
        Ok(())
    }

    /// A handle that wakes the loop early (etcd watch events).
    pub fn waker(&self) -> std::sync::Arc<ClusterWatch> {
        self.wake.clone()
    }

    /// Runs ticks until `shutdown` resolves, then stops PostgreSQL, hands the
    /// leader key over and removes the member key.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // What wakes the loop early when it changes: the postmaster's state,
        // and PostgreSQL's role, streaming and timeline (so the member key and
        // the tick's reason say "streaming" only while it streams).
        let summary = |local: &Local| {
            (
                local.postmaster.state,
                local.sql.as_ref().map(|s| (s.in_recovery, s.replication_state == "streaming", s.timeline)),
            )
        };
        let mut previous_state = summary(&self.local.borrow());
        loop {
            // A tick may wait on PostgreSQL (start, clone); shutdown must not.
            let again = tokio::select! {
                again = self.tick() => again,
                () = &mut shutdown => break,
            };
            if again {
                continue;
            }
            let loop_wait = self.loop_wait;
            let mut lease_rx = self.renewal.as_ref().map(RenewalHandle::subscribe);
            let lease_changed = async {
                match lease_rx.as_mut() {
                    Some(rx) => loop {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        if matches!(*rx.borrow(), LeaseState::Lost { .. }) {
                            return;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let mut local_rx = self.local.clone();
            let local_changed = async {
                loop {
                    if local_rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let state = summary(&local_rx.borrow());
                    if state != previous_state {
                        return state;
                    }
                }
            };
            let wake = self.wake.clone();
            let wake = &wake.wake;
            let command = tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(loop_wait) => None,
                () = wake.notified() => None,
                () = lease_changed => None,
                state = local_changed => {
                    previous_state = state;
                    None
                }
                command = self.commands.recv() => command,
            };
            if let Some((command, reply)) = command {
                info!(?command, "carrying out a request");
                let outcome = self.command(command).await;
                if let Err(status) = &outcome {
                    warn!("request refused or failed: {}", status.message());
                }
                let _ = reply.send(outcome);
            }
        }
        self.shut_down().await;
    }

    /// One request from the gRPC API (or SIGHUP), between ticks.
    async fn command(&mut self, command: crate::grpc::Command) -> Result<crate::grpc::Outcome, tonic::Status> {
        use crate::grpc::{Command, Outcome};
        use ha_proto::v1::ActionReply;
        use tonic::Status;
        let failed = |e: anyhow::Error| Status::unavailable(format!("{e:#}"));
        let reply = |done: bool, message: String| Ok(Outcome::Action(ActionReply { done, message }));
        match command {
            Command::CancelRestart => match self.scheduled_restart.take() {
                Some(_) => {
                    let local = self.local.borrow().clone();
                    let _ = self.publish_member(&local).await;
                    reply(true, "scheduled restart deleted".into())
                }
                None => Err(Status::not_found("no restarts are scheduled")),
            },
            Command::Restart { only_if_pending, role, schedule } if !schedule.is_empty() => {
                let at = time::OffsetDateTime::parse(&schedule, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        Status::invalid_argument(format!(
                            "schedule {schedule:?}: expected an ISO 8601 time with a time zone"
                        ))
                    })?;
                if at <= time::OffsetDateTime::now_utc() {
                    return Err(Status::invalid_argument(format!("schedule {schedule} is in the past")));
                }
                if self.scheduled_restart.is_some() {
                    return Err(Status::already_exists("Another restart is already scheduled"));
                }
                self.scheduled_restart = Some(ScheduledRestart { at, text: schedule.clone(), only_if_pending, role });
                let local = self.local.borrow().clone();
                let _ = self.publish_member(&local).await;
                reply(true, format!("Restart scheduled at {schedule}"))
            }
            Command::Restart { only_if_pending, role, .. } => {
                let local = self.local.borrow().clone();
                let Some(sql) = local.sql else {
                    return self.start_on_request(&role, only_if_pending).await;
                };
                let mine = if sql.in_recovery { "replica" } else { "primary" };
                if !role.is_empty() && role != mine {
                    return reply(false, format!("skipped: {} is a {mine}", self.config.name));
                }
                if only_if_pending && !sql.pending_restart {
                    return reply(false, format!("skipped: {} has no restart pending", self.config.name));
                }
                let started = Instant::now();
                self.callbacks.before_stop(mine).await;
                self.pg.restart().await.map_err(failed)?;
                self.await_local("answer after the restart", |l| l.sql.is_some()).await.map_err(failed)?;
                self.callbacks.fire("restart", mine);
                info!(role = mine, took = ?started.elapsed(), "restarted PostgreSQL on request");
                reply(true, format!("restarted {} ({mine}) in {} ms", self.config.name, started.elapsed().as_millis()))
            }
            Command::Reinitialize => {
                if self.leader_deadline().is_some() {
                    return Err(Status::failed_precondition("I am the leader, can not reinitialize"));
                }
                let view = dcs::read_cluster(&self.etcd, &self.keys)
                    .await
                    .map_err(|e| Status::unavailable(dcs::describe_error(&e)))?;
                if view.leader.is_none() {
                    return Err(Status::failed_precondition("Cluster has no leader, can not reinitialize"));
                }
                self.pg.stop("immediate").await.map_err(failed)?;
                self.await_local("stopped", |l| l.sql.is_none()).await.map_err(failed)?;
                let aside = self.pg.move_aside("reinit").map_err(failed)?;
                self.upstream = None;
                self.wake.wake.notify_one();
                reply(true, format!("reinitialize started: the old data directory is kept at {}", aside.display()))
            }
            Command::Reload => {
                let loaded = pgwarden_config::load(self.config_path.as_deref(), pgwarden_config::Purpose::Agent)
                    .map_err(|e| {
                        Status::invalid_argument(format!("the config file is not valid; nothing changed: {e:#}"))
                    })?;
                let new = loaded.config;
                let fixed =
                    |c: &Config| (c.name.clone(), c.scope.clone(), c.postgresql.data_dir.clone(), c.namespace.clone());
                if fixed(&new) != fixed(&self.config) {
                    return Err(Status::failed_precondition(
                        "name, scope, namespace or data_dir changed: restart pgwarden-agent to apply that",
                    ));
                }
                self.config = new.clone();
                self.callbacks = crate::callbacks::Callbacks::new(&new);
                self.pg.set_config(new);
                let view = dcs::read_cluster(&self.etcd, &self.keys).await.ok();
                let dynamic = self.dynamic(view.as_ref());
                self.rewrite_running_config(view.as_ref(), &dynamic).await.map_err(failed)?;
                info!(origin = %loaded.origin, "config reloaded");
                if let Some(role) = self.seen_running {
                    self.callbacks.fire("reload", role);
                }
                reply(true, format!("reloaded the config of {}", self.config.name))
            }
        }
    }

    /// `POST /restart` of a stopped PostgreSQL starts it, as Patroni does (in
    /// pause the HA loop would not): as the primary on the leader, as a
    /// replica of the leader elsewhere. A former primary's data directory
    /// that does not hold the leader key is refused: it would open a second
    /// writable database.
    async fn start_on_request(
        &mut self,
        role: &str,
        only_if_pending: bool,
    ) -> Result<crate::grpc::Outcome, tonic::Status> {
        use tonic::Status;
        let failed = |e: anyhow::Error| Status::unavailable(format!("{e:#}"));
        let reply =
            |done: bool, message: String| Ok(crate::grpc::Outcome::Action(ha_proto::v1::ActionReply { done, message }));
        if only_if_pending {
            return reply(
                false,
                format!("skipped: PostgreSQL is not running on {}, so no restart is pending", self.config.name),
            );
        }
        let view = dcs::read_cluster(&self.etcd, &self.keys)
            .await
            .map_err(|e| Status::unavailable(dcs::describe_error(&e)))?;
        let dynamic = self.dynamic(Some(&view));
        let local = self.local.borrow().clone();
        let obs = self.observed(Some(&view), &local).await;
        if obs.pg != PgRun::Stopped {
            return Err(Status::failed_precondition("PostgreSQL is starting or stopping here: try again in a moment"));
        }
        let Some(data) = obs.data.clone() else {
            return Err(Status::failed_precondition("PostgreSQL has no data directory here: nothing to start"));
        };
        let (action, starts_as) = if obs.holds_leader && data.was_primary {
            (Action::StartPrimary, "primary")
        } else if data.was_primary {
            return Err(Status::failed_precondition(
                "this data directory was last a primary and this member does not hold the leader key: starting it \
                 would open a second writable database; reinitialize it (or resume, and the HA loop rejoins it)",
            ));
        } else {
            (Action::StartReplica { upstream: view.leader.as_ref().map(|l| l.name.clone()) }, "replica")
        };
        if !role.is_empty() && role != starts_as {
            return reply(false, format!("skipped: {} would start as a {starts_as}", self.config.name));
        }
        let started = Instant::now();
        self.execute(&action, &view, &dynamic, &obs).await.map_err(failed)?;
        self.await_local("answer after the start", |l| l.sql.is_some()).await.map_err(failed)?;
        info!(role = starts_as, took = ?started.elapsed(), "started PostgreSQL on a restart request");
        reply(true, format!("started {} ({starts_as}) in {} ms", self.config.name, started.elapsed().as_millis()))
    }

    /// Fires `on_start`, `on_stop` and `on_role_change` from what PostgreSQL
    /// did since the last look.
    fn derive_callbacks(&mut self) {
        let now = self.local.borrow().sql.as_ref().map(|s| if s.in_recovery { "replica" } else { "primary" });
        match (self.seen_running, now) {
            (None, Some(role)) if self.last_role.is_some_and(|last| last != role) => {
                self.callbacks.fire("role_change", role);
            }
            (None, Some(role)) => self.callbacks.fire("start", role),
            (Some(role), None) => self.callbacks.fire("stop", role),
            (Some(before), Some(role)) if before != role => self.callbacks.fire("role_change", role),
            _ => {}
        }
        self.seen_running = now;
        if now.is_some() {
            self.last_role = now;
        }
    }

    /// Writes the config files for the role PostgreSQL runs in now and
    /// reloads it (parameters, pg_hba); nothing when it does not run.
    async fn rewrite_running_config(
        &mut self,
        view: Option<&ClusterView>,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<()> {
        let local = self.local.borrow().clone();
        let Some(sql) = local.sql else { return Ok(()) };
        let start_as = if !sql.in_recovery {
            StartAs::Primary
        } else {
            let upstream = match (&self.upstream, view) {
                (Some(member), Some(view)) => Some(self.upstream_of(view, member)?),
                _ => None,
            };
            StartAs::Replica { upstream }
        };
        self.pg.write_config(dynamic, &start_as, false)?;
        self.pg.reload().await
    }

    async fn shut_down(&mut self) {
        // Peers racing for the key must not wait for this member.
        self.view.send_modify(|view| view.shutting_down = true);
        let mut stopped = true;
        if self.managed {
            info!("shutting down: stopping PostgreSQL");
            if let Some(role) = self.seen_running {
                self.callbacks.before_stop(role).await;
            }
            if let Err(e) = self.pg.stop("fast").await {
                error!("failed to stop PostgreSQL: {e:#}; stopping it immediately");
                if let Err(e) = self.pg.stop("immediate").await {
                    error!("failed to stop PostgreSQL: {e:#}");
                    stopped = false;
                }
            }
        } else {
            info!("shutting down: leaving PostgreSQL as it is (this agent never managed it)");
        }
        let handle = self.renewal.take();
        if !stopped {
            // A PostgreSQL that may still run as primary keeps the key: it
            // goes only when the lease runs out, after the fencer's deadline
            // (finding 12 of the safety review: it used to be released).
            error!("PostgreSQL did not stop: the leader key is not released; it expires with the lease");
            if let Some(handle) = handle {
                let _ = handle.stop().await;
            }
            return;
        }
        let election = match handle {
            Some(handle) => handle.stop().await,
            None => None,
        };
        if let (Some(mut election), Some(lease)) = (election, self.lease) {
            match election.release(&lease).await {
                Ok(true) => info!("released the leader key"),
                Ok(false) => {}
                Err(e) => warn!("failed to release the leader key: {e}"),
            }
            if let Err(e) = election.revoke(&lease).await {
                warn!("failed to revoke the lease: {e}");
            }
        }
    }
}

/// The WAL receiver's last complaint in the tail of PostgreSQL's log
/// (`FATAL:` / `ERROR:` lines about the primary, WAL streaming or slots),
/// from the message on. `None` without such a line or a readable log.
fn last_receiver_complaint(log_file: &std::path::Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(log_file).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(32 * 1024))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    const ABOUT: [&str; 6] =
        ["primary server", "WAL stream", "replication slot", "pg_hba.conf", "authentication failed", "upstream"];
    // A complaint older than the last "started streaming" is not the cause.
    let line =
        text.lines().rev().take(200).take_while(|line| !line.contains("started streaming WAL")).find(|line| {
            (line.contains("FATAL:") || line.contains("ERROR:")) && ABOUT.iter().any(|a| line.contains(a))
        })?;
    let from = line.find("FATAL:").or_else(|| line.find("ERROR:")).unwrap_or(0);
    Some(line[from..].split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::last_receiver_complaint;

    mod renewals {
        use std::time::Duration;

        use election::{BootInstant, LeaseState};
        use tokio::sync::watch;

        use crate::ha::{HaView, forward_renewals};
        use crate::watchdog::DeviceWatchdog;

        async fn until(what: &str, condition: impl Fn() -> bool) {
            let started = std::time::Instant::now();
            while !condition() {
                assert!(started.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        /// DESIGN invariant 1 (issue 20, finding 13): while the HA loop is
        /// busy in one long action, each renewal still reaches the published
        /// deadline and the watchdog device, without the loop ticking.
        #[tokio::test]
        async fn each_renewal_moves_the_published_deadline_and_feeds_the_watchdog() {
            let config = pgwarden_config::Watchdog {
                mode: pgwarden_config::WatchdogMode::Required,
                device: "/dev/null".into(),
                safety_margin: 5,
            };
            let file = tempfile::tempfile().expect("temp file");
            let watchdog = DeviceWatchdog::armed_on(config, file).shared();
            let keepalives = || watchdog.lock().expect("watchdog").keepalives();
            let first = BootInstant::now() + Duration::from_secs(10);
            let (lease_tx, lease_rx) = watch::channel(LeaseState::Held { lease: 7, deadline: first });
            let (view_tx, view_rx) = watch::channel(HaView::default());
            tokio::spawn(forward_renewals(lease_rx, view_tx.clone(), watchdog.clone()));

            // Not published as leader by the loop yet: nothing moves.
            lease_tx.send_replace(LeaseState::Held { lease: 7, deadline: first + Duration::from_secs(1) });
            tokio::task::yield_now().await;
            // The loop publishes the key as held; renewals now move it.
            view_tx.send_modify(|v| v.leader_deadline = Some(first));
            let renewed = first + Duration::from_secs(2);
            lease_tx.send_replace(LeaseState::Held { lease: 7, deadline: renewed });
            until("the renewed deadline", || view_rx.borrow().leader_deadline == Some(renewed)).await;
            assert_eq!(keepalives(), 1, "one keep-alive, for the renewal made while leading");
            let again = renewed + Duration::from_secs(2);
            lease_tx.send_replace(LeaseState::Held { lease: 7, deadline: again });
            until("the second renewal", || keepalives() == 2).await;
            assert_eq!(view_rx.borrow().leader_deadline, Some(again));

            // A lost lease clears the deadline and feeds nothing.
            lease_tx.send_replace(LeaseState::Lost { lease: 7, reason: "test".into() });
            until("the cleared deadline", || view_rx.borrow().leader_deadline.is_none()).await;
            assert_eq!(keepalives(), 2);
        }
    }

    #[test]
    fn finds_the_wal_receivers_last_complaint_since_it_last_streamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("pg.log");
        std::fs::write(
            &log,
            "2026-12-05 LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n\
             2026-12-05 FATAL:  could not start WAL streaming: ERROR:  replication slot \"node2\" does not exist\n\
             2026-12-05 LOG:  waiting for WAL to become available at 0/3000060\n",
        )
        .expect("write log");
        let why = last_receiver_complaint(&log).expect("a complaint");
        assert!(
            why.starts_with("FATAL: could not start WAL streaming") && why.contains("\"node2\" does not exist"),
            "{why}"
        );
        // Streaming again since: the old complaint is not the cause.
        std::fs::write(
            &log,
            "FATAL:  could not connect to the primary server: connection refused\n\
             LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n",
        )
        .expect("write log");
        assert_eq!(last_receiver_complaint(&log), None);
        assert_eq!(last_receiver_complaint(&dir.path().join("missing.log")), None);
    }
}
