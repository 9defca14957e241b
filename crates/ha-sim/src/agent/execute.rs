//! The simulated agent's executors: an action `decide` chose, carried out
//! as the real agent does, in steps that each take simulated time.

use super::*;

impl World {
    pub(super) fn execute(&mut self, i: usize, action: &Action, view: &View, obs: &Observed) -> Result<Next, String> {
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

    pub(super) fn release(&mut self, i: usize) {
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
    pub(super) fn rewind(&mut self, i: usize, source: usize) -> Result<(), String> {
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
}
