//! The simulated leader's synchronous replication: `ha_core::sync` and
//! `ha_core::quorum` driven as the real agent drives them, one write a tick.

use super::*;

impl World {
    pub(super) fn sync_names(&self, i: usize) -> Ssn {
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
    pub(super) fn apply_ssn(&mut self, i: usize) {
        let wanted = self.nodes[i].agent.wanted_ssn.clone();
        if self.nodes[i].pg.ssn != wanted {
            let shown = wanted.clone();
            self.log(Some(i), || format!("synchronous_standby_names = {shown:?}"));
            self.nodes[i].pg.ssn = wanted;
            self.settle(i);
        }
    }

    pub(super) fn manage_sync(&mut self, i: usize) {
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
    pub(super) fn manage_quorum(&mut self, i: usize, key_is_mine: bool, standbys: Vec<Standby>) {
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
