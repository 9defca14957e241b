//! The dedicated renewal task: renews on its own schedule, independent of the
//! HA loop, and publishes the current deadline or the loss of the lease.

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{BootInstant, Election, ElectionError, Lease};

/// What the renewal task knows about the lease and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Ownership is proven up to `deadline`.
    Held { lease: i64, deadline: BootInstant },
    /// Ownership can no longer be assumed; the task has stopped.
    Lost { lease: i64, reason: String },
}

impl LeaseState {
    /// The deadline while held and not yet passed.
    pub fn live_deadline(&self) -> Option<BootInstant> {
        match self {
            Self::Held { deadline, .. } if !deadline.has_passed() => Some(*deadline),
            _ => None,
        }
    }
}

/// A running renewal task. Dropping it stops the task (the lease is left to
/// expire; release or revoke first for a prompt hand-over).
pub struct RenewalHandle {
    state: watch::Receiver<LeaseState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Election>>,
}

impl RenewalHandle {
    /// A receiver of every state change.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    pub fn current(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Stops renewing and gives the election back (e.g. to release the key).
    pub async fn stop(mut self) -> Option<Election> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take()?.await.ok()
    }
}

impl Drop for RenewalHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// How long to wait before retrying a renewal that failed for a transient reason.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Renews `lease` every `interval` on a dedicated task. With `prove_key`,
/// each renewal also proves the election's key is ours ([`Election::renew`]),
/// the first one at once; without, it only refreshes the lease (for a member key).
///
/// A failed proof or a lost lease ends ownership at once. A transient failure
/// is retried until the deadline; when the deadline passes without a
/// successful renewal, ownership is lost.
pub fn spawn_renewal(election: Election, lease: Lease, interval: Duration, prove_key: bool) -> RenewalHandle {
    spawn_renewal_extended(election, lease, interval, prove_key, None)
}

/// As [`spawn_renewal`], with a second source of the deadline: `extension`
/// (Patroni's failsafe mode: a deadline every other member has promised to
/// respect, the agent's to compute). The published deadline is the later of
/// the lease's and the extension's, so while renewals fail for a transient
/// reason (etcd out of reach) ownership lasts as long as either. A failed
/// proof or a lost lease still ends it at once, whatever the extension.
pub fn spawn_renewal_extended(
    mut election: Election,
    mut lease: Lease,
    interval: Duration,
    prove_key: bool,
    mut extension: Option<watch::Receiver<Option<BootInstant>>>,
) -> RenewalHandle {
    let initial = LeaseState::Held { lease: lease.id, deadline: extended(lease.deadline, &extension) };
    let (tx, rx) = watch::channel(initial);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // A task that proves a key proves it at once: the deadline it was
        // handed may be old (the lease's last plain keep-alive).
        let mut next_at = tokio::time::Instant::now() + if prove_key { Duration::ZERO } else { interval };
        loop {
            let deadline = extended(lease.deadline, &extension);
            tokio::select! {
                _ = &mut stop_rx => return election,
                _ = tokio::time::sleep_until(next_at) => {}
                _ = changed(&mut extension) => {
                    publish_extension(&tx, lease.id, deadline, extended(lease.deadline, &extension));
                    continue;
                }
                _ = tokio::time::sleep(deadline.remaining()) => {
                    lose(&tx, lease.id, "the deadline passed without a successful renewal");
                    return election;
                }
            }
            let (base, id) = (lease.deadline, lease.id);
            // An attempt etcd does not answer may take the request timeout:
            // an extension granted meanwhile is published meanwhile.
            let result = {
                let attempt = async {
                    if prove_key { election.renew(&mut lease).await } else { election.keep_alive(&mut lease).await }
                };
                tokio::pin!(attempt);
                loop {
                    let deadline = extended(base, &extension);
                    tokio::select! {
                        result = &mut attempt => break result,
                        _ = changed(&mut extension) => {
                            publish_extension(&tx, id, deadline, extended(base, &extension));
                        }
                        _ = tokio::time::sleep(deadline.remaining()) => break Err(ElectionError::Timeout(interval)),
                    }
                }
            };
            let deadline = extended(lease.deadline, &extension);
            match result {
                Ok(renewed) => {
                    next_at = tokio::time::Instant::now() + interval;
                    tx.send_replace(LeaseState::Held { lease: lease.id, deadline: renewed.max(deadline) });
                }
                Err(e @ (ElectionError::NotHolder { .. } | ElectionError::LeaseLost(_))) => {
                    lose(&tx, lease.id, &e.to_string());
                    return election;
                }
                Err(e) if deadline.has_passed() => {
                    lose(&tx, lease.id, &format!("the deadline passed without a successful renewal ({e})"));
                    return election;
                }
                Err(e) => {
                    warn!(lease = format_args!("{:x}", lease.id), "failed to renew, retrying: {e}");
                    next_at = tokio::time::Instant::now() + RETRY_PAUSE.min(deadline.remaining());
                }
            }
        }
    });
    RenewalHandle { state: rx, stop: Some(stop_tx), task: Some(task) }
}

/// The later of the lease's deadline and the extension's.
fn extended(lease_deadline: BootInstant, extension: &Option<watch::Receiver<Option<BootInstant>>>) -> BootInstant {
    let granted = extension.as_ref().and_then(|rx| *rx.borrow());
    granted.map_or(lease_deadline, |until| lease_deadline.max(until))
}

/// Resolves when the extension changes; never without one (or once its
/// sender is gone).
async fn changed(extension: &mut Option<watch::Receiver<Option<BootInstant>>>) {
    let Some(rx) = extension.as_mut() else { return std::future::pending().await };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A new extension moves the published deadline at once (the fencer and
/// the acknowledgement hold follow it); never backwards.
fn publish_extension(tx: &watch::Sender<LeaseState>, lease: i64, before: BootInstant, now: BootInstant) {
    if now > before {
        info!(lease = format_args!("{lease:x}"), "deadline extended (failsafe)");
        tx.send_replace(LeaseState::Held { lease, deadline: now });
    }
}

fn lose(tx: &watch::Sender<LeaseState>, lease: i64, reason: &str) {
    info!(lease = format_args!("{lease:x}"), reason, "ownership lost");
    tx.send_replace(LeaseState::Lost { lease, reason: reason.to_string() });
}

/// The default renewal interval: four renewals per TTL.
pub fn default_interval(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(250))
}
