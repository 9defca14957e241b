//! The HA loop: observe (local PostgreSQL, the cluster in etcd, the lease),
//! decide (`ha_core::decide`), execute at most one irreversible action, keep
//! this member's key and (as leader) the cluster's keys current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dcs::{ClusterView, Etcd, Keys, MemberData, Status};
use election::{Acquired, BootInstant, Election, ElectionSettings, Lease, LeaseState, RenewalHandle, spawn_renewal};
use etcd_client::PutOptions;
use ha_core::{Action, DataDir, Observed, Peer, RunningAs, decide};
use pgwarden_config::{Config, DynamicConfig};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::callbacks::{Event, Role};
use crate::local::LocalObservation;
use crate::postgres::{Postgres, StartAs, StopMode, Upstream, slot_name};
use crate::sql;

mod bootstrap;
mod commands;
mod execute;
mod keys;
mod lease;
mod lifecycle;
pub use lifecycle::ClusterWatch;
mod observe;
mod published;
pub use published::PublishedStatus;
use published::pending_reason_json;
mod slots;
mod sync;
mod view;

use lease::{lease_ttl, lock_watchdog};

/// The reason of the `history` entry a candidate writes before it promotes
/// (replaced by PostgreSQL's own entry once promoted).
const PROMOTING: &str = "pgwarden: promoting";

/// When the HA loop ticks next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextTick {
    /// At once: the action taken changed what the next tick will see (a
    /// start, a promotion, a key taken or released).
    AtOnce,
    /// After `loop_wait`, or sooner when the lease, PostgreSQL or etcd
    /// change.
    AfterLoopWait,
}

/// The agent's state between ticks.
pub struct Agent {
    config: Config,
    pg: Postgres,
    etcd: Etcd,
    keys: Keys,
    /// The member lease, its renewal task, and whether it proves the leader key.
    keeper: lease::LeaseKeeper,
    /// Synchronous replication's memory as leader.
    sync: sync::SyncState,
    /// Replication slots' clocks.
    slots: slots::SlotKeeper,
    /// The member key as last written.
    publisher: keys::MemberPublisher,
    upstream: Option<String>,
    /// The running standby follows the remote primary (standby leader of a
    /// standby cluster).
    follows_remote: bool,
    /// The `config` key's revision last written to `patroni.dynamic.json`.
    dynamic_cached: Option<i64>,
    sysid: Option<String>,
    last_optime: Option<u64>,
    /// The permanent slots' positions last published in `status`.
    last_slots: serde_json::Map<String, serde_json::Value>,
    /// The end of the stopped data directory's WAL, by REDO point.
    wal_end_cache: Option<((String, u64), Option<u64>)>,
    /// The latest checkpoint's REDO point and timeline, as last read while
    /// PostgreSQL was stopped.
    redo: Option<(String, u64)>,
    /// The next clone is from the leader (`reinit --from-leader`).
    clone_from_leader: bool,
    /// An operator's reinit is under way (also carried out in a pause).
    reinit_requested: bool,
    /// A restart's `timeout` on the leader: the start timeout until
    /// PostgreSQL runs as primary again (Patroni's `set_start_timeout`).
    start_timeout_override_ms: Option<u64>,
    /// Starts as primary that failed outright in a row (no postmaster left
    /// running): after two (one may be the dead postmaster's leftovers) the
    /// key is given up at once (Patroni's "failed attempt to start").
    primary_start_failures: u32,
    /// `pg_controldata`'s minimum recovery ending location (timeline, LSN),
    /// as last read while PostgreSQL did not answer.
    min_recovery_end: Option<(u64, u64)>,
    /// The agent has acted on the local PostgreSQL, or found it in a cluster
    /// etcd knows: only then does a shutdown stop it.
    managed: bool,
    /// The last answer of `why_not_streaming`, and when it was looked up.
    not_streaming_cache: Option<(Instant, String)>,
    /// (timeline, history entries) last completed from the timeline history file.
    history_checked: Option<(u64, usize)>,
    /// Since when a peer with data has not reported its WAL position.
    peer_unknown_since: HashMap<String, u64>,
    /// Since when (`now_ms`) PostgreSQL has not run as primary while we hold the key.
    primary_down_since_ms: Option<u64>,
    /// Since when this agent sees no leader, and its WAL position at its
    /// last tick (Patroni's `primary_race_backoff`).
    no_leader_since_ms: Option<u64>,
    last_tick_lsn: Option<u64>,
    last_dcs_seen_unix_ms: i64,
    /// Set between taking the key and the first checkpoint after promotion,
    /// published as `checkpoint_after_promote: false` (rejoining nodes wait).
    checkpoint_pending: bool,
    /// When (`now_ms`) this agent last gave the leader key up on purpose.
    released_at_ms: Option<u64>,
    /// The `watchdog:` device, armed while leading.
    watchdog: crate::watchdog::SharedWatchdog,

    last_reason: String,
    /// When the last `ha tick` line was written.
    last_reason_logged: Instant,
    loop_wait: Duration,
    local: watch::Receiver<LocalObservation>,
    /// Asked for a fresh look at the start of each tick.
    observer: crate::local::Observer,
    /// The connection [`Agent::connect`] reuses, with the postmaster it
    /// was made to.
    kept_connection: Option<(u32, sqlx::postgres::PgConnection)>,
    view: watch::Sender<PublishedStatus>,
    wake: std::sync::Arc<ClusterWatch>,
    /// The last cluster view read from etcd, the watch generation it was
    /// read at and when: reused while the watch reports no change.
    cached_view: Option<(ClusterView, u64, Instant)>,
    /// The last read of etcd failed: ticks do not wait for it (`view.rs`),
    /// and `etcd_probe` watches for its return.
    etcd_silent: bool,
    etcd_probe: Option<tokio::task::JoinHandle<bool>>,
    fencer_acks: crate::grpc::FencerAcks,
    /// `failsafe_mode`: the promise this member made, whether it leads, and
    /// (as leader) whether its members keep it running.
    failsafe: crate::failsafe::SharedFailsafe,
    /// What the leader's failsafe calls need, from the last view of etcd.
    failsafe_plan: watch::Sender<crate::failsafe::CallPlan>,
    /// The `failsafe` key as this leader last wrote it.
    failsafe_written: Option<std::collections::BTreeMap<String, String>>,
    /// `failsafe_mode` and the `failsafe` key, as etcd last said.
    failsafe_seen: (bool, Option<std::collections::BTreeMap<String, String>>),
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
    seen_running: Option<Role>,
    last_role: Option<Role>,
}

#[derive(Debug, Clone)]
struct ScheduledRestart {
    at: time::OffsetDateTime,
    /// The request, its `schedule` as given.
    request: ha_proto::v1::RestartRequest,
}

/// Where operator requests come from: the gRPC API's channel, and the
/// config file a reload re-reads.
pub struct Requests {
    pub commands: tokio::sync::mpsc::Receiver<crate::grpc::CommandMsg>,
    pub config_path: Option<std::path::PathBuf>,
    /// `failsafe_mode`'s state, shared with the gRPC `Failsafe` handler.
    pub failsafe: crate::failsafe::SharedFailsafe,
}

/// A tick's observation of the local PostgreSQL is at most this old...
const TICK_FRESH_FOR: Duration = Duration::from_millis(100);
/// ...unless a fresh look takes longer than this (PostgreSQL does not answer):
/// then the tick goes on with the latest, as it did before the observer
/// slowed down when settled.
const TICK_FRESH_WAIT: Duration = Duration::from_millis(250);

/// A fencer acknowledgement older than this does not count.
pub const FENCER_ACK_MAX_AGE: Duration = Duration::from_millis(ha_core::FENCER_ACK_MAX_AGE_MS);

/// How long a cluster view read from etcd is reused while the watch on the
/// cluster's prefix reports no change (a safety net against a watch that
/// went quiet without an error).
const MAX_VIEW_AGE: Duration = Duration::from_secs(10);

impl Agent {
    pub fn new(
        config: Config,
        pg: Postgres,
        etcd: Etcd,
        observer: crate::local::Observer,
        view: watch::Sender<PublishedStatus>,
        fencer_acks: crate::grpc::FencerAcks,
        requests: Requests,
    ) -> Self {
        let local = observer.receiver();
        let Requests { commands, config_path, failsafe } = requests;
        let keys = Keys::new(&config.namespace, &config.scope);
        let watchdog = crate::watchdog::DeviceWatchdog::new(config.watchdog.clone()).shared();
        let callbacks = crate::callbacks::Callbacks::new(&config);
        // The role the data directory last had, so that a former primary
        // coming back as a replica counts as a role change.
        let last_role = pg.has_data().then(|| if pg.was_primary() { Role::Primary } else { Role::Replica });
        Self {
            config,
            pg,
            etcd,
            keys,
            keeper: lease::LeaseKeeper::default(),
            sync: sync::SyncState::default(),
            slots: slots::SlotKeeper::default(),
            publisher: keys::MemberPublisher::default(),
            upstream: None,
            follows_remote: false,
            dynamic_cached: None,
            sysid: None,
            last_optime: None,
            last_slots: serde_json::Map::new(),
            wal_end_cache: None,
            redo: None,
            min_recovery_end: None,
            start_timeout_override_ms: None,
            primary_start_failures: 0,
            clone_from_leader: false,
            reinit_requested: false,
            history_checked: None,
            not_streaming_cache: None,
            managed: false,
            peer_unknown_since: HashMap::new(),
            primary_down_since_ms: None,
            no_leader_since_ms: None,
            last_tick_lsn: None,
            checkpoint_pending: false,
            released_at_ms: None,
            watchdog,
            commands,
            config_path,
            scheduled_restart: None,
            callbacks,
            seen_running: None,
            last_role,
            last_dcs_seen_unix_ms: 0,
            last_reason: String::new(),
            last_reason_logged: Instant::now(),
            loop_wait: Duration::from_secs(1),
            local,
            observer,
            kept_connection: None,
            view,
            wake: std::sync::Arc::new(ClusterWatch::default()),
            cached_view: None,
            etcd_silent: false,
            etcd_probe: None,
            fencer_acks,
            failsafe,
            failsafe_plan: watch::channel(crate::failsafe::CallPlan::default()).0,
            failsafe_written: None,
            failsafe_seen: (false, None),
            started: Instant::now(),
        }
    }

    /// `failsafe_mode` after a tick: what the leader's calls need (kept from
    /// the last view while etcd does not answer), and whether failsafe is
    /// active here (a promise runs, or as leader the members keep it running).
    async fn keep_failsafe_plan(
        &mut self,
        view: Option<&ClusterView>,
        dynamic: &DynamicConfig,
        obs: &Observed,
    ) -> bool {
        if let Some(view) = view {
            self.failsafe_seen = (dynamic.failsafe_mode, view.failsafe.clone());
            let mut listed: std::collections::BTreeMap<String, String> = view.failsafe.clone().unwrap_or_default();
            if let Some(written) = &self.failsafe_written {
                listed.extend(written.clone());
            }
            let me = self.config.name.clone();
            let plan = crate::failsafe::CallPlan {
                enabled: dynamic.failsafe_mode,
                listed: listed.contains_key(&me),
                members: listed
                    .keys()
                    .filter(|name| **name != me)
                    .map(|name| (name.clone(), view.member(name).and_then(|m| m.data.grpc_url.clone())))
                    .collect(),
                conn_url: view.member(&me).map(|m| m.data.conn_url.clone()).unwrap_or_default(),
                api_url: self.config.restapi.api_url(),
                hold: Duration::from_secs(u64::from(dynamic.ttl)),
                margin: self.config.pgwarden.fence_margin,
                every: self.renew_interval(dynamic),
                etcd_seen: self.etcd.last_answer().map(|age| election::BootInstant::now().saturating_sub(age)),
                slot_names: dynamic
                    .slots
                    .keys()
                    .cloned()
                    .chain(listed.keys().filter(|name| **name != me).map(|name| slot_name(name)))
                    .collect(),
            };
            self.failsafe_plan.send_replace(plan);
        }
        let mut failsafe = self.failsafe.lock().await;
        // Neither holding the key nor a primary: this member may promise.
        if !obs.holds_leader && !matches!(obs.pg, RunningAs::Primary { .. }) {
            failsafe.leading = false;
        }
        failsafe.promised_to(election::BootInstant::now()).is_some()
            || (obs.holds_leader && failsafe.kept_running_since.is_some())
    }

    fn dynamic(&self, view: Option<&ClusterView>) -> DynamicConfig {
        // Before the bootstrap writes the key: what it will write.
        let mut dynamic =
            view.and_then(ClusterView::dynamic_config).unwrap_or_else(|| self.config.bootstrap.dcs.clone());
        // This member's own `postgresql.use_slots` wins, as in Patroni.
        if let Some(use_slots) = self.config.postgresql.use_slots {
            dynamic.use_slots = use_slots;
        }
        self.pg.set_dynamic(&dynamic);
        dynamic
    }

    /// Patroni's `patroni.dynamic.json` in the data directory: the last
    /// `config` key seen, which Patroni reads when it starts and etcd has
    /// none (a member moved back to Patroni keeps the cluster's settings).
    /// Written when it changes; a failure is logged.
    fn cache_dynamic_config(&mut self, view: Option<&ClusterView>) {
        let Some((json, revision)) = view.and_then(|v| v.config.as_ref()) else { return };
        // Only into this cluster's own data directory: a foreign one (of
        // another system identifier) is never touched. A directory that
        // stops being ours (a re-clone) gets the file afresh when it is again.
        let ours = self.sysid.is_some() && view.and_then(|v| v.initialize.as_deref()) == self.sysid.as_deref();
        if !ours || !self.pg.has_data() {
            self.dynamic_cached = None;
            return;
        }
        if self.dynamic_cached == Some(*revision) {
            return;
        }
        match crate::postgres::write_private(&self.pg.data_dir.join("patroni.dynamic.json"), &json.to_string()) {
            Ok(()) => self.dynamic_cached = Some(*revision),
            Err(e) => warn!("failed to write patroni.dynamic.json: {e:#}"),
        }
    }

    /// One tick; says when the next one is due.
    pub async fn tick(&mut self) -> NextTick {
        let started = Instant::now();
        // A leader whose deadline passed without a renewal fences before
        // anything else: no etcd round trip first (it may take the whole
        // request timeout, longer than fence_margin) and no cached view that
        // still names it leader (DESIGN invariant 1). The fencer does the
        // same; this covers a fencer that is down.
        let deadline_live = self.leader_deadline().is_some();
        if self.keeper.proves_leader && !deadline_live {
            self.cached_view = None;
        }
        let writable = {
            let local = self.local.borrow();
            match &local.sql {
                Some(sql) => !sql.in_recovery,
                None => !matches!(
                    local.postmaster.state,
                    pg_local::PostmasterState::Stopped | pg_local::PostmasterState::Uninitialized
                ),
            }
        };
        if ha_core::fence_at_once(self.keeper.proves_leader, deadline_live, writable) {
            warn!("the leader deadline passed without a renewal: stopping PostgreSQL before anything else");
            match self.pg.fence().await {
                Ok(()) => info!(from = "primary", to = "stopped", "role change: fenced"),
                Err(e) => error!("failed to fence PostgreSQL: {e:#}"),
            }
        }
        // A promised failsafe leader's call carries its slot positions: the
        // copies here move at once, not after an etcd read that, with etcd
        // out of reach, first waits out its timeout.
        if let Err(e) = self.follow_failsafe_slots().await {
            warn!("failsafe: failed to move the slot copies along: {e:#}");
        }
        let generation = self.wake.generation.load(Ordering::SeqCst);
        let cached = self.cached_view.as_ref().filter(|(_, read_at, at)| {
            self.wake.watching.load(Ordering::SeqCst) && *read_at == generation && at.elapsed() < MAX_VIEW_AGE
        });
        let view = match cached {
            // Kept from the cache: etcd was last seen when it last answered
            // (a renewal of this member's lease, say), not now.
            Some((view, _, _)) => {
                if let Some(age) = self.etcd.last_answer() {
                    self.last_dcs_seen_unix_ms = crate::now_unix_ms() - age.as_millis() as i64;
                }
                Some(view.clone())
            }
            None => self.read_view(generation).await,
        };
        let etcd_read_duration = started.elapsed();
        let dynamic = self.dynamic(view.as_ref());
        self.cache_dynamic_config(view.as_ref());
        self.loop_wait = dynamic.loop_wait();
        if view.is_some()
            && let Err(e) = self.ensure_lease(&dynamic).await
        {
            warn!("failed to {e:#}");
        }
        // A data directory a pg_rewind left half-copied can never be
        // started: moved aside (kept) before anything looks at it, so the
        // node clones afresh, whatever remove_data_directory_on_rewind_failure
        // says (that is about a rewind that failed, not one that broke the
        // directory). Not during a pause: nothing starts it then either.
        if self.pg.rewind_interrupted() && !dynamic.pause {
            match self.pg.move_aside_half_rewound() {
                Ok(aside) => {
                    error!(
                        aside = %aside.display(),
                        "a pg_rewind of this data directory stopped midway: its files are part old, part the \
                         source's, and no start can trust them; moved it aside (kept), cloning afresh"
                    );
                    self.sysid = None;
                }
                Err(e) => error!("a pg_rewind of this data directory stopped midway; moving it aside failed: {e:#}"),
            }
        }
        // As fresh as the observer was when it looked every 100 ms: a
        // settled observer queries once a second, and a tick (a race for the
        // key above all) must not act on a second-old WAL position. Without
        // a leader (a race), a look begun now: the peers answer with one
        // begun after they were asked (`grpc::FRESH_FOR_PEERS`), and this
        // node's own must not be older than theirs (with 100 ms, two
        // replicas each saw itself before the old primary's shutdown
        // checkpoint and the other after it).
        let racing = view.as_ref().is_some_and(|v| v.leader.is_none());
        let fresh_for = if racing { Duration::ZERO } else { TICK_FRESH_FOR };
        let local = self.observer.fresh(fresh_for, TICK_FRESH_WAIT).await;
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
            self.sync.forget();
            self.pg.set_sync_names(
                (dynamic.synchronous_mode != pgwarden_config::SyncMode::Off)
                    .then(|| ha_core::sync::standby_names(&[], true)),
            );
        }
        // Without etcd, `decide` acts only on a primary (or one starting)
        // that can no longer prove the key: everything else waits.
        let decision = decide(&obs);
        // An unchanged decision is logged again once per loop_wait, as
        // Patroni's heartbeat line, unless log.deduplicate_heartbeat_logs.
        let heartbeat =
            !self.config.log.deduplicate_heartbeat_logs && self.last_reason_logged.elapsed() >= self.loop_wait;
        if decision.reason != self.last_reason || decision.action.is_some() || heartbeat {
            self.last_reason_logged = Instant::now();
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
        let mut next = NextTick::AfterLoopWait;
        if let (Some(action), Some(view)) = (&decision.action, view.as_ref()) {
            match self.execute(action, view, &dynamic, &obs).await {
                Ok(after_action) => next = after_action,
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
            if let Err(e) = self.pg.fence().await {
                error!("failed to fence PostgreSQL: {e:#}");
            }
        }
        self.derive_callbacks();
        // A scheduled restart whose time has come (its conditions checked now).
        if let Some(due) = self.scheduled_restart.clone().filter(|s| s.at <= time::OffsetDateTime::now_utc()) {
            self.scheduled_restart = None;
            info!(schedule = %due.request.schedule, "carrying out the scheduled restart");
            let restart =
                crate::grpc::Command::Restart(ha_proto::v1::RestartRequest { schedule: String::new(), ..due.request });
            match self.command(restart).await {
                Ok(crate::grpc::Outcome::Action(reply)) => info!("scheduled restart: {}", reply.message),
                Err(status) => warn!("scheduled restart failed: {}", status.message()),
            }
        }
        // A changed parameter (dynamic config or a reload) reaches PostgreSQL
        // by a reload; one that needs a restart shows as pending_restart. So
        // does a changed `standby_cluster` on a standby leader (a new remote,
        // or archive recovery only: `primary_conninfo`, `restore_command`).
        let remote_changed = self.follows_remote
            && dynamic.standby_cluster.is_some()
            && self.pg.written_remote() != dynamic.standby_cluster;
        // So do changed `pg_hba`, `pg_ident` or `pg_hosts` lines (a reload
        // re-reads them).
        // The role counts: a promotion brings `parameters_primary` and
        // `pg_hba_primary` in, a demotion those of the replica.
        let role = self.running_role(&dynamic);
        if let Some(view) = &view {
            self.pg.set_relays_feedback(slots::relays_feedback(view, &self.config.name, &dynamic));
        }
        let auth_files_changed = self.pg.written_auth_files().is_some_and(|w| w != self.pg.auth_files(&dynamic, role));
        // And a changed `recovery_conf` (the dynamic one, when the local
        // config sets none): reloadable since PostgreSQL 12.
        let recovery_conf_changed = self.pg.recovery_conf_changed(&dynamic);
        if let Some(view) = &view
            && local.sql.is_some()
            && (remote_changed
                || auth_files_changed
                || recovery_conf_changed
                || self
                    .pg
                    .written_parameters()
                    .is_some_and(|written| written != self.pg.parameters(&dynamic, false, role)))
        {
            info!(
                standby_cluster_changed = remote_changed,
                auth_files_changed,
                recovery_conf_changed,
                "PostgreSQL settings changed: rewriting the config and reloading"
            );
            match self.rewrite_running_config(Some(view), &dynamic).await {
                Ok(()) => {
                    if let Some(role) = self.seen_running {
                        self.callbacks.fire(Event::Reload, role);
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
            if obs.holds_leader
                && let Err(e) = self.leader_housekeeping(view, &local, &dynamic).await
            {
                warn!("failed to keep the cluster keys: {e:#}");
            }
            if !obs.holds_leader
                && let Err(e) = self.replica_slots(view, &local, &dynamic).await
            {
                warn!("failed to keep this replica's replication slots: {e:#}");
            }
        }
        let failsafe_active = self.keep_failsafe_plan(view.as_ref(), &dynamic, &obs).await;
        if view.is_none()
            && let Err(e) = self.failsafe_member_slots(&obs).await
        {
            warn!("failsafe: failed to keep the replication slots: {e:#}");
        }
        let listed_in_sync = view
            .as_ref()
            .and_then(|v| v.sync.as_ref())
            .is_some_and(|sync| sync.members().contains(&self.config.name.as_str()));
        self.view.send_replace(PublishedStatus {
            leader: view.as_ref().and_then(|v| v.leader.as_ref().map(|l| l.name.clone())),
            leader_deadline: self.leader_deadline(),
            cluster_optime: view.as_ref().and_then(|v| v.status.as_ref()).map(|s| s.optime),
            reason: decision.reason.clone(),
            refused: decision.refused.then(|| decision.reason.clone()),
            upstream: self.upstream.clone(),
            last_tick_unix_ms: crate::now_unix_ms(),
            shutting_down: false,
            paused: dynamic.pause,
            sync_standby: listed_in_sync && dynamic.synchronous_mode != pgwarden_config::SyncMode::Quorum,
            quorum_standby: listed_in_sync && dynamic.synchronous_mode == pgwarden_config::SyncMode::Quorum,
            ttl: dynamic.ttl,
            maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
            tick_duration: started.elapsed(),
            etcd_read_duration,
            dcs_last_seen_unix_ms: self.last_dcs_seen_unix_ms,
            failsafe_mode: self.failsafe_seen.0,
            failsafe_active,
            failsafe_json: self.failsafe_seen.1.as_ref().map(|m| serde_json::json!(m).to_string()).unwrap_or_default(),
            pending_restart_reason_json: pending_reason_json(&self.pending_reason(&self.local.borrow().clone())),
            tags_json: serde_json::Value::Object(self.config.tags.json.clone()).to_string(),
            noloadbalance: self.config.tags.noloadbalance,
            follows_remote: self.follows_remote,
        });
        next
    }

    /// A connection to the local PostgreSQL: the one kept since the last
    /// use while the same postmaster runs and it still answers, else a new
    /// one (a login costs a SCRAM exchange: most of an idle agent's CPU when
    /// every tick made one). Give it back with [`Agent::release`].
    async fn connect(&mut self) -> anyhow::Result<sqlx::postgres::PgConnection> {
        use sqlx::Connection as _;
        let postmaster = self.local.borrow().postmaster.postmaster_pid;
        if let Some((pid, mut conn)) = self.kept_connection.take()
            && pid == postmaster
            && postmaster != 0
            && tokio::time::timeout(Duration::from_secs(1), conn.ping()).await.is_ok_and(|pinged| pinged.is_ok())
        {
            return Ok(conn);
        }
        sql::connect(&self.config, &self.pg.local, self.pg.port, Duration::from_secs(5)).await
    }

    /// Keeps `conn` for the next [`Agent::connect`].
    fn release(&mut self, conn: sqlx::postgres::PgConnection) {
        let postmaster = self.local.borrow().postmaster.postmaster_pid;
        self.kept_connection = Some((postmaster, conn));
    }

    /// The agent's monotonic clock for `decide`: milliseconds since it started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A handle that wakes the loop early (etcd watch events).
    pub fn waker(&self) -> std::sync::Arc<ClusterWatch> {
        self.wake.clone()
    }
}
