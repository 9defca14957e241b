//! `/metrics` in Prometheus' text format, with Patroni's metric names (so
//! existing dashboards and alerts keep working) and pgwarden's own.

use std::fmt::Write as _;
use std::time::Instant;

use ha_proto::v1::{PostgresState, Role};

use crate::checks::{FRESH_FOR, Identity};
use crate::feed::Latest;

/// Patroni's zero-padded version number: 0.1.0 -> 000100.
fn version_number(version: &str) -> u64 {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major * 10_000 + minor * 100 + patch
}

pub fn render(identity: &Identity, latest: &Latest, now: Instant) -> String {
    let labels = format!(r#"scope="{}",name="{}""#, escape(&identity.scope), escape(&identity.name));
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let value = sample(value);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}");
    };
    let status = latest.as_ref().filter(|(_, at)| now.saturating_duration_since(*at) <= FRESH_FOR).map(|(s, _)| s);
    let age = latest.as_ref().map_or(f64::INFINITY, |(_, at)| now.saturating_duration_since(*at).as_secs_f64());
    metric(
        "patroni_version",
        "gauge",
        "Version of the agent (Patroni's zero-padded form).",
        version_number(env!("CARGO_PKG_VERSION")) as f64,
    );
    metric("pgwarden_agent_status_age_seconds", "gauge", "Seconds since the last status from the agent.", age);
    let Some(s) = status else {
        metric("patroni_postgres_running", "gauge", "1 if PostgreSQL is running (unknown: 0).", 0.0);
        return out;
    };
    let running = s.postgres_state() == PostgresState::Running;
    let primary = running && s.role() == Role::Primary && s.holds_leader;
    let replica = running && s.role() == Role::Replica;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metric("patroni_postgres_running", "gauge", "1 if PostgreSQL is running.", flag(running));
    metric("patroni_primary", "gauge", "1 if this node is the running primary holding the leader key.", flag(primary));
    metric("patroni_replica", "gauge", "1 if this node is a running replica.", flag(replica));
    metric(
        "patroni_standby_leader",
        "gauge",
        "1 if this node is a standby cluster's leader.",
        flag(running && s.role() == Role::StandbyLeader && s.holds_leader),
    );
    metric(
        "patroni_sync_standby",
        "gauge",
        "1 if this node is a synchronous standby.",
        flag(replica && s.sync_standby),
    );
    metric(
        "patroni_xlog_location",
        "counter",
        "Current WAL position of the primary, in bytes.",
        if primary { s.xlog_location as f64 } else { 0.0 },
    );
    metric(
        "patroni_xlog_received_location",
        "counter",
        "WAL received by this replica, in bytes.",
        if replica { s.receive_lsn as f64 } else { 0.0 },
    );
    metric(
        "patroni_xlog_replayed_location",
        "counter",
        "WAL replayed by this replica, in bytes.",
        if replica { s.replay_lsn as f64 } else { 0.0 },
    );
    metric("patroni_xlog_paused", "gauge", "1 if WAL replay is paused.", flag(replica && s.replay_paused));
    metric(
        "patroni_postgres_streaming",
        "gauge",
        "1 if this replica streams WAL.",
        flag(replica && s.replication_state == "streaming"),
    );
    metric(
        "patroni_postgres_in_archive_recovery",
        "gauge",
        "1 if this replica replays WAL from the archive (restore_command) without streaming.",
        flag(replica && s.replication_state == "in archive recovery"),
    );
    metric(
        "patroni_postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
        if running { epoch_seconds(&s.postmaster_start_time).unwrap_or(0.0) } else { 0.0 },
    );
    metric(
        "patroni_xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        if replica { epoch_seconds(&s.replayed_timestamp).unwrap_or(0.0) } else { 0.0 },
    );
    metric("patroni_quorum_standby", "gauge", "1 if this node is a quorum standby.", flag(replica && s.quorum_standby));
    metric(
        "patroni_failsafe_mode_is_active",
        "gauge",
        "1 if failsafe mode is active: a leader running on its members' promises while etcd is out of reach, \
         or a member that promised one.",
        flag(s.failsafe_active),
    );
    metric("patroni_postgres_server_version", "gauge", "PostgreSQL's version number.", f64::from(s.server_version));
    metric("patroni_postgres_timeline", "counter", "PostgreSQL's timeline.", s.timeline as f64);
    metric("patroni_cluster_unlocked", "gauge", "1 if no member holds the leader key.", flag(s.leader.is_empty()));
    metric(
        "patroni_dcs_last_seen",
        "gauge",
        "Unix time of the last successful etcd read.",
        (s.dcs_last_seen_unix_ms / 1000) as f64,
    );
    metric("patroni_is_paused", "gauge", "1 if the cluster is paused.", flag(s.paused));
    metric(
        "patroni_pending_restart",
        "gauge",
        "1 if PostgreSQL needs a restart for a changed parameter.",
        flag(s.pending_restart),
    );
    let lease_left = if s.holds_leader && s.leader_deadline_boot_ns > 0 {
        // CLOCK_BOOTTIME, the clock the agent's deadlines use.
        let now_ns = bootclock::BootInstant::now().as_nanos();
        (s.leader_deadline_boot_ns.saturating_sub(now_ns)) as f64 / 1e9
    } else {
        0.0
    };
    metric(
        "pgwarden_leader_lease_seconds_left",
        "gauge",
        "Seconds until the leader key's local deadline (0 when not leader).",
        lease_left,
    );
    metric(
        "pgwarden_ttl_seconds",
        "gauge",
        "The leader key's ttl in force (the dynamic config's ttl).",
        f64::from(s.ttl),
    );
    metric(
        "pgwarden_maximum_lag_on_failover_bytes",
        "gauge",
        "The dynamic config's maximum_lag_on_failover.",
        s.maximum_lag_on_failover as f64,
    );
    if replica && s.cluster_optime > 0 {
        // As /replica?lag= computes it: the leader's last published position
        // against what this replica has received or replayed.
        let position = s.position();
        metric(
            "pgwarden_replication_lag_bytes",
            "gauge",
            "How far this replica is behind the leader's last published WAL position.",
            s.cluster_optime.saturating_sub(position) as f64,
        );
    }
    // Patroni's numbering of its states (patroni/postgresql/misc.py), with
    // the values in the help as Patroni writes them.
    let state = match s.postgres_state() {
        PostgresState::Running => 5.0,
        PostgresState::Starting => 6.0,
        PostgresState::Stopping => 11.0,
        PostgresState::Stopped | PostgresState::Uninitialized => 12.0,
        PostgresState::Unspecified => -1.0,
    };
    metric(
        "patroni_postgres_state",
        "gauge",
        "Numeric representation of Postgres state.\n# Values: 0=initdb, 1=initdb_failed, 2=custom_bootstrap, \
         3=custom_bootstrap_failed, 4=creating_replica, 5=running, 6=starting, 7=bootstrap_starting, \
         8=start_failed, 9=restarting, 10=restart_failed, 11=stopping, 12=stopped, 13=stop_failed, 14=crashed",
        state,
    );
    metric(
        "pgwarden_ha_loop_duration_seconds",
        "gauge",
        "Duration of the HA loop's last tick.",
        s.ha_loop_duration_us as f64 / 1e6,
    );
    metric(
        "pgwarden_etcd_read_duration_seconds",
        "gauge",
        "Duration of the HA loop's last etcd read.",
        s.etcd_read_duration_us as f64 / 1e6,
    );
    out
}

/// PostgreSQL's timestamp text (`2026-12-05 17:00:00.123456+00`, or with
/// `+05:30`, `-08`) as Unix seconds.
fn epoch_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.rfind(['+', '-']).filter(|&at| at > 10)?;
    let (local, offset) = text.split_at(split);
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]");
    let local = time::PrimitiveDateTime::parse(local, &format).ok()?;
    let sign: i32 = if offset.starts_with('-') { -1 } else { 1 };
    let (hours, minutes) = offset[1..].split_once(':').unwrap_or((&offset[1..], "0"));
    let seconds = sign * (hours.parse::<i32>().ok()? * 3600 + minutes.parse::<i32>().ok()? * 60);
    let offset = time::UtcOffset::from_whole_seconds(seconds).ok()?;
    let at = local.assume_offset(offset);
    Some(at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9)
}

/// The fencer's gauge (0 disarmed, 1 armed, 2 fenced) and how many times
/// it stopped a primary since the health service started, labelled as the
/// rest.
pub fn render_fencer(identity: &Identity, gauge: u8, fences: u64) -> String {
    let labels = format!(r#"scope="{}",name="{}""#, escape(&identity.scope), escape(&identity.name));
    format!(
        "# HELP pgwarden_fencer_state The fencer: 0 disarmed, 1 armed (guarding a primary), 2 fenced.\n\
         # TYPE pgwarden_fencer_state gauge\npgwarden_fencer_state{{{labels}}} {gauge}\n\
         # HELP pgwarden_fencer_fences_total Primaries the fencer stopped since the health service started.\n\
         # TYPE pgwarden_fencer_fences_total counter\npgwarden_fencer_fences_total{{{labels}}} {fences}\n",
    )
}

/// A sample value as the text format spells it (`+Inf`, `-Inf`, `NaN`).
fn sample(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v == f64::INFINITY => "+Inf".into(),
        v if v == f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_proto::v1::NodeStatus;

    #[test]
    fn reads_postgres_timestamps_in_any_zone() {
        assert_eq!(epoch_seconds("2026-12-05 17:00:00+00"), Some(1_796_490_000.0));
        assert_eq!(epoch_seconds("2026-12-05 17:00:00.5+00:00"), Some(1_796_490_000.5));
        assert_eq!(epoch_seconds("2026-12-05 22:30:00+05:30"), Some(1_796_490_000.0));
        assert_eq!(epoch_seconds("2026-12-05 09:00:00-08"), Some(1_796_490_000.0));
        for wrong in ["", "yesterday", "2026-12-05", "2026-12-05 17:00:00"] {
            assert_eq!(epoch_seconds(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn renders_patronis_names() {
        let identity = Identity { scope: "batman".into(), name: "pg0".into() };
        let now = Instant::now();
        let status = NodeStatus {
            postgres_state: PostgresState::Running as i32,
            role: Role::Primary as i32,
            holds_leader: true,
            leader: "pg0".into(),
            xlog_location: 1234,
            timeline: 3,
            postmaster_start_time: "2026-12-05 17:00:00+00".into(),
            ..NodeStatus::default()
        };
        let text = render(&identity, &Some((status, now)), now);
        assert!(text.contains(r#"patroni_postmaster_start_time{scope="batman",name="pg0"} 1796490000"#), "{text}");
        assert!(text.contains(r#"patroni_postgres_state{scope="batman",name="pg0"} 5"#), "{text}");
        assert!(text.contains("# Values: 0=initdb, 1=initdb_failed,"), "{text}");
        assert!(text.contains(r#"patroni_failsafe_mode_is_active{scope="batman",name="pg0"} 0"#), "{text}");
        assert!(text.contains(r#"patroni_primary{scope="batman",name="pg0"} 1"#), "{text}");
        assert!(text.contains(r#"patroni_xlog_location{scope="batman",name="pg0"} 1234"#), "{text}");
        assert!(text.contains(r#"patroni_postgres_timeline{scope="batman",name="pg0"} 3"#), "{text}");
        assert!(text.contains("# TYPE patroni_replica gauge"));
        let unknown = render(&identity, &None, now);
        assert!(unknown.contains(r#"patroni_postgres_running{scope="batman",name="pg0"} 0"#), "{unknown}");
        assert!(!unknown.contains("patroni_primary"));
        assert_eq!(version_number("4.1.0"), 40100);
        assert!(
            unknown.contains(r#"pgwarden_agent_status_age_seconds{scope="batman",name="pg0"} +Inf"#),
            "no status yet: the text format's +Inf: {unknown}"
        );
    }

    #[test]
    fn a_replica_exports_its_lag_ttl_and_lag_limit() {
        let identity = Identity { scope: "s".into(), name: "r".into() };
        let now = Instant::now();
        let status = NodeStatus {
            postgres_state: PostgresState::Running as i32,
            role: Role::Replica as i32,
            receive_lsn: 900,
            replay_lsn: 800,
            cluster_optime: 1000,
            ttl: 30,
            maximum_lag_on_failover: 1 << 20,
            ..NodeStatus::default()
        };
        let text = render(&identity, &Some((status.clone(), now)), now);
        assert!(text.contains(r#"pgwarden_replication_lag_bytes{scope="s",name="r"} 100"#), "{text}");
        assert!(text.contains(r#"pgwarden_ttl_seconds{scope="s",name="r"} 30"#), "{text}");
        assert!(text.contains(r#"pgwarden_maximum_lag_on_failover_bytes{scope="s",name="r"} 1048576"#), "{text}");
        let primary = NodeStatus { role: Role::Primary as i32, holds_leader: true, ..status };
        let text = render(&identity, &Some((primary, now)), now);
        assert!(!text.contains("pgwarden_replication_lag_bytes"), "a primary has no lag: {text}");
    }

    #[test]
    fn labels_are_escaped_in_every_metric_so_a_name_cannot_inject_samples() {
        let identity = Identity { scope: "a\"b".into(), name: "x\\y\nfake_metric 1".into() };
        let now = Instant::now();
        let text = render(&identity, &None, now) + &render_fencer(&identity, 2, 3);
        let labels = r#"{scope="a\"b",name="x\\y\nfake_metric 1"}"#;
        assert!(text.contains(&format!("pgwarden_fencer_state{labels} 2")), "{text}");
        assert!(text.contains(&format!("pgwarden_fencer_fences_total{labels} 3")), "{text}");
        assert!(text.contains(&format!("patroni_postgres_running{labels} 0")), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("fake_metric")), "{text}");
    }
}
