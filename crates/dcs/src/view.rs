//! One consistent read of a whole cluster's keys.

use etcd_client::GetOptions;

use crate::connect::Etcd;
use serde_json::Value;

use crate::keys::Keys;
use crate::model::{Failover, HistoryEntry, MemberData, Status, SyncState};

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
