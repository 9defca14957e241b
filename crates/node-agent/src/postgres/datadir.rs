//! The data directory: `pg_controldata`, the timeline history, pg_rewind
//! (with its marker for an interrupted rewind), and moving a directory
//! aside or preparing an empty one.

use super::*;

impl Postgres {
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

    /// A setting as the stopped server would read it from all its files
    /// (`postgres -C`: `postgresql.conf`, its includes and
    /// `postgresql.auto.conf`).
    pub async fn setting_of_stopped(&self, name: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bins.path("postgres"));
        cmd.arg("-D").arg(&self.data_dir).arg("-C").arg(name);
        if self.config_file_needed() {
            cmd.arg("-c").arg(format!("config_file={}", self.managed_conf_path().display()));
        }
        Ok(self.run("postgres -C", &mut cmd).await?.trim_end_matches('\n').to_string())
    }

    /// Demoting a cluster to a standby cluster (Patroni's `demote-cluster`)
    /// with WAL archiving on: once the server stopped, its `archive_command`
    /// archives the WAL file that holds the shutdown checkpoint, which the
    /// archiver never sends (it is not full). The cluster this one will
    /// follow may be replaying that archive; promoted later, it then forks
    /// after the checkpoint and this server follows its new timeline from
    /// the archive with no rewind (there is no server to rewind from when
    /// it follows an archive only). Returns the file archived, `None` when
    /// archiving is off.
    pub async fn archive_shutdown_checkpoint_wal(&self) -> anyhow::Result<Option<String>> {
        let mode = self.setting_of_stopped("archive_mode").await?;
        let command = self.setting_of_stopped("archive_command").await?;
        if !matches!(mode.as_str(), "on" | "always") || command.trim().is_empty() {
            return Ok(None);
        }
        let control = self.controldata().await?;
        let file = control
            .get("Latest checkpoint's REDO WAL file")
            .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_hexdigit()))
            .cloned()
            .context("pg_controldata printed no REDO WAL file")?;
        let line = archive_command_line(&command, &format!("pg_wal/{file}"), &file);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&line).current_dir(&self.data_dir);
        tokio::time::timeout(ARCHIVE_TIMEOUT, self.run("archive_command", &mut cmd))
            .await
            .with_context(|| format!("archive_command ran longer than {ARCHIVE_TIMEOUT:?}"))??;
        Ok(Some(file))
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
    pub(super) fn rewind_conninfo(&self, source: &Upstream) -> String {
        let auth = &self.config.postgresql.authentication;
        let (user, rewind_service) = match &auth.rewind {
            Some(rewind) => (rewind, SERVICE_REWIND),
            None => (&auth.superuser, SERVICE_SUPERUSER),
        };
        format!(
            "host={} port={} user={} dbname=postgres connect_timeout=5{}",
            source.host,
            source.port,
            user.username,
            self.libpq_options(user, SslPassword::Service(rewind_service))
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
        let extra: Vec<String> = self.rewind_options().iter().map(pgwarden_config::ToolOption::to_arg).collect();
        cmd.args(&extra);
        // The target's configuration outside its data directory: pg_rewind
        // (15 and newer) must be told where it is for its own start-up.
        if self.config_file_needed() && self.major().is_some_and(|m| m >= 15) {
            cmd.arg(format!("--config-file={}", self.managed_conf_path().display()));
        }
        self.libpq_env(&mut cmd);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        // A standby killed in recovery is first stopped cleanly in recovery
        // (see `stop_cleanly_in_recovery`), never left to pg_rewind's
        // single-user crash recovery.
        if self.data_dir.join("standby.signal").exists() && self.cluster_state().await? == "in archive recovery" {
            self.stop_cleanly_in_recovery().await?;
        }
        info!(from = %source.member, dry_run, options = ?extra, "running pg_rewind");
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
    pub(super) async fn cluster_state(&self) -> anyhow::Result<String> {
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
    pub(super) async fn stop_cleanly_in_recovery(&self) -> anyhow::Result<()> {
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

/// pg_rewind's output says it had begun to change the target: it writes
/// only after it printed how much it must copy (`need to copy ... MB`).
pub(super) fn rewind_changed_target(output: &str) -> bool {
    output.contains("need to copy")
        || output.contains("creating backup label and updating control file")
        || output.contains("syncing target data directory")
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

/// How long the shutdown checkpoint's WAL file may take to archive.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// `archive_command` with its placeholders filled as PostgreSQL's archiver
/// fills them: `%p` the file's path (relative to the data directory, where
/// the command runs), `%f` its name, `%%` a percent sign; any other `%` is
/// left as it is.
pub(crate) fn archive_command_line(command: &str, path: &str, file: &str) -> String {
    let mut line = String::with_capacity(command.len() + path.len());
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('%', Some('p')) => {
                chars.next();
                line.push_str(path);
            }
            ('%', Some('f')) => {
                chars.next();
                line.push_str(file);
            }
            ('%', Some('%')) => {
                chars.next();
                line.push('%');
            }
            _ => line.push(c),
        }
    }
    line
}
