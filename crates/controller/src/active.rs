//! Exactly one active controller per cluster: the one whose lease holds the
//! `pgwarden-controller` key (value `{"member": ..., "url": <gRPC URL>}`), taken and renewed
//! with the `election` crate. The others forward write requests to it.

use std::time::Duration;

use dcs::Etcd;
use election::{Acquired, Election, ElectionSettings, Lease, LeaseState, spawn_renewal};
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

/// The key's value: `{"member": ..., "url": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerKey {
    pub member: String,
    pub url: String,
}

impl ControllerKey {
    pub fn new(member: &str, url: &str) -> Self {
        Self { member: member.into(), url: url.into() }
    }

    pub fn encode(&self) -> String {
        serde_json::json!({"member": self.member, "url": self.url}).to_string()
    }

    /// The JSON value, or `<member> <url>` as controllers before it wrote
    /// the key (met during a rolling upgrade).
    pub fn parse(value: &str) -> Self {
        serde_json::from_str(value).unwrap_or_else(|_| {
            let (member, url) = value.split_once(' ').unwrap_or((value, ""));
            Self::new(member, url)
        })
    }
}

/// How often a standby controller looks whether the key is free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// A standby's longest wait between two looks at the key, should its watch
/// go quiet without an error.
const STANDBY_SAFETY_POLL: Duration = Duration::from_secs(30);

/// Waits until the key changes after `revision` (the store's revision when
/// it was read: it expired, was released or taken over), watching it rather
/// than polling etcd.
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

/// How the active controller's term ended.
enum TermEnd {
    /// The renewal task gave up the lease (reason logged here).
    Lease(String),
    /// The key changed under it: deleted, or written by someone else.
    Key,
}

/// One term as the active controller, from a won key to its loss.
///
/// The key is bound to the lease, so a keep-alive proves the lease lives; a
/// watch on the key proves nobody deleted or overwrote it, at once and with
/// no request of its own while nothing changes (a proving transaction at
/// every renewal was half of the active controller's etcd requests at idle).
/// Returns the election, the lease revoked.
#[allow(clippy::too_many_arguments)]
async fn serve_term(
    etcd: &Etcd,
    settings: &ElectionSettings,
    mut election: Election,
    lease: Lease,
    ttl: Duration,
    tx: &watch::Sender<ActiveState>,
    member: &str,
    url: &str,
) -> Election {
    // The revision the watch starts after, read back: the key is ours only
    // if it still carries our name on our lease.
    let mut revision = match election.holder_at().await {
        Ok((Some(holder), read_at)) if holder.member == settings.member && holder.lease == lease.id => read_at,
        Ok(_) => {
            warn!("the controller key changed right after this controller took it: standing by");
            let _ = election.revoke(&lease).await;
            return election;
        }
        Err(e) => {
            warn!("cannot read back the controller key just taken: {e}");
            let _ = election.revoke(&lease).await;
            tokio::time::sleep(STANDBY_POLL).await;
            return election;
        }
    };
    info!("this controller is now the active one");
    tx.send_replace(ActiveState { this_one: true, member: member.to_string(), url: url.to_string() });
    let handle = spawn_renewal(election, lease, election::default_interval(ttl), false);
    let mut state = handle.subscribe();
    let end = loop {
        tokio::select! {
            // An error means the renewal task ended: ownership is gone as well.
            _ = async { let _ = state.wait_for(|s| matches!(s, LeaseState::Lost { .. })).await; } => {
                let reason = match handle.current() {
                    LeaseState::Lost { reason, .. } => reason,
                    LeaseState::Held { .. } => "the renewal task ended".to_string(),
                };
                break TermEnd::Lease(reason);
            }
            changed = key_changed(etcd, &settings.key, revision) => {
                if changed {
                    break TermEnd::Key;
                }
                // The watch ended without an event (etcd closed it, or it
                // could not start): the key is looked at before watching again.
                match Election::new(etcd.clone(), settings.clone()).holder_at().await {
                    Ok((Some(holder), read_at)) if holder.member == settings.member
                        && holder.lease == lease.id
                        && holder.mod_revision <= revision =>
                    {
                        revision = read_at;
                    }
                    Ok(_) => break TermEnd::Key,
                    Err(_) => tokio::time::sleep(STANDBY_POLL).await,
                }
            }
        }
    };
    match &end {
        TermEnd::Lease(reason) => warn!("no longer the active controller: {reason}"),
        TermEnd::Key => warn!("no longer the active controller: its key was deleted or written by someone else"),
    }
    let mut election = handle.stop().await.unwrap_or_else(|| Election::new(etcd.clone(), settings.clone()));
    let _ = election.revoke(&lease).await;
    election
}

/// Whether the key changes after `revision`: `true` on a change, `false`
/// when the watch ends or cannot start without one (after a pause, so that a
/// watch etcd keeps cancelling is not retried in a tight loop).
async fn key_changed(etcd: &Etcd, key: &str, revision: i64) -> bool {
    if let Ok(mut watcher) = election::watch(etcd, key, false, Some(revision)).await
        && let Ok(Some(_)) = watcher.next().await
    {
        return true;
    }
    tokio::time::sleep(STANDBY_POLL).await;
    false
}

/// Runs the election for ever, publishing who is active.
pub async fn run(etcd: Etcd, key: String, member: String, url: String, ttl: Duration, tx: watch::Sender<ActiveState>) {
    let settings = ElectionSettings {
        key,
        member: ControllerKey::new(&member, &url).encode(),
        ttl,
        fence_margin: Duration::from_secs(1),
        request_timeout: etcd.settings().request_timeout,
    };
    let mut election = Election::new(etcd.clone(), settings.clone());
    loop {
        // Standby: read the holder; try only when the key is free.
        match election.holder_at().await {
            // Our own key from before a restart (same member, same URL): the
            // old process is gone, so the key is freed at once rather than
            // left to expire (and never forwarded to: that would be us).
            Ok((Some(holder), _)) if ControllerKey::parse(&holder.member) == ControllerKey::new(&member, &url) => {
                match etcd.delete_if_revision(&settings.key, holder.mod_revision).await {
                    Ok(true) => info!("removed this member's controller key left by a previous run"),
                    // Changed since it was read: looked at again.
                    Ok(false) => {}
                    Err(e) => {
                        warn!("cannot remove this member's old controller key: {}", dcs::describe_error(&e));
                        tokio::time::sleep(STANDBY_POLL).await;
                    }
                }
                continue;
            }
            Ok((Some(holder), read_at)) => {
                let ControllerKey { member, url } = ControllerKey::parse(&holder.member);
                tx.send_if_modified(|state| {
                    let next = ActiveState { this_one: false, member, url };
                    let changed = *state != next;
                    *state = next;
                    changed
                });
                until_changed(&etcd, &settings.key, read_at).await;
                continue;
            }
            Ok((None, _)) => {}
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
                election = serve_term(&etcd, &settings, election, lease, ttl, &tx, &member, &url).await;
                tx.send_replace(ActiveState::default());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_json_and_the_old_space_separated_value_still_reads() {
        let key = ControllerKey::new("node1", "https://10.0.0.1:10008");
        let value = key.encode();
        assert_eq!(value, r#"{"member":"node1","url":"https://10.0.0.1:10008"}"#);
        assert_eq!(ControllerKey::parse(&value), key);
        assert_eq!(ControllerKey::parse("node1 https://10.0.0.1:10008"), key, "written before the JSON value");
        assert_eq!(ControllerKey::parse("node1"), ControllerKey::new("node1", ""));
    }
}
