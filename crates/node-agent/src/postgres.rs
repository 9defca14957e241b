//! Control of the local PostgreSQL: initdb, pg_basebackup, the configuration
//! files pgwarden manages, start, stop, promote, and reading `pg_controldata`.
//! Passwords never appear on a command line: they go through the pgpass
//! file (mode 0600) or a temporary password file removed after use.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use pgwarden_config::{Config, DynamicConfig, PostgresBinaries};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tracing::{info, warn};

/// The file pgwarden writes its parameters to, included by `postgresql.conf`.
pub(crate) const MANAGED_CONF: &str = "postgresql.conf";
/// Where initdb's original `postgresql.conf` is kept and included first.
pub(crate) const BASE_CONF: &str = "postgresql.base.conf";

/// Who PostgreSQL should be when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    Primary,
    /// The first start of a custom bootstrap's restore: recovery with these
    /// settings (`recovery.signal`), until PostgreSQL promotes itself at the
    /// end of recovery; `None` keeps the settings and signal files the
    /// restore wrote (`keep_existing_recovery_conf`).
    Restore {
        recovery: Option<BTreeMap<String, String>>,
    },
    /// A standby streaming from `upstream` (host, port, member), or recovering only.
    Replica {
        upstream: Option<Upstream>,
    },
    /// The standby leader of a standby cluster: a standby of the remote
    /// primary (its slot and recovery settings from `standby_cluster`).
    StandbyLeader {
        remote: pgwarden_config::StandbyCluster,
    },
}

/// A data directory as `pg_controldata` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The database system identifier.
    pub sysid: String,
    /// The latest checkpoint's timeline (0 when unreadable).
    pub timeline: u64,
    /// The latest checkpoint's REDO point, as printed, with that timeline:
    /// the key of a stopped data directory's WAL, which changes only when
    /// PostgreSQL runs or pg_rewind writes.
    pub redo: Option<(String, u64)>,
    /// The minimum recovery ending location's timeline and LSN (`None`
    /// when zero): a standby is consistent only past it.
    pub min_recovery_end: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub member: String,
    pub host: String,
    pub port: u16,
}

/// How `pg_ctl stop` shuts PostgreSQL down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Clients disconnected, a shutdown checkpoint written: a clean stop.
    Fast,
    /// Every process gone at once, no checkpoint: crash recovery at the next
    /// start.
    Immediate,
}

impl StopMode {
    fn as_pg_ctl(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// The local PostgreSQL of this node.
pub struct Postgres {
    pub bins: PostgresBinaries,
    pub data_dir: PathBuf,
    /// The first socket directory, resolved against the data directory.
    pub socket_dir: PathBuf,
    /// How the agent connects (TCP unless `use_unix_socket`, as Patroni).
    pub local: pgwarden_config::hba::LocalConnection,
    pub port: u16,
    pub pgpass: PathBuf,
    pub log_file: PathBuf,
    config: Config,
    /// `synchronous_standby_names` while synchronous mode is on (the HA loop
    /// sets it; it overrides the configured parameter).
    sync_names: std::sync::Mutex<Option<String>>,
    /// The parameters last written to `postgresql.conf`.
    written: std::sync::Mutex<Option<BTreeMap<String, String>>>,
    /// The remote primary the last config written follows (a standby
    /// leader's), to notice a changed `standby_cluster`.
    written_remote: std::sync::Mutex<Option<pgwarden_config::StandbyCluster>>,
    /// The `pg_hba` and `pg_ident` lines the last config written asked for
    /// (also when refused), to notice a change in the dynamic config.
    written_auth: std::sync::Mutex<Option<AuthFiles>>,
}

/// A list set in the local config, else the dynamic config's, with where it
/// comes from (`None`: neither sets it).
fn local_else_dynamic(
    local: (&[String], &'static str),
    dynamic: (&[String], &'static str),
) -> Option<(Vec<String>, &'static str)> {
    [local, dynamic].into_iter().find(|(lines, _)| !lines.is_empty()).map(|(lines, source)| (lines.to_vec(), source))
}

/// The lines pgwarden owns of `pg_hba.conf` and `pg_ident.conf` (`None`: the
/// file is left as it is), with where they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFiles {
    pub hba: Option<(Vec<String>, &'static str)>,
    pub ident: Option<(Vec<String>, &'static str)>,
}

/// The member name the remote primary of a standby cluster goes by in logs.
pub const REMOTE_PRIMARY: &str = "the remote primary";

/// The remote primary a standby cluster streams from (`None`: it replays
/// its archive only).
pub fn remote_upstream(remote: &pgwarden_config::StandbyCluster) -> Option<Upstream> {
    remote.host.as_ref().map(|host| Upstream { member: REMOTE_PRIMARY.into(), host: host.clone(), port: remote.port })
}

/// `-` and other characters slot names do not allow become `_`.
pub fn slot_name(member: &str) -> String {
    member.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// `pgpass` escapes `:` and `\`.
pub(crate) fn pgpass_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// One `host:port:*:user:password` line per role with a password that
/// connects to `upstream`: the replication role, and the rewind role (the
/// superuser when no rewind role is configured).
fn pgpass_lines(auth: &pgwarden_config::Authentication, upstream: Option<&Upstream>) -> String {
    let Some(upstream) = upstream else { return String::new() };
    let rewind = auth.rewind.as_ref().unwrap_or(&auth.superuser);
    let mut lines = String::new();
    let mut seen = Vec::new();
    for creds in [&auth.replication, rewind] {
        let Some(password) = &creds.password else { continue };
        if seen.contains(&&creds.username) {
            continue;
        }
        seen.push(&creds.username);
        lines.push_str(&format!(
            "{}:{}:*:{}:{}\n",
            pgpass_escape(&upstream.host),
            upstream.port,
            pgpass_escape(&creds.username),
            pgpass_escape(password.expose())
        ));
    }
    lines
}

/// The end of the record a `pg_waldump` line shows (`len (rec/tot): R/ T,
/// ..., lsn: HI/LO, ...`): its LSN plus its total length.
fn waldump_record_end(line: &str) -> Option<u64> {
    let total =
        line.split("len (rec/tot):").nth(1)?.split(',').next()?.split('/').nth(1)?.trim().parse::<u64>().ok()?;
    let lsn: ha_core::Lsn = line.split("lsn: ").nth(1)?.split(',').next()?.parse().ok()?;
    lsn.0.checked_add(total)
}

/// Writes a file only the owner may read, replacing it atomically through
/// `<name>.pgwarden-tmp` beside it. Where the directory is not writable
/// (a pgpass file placed in a root-owned directory), the file itself is
/// rewritten in place instead.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".pgwarden-tmp");
    let tmp = path.with_file_name(name);
    let write = |target: &Path| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(target)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    };
    match write(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.exists() => write(path).with_context(|| {
            format!(
                "write {} (its directory is not writable, and neither is the file: \
                     make the file or its directory writable by the user pgwarden runs as)",
                path.display()
            )
        }),
        Err(e) => Err(e).with_context(|| {
            format!("create {} (the directory must be writable by the user pgwarden runs as)", tmp.display())
        }),
    }
}

impl Postgres {
    pub fn new(config: &Config, bins: PostgresBinaries) -> anyhow::Result<Self> {
        let data_dir = config.postgresql.data_dir.clone();
        let listen = config.postgresql.listen.as_ref().context("postgresql.listen is required")?;
        // Relative directories are resolved against the data directory, where
        // PostgreSQL runs (a guide's `unix_socket_directories: '.'`).
        let socket_dir = pgwarden_config::hba::socket_directories(config)
            .into_iter()
            .next()
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let local = pgwarden_config::hba::local_connection(config);
        let with_suffix = |suffix: &str| {
            let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
            name.push(suffix);
            data_dir.with_file_name(name)
        };
        Ok(Self {
            bins,
            socket_dir,
            local,
            port: listen.port,
            pgpass: config.postgresql.pgpass.clone().unwrap_or_else(|| with_suffix(".pgpass")),
            log_file: with_suffix(".postgres.log"),
            data_dir,
            config: config.clone(),
            sync_names: std::sync::Mutex::new(None),
            written: std::sync::Mutex::new(None),
            written_remote: std::sync::Mutex::new(None),
            written_auth: std::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn has_data(&self) -> bool {
        self.data_dir.join("PG_VERSION").exists()
    }

    /// The pgpass file: the credentials the next connection to `upstream`
    /// needs (streaming, pg_basebackup, pg_rewind), scoped to its host and
    /// port as Patroni does, so a password never goes to another server.
    /// With no upstream the file is emptied.
    pub fn write_pgpass(&self, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        write_private(&self.pgpass, &pgpass_lines(&self.config.postgresql.authentication, upstream))
    }

    async fn run(&self, what: &str, cmd: &mut Command) -> anyhow::Result<String> {
        cmd.env("PGPASSFILE", &self.pgpass).stdin(Stdio::null()).kill_on_drop(true);
        let output = cmd.output().await.with_context(|| format!("run {what}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            bail!(
                "{what} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
        }
    }

    /// `initdb` with `bootstrap.initdb` options; the superuser's password
    /// goes through a temporary 0600 file.
    pub async fn initdb(&self) -> anyhow::Result<()> {
        let superuser = &self.config.postgresql.authentication.superuser;
        let mut cmd = Command::new(self.bins.path("initdb"));
        cmd.arg("-D").arg(&self.data_dir).arg(format!("--username={}", superuser.username));
        for option in &self.config.bootstrap.initdb {
            cmd.arg(option.to_arg());
        }
        // Never initdb's `trust`: peer over the socket, SCRAM over TCP, unless
        // the config chooses (pgwarden_config::hba::initdb_auth).
        let (auth_local, auth_host) = pgwarden_config::hba::initdb_auth(&self.config);
        let chosen = |name: &str| {
            self.config
                .bootstrap
                .initdb
                .iter()
                .any(|o| matches!(o, pgwarden_config::ToolOption::Value(k, _) if k == name))
        };
        if !chosen("auth") && !chosen("auth-local") {
            cmd.arg(format!("--auth-local={auth_local}"));
        }
        if !chosen("auth") && !chosen("auth-host") {
            cmd.arg(format!("--auth-host={auth_host}"));
        }
        let pwfile = self.data_dir.with_extension("pwfile");
        if let Some(password) = &superuser.password {
            write_private(&pwfile, &format!("{}\n", password.expose()))?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        info!(data_dir = %self.data_dir.display(), "running initdb");
        let result = self.run("initdb", &mut cmd).await;
        let _ = std::fs::remove_file(&pwfile);
        result?;
        self.settle_initdb_files()
    }

    /// Copies the data directory from `upstream` with pg_basebackup
    /// (`postgresql.basebackup` options), logging progress;
    /// `on_progress(done, total)` (bytes) is called as pg_basebackup reports it.
    pub async fn basebackup(
        &self,
        upstream: &Upstream,
        mut on_progress: impl FnMut(u64, u64) + Send,
    ) -> anyhow::Result<()> {
        let replication = &self.config.postgresql.authentication.replication;
        let conninfo = format!(
            "host={} port={} user={} application_name={} connect_timeout=5{}",
            upstream.host,
            upstream.port,
            replication.username,
            self.config.name,
            ssl_options(replication)
        );
        let mut cmd = Command::new(self.bins.path("pg_basebackup"));
        cmd.arg("-D").arg(&self.data_dir).arg("-d").arg(&conninfo).args(["--wal-method=stream", "--progress"]);
        let mut has_checkpoint = false;
        for option in &self.config.postgresql.basebackup {
            has_checkpoint |= matches!(option, pgwarden_config::ToolOption::Value(k, _) if k == "checkpoint");
            cmd.arg(option.to_arg());
        }
        if !has_checkpoint {
            cmd.arg("--checkpoint=fast");
        }
        cmd.env("PGPASSFILE", &self.pgpass).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.kill_on_drop(true);
        info!(from = %upstream.member, host = %upstream.host, port = upstream.port, "cloning with pg_basebackup");
        let mut child = cmd.spawn().context("run pg_basebackup")?;
        let mut stderr = child.stderr.take().context("pg_basebackup stderr")?;
        let mut collected = String::new();
        let mut buffer = [0u8; 4096];
        let mut last_progress = Instant::now();
        loop {
            let n = stderr.read(&mut buffer).await.context("read pg_basebackup output")?;
            if n == 0 {
                break;
            }
            let chunk = String::from_utf8_lossy(&buffer[..n]);
            collected.push_str(&chunk);
            if let Some((line, (done, total))) =
                chunk.split(['\r', '\n']).rev().find_map(|l| basebackup_progress(l).map(|p| (l, p)))
            {
                on_progress(done, total);
                if last_progress.elapsed() >= Duration::from_secs(2) {
                    info!(progress = %line.trim(), "pg_basebackup");
                    last_progress = Instant::now();
                }
            }
        }
        let status = child.wait().await.context("wait for pg_basebackup")?;
        if !status.success() {
            let tail: String = collected.split(['\r', '\n']).rfind(|l| !l.trim().is_empty()).unwrap_or("").into();
            bail!("pg_basebackup from {} failed ({status}): {tail}", upstream.member);
        }
        if let Some(line) = collected.split(['\r', '\n']).rev().find(|l| l.contains("kB")) {
            info!(progress = %line.trim(), "pg_basebackup done");
        }
        Ok(())
    }

    /// Every parameter pgwarden sets: what replication needs, the dynamic
    /// config's parameters, then the local ones (the local YAML wins, as in Patroni).
    pub fn parameters(&self, dynamic: &DynamicConfig, listen_local_only: bool) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        let set = |params: &mut BTreeMap<String, String>, k: &str, v: String| {
            params.insert(k.to_string(), v);
        };
        set(&mut params, "wal_level", "replica".into());
        set(&mut params, "hot_standby", "on".into());
        set(&mut params, "max_wal_senders", "10".into());
        set(&mut params, "max_replication_slots", "10".into());
        set(&mut params, "wal_keep_size", "128MB".into());
        // A follower re-pointed at a new leader retries every this often
        // (PostgreSQL's default of 5 s would dominate a failover).
        set(&mut params, "wal_retrieve_retry_interval", "1s".into());
        // As Patroni: the scope names the server in process titles and logs.
        set(&mut params, "cluster_name", self.config.scope.clone());
        if self.config.postgresql.use_pg_rewind.unwrap_or(dynamic.use_pg_rewind) {
            set(&mut params, "wal_log_hints", "on".into());
        }
        for (k, v) in dynamic.parameters.iter().chain(&self.config.postgresql.parameters) {
            params.insert(k.clone(), v.clone());
        }
        // What the agent relies on cannot be overridden.
        let listen = self.config.postgresql.listen.as_ref().map(|l| l.listen_addresses()).unwrap_or_default();
        // Until the bootstrap holds the leader key, only the agent's own
        // connection is accepted: the socket, or the one local TCP address.
        let local_only = match &self.local {
            pgwarden_config::hba::LocalConnection::Socket(_) => String::new(),
            pgwarden_config::hba::LocalConnection::Tcp(host) => host.clone(),
        };
        set(&mut params, "listen_addresses", if listen_local_only { local_only } else { listen });
        set(&mut params, "port", self.port.to_string());
        // The user's list as written (PostgreSQL resolves relative entries
        // against the data directory), else the default directory.
        let socket_dirs = self
            .config
            .postgresql
            .parameters
            .get("unix_socket_directories")
            .or_else(|| dynamic.parameters.get("unix_socket_directories"))
            .cloned()
            .unwrap_or_else(|| self.socket_dir.display().to_string());
        set(&mut params, "unix_socket_directories", socket_dirs);
        set(&mut params, "hba_file", self.config_dir().join("pg_hba.conf").display().to_string());
        if self.config_dir() != self.data_dir {
            // With the configuration elsewhere (Debian's layout), name the
            // data directory and ident file too: the base file may say otherwise.
            set(&mut params, "data_directory", self.data_dir.display().to_string());
            set(&mut params, "ident_file", self.config_dir().join("pg_ident.conf").display().to_string());
        }
        if let Some(names) = self.sync_names.lock().expect("sync names").clone() {
            set(&mut params, "synchronous_standby_names", names);
        }
        // Logical slot failover (as Patroni enforces it): a standby's
        // copies of the primary's logical slots need the catalog rows their
        // decoding reads, which its feedback keeps on the primary. From 17
        // on PostgreSQL keeps the copies itself.
        if self.keeps_logical_slots(dynamic) {
            set(&mut params, "hot_standby_feedback", "on".into());
            if self.major().is_some_and(|m| m >= 17) {
                set(&mut params, "sync_replication_slots", "on".into());
            }
        }
        params
    }

    /// Whether this member keeps copies of the permanent logical slots
    /// while it is a replica (logical slot failover): the dynamic config
    /// lists some, this member may become the leader, streams (`nostream`
    /// sends no feedback to the primary) with slots, and it is no standby
    /// cluster (whose leader is a standby itself), as Patroni's rule.
    pub fn keeps_logical_slots(&self, dynamic: &DynamicConfig) -> bool {
        let tags = &self.config.tags;
        dynamic.standby_cluster.is_none()
            && dynamic.use_slots
            && !tags.nostream
            && !tags.nofailover
            && tags.failover_priority != Some(0)
            && dynamic.slots.values().any(|slot| matches!(slot, pgwarden_config::PermanentSlot::Logical { .. }))
    }

    /// The state files of `source`'s logical slots named in `names`, read
    /// with `psql` as pg_rewind connects (the rewind user, or the
    /// superuser; libpq's TLS and the pgpass file), as Patroni reads them.
    pub async fn logical_slot_states(
        &self,
        source: &Upstream,
        names: &[String],
    ) -> anyhow::Result<Vec<crate::sql::SlotState>> {
        let conninfo = self.rewind_conninfo(source);
        // Slot names are letters, digits and `_` (PostgreSQL's rule): listed
        // in the query as they are.
        let listed: Vec<String> = names
            .iter()
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .map(|n| format!("'{n}'"))
            .collect();
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let query = format!(
            "select s.slot_name, d.datname, s.plugin, \
                    encode(pg_catalog.pg_read_binary_file('pg_replslot/' || s.slot_name || '/state'), 'hex') \
             from pg_catalog.pg_replication_slots s join pg_catalog.pg_database d on d.oid = s.datoid \
             where s.slot_type = 'logical' and not pg_catalog.pg_is_in_recovery() and s.slot_name in ({})",
            listed.join(", ")
        );
        let mut cmd = Command::new(self.bins.path("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\u{1f}", "-d"])
            .arg(&conninfo)
            .args(["-c", &query]);
        let text = self.run("psql (read the primary's logical slots)", &mut cmd).await?;
        text.lines().filter(|l| !l.is_empty()).map(parse_slot_state).collect()
    }

    /// Writes a replication slot's state file (read on the primary) into
    /// this data directory (see [`write_slot_state`]). PostgreSQL must be
    /// stopped; it loads the slot at its next start.
    pub fn write_slot_state(&self, name: &str, state: &[u8]) -> anyhow::Result<()> {
        write_slot_state(&self.data_dir, name, state)
    }

    /// The major version of the data directory (its `PG_VERSION`).
    pub fn major(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir.join("PG_VERSION")).ok().and_then(|v| v.trim().parse::<u32>().ok())
    }

    /// Sets `synchronous_standby_names` for the next config written; returns
    /// whether it changed.
    pub fn set_sync_names(&self, names: Option<String>) -> bool {
        let mut current = self.sync_names.lock().expect("sync names");
        let changed = *current != names;
        *current = names;
        changed
    }

    /// The pg_hba.conf lines pgwarden owns, as Patroni: the local
    /// `postgresql.pg_hba`, else the dynamic config's. `None`: the file is
    /// left as it is (initdb's with `bootstrap.pg_hba` appended at bootstrap,
    /// the leader's copy on a clone, Patroni's on an adopted node).
    fn hba_lines(&self, dynamic: &DynamicConfig) -> Option<(Vec<String>, &'static str)> {
        local_else_dynamic(
            (&self.config.postgresql.pg_hba, "postgresql.pg_hba"),
            (&dynamic.pg_hba, "the dynamic config's postgresql.pg_hba"),
        )
    }

    /// The pg_ident.conf lines pgwarden owns, as Patroni: the local
    /// `postgresql.pg_ident`, else the dynamic config's; `None`: the file is
    /// left as it is.
    fn ident_lines(&self, dynamic: &DynamicConfig) -> Option<(Vec<String>, &'static str)> {
        local_else_dynamic(
            (&self.config.postgresql.pg_ident, "postgresql.pg_ident"),
            (&dynamic.pg_ident, "the dynamic config's postgresql.pg_ident"),
        )
    }

    /// What `write_config` would write of the authentication files now.
    pub fn auth_files(&self, dynamic: &DynamicConfig) -> AuthFiles {
        AuthFiles { hba: self.hba_lines(dynamic), ident: self.ident_lines(dynamic) }
    }

    /// What the last `write_config` of this process asked for (`None`: none yet).
    pub fn written_auth_files(&self) -> Option<AuthFiles> {
        self.written_auth.lock().expect("written auth files").clone()
    }

    /// Writes `pg_ident.conf` from `lines` (0600).
    fn write_ident(&self, lines: &[String], source: &str) -> anyhow::Result<()> {
        let mut ident = format!("# Written by pgwarden-agent from {source}.\n");
        for line in lines {
            ident.push_str(line);
            ident.push('\n');
        }
        write_private(&self.config_dir().join("pg_ident.conf"), &ident)
    }

    /// Writes `pg_hba.conf` from `lines`, unless they would lock the agent
    /// out: then nothing is written and the error names the line to add.
    fn write_hba(&self, lines: &[String], source: &str) -> anyhow::Result<()> {
        pgwarden_config::hba::check_agent_access(&self.config, lines, &self.local, source)
            .map_err(|why| anyhow::anyhow!("{why} (pg_hba.conf left unchanged)"))?;
        let mut hba = String::from("# Written by pgwarden-agent from the config's pg_hba.\n");
        for line in lines {
            hba.push_str(line);
            hba.push('\n');
        }
        write_private(&self.config_dir().join("pg_hba.conf"), &hba)
    }

    /// The pg_hba.conf of a new cluster, right after initdb: the configured
    /// rules when pgwarden owns the file; else, as Patroni, initdb's file
    /// with `bootstrap.pg_hba` appended; with neither, pgwarden's loopback
    /// password rules (not initdb's `trust`).
    pub fn write_bootstrap_hba(&self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        self.adopt_config_files()?;
        if let Some((lines, source)) = self.hba_lines(dynamic) {
            return self.write_hba(&lines, source);
        }
        let (lines, source) = pgwarden_config::hba::bootstrap_rules(&self.config);
        if self.config.bootstrap.pg_hba.is_empty() {
            return self.write_hba(&lines, &source);
        }
        pgwarden_config::hba::check_agent_access(&self.config, &lines, &self.local, &source)
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        let path = self.config_dir().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.push_str("\n# Appended by pgwarden-agent from bootstrap.pg_hba.\n");
        for line in &self.config.bootstrap.pg_hba {
            text.push_str(line);
            text.push('\n');
        }
        write_private(&path, &text)
    }

    /// Writes `postgresql.conf` (including initdb's as `postgresql.base.conf`),
    /// `pg_hba.conf`, and the standby settings for `start_as`.
    pub fn write_config(
        &self,
        dynamic: &DynamicConfig,
        start_as: &StartAs,
        listen_local_only: bool,
    ) -> anyhow::Result<()> {
        self.adopt_config_files()?;
        let managed = self.config_dir().join(MANAGED_CONF);
        let mut text = format!(
            "{}; edits are overwritten. Put local settings in\n\
             # postgresql.parameters of the pgwarden config.\ninclude {}\n\n",
            crate::confdir::WRITTEN_BY,
            quote(&self.base_include())
        );
        let mut parameters = self.parameters(dynamic, listen_local_only);
        if !matches!(start_as, StartAs::Primary) {
            self.raise_to_the_primarys_settings(&mut parameters);
        }
        for (name, value) in &parameters {
            text.push_str(&format!("{name} = {}\n", quote(value)));
        }
        *self.written.lock().expect("written parameters") = Some(parameters);
        *self.written_remote.lock().expect("written remote") = match start_as {
            StartAs::StandbyLeader { remote } => Some(remote.clone()),
            _ => None,
        };
        let standby_signal = self.data_dir.join("standby.signal");
        // Written for both roles: it needs a restart to change, so dropping it
        // on promotion would leave the new primary "pending restart".
        text.push_str("recovery_target_timeline = 'latest'\n");
        match start_as {
            StartAs::Primary => {
                let _ = std::fs::remove_file(&standby_signal);
            }
            StartAs::Restore { recovery: Some(settings) } => {
                for (name, value) in settings {
                    text.push_str(&format!("{name} = {}\n", quote(value)));
                }
                let _ = std::fs::remove_file(&standby_signal);
                std::fs::write(self.data_dir.join("recovery.signal"), "").context("write recovery.signal")?;
            }
            StartAs::Restore { recovery: None } => {}
            StartAs::StandbyLeader { remote } => {
                // As Patroni: the local recovery settings, then the standby
                // cluster's own over them.
                let mut settings = self.config.postgresql.recovery_conf.clone();
                settings.extend(remote.recovery_settings());
                for (name, value) in &settings {
                    text.push_str(&format!("{name} = {}\n", quote(value)));
                }
                if let Some(upstream) = remote_upstream(remote) {
                    text.push_str(&format!("primary_conninfo = {}\n", quote(&self.primary_conninfo(&upstream))));
                    if let Some(slot) = &remote.primary_slot_name {
                        text.push_str(&format!("primary_slot_name = {}\n", quote(slot)));
                    }
                }
                std::fs::write(&standby_signal, "").context("write standby.signal")?;
            }
            StartAs::Replica { upstream } => {
                for (name, value) in &self.config.postgresql.recovery_conf {
                    text.push_str(&format!("{name} = {}\n", quote(value)));
                }
                if let Some(upstream) = upstream {
                    let mut conninfo = self.primary_conninfo(upstream);
                    if self.keeps_logical_slots(dynamic) && self.major().is_some_and(|m| m >= 17) {
                        // PostgreSQL's slot synchronisation reads the
                        // primary's slots over this connection.
                        conninfo.push_str(" dbname=postgres");
                    }
                    text.push_str(&format!("primary_conninfo = {}\n", quote(&conninfo)));
                    if dynamic.use_slots {
                        text.push_str(&format!("primary_slot_name = {}\n", quote(&slot_name(&self.config.name))));
                    }
                }
                std::fs::write(&standby_signal, "").context("write standby.signal")?;
            }
        }
        let auth = self.auth_files(dynamic);
        *self.written_auth.lock().expect("written auth files") = Some(auth.clone());
        if let Some((lines, source)) = &auth.hba {
            self.write_hba(lines, source)?;
        }
        if let Some((lines, source)) = &auth.ident {
            self.write_ident(lines, source)?;
        }
        // The HA loop's names, not a hold an earlier leader term left.
        crate::ackhold::clear_residue(&self.data_dir)?;
        write_private(&managed, &text)?;
        self.back_up_config_files()
    }

    fn primary_conninfo(&self, upstream: &Upstream) -> String {
        let replication = &self.config.postgresql.authentication.replication;
        let mut conninfo = format!(
            "host={} port={} user={} application_name={} passfile={} connect_timeout=3",
            upstream.host,
            upstream.port,
            replication.username,
            self.config.name,
            self.pgpass.display()
        );
        conninfo.push_str(&ssl_options(replication));
        conninfo
    }

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bins.path("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir).args(args);
        self.run(&format!("pg_ctl {}", args.first().copied().unwrap_or_default()), &mut cmd).await
    }

    fn timeout_arg(&self) -> String {
        self.config.postgresql.pg_ctl_timeout.as_secs().to_string()
    }

    /// Kills what a dead postmaster left behind: its children keep the shared
    /// memory attached (the next start then refuses, "another server might
    /// be running") until each notices the death. They are the `postgres`
    /// processes whose working directory is this data directory. Called only
    /// when no postmaster runs here.
    pub async fn kill_orphans(&self) {
        let Ok(data_dir) = std::fs::canonicalize(&self.data_dir) else { return };
        let find = || -> Vec<i32> {
            let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir)
                        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
                        && pg_local::is_running(*pid as u32)
                })
                .collect()
        };
        let orphans = find();
        if orphans.is_empty() {
            return;
        }
        warn!(?orphans, "killing processes the dead postmaster left behind");
        for pid in &orphans {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
        for _ in 0..50 {
            if find().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes `postmaster.pid` (and the socket's lock file) when the PID in
    /// it is not a running process.
    /// PostgreSQL checks the PID with kill(0), which succeeds on a zombie: a
    /// killed postmaster that nobody reaped yet (PID 1 in some containers)
    /// would block the restart until it is reaped.
    fn remove_stale_pid_file(&self) {
        let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [self.data_dir.join("postmaster.pid"), socket_lock] {
            let Ok(text) = std::fs::read_to_string(&lock) else { continue };
            let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else { continue };
            if !pg_local::is_running(pid) {
                info!(pid, lock = %lock.display(), "removing the stale lock file of a dead postmaster");
                let _ = std::fs::remove_file(&lock);
            }
        }
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.start_within(self.config.postgresql.pg_ctl_timeout).await
    }

    /// Starts the postmaster, waiting at most `timeout` for it to accept connections.
    pub async fn start_within(&self, timeout: Duration) -> anyhow::Result<()> {
        self.kill_orphans().await;
        self.remove_stale_pid_file();
        let log = self.log_file.display().to_string();
        let timeout = timeout.as_secs().max(1).to_string();
        info!(data_dir = %self.data_dir.display(), "starting PostgreSQL");
        let mut args = vec!["start", "-w", "-t", &timeout, "-l", &log];
        let config_file = self.config_file_option();
        if let Some(option) = &config_file {
            args.extend(["-o", option.as_str()]);
        }
        self.pg_ctl(&args).await.map(|_| ())
    }

    /// Stops the postmaster.
    pub async fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let timeout = self.timeout_arg();
        let mode = mode.as_pg_ctl();
        info!(mode, "stopping PostgreSQL");
        match self.pg_ctl(&["stop", "-m", mode, "-w", "-t", &timeout]).await {
            Ok(_) => Ok(()),
            // Not running is what we wanted.
            Err(e) if !self.data_dir.join("postmaster.pid").exists() => {
                warn!("pg_ctl stop: {e:#}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Stops a PostgreSQL that may be writable at once, as the fencer does:
    /// `pg_ctl stop -m immediate` given `FENCE_STOP_TIMEOUT`; a postmaster
    /// still there (frozen, stuck) gets SIGKILL, with its children (a
    /// backend outlives a killed postmaster and could still acknowledge a
    /// commit); then every one of them must be gone within
    /// `FENCE_KILL_CHECK`. `pg_ctl stop` alone would wait `pg_ctl_timeout`
    /// (60 s) on a frozen postmaster while it keeps its key or its clients.
    pub async fn fence(&self) -> anyhow::Result<()> {
        info!("stopping PostgreSQL immediately");
        let stop = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "1"]);
        let stopped = tokio::time::timeout(pgwarden_config::FENCE_STOP_TIMEOUT, stop).await.is_ok_and(|r| r.is_ok());
        let pid = pg_local::observe(&self.data_dir).postmaster_pid;
        if stopped || pid == 0 || !pg_local::is_running(pid) {
            return Ok(());
        }
        warn!(pid, "pg_ctl did not stop PostgreSQL: killing the postmaster and its processes");
        let processes = pg_local::kill_with_children(pid);
        let deadline = tokio::time::Instant::now() + pgwarden_config::FENCE_KILL_CHECK;
        loop {
            let alive: Vec<u32> = processes.iter().copied().filter(|&p| pg_local::is_running(p)).collect();
            if alive.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("PostgreSQL's processes {alive:?} are still running after SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `pg_ctl restart -m fast`, with the options it was started with,
    /// waiting `timeout` (default: `pg_ctl_timeout`) for it to answer.
    pub async fn restart(&self, timeout: Option<Duration>) -> anyhow::Result<()> {
        let timeout = timeout.map_or_else(|| self.timeout_arg(), |t| t.as_secs().max(1).to_string());
        info!("restarting PostgreSQL");
        // `-l` as at start: without it the new postmaster would hold pg_ctl's
        // output pipes open, and this call would never return.
        let log = self.log_file.display().to_string();
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", &timeout, "-l", &log]).await.map(|_| ())
    }

    /// The parameters of the last config file written.
    pub fn written_parameters(&self) -> Option<BTreeMap<String, String>> {
        self.written.lock().expect("written parameters").clone()
    }

    /// The `standby_cluster` the last config written follows (`None`: it
    /// was not a standby leader's).
    pub fn written_remote(&self) -> Option<pgwarden_config::StandbyCluster> {
        self.written_remote.lock().expect("written remote").clone()
    }

    /// A re-read config (reload): parameters, pg_hba, authentication.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    pub async fn reload(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["reload"]).await.map(|_| ())
    }

    pub async fn promote(&self) -> anyhow::Result<()> {
        let timeout = self.timeout_arg();
        info!("promoting PostgreSQL");
        self.pg_ctl(&["promote", "-w", "-t", &timeout]).await.map(|_| ())
    }

    /// A standby (or a restore in recovery) refuses to run with less of
    /// these than the primary whose WAL it replays had (PostgreSQL's
    /// "recovery aborted because of insufficient parameter settings"): each
    /// is raised to what `pg_controldata` recorded, as Patroni does. A
    /// restore from another cluster's backup is the usual case.
    fn raise_to_the_primarys_settings(&self, parameters: &mut BTreeMap<String, String>) {
        const SETTINGS: [(&str, &str, u64); 5] = [
            ("max_connections", "max_connections setting", 100),
            ("max_worker_processes", "max_worker_processes setting", 8),
            ("max_wal_senders", "max_wal_senders setting", 10),
            ("max_prepared_transactions", "max_prepared_xacts setting", 0),
            ("max_locks_per_transaction", "max_locks_per_xact setting", 64),
        ];
        let Ok(output) = std::process::Command::new(self.bins.path("pg_controldata")).arg(&self.data_dir).output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let recorded = |key: &str| {
            text.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        };
        for (name, key, default) in SETTINGS {
            let Some(primary) = recorded(key) else { continue };
            let ours = parameters.get(name).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default);
            if primary > ours {
                info!(parameter = name, ours, primary, "raised to the primary's setting: a standby needs as many");
                parameters.insert(name.to_string(), primary.to_string());
            }
        }
    }

    /// `pg_controldata` as a map of its lines (`Database system identifier`, ...).
    pub async fn controldata(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut cmd = Command::new(self.bins.path("pg_controldata"));
        cmd.arg(&self.data_dir);
        let text = self.run("pg_controldata", &mut cmd).await?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect())
    }

    /// What `pg_controldata` says about the data directory (see [`Identity`]).
    pub async fn identity(&self) -> anyhow::Result<Identity> {
        let control = self.controldata().await?;
        let sysid = control
            .get("Database system identifier")
            .cloned()
            .context("pg_controldata printed no system identifier")?;
        let number = |key: &str| control.get(key).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        let timeline = number("Latest checkpoint's TimeLineID");
        let redo = control.get("Latest checkpoint's REDO location").map(|redo| (redo.clone(), timeline));
        let min_recovery_timeline = number("Min recovery ending loc's timeline");
        let min_recovery_end = control
            .get("Minimum recovery ending location")
            .and_then(|lsn| lsn.parse::<ha_core::Lsn>().ok())
            .filter(|lsn| lsn.0 > 0 && min_recovery_timeline > 0)
            .map(|lsn| (min_recovery_timeline, lsn.0));
        Ok(Identity { sysid, timeline, redo: redo.filter(|_| timeline > 0), min_recovery_end })
    }

    /// Where the valid WAL of this stopped data directory ends (a lower
    /// bound): the end of the last record `pg_waldump` reads from the REDO
    /// point on. It reads the WAL written since the latest checkpoint, once
    /// per stop (the agent caches it by REDO point).
    pub async fn wal_end(&self, redo: &str, timeline: u64) -> anyhow::Result<u64> {
        use tokio::io::AsyncBufReadExt as _;
        let mut cmd = Command::new(self.bins.path("pg_waldump"));
        cmd.arg("--path")
            .arg(self.data_dir.join("pg_wal"))
            .arg(format!("--start={redo}"))
            .arg(format!("--timeline={timeline}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("run pg_waldump")?;
        let stdout = child.stdout.take().context("pg_waldump stdout")?;
        let read = async {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut end = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(record_end) = waldump_record_end(&line) {
                    end = Some(record_end);
                }
            }
            anyhow::Ok(end)
        };
        // pg_waldump ends with an error at the end of valid WAL: its exit
        // status says nothing; the records it printed do.
        let end = tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .context("pg_waldump ran past 120 s")??
            .context("pg_waldump printed no record from the REDO point")?;
        let _ = child.wait().await;
        Ok(end)
    }

    /// The highest timeline with a history file in `pg_wal`: a promotion
    /// writes it before anything else, so a primary that crashed right after
    /// promoting (its latest checkpoint still on the old timeline) is known
    /// to be on the new one. 0 when there is none.
    pub fn latest_history_timeline(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("pg_wal")) else { return 0 };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hex = name.strip_suffix(".history").filter(|h| h.len() == 8)?;
                u64::from_str_radix(hex, 16).ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// The switch points of the newest timeline history file in `pg_wal`
    /// (`(parent timeline, where it ended)`), as PostgreSQL wrote it or its
    /// WAL receiver fetched it from the upstream. Empty without one.
    pub fn timeline_switches(&self) -> Vec<(u64, u64)> {
        let newest = self.latest_history_timeline();
        if newest == 0 {
            return Vec::new();
        }
        let path = self.data_dir.join("pg_wal").join(format!("{newest:08X}.history"));
        std::fs::read_to_string(path).map(|text| parse_timeline_history(&text)).unwrap_or_default()
    }

    /// The database system identifier from `pg_controldata`.
    pub async fn system_identifier(&self) -> anyhow::Result<String> {
        Ok(self.identity().await?.sysid)
    }

    /// The latest checkpoint's location, read after a clean shutdown.
    pub async fn latest_checkpoint(&self) -> anyhow::Result<u64> {
        let control = self.controldata().await?;
        let text =
            control.get("Latest checkpoint location").context("pg_controldata printed no checkpoint location")?;
        let lsn: ha_core::Lsn = text.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        Ok(lsn.0)
    }

    /// How pg_rewind (and the copy of logical slots) connects to `source`:
    /// the rewind user, or the superuser without one, with its TLS settings;
    /// the password comes from the pgpass file.
    fn rewind_conninfo(&self, source: &Upstream) -> String {
        let auth = &self.config.postgresql.authentication;
        let user = auth.rewind.as_ref().unwrap_or(&auth.superuser);
        format!(
            "host={} port={} user={} dbname=postgres connect_timeout=5{}",
            source.host,
            source.port,
            user.username,
            ssl_options(user)
        )
    }

    /// Runs pg_rewind against `source` (`dry_run`: only find out whether the
    /// data directory diverged). Returns whether a rewind was (or would be) needed.
    pub async fn rewind(&self, source: &Upstream, dry_run: bool) -> anyhow::Result<bool> {
        let conninfo = self.rewind_conninfo(source);
        let mut cmd = Command::new(self.bins.path("pg_rewind"));
        cmd.arg(format!("--target-pgdata={}", self.data_dir.display()))
            .arg(format!("--source-server={conninfo}"))
            .arg("--progress");
        if dry_run {
            cmd.arg("--dry-run");
        }
        // The target's configuration outside its data directory: pg_rewind
        // (15 and newer) must be told where it is for its own start-up.
        if self.config_dir() != self.data_dir && self.major().is_some_and(|m| m >= 15) {
            cmd.arg(format!("--config-file={}", self.config_dir().join(MANAGED_CONF).display()));
        }
        cmd.env("PGPASSFILE", &self.pgpass).stdin(Stdio::null()).kill_on_drop(true);
        // A standby killed in recovery is first stopped cleanly in recovery
        // (see `stop_cleanly_in_recovery`), never left to pg_rewind's
        // single-user crash recovery.
        if self.data_dir.join("standby.signal").exists() && self.cluster_state().await? == "in archive recovery" {
            self.stop_cleanly_in_recovery().await?;
        }
        info!(from = %source.member, dry_run, "running pg_rewind");
        // pg_rewind first brings a target that was not shut down cleanly (a
        // primary that crashed) to a clean shutdown with `postgres
        // --single`, which refuses standby mode: as Patroni does, the signal
        // files step aside while it runs, and come back whatever the outcome
        // (single-user mode takes no connection, so nothing can write).
        let signals: Vec<PathBuf> = ["standby.signal", "recovery.signal"]
            .iter()
            .map(|name| self.data_dir.join(name))
            .filter(|path| path.exists())
            .collect();
        for signal in &signals {
            std::fs::remove_file(signal).with_context(|| format!("move {} aside for pg_rewind", signal.display()))?;
        }
        // pg_rewind copies over the data directory in place: stopped midway
        // (an error, the agent or the node killed) it leaves files half the
        // source's, which no start may trust. The marker says so until it
        // finishes, or fails before it changed anything.
        let marker = self.rewind_marker();
        if !dry_run {
            std::fs::write(&marker, source.member.as_bytes()).with_context(|| format!("write {}", marker.display()))?;
        }
        let output = cmd.output().await.context("run pg_rewind");
        for signal in &signals {
            std::fs::write(signal, "").with_context(|| format!("restore {} after pg_rewind", signal.display()))?;
        }
        let output = output?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !dry_run && (output.status.success() || !rewind_changed_target(&text)) {
            std::fs::remove_file(&marker).with_context(|| format!("remove {}", marker.display()))?;
        }
        if !output.status.success() {
            let tail = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            bail!("pg_rewind from {} failed ({}): {tail}", source.member, output.status);
        }
        let needed = !text.contains("no rewind required");
        info!(needed, dry_run, "pg_rewind done");
        Ok(needed)
    }

    /// `pg_controldata`'s "Database cluster state" (`in archive recovery`:
    /// a standby that did not stop cleanly).
    async fn cluster_state(&self) -> anyhow::Result<String> {
        let control = self.controldata().await?;
        control.get("Database cluster state").cloned().context("pg_controldata printed no cluster state")
    }

    /// Brings a standby killed in recovery (`in archive recovery`) to a
    /// clean stop in recovery: started in standby mode with no WAL source
    /// and no client, and stopped as soon as its recovery runs; the stop's
    /// restartpoint marks it `shut down in recovery`, and no WAL is written.
    ///
    /// pg_rewind would otherwise finish the crash recovery itself with
    /// `postgres --single`, which cannot run in standby mode: that ends the
    /// recovery and writes a checkpoint record of its own at the end of the
    /// local WAL, on the old timeline. Where that end is short of where the
    /// new leader's timeline forked, pg_rewind then finds nothing to rewind,
    /// yet the record differs from the leader's at the same place: the
    /// standby never reads past it ("record with incorrect prev-link") and
    /// never streams again (the 2-minute synchronous chaos run, seed
    /// 20261205).
    async fn stop_cleanly_in_recovery(&self) -> anyhow::Result<()> {
        info!("a standby killed in recovery: starting it without a WAL source to stop it cleanly before pg_rewind");
        self.kill_orphans().await;
        self.remove_stale_pid_file();
        let log = self.log_file.display().to_string();
        let timeout = self.timeout_arg();
        // Without hot standby, pg_ctl's wait ends once recovery has started
        // (the postmaster then reports `standby`). On its own timeline: a
        // newer history file its WAL receiver fetched may fork before its
        // data ("requested timeline is not a child of this server's
        // history"); pg_rewind sorts that out next.
        let mut options = String::from(
            "-c hot_standby=off -c primary_conninfo='' -c restore_command='' -c listen_addresses='' \
             -c recovery_target_timeline=current",
        );
        if let Some(config_file) = self.config_file_option() {
            options = format!("{config_file} {options}");
        }
        self.pg_ctl(&["start", "-w", "-t", &timeout, "-l", &log, "-o", &options])
            .await
            .context("start the standby without a WAL source")?;
        self.stop(StopMode::Fast).await?;
        let state = self.cluster_state().await?;
        ensure!(
            state == "shut down in recovery",
            "the standby killed in recovery did not stop cleanly in recovery (pg_controldata says \"{state}\"); see \
             PostgreSQL's log"
        );
        Ok(())
    }

    /// The file that marks a pg_rewind of this data directory in progress
    /// (`<data_dir>.pgwarden.rewinding`): left behind, the rewind stopped
    /// midway.
    pub fn rewind_marker(&self) -> PathBuf {
        let mut name = self.data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
        name.push(".pgwarden.rewinding");
        self.data_dir.with_file_name(name)
    }

    /// A pg_rewind of this data directory stopped midway (see
    /// [`Self::rewind_marker`]). A marker without its data directory (moved
    /// aside meanwhile) is cleared.
    pub fn rewind_interrupted(&self) -> bool {
        let marker = self.rewind_marker();
        if marker.exists() && !self.data_dir.exists() {
            let _ = std::fs::remove_file(&marker);
        }
        marker.exists()
    }

    /// Moves aside a data directory a pg_rewind left half-copied (kept, for
    /// whoever wants to look) and clears the marker: the next tick clones.
    pub fn move_aside_half_rewound(&self) -> anyhow::Result<PathBuf> {
        let aside = self.move_aside("rewind-interrupted")?;
        std::fs::remove_file(self.rewind_marker()).context("remove the pg_rewind marker")?;
        Ok(aside)
    }

    /// Renames the data directory aside (kept, never deleted) so that a
    /// fresh clone can take its place; returns where it went.
    pub fn move_aside(&self, why: &str) -> anyhow::Result<PathBuf> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut name = self.data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
        name.push(format!(".{why}.{stamp}"));
        let target = self.data_dir.with_file_name(name);
        std::fs::rename(&self.data_dir, &target)
            .with_context(|| format!("move {} aside to {}", self.data_dir.display(), target.display()))?;
        warn!(from = %self.data_dir.display(), to = %target.display(), "moved the data directory aside");
        Ok(target)
    }

    /// Whether the data directory was last a primary (no standby signal).
    pub fn was_primary(&self) -> bool {
        !self.data_dir.join("standby.signal").exists() && !self.data_dir.join("recovery.signal").exists()
    }

    /// Removes a data directory this agent created and did not finish (a
    /// failed bootstrap or clone): it holds nothing anyone wrote.
    pub fn remove_unfinished_data_dir(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.data_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(data_dir = %self.data_dir.display(), "failed to remove the unfinished data directory: {e}");
        }
    }

    /// Creates the (empty) data directory with mode 0700 for a clone.
    pub fn prepare_empty_data_dir(&self) -> anyhow::Result<()> {
        if self.data_dir.exists() {
            let empty = std::fs::read_dir(&self.data_dir)?.next().is_none();
            if !empty {
                bail!(
                    "{} is not empty but holds no PostgreSQL data (no PG_VERSION); move it away to let pgwarden clone",
                    self.data_dir.display()
                );
            }
        } else {
            std::fs::create_dir_all(&self.data_dir).with_context(|| format!("create {}", self.data_dir.display()))?;
        }
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(())
    }
}

/// The libpq SSL options of `credentials` (`sslmode`, `sslcert`, `sslkey`,
/// `sslrootcert`) as conninfo text, each preceded by a space.
pub(crate) fn ssl_options(credentials: &pgwarden_config::Credentials) -> String {
    let mut text = String::new();
    for (key, value) in [
        ("sslmode", &credentials.sslmode),
        ("gssencmode", &credentials.gssencmode),
        ("channel_binding", &credentials.channel_binding),
    ] {
        if let Some(value) = value {
            text.push_str(&format!(" {key}={}", conninfo_value(value)));
        }
    }
    for (key, path) in [
        ("sslcert", &credentials.sslcert),
        ("sslkey", &credentials.sslkey),
        ("sslrootcert", &credentials.sslrootcert),
        ("sslcrl", &credentials.sslcrl),
        ("sslcrldir", &credentials.sslcrldir),
    ] {
        if let Some(path) = path {
            text.push_str(&format!(" {key}={}", conninfo_value(&path.display().to_string())));
        }
    }
    text
}

/// A conninfo value, quoted when it holds spaces, quotes or backslashes.
pub(crate) fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// pg_basebackup's `--progress` line (`  12345/67890 kB (18%), 0/1
/// tablespace`, perhaps followed by a file name): bytes done and the total
/// it estimated.
pub fn basebackup_progress(line: &str) -> Option<(u64, u64)> {
    let (counts, _) = line.split_once(" kB")?;
    let (done, total) = counts.split_whitespace().last()?.split_once('/')?;
    Some((done.parse::<u64>().ok()?.saturating_mul(1024), total.parse::<u64>().ok()?.saturating_mul(1024)))
}

/// pg_rewind's output says it had begun to change the target: it writes
/// only after it printed how much it must copy (`need to copy ... MB`).
fn rewind_changed_target(output: &str) -> bool {
    output.contains("need to copy")
        || output.contains("creating backup label and updating control file")
        || output.contains("syncing target data directory")
}

/// Writes a replication slot's state file into `<data_dir>/pg_replslot/<name>`
/// as PostgreSQL would: through a temporary directory renamed into place,
/// each step fsynced. `name` must be a slot name (letters, digits, `_`).
pub fn write_slot_state(data_dir: &Path, name: &str, state: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "refusing to write slot {name:?}: not a replication slot name"
    );
    let slots = data_dir.join("pg_replslot");
    let (dir, tmp) = (slots.join(name), slots.join(format!("{name}.tmp")));
    let sync_dir = |path: &Path| std::fs::File::open(path).and_then(|d| d.sync_all());
    let write = || -> std::io::Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp.join("state"))?;
        file.write_all(state)?;
        file.sync_all()?;
        sync_dir(&tmp)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&tmp, &dir)?;
        sync_dir(&dir)?;
        sync_dir(&slots)
    };
    write().with_context(|| format!("write replication slot {name} into {}", slots.display()))
}

/// One line of [`Postgres::logical_slot_states`]' output: name, database,
/// plugin and the state file in hex, separated by U+001F.
fn parse_slot_state(line: &str) -> anyhow::Result<crate::sql::SlotState> {
    let fields: Vec<&str> = line.split('\u{1f}').collect();
    let [name, database, plugin, hex] = fields.as_slice() else {
        bail!("unexpected line from the primary's slots: {line:?}");
    };
    anyhow::ensure!(hex.len() % 2 == 0, "slot {name}: a state file of odd hex length");
    let state = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("slot {name}: the state file is not hex"))?;
    Ok(crate::sql::SlotState {
        name: name.to_string(),
        database: database.to_string(),
        plugin: plugin.to_string(),
        state,
    })
}

/// The lines of a timeline history file: `<parent timeline>\t<switch
/// point>\t<reason>`; comments and lines it cannot read are skipped.
pub fn parse_timeline_history(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let timeline = fields.next()?.parse::<u64>().ok()?;
            let end = fields.next()?.parse::<ha_core::Lsn>().ok()?;
            Some((timeline, end.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot copied from the primary replaces any older copy, whole, and
    /// only a slot name is accepted (it becomes a path).
    #[test]
    fn a_slot_state_is_written_into_pg_replslot_replacing_an_older_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pg_replslot")).expect("pg_replslot");
        write_slot_state(dir.path(), "cdc", b"old").expect("first copy");
        std::fs::write(dir.path().join("pg_replslot/cdc/stale"), "x").expect("a stray file");
        write_slot_state(dir.path(), "cdc", b"new").expect("second copy");
        let slot = dir.path().join("pg_replslot/cdc");
        assert_eq!(std::fs::read(slot.join("state")).expect("state"), b"new");
        assert!(!slot.join("stale").exists() && !dir.path().join("pg_replslot/cdc.tmp").exists());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(slot.join("state")).expect("meta").permissions().mode() & 0o777, 0o600);
        for bad in ["", "../x", "a/b", "a b"] {
            assert!(write_slot_state(dir.path(), bad, b"x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_primary_slot_line_gives_its_state_file_bytes() {
        let slot = parse_slot_state("cdc\u{1f}app db\u{1f}pgoutput\u{1f}a1c20001ff").expect("a line");
        assert_eq!((slot.name.as_str(), slot.database.as_str(), slot.plugin.as_str()), ("cdc", "app db", "pgoutput"));
        assert_eq!(slot.state, vec![0xa1, 0xc2, 0x00, 0x01, 0xff]);
        assert!(parse_slot_state("cdc\u{1f}app\u{1f}pgoutput\u{1f}abc").is_err(), "odd length");
        assert!(parse_slot_state("cdc\u{1f}app\u{1f}pgoutput\u{1f}zz").is_err(), "not hex");
        assert!(parse_slot_state("cdc\u{1f}app").is_err(), "too few fields");
    }

    /// A history file as PostgreSQL 15 writes it for timeline 3.
    #[test]
    fn a_timeline_history_file_gives_each_parent_and_where_it_ended() {
        let text = "1\t0/3000148\tno recovery target specified\n\n# a comment\n2\t0/50000A0\tno recovery \
                    target specified\n";
        assert_eq!(parse_timeline_history(text), vec![(1, 0x3000148), (2, 0x50000A0)]);
        assert!(parse_timeline_history("garbage\n").is_empty());
    }

    /// pg_rewind 15's own words, before and after it starts to write.
    #[test]
    fn a_rewind_that_failed_before_copying_left_the_target_as_it_was() {
        let refused = "pg_rewind: error: could not connect to server: connection refused\n";
        assert!(!rewind_changed_target(refused));
        let no_ancestor =
            "pg_rewind: error: could not find common ancestor of the source and target cluster's timelines";
        assert!(!rewind_changed_target(no_ancestor));
        let midway = "pg_rewind: servers diverged at WAL location 0/7828358 on timeline 15\n\
                      pg_rewind: rewinding from last common checkpoint at 0/7828290 on timeline 15\n\
                      pg_rewind: reading source file list\npg_rewind: reading target file list\n\
                      pg_rewind: reading WAL in target\n\
                      pg_rewind: need to copy 51 MB (total source directory size is 70 MB)\n\
                      pg_rewind: error: could not fetch remote file \"global/pg_control\": server closed the connection";
        assert!(rewind_changed_target(midway));
    }

    #[test]
    fn reads_pg_basebackups_progress_lines() {
        assert_eq!(basebackup_progress("  12345/67890 kB (18%), 0/1 tablespace"), Some((12345 * 1024, 67890 * 1024)));
        assert_eq!(
            basebackup_progress("67890/67890 kB (100%), 1/1 tablespace (base/5/1259)"),
            Some((67890 * 1024, 67890 * 1024))
        );
        assert_eq!(basebackup_progress("pg_basebackup: waiting for checkpoint"), None);
        assert_eq!(basebackup_progress("x/y kB"), None);
        assert_eq!(basebackup_progress(""), None);
    }

    #[test]
    fn slot_names_are_valid_identifiers() {
        assert_eq!(slot_name("Node-1.example"), "node_1_example");
        assert_eq!(slot_name("pg_2"), "pg_2");
    }

    #[test]
    fn quoting_and_pgpass_escaping() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(pgpass_escape("a:b\\c"), "a\\:b\\\\c");
    }

    #[test]
    fn pgpass_lines_are_scoped_to_the_upstream_host_and_port() {
        let creds = |user: &str, password: Option<&str>| pgwarden_config::Credentials {
            username: user.into(),
            password: password.map(pgwarden_config::Secret::new),
            ..Default::default()
        };
        let mut auth = pgwarden_config::Authentication {
            superuser: creds("postgres", Some("su:pw")),
            replication: creds("replicator", Some("rep")),
            rewind: None,
        };
        let upstream = Upstream { member: "pg2".into(), host: "fe80::1".into(), port: 5433 };
        assert_eq!(
            pgpass_lines(&auth, Some(&upstream)),
            "fe80\\:\\:1:5433:*:replicator:rep\nfe80\\:\\:1:5433:*:postgres:su\\:pw\n",
            "pg_rewind runs as the superuser without a rewind role; no line matches any other host"
        );
        auth.rewind = Some(creds("rewinder", Some("rw")));
        auth.replication.password = None;
        assert_eq!(pgpass_lines(&auth, Some(&upstream)), "fe80\\:\\:1:5433:*:rewinder:rw\n");
        assert_eq!(pgpass_lines(&auth, None), "", "no upstream, no password on disk");
    }

    #[test]
    fn a_waldump_line_gives_the_end_of_its_record() {
        let line = "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/01500718, prev 0/015006D0, \
                    desc: CHECKPOINT_SHUTDOWN redo 0/1500718; tli 1";
        assert_eq!(waldump_record_end(line), Some(0x0150_0718 + 114));
        let high = "rmgr: Heap len (rec/tot): 54/ 8246, tx: 735, lsn: 1/00000028, prev 0/FFFFFFD8, desc: INSERT";
        assert_eq!(waldump_record_end(high), Some((1 << 32) + 0x28 + 8246));
        assert_eq!(waldump_record_end("pg_waldump: error: error in WAL record at 0/1500718"), None);
    }

    #[test]
    fn private_files_are_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgpass");
        write_private(&path, "x").expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn ssl_options_name_every_file_and_quote_what_needs_it() {
        let credentials = pgwarden_config::Credentials {
            username: "replicator".into(),
            sslmode: Some("verify-full".into()),
            sslcert: Some("/etc/pg/client.crt".into()),
            sslkey: Some("/etc/pg/my key's.key".into()),
            sslrootcert: Some("/etc/pg/ca.crt".into()),
            ..Default::default()
        };
        assert_eq!(
            ssl_options(&credentials),
            " sslmode=verify-full sslcert=/etc/pg/client.crt sslkey='/etc/pg/my key\\'s.key' sslrootcert=/etc/pg/ca.crt"
        );
        assert_eq!(ssl_options(&pgwarden_config::Credentials::default()), "");
        let strict = pgwarden_config::Credentials {
            gssencmode: Some("disable".into()),
            channel_binding: Some("require".into()),
            sslcrl: Some("/etc/pg/root.crl".into()),
            sslcrldir: Some("/etc/pg/crl.d".into()),
            ..Default::default()
        };
        assert_eq!(
            ssl_options(&strict),
            " gssencmode=disable channel_binding=require sslcrl=/etc/pg/root.crl sslcrldir=/etc/pg/crl.d"
        );
    }

    #[test]
    fn private_files_are_replaced_whole_with_mode_0600_and_no_temp_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node1.pgpass_pgwarden");
        write_private(&path, "first\n").expect("write");
        write_private(&path, "second\n").expect("replace");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "second\n");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node1.pgpass_pgwarden")], "no temp file left beside it");
    }
}
