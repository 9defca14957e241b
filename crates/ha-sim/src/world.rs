//! The cluster under simulation: nodes (agent, fencer, PostgreSQL), etcd,
//! the network, clients and operators, driven by one event queue in
//! simulated time. Nothing here reads a clock or a thread: a seed decides
//! everything.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ha_core::sync::Pending;

use crate::model::{Data, Dynamic, Etcd, Failover, NOT_A_COMMIT, Pg, Run, Ssn, Time};
use crate::rng::{Rng, splitmix};

mod checks;
mod faults;
mod postgres;

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
    /// Each node's `failover_priority` (with `nofailover: false`): priority
    /// 0 races too, ranked below every other.
    pub failover_priority: Vec<u32>,
}

impl Params {
    pub fn for_seed(rng: &mut Rng) -> Self {
        let ttl = [10_000, 15_000, 30_000][rng.pick(3)];
        let loop_wait = [1_000, 2_000][rng.pick(2)];
        let nodes = 3;
        Self {
            nodes,
            ttl,
            loop_wait,
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
            // Uneven priorities (0 among them) in the seeds with a 1 s
            // loop_wait, drawn from it so that no seed's schedule changes:
            // the race then weighs position against priority.
            failover_priority: (0..nodes).map(|i| if loop_wait == 1_000 { [2, 0, 1][i % 3] } else { 1 }).collect(),
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
