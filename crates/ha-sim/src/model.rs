//! The simulated parts: etcd (revisions, leases, compare-and-swap), and one
//! PostgreSQL per node (WAL as a list of records, timelines and their
//! history, `synchronous_standby_names`, crash recovery, promote, stop
//! modes, streaming with PostgreSQL's own timeline rules, `pg_rewind`).

use std::collections::BTreeMap;

/// Simulated milliseconds since the start of a run.
pub type Time = u64;

/// A WAL record that is not a commit (checkpoint, end of recovery) has this bit set.
pub const NOT_A_COMMIT: u64 = 1 << 63;

// ---------------------------------------------------------------- etcd ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: usize,
    pub expires: Time,
}

/// A member key's content, as the agent publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub running: bool,
    pub lsn: Option<u64>,
    pub timeline: Option<u64>,
    pub has_data: bool,
    pub fencer_ready: bool,
    /// `checkpoint_after_promote: false` while a promotion's checkpoint is pending.
    pub checkpoint_pending: bool,
    /// Its role: a running primary.
    pub primary: bool,
    /// It gave the leader key up itself within the last two ttls.
    pub released_leader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub leader: Option<usize>,
    pub member: Option<usize>,
    pub scheduled_at: Option<Time>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncKey {
    pub leader: Option<usize>,
    pub standbys: Vec<usize>,
    /// Quorum commit's `quorum` (0 otherwise).
    pub quorum: usize,
}

/// The dynamic config (the `config` key) as far as the HA loop reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub sync_mode: bool,
    /// `synchronous_mode: quorum` (with `sync_mode` on).
    pub quorum: bool,
    pub strict: bool,
    pub node_count: usize,
    pub pause: bool,
    /// `failsafe_mode`.
    pub failsafe: bool,
}

/// What one read of the cluster's keys returns.
#[derive(Debug, Clone)]
pub struct View {
    pub initialize: Option<String>,
    pub leader: Option<(usize, u64)>,
    pub sync: Option<SyncKey>,
    pub sync_rev: u64,
    pub failover: Option<Failover>,
    pub failover_rev: u64,
    pub members: BTreeMap<usize, Member>,
    /// (timeline that ended, at which LSN, the member that recorded it).
    pub history: Vec<(u64, u64, usize)>,
    pub optime: Option<u64>,
    pub config: Dynamic,
    /// The `failsafe` key: the members the leader listed.
    pub failsafe: Option<Vec<usize>>,
}

#[derive(Debug, Clone)]
pub struct Etcd {
    pub rev: u64,
    pub next_lease: u64,
    pub leases: BTreeMap<u64, Lease>,
    /// The value and the lease it is bound to (while a bootstrap runs).
    pub initialize: Option<(String, Option<u64>)>,
    pub leader: Option<(usize, u64)>,
    pub sync: Option<SyncKey>,
    pub sync_rev: u64,
    pub failover: Option<Failover>,
    pub failover_rev: u64,
    pub members: BTreeMap<usize, (Member, u64)>,
    pub history: Vec<(u64, u64, usize)>,
    pub optime: Option<u64>,
    pub config: Dynamic,
    pub failsafe: Option<Vec<usize>>,
    /// Unavailable (no quorum) until then.
    pub down_until: Time,
    /// The end of the last outage whose leases were refreshed.
    pub refreshed_after: Time,
}

impl Etcd {
    pub fn new(config: Dynamic) -> Self {
        Self {
            rev: 1,
            next_lease: 0x100,
            leases: BTreeMap::new(),
            initialize: None,
            leader: None,
            sync: None,
            sync_rev: 0,
            failover: None,
            failover_rev: 0,
            members: BTreeMap::new(),
            history: Vec::new(),
            optime: None,
            config,
            failsafe: None,
            down_until: 0,
            refreshed_after: 0,
        }
    }

    pub fn bump(&mut self) -> u64 {
        self.rev += 1;
        self.rev
    }

    /// Leases whose ttl ran out go, with every key bound to them. Returns
    /// whether the leader key went.
    pub fn expire(&mut self, now: Time, ttl: Time) -> bool {
        // Without a quorum nothing expires (a revocation is a write); the
        // leader elected when the quorum returns refreshes every lease to a
        // full ttl (etcd's lessor does on promotion).
        if now < self.down_until {
            return false;
        }
        if self.refreshed_after < self.down_until {
            self.refreshed_after = self.down_until;
            let from = self.down_until;
            for lease in self.leases.values_mut() {
                lease.expires = lease.expires.max(from + ttl);
            }
        }
        let dead: Vec<u64> = self.leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
        if dead.is_empty() {
            return false;
        }
        let mut leader_gone = false;
        for id in dead {
            self.leases.remove(&id);
            if self.leader.is_some_and(|(_, lease)| lease == id) {
                self.leader = None;
                leader_gone = true;
            }
            self.members.retain(|_, (_, lease)| *lease != id);
            if self.initialize.as_ref().is_some_and(|(_, lease)| *lease == Some(id)) {
                self.initialize = None;
            }
            self.bump();
        }
        leader_gone
    }

    pub fn grant(&mut self, owner: usize, now: Time, ttl: Time) -> u64 {
        self.next_lease += 1;
        self.leases.insert(self.next_lease, Lease { owner, expires: now + ttl });
        self.next_lease
    }

    pub fn view(&self) -> View {
        View {
            initialize: self.initialize.as_ref().map(|(v, _)| v.clone()),
            leader: self.leader,
            sync: self.sync.clone(),
            sync_rev: self.sync_rev,
            failover: self.failover.clone(),
            failover_rev: self.failover_rev,
            members: self.members.iter().map(|(n, (m, _))| (*n, m.clone())).collect(),
            history: self.history.clone(),
            optime: self.optime,
            config: self.config.clone(),
            failsafe: self.failsafe.clone(),
        }
    }

    pub fn put_sync(&mut self, key: Option<SyncKey>) {
        self.sync = key;
        self.sync_rev = self.bump();
    }

    pub fn put_failover(&mut self, request: Option<Failover>) {
        self.failover = request;
        self.failover_rev = self.bump();
    }
}

// ---------------------------------------------------------- PostgreSQL ----

/// `synchronous_standby_names` as PostgreSQL runs with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ssn {
    /// Empty: commits are acknowledged at once.
    Async,
    /// `FIRST n (names)` with n = all of them: a commit waits for every one.
    Names(Vec<String>),
    /// Strict mode with no standby: nobody can confirm, commits wait.
    Placeholder,
    /// Quorum commit, `ANY k (names)`: a commit waits for any `k` of them.
    Any { k: usize, names: Vec<String> },
    /// Quorum commit, strict with no standby: `ANY 1 (*)`, any standby.
    AnyStandby,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub sysid: String,
    pub was_primary: bool,
    /// Every record; the LSN of record i is i + 1.
    pub wal: Vec<u64>,
    pub timeline: u64,
    /// For each ancestor timeline, where it ended (PostgreSQL's history file).
    pub history: Vec<(u64, u64)>,
    /// A later timeline's history file, which a standby's WAL receiver
    /// fetched from its upstream before it found that timeline forked
    /// before this data's position: the timeline and its history. The next
    /// start follows it (`recovery_target_timeline = latest`).
    pub fetched: Option<(u64, Vec<(u64, u64)>)>,
}

impl Data {
    pub fn lsn(&self) -> u64 {
        self.wal.len() as u64
    }

    /// Where this data directory's timeline `tl` ends (`u64::MAX`: it is the current one).
    pub fn end_of(&self, tl: u64) -> Option<u64> {
        if tl == self.timeline {
            return Some(u64::MAX);
        }
        self.history.iter().find(|(t, _)| *t == tl).map(|(_, lsn)| *lsn)
    }

    /// The data has replayed past where its own timeline ended in the
    /// history of the timeline it fetched: PostgreSQL can never reach its
    /// minimum recovery point on that timeline, and stays starting.
    pub fn cannot_become_consistent(&self) -> bool {
        self.fetched
            .as_ref()
            .is_some_and(|(_, history)| history.iter().any(|(tl, end)| *tl == self.timeline && self.lsn() > *end))
    }

    /// The LSN up to which `self` and `other` share their timeline
    /// lineage (PostgreSQL's reasoning, by history, not content).
    pub fn fork_point(&self, other: &Data) -> u64 {
        let mine: Vec<u64> = self.history.iter().map(|(t, _)| *t).chain([self.timeline]).collect();
        let common = mine.iter().rev().find(|tl| other.end_of(**tl).is_some()).copied();
        match common {
            Some(tl) => {
                let a = self.end_of(tl).unwrap_or(0).min(self.lsn());
                let b = other.end_of(tl).unwrap_or(0).min(other.lsn());
                a.min(b)
            }
            None => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Stopped,
    /// Started (crash recovery, or a start in progress); ready later.
    Starting {
        primary: bool,
    },
    Primary,
    Replica,
}

#[derive(Debug, Clone)]
pub struct Pg {
    pub run: Run,
    pub data: Option<Data>,
    /// `primary_conninfo`'s member.
    pub upstream: Option<usize>,
    /// The WAL receiver streams.
    pub streaming: bool,
    pub ssn: Ssn,
    /// Killed or stopped immediately: the next start runs crash recovery.
    pub needs_recovery: bool,
    pub recovery_ms: Time,
    /// Commits written here and not yet confirmed: (id, lsn).
    pub waiting: Vec<(u64, u64)>,
    /// Bumped at every start and stop: a stale "ready" event is dropped.
    pub incarnation: u64,
}

impl Pg {
    pub fn new() -> Self {
        Self {
            run: Run::Stopped,
            data: None,
            upstream: None,
            streaming: false,
            ssn: Ssn::Async,
            needs_recovery: false,
            recovery_ms: 0,
            waiting: Vec::new(),
            incarnation: 0,
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.run, Run::Primary | Run::Replica)
    }

    pub fn lsn(&self) -> Option<u64> {
        self.data.as_ref().map(Data::lsn)
    }

    /// Stops at once (immediate shutdown, SIGKILL): what the standbys did
    /// not receive stays only here; waiting commits fail.
    pub fn stop_immediate(&mut self) {
        if self.run != Run::Stopped {
            self.needs_recovery = true;
        }
        self.run = Run::Stopped;
        self.streaming = false;
        self.waiting.clear();
        self.incarnation += 1;
    }
}

impl Default for Pg {
    fn default() -> Self {
        Self::new()
    }
}
