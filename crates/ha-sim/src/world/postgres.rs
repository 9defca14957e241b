//! The simulated PostgreSQL: start, ready, promote, fast stop, commits and
//! their acknowledgement, streaming to replicas (synchronous and quorum
//! commit), and the fencer that stops a primary at its deadline.

use super::*;

impl World {
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

    pub(super) fn pg_ready(&mut self, i: usize, incarnation: u64) {
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
    pub(super) fn stream(&mut self, r: usize) {
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

    pub(super) fn acknowledge(&mut self, p: usize, id: u64, lsn: u64) {
        self.acked += 1;
        if self.etcd.config.sync_mode && self.nodes[p].sync_seen {
            self.must_survive.push((id, lsn));
            self.sync_dirty = true;
        }
        self.log(Some(p), || format!("client: commit {id} acknowledged at lsn {lsn}"));
    }

    pub(super) fn client_write(&mut self) {
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
    pub(super) fn on_new_primary(&mut self, i: usize) {
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

    pub(super) fn fencer_check(&mut self, i: usize, deadline: Time) {
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
    pub(super) fn fencer_judge(&mut self, i: usize) {
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
    pub(super) fn fencer_start(&mut self, i: usize) {
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
}
