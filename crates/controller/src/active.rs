//! Exactly one active controller per cluster: the one whose lease holds the
//! `pgwarden-controller` key (value `<member> <grpc url>`), taken and renewed
//! with the `election` crate. The others forward write requests to it.

use std::time::Duration;

use dcs::Etcd;
use election::{Acquired, Election, ElectionSettings, LeaseState, spawn_renewal};
use tokio::sync::watch;
use tracing::{info, warn};

/// Who is active, as this controller knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveState {
    /// This controller holds the key (its deadline has not passed).
    pub this_one: bool,
    pub member: String,
    pub url: String,
}

fn parse(value: &str) -> (String, String) {
    let (member, url) = value.split_once(' ').unwrap_or((value, ""));
    (member.to_string(), url.to_string())
}

/// How often a standby controller looks whether the key is free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// A standby's longest wait between two looks at the key, should its watch
/// go quiet without an error.
const STANDBY_SAFETY_POLL: Duration = Duration::from_secs(30);

/// Waits until the key changes after `revision` (it expired, was released
/// or taken over), watching it rather than polling etcd.
async fn until_changed(etcd: &Etcd, key: &str, revision: i64) {
    let watched = async {
        match election::watch(etcd, key, false, Some(revision)).await {
            Ok(mut watcher) => {
                let _ = watcher.next().await;
            }
            Err(_) => tokio::time::sleep(STANDBY_POLL).await,
        }
    };
    let _ = tokio::time::timeout(STANDBY_SAFETY_POLL, watched).await;
}

/// Runs the election for ever, publishing who is active.
pub async fn run(etcd: Etcd, key: String, member: String, url: String, ttl: Duration, tx: watch::Sender<ActiveState>) {
    let settings = ElectionSettings {
        key,
        member: format!("{member} {url}"),
        ttl,
        fence_margin: Duration::from_secs(1),
        request_timeout: etcd.settings().request_timeout,
    };
    let mut election = Election::new(etcd.clone(), settings.clone());
    loop {
        // Standby: read the holder; try only when the key is free.
        match election.holder().await {
            // Our own key from before a restart (same member, same URL): the
            // old process is gone, so the key is freed at once rather than
            // left to expire (and never forwarded to: that would be us).
            Ok(Some(holder)) if holder.member == settings.member => {
                let key = settings.key.as_str();
                let txn = etcd_client::Txn::new()
                    .when([
                        etcd_client::Compare::value(key, etcd_client::CompareOp::Equal, holder.member.as_str()),
                        etcd_client::Compare::mod_revision(key, etcd_client::CompareOp::Equal, holder.mod_revision),
                    ])
                    .and_then([etcd_client::TxnOp::delete(key, None)]);
                match etcd.txn(txn).await {
                    Ok(_) => info!("removed this member's controller key left by a previous run"),
                    Err(e) => {
                        warn!("cannot remove this member's old controller key: {}", dcs::describe_error(&e));
                        tokio::time::sleep(STANDBY_POLL).await;
                    }
                }
                continue;
            }
            Ok(Some(holder)) => {
                let (member, url) = parse(&holder.member);
                tx.send_if_modified(|state| {
                    let next = ActiveState { this_one: false, member, url };
                    let changed = *state != next;
                    *state = next;
                    changed
                });
                until_changed(&etcd, &settings.key, holder.mod_revision).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                warn!("cannot read the active controller key: {e}");
                tokio::time::sleep(STANDBY_POLL).await;
                continue;
            }
        }
        let lease = match election.grant().await {
            Ok(lease) => lease,
            Err(e) => {
                warn!("cannot take a lease for the controller election: {e}");
                tokio::time::sleep(STANDBY_POLL).await;
                continue;
            }
        };
        match election.acquire(&lease).await {
            Ok(Acquired::Won { .. }) => {
                info!("this controller is now the active one");
                tx.send_replace(ActiveState { this_one: true, member: member.clone(), url: url.clone() });
                let handle = spawn_renewal(election, lease, election::default_interval(ttl), true);
                let mut state = handle.subscribe();
                // An error means the renewal task ended: ownership is gone as well.
                let _ = state.wait_for(|s| matches!(s, LeaseState::Lost { .. })).await;
                if let LeaseState::Lost { reason, .. } = handle.current() {
                    warn!("no longer the active controller: {reason}");
                }
                tx.send_replace(ActiveState::default());
                election = handle.stop().await.unwrap_or_else(|| Election::new(etcd.clone(), settings.clone()));
            }
            Ok(Acquired::Held(_)) => {
                let _ = election.revoke(&lease).await;
            }
            Err(e) => {
                warn!("failed to take the controller key: {e}");
                let _ = election.revoke(&lease).await;
                tokio::time::sleep(STANDBY_POLL).await;
            }
        }
    }
}
