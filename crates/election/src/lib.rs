//! The etcd lease and the keys bound to it: grant a lease, keep it alive,
//! acquire a key iff absent, renew it by a transaction that proves the key is
//! still ours, release it iff ours, watch keys, and the *local deadline* after
//! which ownership can no longer be assumed (DESIGN.md invariant 1).
//!
//! This crate knows nothing about PostgreSQL and decides nothing: it reports
//! what etcd says, and the time up to which that report is safe to act on.
//! It must never extend a deadline without a successful renewal transaction.

mod keeper;
mod watch;

use std::time::Duration;

use dcs::Etcd;
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tracing::debug;

pub use bootclock::BootInstant;
pub use keeper::{LeaseState, RenewalHandle, default_interval, spawn_renewal, spawn_renewal_extended};
pub use watch::{WatchEvent, Watcher, watch};

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// etcd does not know the lease any more: it expired or was revoked.
    #[error("lease {0:x} expired or was revoked")]
    LeaseLost(i64),
    /// The key is not ours (any more): another value or another lease holds it.
    #[error("key {key} is not held by {member} on lease {lease:x}")]
    NotHolder { key: String, member: String, lease: i64 },
    /// etcd did not answer within the request timeout.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd unavailable: {}", dcs::describe_error(.0))]
    Unavailable(#[source] etcd_client::Error),
}

/// etcd's answer that a lease does not exist (expired or revoked), as the
/// keep-alive stream or a request reports it.
fn lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        etcd_client::Error::GRpcStatus(status) => status.message().contains("requested lease not found"),
        _ => false,
    }
}

impl From<etcd_client::Error> for ElectionError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Unavailable(e)
    }
}

/// What an election is about: one key, held by one member.
#[derive(Debug, Clone)]
pub struct ElectionSettings {
    /// The full key, e.g. `/service/batman/leader`.
    pub key: String,
    /// The value written: the member name.
    pub member: String,
    /// The TTL requested for leases.
    pub ttl: Duration,
    /// Subtracted from the lease's expiry to give the local deadline: at
    /// least the worst-case time to fence.
    pub fence_margin: Duration,
    /// Every etcd call fails after this long.
    pub request_timeout: Duration,
}

/// A granted lease and the local deadline it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The TTL etcd granted (it may differ from the one asked for).
    pub granted_ttl: Duration,
    /// Up to when ownership of keys on this lease may be assumed.
    pub deadline: BootInstant,
}

/// The holder of a key, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub member: String,
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// The result of one attempt to take the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The key was absent and is now ours, bound to the lease.
    Won { deadline: BootInstant },
    /// Someone holds it (possibly us, on an older lease).
    Held(Holder),
}

/// One member's side of an election.
pub struct Election {
    etcd: Etcd,
    settings: ElectionSettings,
    /// The open keep-alive stream: lease, endpoint index, keeper, responses.
    keep_alive: Option<KeepAliveStream>,
}

struct KeepAliveStream {
    lease: i64,
    endpoint: usize,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl Election {
    pub fn new(etcd: Etcd, settings: ElectionSettings) -> Self {
        Self { etcd, settings, keep_alive: None }
    }

    pub fn settings(&self) -> &ElectionSettings {
        &self.settings
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// One keep-alive exchange on the current endpoint's stream.
    async fn keep_alive_once(&mut self, lease: i64) -> Result<i64, etcd_client::Error> {
        if self.keep_alive.as_ref().is_none_or(|k| k.lease != lease) {
            let (endpoint, mut client) = self.etcd.client().await?;
            let (keeper, responses) = match client.lease_keep_alive(lease).await {
                Ok(stream) => stream,
                Err(e) => {
                    self.etcd.report_failure(endpoint);
                    return Err(e);
                }
            };
            self.keep_alive = Some(KeepAliveStream { lease, endpoint, keeper, responses });
        }
        let stream = self.keep_alive.as_mut().expect("keep-alive stream was just set");
        let result = async {
            stream.keeper.keep_alive().await?;
            stream.responses.message().await
        }
        .await;
        match result {
            Ok(Some(response)) => Ok(response.ttl()),
            Ok(None) => {
                let endpoint = stream.endpoint;
                self.keep_alive = None;
                self.etcd.report_failure(endpoint);
                Err(etcd_client::Error::LeaseKeepAliveError("keep-alive stream closed".into()))
            }
            Err(e) => {
                let endpoint = stream.endpoint;
                self.keep_alive = None;
                self.etcd.report_failure(endpoint);
                Err(e)
            }
        }
    }

    /// The deadline for a lease whose refresh was *sent* at `sent`.
    fn deadline(&self, sent: BootInstant, granted_ttl: Duration) -> BootInstant {
        (sent + granted_ttl).saturating_sub(self.settings.fence_margin)
    }

    /// Grants a new lease with the configured TTL.
    pub async fn grant(&mut self) -> Result<Lease, ElectionError> {
        let sent = BootInstant::now();
        let ttl = self.settings.ttl.as_secs().max(1) as i64;
        let response = self.etcd.call(|mut client| async move { client.lease_grant(ttl, None).await }).await?;
        let granted_ttl = Duration::from_secs(response.ttl().max(0) as u64);
        debug!(lease = format_args!("{:x}", response.id()), ?granted_ttl, "lease granted");
        Ok(Lease { id: response.id(), granted_ttl, deadline: self.deadline(sent, granted_ttl) })
    }

    /// Refreshes the lease once and returns its new deadline. This alone does
    /// not prove any key is still ours: use [`Election::renew`] for the leader key.
    pub async fn keep_alive(&mut self, lease: &mut Lease) -> Result<BootInstant, ElectionError> {
        let sent = BootInstant::now();
        let budget = self.settings.request_timeout;
        let started = tokio::time::Instant::now();
        let n_endpoints = self.etcd.endpoints().len();
        let mut attempt = 0;
        let ttl = loop {
            attempt += 1;
            let remaining = budget.saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, self.keep_alive_once(lease.id)).await {
                Ok(Ok(ttl)) => break ttl,
                // etcd answered that the lease is gone: not a transient
                // failure to retry until the deadline (a failsafe extension
                // may put that far off), but the loss itself.
                Ok(Err(e)) if lease_not_found(&e) => {
                    self.keep_alive = None;
                    return Err(ElectionError::LeaseLost(lease.id));
                }
                Ok(Err(e)) if attempt < n_endpoints && dcs::is_unreachable(&e) => continue,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    if let Some(stream) = self.keep_alive.take() {
                        self.etcd.report_failure(stream.endpoint);
                    }
                    return Err(ElectionError::Timeout(budget));
                }
            }
        };
        if ttl <= 0 {
            self.keep_alive = None;
            return Err(ElectionError::LeaseLost(lease.id));
        }
        lease.granted_ttl = Duration::from_secs(ttl as u64);
        lease.deadline = self.deadline(sent, lease.granted_ttl);
        Ok(lease.deadline)
    }

    fn holder_from(kv: &etcd_client::KeyValue) -> Holder {
        Holder {
            member: String::from_utf8_lossy(kv.value()).into_owned(),
            lease: kv.lease(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        }
    }

    /// Takes the key iff it is absent (`create_revision == 0`), bound to the
    /// lease, in one transaction; otherwise reports who holds it.
    pub async fn acquire(&mut self, lease: &Lease) -> Result<Acquired, ElectionError> {
        let key = self.settings.key.clone();
        let Some(found) = self.etcd.create_on_lease_or_read(&key, &self.settings.member, lease.id).await? else {
            return Ok(Acquired::Won { deadline: lease.deadline });
        };
        let holder = found.as_ref().map(Self::holder_from);
        match holder {
            // A retried request whose first attempt was applied finds our own
            // key on our lease: that is a win.
            Some(holder) if holder.member == self.settings.member && holder.lease == lease.id => {
                Ok(Acquired::Won { deadline: lease.deadline })
            }
            Some(holder) => Ok(Acquired::Held(holder)),
            // Deleted between the compare and the get cannot happen inside one
            // transaction; an empty answer means etcd misbehaved.
            None => Err(ElectionError::NotHolder { key, member: self.settings.member.clone(), lease: lease.id }),
        }
    }

    /// Refreshes the lease, then proves with a transaction that the key still
    /// holds our name on this lease. The new deadline counts from the moment
    /// the refresh was sent. Any failure means ownership is not proven.
    pub async fn renew(&mut self, lease: &mut Lease) -> Result<BootInstant, ElectionError> {
        let deadline = self.keep_alive(lease).await?;
        let key = self.settings.key.clone();
        if self.etcd.holds_on_lease(&key, &self.settings.member, lease.id).await? {
            Ok(deadline)
        } else {
            Err(ElectionError::NotHolder { key, member: self.settings.member.clone(), lease: lease.id })
        }
    }

    /// Deletes the key iff it holds our name on this lease. Returns whether it
    /// was deleted. The lease itself stays (it may carry the member key).
    pub async fn release(&mut self, lease: &Lease) -> Result<bool, ElectionError> {
        Ok(self.etcd.delete_if_on_lease(&self.settings.key, &self.settings.member, lease.id).await?)
    }

    /// Revokes the lease: every key bound to it disappears at once.
    pub async fn revoke(&mut self, lease: &Lease) -> Result<(), ElectionError> {
        self.keep_alive = None;
        let id = lease.id;
        self.etcd.call(|mut client| async move { client.lease_revoke(id).await }).await?;
        Ok(())
    }

    /// Who holds the key now, if anyone.
    pub async fn holder(&mut self) -> Result<Option<Holder>, ElectionError> {
        Ok(self.holder_at().await?.0)
    }

    /// Who holds the key now, and the store's revision when it was read: a
    /// watch started after that revision misses no change since the read,
    /// and, unlike the key's own revision, it is recent enough that etcd has
    /// not compacted it away (a watch from a compacted revision is cancelled
    /// at once, whatever it is retried with).
    pub async fn holder_at(&mut self) -> Result<(Option<Holder>, i64), ElectionError> {
        let key = self.settings.key.clone();
        let response = self
            .etcd
            .call(|mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok((response.kvs().first().map(Self::holder_from), revision))
    }
}
