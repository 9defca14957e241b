//! The loop's life: running ticks as the etcd watch, the local observer,
//! commands and timers wake it; the callbacks PostgreSQL's changes fire; and
//! the shutdown that stops PostgreSQL, hands the key over and removes the
//! member key.

use super::*;

/// The cluster watch's signals to the HA loop: a wake-up on every change,
/// a generation that grows with every change (and whenever the watch starts
/// or ends, as events may have been missed), and whether a watch runs.
/// Also a failsafe leader's call that brought new slot positions.
#[derive(Debug, Default)]
pub struct ClusterWatch {
    pub wake: Notify,
    pub generation: AtomicU64,
    pub watching: AtomicBool,
    /// Notified (waiters only) when a failsafe call brings new positions:
    /// a tick waiting for an etcd read gives that read up.
    pub failsafe_positions: Notify,
}

impl ClusterWatch {
    /// Something under the prefix changed (or may have).
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Wakes the HA loop without invalidating its view of etcd (a local
    /// change, such as the fencer acknowledging again, to publish at once).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// A promised failsafe leader's call brought new slot positions: a tick
    /// waiting for etcd stops waiting and the next one moves the copies.
    pub fn failsafe_positions(&self) {
        self.failsafe_positions.notify_waiters();
        self.nudge();
    }

    pub fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::SeqCst);
        self.changed();
    }
}

impl Agent {
    /// Runs ticks until `shutdown` resolves, then stops PostgreSQL, hands the
    /// leader key over and removes the member key.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // What wakes the loop early when it changes: the postmaster's state,
        // and PostgreSQL's role, streaming and timeline (so the member key and
        // the tick's reason say "streaming" only while it streams).
        let summary = |local: &LocalObservation| {
            (
                local.postmaster.state,
                local.sql.as_ref().map(|s| (s.in_recovery, s.replication_state == "streaming", s.timeline)),
            )
        };
        let mut previous_state = summary(&self.local.borrow());
        loop {
            // A tick may wait on PostgreSQL (start, clone); shutdown must not.
            let next = tokio::select! {
                next = self.tick() => next,
                () = &mut shutdown => break,
            };
            if next == NextTick::AtOnce {
                continue;
            }
            let loop_wait = if self.sync.in_flight() {
                self.loop_wait.min(super::sync::SYNC_FOLLOW_UP_TICK)
            } else {
                self.loop_wait
            };
            let mut lease_rx = self.keeper.renewal.as_ref().map(RenewalHandle::subscribe);
            let lease_changed = async {
                match lease_rx.as_mut() {
                    Some(rx) => loop {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        if matches!(*rx.borrow(), LeaseState::Lost { .. }) {
                            return;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let mut local_rx = self.local.clone();
            let local_changed = async {
                loop {
                    if local_rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let state = summary(&local_rx.borrow());
                    if state != previous_state {
                        return state;
                    }
                }
            };
            let wake = self.wake.clone();
            let wake = &wake.wake;
            let command = tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(loop_wait) => None,
                () = wake.notified() => None,
                () = lease_changed => None,
                state = local_changed => {
                    previous_state = state;
                    None
                }
                command = self.commands.recv() => command,
            };
            if let Some((command, reply)) = command {
                info!(?command, "carrying out a request");
                let outcome = self.command(command).await;
                if let Err(status) = &outcome {
                    warn!("request refused or failed: {}", status.message());
                }
                let _ = reply.send(outcome);
            }
        }
        self.shut_down().await;
    }

    /// Fires `on_start`, `on_stop` and `on_role_change` from what PostgreSQL
    /// did since the last look.
    pub(super) fn derive_callbacks(&mut self) {
        // Patroni's role names: a standby cluster's leader is `standby_leader`.
        let standby_leader = self.follows_remote && self.leader_deadline().is_some();
        let now = self.local.borrow().sql.as_ref().map(|s| match s.in_recovery {
            true if standby_leader => Role::StandbyLeader,
            true => Role::Replica,
            false => Role::Primary,
        });
        match (self.seen_running, now) {
            (None, Some(role)) if self.last_role.is_some_and(|last| last != role) => {
                self.callbacks.fire(Event::RoleChange, role);
            }
            (None, Some(role)) => self.callbacks.fire(Event::Start, role),
            (Some(role), None) => self.callbacks.fire(Event::Stop, role),
            (Some(before), Some(role)) if before != role => self.callbacks.fire(Event::RoleChange, role),
            _ => {}
        }
        self.seen_running = now;
        if now.is_some() {
            self.last_role = now;
        }
    }

    pub(super) async fn shut_down(&mut self) {
        // Peers racing for the key must not wait for this member.
        self.view.send_modify(|view| view.shutting_down = true);
        let mut stopped = true;
        if self.managed {
            info!("shutting down: stopping PostgreSQL");
            if let Some(role) = self.seen_running {
                self.callbacks.before_stop(role).await;
            }
            if let Err(e) = self.pg.stop(StopMode::Fast).await {
                error!("failed to stop PostgreSQL: {e:#}; stopping it immediately");
                if let Err(e) = self.pg.stop(StopMode::Immediate).await {
                    error!("failed to stop PostgreSQL: {e:#}");
                    stopped = false;
                }
            }
        } else {
            info!("shutting down: leaving PostgreSQL as it is (this agent never managed it)");
        }
        let handle = self.keeper.renewal.take();
        if !stopped {
            // A PostgreSQL that may still run as primary keeps the key: it
            // goes only when the lease runs out, after the fencer's deadline:
            // released now, another node could promote beside it.
            error!("PostgreSQL did not stop: the leader key is not released; it expires with the lease");
            if let Some(handle) = handle {
                let _ = handle.stop().await;
            }
            return;
        }
        // No primary runs here any more: the device is closed as Patroni
        // closes it, before the key goes.
        lock_watchdog(&self.watchdog).disarm();
        let election = match handle {
            Some(handle) => handle.stop().await,
            None => None,
        };
        if let (Some(mut election), Some(lease)) = (election, self.keeper.lease) {
            match election.release(&lease).await {
                Ok(true) => info!("released the leader key"),
                Ok(false) => {}
                Err(e) => warn!("failed to release the leader key: {e}"),
            }
            if let Err(e) = election.revoke(&lease).await {
                warn!("failed to revoke the lease: {e}");
            }
        }
    }
}
