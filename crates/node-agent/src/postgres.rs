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

mod conf;
mod datadir;

#[cfg(test)]
use conf::{parse_slot_state, write_slot_state};
#[cfg(test)]
use datadir::{parse_timeline_history, rewind_changed_target};

/// The name of the file initdb writes and PostgreSQL reads by default.
pub(crate) const INITDB_CONF: &str = "postgresql.conf";

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

impl StartAs {
    /// The role whose role-based settings apply (`None`: a restore, which
    /// Patroni gives none either).
    pub fn role(&self) -> Option<pgwarden_config::PgRole> {
        match self {
            StartAs::Primary => Some(pgwarden_config::PgRole::Primary),
            StartAs::Restore { .. } => None,
            StartAs::Replica { .. } => Some(pgwarden_config::PgRole::Replica),
            StartAs::StandbyLeader { .. } => Some(pgwarden_config::PgRole::StandbyLeader),
        }
    }
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
    /// The `pg_hba`, `pg_ident` and `pg_hosts` lines the last config written asked for
    /// (also when refused), to notice a change in the dynamic config.
    written_auth: std::sync::Mutex<Option<AuthFiles>>,
    /// The binaries' major version, once asked (`libpq_major`).
    bin_major: std::sync::OnceLock<Option<u32>>,
    /// The dynamic config the HA loop last saw (`set_dynamic`).
    dynamic: std::sync::Mutex<DynamicConfig>,
    /// The `recovery_conf` settings the last config written had.
    written_recovery: std::sync::Mutex<Option<BTreeMap<String, String>>>,
    /// This replica streams from another replica (`replicatefrom`), not from
    /// the leader: PostgreSQL's slot synchronisation cannot serve it.
    cascading: std::sync::atomic::AtomicBool,
    /// A member streaming from this one (`replicatefrom`), directly or
    /// further down, keeps logical slot copies: its feedback must reach the
    /// primary through this one (`hot_standby_feedback`).
    relays_feedback: std::sync::atomic::AtomicBool,
}

/// A list set in the local config, else the dynamic config's, with where it
/// comes from (`None`: neither sets it).
fn local_else_dynamic(
    local: (&[String], &'static str),
    dynamic: (&[String], &'static str),
) -> Option<(Vec<String>, &'static str)> {
    [local, dynamic].into_iter().find(|(lines, _)| !lines.is_empty()).map(|(lines, source)| (lines.to_vec(), source))
}

/// The lines pgwarden owns of `pg_hba.conf`, `pg_ident.conf` and
/// `pg_hosts.conf` (`None`: the file is left as it is), with where they
/// come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFiles {
    pub hba: Option<(Vec<String>, &'static str)>,
    pub ident: Option<(Vec<String>, &'static str)>,
    pub hosts: Option<(Vec<String>, &'static str)>,
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

/// Where the WAL in the segment file `name` (timeline, log and segment,
/// 24 hex digits) begins, for segments of `segment_size` bytes; `None` for
/// anything else in `pg_wal` (history, `.partial`, `.backup` files).
fn wal_file_start(name: &str, segment_size: u64) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || segment_size == 0 {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    log.checked_mul(0x1_0000_0000)?.checked_add(seg.checked_mul(segment_size)?)
}

/// Where the oldest WAL among the files `names` of `pg_wal` begins, on any
/// timeline (PostgreSQL removes old segments by their number alone).
fn oldest_wal_start<'a>(names: impl IntoIterator<Item = &'a str>, segment_size: u64) -> Option<u64> {
    names.into_iter().filter_map(|name| wal_file_start(name, segment_size)).min()
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
            bin_major: std::sync::OnceLock::new(),
            dynamic: std::sync::Mutex::new(config.bootstrap.dcs.clone()),
            written_recovery: std::sync::Mutex::new(None),
            cascading: std::sync::atomic::AtomicBool::new(false),
            relays_feedback: std::sync::atomic::AtomicBool::new(false),
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
        self.write_pgpass_for(upstream.as_slice())
    }

    /// As [`Postgres::write_pgpass`], for several servers at once: a
    /// cascading replica's upstream (its WAL receiver reads this file
    /// whenever it reconnects) and the leader a tool connects to meanwhile.
    pub fn write_pgpass_for(&self, upstreams: &[&Upstream]) -> anyhow::Result<()> {
        let auth = &self.config.postgresql.authentication;
        let lines: String = upstreams.iter().map(|u| pgpass_lines(auth, Some(u))).collect();
        write_private(&self.pgpass, &lines)?;
        write_service_file(&self.pgpass, auth)
    }

    /// The environment every libpq tool the agent runs gets: the pgpass
    /// and service files.
    pub(crate) fn libpq_env(&self, cmd: &mut Command) {
        cmd.env("PGPASSFILE", &self.pgpass).env("PGSERVICEFILE", service_file(&self.pgpass));
    }

    /// `libpq_options` for `credentials`, for this PostgreSQL's major
    /// (the data directory's, else the binaries').
    pub(crate) fn libpq_options(&self, credentials: &pgwarden_config::Credentials, password: SslPassword) -> String {
        libpq_options(credentials, self.libpq_major(), self.config.postgresql.krbsrvname.as_deref(), password)
    }

    /// The major of the libpq the tools use: the data directory's, else
    /// what `postgres --version` says (asked once).
    fn libpq_major(&self) -> Option<u32> {
        self.major().or_else(|| {
            *self.bin_major.get_or_init(|| {
                std::process::Command::new(self.bins.path("postgres"))
                    .arg("--version")
                    .output()
                    .ok()
                    .and_then(|o| crate::version::major_of(&String::from_utf8_lossy(&o.stdout)))
            })
        })
    }

    async fn run(&self, what: &str, cmd: &mut Command) -> anyhow::Result<String> {
        self.libpq_env(cmd);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
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
            self.libpq_options(replication, SslPassword::Service(SERVICE_REPLICATION))
        );
        let mut cmd = Command::new(self.bins.path("pg_basebackup"));
        cmd.arg("-D").arg(&self.data_dir).arg("-d").arg(&conninfo).args(["--wal-method=stream", "--progress"]);
        let mut has_checkpoint = false;
        for option in &self.basebackup_options() {
            has_checkpoint |= matches!(option, pgwarden_config::ToolOption::Value(k, _) if k == "checkpoint");
            cmd.arg(option.to_arg());
        }
        if !has_checkpoint {
            cmd.arg("--checkpoint=fast");
        }
        self.libpq_env(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
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

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bins.path("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir).args(args);
        self.run(&format!("pg_ctl {}", args.first().copied().unwrap_or_default()), &mut cmd).await
    }

    fn timeout_arg(&self) -> String {
        self.pg_ctl_timeout().as_secs().to_string()
    }

    /// `pg_ctl_timeout`: the local config's, else the dynamic config's, else 60 s.
    pub fn pg_ctl_timeout(&self) -> Duration {
        self.config
            .postgresql
            .pg_ctl_timeout
            .or_else(|| self.dynamic().pg_ctl_timeout)
            .unwrap_or(Duration::from_secs(60))
    }

    /// A local list if set, else the dynamic config's (as Patroni merges
    /// its `postgresql` section).
    fn local_else<T: Clone>(&self, local: &[T], dynamic: impl Fn(&DynamicConfig) -> Vec<T>) -> Vec<T> {
        if local.is_empty() { dynamic(&self.dynamic()) } else { local.to_vec() }
    }

    /// pg_basebackup's options: `postgresql.basebackup`, else the dynamic config's.
    pub(crate) fn basebackup_options(&self) -> Vec<pgwarden_config::ToolOption> {
        self.local_else(&self.config.postgresql.basebackup, |d| d.basebackup.clone())
    }

    /// pg_rewind's extra options: `postgresql.rewind`, else the dynamic config's.
    pub(crate) fn rewind_options(&self) -> Vec<pgwarden_config::ToolOption> {
        self.local_else(&self.config.postgresql.rewind, |d| d.rewind.clone())
    }

    /// The dynamic config the HA loop last saw (`set_dynamic`).
    fn dynamic(&self) -> DynamicConfig {
        self.dynamic.lock().expect("dynamic config").clone()
    }

    /// The dynamic config the HA loop works with now, for the local
    /// settings that fall back on it (`pg_ctl_timeout`, `basebackup`,
    /// `rewind`, `recovery_conf`).
    pub fn set_dynamic(&self, dynamic: &DynamicConfig) {
        let mut current = self.dynamic.lock().expect("dynamic config");
        if *current != *dynamic {
            *current = dynamic.clone();
        }
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
        self.start_within(self.pg_ctl_timeout()).await
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
}

/// Where a libpq connection takes `sslpassword` from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslPassword {
    /// In the conninfo itself: `primary_conninfo`, in PostgreSQL's own
    /// 0600 config file, as Patroni writes it.
    Inline,
    /// From this section of the service file (`PGSERVICEFILE`, 0600): a
    /// tool's conninfo is on its command line, where `ps` shows it.
    Service(&'static str),
}

/// The first PostgreSQL major whose libpq knows each option (Patroni's
/// table): an older one refuses a conninfo that names it.
const LIBPQ_OPTION_SINCE: &[(&str, u32)] =
    &[("gssencmode", 12), ("channel_binding", 13), ("sslpassword", 13), ("sslcrldir", 14), ("sslnegotiation", 17)];

/// The libpq options of `credentials` (TLS, GSS, channel binding) and
/// `postgresql.krbsrvname` as conninfo text, each preceded by a space; an
/// option the libpq of `major` lacks is left out (unknown major: kept).
pub(crate) fn libpq_options(
    credentials: &pgwarden_config::Credentials,
    major: Option<u32>,
    krbsrvname: Option<&str>,
    password: SslPassword,
) -> String {
    let known = |key: &str| {
        LIBPQ_OPTION_SINCE
            .iter()
            .find(|(name, _)| *name == key)
            .is_none_or(|(_, since)| major.is_none_or(|m| m >= *since))
    };
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let mut text = String::new();
    let secret = credentials.sslpassword.as_ref().map(|p| p.expose().to_string());
    let options = [
        ("sslmode", credentials.sslmode.clone()),
        ("gssencmode", credentials.gssencmode.clone()),
        ("channel_binding", credentials.channel_binding.clone()),
        ("sslnegotiation", credentials.sslnegotiation.clone()),
        ("sslcert", path(&credentials.sslcert)),
        ("sslkey", path(&credentials.sslkey)),
        ("sslrootcert", path(&credentials.sslrootcert)),
        ("sslcrl", path(&credentials.sslcrl)),
        ("sslcrldir", path(&credentials.sslcrldir)),
        ("krbsrvname", krbsrvname.map(str::to_string)),
        ("sslpassword", secret.clone().filter(|_| password == SslPassword::Inline)),
    ];
    for (key, value) in options {
        if let Some(value) = value
            && known(key)
        {
            text.push_str(&format!(" {key}={}", conninfo_value(&value)));
        }
    }
    if let (Some(_), SslPassword::Service(section)) = (&secret, password)
        && known("sslpassword")
    {
        text.push_str(&format!(" service={section}"));
    }
    text
}

/// The service file beside the pgpass file: one section per role with an
/// `sslpassword` (`PGSERVICEFILE` for the tools; 0600).
pub(crate) fn service_file(pgpass: &std::path::Path) -> PathBuf {
    let mut name = pgpass.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "pgpass".into());
    name.push(".service");
    pgpass.with_file_name(name)
}

/// The passphrases of encrypted client keys, for the tools: the service
/// file beside `pgpass` written, or removed once no role has one (a
/// passphrase taken out of the config leaves no copy on disk).
fn write_service_file(pgpass: &std::path::Path, auth: &pgwarden_config::Authentication) -> anyhow::Result<()> {
    let path = service_file(pgpass);
    let service = service_file_text(auth);
    if !service.is_empty() {
        return write_private(&path, &service);
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::anyhow!("remove the service file {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The service file's text: `[section]` and `sslpassword=` for each role
/// whose credentials have one (libpq reads the value to the end of the line).
fn service_file_text(auth: &pgwarden_config::Authentication) -> String {
    let roles = [
        (SERVICE_SUPERUSER, Some(&auth.superuser)),
        (SERVICE_REPLICATION, Some(&auth.replication)),
        (SERVICE_REWIND, auth.rewind.as_ref()),
    ];
    let mut text = String::new();
    for (section, credentials) in roles {
        if let Some(password) = credentials.and_then(|c| c.sslpassword.as_ref()) {
            text.push_str(&format!("[{section}]\nsslpassword={}\n", password.expose()));
        }
    }
    text
}

pub(crate) const SERVICE_SUPERUSER: &str = "pgwarden_superuser";
pub(crate) const SERVICE_REPLICATION: &str = "pgwarden_replication";
pub(crate) const SERVICE_REWIND: &str = "pgwarden_rewind";

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

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_config::PgRole;

    /// A `Postgres` over a data directory of `major` (its `PG_VERSION`), with
    /// `postgresql_extra` YAML lines added to the `postgresql` section, and
    /// the dynamic config read from `dynamic`.
    fn postgres_of(
        dir: &Path,
        major: u32,
        postgresql_extra: &str,
        dynamic: serde_json::Value,
    ) -> (Postgres, DynamicConfig) {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("PG_VERSION"), format!("{major}\n")).expect("PG_VERSION");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        for binary in pgwarden_config::BINARIES {
            let path = bin.join(binary);
            std::fs::write(&path, "").expect("stub");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let yaml = format!(
            "scope: s\nname: a\nrestapi:\n  listen: 127.0.0.1:8008\netcd3:\n  hosts: 127.0.0.1:2379\n\
             postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: {}\n  bin_dir: {}\n{postgresql_extra}",
            data.display(),
            bin.display()
        );
        let source = pgwarden_config::Source { origin: "test".into(), yaml };
        let config = pgwarden_config::load_from(&source, std::iter::empty(), pgwarden_config::Purpose::Service)
            .expect("a valid config")
            .config;
        let mut problems = pgwarden_config::Problems::default();
        let (dynamic, _) = DynamicConfig::read(&dynamic, "", &mut problems);
        let bins = config.postgres_binaries().expect("binaries");
        (Postgres::new(&config, bins).expect("postgres"), dynamic)
    }

    fn lines<'a>(owned: &'a Option<(Vec<String>, &'static str)>) -> Option<(Vec<&'a str>, &'static str)> {
        owned.as_ref().map(|(lines, source)| (lines.iter().map(String::as_str).collect(), *source))
    }

    /// `pg_hosts` (PostgreSQL 19's server name to certificate map) is picked
    /// as Patroni picks `pg_ident`: the role's lines, else the local ones,
    /// else the dynamic config's; and only for a server that reads it.
    #[test]
    fn pg_hosts_lines_are_picked_as_patronis_and_only_for_postgresql_19_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dynamic = serde_json::json!({"postgresql": {
            "pg_hosts": ["dyn.example /c/dyn.crt /c/dyn.key"],
            "pg_hosts_replica": ["replica.example /c/r.crt /c/r.key"],
        }});
        let local = "  pg_hosts:\n  - '* /c/local.crt /c/local.key'\n";
        let (pg, dynamic_config) = postgres_of(dir.path(), 19, local, dynamic.clone());
        let hosts = |role| pg.auth_files(&dynamic_config, Some(role)).hosts;
        assert_eq!(
            lines(&hosts(PgRole::Replica)),
            Some((vec!["replica.example /c/r.crt /c/r.key"], "postgresql.pg_hosts_replica"))
        );
        assert_eq!(lines(&hosts(PgRole::Primary)), Some((vec!["* /c/local.crt /c/local.key"], "postgresql.pg_hosts")));
        let (pg, dynamic_config) = postgres_of(dir.path(), 20, "", dynamic.clone());
        assert_eq!(
            lines(&pg.auth_files(&dynamic_config, Some(PgRole::Primary)).hosts),
            Some((vec!["dyn.example /c/dyn.crt /c/dyn.key"], "the dynamic config's postgresql.pg_hosts"))
        );
        assert_eq!(pg.hosts_ignored(&dynamic_config, None), None);
        // PostgreSQL 18 has neither the file nor `hosts_file`.
        let (pg, dynamic_config) = postgres_of(dir.path(), 18, local, dynamic.clone());
        assert_eq!(pg.auth_files(&dynamic_config, Some(PgRole::Replica)).hosts, None);
        assert_eq!(pg.hosts_ignored(&dynamic_config, None), Some(conf::HostsIgnored::Version(Some(18))));
        let message = conf::HostsIgnored::Version(Some(18)).to_string();
        assert!(message.contains("PostgreSQL 19") && message.contains("PostgreSQL 18"), "{message}");
    }

    /// With `config_dir` elsewhere `hosts_file` names pgwarden's file (19 on
    /// only: 18 would refuse the unknown parameter); a `hosts_file` of the
    /// user's own wins and its lines are left alone.
    #[test]
    fn hosts_file_points_at_pgwardens_file_unless_the_user_names_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("etc");
        let extra = format!("  config_dir: {}\n  pg_hosts:\n  - '* /c/a.crt /c/a.key'\n", conf.display());
        let ours = conf.join("pg_hosts.conf").display().to_string();
        let (pg, dynamic) = postgres_of(dir.path(), 19, &extra, serde_json::json!({}));
        assert_eq!(pg.parameters(&dynamic, false, None).get("hosts_file"), Some(&ours));
        assert!(pg.auth_files(&dynamic, None).hosts.is_some());
        let (pg, dynamic) = postgres_of(dir.path(), 18, &extra, serde_json::json!({}));
        assert_eq!(pg.parameters(&dynamic, false, None).get("hosts_file"), None);
        // The user's own file, named in the dynamic parameters.
        let users = serde_json::json!({"postgresql": {"parameters": {"hosts_file": "/srv/sni/hosts.conf"}}});
        let (pg, dynamic) = postgres_of(dir.path(), 19, &extra, users);
        assert_eq!(
            pg.parameters(&dynamic, false, None).get("hosts_file").map(String::as_str),
            Some("/srv/sni/hosts.conf")
        );
        assert_eq!(pg.auth_files(&dynamic, None).hosts, None);
        assert_eq!(pg.hosts_ignored(&dynamic, None), Some(conf::HostsIgnored::UsersFile("/srv/sni/hosts.conf".into())));
        // Naming pgwarden's own file is as good as not naming one (Patroni's rule).
        let same = serde_json::json!({"postgresql": {"parameters": {"hosts_file": ours}}});
        let (pg, dynamic) = postgres_of(dir.path(), 19, &extra, same);
        assert!(pg.auth_files(&dynamic, None).hosts.is_some());
        // Written whole, 0600 (it names keys and passphrase commands).
        std::fs::create_dir_all(&conf).expect("config dir");
        pg.write_hosts(&["* /c/a.crt /c/a.key".to_string()], "postgresql.pg_hosts").expect("write");
        let text = std::fs::read_to_string(&ours).expect("pg_hosts.conf");
        assert_eq!(text, "# Written by pgwarden-agent from postgresql.pg_hosts.\n* /c/a.crt /c/a.key\n");
        assert_eq!(std::fs::metadata(&ours).expect("meta").permissions().mode() & 0o777, 0o600);
    }

    /// As PostgreSQL's archiver fills `archive_command`: `%p`, `%f`, `%%`;
    /// any other `%` stays.
    #[test]
    fn archive_command_placeholders_are_filled_as_postgresqls_archiver_fills_them() {
        let file = "000000020000000000000005";
        let path = format!("pg_wal/{file}");
        let line = |command: &str| datadir::archive_command_line(command, &path, file);
        assert_eq!(
            line("test ! -f /arch/%f && cp %p /arch/%f"),
            "test ! -f /arch/000000020000000000000005 && cp pg_wal/000000020000000000000005 /arch/000000020000000000000005"
        );
        assert_eq!(line("echo 100%% %r %x %"), "echo 100% %r %x %");
        assert_eq!(line("%%p"), "%p", "an escaped percent sign is not a placeholder");
        assert_eq!(line("wal-g wal-push %p"), "wal-g wal-push pg_wal/000000020000000000000005");
    }

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
        let slot = parse_slot_state("cdc\u{1f}app db\u{1f}pgoutput\u{1f}50331688\u{1f}a1c20001ff").expect("a line");
        assert_eq!((slot.name.as_str(), slot.database.as_str(), slot.plugin.as_str()), ("cdc", "app db", "pgoutput"));
        assert_eq!(slot.restart_lsn, 0x0300_0028);
        assert_eq!(slot.state, vec![0xa1, 0xc2, 0x00, 0x01, 0xff]);
        assert!(parse_slot_state("cdc\u{1f}app\u{1f}pgoutput\u{1f}1\u{1f}abc").is_err(), "odd length");
        assert!(parse_slot_state("cdc\u{1f}app\u{1f}pgoutput\u{1f}1\u{1f}zz").is_err(), "not hex");
        assert!(parse_slot_state("cdc\u{1f}app\u{1f}pgoutput\u{1f}\u{1f}ff").is_err(), "no restart_lsn");
        assert!(parse_slot_state("cdc\u{1f}app").is_err(), "too few fields");
    }

    #[test]
    fn the_oldest_wal_is_found_by_segment_number_on_any_timeline() {
        const MB16: u64 = 16 << 20;
        assert_eq!(wal_file_start("000000010000000000000003", MB16), Some(0x0300_0000));
        assert_eq!(wal_file_start("00000002000000010000000A", MB16), Some(0x1_0A00_0000));
        // 64 MB segments: 64 to a 4 GB log file.
        assert_eq!(wal_file_start("00000001000000010000003F", 64 << 20), Some(0x1_0000_0000 + 63 * (64 << 20)));
        for other in
            ["00000002.history", "000000010000000000000003.partial", "archive_status", "0000000100000000000000G3"]
        {
            assert_eq!(wal_file_start(other, MB16), None, "{other}");
        }
        let names =
            ["00000002.history", "000000020000000000000005", "000000010000000000000004", "000000010000000000000006"];
        assert_eq!(oldest_wal_start(names, MB16), Some(0x0400_0000), "timeline 1's segment 4 is the oldest");
        assert_eq!(oldest_wal_start(["archive_status"], MB16), None);
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
    fn libpq_options_name_every_file_quote_what_needs_it_and_follow_the_major() {
        let credentials = pgwarden_config::Credentials {
            username: "replicator".into(),
            sslmode: Some("verify-full".into()),
            sslcert: Some("/etc/pg/client.crt".into()),
            sslkey: Some("/etc/pg/my key's.key".into()),
            sslrootcert: Some("/etc/pg/ca.crt".into()),
            ..Default::default()
        };
        let options = |c: &pgwarden_config::Credentials, major, password| libpq_options(c, major, None, password);
        assert_eq!(
            options(&credentials, Some(15), SslPassword::Inline),
            " sslmode=verify-full sslcert=/etc/pg/client.crt sslkey='/etc/pg/my key\\'s.key' sslrootcert=/etc/pg/ca.crt"
        );
        assert_eq!(options(&pgwarden_config::Credentials::default(), None, SslPassword::Inline), "");
        let strict = pgwarden_config::Credentials {
            gssencmode: Some("disable".into()),
            channel_binding: Some("require".into()),
            sslcrl: Some("/etc/pg/root.crl".into()),
            sslcrldir: Some("/etc/pg/crl.d".into()),
            sslnegotiation: Some("direct".into()),
            sslpassword: Some(pgwarden_config::Secret::new("key pass")),
            ..Default::default()
        };
        assert_eq!(
            options(&strict, Some(17), SslPassword::Inline),
            " gssencmode=disable channel_binding=require sslnegotiation=direct sslcrl=/etc/pg/root.crl \
             sslcrldir=/etc/pg/crl.d sslpassword='key pass'"
        );
        // A tool's command line names the service file's section, never the passphrase.
        let tool = options(&strict, Some(17), SslPassword::Service(SERVICE_REPLICATION));
        assert!(tool.ends_with(" service=pgwarden_replication") && !tool.contains("key pass"), "{tool}");
        // PostgreSQL 13's libpq knows neither sslcrldir nor sslnegotiation (Patroni's table).
        assert_eq!(
            options(&strict, Some(13), SslPassword::Inline),
            " gssencmode=disable channel_binding=require sslcrl=/etc/pg/root.crl sslpassword='key pass'"
        );
        assert_eq!(
            libpq_options(&pgwarden_config::Credentials::default(), Some(15), Some("postgres"), SslPassword::Inline),
            " krbsrvname=postgres"
        );
    }

    #[test]
    fn the_service_file_holds_each_roles_key_passphrase() {
        let mut auth = pgwarden_config::Authentication {
            superuser: pgwarden_config::Credentials::default(),
            replication: pgwarden_config::Credentials {
                sslpassword: Some(pgwarden_config::Secret::new("r3pl")),
                ..Default::default()
            },
            rewind: None,
        };
        assert_eq!(service_file_text(&auth), "[pgwarden_replication]\nsslpassword=r3pl\n");
        auth.rewind = Some(pgwarden_config::Credentials {
            sslpassword: Some(pgwarden_config::Secret::new("rw")),
            ..Default::default()
        });
        assert!(service_file_text(&auth).ends_with("[pgwarden_rewind]\nsslpassword=rw\n"));
        assert_eq!(
            service_file(std::path::Path::new("/var/lib/pg/main.pgpass")),
            std::path::Path::new("/var/lib/pg/main.pgpass.service")
        );
    }

    #[test]
    fn the_service_file_is_removed_once_no_role_has_a_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pgpass = dir.path().join("node1.pgpass");
        let mut auth = pgwarden_config::Authentication {
            superuser: pgwarden_config::Credentials {
                sslpassword: Some(pgwarden_config::Secret::new("s3cret")),
                ..Default::default()
            },
            replication: pgwarden_config::Credentials::default(),
            rewind: None,
        };
        write_service_file(&pgpass, &auth).expect("write");
        assert!(std::fs::read_to_string(service_file(&pgpass)).expect("written").contains("s3cret"));
        auth.superuser.sslpassword = None;
        write_service_file(&pgpass, &auth).expect("remove");
        assert!(!service_file(&pgpass).exists(), "the passphrase is gone from disk");
        write_service_file(&pgpass, &auth).expect("nothing to remove");
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
