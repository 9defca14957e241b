//! The JSON values stored in the cluster's keys, with Patroni's field names.
//! Unknown fields are kept (`extra`) so that a value written by a newer
//! Patroni or pgwarden survives a read-modify-write.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How far a base backup (a clone, a reinit) has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneProgress {
    pub done_bytes: u64,
    /// The estimate pg_basebackup makes at its start (0: unknown).
    pub total_bytes: u64,
    /// Bytes per second since the copy began.
    pub bytes_per_second: u64,
    /// Estimated seconds left (`None`: no rate or no total yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_left: Option<u64>,
}

impl CloneProgress {
    /// Progress after `elapsed` of copying: the rate since the start and the
    /// time left at that rate.
    pub fn measure(done_bytes: u64, total_bytes: u64, elapsed: std::time::Duration) -> Self {
        let millis = elapsed.as_millis().min(u128::from(u64::MAX)) as u64;
        let bytes_per_second = done_bytes.saturating_mul(1000).checked_div(millis).unwrap_or(0);
        let seconds_left = (bytes_per_second > 0 && total_bytes > 0)
            .then(|| total_bytes.saturating_sub(done_bytes).div_ceil(bytes_per_second));
        Self { done_bytes, total_bytes, bytes_per_second, seconds_left }
    }
}

/// `45% (360 MB of 800 MB, 40 MB/s, 11 s left)`.
impl std::fmt::Display for CloneProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        if let Some(percent) = (self.done_bytes.min(self.total_bytes).saturating_mul(100)).checked_div(self.total_bytes)
        {
            write!(f, "{percent}% ({:.0} MB of {:.0} MB", mb(self.done_bytes), mb(self.total_bytes))?;
        } else {
            write!(f, "({:.0} MB", mb(self.done_bytes))?;
        }
        write!(f, ", {:.1} MB/s", mb(self.bytes_per_second))?;
        match self.seconds_left {
            Some(left) => write!(f, ", {left} s left)"),
            None => f.write_str(")"),
        }
    }
}

/// `members/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberData {
    /// `postgres://host:port/postgres`.
    #[serde(default)]
    pub conn_url: String,
    /// `http(s)://host:port/patroni`.
    #[serde(default)]
    pub api_url: String,
    /// PostgreSQL state: `running`, `stopped`, `starting`, ...
    #[serde(default)]
    pub state: String,
    /// `primary`, `replica`, `standby_leader`, `demoted` or `uninitialized`.
    #[serde(default)]
    pub role: String,
    /// Version of the agent (Patroni's version for a Patroni member).
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    /// pgwarden's own: the agent's gRPC endpoint, absent for a Patroni member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_url: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A member's `role` as its key says it (Patroni 2's `master` is `primary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Primary,
    Replica,
    StandbyLeader,
    /// A primary that gave the key up with its PostgreSQL down.
    Demoted,
    Uninitialized,
    /// A role this version does not know: treated as none of the above.
    Other,
}

impl MemberRole {
    /// A role that only a member with a data directory has.
    pub fn has_data(self) -> bool {
        matches!(self, MemberRole::Primary | MemberRole::Replica | MemberRole::StandbyLeader)
    }
}

/// A member's tags that change what the others do ([`MemberData::known_tags`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTags {
    /// Never takes the leader key (`nofailover`, or without it a
    /// `failover_priority` of 0 or less: [`pgwarden_config::TagPair`]).
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub clonefrom: bool,
    /// Never a synchronous standby (`nosync`, or without it a
    /// `sync_priority` of 0 or less).
    pub nosync: bool,
    pub nostream: bool,
    /// The member it streams from (cascading replication).
    pub replicatefrom: Option<String>,
    /// Reconciled with `nofailover`: 0 when it never leads, else at least 1.
    pub failover_priority: u32,
    /// Reconciled with `nosync`: 0 when never synchronous, else at least 1.
    pub sync_priority: u32,
}

impl Default for MemberTags {
    fn default() -> Self {
        MemberTags {
            nofailover: false,
            noloadbalance: false,
            clonefrom: false,
            nosync: false,
            nostream: false,
            replicatefrom: None,
            failover_priority: 1,
            sync_priority: 1,
        }
    }
}

impl MemberTags {
    /// Never takes the leader key.
    pub fn never_leads(&self) -> bool {
        self.nofailover
    }

    /// Never a synchronous standby.
    pub fn never_sync(&self) -> bool {
        self.nosync
    }
}

impl MemberData {
    /// Parses a member value; a legacy `postgres://...` string becomes a
    /// member with only `conn_url`.
    pub fn parse(raw: &[u8]) -> Result<Self, serde_json::Error> {
        match serde_json::from_slice(raw) {
            Ok(member) => Ok(member),
            Err(e) => match std::str::from_utf8(raw) {
                Ok(text) if text.starts_with("postgres://") || text.starts_with("postgresql://") => {
                    Ok(Self { conn_url: text.to_string(), ..Self::default() })
                }
                _ => Err(e),
            },
        }
    }

    /// Its `role` field, typed.
    pub fn member_role(&self) -> MemberRole {
        match self.role.as_str() {
            "primary" | "master" => MemberRole::Primary,
            "replica" => MemberRole::Replica,
            "standby_leader" => MemberRole::StandbyLeader,
            "demoted" => MemberRole::Demoted,
            "uninitialized" => MemberRole::Uninitialized,
            _ => MemberRole::Other,
        }
    }

    /// Its PostgreSQL runs (`state: running`).
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }

    /// The tags pgwarden acts on, read as Patroni reads another member's:
    /// a boolean as `true` or a string such as `'true'` or `'on'` (a member
    /// whose config quoted it), a number as a number or a string.
    pub fn known_tags(&self) -> MemberTags {
        let flag = |name: &str| self.tags.get(name).and_then(pgwarden_config::parse_bool) == Some(true);
        let failover = pgwarden_config::TagPair::from_tags(&self.tags, "nofailover", "failover_priority");
        let sync = pgwarden_config::TagPair::from_tags(&self.tags, "nosync", "sync_priority");
        MemberTags {
            nofailover: failover.never,
            noloadbalance: flag("noloadbalance"),
            clonefrom: flag("clonefrom"),
            nosync: sync.never,
            nostream: flag("nostream"),
            replicatefrom: self.tags.get("replicatefrom").and_then(Value::as_str).map(str::to_string),
            failover_priority: failover.priority,
            sync_priority: sync.priority,
        }
    }

    fn flag(&self, field: &str) -> Option<bool> {
        self.extra.get(field).and_then(Value::as_bool)
    }

    /// pgwarden's `fencer_ready`: false only when the member says its fencer
    /// is not armed yet (it may not take the leader key); a member that says
    /// nothing (Patroni's) is not held back.
    pub fn fencer_ready(&self) -> bool {
        self.flag("fencer_ready") != Some(false)
    }

    /// pgwarden's `released_leader`: the member gave the leader key up and
    /// has not taken part in a race since.
    pub fn released_leader(&self) -> bool {
        self.flag("released_leader") == Some(true)
    }

    /// Patroni's `checkpoint_after_promote: false`: a primary just promoted
    /// whose checkpoint has not finished (`pg_rewind` from it would fail).
    pub fn awaits_checkpoint_after_promote(&self) -> bool {
        self.flag("checkpoint_after_promote") == Some(false)
    }

    /// Patroni's `pending_restart`.
    pub fn pending_restart(&self) -> bool {
        self.flag("pending_restart") == Some(true)
    }

    /// Patroni's `pause`: the member runs with cluster management paused.
    pub fn paused(&self) -> bool {
        self.flag("pause") == Some(true)
    }

    /// Patroni's `version` (the agent's).
    pub fn version(&self) -> Option<&str> {
        self.extra.get("version").and_then(Value::as_str)
    }

    /// Patroni's `scheduled_restart` object.
    pub fn scheduled_restart(&self) -> Option<&Value> {
        self.extra.get("scheduled_restart")
    }

    /// A text field of the scheduled restart (`schedule`, `postgres_version`),
    /// empty when there is none.
    pub fn scheduled_restart_field(&self, field: &str) -> &str {
        self.scheduled_restart().and_then(|s| s.get(field)).and_then(Value::as_str).unwrap_or_default()
    }

    /// Patroni's `pending_restart_reason`: parameter to `{old_value, new_value}`.
    pub fn pending_restart_reason(&self) -> Option<&Map<String, Value>> {
        self.extra.get("pending_restart_reason").and_then(Value::as_object)
    }

    /// A member cloning its data directory: how far (pgwarden's
    /// `clone_progress` field, written while `state` is `creating replica`).
    pub fn clone_progress(&self) -> Option<CloneProgress> {
        serde_json::from_value(self.extra.get("clone_progress")?.clone()).ok()
    }

    /// Host and port from `conn_url`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let rest = self.conn_url.split_once("://")?.1;
        let authority = rest.split('/').next()?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let (host, port) = authority.rsplit_once(':')?;
        Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().ok()?))
    }
}

/// `status`: `{"optime": <lsn>, "slots": {...}, "retain_slots": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub optime: u64,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub slots: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain_slots: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `failover`: `{"leader", "member", "scheduled_at"}`, any field absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl Failover {
    /// Parses JSON, or Patroni's legacy `leader:candidate` text.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        if let Ok(failover) = serde_json::from_slice::<Self>(raw) {
            return Some(failover);
        }
        let text = std::str::from_utf8(raw).ok()?;
        let (leader, member) = text.split_once(':')?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Some(Self { leader: some(leader), member: some(member), scheduled_at: None })
    }

    /// When the request is to be carried out, from `scheduled_at`.
    pub fn scheduled(&self) -> Scheduled {
        match self.scheduled_at.as_deref() {
            None | Some("") => Scheduled::Now,
            Some(at) => parse_scheduled_at(at).map_or_else(|| Scheduled::Unreadable(at.to_string()), Scheduled::At),
        }
    }
}

/// When a `failover` request is to be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheduled {
    /// No time given (absent or empty): now.
    Now,
    At(time::OffsetDateTime),
    /// Not an ISO 8601 time with a zone: never carried out as it is.
    Unreadable(String),
}

/// `scheduled_at` as Patroni writes it: ISO 8601 (RFC 3339) with a zone.
pub fn parse_scheduled_at(at: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
}

/// `sync`: `{"leader", "sync_standby": "a,b" | null, "quorum"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

impl SyncState {
    /// The members listed as synchronous standbys.
    pub fn members(&self) -> Vec<&str> {
        self.sync_standby.as_deref().map(|s| s.split(',').filter(|m| !m.is_empty()).collect()).unwrap_or_default()
    }
}

/// One `history` entry: a timeline switch. Stored as Patroni writes it, an
/// array `[timeline, switch_lsn, reason, timestamp, new_leader]` whose last
/// two may be missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "HistoryRow", into = "HistoryRow")]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub timeline: u64,
    /// Where it ended (the next one's first position).
    pub switch_lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

/// [`HistoryEntry`] as etcd holds it.
#[derive(Serialize, Deserialize)]
struct HistoryRow(u64, u64, String, #[serde(default)] Option<String>, #[serde(default)] Option<String>);

impl From<HistoryRow> for HistoryEntry {
    fn from(HistoryRow(timeline, switch_lsn, reason, timestamp, new_leader): HistoryRow) -> Self {
        Self { timeline, switch_lsn, reason, timestamp, new_leader }
    }
}

impl From<HistoryEntry> for HistoryRow {
    fn from(e: HistoryEntry) -> Self {
        Self(e.timeline, e.switch_lsn, e.reason, e.timestamp, e.new_leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_progress_measures_rate_and_time_left_and_reads_from_the_member_key() {
        let p = CloneProgress::measure(100 << 20, 400 << 20, std::time::Duration::from_secs(10));
        assert_eq!(p.bytes_per_second, 10 << 20);
        assert_eq!(p.seconds_left, Some(30));
        assert_eq!(p.to_string(), "25% (100 MB of 400 MB, 10.0 MB/s, 30 s left)");
        let start = CloneProgress::measure(0, 400 << 20, std::time::Duration::ZERO);
        assert_eq!(start.seconds_left, None);
        assert_eq!(start.to_string(), "0% (0 MB of 400 MB, 0.0 MB/s)");
        let unknown_total = CloneProgress::measure(50 << 20, 0, std::time::Duration::from_secs(5));
        assert_eq!(unknown_total.to_string(), "(50 MB, 10.0 MB/s)");
        let mut member = MemberData::default();
        assert_eq!(member.clone_progress(), None);
        member.extra.insert("clone_progress".into(), serde_json::to_value(p).expect("json"));
        assert_eq!(member.clone_progress(), Some(p));
    }

    #[test]
    fn tags_are_read_as_patroni_reads_another_members() {
        let raw = br#"{"conn_url":"postgres://h:5432/postgres","tags":{"nosync":"true","clonefrom":true,
            "nofailover":"no","sync_priority":"0","failover_priority":3,"replicatefrom":"pg2"}}"#;
        let tags = MemberData::parse(raw).expect("parses").known_tags();
        assert!(tags.nosync, "a quoted true");
        assert!(tags.clonefrom);
        assert!(!tags.nofailover);
        assert!(!tags.noloadbalance, "absent");
        assert_eq!(tags.sync_priority, 0, "nosync wins over sync_priority");
        assert!(tags.never_sync());
        assert_eq!(tags.failover_priority, 3);
        assert!(!tags.never_leads());
        assert_eq!(tags.replicatefrom.as_deref(), Some("pg2"));
        let plain = MemberData::default().known_tags();
        assert_eq!((plain.failover_priority, plain.sync_priority), (1, 1), "unset: 1");
        let read = |json: &str| MemberData::parse(json.as_bytes()).expect("parses").known_tags();
        let zero = read(r#"{"tags":{"failover_priority":"0","sync_priority":-1}}"#);
        assert!(zero.never_leads() && zero.never_sync(), "a priority of 0 or less without the boolean: never");
        // As Patroni: a written boolean wins over the priority beside it.
        let explicit =
            read(r#"{"tags":{"nofailover":false,"failover_priority":"0","nosync":"false","sync_priority":0}}"#);
        assert!(!explicit.never_leads() && !explicit.never_sync(), "{explicit:?}");
        assert_eq!((explicit.failover_priority, explicit.sync_priority), (0, 0), "taking part, ranked lowest");
        let refused = read(r#"{"tags":{"nofailover":true,"failover_priority":5}}"#);
        assert!(refused.never_leads());
        assert_eq!(refused.failover_priority, 0);
    }

    #[test]
    fn reads_a_patroni_member_and_keeps_unknown_fields() {
        let raw = br#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni",
            "state":"running","role":"replica","version":"4.1.0","xlog_location":67108864,"timeline":3,
            "replication_state":"streaming","tags":{"nofailover":true},"proxy_url":"x"}"#;
        let member = MemberData::parse(raw).expect("a Patroni member parses");
        assert_eq!(member.role, "replica");
        assert_eq!(member.xlog_location, Some(67_108_864));
        assert_eq!(member.host_port(), Some(("10.0.0.1".into(), 5432)));
        assert_eq!(member.extra.get("proxy_url"), Some(&Value::from("x")));
        let round = serde_json::to_value(&member).expect("serialise");
        assert_eq!(round["proxy_url"], "x");
        assert!(round.get("grpc_url").is_none(), "absent pgwarden fields are not written");
    }

    #[test]
    fn reads_legacy_values() {
        let member = MemberData::parse(b"postgres://u:p@h:5433/postgres").expect("legacy member");
        assert_eq!(member.host_port(), Some(("h".into(), 5433)));
        let failover = Failover::parse(b"pg1:pg2").expect("legacy failover");
        assert_eq!(failover.member.as_deref(), Some("pg2"));
        let history: Vec<HistoryEntry> = serde_json::from_str(
            r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","pg2"],[2,1,"x"]]"#,
        )
        .expect("history parses");
        assert_eq!(history[0].new_leader.as_deref(), Some("pg2"));
        assert_eq!(history[1].timestamp, None);
        assert_eq!(
            serde_json::to_string(&history).expect("written"),
            r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","pg2"],[2,1,"x",null,null]]"#,
            "written back as Patroni's arrays"
        );
        let sync = SyncState { leader: Some("a".into()), sync_standby: Some("b,c".into()), quorum: None };
        assert_eq!(sync.members(), ["b", "c"]);
    }

    #[test]
    fn a_request_is_scheduled_now_at_a_zoned_time_or_never() {
        let at = |scheduled_at: Option<&str>| {
            Failover { scheduled_at: scheduled_at.map(str::to_string), ..Default::default() }.scheduled()
        };
        assert_eq!(at(None), Scheduled::Now);
        assert_eq!(at(Some("")), Scheduled::Now, "an empty time is none, as the agents read it");
        let Scheduled::At(when) = at(Some("2026-12-01T03:00:00+01:00")) else { panic!("a zoned time") };
        assert_eq!(when.unix_timestamp(), 1_796_090_400);
        assert_eq!(at(Some("2026-12-01 03:00")), Scheduled::Unreadable("2026-12-01 03:00".into()), "no zone");
        assert_eq!(at(Some("tomorrow")), Scheduled::Unreadable("tomorrow".into()));
    }
}
