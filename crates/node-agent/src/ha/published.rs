//! What the HA loop publishes about itself: the view the status stream
//! carries, and Patroni's JSON of a pending restart's reason.

use super::*;

/// What the HA loop publishes for the status stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedStatus {
    pub leader: Option<String>,
    /// Deadline up to which the leader key is proven ours.
    pub leader_deadline: Option<BootInstant>,
    pub cluster_optime: Option<u64>,
    pub reason: String,
    pub refused: Option<String>,
    pub upstream: Option<String>,
    pub last_tick_unix_ms: i64,
    pub shutting_down: bool,
    pub paused: bool,
    /// Listed in the `sync` key: as a synchronous standby, or in quorum
    /// commit as a quorum standby.
    pub sync_standby: bool,
    pub quorum_standby: bool,
    pub ttl: u32,
    pub maximum_lag_on_failover: u64,
    pub tick_duration: Duration,
    pub etcd_read_duration: Duration,
    pub dcs_last_seen_unix_ms: i64,
    pub failsafe_mode: bool,
    pub failsafe_active: bool,
    /// The `failsafe` key as last read (JSON), empty when absent.
    pub failsafe_json: String,
    /// Patroni's `pending_restart_reason` (JSON), empty when nothing waits.
    pub pending_restart_reason_json: String,
    /// The member's tags as the config now has them (a reload may change
    /// them): JSON, and whether `noloadbalance` is set.
    pub tags_json: String,
    pub noloadbalance: bool,
    /// This member's standby follows the remote primary: with the leader
    /// key, it is a standby cluster's standby leader.
    pub follows_remote: bool,
}

impl PublishedStatus {
    /// Before the first tick: what the config says of this member.
    pub fn initial(config: &Config) -> Self {
        Self {
            tags_json: serde_json::Value::Object(config.tags.json.clone()).to_string(),
            noloadbalance: config.tags.noloadbalance,
            ..Self::default()
        }
    }
}

/// `pending_restart_reason` as Patroni writes it (`{"name": {"old_value",
/// "new_value"}}`); empty when nothing waits.
pub(super) fn pending_reason_json(reason: &std::collections::BTreeMap<String, (String, String)>) -> String {
    if reason.is_empty() {
        return String::new();
    }
    let map: serde_json::Map<String, serde_json::Value> = reason
        .iter()
        .map(|(name, (old, new))| (name.clone(), serde_json::json!({"old_value": old, "new_value": new})))
        .collect();
    serde_json::Value::Object(map).to_string()
}
