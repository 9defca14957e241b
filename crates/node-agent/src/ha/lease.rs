//! The lease keeper's side of the HA loop: the member lease and its renewal task, proving the
//! leader key (and what follows each renewal: the fencer's deadline, the watchdog, the
//! acknowledgement hold), taking and giving the key up, and whether the fencer beside this agent
//! lets it lead.

use super::*;

/// The device watchdog, even after a panic while it was held (it only
/// holds a file and counters).
pub(super) fn lock_watchdog(
    watchdog: &crate::watchdog::SharedWatchdog,
) -> std::sync::MutexGuard<'_, crate::watchdog::DeviceWatchdog> {
    watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Each renewal of a leader's lease, as the lease keeper makes it: its
/// deadline reaches the fencer (and the health checks) at once, not at the
/// end of a loop that may be busy for a long while (a promotion, a start in
/// crash recovery), so a healthy leader is not fenced on an old deadline;
/// and it keeps the watchdog device alive (DESIGN invariant 1). Only a
/// deadline the loop already published is moved: the loop alone says the
/// key is held.
pub(super) async fn forward_renewals(
    mut lease_rx: watch::Receiver<LeaseState>,
    view: watch::Sender<PublishedStatus>,
    watchdog: crate::watchdog::SharedWatchdog,
) {
    while lease_rx.changed().await.is_ok() {
        let deadline = lease_rx.borrow().live_deadline();
        let mut leading = false;
        view.send_if_modified(|v| {
            leading = v.leader_deadline.is_some();
            let moved = leading && v.leader_deadline != deadline;
            if moved {
                v.leader_deadline = deadline;
            }
            moved
        });
        if leading && deadline.is_some() {
            lock_watchdog(&watchdog).keepalive();
        }
    }
}

/// `lease`'s ttl in whole seconds: what the leader key bound to it lives by.
pub(super) fn lease_ttl(lease: &Lease) -> u32 {
    u32::try_from(lease.granted_ttl.as_secs()).unwrap_or(u32::MAX)
}

/// The member lease and the task that renews it (proving the leader key
/// too, once this member holds it).
#[derive(Default)]
pub(super) struct LeaseKeeper {
    pub(super) lease: Option<Lease>,
    /// The ttl (seconds) asked for when `lease` was granted.
    pub(super) granted_ttl: u32,
    pub(super) renewal: Option<RenewalHandle>,
    /// The renewal task proves the leader key (not only the lease).
    pub(super) proves_leader: bool,
}

impl LeaseKeeper {
    /// Renewal pace: a quarter of the shorter of the live ttl and the ttl the
    /// held lease was granted with (a lease granted before a ttl increase
    /// must still be renewed before it expires).
    pub(super) fn renew_interval(&self, ttl: u32) -> Duration {
        let live = Duration::from_secs(u64::from(ttl));
        let granted = self.lease.map_or(live, |lease| lease.granted_ttl);
        election::default_interval(live.min(granted))
    }

    /// The current lease state, if a renewal task runs.
    pub(super) fn state(&self) -> Option<LeaseState> {
        self.renewal.as_ref().map(RenewalHandle::current)
    }

    /// The deadline up to which the leader key is proven ours (`None`: not
    /// proving it, or the deadline passed).
    pub(super) fn leader_deadline(&self) -> Option<BootInstant> {
        self.proves_leader.then(|| self.state()).flatten().and_then(|s| s.live_deadline())
    }

    /// The live ttl differs from the one the lease was granted with.
    pub(super) fn ttl_changed(&self, ttl: u32) -> bool {
        self.lease.is_some() && self.granted_ttl != ttl
    }

    /// A held lease is kept as it is: a member lease follows a ttl change at
    /// once (a new lease, the member key put again on it); the leader's
    /// lease keeps its ttl until the key changes hands.
    pub(super) fn keeps(&self, held: bool, ttl: u32) -> bool {
        held && (!self.ttl_changed(ttl) || self.proves_leader)
    }
}

impl Agent {
    /// An election on the leader key whose new leases get `dynamic.ttl`: the
    /// live ttl from the `config` key, not the local file's `bootstrap.dcs`
    /// (a migrated or edited cluster's may differ).
    pub(super) fn election(&self, dynamic: &DynamicConfig) -> Election {
        Election::new(
            self.etcd.clone(),
            ElectionSettings {
                key: self.keys.leader(),
                member: self.config.name.clone(),
                ttl: Duration::from_secs(u64::from(dynamic.ttl)),
                fence_margin: self.config.pgwarden.fence_margin,
                request_timeout: self.etcd.settings().request_timeout,
            },
        )
    }

    pub(super) fn renew_interval(&self, dynamic: &DynamicConfig) -> Duration {
        self.keeper.renew_interval(dynamic.ttl)
    }

    pub(super) fn lease_state(&self) -> Option<LeaseState> {
        self.keeper.state()
    }

    pub(super) fn leader_deadline(&self) -> Option<BootInstant> {
        self.keeper.leader_deadline()
    }

    /// Makes sure a live lease exists and a renewal task keeps it.
    pub(super) async fn ensure_lease(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let ttl_changed = self.keeper.ttl_changed(dynamic.ttl);
        let held = matches!(self.lease_state(), Some(LeaseState::Held { .. }));
        if self.keeper.keeps(held, dynamic.ttl) {
            return Ok(());
        }
        if held {
            info!(ttl = dynamic.ttl, "ttl changed: a new member lease");
        }
        if let Some(LeaseState::Lost { reason, .. }) = self.lease_state() {
            warn!(reason, "lease lost");
        }
        if let Some(handle) = self.keeper.renewal.take() {
            let _ = handle.stop().await;
        }
        self.keeper.proves_leader = false;
        // The old lease may still live (only the leader proof failed): keep it.
        let mut election = self.election(dynamic);
        let mut kept = self.keeper.lease.filter(|_| !ttl_changed);
        let alive = match kept.as_mut() {
            Some(lease) => election.keep_alive(lease).await.is_ok(),
            None => false,
        };
        let lease = match kept {
            Some(lease) if alive => lease,
            _ => {
                let lease = election.grant().await.context("grant a lease")?;
                self.keeper.granted_ttl = dynamic.ttl;
                info!(lease = format_args!("{:x}", lease.id), ttl = ?lease.granted_ttl, "lease granted");
                self.publisher.last_json = None;
                lease
            }
        };
        self.keeper.lease = Some(lease);
        self.keeper.renewal = Some(spawn_renewal(election, lease, self.renew_interval(dynamic), false));
        Ok(())
    }

    /// Switches the renewal task to proving the leader key.
    pub(super) async fn prove_leader(&mut self, dynamic: &DynamicConfig, mut lease: Lease) {
        if let Some(handle) = self.keeper.renewal.take() {
            // Carry the lease's latest deadline over (never an older one).
            if let LeaseState::Held { deadline, .. } = handle.current() {
                lease.deadline = lease.deadline.max(deadline);
            }
            let _ = handle.stop().await;
        }
        self.keeper.lease = Some(lease);
        // failsafe_mode: the members' promises may move the deadline while
        // etcd does not answer (crate::failsafe).
        let (extension_tx, extension_rx) = watch::channel(None);
        let handle = election::spawn_renewal_extended(
            self.election(dynamic),
            lease,
            self.renew_interval(dynamic),
            true,
            Some(extension_rx),
        );
        let wake = self.wake.clone();
        let view = self.view.clone();
        tokio::spawn(crate::failsafe::keep_running(
            self.config.name.clone(),
            self.failsafe_plan.subscribe(),
            handle.subscribe(),
            extension_tx,
            self.failsafe.clone(),
            crate::failsafe::SlotReader {
                config: self.config.clone(),
                local: self.pg.local.clone(),
                port: self.pg.port,
            },
            // Reported at once: the HA loop's next tick may wait for an
            // etcd call that times out first (the tick recomputes it).
            move || {
                view.send_if_modified(|v| !std::mem::replace(&mut v.failsafe_active, true));
                wake.nudge();
            },
        ));
        tokio::spawn(forward_renewals(handle.subscribe(), self.view.clone(), self.watchdog.clone()));
        // The ordered fence's first step: no acknowledgement in the last
        // moments of a lease nobody renews.
        let hold = crate::ackhold::AckHold {
            config: self.config.clone(),
            local: self.pg.local.clone(),
            port: self.pg.port,
            data_dir: self.pg.data_dir.clone(),
            lead: crate::ackhold::lead(dynamic.ttl, self.config.pgwarden.fence_margin),
        };
        tokio::spawn(crate::ackhold::hold_acks_near_deadline(handle.subscribe(), self.view.subscribe(), hold));
        self.keeper.renewal = Some(handle);
        self.keeper.proves_leader = true;
    }

    /// Gives the leader key up (iff ours) and goes back to renewing only the lease.
    pub(super) async fn release_leader(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let mut lease = self.keeper.lease.context("no lease")?;
        if let Some(handle) = self.keeper.renewal.take() {
            if let LeaseState::Held { deadline, .. } = handle.current() {
                lease.deadline = lease.deadline.max(deadline);
            }
            let _ = handle.stop().await;
        }
        self.keeper.lease = Some(lease);
        self.keeper.proves_leader = false;
        let mut election = self.election(dynamic);
        let released = election.release(&lease).await;
        self.keeper.renewal = Some(spawn_renewal(election, lease, self.renew_interval(dynamic), false));
        self.released_at_ms = Some(self.now_ms());
        if released? {
            info!("released the leader key");
        }
        Ok(())
    }

    pub(super) async fn acquire_leader(&mut self, dynamic: &DynamicConfig, rebind: bool) -> anyhow::Result<bool> {
        let lease = self.keeper.lease.context("no lease yet")?;
        if !rebind {
            self.require_fencer()?;
        }
        // failsafe_mode: no promise to another leader may run while this
        // member takes the key, and none is made meanwhile (the `Failsafe`
        // handler waits for this lock and then finds `leading`).
        let shared = self.failsafe.clone();
        let mut failsafe = shared.lock().await;
        if let Some(leader) = failsafe.promised_to(BootInstant::now()).filter(|l| *l != self.config.name) {
            bail!("take the leader key: this member promised {leader} (failsafe_mode) to take no part meanwhile");
        }
        failsafe.leading = true;
        let taken = self.take_leader_key(dynamic, lease).await;
        failsafe.leading = matches!(taken, Ok(true)) && self.keeper.proves_leader;
        taken
    }

    async fn take_leader_key(&mut self, dynamic: &DynamicConfig, lease: Lease) -> anyhow::Result<bool> {
        lock_watchdog(&self.watchdog).arm(lease_ttl(&lease))?;
        // A replica about to promote says so before it holds the key, so no
        // rejoining node can rewind against it before its first checkpoint.
        let promoting = self.local.borrow().sql.as_ref().is_some_and(|s| s.in_recovery);
        if promoting {
            self.checkpoint_pending = true;
            let local = self.local.borrow().clone();
            self.publish_member(&local).await?;
        }
        let mut election = self.election(dynamic);
        match election.acquire(&lease).await? {
            Acquired::Won { .. } => {
                info!("took the leader key");
                self.prove_leader(dynamic, lease).await;
                Ok(true)
            }
            Acquired::Held(holder) if holder.member == self.config.name => {
                // Our own key from before a restart or an etcd outage: re-bind
                // it to this lease, only while it still names us (decide asks
                // this of a running primary, or of the stopped last primary
                // resuming on its timeline).
                let name = self.config.name.as_str();
                let done = self.etcd.put_if_value(&self.keys.leader(), name, name, Some(lease.id)).await?;
                if done {
                    info!("re-bound the leader key to this agent's lease");
                    self.prove_leader(dynamic, lease).await;
                }
                Ok(done)
            }
            Acquired::Held(holder) => {
                info!(holder = %holder.member, "the leader key went to another member");
                self.checkpoint_pending = false;
                Ok(true)
            }
        }
    }

    /// Whether the independent fencer (pgwarden-health) has acknowledged
    /// recently, or the config does without it.
    /// The fencer has been silent for `FENCER_LOST_AFTER`: since its last
    /// acknowledgement, or since this agent started when it never sent one.
    pub(super) fn fencer_lost(&self) -> bool {
        ha_core::fencer_lost(self.config.pgwarden.require_fencer, self.fencer_last_ack_ms(), 0, self.now_ms())
    }

    /// `ha_core::fencer_ready`: the fencer acknowledged lately (or none is required).
    pub(super) fn fencer_ready(&self) -> bool {
        ha_core::fencer_ready(self.config.pgwarden.require_fencer, self.fencer_last_ack_ms(), self.now_ms())
    }

    /// The fencer's last acknowledgement on the agent's clock (`now_ms`).
    fn fencer_last_ack_ms(&self) -> Option<u64> {
        let at = self.fencer_acks.lock().ok().and_then(|ack| *ack)?;
        let since_start = at.checked_duration_since(self.started).unwrap_or_default();
        Some(u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn require_fencer(&self) -> anyhow::Result<()> {
        if self.fencer_ready() {
            Ok(())
        } else {
            bail!(
                "take the leader key: no fencer has acknowledged in the last {FENCER_ACK_MAX_AGE:?}; \
                 run pgwarden-health beside the agent (or set pgwarden.require_fencer: false)"
            )
        }
    }

    /// This agent gave the leader key up on purpose within the last two
    /// ttls (a replica is taking it over): `ha_core::released_recently`.
    pub(super) fn released_recently(&self, ttl: u32) -> bool {
        ha_core::released_recently(self.released_at_ms, self.now_ms(), u64::from(ttl) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseKeeper;

    fn keeper(granted_secs: u64, proves_leader: bool) -> LeaseKeeper {
        let lease =
            election::Lease { id: 1, granted_ttl: Duration::from_secs(granted_secs), deadline: BootInstant::now() };
        LeaseKeeper { lease: Some(lease), granted_ttl: 30, renewal: None, proves_leader }
    }

    #[test]
    fn renewals_pace_to_the_shorter_of_the_live_and_the_granted_ttl() {
        assert_eq!(keeper(30, false).renew_interval(10), Duration::from_millis(2_500));
        assert_eq!(keeper(8, false).renew_interval(30), Duration::from_secs(2), "granted before a ttl increase");
        assert_eq!(LeaseKeeper::default().renew_interval(1), Duration::from_millis(250), "never below 250 ms");
    }

    #[test]
    fn a_ttl_change_gives_a_member_a_new_lease_but_the_leader_keeps_its_own() {
        assert!(keeper(30, false).keeps(true, 30));
        assert!(!keeper(30, false).keeps(true, 20), "a member follows the new ttl");
        assert!(keeper(30, true).keeps(true, 20), "the leader's lease keeps its ttl until the key changes hands");
        assert!(!keeper(30, true).keeps(false, 30), "a lease no longer held is replaced");
        assert!(!LeaseKeeper::default().ttl_changed(10), "no lease yet: nothing changed");
    }

    #[test]
    fn no_leader_deadline_without_a_renewal_task_proving_the_key() {
        assert_eq!(keeper(30, true).leader_deadline(), None);
        assert_eq!(keeper(30, false).leader_deadline(), None);
    }
    use std::time::Duration;

    use election::{BootInstant, LeaseState};
    use tokio::sync::watch;

    use super::forward_renewals;
    use crate::ha::PublishedStatus;
    use crate::watchdog::DeviceWatchdog;

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let started = std::time::Instant::now();
        while !condition() {
            assert!(started.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// DESIGN invariant 1: while the HA loop is
    /// busy in one long action, each renewal still reaches the published
    /// deadline and the watchdog device, without the loop ticking.
    #[tokio::test]
    async fn each_renewal_moves_the_published_deadline_and_feeds_the_watchdog() {
        let config = pgwarden_config::Watchdog {
            mode: pgwarden_config::WatchdogMode::Required,
            device: "/dev/null".into(),
            safety_margin: 5,
            driver: pgwarden_config::WatchdogDriver::Linux,
        };
        let file = tempfile::tempfile().expect("temp file");
        let watchdog = DeviceWatchdog::armed_on(config, file).shared();
        let keepalives = || watchdog.lock().expect("watchdog").keepalives();
        let first = BootInstant::now() + Duration::from_secs(10);
        let (lease_tx, lease_rx) = watch::channel(LeaseState::Held { lease: 7, deadline: first });
        let (view_tx, view_rx) = watch::channel(PublishedStatus::default());
        tokio::spawn(forward_renewals(lease_rx, view_tx.clone(), watchdog.clone()));

        // Not published as leader by the loop yet: nothing moves.
        lease_tx.send_replace(LeaseState::Held { lease: 7, deadline: first + Duration::from_secs(1) });
        tokio::task::yield_now().await;
        // The loop publishes the key as held; renewals now move it.
        view_tx.send_modify(|v| v.leader_deadline = Some(first));
        let renewed = first + Duration::from_secs(2);
        lease_tx.send_replace(LeaseState::Held { lease: 7, deadline: renewed });
        until("the renewed deadline", || view_rx.borrow().leader_deadline == Some(renewed)).await;
        assert_eq!(keepalives(), 1, "one keep-alive, for the renewal made while leading");
        let again = renewed + Duration::from_secs(2);
        lease_tx.send_replace(LeaseState::Held { lease: 7, deadline: again });
        until("the second renewal", || keepalives() == 2).await;
        assert_eq!(view_rx.borrow().leader_deadline, Some(again));

        // A lost lease clears the deadline and feeds nothing.
        lease_tx.send_replace(LeaseState::Lost { lease: 7, reason: "test".into() });
        until("the cleared deadline", || view_rx.borrow().leader_deadline.is_none()).await;
        assert_eq!(keepalives(), 2);
    }
}
