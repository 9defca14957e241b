//! One consistent read of a whole cluster's keys.

use etcd_client::GetOptions;

use crate::connect::Etcd;
use serde_json::Value;

use crate::keys::Keys;
use crate::model::{Failover, HistoryEntry, MemberData, MemberRole, Status, SyncState};

/// The leader key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub name: String,
    /// The lease the key is bound to.
    pub lease: i64,
    pub mod_revision: i64,
}

/// One `members/<name>` key.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberEntry {
    pub name: String,
    pub data: MemberData,
    pub lease: i64,
}

/// Every key of the cluster at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The etcd revision the view was read at.
    pub revision: i64,
    /// The system identifier; `Some("")` while the bootstrap winner runs initdb.
    pub initialize: Option<String>,
    /// The dynamic config and its mod revision (for compare-and-swap).
    pub config: Option<(Value, i64)>,
    pub leader: Option<LeaderView>,
    /// Members sorted by name.
    pub members: Vec<MemberEntry>,
    pub status: Option<Status>,
    pub failover: Option<Failover>,
    /// The `failover` key's mod revision (for compare-and-swap), 0 when absent.
    pub failover_revision: i64,
    pub sync: Option<SyncState>,
    /// The `sync` key's mod revision (0: absent), for compare-and-swap.
    pub sync_revision: i64,
    pub history: Vec<HistoryEntry>,
    /// The `history` key's mod revision (0: absent), for compare-and-swap.
    pub history_revision: i64,
    /// The `failsafe` key: member name to REST API URL (`None`: absent).
    pub failsafe: Option<std::collections::BTreeMap<String, String>>,
    /// Keys whose values could not be parsed, with the reason; reported, not fatal.
    pub unreadable: Vec<(String, String)>,
}

impl ClusterView {
    /// The dynamic config sets `synchronous_mode: quorum`: the standbys the
    /// `sync` key lists are quorum standbys (Patroni's role name), not
    /// synchronous ones.
    pub fn quorum_commit(&self) -> bool {
        self.config.as_ref().and_then(|(config, _)| config.get("synchronous_mode")).and_then(Value::as_str)
            == Some("quorum")
    }

    pub fn member(&self, name: &str) -> Option<&MemberEntry> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The `config` key read as the dynamic config (what it cannot use is
    /// left at its default, as every member reads it); `None` without the
    /// key, where each caller has its own fall-back.
    pub fn dynamic_config(&self) -> Option<pgwarden_config::DynamicConfig> {
        let (json, _) = self.config.as_ref()?;
        Some(pgwarden_config::DynamicConfig::read(json, "", &mut pgwarden_config::Problems::default()).0)
    }
}

/// A member's role in the cluster as Patroni's `/cluster` and `patronictl
/// list` name it: from the leader and `sync` keys, not from what the member
/// says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    Leader,
    /// The leader of a standby cluster.
    StandbyLeader,
    /// Listed in the `sync` key, synchronous mode `on`.
    SyncStandby,
    /// Listed in the `sync` key, synchronous mode `quorum`.
    QuorumStandby,
    Replica,
}

impl ClusterRole {
    /// Patroni's name in `/cluster` (`leader`, `sync_standby`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Leader => "leader",
            ClusterRole::StandbyLeader => "standby_leader",
            ClusterRole::SyncStandby => "sync_standby",
            ClusterRole::QuorumStandby => "quorum_standby",
            ClusterRole::Replica => "replica",
        }
    }

    pub fn leads(self) -> bool {
        matches!(self, ClusterRole::Leader | ClusterRole::StandbyLeader)
    }
}

/// One member as `/cluster`, `pgwardenctl list` and the status page show
/// it: the one projection of a member key that all three share.
#[derive(Debug, Clone, Copy)]
pub struct MemberSummary<'a> {
    pub entry: &'a MemberEntry,
    pub role: ClusterRole,
    /// A replica's replication state (`streaming`, ...) where it reports
    /// one; otherwise the member's own state (`running`, ...).
    pub state: &'a str,
    /// Bytes behind the cluster's last known position (`status` key's
    /// optime), from the replayed position or the member's last WAL
    /// position; `None` for the leader and where either is unknown.
    pub lag: Option<u64>,
}

impl ClusterView {
    /// Every member, sorted by name, with its role, state and lag.
    pub fn summaries(&self) -> Vec<MemberSummary<'_>> {
        let leader = self.leader.as_ref().map(|l| l.name.as_str());
        let sync = self.sync.as_ref().map(|s| s.members()).unwrap_or_default();
        let optime = self.status.as_ref().map(|s| s.optime);
        self.members
            .iter()
            .map(|entry| {
                let data = &entry.data;
                let role = if Some(entry.name.as_str()) == leader {
                    if data.member_role() == MemberRole::StandbyLeader {
                        ClusterRole::StandbyLeader
                    } else {
                        ClusterRole::Leader
                    }
                } else if sync.contains(&entry.name.as_str()) {
                    if self.quorum_commit() { ClusterRole::QuorumStandby } else { ClusterRole::SyncStandby }
                } else {
                    ClusterRole::Replica
                };
                let state = match &data.replication_state {
                    Some(replication) if !role.leads() => replication.as_str(),
                    _ => data.state.as_str(),
                };
                let lag = match (role.leads(), optime, data.replay_lsn.or(data.xlog_location)) {
                    (false, Some(optime), Some(position)) => Some(optime.saturating_sub(position)),
                    _ => None,
                };
                MemberSummary { entry, role, state, lag }
            })
            .collect()
    }
}

/// Reads the whole cluster prefix in one linearizable range request.
pub async fn read_cluster(etcd: &Etcd, keys: &Keys) -> Result<ClusterView, etcd_client::Error> {
    let prefix = keys.prefix().to_string();
    let response = etcd
        .call(|mut client| {
            let prefix = prefix.clone();
            async move { client.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let mut view = ClusterView { revision: response.header().map_or(0, |h| h.revision()), ..ClusterView::default() };
    let mut legacy_optime = None;
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value = kv.value();
        let mut unreadable = |why: String| view.unreadable.push((key.clone(), why));
        if let Some(name) = keys.member_name(&key) {
            match MemberData::parse(value) {
                Ok(data) => view.members.push(MemberEntry { name: name.to_string(), data, lease: kv.lease() }),
                Err(e) => unreadable(e.to_string()),
            }
        } else if key == keys.initialize() {
            view.initialize = Some(String::from_utf8_lossy(value).trim().to_string());
        } else if key == keys.config() {
            match serde_json::from_slice(value) {
                Ok(config) => view.config = Some((config, kv.mod_revision())),
                Err(e) => unreadable(e.to_string()),
            }
        } else if key == keys.leader() {
            view.leader = Some(LeaderView {
                name: String::from_utf8_lossy(value).into_owned(),
                lease: kv.lease(),
                mod_revision: kv.mod_revision(),
            });
        } else if key == keys.status() {
            match serde_json::from_slice(value) {
                Ok(status) => view.status = Some(status),
                Err(e) => unreadable(e.to_string()),
            }
        } else if key == keys.legacy_optime() {
            legacy_optime = String::from_utf8_lossy(value).trim().parse::<u64>().ok();
        } else if key == keys.failover() {
            view.failover = Failover::parse(value).filter(|f| *f != Failover::default());
            view.failover_revision = kv.mod_revision();
        } else if key == keys.sync() {
            match serde_json::from_slice(value) {
                Ok(sync) => {
                    view.sync = Some(sync);
                    view.sync_revision = kv.mod_revision();
                }
                Err(e) => unreadable(e.to_string()),
            }
        } else if key == keys.failsafe() {
            match serde_json::from_slice(value) {
                Ok(failsafe) => view.failsafe = Some(failsafe),
                Err(e) => unreadable(e.to_string()),
            }
        } else if key == keys.history() {
            match serde_json::from_slice(value) {
                Ok(history) => {
                    view.history = history;
                    view.history_revision = kv.mod_revision();
                }
                Err(e) => unreadable(e.to_string()),
            }
        }
    }
    if view.status.is_none()
        && let Some(optime) = legacy_optime
    {
        view.status = Some(Status { optime, ..Status::default() });
    }
    view.members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: &str, replication: Option<&str>, replay: Option<u64>) -> MemberEntry {
        let data = MemberData {
            role: role.into(),
            state: "running".into(),
            replication_state: replication.map(String::from),
            replay_lsn: replay,
            ..MemberData::default()
        };
        MemberEntry { name: name.into(), data, lease: 1 }
    }

    fn view(synchronous_mode: &str) -> ClusterView {
        ClusterView {
            config: Some((serde_json::json!({"synchronous_mode": synchronous_mode}), 1)),
            leader: Some(LeaderView { name: "a".into(), lease: 1, mod_revision: 1 }),
            members: vec![
                member("a", "primary", Some("streaming"), None),
                member("b", "replica", Some("streaming"), Some(90)),
                member("c", "replica", None, None),
                member("d", "primary", None, Some(100)),
            ],
            status: Some(Status { optime: 100, ..Status::default() }),
            sync: Some(SyncState { leader: Some("a".into()), sync_standby: Some("b".into()), quorum: None }),
            ..ClusterView::default()
        }
    }

    #[test]
    fn summaries_take_roles_from_the_keys_and_lag_from_the_status_key() {
        let view = view("on");
        let summaries = view.summaries();
        let seen: Vec<(&str, ClusterRole, &str, Option<u64>)> =
            summaries.iter().map(|s| (s.entry.name.as_str(), s.role, s.state, s.lag)).collect();
        assert_eq!(
            seen,
            [
                // The key holder leads; its own state, no lag.
                ("a", ClusterRole::Leader, "running", None),
                ("b", ClusterRole::SyncStandby, "streaming", Some(10)),
                // No position: lag unknown.
                ("c", ClusterRole::Replica, "running", None),
                // Says it is a primary, holds no key: a replica to the cluster.
                ("d", ClusterRole::Replica, "running", Some(0)),
            ]
        );
        assert_eq!(self::view("quorum").summaries()[1].role, ClusterRole::QuorumStandby);
        let mut standby = self::view("off");
        standby.members[0].data.role = "standby_leader".into();
        assert_eq!(standby.summaries()[0].role, ClusterRole::StandbyLeader);
        assert_eq!(ClusterRole::QuorumStandby.as_str(), "quorum_standby");
    }
}
