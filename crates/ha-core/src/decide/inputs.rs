//! What `decide` reads and returns: the observed snapshot (data directory,
//! PostgreSQL, peers, the cluster's keys, the lease), the failover request,
//! the fencer's rules of time, and the action with its reason.

use std::fmt;

use crate::candidate::{CandidateRules, Contender};

/// The local data directory, as read from `pg_controldata` and the signal files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    /// The database system identifier.
    pub sysid: String,
    /// The data directory was last a primary (no standby signal file).
    pub was_primary: bool,
    /// The timeline of its latest checkpoint (0 when unknown).
    pub timeline: u64,
    /// Where its valid WAL ends, read while PostgreSQL is stopped (a lower
    /// bound; `None` when unknown or not read).
    pub wal_end: Option<u64>,
    /// `pg_controldata`'s minimum recovery ending location and its timeline,
    /// while PostgreSQL does not answer: the WAL position its pages may
    /// already reflect, which a standby must replay up to before it is
    /// consistent (`None`: zero, or not read).
    pub min_recovery_end: Option<(u64, u64)>,
    /// A base backup or restore never started (a `backup_label` is there): its
    /// recovery replays along the timelines' history from the archive or
    /// its upstream, so it starts as a replica whatever its timeline (pg_rewind
    /// cannot work on it: it has no consistent state of its own yet).
    pub restored_backup: bool,
}

/// What the local PostgreSQL runs as: not at all, not yet (starting or
/// stopping), or a primary or a replica at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunningAs {
    Stopped,
    /// Started or stopping, not yet answering queries.
    Transitioning,
    Primary {
        lsn: u64,
        timeline: u64,
    },
    /// `upstream` is the member named in `primary_conninfo` (`None`: no upstream).
    Replica {
        lsn: u64,
        timeline: u64,
        upstream: Option<String>,
    },
}

/// Another member, as its agent (or its key in etcd) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// It takes part: its agent answers and its PostgreSQL has data.
    pub running: bool,
    /// Its WAL position; `None` while its PostgreSQL does not answer yet
    /// (a running peer without a position makes a candidate wait).
    pub lsn: Option<u64>,
    pub nofailover: bool,
    pub clonefrom: bool,
    /// It advertises a PostgreSQL address to clone or stream from.
    pub reachable: bool,
    /// `tags.failover_priority` (default 1; 0 means never).
    pub priority: u32,
    /// The timeline its member key reports.
    pub timeline: Option<u64>,
    /// Its member key says it has a database: PostgreSQL running, a WAL
    /// position or timeline, or a primary/replica role (Patroni's too).
    pub has_data: bool,
    /// It may take the leader key: its fencer acknowledges (pgwarden's
    /// `fencer_ready` member field; a member without it, such as Patroni's,
    /// counts as able).
    pub can_lead: bool,
    /// It answers as a running, writable primary (asked directly when there
    /// is no leader): while it does, nobody races (Patroni: "primary is
    /// still alive"); it fences itself or takes its key back first.
    pub primary: bool,
    /// It gave the leader key up itself lately (its member key's
    /// `released_leader`): the race does not wait for it. It stays a
    /// candidate for a switchover.
    pub released: bool,
    /// Since when (`Observed::now_ms`'s clock) its agent has said it has
    /// data but has not given a WAL position (its PostgreSQL does not answer
    /// yet). A candidate waits for such a peer at most one ttl
    /// (`Observed::takes_part`).
    pub position_unknown_since_ms: Option<u64>,
}

/// A requested switchover or failover (the `failover` key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRequest {
    /// The leader it is addressed to; `None` for a failover to `candidate`.
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// When it is to happen (its `scheduled_at`).
    pub scheduled: Schedule,
}

/// A request's `scheduled_at`, as the key holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// No `scheduled_at` (or an empty one): at once.
    Now,
    /// At this wall-clock time (Unix milliseconds).
    At(i64),
    /// A `scheduled_at` that is not a time: the request never comes due
    /// (the leader clears it once it is otherwise impossible).
    Unreadable(String),
}

impl FailoverRequest {
    /// Its time has come: it has none, or the wall clock reached it.
    pub fn due(&self, now_unix_ms: i64) -> bool {
        match self.scheduled {
            Schedule::Now => true,
            Schedule::At(at) => at <= now_unix_ms,
            Schedule::Unreadable(_) => false,
        }
    }
}

/// A member that gave the leader key up on purpose at `released_at_ms`
/// still counts as having just released it for two ttls: long enough for a
/// replica to take the key before it may resume on its own, and what its
/// member key's `released_leader` says meanwhile.
pub fn released_recently(released_at_ms: Option<u64>, now_ms: u64, ttl_ms: u64) -> bool {
    released_at_ms.is_some_and(|at| now_ms.saturating_sub(at) < 2 * ttl_ms)
}

/// A fencer acknowledgement older than this does not count (milliseconds).
pub const FENCER_ACK_MAX_AGE_MS: u64 = 2_000;
/// A leader whose fencer has been silent this long hands over; a restarted
/// agent first waits this long for its fencer to reconnect (milliseconds).
pub const FENCER_LOST_AFTER_MS: u64 = 10_000;

/// This member may take the leader key: its fencer acknowledged within
/// `FENCER_ACK_MAX_AGE_MS` (or the config does without one). `last_ack_ms`
/// and `now_ms` are on the agent's clock (`Observed::now_ms`).
pub fn fencer_ready(required: bool, last_ack_ms: Option<u64>, now_ms: u64) -> bool {
    !required || last_ack_ms.is_some_and(|at| now_ms.saturating_sub(at) <= FENCER_ACK_MAX_AGE_MS)
}

/// The fencer beside this agent has been silent for `FENCER_LOST_AFTER_MS`:
/// since its last acknowledgement, or since the agent started (`started_ms`)
/// when it never sent one. Never when the config does without a fencer.
pub fn fencer_lost(required: bool, last_ack_ms: Option<u64>, started_ms: u64, now_ms: u64) -> bool {
    required && now_ms.saturating_sub(last_ack_ms.unwrap_or(started_ms)) > FENCER_LOST_AFTER_MS
}

/// The deadline fast path (DESIGN invariant 1): an agent whose renewal task
/// proved the leader key, and whose deadline passed without a renewal,
/// stops a writable PostgreSQL (primary, or a postmaster that may open as
/// one) before anything else: before any etcd round trip (which may take
/// the whole request timeout, longer than `fence_margin`) and before any
/// cached view that still names it leader. The fencer does the same; this
/// covers a fencer that is down.
pub fn fence_at_once(proving_leader: bool, deadline_live: bool, writable: bool) -> bool {
    proving_leader && !deadline_live && writable
}

/// One instant's view of the world, built by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub me: String,
    /// `None`: no initialised data directory.
    pub data: Option<DataDir>,
    pub pg: RunningAs,
    /// The postmaster is starting up (its pid file says so: crash recovery
    /// or a start in progress), not merely silent to queries.
    pub pg_starting: bool,
    /// The member this agent last named as its standby's upstream
    /// (`primary_conninfo`), known also while PostgreSQL is still starting.
    pub standby_upstream: Option<String>,
    /// The `initialize` key: `None` absent, `Some("")` while a bootstrap runs.
    pub initialize: Option<String>,
    /// Holder of the leader key.
    pub leader: Option<String>,
    /// The renewal task has proven the leader key ours and its deadline has not passed.
    pub holds_leader: bool,
    pub peers: Vec<Peer>,
    pub nofailover: bool,
    /// This member's `tags.failover_priority` (default 1).
    pub priority: u32,
    /// The leader's last published WAL position (`status.optime`).
    pub cluster_optime: Option<u64>,
    pub maximum_lag_on_failover: u64,
    /// The leader's timeline, from its member key.
    pub leader_timeline: Option<u64>,
    /// The leader has checkpointed since its promotion (its member key does
    /// not say `checkpoint_after_promote: false`): pg_rewind can trust it.
    pub leader_checkpointed: bool,
    /// `pause` is set in the dynamic config: no automatic action.
    pub paused: bool,
    pub failover: Option<FailoverRequest>,
    /// The agent's monotonic clock, in milliseconds (the simulator's
    /// simulated time): every `_ms` instant below is on it.
    pub now_ms: u64,
    /// The wall clock (Unix milliseconds), for a request's `scheduled_at`.
    pub now_unix_ms: i64,
    /// The live ttl, in milliseconds.
    pub ttl_ms: u64,
    /// Since when the leader key has been held while PostgreSQL did not run
    /// as primary (`None`: not so).
    pub primary_down_since_ms: Option<u64>,
    /// `primary_start_timeout`, in milliseconds.
    pub primary_start_timeout_ms: u64,
    /// Starts as primary failed outright (no postmaster left running; the
    /// shell asks for two in a row): the key goes at once, as in Patroni,
    /// rather than after `primary_start_timeout`.
    pub primary_start_failed: bool,
    /// The highest timeline the `history` key records a promotion from.
    pub history_timeline: Option<u64>,
    /// The member that recorded that promotion (a candidate records it
    /// before it promotes).
    pub history_author: Option<String>,
    /// Every promotion the `history` key records: the timeline that ended
    /// and the LSN it ended at.
    pub history_switches: Vec<(u64, u64)>,
    /// When this agent last gave the leader key up on purpose (switchover,
    /// or PostgreSQL not back in time); see `Observed::released_leader`.
    pub released_at_ms: Option<u64>,
    /// `synchronous_mode` is on: only a member listed in `sync` may take over.
    pub sync_mode: bool,
    /// The standbys the `sync` key lists.
    pub sync_standbys: Vec<String>,
    /// The leader the `sync` key names: the last primary, which holds every
    /// commit it acknowledged, may take over too (as in Patroni).
    pub sync_leader: Option<String>,
    /// The `sync` key's `quorum` (`synchronous_mode: quorum`; 0 otherwise):
    /// a member taking over needs `quorum + 1` of the leader and the listed
    /// standbys, itself included, no further than its own position
    /// (`quorum_reached`).
    pub sync_quorum: usize,
    /// etcd answered this tick's read: `initialize` and `leader` are what
    /// etcd holds, not unknown.
    pub etcd_answered: bool,
    /// A running replica whose WAL receiver does not stream: why, as far as
    /// the shell can tell (`None` while it streams, or not a replica).
    pub not_streaming: Option<String>,
    /// This member may take the leader key: its fencer acknowledges (or
    /// `require_fencer` is off).
    pub can_lead: bool,
    /// The fencer beside this agent has been silent for a while (not merely
    /// not yet heard from after a start): a leader hands over.
    pub fencer_lost: bool,
    /// An operator asked this member to reinitialize (its data directory is
    /// aside) and it does not run as a replica again yet: carried out in a
    /// pause too.
    pub reinit_requested: bool,
    /// The cluster's dynamic config sets something pgwarden does not
    /// implement and must not ignore (Patroni's `standby_cluster`, a quorum
    /// carried by the `sync` key): what, and what to do.
    pub unsupported: Option<String>,
    /// `tags.replicatefrom`: the member this replica streams from while that
    /// member can serve (cascading replication); the leader otherwise.
    pub replicatefrom: Option<String>,
    /// `tags.nostream`: this replica never streams WAL (it recovers from the
    /// archive only).
    pub nostream: bool,
    /// The peers' own `replicatefrom` tags (peer, the member it streams
    /// from), so that a chain that comes back to this member is not followed.
    pub cascades: Vec<(String, String)>,
    /// `failsafe_mode`: this member accepted a leader's `Failsafe` call (that
    /// leader cannot reach etcd) and its promise still runs: it treats that
    /// member as the leader and takes no part in any race meanwhile.
    pub failsafe_leader: Option<String>,
    /// `failsafe_mode` is on: the members the `failsafe` key lists (empty:
    /// the mode is off, or the key lists nobody). One not listed may not take
    /// the leader key (a leader cut off from etcd would not have asked it).
    pub failsafe_members: Vec<String>,
    /// A replica-creation method of this member works with no member to
    /// copy from (Patroni's `no_leader`: a restore from a backup repository).
    pub clone_without_leader: bool,
    /// The dynamic config sets `standby_cluster`: the leader runs as a
    /// standby of the remote primary (the standby leader) and nobody here
    /// ever promotes.
    pub standby_cluster: bool,
    /// This member's standby follows the remote primary (the last
    /// `primary_conninfo` it wrote names it).
    pub follows_remote: bool,
    /// Patroni's `primary_race_backoff` as this member sees it.
    pub race_backoff: RaceBackoff,
}

/// Patroni's `primary_race_backoff`: once the leader key is gone, a replica
/// whose WAL still arrives waits (up to the backoff) before it races, and
/// every replica waits at least one `loop_wait`: the old primary may still
/// be writing through an etcd hiccup. Waiting only delays a takeover; the
/// key's compare-and-swap and the fencing rules are untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaceBackoff {
    /// `primary_race_backoff` in milliseconds (0: off, the default).
    pub backoff_ms: u64,
    /// `loop_wait` in milliseconds.
    pub loop_wait_ms: u64,
    /// When this member first saw no leader (`None`: it sees one).
    pub since_ms: Option<u64>,
    /// A WAL position was known at its previous tick (Patroni's
    /// `_prev_wal_lsn`): a member that just started does not wait.
    pub had_position: bool,
    /// Its WAL receiver streams and its position moved since that tick.
    pub wal_moved: bool,
}

impl RaceBackoff {
    /// Milliseconds until the race, if it waits now: while the WAL still
    /// moves, and in any case for the first `loop_wait` after the leader
    /// went (Patroni's rule).
    pub fn waits(&self, now_ms: u64) -> Option<u64> {
        if self.backoff_ms == 0 || !self.had_position {
            return None;
        }
        let left = (self.since_ms? + self.backoff_ms).saturating_sub(now_ms);
        let first_loop = left > self.backoff_ms.saturating_sub(self.loop_wait_ms);
        (left > 0 && (self.wal_moved || first_loop)).then_some(left)
    }
}

impl Observed {
    /// The key is held but PostgreSQL has not run as primary for
    /// `primary_start_timeout` (0: at once).
    pub fn start_timed_out(&self) -> bool {
        self.primary_down_since_ms
            .is_some_and(|since| self.now_ms.saturating_sub(since) >= self.primary_start_timeout_ms)
    }

    /// This agent gave the leader key up on purpose within the last two
    /// ttls. It then neither resumes nor races while a member that did not
    /// give the key up may lead, and says so in its member key (peers see
    /// `released`).
    pub fn released_leader(&self) -> bool {
        released_recently(self.released_at_ms, self.now_ms, self.ttl_ms)
    }

    /// A peer takes part in the race: it runs, and if it has not given a WAL
    /// position yet, not for longer than one ttl (a peer whose PostgreSQL
    /// never answers must not hold the race back for ever).
    pub fn takes_part(&self, peer: &Peer) -> bool {
        peer.running
            && !(peer.lsn.is_none()
                && peer.position_unknown_since_ms.is_some_and(|since| self.now_ms.saturating_sub(since) > self.ttl_ms))
    }

    /// The facts the candidate rule reads.
    pub fn candidate_rules(&self) -> CandidateRules<'_> {
        CandidateRules {
            sync_mode: self.sync_mode,
            sync_standbys: &self.sync_standbys,
            sync_leader: self.sync_leader.as_deref(),
            history_timeline: self.history_timeline,
            cluster_optime: self.cluster_optime,
            maximum_lag_on_failover: self.maximum_lag_on_failover,
            failsafe_members: &self.failsafe_members,
        }
    }

    /// A peer, for the candidate rule.
    pub fn contender<'a>(&self, peer: &'a Peer) -> Contender<'a> {
        Contender {
            name: &peer.name,
            nofailover: peer.nofailover,
            priority: peer.priority,
            running: self.takes_part(peer),
            can_lead: peer.can_lead,
            timeline: peer.timeline,
            lsn: peer.lsn,
        }
    }

    /// This member as a running replica at `lsn` on `timeline`, for the
    /// candidate rule (its own fencer is checked by `decide` itself).
    pub(crate) fn contender_self(&self, lsn: u64, timeline: u64) -> Contender<'_> {
        Contender {
            name: &self.me,
            nofailover: self.nofailover,
            priority: self.priority,
            running: true,
            can_lead: true,
            timeline: Some(timeline),
            lsn: Some(lsn),
        }
    }

    /// The failover request, if any, has come due.
    pub(crate) fn request_due(&self) -> bool {
        self.failover.as_ref().is_some_and(|f| f.due(self.now_unix_ms))
    }
}

/// What to do next. Every action is idempotent; the executor stops at the
/// first failure and the next tick observes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for `initialize`; the winner runs initdb, creates the roles,
    /// writes the cluster keys and takes the leader key.
    Bootstrap,
    /// Create a replica's data directory from `source` (the replica methods
    /// in order, pg_basebackup by default).
    Clone { source: String },
    /// Create a replica's data directory with a method that needs no member
    /// to copy from (`no_leader`: a restore from a backup), when there is
    /// no leader and no member to clone.
    CloneWithoutLeader,
    /// Start PostgreSQL as a standby of `upstream` (`None`: recover only).
    StartReplica { upstream: Option<String> },
    /// Standby cluster: start PostgreSQL as a standby of the remote primary
    /// (the standby leader).
    StartStandbyLeader,
    /// Standby cluster: point the running standby at the remote primary.
    FollowRemote,
    /// Standby cluster: a former primary's data directory (the cluster was
    /// demoted) joins the remote primary's timeline, with pg_rewind where it
    /// diverged, then starts as its standby.
    RejoinRemote,
    /// Point a running standby at `upstream` (`None`: stop streaming, for
    /// `nostream`).
    Follow { upstream: Option<String> },
    /// Take the leader key (create iff absent, or re-bind our own key).
    AcquireLeader,
    /// Start PostgreSQL as the primary; the leader key is held.
    StartPrimary,
    /// Promote the running standby; the leader key is held.
    Promote,
    /// Stop PostgreSQL at once (immediate shutdown): a primary without the key.
    Demote,
    /// Give the leader key up so a replica takes over (PostgreSQL is not
    /// coming back in time).
    ReleaseLeader,
    /// The planned hand-over: checkpoint, clean shutdown, wait until the
    /// candidate (chosen here when `None`) has the shutdown checkpoint,
    /// release the key.
    Switchover { candidate: Option<String> },
    /// Remove a request that is done, stale or impossible.
    ClearFailover,
    /// A data directory on an older timeline (or a former primary) joins
    /// `leader`: pg_rewind (or a re-clone where allowed), then start as its replica.
    Rejoin { leader: String },
    /// This member recorded a promotion from `timeline` in the `history` key
    /// and never made it (its data is still on that timeline, it holds no
    /// key): withdraw the entry (compare-and-swap), so that the members on
    /// that timeline may race again.
    WithdrawPromotion { timeline: u64 },
}

/// The decision of one tick: why, and what (nothing, or one action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reason: String,
    pub action: Option<Action>,
    /// The node must not take part: its data belongs to another cluster.
    /// Nothing is touched; the reason says why.
    pub refused: bool,
}

impl Decision {
    pub(crate) fn act(reason: impl Into<String>, action: Action) -> Self {
        Self { reason: reason.into(), action: Some(action), refused: false }
    }

    pub(crate) fn idle(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), action: None, refused: false }
    }

    pub(crate) fn refuse(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), action: None, refused: true }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Some(action) => write!(f, "{}: {action:?}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}
