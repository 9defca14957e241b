//! What the world does to the cluster: faults (crashes, partitions, etcd
//! loss, freezes), the operator's requests, and healing.

use super::*;

impl World {
    pub(super) fn fault(&mut self) {
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
                self.crash_node(i, recovery);
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

    /// The whole node goes down: PostgreSQL killed (crash recovery takes
    /// `recovery` ms when it starts again), its agent and fencer with it.
    fn crash_node(&mut self, i: usize, recovery: Time) {
        self.kill_postgres(i, recovery);
        let node = &mut self.nodes[i];
        node.crashed = true;
        node.agent.up = false;
        node.agent.epoch += 1;
        node.fencer_up = false;
        node.fencer_deadline = None;
    }

    pub(super) fn kill_postgres(&mut self, i: usize, recovery: Time) {
        let pg = &mut self.nodes[i].pg;
        if pg.run != Run::Stopped {
            pg.stop_immediate();
            pg.recovery_ms = recovery;
        }
    }

    pub(super) fn operator(&mut self) {
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
    pub(super) fn toggle(&mut self, index: usize, what: &str, field: fn(&mut Dynamic) -> &mut bool) -> bool {
        let value = field(&mut self.etcd.config);
        *value = !*value;
        let on = *value;
        self.etcd.bump();
        self.log(None, || format!("operator #{index}: {what} {on}"));
        on
    }

    pub(super) fn heal(&mut self, heal: Heal) {
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
                    self.crash_node(i, recovery);
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

    pub(super) fn start_agent(&mut self, i: usize) {
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
    pub(super) fn heal_all(&mut self) {
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
}
