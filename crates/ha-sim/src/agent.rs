//! The agent as the simulation runs it: the same loop as
//! `node-agent/src/ha.rs` (read the cluster, keep the lease, publish the
//! member key, observe, `ha_core::decide`, execute one action, then the
//! leader's housekeeping with `ha_core::sync::next_step`), with each
//! executor reduced to its effect on the simulated etcd and PostgreSQL.
//! The decisions are not modelled: they are the real functions.

use ha_core::sync::{Standby, SyncInput, SyncStep, next_step};
use ha_core::{Action, DataDir, FailoverRequest, Observed, Peer, RunningAs, Schedule, decide};

use crate::model::{Data, Failover, Member, Run, Ssn, SyncKey, View};
use crate::world::{Ev, Step, World};

mod execute;
mod sync;

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
            Run::Primary => RunningAs::Primary { lsn, timeline },
            Run::Replica => RunningAs::Replica { lsn, timeline, upstream: node.agent.upstream.map(name) },
            Run::Starting { .. } => RunningAs::Transitioning,
            Run::Stopped => RunningAs::Stopped,
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
                        priority: self.p.failover_priority[*j],
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
        if holds_leader && !matches!(pg, RunningAs::Primary { .. }) {
            agent.primary_down_since.get_or_insert(now);
        } else {
            agent.primary_down_since = None;
        }
        if pg == RunningAs::Stopped {
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
            priority: self.p.failover_priority[i],
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
            race_backoff: ha_core::RaceBackoff::default(),
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
}
