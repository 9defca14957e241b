//! The cluster under simulation: nodes (agent, fencer, PostgreSQL), etcd,
//! the network, clients and operators, driven by one event queue in
//! simulated time. Nothing here reads a clock or a thread: a seed decides
//! everything.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ha_core::sync::Pending;

use crate::model::{Data, Dynamic, Etcd, Failover, NOT_A_COMMIT, Pg, Run, Ssn, Time};
use crate::rng::{Rng, splitmix};

/// The lease keeper's pause after a failed renewal (as `election::keeper`).
pub const RETRY_PAUSE: Time = 200;

/// Timing and sizing of one run.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub ttl: Time,
    pub loop_wait: Time,
    pub fence_margin: Time,
    pub primary_start_timeout: Time,
    pub retry_timeout: Time,
    pub request_timeout: Time,
    /// `maximum_lag_on_failover`, in records.
    pub max_lag: u64,
    /// `maximum_lag_on_syncnode`, in records (`None`: no limit).
    pub max_lag_on_syncnode: Option<u64>,
    /// Faults and operator actions happen until then...
    pub fault_phase: Time,
    /// ...and once all are healed, the cluster must have one primary and
    /// every member streaming within this bound.
    pub heal_bound: Time,
    pub writers: usize,
}

impl Params {
    pub fn for_seed(rng: &mut Rng) -> Self {
        let ttl = [10_000, 15_000, 30_000][rng.pick(3)];
        Self {
            nodes: 3,
            ttl,
            loop_wait: [1_000, 2_000][rng.pick(2)],
            fence_margin: 2_000,
            primary_start_timeout: [3_000, 10_000][rng.pick(2)],
            retry_timeout: ttl / 2,
            request_timeout: 2_000,
            max_lag: 1_000_000,
            // A tight limit in a third of the seeds, drawn from the ttl so
            // that no seed's schedule changes: synchronous standbys are
            // swapped out whenever they fall a few records behind.
            max_lag_on_syncnode: (ttl == 15_000).then_some(3),
            fault_phase: 60_000,
            heal_bound: 4 * ttl + 30_000,
            writers: 3,
        }
    }
}

/// What the agent is in the middle of (a long action split in steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// etcd did not answer the tick's read within the request timeout.
    ReadFailed,
    /// initdb is done: write `initialize`, take the key, start.
    BootstrapDone,
    /// pg_basebackup from `source` completes.
    CloneDone { source: usize },
    /// `pg_ctl start` returned or gave up; the agent looks again.
    StartReturned { budget_end: Time },
    /// `pre_promote` returned: promote.
    Promote,
    /// The promotion's checkpoint is done.
    Promoted,
    /// Waiting for the switchover candidate to have the shutdown checkpoint.
    SwitchoverPoll { candidate: usize, checkpoint: u64, until: Time },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Tick {
        node: usize,
        token: u64,
    },
    Step {
        node: usize,
        epoch: u64,
        step: Step,
    },
    Keeper {
        node: usize,
        epoch: u64,
    },
    FencerCheck {
        node: usize,
        deadline: Time,
    },
    DeadlineWake {
        node: usize,
        deadline: Time,
    },
    /// The fencer's 10 ms poll finds a primary after its deadline lapsed.
    /// A (re)started fencer that has heard nothing from its agent judges a
    /// running primary from etcd (`agent_grace`, 1 s).
    FencerJudge {
        node: usize,
    },
    FencerPoll {
        node: usize,
    },
    PgReady {
        node: usize,
        incarnation: u64,
    },
    Stream {
        node: usize,
    },
    Write {
        writer: usize,
    },
    Fault,
    Operator,
    Heal(Heal),
    HealAll,
    Liveness,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heal {
    AgentResume(usize),
    AgentStart(usize),
    NodeStart(usize),
    FencerStart(usize),
    /// The node crashes now (scheduled by a compound fault).
    Crash(usize),
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub up: bool,
    /// Incarnation: events of a dead agent are dropped.
    pub epoch: u64,
    pub paused_until: Option<Time>,
    pub busy: bool,
    pub tick_token: u64,
    pub lease: Option<u64>,
    /// The lease's deadline as the keeper proved it (global time).
    pub lease_deadline: Time,
    pub lease_lost: bool,
    pub proves_leader: bool,
    pub sync_configured: Vec<String>,
    pub sync_pending: Option<Pending>,
    pub sync_rebuilt: bool,
    /// Quorum commit's settings since its last mark (`ha_core::quorum`).
    pub quorum_ledger: Option<ha_core::quorum::Ledger>,
    /// `synchronous_standby_names` as the agent would write it next.
    pub wanted_ssn: Ssn,
    pub released_at: Option<Time>,
    pub primary_down_since: Option<Time>,
    pub upstream: Option<usize>,
    pub checkpoint_pending: bool,
    pub peer_unknown_since: BTreeMap<usize, Time>,
    /// The last tick's decision (for the trace).
    pub last_reason: String,
    /// failsafe_mode: the promise this member made to a leader cut off
    /// from etcd (that leader, until when). Kept on disk: an agent
    /// restarted meanwhile keeps it.
    pub promise: Option<(usize, Time)>,
    /// The failsafe key's members as last read, while failsafe_mode is on.
    pub failsafe_seen: Option<Vec<usize>>,
    /// A leader cut off from etcd calls its members again then.
    pub next_failsafe_call: Time,
}

impl Agent {
    fn fresh(epoch: u64) -> Self {
        Self {
            up: true,
            epoch,
            paused_until: None,
            busy: false,
            tick_token: 0,
            lease: None,
            lease_deadline: 0,
            lease_lost: false,
            proves_leader: false,
            sync_configured: Vec::new(),
            sync_pending: None,
            sync_rebuilt: false,
            quorum_ledger: None,
            wanted_ssn: Ssn::Async,
            released_at: None,
            primary_down_since: None,
            upstream: None,
            checkpoint_pending: false,
            peer_unknown_since: BTreeMap::new(),
            last_reason: String::new(),
            promise: None,
            failsafe_seen: None,
            next_failsafe_call: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// Local clock rate error, in parts per million (positive: fast).
    pub drift_ppm: i64,
    pub agent: Agent,
    pub fencer_up: bool,
    /// When the fencer went down (its acknowledgements go stale 2 s later).
    pub fencer_down_at: Time,
    /// The deadline the fencer guards (armed), as the agent last streamed it.
    pub fencer_deadline: Option<Time>,
    /// A deadline passed with no later one: the fencer stops any primary.
    pub fencer_lapsed: bool,
    /// The fencer has had a status from the agent since it started.
    pub fencer_heard: bool,
    /// The deadline the fencer remembers on disk (`<data_dir>.pgwarden.fencer-deadline`).
    pub fencer_remembered: Option<Time>,
    pub pg: Pg,
    pub cut_etcd_until: Time,
    pub cut_peers_until: Time,
    /// The agent configured PostgreSQL since synchronous mode last turned
    /// on: from then on, what this primary acknowledges carries the promise.
    pub sync_seen: bool,
    /// The whole machine is down until restarted.
    pub crashed: bool,
}

/// A safety or liveness violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Time,
    pub what: String,
}

/// Knobs the shrinker and the regression cases turn.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Fault draws (by index) that are not applied.
    pub skip_faults: Vec<usize>,
    /// Operator draws (by index) that are not applied.
    pub skip_operators: Vec<usize>,
    pub trace: bool,
}

pub struct World {
    pub now: Time,
    pub p: Params,
    pub rng: Rng,
    /// Fault and operator schedules draw from their own streams, so a
    /// skipped fault leaves the rest of the schedule as it was.
    pub fault_rng: Rng,
    pub op_rng: Rng,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    pub etcd: Etcd,
    /// The config file's `bootstrap.dcs`: what an agent goes by when etcd
    /// does not answer.
    pub bootstrap: Dynamic,
    pub nodes: Vec<Node>,
    pub next_commit: u64,
    /// Commits acknowledged in synchronous mode: (id, lsn).
    pub must_survive: Vec<(u64, u64)>,
    pub acked: u64,
    pub sync_dirty: bool,
    pub violation: Option<Violation>,
    pub trace: Option<Vec<String>>,
    pub processed: u64,
    pub faults_drawn: usize,
    pub ops_drawn: usize,
    pub opts: Options,
    pub healed_at: Option<Time>,
}

impl World {
    pub fn new(seed: u64, opts: Options) -> Self {
        let mut rng = Rng::new(seed);
        let p = Params::for_seed(&mut rng);
        // failsafe_mode in the seeds with a 10 s ttl (a third), drawn from
        // the ttl so that no seed's schedule changes.
        let sync_mode = rng.chance(50);
        let config = Dynamic {
            sync_mode,
            // Quorum commit in a third of the seeds in synchronous mode,
            // derived from the seed so that no seed's schedule changes (and,
            // by the constant, none of the seeds in tests/regressions.rs
            // from before quorum commit leaves the mode it reproduced its
            // finding in).
            quorum: sync_mode && splitmix(seed ^ 5071).is_multiple_of(3),
            strict: rng.chance(30),
            node_count: 1,
            pause: false,
            failsafe: p.ttl == 10_000,
        };
        let nodes = (0..p.nodes)
            .map(|i| Node {
                name: ((b'a' + i as u8) as char).to_string(),
                drift_ppm: rng.range(0, 1000) as i64 - 500,
                agent: Agent::fresh(1),
                fencer_up: true,
                fencer_down_at: 0,
                fencer_deadline: None,
                fencer_lapsed: false,
                fencer_heard: false,
                fencer_remembered: None,
                pg: Pg::new(),
                cut_etcd_until: 0,
                cut_peers_until: 0,
                sync_seen: true,
                crashed: false,
            })
            .collect();
        let fault_rng = Rng::new(rng.next_u64());
        let op_rng = Rng::new(rng.next_u64());
        let trace = opts.trace.then(Vec::new);
        let mut world = Self {
            now: 0,
            p,
            rng,
            fault_rng,
            op_rng,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
            etcd: Etcd::new(config.clone()),
            bootstrap: config,
            nodes,
            next_commit: 1,
            must_survive: Vec::new(),
            acked: 0,
            sync_dirty: false,
            violation: None,
            trace,
            processed: 0,
            faults_drawn: 0,
            ops_drawn: 0,
            opts,
            healed_at: None,
        };
        for i in 0..world.p.nodes {
            let start = world.rng.range(0, 500);
            world.schedule_tick(i, start);
            let epoch = world.nodes[i].agent.epoch;
            world.at(start + 100, Ev::Keeper { node: i, epoch });
            world.at(start + 50, Ev::Stream { node: i });
        }
        for writer in 0..world.p.writers {
            let at = world.rng.range(3_000, 4_000);
            world.at(at, Ev::Write { writer });
        }
        let first_fault = world.fault_rng.range(5_000, 10_000);
        world.at(first_fault, Ev::Fault);
        let first_op = world.op_rng.range(8_000, 15_000);
        world.at(first_op, Ev::Operator);
        let heal = world.p.fault_phase;
        world.at(heal, Ev::HealAll);
        world
    }

    // ------------------------------------------------------- plumbing ----

    pub fn at(&mut self, delay: Time, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue.push(Reverse((self.now + delay, self.seq, self.events.len() - 1)));
    }

    pub fn log(&mut self, node: Option<usize>, text: impl FnOnce() -> String) {
        if let Some(trace) = self.trace.as_mut() {
            let who = node.map_or_else(|| "-".to_string(), |i| self.nodes[i].name.clone());
            trace.push(format!("{:>9.3}s {who:<2} {}", self.now as f64 / 1000.0, text()));
        }
    }

    pub fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.log(None, || format!("VIOLATION: {what}"));
            self.violation = Some(Violation { at: self.now, what });
        }
    }

    /// A local interval of `ms` as global time on node `i`'s clock.
    pub fn local(&self, i: usize, ms: Time) -> Time {
        let rate = 1_000_000 + self.nodes[i].drift_ppm;
        ms * 1_000_000 / rate as u64
    }

    pub fn etcd_ok(&self, i: usize) -> bool {
        !self.nodes[i].crashed && self.now >= self.etcd.down_until && self.now >= self.nodes[i].cut_etcd_until
    }

    pub fn link(&self, i: usize, j: usize) -> bool {
        i == j
            || (!self.nodes[i].crashed
                && !self.nodes[j].crashed
                && self.now >= self.nodes[i].cut_peers_until
                && self.now >= self.nodes[j].cut_peers_until)
    }

    /// The agent counts the fencer as acknowledging (acknowledgements every
    /// 250 ms, stale after 2 s: `FENCER_ACK_MAX_AGE`).
    pub fn fencer_acks(&self, i: usize) -> bool {
        // Up: it acknowledged within the last 250 ms.
        let last_ack = if self.nodes[i].fencer_up { self.now } else { self.nodes[i].fencer_down_at };
        ha_core::fencer_ready(true, Some(last_ack), self.now)
    }

    pub fn agent_alive(&self, i: usize) -> bool {
        let a = &self.nodes[i].agent;
        a.up && a.paused_until.is_none_or(|t| t <= self.now) && !self.nodes[i].crashed
    }

    pub fn schedule_tick(&mut self, i: usize, delay: Time) {
        self.nodes[i].agent.tick_token += 1;
        let token = self.nodes[i].agent.tick_token;
        self.at(delay, Ev::Tick { node: i, token });
    }

    /// The leader key changed hands or went: every idle agent looks now
    /// (the agents watch the leader key).
    pub fn wake_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.agent_alive(i) && !self.nodes[i].agent.busy && self.etcd_ok(i) {
                let delay = self.rng.range(2, 30);
                self.schedule_tick(i, delay);
            }
        }
    }

    // ------------------------------------------------------- the loop ----

    /// Runs to the end; returns the number of events processed.
    pub fn run(&mut self) -> u64 {
        while let Some(Reverse((at, _, index))) = self.queue.pop() {
            let Some(ev) = self.events[index].take() else { continue };
            self.now = at;
            if self.etcd.expire(self.now, self.p.ttl) {
                self.log(None, || "etcd: the leader key's lease expired".into());
                self.wake_all();
            }
            self.processed += 1;
            let done = ev == Ev::Liveness;
            self.handle(ev);
            self.check_safety();
            if self.violation.is_some() || done {
                break;
            }
        }
        self.processed
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, token } => {
                if token == self.nodes[node].agent.tick_token && self.defer_if_paused(node, &Ev::Tick { node, token }) {
                    self.tick(node);
                }
            }
            Ev::Step { node, epoch, step } => {
                if epoch == self.nodes[node].agent.epoch
                    && self.nodes[node].agent.up
                    && self.defer_if_paused(node, &Ev::Step { node, epoch, step: step.clone() })
                {
                    self.step(node, step);
                }
            }
            Ev::Keeper { node, epoch } => {
                if epoch == self.nodes[node].agent.epoch
                    && self.nodes[node].agent.up
                    && self.defer_if_paused(node, &Ev::Keeper { node, epoch })
                {
                    let interval = if self.keeper(node) { self.p.ttl / 4 } else { RETRY_PAUSE };
                    let interval = self.local(node, interval);
                    self.at(interval, Ev::Keeper { node, epoch });
                }
            }
            Ev::FencerCheck { node, deadline } => self.fencer_check(node, deadline),
            Ev::DeadlineWake { node, deadline } => self.deadline_wake(node, deadline),
            Ev::FencerJudge { node } => self.fencer_judge(node),
            Ev::FencerPoll { node } => {
                let n = &mut self.nodes[node];
                let writable = matches!(n.pg.run, Run::Primary | Run::Starting { primary: true, .. });
                if n.fencer_up && n.fencer_lapsed && n.fencer_deadline.is_none() && writable {
                    n.pg.stop_immediate();
                    self.log(Some(node), || "fencer: a primary appeared after the deadline lapsed: stopped".into());
                }
            }
            Ev::PgReady { node, incarnation } => self.pg_ready(node, incarnation),
            Ev::Stream { node } => {
                self.stream(node);
                let next = self.rng.range(50, 150);
                self.at(next, Ev::Stream { node });
            }
            Ev::Write { writer } => {
                self.client_write();
                if self.now < self.p.fault_phase + self.p.heal_bound {
                    let next = self.rng.range(50, 400);
                    self.at(next, Ev::Write { writer });
                }
            }
            Ev::Fault => {
                self.fault();
                let next = self.fault_rng.range(1_500, 6_000);
                if self.now + next < self.p.fault_phase {
                    self.at(next, Ev::Fault);
                }
            }
            Ev::Operator => {
                self.operator();
                let next = self.op_rng.range(4_000, 12_000);
                if self.now + next < self.p.fault_phase {
                    self.at(next, Ev::Operator);
                }
            }
            Ev::Heal(heal) => self.heal(heal),
            Ev::HealAll => self.heal_all(),
            Ev::Liveness => self.check_liveness(),
        }
    }

    /// A stopped (SIGSTOP) agent handles nothing until it resumes: the
    /// event waits. Returns whether to handle it now.
    fn defer_if_paused(&mut self, i: usize, ev: &Ev) -> bool {
        if self.nodes[i].crashed || !self.nodes[i].agent.up {
            return false;
        }
        match self.nodes[i].agent.paused_until {
            Some(until) if until > self.now => {
                let delay = until - self.now;
                self.at(delay, ev.clone());
                false
            }
            _ => true,
        }
    }

    // -------------------------------------------------- PostgreSQL ----

    /// `pg_ctl start`: ready after crash recovery (if it needs one) or a
    /// short start; as primary when the standby signal is gone.
    pub fn pg_start(&mut self, i: usize, primary: bool, upstream: Option<usize>) -> Time {
        let pg = &mut self.nodes[i].pg;
        let took = if pg.needs_recovery { pg.recovery_ms } else { 100 + self.rng.range(0, 400) };
        let pg = &mut self.nodes[i].pg;
        if !primary && let Some(data) = pg.data.as_mut() {
            // The config written for a replica includes standby.signal.
            data.was_primary = false;
        }
        pg.incarnation += 1;
        pg.run = Run::Starting { primary };
        pg.upstream = upstream;
        pg.streaming = false;
        let incarnation = pg.incarnation;
        if primary && self.nodes[i].fencer_up && self.nodes[i].fencer_lapsed {
            self.at(10, Ev::FencerPoll { node: i });
        }
        self.at(took, Ev::PgReady { node: i, incarnation });
        took
    }

    fn pg_ready(&mut self, i: usize, incarnation: u64) {
        if self.nodes[i].pg.incarnation != incarnation || self.nodes[i].crashed {
            return;
        }
        let pg = &mut self.nodes[i].pg;
        let Run::Starting { primary, .. } = pg.run else { return };
        pg.needs_recovery = false;
        if primary {
            pg.run = Run::Primary;
            if let Some(data) = pg.data.as_mut() {
                data.was_primary = true;
            }
            self.log(Some(i), || "PostgreSQL: up as primary".into());
            self.on_new_primary(i);
        } else if pg.data.as_ref().is_some_and(Data::cannot_become_consistent) {
            // "End of WAL reached on timeline 1": it waits for WAL that would
            // take it to its minimum recovery point on the new timeline.
            self.log(Some(i), || {
                "PostgreSQL: cannot become consistent (its WAL forked before it): starting for ever".into()
            });
        } else {
            pg.run = Run::Replica;
            self.log(Some(i), || "PostgreSQL: up as replica".into());
        }
    }

    /// `pg_ctl promote`: a new timeline, its history, an end-of-recovery record.
    pub fn pg_promote(&mut self, i: usize) {
        let id = self.record();
        let pg = &mut self.nodes[i].pg;
        if pg.run != Run::Replica {
            return;
        }
        let Some(data) = pg.data.as_mut() else { return };
        let old = data.timeline;
        let at = data.lsn();
        data.history.push((old, at));
        data.timeline = old + 1;
        data.wal.push(id);
        data.was_primary = true;
        pg.run = Run::Primary;
        pg.upstream = None;
        pg.streaming = false;
        let tl = old + 1;
        self.log(Some(i), || format!("PostgreSQL: promoted onto timeline {tl} at lsn {at}"));
        self.on_new_primary(i);
    }

    /// A fast (clean) shutdown: a shutdown checkpoint, which the connected
    /// standbys receive before the postmaster exits.
    pub fn pg_stop_fast(&mut self, i: usize) -> u64 {
        let id = self.record();
        let primary = self.nodes[i].pg.run == Run::Primary;
        if let Some(data) = self.nodes[i].pg.data.as_mut().filter(|_| primary) {
            data.wal.push(id);
        }
        for r in 0..self.nodes.len() {
            if r != i && self.nodes[r].pg.upstream == Some(i) && self.nodes[r].pg.streaming {
                self.stream(r);
            }
        }
        let pg = &mut self.nodes[i].pg;
        pg.run = Run::Stopped;
        pg.streaming = false;
        pg.waiting.clear();
        pg.incarnation += 1;
        pg.lsn().unwrap_or(0)
    }

    pub fn record(&mut self) -> u64 {
        self.next_commit += 1;
        self.next_commit | NOT_A_COMMIT
    }

    /// One streaming round of replica `r`: PostgreSQL's rules for whether
    /// it may stream at all (timeline history, position), then it receives
    /// everything its upstream has.
    fn stream(&mut self, r: usize) {
        let (run, upstream) = (self.nodes[r].pg.run, self.nodes[r].pg.upstream);
        let Some(u) = upstream.filter(|_| run == Run::Replica) else {
            self.nodes[r].pg.streaming = false;
            return;
        };
        if !self.link(r, u) || !self.nodes[u].pg.running() || self.nodes[u].crashed {
            self.nodes[r].pg.streaming = false;
            return;
        }
        let (Some(mine), Some(theirs)) = (self.nodes[r].pg.data.as_ref(), self.nodes[u].pg.data.as_ref()) else {
            return;
        };
        if mine.sysid != theirs.sysid {
            self.nodes[r].pg.streaming = false;
            return;
        }
        // PostgreSQL: the upstream must have this timeline in its history
        // with a switch point at or after our position, and have WAL up to it.
        let allowed = match theirs.end_of(mine.timeline) {
            Some(end) => mine.lsn() <= end && mine.lsn() <= theirs.lsn(),
            None => false,
        };
        if !allowed {
            // The WAL receiver fetched the newer timeline's history file
            // before it found the fork.
            let newer = (theirs.timeline > mine.timeline).then(|| (theirs.timeline, theirs.history.clone()));
            let pg = &mut self.nodes[r].pg;
            pg.streaming = false;
            if let (Some(data), Some(newer)) = (pg.data.as_mut(), newer) {
                data.fetched = Some(newer);
            }
            return;
        }
        let n = mine.wal.len();
        if mine.wal[..] != theirs.wal[..n] {
            let fork = mine.wal.iter().zip(&theirs.wal).position(|(a, b)| a != b).unwrap_or(n);
            let what = format!(
                "{} streams from {} although its WAL diverged at lsn {} (timeline {} vs {}): PostgreSQL cannot tell, the data is silently corrupt",
                self.nodes[r].name,
                self.nodes[u].name,
                fork + 1,
                mine.timeline,
                theirs.timeline
            );
            self.violate(what);
            return;
        }
        let copy = theirs.clone();
        let pg = &mut self.nodes[r].pg;
        let data = pg.data.as_mut().expect("checked");
        data.wal = copy.wal;
        data.timeline = copy.timeline;
        data.history = copy.history;
        data.fetched = None;
        pg.streaming = true;
        if self.nodes[u].pg.run == Run::Primary {
            self.settle(u);
        }
    }

    /// Acknowledges the waiting commits of primary `p` that its
    /// `synchronous_standby_names` lets through.
    pub fn settle(&mut self, p: usize) {
        if self.nodes[p].pg.waiting.is_empty() {
            return;
        }
        let ssn = self.nodes[p].pg.ssn.clone();
        let waiting = std::mem::take(&mut self.nodes[p].pg.waiting);
        let mut still = Vec::new();
        for (id, lsn) in waiting {
            let ok = match &ssn {
                Ssn::Async => true,
                Ssn::Placeholder => false,
                Ssn::Names(names) => names.iter().all(|name| {
                    self.nodes.iter().any(|n| {
                        n.name == *name && n.pg.data.as_ref().is_some_and(|d| d.wal.get(lsn as usize - 1) == Some(&id))
                    })
                }),
                Ssn::Any { k, names } => {
                    let holding = names
                        .iter()
                        .filter(|name| {
                            self.nodes.iter().any(|n| {
                                n.name == **name
                                    && n.pg.data.as_ref().is_some_and(|d| d.wal.get(lsn as usize - 1) == Some(&id))
                            })
                        })
                        .count();
                    holding >= (*k).max(1)
                }
                Ssn::AnyStandby => self.nodes.iter().enumerate().any(|(j, n)| {
                    j != p
                        && n.pg.run != Run::Primary
                        && n.pg.data.as_ref().is_some_and(|d| d.wal.get(lsn as usize - 1) == Some(&id))
                }),
            };
            if ok {
                self.acknowledge(p, id, lsn);
            } else {
                still.push((id, lsn));
            }
        }
        self.nodes[p].pg.waiting = still;
    }

    fn acknowledge(&mut self, p: usize, id: u64, lsn: u64) {
        self.acked += 1;
        if self.etcd.config.sync_mode && self.nodes[p].sync_seen {
            self.must_survive.push((id, lsn));
            self.sync_dirty = true;
        }
        self.log(Some(p), || format!("client: commit {id} acknowledged at lsn {lsn}"));
    }

    fn client_write(&mut self) {
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].pg.run == Run::Primary && !self.nodes[*i].crashed)
            .collect();
        if primaries.is_empty() {
            return;
        }
        let p = primaries[self.rng.pick(primaries.len())];
        self.next_commit += 1;
        let id = self.next_commit;
        let Some(data) = self.nodes[p].pg.data.as_mut() else { return };
        data.wal.push(id);
        let lsn = data.lsn();
        self.nodes[p].pg.waiting.push((id, lsn));
        self.settle(p);
    }

    /// A node became primary: in synchronous mode it must hold every
    /// acknowledged commit.
    fn on_new_primary(&mut self, i: usize) {
        if self.nodes[i].fencer_up && self.nodes[i].fencer_lapsed {
            self.at(10, Ev::FencerPoll { node: i });
        }
        if !self.etcd.config.sync_mode {
            return;
        }
        let Some(data) = self.nodes[i].pg.data.as_ref() else { return };
        if let Some((id, lsn)) = self.must_survive.iter().find(|(id, lsn)| data.wal.get(*lsn as usize - 1) != Some(id))
        {
            let what = format!(
                "{} became primary without commit {id} (lsn {lsn}), acknowledged in synchronous mode",
                self.nodes[i].name
            );
            self.violate(what);
        }
    }

    // -------------------------------------------------------- fencer ----

    fn fencer_check(&mut self, i: usize, deadline: Time) {
        let node = &mut self.nodes[i];
        if !node.fencer_up || node.crashed || node.fencer_deadline != Some(deadline) {
            return;
        }
        node.fencer_deadline = None;
        node.fencer_lapsed = true;
        if node.pg.run == Run::Primary || matches!(node.pg.run, Run::Starting { primary: true, .. }) {
            node.pg.stop_immediate();
            self.log(Some(i), || "fencer: the leader deadline passed without a renewal: PostgreSQL stopped".into());
        }
    }

    /// A fencer started beside a silent agent: a running primary is guarded
    /// by its leader key's lease in etcd, or fenced when etcd cannot say the
    /// key is this node's (`fencer::judge_from_etcd`).
    fn fencer_judge(&mut self, i: usize) {
        let node = &self.nodes[i];
        let writable = matches!(node.pg.run, Run::Primary | Run::Starting { primary: true, .. });
        if !node.fencer_up || node.crashed || node.fencer_heard || node.fencer_deadline.is_some() || !writable {
            return;
        }
        let lease = self.etcd.leader.filter(|(l, _)| *l == i).and_then(|(_, lease)| self.etcd.leases.get(&lease));
        match lease.filter(|_| self.etcd_ok(i)) {
            Some(lease) => {
                let deadline = lease.expires.saturating_sub(self.p.fence_margin).max(self.now);
                self.arm_fencer(i, deadline);
                self.log(Some(i), || {
                    "fencer: no word from the agent; the leader key's lease bounds this primary".into()
                });
            }
            None => {
                self.nodes[i].pg.stop_immediate();
                self.log(Some(i), || {
                    "fencer: no word from the agent and no leader key of ours: PostgreSQL stopped".into()
                });
            }
        }
    }

    /// The fencer starts (again): it knows no deadline until the agent
    /// streams one, and judges from etcd if none comes.
    fn fencer_start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.fencer_up = true;
        node.fencer_heard = false;
        node.fencer_deadline = None;
        node.fencer_lapsed = false;
        // The deadline guarded before the restart, while it has not passed.
        if let Some(deadline) = node.fencer_remembered.filter(|d| *d > self.now) {
            self.arm_fencer(i, deadline);
        }
        self.at(1_000, Ev::FencerJudge { node: i });
    }

    /// The agent streams its proven deadline to the fencer.
    pub fn arm_fencer(&mut self, i: usize, deadline: Time) {
        let node = &mut self.nodes[i];
        if !node.fencer_up || node.fencer_deadline == Some(deadline) {
            return;
        }
        node.fencer_deadline = Some(deadline);
        node.fencer_remembered = Some(deadline);
        node.fencer_lapsed = false;
        let delay = deadline.saturating_sub(self.now);
        self.at(delay, Ev::FencerCheck { node: i, deadline });
    }

    // ----------------------------------------------- faults, operators ----

    fn fault(&mut self) {
        let index = self.faults_drawn;
        self.faults_drawn += 1;
        let kind = self.fault_rng.pick(9);
        let i = self.fault_rng.pick(self.nodes.len());
        let duration = self.fault_rng.range(500, 2 * self.p.ttl);
        if self.opts.skip_faults.contains(&index) {
            return;
        }
        let name = self.nodes[i].name.clone();
        if self.nodes[i].crashed && kind != 0 {
            return;
        }
        match kind {
            0 => {
                self.etcd.down_until = self.etcd.down_until.max(self.now + duration);
                self.log(None, || format!("fault #{index}: etcd loses its quorum for {duration} ms"));
            }
            1 => {
                self.nodes[i].cut_etcd_until = self.now + duration;
                self.log(None, || format!("fault #{index}: {name} cut off from etcd for {duration} ms"));
            }
            2 => {
                self.nodes[i].cut_peers_until = self.now + duration;
                self.log(None, || format!("fault #{index}: {name} cut off from the other nodes for {duration} ms"));
            }
            3 => {
                let recovery = self.fault_rng.range(100, 2 * self.p.primary_start_timeout);
                self.kill_postgres(i, recovery);
                self.log(None, || {
                    format!("fault #{index}: PostgreSQL on {name} killed (crash recovery {recovery} ms)")
                });
            }
            4 => {
                let recovery = self.fault_rng.range(100, 2 * self.p.primary_start_timeout);
                self.kill_postgres(i, recovery);
                self.nodes[i].crashed = true;
                self.nodes[i].agent.up = false;
                self.nodes[i].agent.epoch += 1;
                self.nodes[i].fencer_up = false;
                self.nodes[i].fencer_deadline = None;
                self.at(duration, Ev::Heal(Heal::NodeStart(i)));
                self.log(None, || format!("fault #{index}: node {name} crashes for {duration} ms"));
            }
            // A frozen agent beside a dead fencer leaves nobody to fence
            // but a watchdog, which the model has not: outside the fault
            // model (DESIGN invariant 1; synchronous mode still loses nothing).
            // Likewise an agent killed (and restarting, with no deadline of
            // its own yet) beside a dead fencer: see ARCHITECTURE.md.
            5 | 6 if !self.nodes[i].fencer_up => {}
            7 if self.nodes[i].agent.paused_until.is_some_and(|t| t > self.now) || !self.nodes[i].agent.up => {}
            5 => {
                let until = self.now + duration;
                self.nodes[i].agent.paused_until = Some(until);
                self.at(duration, Ev::Heal(Heal::AgentResume(i)));
                self.log(None, || {
                    format!("fault #{index}: the agent on {name} is stopped (SIGSTOP) for {duration} ms")
                });
            }
            6 => {
                self.nodes[i].agent.up = false;
                self.nodes[i].agent.epoch += 1;
                let restart = self.fault_rng.range(200, 3_000);
                self.at(restart, Ev::Heal(Heal::AgentStart(i)));
                self.log(None, || format!("fault #{index}: the agent on {name} is killed, restarted in {restart} ms"));
            }
            7 => {
                self.nodes[i].fencer_up = false;
                self.nodes[i].fencer_down_at = self.now;
                self.nodes[i].fencer_deadline = None;
                self.at(duration, Ev::Heal(Heal::FencerStart(i)));
                self.log(None, || format!("fault #{index}: the fencer on {name} is down for {duration} ms"));
            }
            _ => {
                // The sync standby's PostgreSQL killed, and soon after the primary's node.
                let leader = self.etcd.leader.map(|(l, _)| l);
                let standby = self.etcd.sync.as_ref().and_then(|s| s.standbys.first().copied());
                if let (Some(l), Some(s)) = (leader, standby) {
                    let recovery = self.fault_rng.range(100, self.p.primary_start_timeout);
                    self.kill_postgres(s, recovery);
                    let (ln, sn) = (self.nodes[l].name.clone(), self.nodes[s].name.clone());
                    self.log(None, || {
                        format!("fault #{index}: sync standby {sn}'s PostgreSQL killed, then {ln}'s node")
                    });
                    let soon = self.fault_rng.range(50, 1_000);
                    self.at(soon, Ev::Heal(Heal::Crash(l)));
                }
            }
        }
    }

    fn kill_postgres(&mut self, i: usize, recovery: Time) {
        let pg = &mut self.nodes[i].pg;
        if pg.run != Run::Stopped {
            pg.stop_immediate();
            pg.recovery_ms = recovery;
        }
    }

    fn operator(&mut self) {
        let index = self.ops_drawn;
        self.ops_drawn += 1;
        let kind = self.op_rng.pick(7);
        let target = self.op_rng.pick(self.nodes.len());
        let scheduled = self.op_rng.chance(30).then(|| self.now + self.op_rng.range(500, 5_000));
        let named = self.op_rng.chance(60);
        if self.opts.skip_operators.contains(&index) || self.now < self.etcd.down_until {
            return;
        }
        let leader = self.etcd.leader.map(|(l, _)| l);
        let name = self.nodes[target].name.clone();
        match kind {
            0 | 1 => {
                let Some(l) = leader else { return };
                let member = named.then_some(target).filter(|t| *t != l);
                self.etcd.put_failover(Some(Failover { leader: Some(l), member, scheduled_at: scheduled }));
                let who = member.map_or("the best candidate".to_string(), |m| self.nodes[m].name.clone());
                self.log(None, || format!("operator #{index}: switchover to {who} (scheduled: {scheduled:?})"));
            }
            2 => {
                self.etcd.put_failover(Some(Failover { leader: None, member: Some(target), scheduled_at: None }));
                self.log(None, || format!("operator #{index}: failover to {name}"));
            }
            3 => {
                self.toggle(index, "pause", |c| &mut c.pause);
            }
            4 => {
                if !self.toggle(index, "synchronous_mode", |c| &mut c.sync_mode) {
                    self.must_survive.clear();
                }
                // A mode change takes effect at the leader's next loop.
                for node in &mut self.nodes {
                    node.sync_seen = false;
                }
            }
            5 => {
                self.toggle(index, "synchronous_mode_strict", |c| &mut c.strict);
            }
            _ => {
                self.etcd.config.node_count = 3 - self.etcd.config.node_count;
                self.etcd.bump();
                let n = self.etcd.config.node_count;
                self.log(None, || format!("operator #{index}: synchronous_node_count {n}"));
            }
        }
    }

    /// An operator's edit of the `config` key turning `what` over; returns
    /// its new value.
    fn toggle(&mut self, index: usize, what: &str, field: fn(&mut Dynamic) -> &mut bool) -> bool {
        let value = field(&mut self.etcd.config);
        *value = !*value;
        let on = *value;
        self.etcd.bump();
        self.log(None, || format!("operator #{index}: {what} {on}"));
        on
    }

    fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::AgentResume(i) => {
                if self.nodes[i].agent.paused_until.is_some_and(|t| t <= self.now) {
                    self.nodes[i].agent.paused_until = None;
                    self.log(Some(i), || "agent resumed (SIGCONT)".into());
                }
            }
            Heal::AgentStart(i) => {
                if !self.nodes[i].agent.up && !self.nodes[i].crashed {
                    self.start_agent(i);
                }
            }
            Heal::NodeStart(i) => {
                if self.nodes[i].crashed {
                    self.nodes[i].crashed = false;
                    self.fencer_start(i);
                    self.start_agent(i);
                    self.log(Some(i), || "node back".into());
                }
            }
            Heal::Crash(i) => {
                if !self.nodes[i].crashed && self.now < self.p.fault_phase {
                    let recovery = self.rng.range(100, self.p.primary_start_timeout);
                    self.kill_postgres(i, recovery);
                    self.nodes[i].crashed = true;
                    self.nodes[i].agent.up = false;
                    self.nodes[i].agent.epoch += 1;
                    self.nodes[i].fencer_up = false;
                    self.nodes[i].fencer_deadline = None;
                    let back = self.rng.range(1_000, 2 * self.p.ttl);
                    self.at(back, Ev::Heal(Heal::NodeStart(i)));
                    self.log(Some(i), || format!("node crashes for {back} ms"));
                }
            }
            Heal::FencerStart(i) => {
                if !self.nodes[i].crashed && !self.nodes[i].fencer_up {
                    self.fencer_start(i);
                }
            }
        }
    }

    fn start_agent(&mut self, i: usize) {
        let epoch = self.nodes[i].agent.epoch + 1;
        let promise = self.nodes[i].agent.promise;
        self.nodes[i].agent = Agent::fresh(epoch);
        self.nodes[i].agent.promise = promise;
        self.schedule_tick(i, 50);
        self.at(60, Ev::Keeper { node: i, epoch });
        self.log(Some(i), || "agent started".into());
    }

    /// The end of the fault phase: everything is healed; the cluster then
    /// has `heal_bound` to settle.
    fn heal_all(&mut self) {
        self.etcd.down_until = self.now;
        if self.etcd.config.pause {
            self.etcd.config.pause = false;
            self.etcd.bump();
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].cut_etcd_until = self.now;
            self.nodes[i].cut_peers_until = self.now;
            // A stopped agent resumes at its own time (its deferred events
            // are queued for then); the heal bound covers it.
            if self.nodes[i].crashed {
                self.nodes[i].crashed = false;
                self.start_agent(i);
            } else if !self.nodes[i].agent.up {
                self.start_agent(i);
            }
            if !self.nodes[i].fencer_up {
                self.fencer_start(i);
            }
        }
        self.healed_at = Some(self.now);
        self.log(None, || "every fault healed".into());
        self.wake_all();
        let bound = self.p.heal_bound;
        self.at(bound, Ev::Liveness);
    }

    // ---------------------------------------------------- invariants ----

    fn check_safety(&mut self) {
        let primaries: Vec<&str> =
            self.nodes.iter().filter(|n| n.pg.run == Run::Primary).map(|n| n.name.as_str()).collect();
        if primaries.len() > 1 {
            let what = format!("two writers: {} run as primary at once", primaries.join(" and "));
            self.violate(what);
        }
        if let Some((holder, lease)) = self.etcd.leader
            && self.etcd.leases.get(&lease).is_none_or(|l| l.owner != holder)
        {
            let what = format!("the leader key names {} but sits on another node's lease", self.nodes[holder].name);
            self.violate(what);
        }
        // Every acknowledged commit is on all but `quorum` of the standbys
        // the `sync` key lists (all of them out of quorum commit), so any
        // `quorum + 1` of them include one that has it.
        if self.sync_dirty && self.etcd.config.sync_mode {
            self.sync_dirty = false;
            if let Some(sync) = self.etcd.sync.clone() {
                for (id, lsn) in self.must_survive.clone() {
                    let lacking: Vec<&str> = sync
                        .standbys
                        .iter()
                        .filter(|s| {
                            let data = self.nodes[**s].pg.data.as_ref();
                            data.is_none_or(|d| d.wal.get(lsn as usize - 1) != Some(&id))
                        })
                        .map(|s| self.nodes[*s].name.as_str())
                        .collect();
                    if lacking.len() > sync.quorum {
                        let what = format!(
                            "commit {id} (lsn {lsn}) was acknowledged in synchronous mode but {} (listed in sync, \
                             quorum {}) lack it",
                            lacking.join(", "),
                            sync.quorum
                        );
                        self.violate(what);
                        return;
                    }
                }
            }
        }
    }

    fn check_liveness(&mut self) {
        let leader = self.etcd.leader.map(|(l, _)| l);
        let primaries: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].pg.run == Run::Primary).collect();
        let problem = match (leader, primaries.as_slice()) {
            (None, _) => Some("no leader".to_string()),
            (Some(l), [p]) if *p == l => {
                let lagging: Vec<String> = (0..self.nodes.len())
                    .filter(|r| *r != l)
                    .filter(|r| {
                        let pg = &self.nodes[*r].pg;
                        !(pg.run == Run::Replica && pg.upstream == Some(l) && pg.streaming)
                    })
                    .map(|r| format!("{} ({})", self.nodes[r].name, self.nodes[r].agent.last_reason))
                    .collect();
                (!lagging.is_empty()).then(|| format!("not streaming from the leader: {}", lagging.join("; ")))
            }
            (Some(l), _) => Some(format!("leader {} but {} primaries", self.nodes[l].name, primaries.len())),
        };
        if let Some(problem) = problem {
            let what = format!(
                "liveness: {} ms after every fault healed: {problem}; reasons: {}",
                self.p.heal_bound,
                self.nodes
                    .iter()
                    .map(|n| format!("{}: {}", n.name, n.agent.last_reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            self.violate(what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SyncKey;

    fn data(wal: Vec<u64>) -> Data {
        Data { sysid: "7".into(), was_primary: false, wal, timeline: 1, history: Vec::new(), fetched: None }
    }

    /// A quiet world: nothing scheduled, three nodes with the same data.
    fn world() -> World {
        let mut w = World::new(1, Options::default());
        w.queue.clear();
        for node in &mut w.nodes {
            node.pg.data = Some(data(vec![1, 2, 3]));
        }
        w
    }

    #[test]
    fn two_primaries_at_once_are_a_violation() {
        let mut w = world();
        w.nodes[0].pg.run = Run::Primary;
        w.check_safety();
        assert!(w.violation.is_none());
        w.nodes[2].pg.run = Run::Primary;
        w.check_safety();
        assert!(w.violation.as_ref().is_some_and(|v| v.what.starts_with("two writers: a and c")), "{:?}", w.violation);
    }

    #[test]
    fn a_sync_member_without_an_acknowledged_commit_is_a_violation() {
        let mut w = world();
        w.etcd.config.sync_mode = true;
        w.etcd.sync = Some(SyncKey { leader: Some(0), standbys: vec![1], quorum: 0 });
        w.nodes[0].pg.data = Some(data(vec![1, 2, 3, 4]));
        w.must_survive.push((4, 4));
        w.sync_dirty = true;
        w.check_safety();
        assert!(
            w.violation.as_ref().is_some_and(|v| v.what.contains("b (listed in sync, quorum 0) lack it")),
            "{:?}",
            w.violation
        );
        // Quorum commit: one of two voters lacking it is within a quorum of 1.
        let mut w = world();
        w.etcd.config.sync_mode = true;
        w.etcd.sync = Some(SyncKey { leader: Some(0), standbys: vec![1, 2], quorum: 1 });
        w.nodes[2].pg.data = Some(data(vec![1, 2, 3, 4]));
        w.must_survive.push((4, 4));
        w.sync_dirty = true;
        w.check_safety();
        assert!(w.violation.is_none(), "{:?}", w.violation);
        w.nodes[2].pg.data = None;
        w.sync_dirty = true;
        w.check_safety();
        assert!(w.violation.as_ref().is_some_and(|v| v.what.contains("quorum 1")), "{:?}", w.violation);
    }

    #[test]
    fn a_commit_waits_for_any_k_of_the_listed_in_quorum_commit() {
        let mut w = world();
        w.nodes[0].pg.run = Run::Primary;
        w.nodes[0].pg.ssn = Ssn::Any { k: 1, names: vec!["b".into(), "c".into()] };
        w.client_write();
        assert_eq!(w.acked, 0, "not acknowledged before b or c has it");
        w.nodes[2].pg.data = w.nodes[0].pg.data.clone();
        w.settle(0);
        assert_eq!(w.acked, 1, "acknowledged once c has it");
    }

    #[test]
    fn a_commit_waits_for_every_listed_standby() {
        let mut w = world();
        w.nodes[0].pg.run = Run::Primary;
        w.nodes[0].pg.ssn = Ssn::Names(vec!["b".into()]);
        w.client_write();
        assert_eq!(w.acked, 0, "not acknowledged before b has it");
        w.nodes[1].pg.run = Run::Replica;
        w.nodes[1].pg.upstream = Some(0);
        w.stream(1);
        assert_eq!(w.acked, 1, "acknowledged once b flushed it");
        w.nodes[0].pg.ssn = Ssn::Placeholder;
        w.client_write();
        w.stream(1);
        assert_eq!(w.acked, 1, "the placeholder confirms nothing");
    }

    #[test]
    fn streaming_over_diverged_wal_is_a_violation_and_over_a_fork_is_refused() {
        let mut w = world();
        w.nodes[0].pg.run = Run::Primary;
        w.nodes[0].pg.data = Some(data(vec![1, 2, 9, 10]));
        w.nodes[1].pg.run = Run::Replica;
        w.nodes[1].pg.upstream = Some(0);
        w.stream(1);
        assert!(w.violation.as_ref().is_some_and(|v| v.what.contains("diverged at lsn 3")), "{:?}", w.violation);

        // On a later timeline that forked before b's position, PostgreSQL
        // refuses to stream: no violation, no streaming.
        let mut w = world();
        w.nodes[0].pg.run = Run::Primary;
        w.nodes[0].pg.data = Some(Data { timeline: 2, history: vec![(1, 2)], ..data(vec![1, 2, 9, 10]) });
        w.nodes[1].pg.run = Run::Replica;
        w.nodes[1].pg.upstream = Some(0);
        w.stream(1);
        assert!(w.violation.is_none());
        assert!(!w.nodes[1].pg.streaming);
        // Its WAL receiver fetched the new timeline's history first: the next
        // start follows that timeline and never becomes consistent (the
        // asynchronous chaos run's stuck standby), until pg_rewind.
        assert_eq!(w.nodes[1].pg.data.as_ref().and_then(|d| d.fetched.as_ref()).map(|f| f.0), Some(2));
        w.nodes[1].pg.stop_immediate();
        let incarnation = w.nodes[1].pg.incarnation + 1;
        w.pg_start(1, false, Some(0));
        w.pg_ready(1, incarnation);
        assert_eq!(w.nodes[1].pg.run, Run::Starting { primary: false });
        // Replayed only up to the switch point: it starts.
        let mut w = world();
        w.nodes[1].pg.data = Some(Data { fetched: Some((2, vec![(1, 3)])), ..data(vec![1, 2, 3]) });
        let incarnation = w.nodes[1].pg.incarnation + 1;
        w.pg_start(1, false, Some(0));
        w.pg_ready(1, incarnation);
        assert_eq!(w.nodes[1].pg.run, Run::Replica);
    }
}
