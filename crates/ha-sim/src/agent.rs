//! The agent as the simulation runs it: the same loop as
//! `node-agent/src/ha.rs` (read the cluster, keep the lease, publish the
//! member key, observe, `ha_core::decide`, execute one action, then the
//! leader's housekeeping with `ha_core::sync::next_step`), with each
//! executor reduced to its effect on the simulated etcd and PostgreSQL.
//! The decisions are not modelled: they are the real functions.

use ha_core::sync::{Standby, SyncInput, SyncStep, next_step};
use ha_core::{Action, DataDir, FailoverRequest, Observed, Peer, PgRun, Schedule, decide};

use crate::model::{Data, Failover, Member, Run, Ssn, SyncKey, View};
use crate::world::{Ev, Step, World};

/// How an executed action left the agent.
enum Next {
    /// Look again at once.
    Again,
    /// Wait for `loop_wait`.
    Done,
    /// A long action goes on in steps; the loop resumes when it ends.
    Busy(u64, Step),
}

impl World {
    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The lease keeper proves the leader key and holds its deadline unexpired.
    pub fn holds(&self, i: usize) -> bool {
        let a = &self.nodes[i].agent;
        a.proves_leader && a.lease_deadline > self.now
    }

    /// The renewal task: refresh the lease; when leading, prove the key is
    /// still ours on it. The deadline counts from the refresh's sending. A
    /// deadline that passes without a renewal loses the lease (the tick then
    /// keeps it if etcd still has it, or grants a new one). Returns whether
    /// the renewal succeeded (the next comes a quarter ttl later, else soon).
    pub(crate) fn keeper(&mut self, i: usize) -> bool {
        let Some(lease) = self.nodes[i].agent.lease.filter(|_| !self.nodes[i].agent.lease_lost) else { return true };
        if self.nodes[i].agent.lease_deadline <= self.now {
            let agent = &mut self.nodes[i].agent;
            agent.lease_lost = true;
            agent.proves_leader = false;
            self.log(Some(i), || "lease keeper: the deadline passed without a renewal".into());
            return true;
        }
        if !self.etcd_ok(i) {
            self.failsafe_calls(i);
            return false;
        }
        let expires = self.now + self.p.ttl;
        match self.etcd.leases.get_mut(&lease) {
            Some(l) => l.expires = expires,
            None => {
                let agent = &mut self.nodes[i].agent;
                agent.lease_lost = true;
                agent.proves_leader = false;
                // Lost, whatever a failsafe extension said: the real task
                // publishes no deadline any more.
                agent.lease_deadline = agent.lease_deadline.min(self.now);
                self.log(Some(i), || "lease keeper: the lease is gone".into());
                return true;
            }
        }
        // Never before a failsafe extension still running (the real task
        // publishes the later of the two).
        let deadline =
            (self.now + self.local(i, self.p.ttl - self.p.fence_margin)).max(self.nodes[i].agent.lease_deadline);
        let agent = &mut self.nodes[i].agent;
        agent.lease_deadline = deadline;
        if agent.proves_leader && self.etcd.leader != Some((i, lease)) {
            agent.proves_leader = false;
            agent.lease_lost = true;
            agent.lease_deadline = agent.lease_deadline.min(self.now);
            self.log(Some(i), || "lease keeper: the leader key is no longer ours".into());
        } else if agent.proves_leader {
            // The new deadline reaches the fencer from the keeper (the status
            // stream carries it), not at the end of a loop that may be busy
            // for a long while: also a fencer restarted meanwhile.
            self.nodes[i].fencer_heard |= self.nodes[i].fencer_up;
            self.arm_fencer(i, deadline);
        }
        true
    }

    /// failsafe_mode: a leader whose renewals do not reach etcd calls every
    /// member the failsafe key lists (as last read); when each accepts (it
    /// answers: reachable, its agent running, not a primary, not leading),
    /// each promises to stay out of any race for a ttl from then, and the
    /// leader's deadline moves to a ttl less the fence margin from the call
    /// (each on its own drifting clock).
    fn failsafe_calls(&mut self, i: usize) {
        let agent = &self.nodes[i].agent;
        let Some(members) = agent.failsafe_seen.clone() else { return };
        if !agent.proves_leader || agent.lease_deadline <= self.now || self.now < agent.next_failsafe_call {
            return;
        }
        self.nodes[i].agent.next_failsafe_call = self.now + self.p.ttl / 4;
        if !members.contains(&i) {
            return;
        }
        let others: Vec<usize> = members.into_iter().filter(|j| *j != i).collect();
        let refused = others.iter().copied().find(|&j| {
            !(self.link(i, j)
                && self.agent_alive(j)
                && self.nodes[j].agent.failsafe_seen.is_some()
                && !self.nodes[j].agent.proves_leader
                && !matches!(self.nodes[j].pg.run, Run::Primary | Run::Starting { primary: true, .. }))
        });
        if let Some(j) = refused {
            let who = self.nodes[j].name.clone();
            self.log(Some(i), || format!("failsafe: {who} does not accept: no extension"));
            return;
        }
        for &j in &others {
            // Never shortened, not even by another leader's call.
            let until = (self.now + self.local(j, self.p.ttl)).max(self.nodes[j].agent.promise.map_or(0, |p| p.1));
            self.nodes[j].agent.promise = Some((i, until));
        }
        let extended = self.now + self.local(i, self.p.ttl - self.p.fence_margin);
        if extended > self.nodes[i].agent.lease_deadline {
            self.nodes[i].agent.lease_deadline = extended;
            self.log(Some(i), || "failsafe: every member accepts: the deadline moves on".into());
            self.arm_fencer(i, extended);
            self.at(extended - self.now, Ev::DeadlineWake { node: i, deadline: extended });
        }
    }

    /// A live lease with a renewal task (the old one while etcd still has it).
    fn ensure_lease(&mut self, i: usize) {
        let agent = &self.nodes[i].agent;
        // The renewal task reports the loss at the deadline itself.
        if agent.lease.is_some() && !agent.lease_lost && agent.lease_deadline > self.now {
            return;
        }
        let deadline = self.now + self.local(i, self.p.ttl - self.p.fence_margin);
        let kept = agent.lease.filter(|l| self.etcd.leases.contains_key(l));
        let id = match kept {
            Some(id) => {
                if let Some(l) = self.etcd.leases.get_mut(&id) {
                    l.expires = self.now + self.p.ttl;
                }
                id
            }
            None => self.etcd.grant(i, self.now, self.p.ttl),
        };
        let agent = &mut self.nodes[i].agent;
        agent.lease = Some(id);
        agent.lease_lost = false;
        agent.proves_leader = false;
        agent.lease_deadline = deadline;
    }

    fn publish_member(&mut self, i: usize) {
        let Some(lease) = self.nodes[i].agent.lease else { return };
        if !self.etcd_ok(i) || !self.etcd.leases.contains_key(&lease) {
            return;
        }
        let node = &self.nodes[i];
        let running = node.pg.running();
        let member = Member {
            running,
            lsn: running.then(|| node.pg.lsn()).flatten(),
            timeline: running.then(|| node.pg.data.as_ref().map(|d| d.timeline)).flatten(),
            has_data: node.pg.data.is_some(),
            fencer_ready: self.fencer_acks(i),
            checkpoint_pending: node.agent.checkpoint_pending,
            primary: node.pg.run == Run::Primary,
            released_leader: ha_core::released_recently(node.agent.released_at, self.now, self.p.ttl),
        };
        if self.etcd.members.get(&i).is_none_or(|(m, l)| *m != member || *l != lease) {
            self.etcd.members.insert(i, (member, lease));
            self.etcd.bump();
        }
    }

    fn sync_names(&self, i: usize) -> Ssn {
        let config = &self.etcd.config;
        if config.sync_mode && config.quorum {
            let current = self.nodes[i].agent.quorum_ledger.as_ref().map(|l| l.current()).unwrap_or_default();
            return match (current.names.is_empty(), config.strict) {
                (true, true) => Ssn::AnyStandby,
                (true, false) => Ssn::Async,
                (false, _) => Ssn::Any { k: current.k, names: current.names },
            };
        }
        let configured = &self.nodes[i].agent.sync_configured;
        match (config.sync_mode, configured.is_empty()) {
            (false, _) => Ssn::Async,
            (true, true) if config.strict => Ssn::Placeholder,
            (true, true) => Ssn::Async,
            (true, false) => Ssn::Names(configured.clone()),
        }
    }

    /// Writes the config and reloads: PostgreSQL uses `wanted_ssn` now.
    fn apply_ssn(&mut self, i: usize) {
        let wanted = self.nodes[i].agent.wanted_ssn.clone();
        if self.nodes[i].pg.ssn != wanted {
            let shown = wanted.clone();
            self.log(Some(i), || format!("synchronous_standby_names = {shown:?}"));
            self.nodes[i].pg.ssn = wanted;
            self.settle(i);
        }
    }

    fn observe(&mut self, i: usize, view: Option<&View>) -> Observed {
        let now = self.now;
        let holds = self.holds(i);
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let name = |j: usize| names[j].clone();
        let node = &self.nodes[i];
        // As the agent reads them: the newest history file in pg_wal is
        // the data's timeline; pg_controldata's minimum recovery point only
        // while PostgreSQL does not answer (the model replays all its WAL).
        let answers = node.pg.running();
        let data = node.pg.data.as_ref().map(|d| DataDir {
            sysid: d.sysid.clone(),
            was_primary: d.was_primary,
            timeline: d.timeline.max(d.fetched.as_ref().map_or(0, |(tl, _)| *tl)),
            wal_end: Some(d.lsn()),
            min_recovery_end: (!answers && !d.was_primary).then(|| (d.timeline, d.lsn())),
            restored_backup: false,
        });
        let (lsn, timeline) = node.pg.data.as_ref().map_or((0, 0), |d| (d.lsn(), d.timeline));
        let pg = match node.pg.run {
            Run::Primary => PgRun::Primary { lsn, timeline },
            Run::Replica => PgRun::Replica { lsn, timeline, upstream: node.agent.upstream.map(name) },
            Run::Starting { .. } => PgRun::Transitioning,
            Run::Stopped => PgRun::Stopped,
        };
        let not_streaming = (node.pg.run == Run::Replica && !node.pg.streaming).then(|| "not streaming".to_string());
        let mut peers: Vec<Peer> = view
            .map(|v| {
                v.members
                    .iter()
                    .filter(|(j, _)| **j != i)
                    .map(|(j, m)| Peer {
                        name: name(*j),
                        running: m.running,
                        lsn: m.lsn,
                        nofailover: false,
                        clonefrom: false,
                        reachable: true,
                        priority: 1,
                        timeline: m.timeline,
                        has_data: m.has_data,
                        can_lead: m.fencer_ready,
                        released: m.released_leader,
                        primary: m.primary,
                        position_unknown_since_ms: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Without a leader, ask each peer's agent for its position.
        if let Some(v) = view
            && v.leader.is_none()
        {
            for peer in &mut peers {
                let j = self.index_of(&peer.name).expect("a member is a node");
                if !self.link(i, j) || !self.agent_alive(j) {
                    peer.running = false;
                    peer.primary = false;
                    continue;
                }
                let other = &self.nodes[j];
                peer.running = other.pg.data.is_some();
                peer.primary = other.pg.run == Run::Primary;
                peer.lsn = other.pg.running().then(|| other.pg.lsn()).flatten();
                if peer.running && peer.lsn.is_none() {
                    peer.position_unknown_since_ms =
                        Some(*self.nodes[i].agent.peer_unknown_since.entry(j).or_insert(now));
                } else {
                    self.nodes[i].agent.peer_unknown_since.remove(&j);
                }
            }
        }
        let node = &self.nodes[i];
        let lease = node.agent.lease;
        let holds_leader = holds && view.is_none_or(|v| v.leader.is_some_and(|(l, ls)| l == i && Some(ls) == lease));
        let agent = &mut self.nodes[i].agent;
        if holds_leader && !matches!(pg, PgRun::Primary { .. }) {
            agent.primary_down_since.get_or_insert(now);
        } else {
            agent.primary_down_since = None;
        }
        if pg == PgRun::Stopped {
            agent.upstream = None;
        }
        let primary_down_since_ms = agent.primary_down_since;
        let released_at_ms = agent.released_at;
        let config = view.map(|v| v.config.clone()).unwrap_or_else(|| self.bootstrap.clone());
        let leader = view.and_then(|v| v.leader.map(|(l, _)| l));
        let leader_member = leader.and_then(|l| view.and_then(|v| v.members.get(&l)));
        Observed {
            me: name(i),
            data,
            pg_starting: matches!(self.nodes[i].pg.run, Run::Starting { .. }),
            standby_upstream: self.nodes[i].agent.upstream.map(name),
            pg,
            initialize: view.and_then(|v| v.initialize.clone()),
            leader: if view.is_none() && holds_leader { Some(name(i)) } else { leader.map(name) },
            holds_leader,
            peers,
            nofailover: false,
            priority: 1,
            cluster_optime: view.and_then(|v| v.optime),
            maximum_lag_on_failover: self.p.max_lag,
            leader_timeline: leader_member.and_then(|m| m.timeline),
            leader_checkpointed: leader_member.is_none_or(|m| !m.checkpoint_pending),
            paused: config.pause,
            failover: view.and_then(|v| v.failover.as_ref()).map(|f| FailoverRequest {
                leader: f.leader.map(name),
                candidate: f.member.map(name),
                scheduled: f.scheduled_at.map_or(Schedule::Now, |at| Schedule::At(at as i64)),
            }),
            now_ms: now,
            // The simulation has one clock: scheduled times are on it.
            now_unix_ms: now as i64,
            ttl_ms: self.p.ttl,
            primary_down_since_ms,
            primary_start_timeout_ms: self.p.primary_start_timeout,
            primary_start_failed: false,
            history_timeline: view.and_then(|v| v.history.iter().map(|(tl, _, _)| *tl).max()),
            history_switches: view
                .map(|v| v.history.iter().map(|(tl, lsn, _)| (*tl, *lsn)).collect())
                .unwrap_or_default(),
            history_author: view
                .and_then(|v| v.history.iter().max_by_key(|(tl, _, _)| *tl))
                .map(|(_, _, author)| name(*author)),
            released_at_ms,
            sync_mode: config.sync_mode,
            sync_standbys: view
                .and_then(|v| v.sync.as_ref())
                .map(|s| s.standbys.iter().map(|j| name(*j)).collect())
                .unwrap_or_default(),
            sync_leader: view.and_then(|v| v.sync.as_ref()).and_then(|s| s.leader).map(name),
            sync_quorum: view.and_then(|v| v.sync.as_ref()).map_or(0, |s| s.quorum),
            etcd_answered: view.is_some(),
            not_streaming,
            can_lead: self.fencer_acks(i),
            fencer_lost: !self.nodes[i].fencer_up
                && ha_core::fencer_lost(true, Some(self.nodes[i].fencer_down_at), 0, now),
            unsupported: None,
            reinit_requested: false,
            failsafe_leader: self.nodes[i].agent.promise.filter(|(_, until)| *until > now).map(|(l, _)| name(l)),
            failsafe_members: view
                .filter(|v| v.config.failsafe)
                .and_then(|v| v.failsafe.as_ref())
                .map(|m| m.iter().map(|j| name(*j)).collect())
                .unwrap_or_default(),
            replicatefrom: None,
            clone_without_leader: false,
            standby_cluster: false,
            follows_remote: false,
            nostream: false,
            cascades: vec![],
        }
    }

    /// One turn of the HA loop on node `i`: first, a leader whose deadline
    /// passed fences before anything else (no etcd round trip first); then
    /// the cluster is read (a read etcd does not answer fails after the
    /// request timeout) and the turn goes on in [`World::turn`].
    pub(crate) fn tick(&mut self, i: usize) {
        if self.nodes[i].agent.busy {
            return;
        }
        let agent = &self.nodes[i].agent;
        let was_leading = agent.proves_leader || agent.lease_lost;
        let writable = matches!(self.nodes[i].pg.run, Run::Primary | Run::Starting { primary: true, .. });
        if ha_core::fence_at_once(was_leading, agent.lease_deadline > self.now, writable) {
            self.nodes[i].pg.stop_immediate();
            self.nodes[i].agent.proves_leader = false;
            self.log(Some(i), || "the leader deadline passed without a renewal: PostgreSQL stopped at once".into());
        }
        if self.etcd_ok(i) {
            let view = self.etcd.view();
            self.turn(i, Some(view));
        } else {
            self.nodes[i].agent.busy = true;
            let epoch = self.nodes[i].agent.epoch;
            self.at(self.p.request_timeout, Ev::Step { node: i, epoch, step: Step::ReadFailed });
        }
    }

    /// The leader deadline passed (the renewal task reports the loss): an
    /// idle loop looks at once.
    pub(crate) fn deadline_wake(&mut self, i: usize, deadline: u64) {
        let agent = &self.nodes[i].agent;
        if agent.lease_deadline == deadline && !agent.busy && self.agent_alive(i) {
            self.schedule_tick(i, 0);
        }
    }

    /// The rest of a turn, with the cluster as read (`None`: etcd did not answer).
    pub(crate) fn turn(&mut self, i: usize, view: Option<View>) {
        if let Some(v) = &view {
            self.ensure_lease(i);
            self.publish_member(i);
            self.nodes[i].agent.failsafe_seen = v.config.failsafe.then(|| v.failsafe.clone().unwrap_or_default());
        }
        let obs = self.observe(i, view.as_ref());
        if !obs.holds_leader {
            let sync_mode = obs.sync_mode;
            let agent = &mut self.nodes[i].agent;
            agent.sync_configured.clear();
            agent.sync_pending = None;
            agent.sync_rebuilt = false;
            agent.quorum_ledger = None;
            agent.wanted_ssn = if sync_mode { Ssn::Placeholder } else { Ssn::Async };
        }
        let decision = decide(&obs);
        if decision.reason != self.nodes[i].agent.last_reason || decision.action.is_some() {
            let shown = decision.to_string();
            self.log(Some(i), || format!("tick: {shown}"));
            self.nodes[i].agent.last_reason = decision.reason.clone();
        }
        let mut again = false;
        match (&decision.action, view.as_ref()) {
            (Some(action), Some(view)) => match self.execute(i, action, view, &obs) {
                Ok(Next::Again) => again = true,
                Ok(Next::Done) => {}
                Ok(Next::Busy(delay, step)) => {
                    self.nodes[i].agent.busy = true;
                    let epoch = self.nodes[i].agent.epoch;
                    self.at(delay, Ev::Step { node: i, epoch, step });
                    return;
                }
                Err(e) => self.log(Some(i), || format!("failed to {action:?}: {e}")),
            },
            (Some(Action::Demote), None) => {
                self.nodes[i].pg.stop_immediate();
                self.log(Some(i), || "fenced without etcd: PostgreSQL stopped".into());
            }
            _ => {}
        }
        self.tick_end(i, view.is_some(), again);
    }

    /// The rest of a turn: parameters, fencer, member key, the leader's housekeeping.
    fn tick_end(&mut self, i: usize, etcd_seen: bool, again: bool) {
        if etcd_seen && self.nodes[i].pg.running() {
            self.apply_ssn(i);
        }
        // The agent's status reaches the fencer at every turn.
        self.nodes[i].fencer_heard |= self.nodes[i].fencer_up;
        if self.holds(i) {
            let deadline = self.nodes[i].agent.lease_deadline;
            self.arm_fencer(i, deadline);
            self.at(deadline - self.now, Ev::DeadlineWake { node: i, deadline });
        }
        if etcd_seen && self.etcd_ok(i) {
            self.publish_member(i);
            if self.holds(i) && self.nodes[i].pg.run == Run::Primary {
                self.housekeeping(i);
            }
        }
        let delay = if again { 10 } else { self.p.loop_wait };
        self.schedule_tick(i, delay);
    }

    fn finish(&mut self, i: usize, again: bool) {
        self.nodes[i].agent.busy = false;
        let seen = self.etcd_ok(i);
        self.tick_end(i, seen, again);
    }

    fn execute(&mut self, i: usize, action: &Action, view: &View, obs: &Observed) -> Result<Next, String> {
        let lease = self.nodes[i].agent.lease;
        match action {
            Action::Bootstrap => {
                let lease = lease.ok_or("no lease yet")?;
                if self.etcd.initialize.is_some() {
                    return Ok(Next::Again);
                }
                self.etcd.initialize = Some((String::new(), Some(lease)));
                self.etcd.bump();
                Ok(Next::Busy(self.rng.range(500, 1_500), Step::BootstrapDone))
            }
            Action::Clone { source } => {
                let source = self.index_of(source).ok_or("unknown member")?;
                Ok(Next::Busy(self.rng.range(500, 3_000), Step::CloneDone { source }))
            }
            Action::CloneWithoutLeader => Err("the simulation configures no no_leader replica method".into()),
            Action::StartStandbyLeader | Action::FollowRemote | Action::RejoinRemote => {
                Err("the simulation runs no standby cluster (ha-core's property tests cover it)".into())
            }
            Action::StartReplica { upstream } => {
                let upstream = upstream.as_deref().and_then(|u| self.index_of(u));
                self.nodes[i].agent.upstream = upstream;
                self.nodes[i].pg.ssn = self.nodes[i].agent.wanted_ssn.clone();
                let took = self.pg_start(i, false, upstream);
                Ok(Next::Busy(took + 5, Step::StartReturned { budget_end: self.now + took }))
            }
            Action::Follow { upstream } => {
                let u = upstream.as_deref().ok_or("the simulation has no nostream member")?;
                let u = self.index_of(u).ok_or("unknown member")?;
                self.nodes[i].agent.upstream = Some(u);
                let pg = &mut self.nodes[i].pg;
                pg.upstream = Some(u);
                pg.streaming = false;
                Ok(Next::Done)
            }
            Action::AcquireLeader => {
                let lease =
                    lease.filter(|l| self.etcd.leases.contains_key(l)).ok_or("etcd: requested lease not found")?;
                // Re-binding its own key under a running primary needs no
                // fencer: it already leads, and a proven deadline lets the
                // agent fence by itself.
                let rebind = self.nodes[i].pg.run == Run::Primary && self.etcd.leader.is_some_and(|(l, _)| l == i);
                if !rebind && !self.fencer_acks(i) {
                    return Err("no fencer has acknowledged".into());
                }
                if self.nodes[i].pg.run == Run::Replica {
                    self.nodes[i].agent.checkpoint_pending = true;
                    self.publish_member(i);
                }
                match self.etcd.leader {
                    None => {
                        self.etcd.leader = Some((i, lease));
                        self.etcd.bump();
                        self.nodes[i].agent.proves_leader = true;
                        self.keeper(i);
                        self.log(Some(i), || "took the leader key".into());
                        self.wake_all();
                    }
                    Some((holder, _)) if holder == i => {
                        self.etcd.leader = Some((i, lease));
                        self.etcd.bump();
                        self.nodes[i].agent.proves_leader = true;
                        self.keeper(i);
                        self.log(Some(i), || "re-bound the leader key to this agent's lease".into());
                    }
                    Some(_) => self.nodes[i].agent.checkpoint_pending = false,
                }
                Ok(Next::Again)
            }
            Action::StartPrimary => {
                let spent = self.nodes[i].agent.primary_down_since.map_or(0, |since| self.now - since);
                let budget = self.p.primary_start_timeout.saturating_sub(spent).max(1_000);
                self.nodes[i].pg.ssn = self.nodes[i].agent.wanted_ssn.clone();
                let took = self.pg_start(i, true, None);
                Ok(Next::Busy(took.min(budget) + 5, Step::StartReturned { budget_end: self.now + budget }))
            }
            Action::Promote => {
                self.nodes[i].agent.checkpoint_pending = true;
                self.publish_member(i);
                Ok(Next::Busy(self.rng.range(1, 200), Step::Promote))
            }
            Action::Demote => {
                let what = if self.nodes[i].pg.run == Run::Primary { "fenced" } else { "stopped to rewind" };
                self.nodes[i].pg.stop_immediate();
                self.log(Some(i), || format!("role change: {what}"));
                Ok(Next::Again)
            }
            Action::ReleaseLeader => {
                self.release(i);
                Ok(Next::Again)
            }
            Action::ClearFailover => {
                if self.etcd.failover_rev == view.failover_rev {
                    self.etcd.put_failover(None);
                }
                Ok(Next::Again)
            }
            Action::Switchover { candidate } => {
                let candidate = match candidate {
                    Some(c) => self.index_of(c).ok_or("unknown candidate")?,
                    None => {
                        let best = ha_core::switchover_candidate(obs).ok_or("no candidate for the switchover")?;
                        let best = self.index_of(&best).ok_or("unknown candidate")?;
                        if self.etcd.failover_rev != view.failover_rev {
                            return Err("the switchover request changed while choosing a candidate".into());
                        }
                        self.etcd.put_failover(Some(Failover {
                            leader: Some(i),
                            member: Some(best),
                            scheduled_at: None,
                        }));
                        best
                    }
                };
                let checkpoint = self.pg_stop_fast(i);
                let until = self.now + self.p.retry_timeout.max(5_000);
                self.log(Some(i), || format!("switchover: clean shutdown at lsn {checkpoint}"));
                Ok(Next::Busy(20, Step::SwitchoverPoll { candidate, checkpoint, until }))
            }
            Action::WithdrawPromotion { timeline } => {
                let timeline = *timeline;
                self.etcd.history.retain(|(tl, _, _)| *tl < timeline);
                self.etcd.bump();
                Ok(Next::Again)
            }
            Action::Rejoin { leader } => {
                let l = self.index_of(leader).ok_or("unknown member")?;
                self.rewind(i, l)?;
                self.nodes[i].agent.upstream = Some(l);
                let took = self.pg_start(i, false, Some(l));
                Ok(Next::Busy(took + 5, Step::StartReturned { budget_end: self.now + took }))
            }
        }
    }

    fn release(&mut self, i: usize) {
        let lease = self.nodes[i].agent.lease;
        if lease.is_some_and(|l| self.etcd.leader == Some((i, l))) {
            self.etcd.leader = None;
            self.etcd.bump();
            self.log(Some(i), || "released the leader key".into());
            self.wake_all();
        }
        let agent = &mut self.nodes[i].agent;
        agent.proves_leader = false;
        agent.released_at = Some(self.now);
    }

    /// pg_rewind against `source`, PostgreSQL's way: by timeline history.
    /// Same timeline: "no rewind required".
    fn rewind(&mut self, i: usize, source: usize) -> Result<(), String> {
        if !self.link(i, source) || !self.nodes[source].pg.running() {
            return Err("pg_rewind: the source does not answer".into());
        }
        let theirs = self.nodes[source].pg.data.clone().ok_or("no source data")?;
        let mine = self.nodes[i].pg.data.as_mut().ok_or("no data")?;
        if mine.timeline != theirs.timeline && mine.lsn() > mine.fork_point(&theirs) {
            let fork = mine.fork_point(&theirs);
            *mine = Data { was_primary: false, fetched: None, ..theirs };
            self.sync_dirty = true;
            self.log(Some(i), || format!("pg_rewind: diverged at lsn {fork}, rewound"));
        }
        Ok(())
    }

    pub(crate) fn step(&mut self, i: usize, step: Step) {
        match step {
            Step::BootstrapDone => {
                let lease = self.nodes[i].agent.lease;
                let ours = self.etcd.initialize.as_ref().is_some_and(|(v, l)| v.is_empty() && *l == lease);
                if !self.etcd_ok(i) || !ours || self.etcd.leader.is_some() || lease.is_none() {
                    if ours && self.etcd_ok(i) {
                        self.etcd.initialize = None;
                        self.etcd.bump();
                    }
                    self.log(Some(i), || "bootstrap failed, cleaned up".into());
                    return self.finish(i, false);
                }
                let sysid = format!("{}", self.rng.next_u64() >> 1);
                let first = self.record();
                self.nodes[i].pg.data = Some(Data {
                    sysid: sysid.clone(),
                    was_primary: true,
                    wal: vec![first],
                    timeline: 1,
                    history: Vec::new(),
                    fetched: None,
                });
                self.etcd.initialize = Some((sysid, None));
                self.etcd.leader = lease.map(|l| (i, l));
                self.etcd.bump();
                self.nodes[i].agent.proves_leader = true;
                self.keeper(i);
                self.log(Some(i), || "bootstrapped the cluster, took the leader key".into());
                self.wake_all();
                let took = self.pg_start(i, true, None);
                let epoch = self.nodes[i].agent.epoch;
                let budget_end = self.now + took;
                self.at(took + 5, Ev::Step { node: i, epoch, step: Step::StartReturned { budget_end } });
            }
            Step::CloneDone { source } => {
                let copy = self.nodes[source]
                    .pg
                    .data
                    .clone()
                    .filter(|_| self.link(i, source) && self.nodes[source].pg.running());
                match copy {
                    Some(data) => {
                        self.nodes[i].pg.data = Some(Data { was_primary: false, fetched: None, ..data });
                        self.nodes[i].pg.needs_recovery = false;
                        self.sync_dirty = true;
                        self.log(Some(i), || "cloned".into());
                        self.finish(i, true);
                    }
                    None => {
                        self.log(Some(i), || "clone failed: the source went away".into());
                        self.finish(i, false);
                    }
                }
            }
            Step::ReadFailed => {
                self.nodes[i].agent.busy = false;
                self.turn(i, None);
            }
            Step::StartReturned { budget_end } => {
                let up = self.nodes[i].pg.running();
                if !up && self.now >= budget_end {
                    self.log(Some(i), || "pg_ctl start: not ready in time (the postmaster goes on)".into());
                }
                self.finish(i, up);
            }
            Step::Promote => {
                if !self.holds(i) {
                    self.nodes[i].agent.checkpoint_pending = false;
                    self.log(Some(i), || "promote: the key is no longer proven ours: not promoting".into());
                    return self.finish(i, true);
                }
                // Synchronous mode: the sync key names this leader, with no
                // standby, before PostgreSQL may acknowledge anything.
                // Also out of synchronous mode, a key left by another leader
                // goes stale now: it would count the moment the mode is on.
                let stale = self.etcd.sync.as_ref().is_some_and(|k| k.leader != Some(i));
                if stale || (self.etcd.config.sync_mode && self.etcd.sync.is_none()) {
                    if !self.etcd_ok(i) {
                        self.nodes[i].agent.checkpoint_pending = false;
                        self.log(Some(i), || "promote: cannot reset the sync key: not promoting".into());
                        return self.finish(i, false);
                    }
                    self.etcd.put_sync(Some(SyncKey { leader: Some(i), standbys: Vec::new(), quorum: 0 }));
                    self.sync_dirty = true;
                    self.log(Some(i), || "sync key reset to this leader before promoting".into());
                }
                // The promotion is recorded before it happens: if this node
                // dies right after, nobody resumes or races on the old timeline.
                let Some((timeline, lsn)) = self.nodes[i].pg.data.as_ref().map(|d| (d.timeline, d.lsn())) else {
                    return self.finish(i, false);
                };
                if !self.etcd_ok(i) {
                    self.nodes[i].agent.checkpoint_pending = false;
                    self.log(Some(i), || "promote: cannot record it in the history key: not promoting".into());
                    return self.finish(i, false);
                }
                self.etcd.history.retain(|(tl, _, _)| *tl < timeline);
                self.etcd.history.push((timeline, lsn, i));
                self.etcd.bump();
                self.pg_promote(i);
                self.nodes[i].agent.upstream = None;
                let epoch = self.nodes[i].agent.epoch;
                let delay = self.rng.range(100, 600);
                self.at(delay, Ev::Step { node: i, epoch, step: Step::Promoted });
            }
            Step::Promoted => {
                self.nodes[i].agent.checkpoint_pending = false;
                if self.etcd_ok(i)
                    && let Some(data) = self.nodes[i].pg.data.as_ref().filter(|_| self.nodes[i].pg.run == Run::Primary)
                    && let Some(entry) = data.history.last().copied()
                {
                    self.etcd.history.retain(|(tl, _, _)| *tl < entry.0);
                    self.etcd.history.push((entry.0, entry.1, i));
                    self.etcd.bump();
                }
                self.finish(i, true);
            }
            Step::SwitchoverPoll { candidate, checkpoint, until } => {
                let has_it = self.link(i, candidate)
                    && self.agent_alive(candidate)
                    && self.nodes[candidate].pg.lsn().is_some_and(|lsn| lsn >= checkpoint)
                    && self.nodes[i].pg.data.as_ref().zip(self.nodes[candidate].pg.data.as_ref()).is_some_and(
                        |(mine, theirs)| {
                            theirs.wal.get(checkpoint as usize - 1) == mine.wal.get(checkpoint as usize - 1)
                        },
                    );
                if has_it && self.etcd_ok(i) {
                    self.release(i);
                    self.log(Some(i), || "role change: switched over".into());
                    return self.finish(i, true);
                }
                if self.now >= until {
                    if self.etcd_ok(i) {
                        self.etcd.put_failover(None);
                    }
                    self.log(Some(i), || {
                        "switchover: the candidate did not get the checkpoint; staying primary".into()
                    });
                    return self.finish(i, true);
                }
                let epoch = self.nodes[i].agent.epoch;
                self.at(20, Ev::Step { node: i, epoch, step: Step::SwitchoverPoll { candidate, checkpoint, until } });
            }
        }
    }

    /// The leader's housekeeping: `status`, the `history` key from the
    /// timeline history file, synchronous replication.
    fn housekeeping(&mut self, i: usize) {
        let Some(data) = self.nodes[i].pg.data.as_ref() else { return };
        let (lsn, timeline, last_switch) = (data.lsn(), data.timeline, data.history.last().copied());
        if self.etcd.optime != Some(lsn) {
            self.etcd.optime = Some(lsn);
            self.etcd.bump();
        }
        if timeline > 1
            && let Some(entry) = last_switch
            && !self.etcd.history.iter().any(|(tl, _, _)| *tl == entry.0)
        {
            self.etcd.history.push((entry.0, entry.1, i));
            self.etcd.history.sort_unstable();
            self.etcd.bump();
        }
        // failsafe_mode: the members, this leader among them.
        let listed = self.etcd.config.failsafe.then(|| {
            let mut members: Vec<usize> = self.etcd.members.keys().copied().chain([i]).collect();
            members.sort_unstable();
            members.dedup();
            members
        });
        if self.etcd.failsafe != listed {
            self.etcd.failsafe = listed.clone();
            self.etcd.bump();
        }
        // The members it will call are those it read and those it wrote.
        if let (Some(seen), Some(listed)) = (self.nodes[i].agent.failsafe_seen.as_mut(), listed) {
            seen.extend(listed);
            seen.sort_unstable();
            seen.dedup();
        }
        self.manage_sync(i);
    }

    fn manage_sync(&mut self, i: usize) {
        self.nodes[i].sync_seen = true;
        if !self.etcd.config.sync_mode {
            let agent = &mut self.nodes[i].agent;
            agent.sync_configured.clear();
            agent.sync_pending = None;
            agent.wanted_ssn = Ssn::Async;
            self.apply_ssn(i);
            if self.etcd.sync.is_some() {
                self.etcd.put_sync(None);
            }
            return;
        }
        let name = |j: usize| self.nodes[j].name.clone();
        let key_is_mine = self.etcd.sync.as_ref().is_some_and(|s| s.leader == Some(i));
        let published: Vec<String> = self
            .etcd
            .sync
            .as_ref()
            .filter(|_| key_is_mine)
            .map(|s| s.standbys.iter().map(|j| name(*j)).collect())
            .unwrap_or_default();
        let live = &self.nodes[i].pg.ssn;
        let listed = |r: usize| match live {
            Ssn::Names(names) | Ssn::Any { names, .. } => names.contains(&self.nodes[r].name),
            Ssn::AnyStandby => true,
            Ssn::Async | Ssn::Placeholder => false,
        };
        let standbys: Vec<Standby> = (0..self.nodes.len())
            .filter(|r| {
                let pg = &self.nodes[*r].pg;
                *r != i && pg.run == Run::Replica && pg.upstream == Some(i) && pg.streaming && self.link(i, *r)
            })
            .map(|r| Standby {
                name: name(r),
                streaming: true,
                sync: listed(r),
                listed: listed(r),
                flush_lsn: self.nodes[r].pg.lsn().unwrap_or(0),
                eligible: true,
                // Uneven `sync_priority` tags, so the choice follows them.
                priority: 1 + (r % 2) as u32,
            })
            .collect();
        if self.etcd.config.quorum {
            return self.manage_quorum(i, key_is_mine, standbys);
        }
        self.nodes[i].agent.quorum_ledger = None;
        // A key of quorum commit with a quorum above 0 lists first nobody.
        if key_is_mine && self.etcd.sync.as_ref().is_some_and(|s| s.quorum > 0) {
            self.etcd.put_sync(Some(SyncKey { leader: Some(i), standbys: Vec::new(), quorum: 0 }));
            self.sync_dirty = true;
            return;
        }
        if !self.nodes[i].agent.sync_rebuilt {
            let live = match &self.nodes[i].pg.ssn {
                Ssn::Names(names) | Ssn::Any { names, .. } => names.clone(),
                Ssn::Async | Ssn::Placeholder | Ssn::AnyStandby => Vec::new(),
            };
            let agent = &mut self.nodes[i].agent;
            agent.sync_configured = live.into_iter().chain(published.iter().cloned()).collect();
            agent.sync_configured.sort();
            agent.sync_configured.dedup();
            agent.sync_rebuilt = true;
        }
        let agent = &self.nodes[i].agent;
        let input = SyncInput {
            node_count: self.etcd.config.node_count,
            published,
            key_is_mine,
            configured: agent.sync_configured.clone(),
            pending: agent.sync_pending.clone(),
            standbys,
            primary_lsn: self.nodes[i].pg.lsn().unwrap_or(0),
            max_lag: self.p.max_lag_on_syncnode,
        };
        self.nodes[i].agent.wanted_ssn = self.sync_names(i);
        self.apply_ssn(i);
        let step = next_step(&input);
        if step != SyncStep::Idle {
            let shown = step.clone();
            self.log(Some(i), || format!("sync: {shown:?}"));
        }
        match step {
            SyncStep::Idle => {}
            SyncStep::Mark(lsn) => {
                if let Some(pending) = self.nodes[i].agent.sync_pending.as_mut() {
                    pending.since_lsn = Some(lsn);
                }
            }
            SyncStep::Configure { names, pending } => {
                let agent = &mut self.nodes[i].agent;
                agent.sync_configured = names;
                agent.sync_pending = pending;
                self.nodes[i].agent.wanted_ssn = self.sync_names(i);
                self.apply_ssn(i);
            }
            SyncStep::Publish(names) => {
                let standbys = names.iter().filter_map(|n| self.index_of(n)).collect();
                self.etcd.put_sync(Some(SyncKey { leader: Some(i), standbys, quorum: 0 }));
                self.sync_dirty = true;
                let agent = &mut self.nodes[i].agent;
                if agent.sync_pending.as_ref().is_some_and(|p| names.contains(&p.name)) {
                    agent.sync_pending = None;
                }
            }
        }
    }
    /// Quorum commit as leader: one step of `ha_core::quorum` per tick, as
    /// the agent's `manage_quorum` does (PostgreSQL here takes a new setting
    /// at once, in every WAL sender).
    fn manage_quorum(&mut self, i: usize, key_is_mine: bool, standbys: Vec<Standby>) {
        use ha_core::quorum::{Config, Ledger, QuorumInput, QuorumStep};
        let agent = &mut self.nodes[i].agent;
        agent.sync_configured.clear();
        agent.sync_pending = None;
        agent.sync_rebuilt = false;
        let key = self.etcd.sync.as_ref().filter(|_| key_is_mine);
        let mut voters: Vec<String> =
            key.map(|s| s.standbys.iter().map(|j| self.nodes[*j].name.clone()).collect()).unwrap_or_default();
        voters.sort();
        if self.nodes[i].agent.quorum_ledger.is_none() {
            let live = match &self.nodes[i].pg.ssn {
                Ssn::Any { k, names } => Config { k: *k, names: names.clone() },
                Ssn::Names(names) => Config { k: names.len(), names: names.clone() },
                Ssn::Async | Ssn::Placeholder | Ssn::AnyStandby => Config::default(),
            };
            let current = ha_core::quorum::rebuild(live, &voters, key.map_or(0, |s| s.quorum));
            self.nodes[i].agent.quorum_ledger = Some(Ledger::new(current));
        }
        let input = QuorumInput {
            node_count: self.etcd.config.node_count,
            key_is_mine,
            voters,
            quorum: key.map_or(0, |s| s.quorum),
            ledger: self.nodes[i].agent.quorum_ledger.clone().unwrap_or_default(),
            strict: self.etcd.config.strict,
            standbys,
            primary_lsn: self.nodes[i].pg.lsn().unwrap_or(0),
            max_lag: self.p.max_lag_on_syncnode,
        };
        self.nodes[i].agent.wanted_ssn = self.sync_names(i);
        self.apply_ssn(i);
        let step = ha_core::quorum::next_step(&input);
        if !matches!(step, QuorumStep::Idle(_)) {
            let shown = step.clone();
            self.log(Some(i), || format!("quorum: {shown:?}"));
        }
        match step {
            QuorumStep::Idle(_) => {}
            QuorumStep::Mark => {
                let lsn = self.nodes[i].pg.lsn().unwrap_or(0);
                if let Some(ledger) = self.nodes[i].agent.quorum_ledger.as_mut() {
                    *ledger = Ledger { epochs: vec![ledger.current()], mark: Some(lsn) };
                }
            }
            QuorumStep::Configure(config) => {
                if let Some(ledger) = self.nodes[i].agent.quorum_ledger.as_mut() {
                    ledger.configured(config);
                }
                self.nodes[i].agent.wanted_ssn = self.sync_names(i);
                self.apply_ssn(i);
            }
            QuorumStep::Publish { voters, quorum } => {
                let standbys = voters.iter().filter_map(|n| self.index_of(n)).collect();
                self.etcd.put_sync(Some(SyncKey { leader: Some(i), standbys, quorum }));
                self.sync_dirty = true;
            }
        }
    }
}
