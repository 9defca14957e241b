//! SQL against the local PostgreSQL as the superuser: over TCP, or over the
//! Unix socket with `postgresql.use_unix_socket` (Patroni's rule).

use std::time::Duration;

use anyhow::Context as _;
use pgwarden_config::Config;
use pgwarden_config::hba::LocalConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _, Row as _};

/// What PostgreSQL says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlStatus {
    pub in_recovery: bool,
    /// Primary: the current WAL position. Replica: max(received, replayed).
    pub xlog_location: u64,
    pub receive_lsn: u64,
    pub replay_lsn: u64,
    pub timeline: u64,
    /// `streaming` while a WAL receiver streams.
    pub replication_state: String,
    /// The WAL receiver's status (`streaming`, `starting`, `waiting`, ...),
    /// empty when none runs.
    pub receiver_status: String,
    pub server_version: i32,
    pub system_identifier: String,
    pub postmaster_start_time: String,
    pub replication: Vec<ReplicationRow>,
    /// Some parameter change waits for a restart.
    pub pending_restart: bool,
    /// The parameters whose change waits for a restart, with the value
    /// PostgreSQL runs with.
    pub pending_parameters: std::collections::BTreeMap<String, String>,
    /// A replica's WAL replay is paused (`pg_is_wal_replay_paused()`).
    pub replay_paused: bool,
    /// A replica's `timeline` is its WAL receiver's (`received_tli`), not
    /// the latest restartpoint's, which can be a timeline it has left.
    pub timeline_from_receiver: bool,
    /// When the last replayed transaction committed, as Patroni shows it
    /// (`2026-12-05 09:10:40.123456+00:00`); empty when unknown.
    pub replayed_timestamp: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationRow {
    pub usename: String,
    pub application_name: String,
    pub client_addr: String,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    /// The standby's position that commits wait for (bytes): replayed with
    /// `synchronous_commit = remote_apply`, written with `remote_write`,
    /// else flushed (as Patroni measures a synchronous standby).
    pub flush_lsn: u64,
}

/// What PostgreSQL would say of each parameter: unknown names, values out of
/// range or not among an enum's values; and which need a restart.
pub async fn check_parameters(
    conn: &mut PgConnection,
    parameters: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut problems, mut need_restart) = (Vec::new(), Vec::new());
    for (name, value) in parameters {
        let row = sqlx::query(
            "select vartype, context, coalesce(min_val, ''), coalesce(max_val, ''), \
             coalesce(array_to_string(enumvals, ','), ''), coalesce(unit, '') from pg_settings where name = lower($1)",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .context("read pg_settings")?;
        let Some(row) = row else {
            problems.push(format!("{name}: PostgreSQL has no such parameter"));
            continue;
        };
        let (vartype, context, min, max, enums, unit): (String, String, String, String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?, row.try_get(5)?);
        if context == "postmaster" {
            need_restart.push(name.clone());
        }
        let lower = value.to_lowercase();
        match vartype.as_str() {
            "bool" if !["on", "off", "true", "false", "yes", "no", "1", "0"].contains(&lower.as_str()) => {
                problems.push(format!("{name}: {value:?} is not a boolean"));
            }
            "enum" if !enums.split(',').any(|e| e == lower) => {
                problems.push(format!("{name}: {value:?} is not one of {enums}"));
            }
            "integer" | "real" => {
                if let Err(why) = pgwarden_config::check_numeric_setting(value, &unit, &min, &max) {
                    problems.push(format!("{name}: {why}"));
                }
            }
            _ => {}
        }
    }
    Ok((problems, need_restart))
}

/// `SHOW name` (a new transaction each time, so a reloaded value shows).
pub async fn show(conn: &mut PgConnection, name: &str) -> anyhow::Result<String> {
    let row = sqlx::query("select current_setting($1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("read the setting {name}"))?;
    Ok(row.try_get(0)?)
}

/// Holds every later commit: runs `statement` (an `ALTER SYSTEM` naming a
/// standby that never connects, so it needs no config file written by the
/// HA loop), then a reload.
pub async fn hold_acknowledgements(conn: &mut PgConnection, statement: &'static str) -> anyhow::Result<()> {
    sqlx::raw_sql(statement).execute(&mut *conn).await.context("set synchronous_standby_names (alter system)")?;
    sqlx::query("select pg_reload_conf()").execute(&mut *conn).await.context("reload the config")?;
    Ok(())
}

/// Undoes [`hold_acknowledgements`].
pub async fn release_acknowledgements(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql("alter system reset synchronous_standby_names")
        .execute(&mut *conn)
        .await
        .context("reset synchronous_standby_names (alter system)")?;
    sqlx::query("select pg_reload_conf()").execute(&mut *conn).await.context("reload the config")?;
    Ok(())
}

/// The primary's current WAL write position.
pub async fn current_wal_lsn(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let row = sqlx::query("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(&mut *conn)
        .await
        .context("read the current WAL position")?;
    Ok(row.try_get::<i64, _>(0)? as u64)
}

/// How many replicas stream, and how many of them flushed `lsn`.
pub async fn replicas_flushed_to(conn: &mut PgConnection, lsn: u64) -> anyhow::Result<(i64, i64)> {
    let row = sqlx::query(
        "select count(*), count(*) filter (where pg_wal_lsn_diff(flush_lsn, '0/0') >= $1) \
         from pg_stat_replication where state = 'streaming'",
    )
    .bind(lsn as i64)
    .fetch_one(&mut *conn)
    .await
    .context("read the replicas' flush positions")?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Connects as the superuser over `local` (TCP or the Unix socket), to
/// `postgresql.database` (default `postgres`), as Patroni does.
pub async fn connect(
    config: &Config,
    local: &LocalConnection,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<PgConnection> {
    connect_to(config, local, port, timeout, &config.postgresql.database).await
}

/// As [`connect`], to `database`.
pub async fn connect_to(
    config: &Config,
    local: &LocalConnection,
    port: u16,
    timeout: Duration,
    database: &str,
) -> anyhow::Result<PgConnection> {
    let superuser = &config.postgresql.authentication.superuser;
    let options = match local {
        LocalConnection::Socket(dir) => PgConnectOptions::new().socket(dir),
        LocalConnection::Tcp(host) => PgConnectOptions::new().host(host),
    };
    let mut options =
        options.port(port).username(&superuser.username).database(database).application_name("pgwarden-agent");
    if let Some(password) = &superuser.password {
        options = options.password(password.expose());
    }
    let options = options.disable_statement_logging();
    let connection = tokio::time::timeout(timeout, options.connect())
        .await
        .with_context(|| format!("connect to the local PostgreSQL over {}: timed out", local.describe()))?
        .with_context(|| format!("connect to the local PostgreSQL over {}", local.describe()))?;
    Ok(connection)
}

/// One status query set; each query is small and read-only.
pub async fn status(conn: &mut PgConnection) -> anyhow::Result<SqlStatus> {
    let row = sqlx::query(
        "select pg_is_in_recovery(), current_setting('server_version_num')::int, \
         (select system_identifier::text from pg_control_system()), pg_postmaster_start_time()::text",
    )
    .fetch_one(&mut *conn)
    .await
    .context("query the server's state")?;
    let pending: Vec<(String, String)> =
        sqlx::query_as("select name::text, current_setting(name) from pg_settings where pending_restart")
            .fetch_all(&mut *conn)
            .await
            .context("query pending_restart")?;
    let mut status = SqlStatus {
        pending_restart: !pending.is_empty(),
        pending_parameters: pending.into_iter().collect(),
        in_recovery: row.try_get(0)?,
        server_version: row.try_get(1)?,
        system_identifier: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        postmaster_start_time: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        ..SqlStatus::default()
    };
    if status.in_recovery {
        let row = sqlx::query(
            "select coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0'), 0)::bigint, \
                    coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0)::bigint, \
                    coalesce((select nullif(received_tli, 0) from pg_stat_wal_receiver), \
                             (select timeline_id from pg_control_checkpoint()))::bigint, \
                    coalesce((select status from pg_stat_wal_receiver), ''), \
                    pg_is_wal_replay_paused(), \
                    coalesce(to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', \
                                     'YYYY-MM-DD HH24:MI:SS.US') || '+00:00', ''), \
                    exists (select 1 from pg_stat_wal_receiver where received_tli > 0), \
                    current_setting('restore_command') <> ''",
        )
        .fetch_one(&mut *conn)
        .await
        .context("query the replica's WAL positions")?;
        status.replay_paused = row.try_get(4)?;
        status.replayed_timestamp = row.try_get(5)?;
        status.timeline_from_receiver = row.try_get(6)?;
        status.receive_lsn = row.try_get::<i64, _>(0)? as u64;
        status.replay_lsn = row.try_get::<i64, _>(1)? as u64;
        status.timeline = row.try_get::<i64, _>(2)? as u64;
        status.xlog_location = status.receive_lsn.max(status.replay_lsn);
        let receiver: String = row.try_get(3)?;
        // Patroni's names: a replica that does not stream but has a
        // restore_command recovers from the archive.
        let from_archive: bool = row.try_get(7)?;
        status.replication_state = match (receiver.as_str(), from_archive) {
            ("streaming", _) => "streaming".into(),
            (_, true) => "in archive recovery".into(),
            _ => String::new(),
        };
        status.receiver_status = receiver;
    } else {
        let row = sqlx::query(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
                    ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
        )
        .fetch_one(&mut *conn)
        .await
        .context("query the primary's WAL position")?;
        status.xlog_location = row.try_get::<i64, _>(0)? as u64;
        status.timeline = row.try_get::<i64, _>(1)? as u64;
        let rows = sqlx::query(
            "select coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(client_addr::text, ''), \
                    coalesce(state, ''), coalesce(sync_state, ''), coalesce(sync_priority, 0), \
                    coalesce(pg_wal_lsn_diff(case current_setting('synchronous_commit') \
                        when 'remote_apply' then replay_lsn when 'remote_write' then write_lsn \
                        else flush_lsn end, '0/0'), 0)::bigint \
             from pg_stat_replication order by application_name",
        )
        .fetch_all(&mut *conn)
        .await
        .context("query pg_stat_replication")?;
        for row in rows {
            status.replication.push(ReplicationRow {
                usename: row.try_get(0)?,
                application_name: row.try_get(1)?,
                client_addr: row.try_get(2)?,
                state: row.try_get(3)?,
                sync_state: row.try_get(4)?,
                sync_priority: row.try_get(5)?,
                flush_lsn: row.try_get::<i64, _>(6)? as u64,
            });
        }
    }
    Ok(status)
}

/// Runs DDL built server-side with `format()` so that names and passwords
/// are quoted by PostgreSQL, with statement logging off so that no password
/// reaches the server log.
async fn execute_formatted(conn: &mut PgConnection, template: &str, args: &[&str]) -> anyhow::Result<()> {
    // The template is ours; values only ever travel as bind parameters.
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(template.to_string()));
    for arg in args {
        query = query.bind(*arg);
    }
    let statement = query.fetch_one(&mut *conn).await.context("build a statement")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await.context("run a role statement")?;
    Ok(())
}

/// Creates (or updates) the replication and rewind roles, the superuser's
/// password, and `bootstrap.users`.
pub async fn create_roles(conn: &mut PgConnection, config: &Config) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "set log_statement = 'none'; set log_min_error_statement = 'panic'; set log_min_duration_statement = -1",
    )
    .execute(&mut *conn)
    .await
    .context("turn statement logging off for the role statements")?;
    let auth = &config.postgresql.authentication;
    let upsert = |attributes: &str| {
        format!(
            "select case when exists (select 1 from pg_roles where rolname = $1) \
             then format('ALTER ROLE %I WITH {attributes} PASSWORD %L', $1, $2) \
             else format('CREATE ROLE %I WITH {attributes} PASSWORD %L', $1, $2) end"
        )
    };
    if let Some(password) = &auth.superuser.password {
        execute_formatted(conn, &upsert("SUPERUSER LOGIN"), &[&auth.superuser.username, password.expose()]).await?;
    }
    let replication_password = auth.replication.password.as_ref().map(|p| p.expose()).unwrap_or_default();
    execute_formatted(conn, &upsert("LOGIN REPLICATION"), &[&auth.replication.username, replication_password])
        .await
        .context("create the replication role")?;
    if let Some(rewind) = &auth.rewind
        && rewind.username != auth.superuser.username
    {
        let password = rewind.password.as_ref().map(|p| p.expose()).unwrap_or_default();
        execute_formatted(conn, &upsert("LOGIN"), &[&rewind.username, password])
            .await
            .context("create the rewind role")?;
        for function in [
            "pg_catalog.pg_ls_dir(text, boolean, boolean)",
            "pg_catalog.pg_stat_file(text, boolean)",
            "pg_catalog.pg_read_binary_file(text)",
            "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
        ] {
            execute_formatted(
                conn,
                &format!("select format('GRANT EXECUTE ON function {function} TO %I', $1)"),
                &[&rewind.username],
            )
            .await
            .context("grant the rewind role its functions")?;
        }
    }
    for (name, user) in &config.bootstrap.users {
        let options: Vec<String> = user
            .options
            .iter()
            .map(|o| o.trim().to_ascii_uppercase())
            .filter(|o| o.chars().all(|c| c.is_ascii_alphabetic() || c == ' '))
            .collect();
        let attributes = format!("LOGIN {}", options.join(" "));
        let password = user.password.as_ref().map(|p| p.expose()).unwrap_or_default();
        execute_formatted(conn, &upsert(&attributes), &[name, password])
            .await
            .with_context(|| format!("create bootstrap user {name}"))?;
    }
    Ok(())
}

/// One row of `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// `physical` or `logical`.
    pub kind: String,
    pub database: Option<String>,
    pub plugin: Option<String>,
    pub active: bool,
    /// Where the slot's consumer has got to: a logical slot's
    /// `confirmed_flush_lsn`, a physical one's `restart_lsn`.
    pub position: Option<u64>,
    /// The `xmin` a standby's hot_standby_feedback left on the slot.
    pub xmin: Option<String>,
    /// Kept by PostgreSQL's own slot synchronisation (17 and newer, on a
    /// standby): only its sync worker may move or drop it.
    pub synced: bool,
    /// Where decoding (a logical slot) or the WAL it keeps begins.
    pub restart_lsn: Option<u64>,
    /// `wal_status` is `lost`: the WAL the slot needs is gone
    /// (`max_slot_wal_keep_size`); it can serve nobody again.
    pub lost: bool,
}

pub async fn slots(conn: &mut PgConnection) -> anyhow::Result<Vec<Slot>> {
    let rows = sqlx::query(
        "select slot_name::text, slot_type, database::text, plugin::text, active, \
                pg_wal_lsn_diff(coalesce(confirmed_flush_lsn, restart_lsn), '0/0')::bigint, xmin::text, \
                coalesce((to_jsonb(s) ->> 'synced')::bool, false), \
                pg_wal_lsn_diff(restart_lsn, '0/0')::bigint, \
                coalesce(to_jsonb(s) ->> 'wal_status' = 'lost', false) \
         from pg_replication_slots s",
    )
    .fetch_all(&mut *conn)
    .await
    .context("list replication slots")?;
    rows.iter()
        .map(|row| {
            Ok(Slot {
                name: row.try_get(0)?,
                kind: row.try_get(1)?,
                database: row.try_get(2)?,
                plugin: row.try_get(3)?,
                active: row.try_get(4)?,
                position: row.try_get::<Option<i64>, _>(5)?.map(|lsn| lsn as u64),
                xmin: row.try_get(6)?,
                synced: row.try_get(7)?,
                restart_lsn: row.try_get::<Option<i64>, _>(8)?.map(|lsn| lsn as u64),
                lost: row.try_get(9)?,
            })
        })
        .collect()
}

/// A logical slot, on a connection to its database. `failover`
/// (PostgreSQL 17 and newer): standbys with `sync_replication_slots`
/// keep a copy, PostgreSQL's own logical slot failover.
pub async fn create_logical_slot(
    conn: &mut PgConnection,
    name: &str,
    plugin: &str,
    failover: bool,
) -> anyhow::Result<()> {
    let sql = if failover {
        "select pg_create_logical_replication_slot($1, $2, false, false, true)"
    } else {
        "select pg_create_logical_replication_slot($1, $2)"
    };
    sqlx::query(sql)
        .bind(name)
        .bind(plugin)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("create logical replication slot {name} (plugin {plugin})"))?;
    Ok(())
}

/// A logical slot as the primary has it: what a replica writes into its
/// own `pg_replslot` to have the same slot after a restart.
#[derive(Debug)]
pub struct SlotState {
    pub name: String,
    pub database: String,
    pub plugin: String,
    /// Where decoding begins: a copy needs the WAL from here on.
    pub restart_lsn: u64,
    /// The slot's `pg_replslot/<name>/state` file.
    pub state: Vec<u8>,
}

/// `wal_segment_size` in bytes.
pub async fn wal_segment_size(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let size: i64 = sqlx::query_scalar("select setting::bigint from pg_settings where name = 'wal_segment_size'")
        .fetch_one(&mut *conn)
        .await
        .context("read wal_segment_size")?;
    u64::try_from(size).ok().filter(|s| *s > 0).context("wal_segment_size is not a positive number")
}

/// Moves an inactive logical slot forward to `lsn`, or to what this server
/// has replayed (or flushed) if that is earlier; never backwards. On a
/// connection to the slot's database.
pub async fn advance_logical_slot(conn: &mut PgConnection, name: &str, lsn: u64) -> anyhow::Result<()> {
    advance(conn, name, lsn, "logical", "confirmed_flush_lsn").await
}

/// Moves an inactive physical slot forward to `lsn`, or to what this server
/// has (a standby's replayed position, a primary's flushed one) if that is
/// earlier (never backwards).
pub async fn advance_slot(conn: &mut PgConnection, name: &str, lsn: u64) -> anyhow::Result<()> {
    advance(conn, name, lsn, "physical", "restart_lsn").await
}

/// `pg_replication_slot_advance` of an inactive slot of `kind`, whose
/// position is in `column`, to `lsn` or this server's position.
async fn advance(
    conn: &mut PgConnection,
    name: &str,
    lsn: u64,
    kind: &'static str,
    column: &'static str,
) -> anyhow::Result<()> {
    let sql = format!(
        "with here as (select case when pg_is_in_recovery() then pg_last_wal_replay_lsn() \
                                   else pg_current_wal_flush_lsn() end as lsn) \
         select pg_replication_slot_advance(slot_name, least(here.lsn, $2::text::pg_lsn)) \
         from pg_replication_slots, here where slot_name = $1 and slot_type = '{kind}' and not active \
         and {column} is not null and here.lsn is not null \
         and {column} < least(here.lsn, $2::text::pg_lsn)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .bind(ha_core::Lsn(lsn).to_string())
        .execute(&mut *conn)
        .await
        .with_context(|| format!("advance {kind} replication slot {name}"))?;
    Ok(())
}

/// The error says the WAL it needed is gone from this server (SQLSTATE
/// 58P01: "requested WAL segment ... has already been removed"): a logical
/// slot copy older than this replica's oldest WAL can never move again.
pub fn wal_removed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .is_some_and(|db| db.code().as_deref() == Some("58P01"))
    })
}

pub async fn create_slot(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query("select pg_create_physical_replication_slot($1, true)")
        .bind(name)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("create replication slot {name}"))?;
    Ok(())
}

pub async fn drop_slot(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query("select pg_drop_replication_slot($1) from pg_replication_slots where slot_name = $1 and not active")
        .bind(name)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("drop replication slot {name}"))?;
    Ok(())
}

pub async fn checkpoint(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql("checkpoint").execute(&mut *conn).await.context("checkpoint")?;
    Ok(())
}

/// Closes a connection politely (errors ignored: it is going away).
pub async fn close(conn: PgConnection) {
    let _ = conn.close().await;
}

/// The newest entry of the current timeline's history file, as Patroni
/// records it: (previous timeline, switch LSN, reason, ISO timestamp).
pub async fn latest_history_entry(conn: &mut PgConnection) -> anyhow::Result<Option<(u64, u64, String, String)>> {
    let row = sqlx::query(
        "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint, \
                to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
    )
    .fetch_one(&mut *conn)
    .await
    .context("query the timeline")?;
    let timeline: i64 = row.try_get(0)?;
    let now: String = row.try_get(1)?;
    if timeline <= 1 {
        return Ok(None);
    }
    let file = format!("pg_wal/{timeline:08X}.history");
    let text: String = sqlx::query_scalar("select pg_read_file($1)")
        .bind(&file)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("read {file}"))?;
    let last = text.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with('#'));
    Ok(last.and_then(|line| {
        let mut fields = line.split('\t');
        let previous: u64 = fields.next()?.trim().parse().ok()?;
        let lsn: ha_core::Lsn = fields.next()?.trim().parse().ok()?;
        let reason = fields.next().unwrap_or("").trim().to_string();
        Some((previous, lsn.0, reason, now))
    }))
}
