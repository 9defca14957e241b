//! The files PostgreSQL reads that pgwarden writes: the parameters
//! (`postgresql.conf` over the base file), `pg_hba.conf`, `pg_ident.conf`,
//! `pg_hosts.conf` (PostgreSQL 19+),
//! the standby's connection settings, and the logical slots' state files
//! kept on replicas.

use pgwarden_config::PgRole;

use super::*;

/// The files whose lines pgwarden writes from a list in its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinesFile {
    Hba,
    Ident,
    Hosts,
}

impl LinesFile {
    fn of_role(self, settings: &pgwarden_config::RoleSettings) -> &Option<Vec<String>> {
        match self {
            LinesFile::Hba => &settings.pg_hba,
            LinesFile::Ident => &settings.pg_ident,
            LinesFile::Hosts => &settings.pg_hosts,
        }
    }
}

/// Where role-based lines come from, for the messages that name it.
fn role_source(file: LinesFile, role: PgRole) -> &'static str {
    match (file, role) {
        (LinesFile::Hba, PgRole::Primary) => "postgresql.pg_hba_primary",
        (LinesFile::Hba, PgRole::Replica) => "postgresql.pg_hba_replica",
        (LinesFile::Hba, PgRole::StandbyLeader) => "postgresql.pg_hba_standby_leader",
        (LinesFile::Ident, PgRole::Primary) => "postgresql.pg_ident_primary",
        (LinesFile::Ident, PgRole::Replica) => "postgresql.pg_ident_replica",
        (LinesFile::Ident, PgRole::StandbyLeader) => "postgresql.pg_ident_standby_leader",
        (LinesFile::Hosts, PgRole::Primary) => "postgresql.pg_hosts_primary",
        (LinesFile::Hosts, PgRole::Replica) => "postgresql.pg_hosts_replica",
        (LinesFile::Hosts, PgRole::StandbyLeader) => "postgresql.pg_hosts_standby_leader",
    }
}

/// The first major whose server reads `pg_hosts.conf` (and knows `hosts_file`).
pub const PG_HOSTS_MAJOR: u32 = 19;

/// Why the configured `pg_hosts` lines are not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsIgnored {
    /// The data directory's major is older than 19 (or not known yet).
    Version(Option<u32>),
    /// The parameters point `hosts_file` at a file of the user's own.
    UsersFile(String),
}

impl std::fmt::Display for HostsIgnored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostsIgnored::Version(major) => write!(
                f,
                "pg_hosts.conf is read from PostgreSQL {PG_HOSTS_MAJOR} on; this data directory is {}: the pg_hosts \
                 lines are not written (remove them, or upgrade)",
                major.map_or_else(|| "not initialised yet".to_string(), |m| format!("PostgreSQL {m}"))
            ),
            HostsIgnored::UsersFile(file) => write!(
                f,
                "the parameters set hosts_file = {file}: that file is the user's, the pg_hosts lines are not \
                 written (drop one or the other)"
            ),
        }
    }
}

impl Postgres {
    /// Every parameter pgwarden sets: what replication needs, the dynamic
    /// config's parameters, then the local ones (the local YAML wins, as in
    /// Patroni), then those of `role` (`parameters_primary`, ...).
    pub fn parameters(
        &self,
        dynamic: &DynamicConfig,
        listen_local_only: bool,
        role: Option<PgRole>,
    ) -> BTreeMap<String, String> {
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
        // The protected ones were dropped when the config was read.
        if let Some(role_parameters) = role.and_then(|role| self.role_settings(dynamic, role, |s| &s.parameters)) {
            params.extend(role_parameters.iter().map(|(k, v)| (k.clone(), v.clone())));
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
            // PostgreSQL 19's SNI map, unless the user names a file of their own.
            if self.major().is_some_and(|m| m >= PG_HOSTS_MAJOR) && !params.contains_key("hosts_file") {
                set(&mut params, "hosts_file", self.hosts_path().display().to_string());
            }
        }
        if let Some(names) = self.sync_names.lock().expect("sync names").clone() {
            set(&mut params, "synchronous_standby_names", names);
        }
        // Logical slot failover (as Patroni enforces it): a standby's
        // copies of the primary's logical slots need the catalog rows their
        // decoding reads, which its feedback keeps on the primary. From 17
        // on PostgreSQL keeps the copies itself, on a standby of the primary
        // (its sync worker cannot read a cascading standby's upstream).
        // A standby that a member keeping copies streams from passes that
        // member's feedback on only with its own on (also when it keeps no
        // copies itself: `nofailover`).
        if self.keeps_logical_slots(dynamic) || self.relays_feedback() {
            set(&mut params, "hot_standby_feedback", "on".into());
        }
        if self.keeps_logical_slots(dynamic) && self.postgres_syncs_slots() {
            set(&mut params, "sync_replication_slots", "on".into());
        }
        params
    }

    /// Sets whether this replica streams from another replica rather than the
    /// leader (for the next config written).
    pub fn set_cascading(&self, cascading: bool) {
        self.cascading.store(cascading, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets whether a member downstream of this one keeps logical slot
    /// copies (for the parameters written next): its feedback is relayed.
    pub fn set_relays_feedback(&self, relays: bool) {
        self.relays_feedback.store(relays, std::sync::atomic::Ordering::Relaxed);
    }

    /// See [`Postgres::set_relays_feedback`].
    pub fn relays_feedback(&self) -> bool {
        self.relays_feedback.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This replica streams from another replica, not from the leader.
    pub fn cascading(&self) -> bool {
        self.cascading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// PostgreSQL keeps this replica's copies of the logical slots (17 and
    /// newer, streaming from the leader); otherwise pgwarden copies them
    /// and moves them along, as Patroni does on every version.
    pub fn postgres_syncs_slots(&self) -> bool {
        self.major().is_some_and(|m| m >= 17) && !self.cascading()
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
        // A slot without a restart_lsn (invalidated: its WAL is gone) is not
        // copied: no copy of it could be decoded from (and one such slot
        // must not stop the others being copied).
        let query = format!(
            "select s.slot_name, d.datname, s.plugin, pg_wal_lsn_diff(s.restart_lsn, '0/0')::bigint, \
                    encode(pg_catalog.pg_read_binary_file('pg_replslot/' || s.slot_name || '/state'), 'hex') \
             from pg_catalog.pg_replication_slots s join pg_catalog.pg_database d on d.oid = s.datoid \
             where s.slot_type = 'logical' and not pg_catalog.pg_is_in_recovery() and s.restart_lsn is not null \
               and s.slot_name in ({})",
            listed.join(", ")
        );
        let mut cmd = Command::new(self.bins.path("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\u{1f}", "-d"])
            .arg(&conninfo)
            .args(["-c", &query]);
        let text = self.run("psql (read the primary's logical slots)", &mut cmd).await?;
        text.lines().filter(|l| !l.is_empty()).map(parse_slot_state).collect()
    }

    /// Where the oldest WAL this server still has begins (its `pg_wal`):
    /// a slot whose restart_lsn is earlier cannot be decoded from here.
    pub fn oldest_wal(&self, segment_size: u64) -> anyhow::Result<Option<u64>> {
        let dir = self.data_dir.join("pg_wal");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("list {}", dir.display()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        Ok(super::oldest_wal_start(names.iter().map(String::as_str), segment_size))
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

    /// A role-based setting: the local config's, else the dynamic config's
    /// (`None`: neither sets it for `role`).
    fn role_settings<'a, T>(
        &'a self,
        dynamic: &'a DynamicConfig,
        role: PgRole,
        pick: impl Fn(&'a pgwarden_config::RoleSettings) -> &'a Option<T>,
    ) -> Option<&'a T> {
        pick(self.config.postgresql.roles.of(role)).as_ref().or_else(|| pick(dynamic.roles.of(role)).as_ref())
    }

    /// The lines pgwarden owns of one of its files, as Patroni picks them:
    /// `<key>_<role>` (local, else dynamic), else the local
    /// `postgresql.<key>`, else the dynamic config's. `None`: the file is
    /// left as it is (for pg_hba.conf: initdb's with `bootstrap.pg_hba`
    /// appended at bootstrap, the leader's copy on a clone, Patroni's on an
    /// adopted node).
    fn configured_lines(
        &self,
        dynamic: &DynamicConfig,
        role: Option<PgRole>,
        file: LinesFile,
    ) -> Option<(Vec<String>, &'static str)> {
        if let Some(role) = role
            && let Some(lines) = self.role_settings(dynamic, role, |s| file.of_role(s))
        {
            return Some((lines.clone(), role_source(file, role)));
        }
        let (local, in_dynamic) = match file {
            LinesFile::Hba => (&self.config.postgresql.pg_hba, &dynamic.pg_hba),
            LinesFile::Ident => (&self.config.postgresql.pg_ident, &dynamic.pg_ident),
            LinesFile::Hosts => (&self.config.postgresql.pg_hosts, &dynamic.pg_hosts),
        };
        let (local_source, dynamic_source) = match file {
            LinesFile::Hba => ("postgresql.pg_hba", "the dynamic config's postgresql.pg_hba"),
            LinesFile::Ident => ("postgresql.pg_ident", "the dynamic config's postgresql.pg_ident"),
            LinesFile::Hosts => ("postgresql.pg_hosts", "the dynamic config's postgresql.pg_hosts"),
        };
        local_else_dynamic((local, local_source), (in_dynamic, dynamic_source))
    }

    /// The pg_hba.conf lines pgwarden owns (`configured_lines`).
    pub(super) fn hba_lines(
        &self,
        dynamic: &DynamicConfig,
        role: Option<PgRole>,
    ) -> Option<(Vec<String>, &'static str)> {
        self.configured_lines(dynamic, role, LinesFile::Hba)
    }

    /// Where pgwarden writes `pg_hosts.conf`.
    fn hosts_path(&self) -> PathBuf {
        self.config_dir().join("pg_hosts.conf")
    }

    /// Why pgwarden does not own `pg_hosts.conf` (`None`: it does): the
    /// server is older than 19, or the parameters point `hosts_file`
    /// elsewhere (as Patroni, a `hosts_file` naming pgwarden's own file counts
    /// as unset).
    pub fn hosts_ignored(&self, dynamic: &DynamicConfig, role: Option<PgRole>) -> Option<HostsIgnored> {
        let major = self.major();
        if major.is_none_or(|m| m < PG_HOSTS_MAJOR) {
            return Some(HostsIgnored::Version(major));
        }
        let role_parameters = role.and_then(|role| self.role_settings(dynamic, role, |s| &s.parameters));
        let users = role_parameters
            .and_then(|p| p.get("hosts_file"))
            .or_else(|| self.config.postgresql.parameters.get("hosts_file"))
            .or_else(|| dynamic.parameters.get("hosts_file"))?;
        let ours = self.hosts_path();
        let same = Path::new(users) == ours || self.data_dir.join(users) == ours;
        (!same).then(|| HostsIgnored::UsersFile(users.clone()))
    }

    /// The pg_hosts.conf lines pgwarden owns (`None`: the file is left as it
    /// is, also where [`Self::hosts_ignored`] says why).
    pub(super) fn hosts_lines(
        &self,
        dynamic: &DynamicConfig,
        role: Option<PgRole>,
    ) -> Option<(Vec<String>, &'static str)> {
        let lines = self.configured_lines(dynamic, role, LinesFile::Hosts)?;
        self.hosts_ignored(dynamic, role).is_none().then_some(lines)
    }

    /// What `write_config` would write of the authentication files now for `role`.
    pub fn auth_files(&self, dynamic: &DynamicConfig, role: Option<PgRole>) -> AuthFiles {
        AuthFiles {
            hba: self.hba_lines(dynamic, role),
            ident: self.configured_lines(dynamic, role, LinesFile::Ident),
            hosts: self.hosts_lines(dynamic, role),
        }
    }

    /// `recovery_conf` for every standby: the local one, else the dynamic
    /// config's.
    pub(crate) fn recovery_conf(&self, dynamic: &DynamicConfig) -> BTreeMap<String, String> {
        let local = &self.config.postgresql.recovery_conf;
        if local.is_empty() { dynamic.recovery_conf.clone() } else { local.clone() }
    }

    /// The `recovery_conf` now wanted differs from the one last written (a
    /// dynamic change): the config is rewritten and reloaded.
    pub fn recovery_conf_changed(&self, dynamic: &DynamicConfig) -> bool {
        self.written_recovery
            .lock()
            .expect("written recovery_conf")
            .as_ref()
            .is_some_and(|written| *written != self.recovery_conf(dynamic))
    }

    /// What the last `write_config` of this process asked for (`None`: none yet).
    pub fn written_auth_files(&self) -> Option<AuthFiles> {
        self.written_auth.lock().expect("written auth files").clone()
    }

    /// Writes `pg_ident.conf` from `lines` (0600).
    pub(super) fn write_ident(&self, lines: &[String], source: &str) -> anyhow::Result<()> {
        let mut ident = format!("# Written by pgwarden-agent from {source}.\n");
        for line in lines {
            ident.push_str(line);
            ident.push('\n');
        }
        write_private(&self.config_dir().join("pg_ident.conf"), &ident)
    }

    /// Writes `pg_hosts.conf` from `lines` (0600: it names key files and
    /// passphrase commands).
    pub(super) fn write_hosts(&self, lines: &[String], source: &str) -> anyhow::Result<()> {
        let mut hosts = format!("# Written by pgwarden-agent from {source}.\n");
        for line in lines {
            hosts.push_str(line);
            hosts.push('\n');
        }
        write_private(&self.hosts_path(), &hosts)
    }

    /// Writes `pg_hba.conf` from `lines`, unless they would lock the agent
    /// out: then nothing is written and the error names the line to add.
    pub(super) fn write_hba(&self, lines: &[String], source: &str) -> anyhow::Result<()> {
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
        if let Some((lines, source)) = self.hba_lines(dynamic, Some(PgRole::Primary)) {
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
        let managed = self.managed_conf_path();
        let mut text = format!(
            "{}; edits are overwritten. Put local settings in\n\
             # postgresql.parameters of the pgwarden config.\ninclude {}\n\n",
            crate::confdir::WRITTEN_BY,
            quote(&self.base_include())
        );
        let mut parameters = self.parameters(dynamic, listen_local_only, start_as.role());
        if !matches!(start_as, StartAs::Primary) {
            self.raise_to_the_primarys_settings(&mut parameters);
        }
        for (name, value) in &parameters {
            text.push_str(&format!("{name} = {}\n", quote(value)));
        }
        *self.written.lock().expect("written parameters") = Some(parameters);
        *self.written_recovery.lock().expect("written recovery_conf") = Some(self.recovery_conf(dynamic));
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
                let mut settings = self.recovery_conf(dynamic);
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
                for (name, value) in &self.recovery_conf(dynamic) {
                    text.push_str(&format!("{name} = {}\n", quote(value)));
                }
                if let Some(upstream) = upstream {
                    let mut conninfo = self.primary_conninfo(upstream);
                    if self.keeps_logical_slots(dynamic) && self.postgres_syncs_slots() {
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
        let auth = self.auth_files(dynamic, start_as.role());
        *self.written_auth.lock().expect("written auth files") = Some(auth.clone());
        if let Some((lines, source)) = &auth.hba {
            self.write_hba(lines, source)?;
        }
        if let Some((lines, source)) = &auth.ident {
            self.write_ident(lines, source)?;
        }
        if let Some((lines, source)) = &auth.hosts {
            self.write_hosts(lines, source)?;
        } else if let Some((_, source)) = self.configured_lines(dynamic, start_as.role(), LinesFile::Hosts)
            && let Some(why) = self.hosts_ignored(dynamic, start_as.role())
        {
            warn!(source, "{why}");
        }
        // The HA loop's names, not a hold an earlier leader term left.
        crate::ackhold::clear_residue(&self.data_dir)?;
        write_private(&managed, &text)?;
        self.back_up_config_files()
    }

    pub(super) fn primary_conninfo(&self, upstream: &Upstream) -> String {
        let replication = &self.config.postgresql.authentication.replication;
        let mut conninfo = format!(
            "host={} port={} user={} application_name={} passfile={} connect_timeout=3",
            upstream.host,
            upstream.port,
            replication.username,
            self.config.name,
            self.pgpass.display()
        );
        // PostgreSQL's own 0600 file: the key's passphrase may go in it.
        conninfo.push_str(&self.libpq_options(replication, SslPassword::Inline));
        conninfo
    }

    /// A standby (or a restore in recovery) refuses to run with less of
    /// these than the primary whose WAL it replays had (PostgreSQL's
    /// "recovery aborted because of insufficient parameter settings"): each
    /// is raised to what `pg_controldata` recorded, as Patroni does. A
    /// restore from another cluster's backup is the usual case.
    pub(super) fn raise_to_the_primarys_settings(&self, parameters: &mut BTreeMap<String, String>) {
        let Ok(output) = std::process::Command::new(self.bins.path("pg_controldata")).arg(&self.data_dir).output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&output.stdout);
        for (name, ours, primary) in below_the_primarys_settings(parameters, &text, self.major()) {
            info!(parameter = name, ours, primary, "raised to the primary's setting: a standby needs as many");
            parameters.insert(name.to_string(), primary.to_string());
        }
    }
}

/// The settings in `parameters` (or, unset, PostgreSQL `major`'s default)
/// below what `pg_controldata`'s `text` recorded of the primary: (name,
/// ours, the primary's). A value equal to the default is never written: a
/// postmaster-only setting later dropped from the file (at a promotion)
/// would show as pending a restart although nothing changed.
fn below_the_primarys_settings(
    parameters: &BTreeMap<String, String>,
    text: &str,
    major: Option<u32>,
) -> Vec<(&'static str, u64, u64)> {
    // PostgreSQL 19 doubled max_locks_per_transaction's default.
    let locks = if major.is_some_and(|m| m >= 19) { 128 } else { 64 };
    let settings: [(&str, &str, u64); 5] = [
        ("max_connections", "max_connections setting", 100),
        ("max_worker_processes", "max_worker_processes setting", 8),
        ("max_wal_senders", "max_wal_senders setting", 10),
        ("max_prepared_transactions", "max_prepared_xacts setting", 0),
        ("max_locks_per_transaction", "max_locks_per_xact setting", locks),
    ];
    let recorded = |key: &str| {
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    settings
        .into_iter()
        .filter_map(|(name, key, default)| {
            let primary = recorded(key)?;
            let ours = parameters.get(name).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default);
            (primary > ours).then_some((name, ours, primary))
        })
        .collect()
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
/// plugin, restart_lsn and the state file in hex, separated by U+001F.
pub(super) fn parse_slot_state(line: &str) -> anyhow::Result<crate::sql::SlotState> {
    let fields: Vec<&str> = line.split('\u{1f}').collect();
    let [name, database, plugin, restart_lsn, hex] = fields.as_slice() else {
        bail!("unexpected line from the primary's slots: {line:?}");
    };
    let restart_lsn = restart_lsn
        .parse::<u64>()
        .with_context(|| format!("slot {name}: restart_lsn {restart_lsn:?} is not a number"))?;
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
        restart_lsn,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_controldata` of a primary that ran with every default of
    /// PostgreSQL 19 (max_locks_per_transaction 128) but max_connections 200.
    const CONTROLDATA: &str = "max_connections setting:              200\n\
                               max_worker_processes setting:         8\n\
                               max_wal_senders setting:              10\n\
                               max_prepared_xacts setting:           0\n\
                               max_locks_per_xact setting:           128\n";

    #[test]
    fn a_standby_is_raised_to_the_primarys_settings_but_never_to_its_own_default() {
        let none = BTreeMap::new();
        // On 19 and later 128 locks is the default: nothing to write (a
        // written value dropped at the promotion reads as pending a restart).
        assert_eq!(below_the_primarys_settings(&none, CONTROLDATA, Some(19)), [("max_connections", 100, 200)]);
        assert_eq!(below_the_primarys_settings(&none, CONTROLDATA, Some(20)), [("max_connections", 100, 200)]);
        // Before 19 the default is 64: a primary at 128 needs it written.
        assert_eq!(
            below_the_primarys_settings(&none, CONTROLDATA, Some(18)),
            [("max_connections", 100, 200), ("max_locks_per_transaction", 64, 128)]
        );
        let set = BTreeMap::from([("max_connections".to_string(), "300".to_string())]);
        assert_eq!(below_the_primarys_settings(&set, CONTROLDATA, Some(19)), []);
        assert_eq!(below_the_primarys_settings(&none, "garbage", Some(19)), []);
    }
}
