//! The dynamic (cluster-wide) configuration: `bootstrap.dcs` in the file, the
//! `config` key in etcd afterwards. The same reader validates both, so a
//! config edit is checked exactly as start-up is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::problem::Problems;
use crate::read::{Reader, scalar_text};

/// pgwarden's minimums for the timings (Patroni's are ttl 20, loop_wait 1,
/// retry_timeout 3). A short ttl is safe in pgwarden because the fence is
/// complete before the local deadline; see ARCHITECTURE.md.
pub const MIN_TTL: i64 = 6;
pub const MIN_LOOP_WAIT: i64 = 1;
pub const MIN_RETRY_TIMEOUT: i64 = 2;
/// pgwarden's default `primary_start_timeout` (Patroni's is 300 s); see ARCHITECTURE.md.
pub const DEFAULT_PRIMARY_START_TIMEOUT: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Off,
    On,
    Quorum,
}

/// A permanent replication slot (Patroni's `slots.<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermanentSlot {
    Physical,
    Logical { database: String, plugin: String },
}

/// Patroni's `standby_cluster` section: the remote primary this cluster
/// follows (its leader streams from it, or replays its archive only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyCluster {
    /// Host and port of the remote primary (`None`: archive only, through
    /// `restore_command`).
    pub host: Option<String>,
    pub port: u16,
    /// The slot the standby leader uses on the remote primary.
    pub primary_slot_name: Option<String>,
    pub restore_command: Option<String>,
    pub archive_cleanup_command: Option<String>,
    pub recovery_min_apply_delay: Option<String>,
    /// Names of the local `create_replica_methods` sections the first
    /// member clones the remote with (empty: pg_basebackup).
    pub create_replica_methods: Vec<String>,
}

impl StandbyCluster {
    /// The recovery settings of the standby leader.
    pub fn recovery_settings(&self) -> BTreeMap<String, String> {
        [
            ("restore_command", &self.restore_command),
            ("archive_cleanup_command", &self.archive_cleanup_command),
            ("recovery_min_apply_delay", &self.recovery_min_apply_delay),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
    }
}

/// `standby_cluster` at `path`: `None` when absent or null; a section
/// without `host` and `restore_command` is an error (the standby leader
/// would have nothing to follow).
fn standby_cluster(r: &mut Reader<'_>, path: &str) -> Option<StandbyCluster> {
    let value = r.get(path)?;
    if !value.is_object() {
        r.problems.error(path, "expected a section (host, port, primary_slot_name, restore_command, ...)");
        return None;
    }
    let key = |k: &str| format!("{path}.{k}");
    let standby = StandbyCluster {
        host: r.string(&key("host")).filter(|h| !h.is_empty()),
        port: r.int(&key("port"), 1, 65_535).map_or(5432, |p| p as u16),
        primary_slot_name: r.string(&key("primary_slot_name")).filter(|s| !s.is_empty()),
        restore_command: r.string(&key("restore_command")).filter(|s| !s.is_empty()),
        archive_cleanup_command: r.string(&key("archive_cleanup_command")).filter(|s| !s.is_empty()),
        recovery_min_apply_delay: match r.get(&key("recovery_min_apply_delay")) {
            Some(value) => match scalar_text(value) {
                Some(text) => Some(text),
                None => {
                    let found = crate::read::describe(value);
                    r.problems.error(
                        key("recovery_min_apply_delay"),
                        format!("expected a delay such as 5min, found {found}"),
                    );
                    None
                }
            },
            None => None,
        },
        create_replica_methods: r.string_list(&key("create_replica_methods")),
    };
    if let Some(slot) = standby.primary_slot_name.as_deref().filter(|s| !valid_slot_name(s)) {
        r.problems.error(key("primary_slot_name"), format!("{slot:?} is not a replication slot name (a-z, 0-9, _)"));
    }
    if standby.host.is_none() && standby.restore_command.is_none() {
        r.problems.error(
            path,
            "a standby cluster needs host (the remote primary to stream from) or restore_command (its archive): \
             set one, or remove standby_cluster",
        );
        return None;
    }
    Some(standby)
}

/// One `ignore_slots` entry: a slot matches when every field given matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMatcher {
    pub name: Option<String>,
    /// `physical` or `logical`.
    pub kind: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl SlotMatcher {
    pub fn matches(&self, name: &str, kind: &str, database: Option<&str>, plugin: Option<&str>) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.database.as_deref().is_none_or(|d| Some(d) == database)
            && self.plugin.as_deref().is_none_or(|p| Some(p) == plugin)
    }
}

/// A name PostgreSQL takes for a replication slot: lower-case letters,
/// digits and underscores, at most 63.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `slots`: each a physical slot (also written `name:` with no value) or a
/// logical one with its `database` and `plugin`; `cluster_type: standby`
/// ones are for standby clusters, which pgwarden does not run.
fn permanent_slots(r: &mut Reader<'_>, path: &str) -> BTreeMap<String, PermanentSlot> {
    let mut out = BTreeMap::new();
    let Some(section) = r.section(path) else { return out };
    for (name, value) in section {
        let at = format!("{path}.{name}");
        if !valid_slot_name(name) {
            r.problems.error(&at, "a slot name is lower-case letters, digits and underscores (at most 63)");
            continue;
        }
        let field = |key: &str| value.get(key).and_then(scalar_text);
        if field("cluster_type").is_some_and(|t| t == "standby") {
            r.problems.notice(&at, "cluster_type standby: only for standby clusters, which pgwarden does not run");
            continue;
        }
        let slot = match field("type").as_deref() {
            None | Some("physical") => PermanentSlot::Physical,
            Some("logical") => match (field("database"), field("plugin")) {
                (Some(database), Some(plugin)) => PermanentSlot::Logical { database, plugin },
                _ => {
                    r.problems.error(&at, "a logical slot needs its database and plugin");
                    continue;
                }
            },
            Some(other) => {
                r.problems.error(format!("{at}.type"), format!("{other:?}: expected physical or logical"));
                continue;
            }
        };
        out.insert(name.clone(), slot);
    }
    out
}

/// `ignore_slots`: a list of matchers (`name`, `type`, `database`, `plugin`).
fn slot_matchers(r: &mut Reader<'_>, path: &str) -> Vec<SlotMatcher> {
    let Some(value) = r.get(path) else { return Vec::new() };
    let Some(entries) = value.as_array() else {
        r.problems.error(path, "expected a list of matchers (name, type, database, plugin)");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(fields) = entry.as_object() else {
            r.problems.error(format!("{path}[{i}]"), "expected a matcher: name, type, database and/or plugin");
            continue;
        };
        if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "name" | "type" | "database" | "plugin")) {
            r.problems.error(format!("{path}[{i}].{unknown}"), "a matcher has only name, type, database and plugin");
            continue;
        }
        let field = |key: &str| fields.get(key).and_then(scalar_text);
        out.push(SlotMatcher {
            name: field("name"),
            kind: field("type"),
            database: field("database"),
            plugin: field("plugin"),
        });
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    /// Bytes a replica may lag behind the leader and still be promoted.
    pub maximum_lag_on_failover: u64,
    /// Bytes a synchronous standby may lag (behind the most advanced
    /// standby, or the primary when it is the only one) before it is swapped
    /// out; -1 or 0: no limit.
    pub maximum_lag_on_syncnode: i64,
    /// `failsafe_mode`: with etcd out of reach, a primary keeps running while
    /// every member listed in the `failsafe` key accepts its `Failsafe` call.
    pub failsafe_mode: bool,
    pub primary_start_timeout: u32,
    pub primary_stop_timeout: u32,
    pub synchronous_mode: SyncMode,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u32,
    pub check_timeline: bool,
    pub max_timelines_history: u32,
    /// Patroni's `primary_race_backoff` (seconds; 0: off): once the leader
    /// key is gone, a replica whose WAL still arrives waits this long at
    /// most before it races.
    pub primary_race_backoff: u32,
    pub pause: bool,
    /// Patroni's `standby_cluster`: this cluster follows a remote primary;
    /// its leader runs as a standby of it and never promotes.
    pub standby_cluster: Option<StandbyCluster>,
    pub member_slots_ttl: Duration,
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    /// `slots`: permanent replication slots, kept by every leader (and the
    /// physical ones on every replica, ready for a failover).
    pub slots: BTreeMap<String, PermanentSlot>,
    /// `ignore_slots`: slots pgwarden never drops.
    pub ignore_slots: Vec<SlotMatcher>,
    /// PostgreSQL parameters rendered as text (`on`, `256MB`, `0.9`).
    pub parameters: BTreeMap<String, String>,
    pub pg_hba: Vec<String>,
    pub pg_ident: Vec<String>,
    /// `postgresql.pg_hosts`: the lines of `pg_hosts.conf` (PostgreSQL 19+).
    pub pg_hosts: Vec<String>,
    /// `postgresql.parameters_<role>`, `pg_hba_<role>`, `pg_ident_<role>`,
    /// `pg_hosts_<role>`.
    pub roles: crate::RoleConfig,
    /// `postgresql.pg_ctl_timeout`, `basebackup`, `rewind` and
    /// `recovery_conf`: each member's own, unless its local config sets it
    /// (the local one wins, as every `postgresql` setting in Patroni).
    pub pg_ctl_timeout: Option<Duration>,
    pub basebackup: Vec<crate::ToolOption>,
    pub rewind: Vec<crate::ToolOption>,
    pub recovery_conf: BTreeMap<String, String>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        Self {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            maximum_lag_on_failover: 1_048_576,
            maximum_lag_on_syncnode: -1,
            failsafe_mode: false,
            // Patroni's default is 300 s. pgwarden's keeps a crashed primary's
            // write outage short: a restart in place takes about a second
            // here; one that has not worked in 10 s hands over to a replica.
            primary_start_timeout: DEFAULT_PRIMARY_START_TIMEOUT,
            primary_stop_timeout: 0,
            synchronous_mode: SyncMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            check_timeline: false,
            max_timelines_history: 0,
            primary_race_backoff: 0,
            pause: false,
            standby_cluster: None,
            member_slots_ttl: Duration::from_secs(30 * 60),
            use_pg_rewind: false,
            use_slots: true,
            slots: BTreeMap::new(),
            ignore_slots: Vec::new(),
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            pg_ident: Vec::new(),
            pg_hosts: Vec::new(),
            roles: crate::RoleConfig::default(),
            pg_ctl_timeout: None,
            basebackup: Vec::new(),
            rewind: Vec::new(),
            recovery_conf: BTreeMap::new(),
        }
    }
}

/// Patroni's correction of `loop_wait` and `retry_timeout` for a given ttl:
/// lower loop_wait first (to at least 1), then retry_timeout = (ttl-1)//2.
fn patroni_timings(ttl: u32, loop_wait: u32, retry_timeout: u32) -> (u32, u32) {
    let too_long =
        |loop_wait: u32, retry_timeout: u32| u64::from(loop_wait) + 2 * u64::from(retry_timeout) > u64::from(ttl);
    if !too_long(loop_wait, retry_timeout) {
        return (loop_wait, retry_timeout);
    }
    let loop_wait = ttl.saturating_sub(retry_timeout.saturating_mul(2)).max(1);
    let retry_timeout = if too_long(loop_wait, retry_timeout) { (ttl - 1) / 2 } else { retry_timeout };
    (loop_wait, retry_timeout)
}

/// Parameters PostgreSQL renamed; pgwarden translates them as Patroni does.
/// Every supported PostgreSQL (13-17) uses the new name.
const WAL_SEGMENT_MB: u64 = 16;

impl DynamicConfig {
    /// Reads the dynamic config below `base` (`bootstrap.dcs`, or `` for the
    /// etcd `config` key), correcting what Patroni corrects, with one warning
    /// each. The returned JSON is the section with those corrections applied,
    /// ready to be written to etcd.
    pub fn read(root: &Value, base: &str, problems: &mut Problems) -> (Self, Value) {
        let path = |key: &str| {
            if base.is_empty() { key.to_string() } else { format!("{base}.{key}") }
        };
        let mut r = Reader::new(root, problems);
        let d = Self::default();
        let u32_of = |r: &mut Reader<'_>, key: &str, min: i64, default: u32| {
            r.int(&path(key), min, i64::from(u32::MAX)).map_or(default, |n| n as u32)
        };
        let ttl = u32_of(&mut r, "ttl", MIN_TTL, d.ttl);
        let mut loop_wait = u32_of(&mut r, "loop_wait", MIN_LOOP_WAIT, d.loop_wait);
        let mut retry_timeout = u32_of(&mut r, "retry_timeout", MIN_RETRY_TIMEOUT, d.retry_timeout);
        let mut corrected = Vec::new();
        // Patroni first raises a ttl below 20 to 20; pgwarden keeps it (its
        // minimum is MIN_TTL), so its result differs and the warning says so.
        let patroni_differs = ttl < 20 && u64::from(loop_wait) + 2 * u64::from(retry_timeout) > u64::from(ttl);
        let patroni_note = if patroni_differs {
            let (p_loop, p_retry) = patroni_timings(20, loop_wait, retry_timeout);
            format!(
                " (Patroni would first raise ttl to its minimum of 20 and end with ttl 20, loop_wait {p_loop}, \
                 retry_timeout {p_retry}; pgwarden keeps ttl {ttl}, as its minimum is {MIN_TTL})"
            )
        } else {
            String::new()
        };
        if u64::from(loop_wait) + 2 * u64::from(retry_timeout) > u64::from(ttl) {
            let before = (loop_wait, retry_timeout);
            // u64: retry_timeout may be near u32::MAX (found by `make fuzz`).
            loop_wait = ttl.saturating_sub(retry_timeout.saturating_mul(2)).max(1);
            if u64::from(loop_wait) + 2 * u64::from(retry_timeout) > u64::from(ttl) {
                retry_timeout = (ttl - 1) / 2;
            }
            if loop_wait != before.0 {
                corrected.push(("loop_wait", loop_wait));
                r.problems.warn(
                    path("loop_wait"),
                    format!(
                        "ttl ({ttl}) must be at least loop_wait + 2*retry_timeout ({} + 2*{}); loop_wait lowered to {loop_wait}{patroni_note}",
                        before.0, before.1
                    ),
                );
            }
            if retry_timeout != before.1 {
                corrected.push(("retry_timeout", retry_timeout));
                r.problems.warn(
                    path("retry_timeout"),
                    format!(
                        "ttl ({ttl}) must be at least loop_wait + 2*retry_timeout; retry_timeout lowered to {retry_timeout}{}",
                        if loop_wait == before.0 { patroni_note.as_str() } else { "" }
                    ),
                );
            }
        }
        let legacy_start = u32_of(&mut r, "master_start_timeout", 0, d.primary_start_timeout);
        let primary_start_timeout = u32_of(&mut r, "primary_start_timeout", 0, legacy_start);
        let legacy_stop = u32_of(&mut r, "master_stop_timeout", 0, d.primary_stop_timeout);
        let primary_stop_timeout = u32_of(&mut r, "primary_stop_timeout", 0, legacy_stop);
        let synchronous_mode = match r.choice(&path("synchronous_mode"), &["off", "on", "false", "true", "quorum"]) {
            Some(m) if m == "on" || m == "true" => SyncMode::On,
            Some(m) if m == "quorum" => SyncMode::Quorum,
            _ => SyncMode::Off,
        };
        let member_slots_ttl = match r.get(&path("member_slots_ttl")) {
            None => d.member_slots_ttl,
            Some(v) => parse_duration(v).unwrap_or_else(|| {
                r.problems.error(path("member_slots_ttl"), "expected a duration (seconds, or e.g. 30min, 1h)");
                d.member_slots_ttl
            }),
        };
        let mut parameters = parameter_map(&mut r, &path("postgresql.parameters"));
        translate_renamed_parameters(&mut parameters, &path("postgresql.parameters"), r.problems);
        let config = Self {
            ttl,
            loop_wait,
            retry_timeout,
            maximum_lag_on_failover: r
                .int(&path("maximum_lag_on_failover"), 0, i64::MAX)
                .map_or(d.maximum_lag_on_failover, |n| n as u64),
            maximum_lag_on_syncnode: r
                .int(&path("maximum_lag_on_syncnode"), -1, i64::MAX)
                .unwrap_or(d.maximum_lag_on_syncnode),
            failsafe_mode: r.bool(&path("failsafe_mode"), false),
            primary_start_timeout,
            primary_stop_timeout,
            synchronous_mode,
            synchronous_mode_strict: r.bool(&path("synchronous_mode_strict"), false),
            synchronous_node_count: u32_of(&mut r, "synchronous_node_count", 1, d.synchronous_node_count),
            check_timeline: r.bool(&path("check_timeline"), false),
            max_timelines_history: u32_of(&mut r, "max_timelines_history", 0, 0),
            primary_race_backoff: u32_of(&mut r, "primary_race_backoff", 0, 0),
            pause: r.bool(&path("pause"), false),
            standby_cluster: standby_cluster(&mut r, &path("standby_cluster")),
            member_slots_ttl,
            use_pg_rewind: r.bool(&path("postgresql.use_pg_rewind"), false),
            use_slots: r.bool(&path("postgresql.use_slots"), true),
            slots: permanent_slots(&mut r, &path("slots")),
            ignore_slots: slot_matchers(&mut r, &path("ignore_slots")),
            parameters,
            pg_hba: r.string_list(&path("postgresql.pg_hba")),
            pg_ident: r.string_list(&path("postgresql.pg_ident")),
            pg_hosts: r.string_list(&path("postgresql.pg_hosts")),
            roles: crate::roles::read(&mut r, &path("postgresql")),
            pg_ctl_timeout: crate::sections::pg_ctl_timeout(&mut r, &path("postgresql.pg_ctl_timeout")),
            basebackup: crate::sections::tool_options(&mut r, &path("postgresql.basebackup")),
            rewind: crate::sections::rewind_options(&mut r, &path("postgresql.rewind")),
            recovery_conf: crate::methods::standby_recovery_conf(&mut r, &path("postgresql.recovery_conf")),
        };
        let section = if base.is_empty() { Some(root) } else { r.get(base) };
        let mut json = section.cloned().filter(Value::is_object).unwrap_or_else(|| Value::Object(Map::new()));
        for (key, value) in corrected {
            json[key] = Value::from(value);
        }
        (config, json)
    }

    /// `loop_wait` as a duration.
    pub fn loop_wait(&self) -> Duration {
        Duration::from_secs(u64::from(self.loop_wait))
    }
}

/// A map of PostgreSQL parameters, each rendered as text.
pub(crate) fn parameter_map(r: &mut Reader<'_>, path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(section) = r.section(path) else {
        return out;
    };
    for (name, value) in section {
        match scalar_text(value) {
            Some(text) => {
                if let Err(why) = check_parameter_text(name, &text) {
                    r.problems.error(format!("{path}.{name}"), why);
                    continue;
                }
                out.insert(name.clone(), text);
            }
            None if value.is_null() => {}
            None => {
                r.problems.error(format!("{path}.{name}"), "expected a parameter value (string, number or boolean)")
            }
        }
    }
    out
}

/// What PostgreSQL's config file syntax can hold, checked before a
/// parameter is accepted anywhere (file, `PATCH /config`, `edit-config`):
/// a name of letters, digits, `_` and `.` (custom `ext.name`), and a value
/// without control characters (a newline would end the quoted value and add
/// a line of its own to `postgresql.conf` on every member).
pub fn check_parameter_text(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return Err(format!("{name:?} is not a PostgreSQL parameter name (letters, digits, `_` and `.` only)"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the value contains the control character {:?}, which PostgreSQL's config file cannot hold: remove it",
            c
        ));
    }
    Ok(())
}

/// Checks a numeric setting's text as PostgreSQL reads it: a number (hex
/// `0x..` for integers), optionally followed by a unit of the parameter's
/// kind (memory: B, kB, MB, GB, TB; time: us, ms, s, min, h, d), converted
/// to the parameter's own unit (`pg_settings.unit`, such as `8kB` or `ms`)
/// and compared with `min_val`/`max_val`.
pub fn check_numeric_setting(value: &str, unit: &str, min: &str, max: &str) -> Result<(), String> {
    const MEMORY: [(&str, f64); 5] =
        [("B", 1.0), ("kB", 1024.0), ("MB", 1048576.0), ("GB", 1073741824.0), ("TB", 1099511627776.0)];
    const TIME: [(&str, f64); 6] =
        [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("min", 60000.0), ("h", 3600000.0), ("d", 86400000.0)];
    let text = value.trim();
    let number_end = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '-' || c == '+') && i == 0)))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        (i64::from_str_radix(hex.trim(), 16).ok().map(|n| n as f64), "")
    } else {
        // An exponent (1e3) belongs to the number, not to a unit.
        let (mut number, mut rest) = text.split_at(number_end);
        if let Some(exponent) = rest.strip_prefix(['e', 'E'])
            && let Some(len) = exponent
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || ((c == '-' || c == '+') && i == 0)))
                .map(|(i, _)| i)
                .or(Some(exponent.len()))
                .filter(|&len| len > 0)
        {
            number = &text[..number_end + 1 + len];
            rest = &text[number_end + 1 + len..];
        }
        (number.parse::<f64>().ok(), rest.trim())
    };
    let Some(number) = number.filter(|n| n.is_finite()) else {
        return Err(format!("{value:?} is not a number"));
    };
    let base = unit.trim_start_matches(|c: char| c.is_ascii_digit());
    let base_factor: f64 = unit[..unit.len() - base.len()].parse().unwrap_or(1.0);
    let table: &[(&str, f64)] = if MEMORY.iter().any(|(u, _)| *u == base) {
        &MEMORY
    } else if TIME.iter().any(|(u, _)| *u == base) {
        &TIME
    } else {
        &[]
    };
    let in_base = if suffix.is_empty() {
        number
    } else {
        let units: Vec<&str> = table.iter().map(|(u, _)| *u).collect();
        let Some((_, factor)) = table.iter().find(|(u, _)| *u == suffix) else {
            return Err(if units.is_empty() {
                format!("{value:?}: this parameter takes a plain number, without a unit")
            } else {
                format!("{value:?}: {suffix:?} is not a unit here (use one of {})", units.join(", "))
            });
        };
        let base_in_table = table.iter().find(|(u, _)| *u == base).map_or(1.0, |(_, f)| *f);
        number * factor / (base_in_table * base_factor)
    };
    let below = min.parse::<f64>().is_ok_and(|m| in_base < m);
    let above = max.parse::<f64>().is_ok_and(|m| in_base > m);
    if below || above {
        let unit_note = if unit.is_empty() { String::new() } else { format!(" (in units of {unit})") };
        return Err(format!("{value} is outside [{min}, {max}]{unit_note}"));
    }
    Ok(())
}

/// `wal_keep_segments` became `wal_keep_size` in PostgreSQL 13: the value
/// PostgreSQL gets is translated (the stored config keeps what was written,
/// as in Patroni).
pub(crate) fn translate_renamed_parameters(
    parameters: &mut BTreeMap<String, String>,
    path: &str,
    problems: &mut Problems,
) {
    if let Some(segments) = parameters.remove("wal_keep_segments") {
        // A count whose size overflows is no count (found by `make fuzz`).
        match segments.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(WAL_SEGMENT_MB)) {
            Some(megabytes) => {
                let size = format!("{megabytes}MB");
                problems.warn(
                    format!("{path}.wal_keep_segments"),
                    format!("renamed in PostgreSQL 13; set as wal_keep_size = {size} instead"),
                );
                if !parameters.contains_key("wal_keep_size") {
                    parameters.insert("wal_keep_size".into(), size);
                }
            }
            None => problems.error(format!("{path}.wal_keep_segments"), "expected an integer number of segments"),
        }
    }
}

/// Seconds as a number, or a number with a unit: `ms`, `s`, `min`, `h`, `d`.
pub fn parse_duration(value: &Value) -> Option<Duration> {
    if let Some(n) = value.as_u64() {
        return Some(Duration::from_secs(n));
    }
    let text = value.as_str()?.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    // A product past u64 is no duration (found by `make fuzz`: it wrapped
    // to a small one in a release build).
    let secs = match unit.trim() {
        "" | "s" => Some(n),
        "ms" => return Some(Duration::from_millis(n)),
        "min" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => return None,
    };
    secs.map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> (DynamicConfig, Value, Vec<crate::Problem>) {
        let mut problems = Problems::default();
        let (cfg, json) = DynamicConfig::read(&v, "", &mut problems);
        (cfg, json, problems.into_vec())
    }

    #[test]
    fn local_postgresql_settings_are_read_from_the_dynamic_config_too() {
        let (cfg, _, problems) = read(json!({"postgresql": {
            "pg_ctl_timeout": 45,
            "basebackup": [{"max-rate": "100M"}, "verbose"],
            "rewind": ["no-sync", {"target-pgdata": "/elsewhere"}],
            "recovery_conf": {"restore_command": "cp /archive/%f %p", "primary_conninfo": "host=x"},
        }}));
        assert_eq!(cfg.pg_ctl_timeout, Some(Duration::from_secs(45)));
        assert_eq!(
            cfg.basebackup.iter().map(crate::ToolOption::to_arg).collect::<Vec<_>>(),
            ["--max-rate=100M", "--verbose"]
        );
        assert_eq!(cfg.rewind.iter().map(crate::ToolOption::to_arg).collect::<Vec<_>>(), ["--no-sync"]);
        assert_eq!(cfg.recovery_conf.keys().collect::<Vec<_>>(), ["restore_command"]);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["postgresql.rewind", "postgresql.recovery_conf.primary_conninfo"], "{problems:?}");
        assert!(problems[0].message.contains("`target-pgdata` is pgwarden's to set"), "{problems:?}");
    }

    #[test]
    fn role_based_settings_are_read_and_protected_parameters_dropped_with_patronis_warning() {
        let (cfg, _, problems) = read(json!({"postgresql": {
            "parameters_primary": {"work_mem": "8MB", "Max_Connections": 500},
            "parameters_replica": {},
            "pg_hba_standby_leader": ["host all all 0.0.0.0/0 reject"],
            "pg_ident_replica": "map os db",
        }}));
        let primary = cfg.roles.of(crate::PgRole::Primary);
        assert_eq!(primary.parameters, Some(BTreeMap::from([("work_mem".to_string(), "8MB".to_string())])));
        assert_eq!(primary.pg_hba, None);
        let replica = cfg.roles.of(crate::PgRole::Replica);
        assert_eq!(replica.parameters, Some(BTreeMap::new()), "written, even if empty");
        assert_eq!(replica.pg_ident, Some(vec!["map os db".to_string()]));
        let standby = cfg.roles.of(crate::PgRole::StandbyLeader);
        assert_eq!(standby.pg_hba, Some(vec!["host all all 0.0.0.0/0 reject".to_string()]));
        assert_eq!(standby.parameters, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "postgresql.parameters_primary.Max_Connections");
        assert_eq!(
            problems[0].message,
            "Role-based config attempted to override protected parameter 'Max_Connections', ignoring"
        );
    }

    #[test]
    fn permanent_slots_and_ignore_slots_read_as_patroni_writes_them() {
        let (cfg, _, problems) = read(json!({
            "slots": {
                "archive": null,
                "barman": {"type": "physical"},
                "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                "dr": {"type": "physical", "cluster_type": "standby"},
            },
            "ignore_slots": [{"name": "manual"}, {"type": "logical", "plugin": "wal2json"}],
        }));
        assert!(problems.iter().all(|p| p.severity != crate::Severity::Error), "{problems:?}");
        assert_eq!(cfg.slots.len(), 3, "{:?}", cfg.slots);
        assert_eq!(cfg.slots["archive"], PermanentSlot::Physical);
        assert_eq!(cfg.slots["cdc"], PermanentSlot::Logical { database: "app".into(), plugin: "pgoutput".into() });
        assert!(cfg.ignore_slots[0].matches("manual", "physical", None, None));
        assert!(!cfg.ignore_slots[0].matches("manual2", "physical", None, None));
        assert!(cfg.ignore_slots[1].matches("any", "logical", Some("app"), Some("wal2json")));
        assert!(!cfg.ignore_slots[1].matches("any", "logical", Some("app"), Some("pgoutput")));
        for (wrong, says) in [
            (json!({"slots": {"Bad-Name": null}}), "lower-case letters"),
            (json!({"slots": {"cdc": {"type": "logical", "plugin": "pgoutput"}}}), "needs its database and plugin"),
            (json!({"slots": {"x": {"type": "virtual"}}}), "expected physical or logical"),
            (json!({"ignore_slots": {"name": "x"}}), "expected a list"),
            (json!({"ignore_slots": [{"nmae": "x"}]}), "only name, type, database and plugin"),
        ] {
            let (_, _, problems) = read(wrong.clone());
            assert!(problems.iter().any(|p| p.message.contains(says)), "{wrong}: {problems:?}");
        }
    }

    /// Patroni 3.0 renamed `master_*_timeout`; an older cluster's `config`
    /// key still has the old names, read when the new one is absent.
    #[test]
    fn the_old_names_of_the_primary_timeouts_are_read_when_the_new_ones_are_absent() {
        let (cfg, _, problems) = read(json!({"master_start_timeout": 60, "master_stop_timeout": 30}));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((cfg.primary_start_timeout, cfg.primary_stop_timeout), (60, 30));
        let (cfg, _, _) = read(json!({"master_stop_timeout": 30, "primary_stop_timeout": 5}));
        assert_eq!(cfg.primary_stop_timeout, 5, "the new name wins");
    }

    #[test]
    fn timing_rule_survives_a_retry_timeout_near_u32_max() {
        // Found by `make fuzz`: 2 * retry_timeout overflowed u32.
        for ttl in [8, 30] {
            let (cfg, _, problems) = read(json!({"ttl": ttl, "loop_wait": 10, "retry_timeout": 2_147_483_648u64}));
            assert!(u64::from(cfg.loop_wait) + 2 * u64::from(cfg.retry_timeout) <= u64::from(cfg.ttl), "{cfg:?}");
            assert!(!problems.is_empty(), "the correction is reported");
        }
    }

    #[test]
    fn timing_rule_lowers_loop_wait_first() {
        let (cfg, json, problems) = read(json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 12}));
        assert_eq!((cfg.ttl, cfg.loop_wait, cfg.retry_timeout), (30, 6, 12));
        assert_eq!(json["loop_wait"], 6);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "loop_wait");
    }

    #[test]
    fn timing_rule_then_lowers_retry_timeout() {
        let (cfg, _, problems) = read(json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 15}));
        assert_eq!((cfg.loop_wait, cfg.retry_timeout), (1, 14));
        assert_eq!(problems.len(), 2);
    }

    /// A guide's `ttl: 10, loop_wait: 10, retry_timeout: 10`: Patroni raises
    /// ttl to 20 first; pgwarden keeps 10, and its warning says both.
    #[test]
    fn a_short_ttl_says_where_pgwarden_differs_from_patroni() {
        let (cfg, _, problems) = read(json!({"ttl": 10, "loop_wait": 10, "retry_timeout": 10}));
        assert_eq!((cfg.ttl, cfg.loop_wait, cfg.retry_timeout), (10, 1, 4));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains("ttl 20, loop_wait 1, retry_timeout 9") && t.contains("keeps ttl 10")),
            "{text:#?}"
        );
        // At or above Patroni's minimum both agree: no such note.
        let (_, _, problems) = read(json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 12}));
        assert!(problems.iter().all(|p| !p.to_string().contains("Patroni would")));
    }

    #[test]
    fn timing_rule_holds_after_correction_for_all_inputs() {
        for ttl in MIN_TTL..60 {
            for loop_wait in 1..40 {
                for retry in MIN_RETRY_TIMEOUT..40 {
                    let (cfg, _, _) = read(json!({"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry}));
                    assert!(cfg.loop_wait + 2 * cfg.retry_timeout <= cfg.ttl, "{ttl} {loop_wait} {retry} -> {cfg:?}");
                    assert!(cfg.loop_wait >= 1);
                }
            }
        }
    }

    /// The probe's injection: a newline in a value added a line to
    /// `postgresql.conf` on every member. Refused with the key's path.
    #[test]
    fn parameter_values_cannot_inject_config_lines() {
        let (_, _, problems) = read(json!({"postgresql": {"parameters": {
            "work_mem": "1MB'\narchive_command = 'touch /x",
            "maintenance_work_mem": "64MB\u{0}",
            "bad name": "1",
            "auto_explain.log_min_duration": "1s",
            "search_path": "'$user', public\\",
        }}}));
        let errors: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            errors.iter().any(|e| e.contains("postgresql.parameters.work_mem") && e.contains("control character")),
            "{errors:#?}"
        );
        assert!(errors.iter().any(|e| e.contains("maintenance_work_mem")), "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("bad name")), "{errors:#?}");
        assert!(!errors.iter().any(|e| e.contains("auto_explain") || e.contains("search_path")), "{errors:#?}");
    }

    #[test]
    fn numeric_settings_are_read_as_postgresql_reads_them() {
        // shared_buffers: unit 8kB, [16, 1073741823].
        assert_eq!(check_numeric_setting("128MB", "8kB", "16", "1073741823"), Ok(()));
        assert_eq!(check_numeric_setting("16384", "8kB", "16", "1073741823"), Ok(()));
        assert_eq!(check_numeric_setting("1TB", "8kB", "16", "1073741823"), Ok(()));
        assert!(check_numeric_setting("64MBgarbage", "8kB", "16", "1073741823").is_err());
        assert!(check_numeric_setting("10 ; x", "8kB", "16", "1073741823").is_err());
        assert!(check_numeric_setting("100kB", "8kB", "16", "1073741823").is_err(), "below 16 x 8kB");
        assert!(check_numeric_setting("5min", "8kB", "16", "1073741823").is_err(), "a time unit on memory");
        // checkpoint_timeout: unit s, [30, 86400].
        assert_eq!(check_numeric_setting("5min", "s", "30", "86400"), Ok(()));
        assert_eq!(check_numeric_setting("30 s", "s", "30", "86400"), Ok(()));
        assert!(check_numeric_setting("10s", "s", "30", "86400").is_err());
        // max_connections: no unit.
        assert_eq!(check_numeric_setting("0x64", "", "1", "262143"), Ok(()));
        assert!(check_numeric_setting("100MB", "", "1", "262143").is_err());
        // real: checkpoint_completion_target.
        assert_eq!(check_numeric_setting("0.9", "", "0", "1"), Ok(()));
        assert_eq!(check_numeric_setting("9e-1", "", "0", "1"), Ok(()));
        assert!(check_numeric_setting("", "", "0", "1").is_err());
    }

    #[test]
    fn renames_wal_keep_segments() {
        let (cfg, json, problems) = read(json!({"postgresql": {"parameters": {"wal_keep_segments": 8}}}));
        assert_eq!(cfg.parameters.get("wal_keep_size").map(String::as_str), Some("128MB"));
        assert!(!cfg.parameters.contains_key("wal_keep_segments"));
        // The stored config keeps what was written, as Patroni's does.
        assert_eq!(json["postgresql"]["parameters"]["wal_keep_segments"], 8);
        assert!(json["postgresql"]["parameters"].get("wal_keep_size").is_none());
        assert_eq!(problems[0].path, "postgresql.parameters.wal_keep_segments");
        // Found by `make fuzz`: the size overflowed.
        let (cfg, _, problems) =
            read(json!({"postgresql": {"parameters": {"wal_keep_segments": "2000000000000000000"}}}));
        assert!(!cfg.parameters.contains_key("wal_keep_size"));
        assert!(problems.iter().any(|p| p.message.contains("expected an integer number of segments")), "{problems:?}");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration(&json!(90)), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration(&json!("30min")), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration(&json!("2h")), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration(&json!("soon")), None);
        // Found by `make fuzz`: the product wrapped (a release build) or
        // panicked (a debug build).
        assert_eq!(parse_duration(&json!("9223372036854775807min")), None);
        assert_eq!(parse_duration(&json!("18446744073709551615")), Some(Duration::from_secs(u64::MAX)));
    }
}
