//! Patroni's replica-creation methods (`postgresql.create_replica_methods`:
//! pg_basebackup, or a command such as a backup tool's restore, tried in
//! order) and custom bootstrap method (`bootstrap.method`: a restore, a
//! point-in-time recovery), run against the local data directory.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use anyhow::{Context as _, bail};
use pgwarden_config::{BootstrapMethod, MethodCommand, ReplicaMethod};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tracing::{info, warn};

use crate::postgres::{Postgres, Upstream};

/// Which replica-creation methods a clone tries ([`Postgres::replica_methods`]).
#[derive(Debug, Clone, Copy)]
pub enum CloneFor<'a> {
    /// A member joining its cluster: `postgresql.create_replica_methods`.
    Member,
    /// `reinit --from-leader`: pg_basebackup from the leader.
    LeaderOnly,
    /// The first member of a standby cluster, from the remote primary.
    StandbyCluster(&'a [String]),
}

/// Runs `line` through `sh` with `args` after it (as callbacks run), its
/// output going to the agent's log line by line; no timeout: a restore takes
/// as long as the backup is large. Killed if the agent drops it.
async fn run_logged(what: &str, line: &str, args: &[String], pgpass: &std::path::Path) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(format!("{line} \"$@\"")).arg("sh").args(args);
    cmd.env("PGPASSFILE", pgpass).env("PGSERVICEFILE", crate::postgres::service_file(pgpass));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("start {what} {line:?}"))?;
    let stdout = child.stdout.take().context("the command's stdout")?;
    let stderr = child.stderr.take().context("the command's stderr")?;
    let forward = |stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        let what = what.to_string();
        async move {
            let mut lines = BufReader::new(stream).lines();
            let mut last = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(method = %what, "{line}");
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            last
        }
    };
    let (status, _, last_err) = tokio::join!(child.wait(), forward(Box::new(stdout)), forward(Box::new(stderr)));
    let status = status.with_context(|| format!("wait for {what}"))?;
    if !status.success() {
        bail!(
            "{what} {line:?} failed ({status}){}",
            if last_err.is_empty() { String::new() } else { format!(": {last_err}") }
        );
    }
    Ok(())
}

impl Postgres {
    /// Empties the data directory (keeping the directory, which may be a
    /// mount point) after a method left something behind.
    fn empty_data_dir(&self) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else { return Ok(()) };
        for entry in entries {
            let path = entry?.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The connection string a replica method gets (`--connstring`): the
    /// member copied from, as the replication user, without a password
    /// (the pgpass file has it).
    fn method_connstring(&self, upstream: &Upstream) -> String {
        let replication = &self.config().postgresql.authentication.replication;
        format!(
            "dbname=postgres user={} host={} port={}{}",
            crate::postgres::conninfo_value(&replication.username),
            upstream.host,
            upstream.port,
            self.libpq_options(
                replication,
                crate::postgres::SslPassword::Service(crate::postgres::SERVICE_REPLICATION)
            )
        )
    }

    /// The methods a clone tries: `postgresql.create_replica_methods`; for
    /// `reinit --from-leader` pg_basebackup only; for a standby cluster's
    /// first member the ones `standby_cluster.create_replica_methods` names
    /// (each the local section of that name, else a command of that name).
    pub fn replica_methods(&self, which: CloneFor<'_>) -> Vec<ReplicaMethod> {
        let configured = &self.config().postgresql.create_replica_methods;
        match which {
            CloneFor::Member => configured.clone(),
            CloneFor::LeaderOnly => vec![ReplicaMethod::Basebackup],
            CloneFor::StandbyCluster([]) => vec![ReplicaMethod::Basebackup],
            CloneFor::StandbyCluster(names) => names
                .iter()
                .map(|name| match configured.iter().find(|m| m.name() == name) {
                    Some(method) => method.clone(),
                    None if name == "basebackup" => ReplicaMethod::Basebackup,
                    None => ReplicaMethod::Command(MethodCommand {
                        name: name.clone(),
                        command: name.clone(),
                        keep_data: false,
                        no_params: false,
                        no_leader: false,
                        options: Vec::new(),
                    }),
                })
                .collect(),
        }
    }

    /// Creates a replica's data directory (empty when called) with the first
    /// of `methods` that succeeds, from `upstream`; with no upstream only
    /// `no_leader` methods can run. Returns the method that made it.
    pub async fn create_replica(
        &self,
        upstream: Option<&Upstream>,
        methods: &[ReplicaMethod],
        mut on_progress: impl FnMut(u64, u64) + Send,
    ) -> anyhow::Result<String> {
        let mut failures = Vec::new();
        for method in methods {
            let name = method.name();
            let result = match (method, upstream) {
                (ReplicaMethod::Basebackup, Some(upstream)) => self.basebackup(upstream, &mut on_progress).await,
                (ReplicaMethod::Command(command), _) if upstream.is_some() || command.no_leader => {
                    self.run_replica_command(command, upstream).await
                }
                _ => {
                    failures.push(format!("{name}: needs a member to copy from"));
                    continue;
                }
            };
            let result = result.and_then(|()| {
                if self.has_data() {
                    std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("make {} private (0700)", self.data_dir.display()))
                } else {
                    bail!(
                        "it succeeded but left no PostgreSQL data directory (no PG_VERSION) in {}",
                        self.data_dir.display()
                    )
                }
            });
            match result {
                Ok(()) => {
                    info!(method = name, "replica created");
                    return Ok(name.to_string());
                }
                Err(e) => {
                    warn!(method = name, "replica creation failed, trying the next method: {e:#}");
                    failures.push(format!("{name}: {e:#}"));
                    let keep = matches!(method, ReplicaMethod::Command(c) if c.keep_data);
                    if !keep {
                        self.empty_data_dir()?;
                    }
                }
            }
        }
        bail!("no replica creation method succeeded ({})", failures.join("; "))
    }

    async fn run_replica_command(&self, method: &MethodCommand, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        // As Patroni: a command makes the data directory itself (a copy tool
        // may refuse one that exists); an empty one is removed first, unless
        // the method keeps what is there (a mount point stays: rmdir fails).
        if !method.keep_data {
            let _ = std::fs::remove_dir(&self.data_dir);
        }
        let connstring = upstream.map(|u| self.method_connstring(u)).unwrap_or_default();
        let args = method.arguments(&self.config().scope, &self.data_dir.display().to_string(), &connstring);
        info!(method = %method.name, command = %method.command, from = upstream.map_or("", |u| u.member.as_str()), "creating a replica");
        run_logged(&format!("replica method {}", method.name), &method.command, &args, &self.pgpass).await
    }

    /// Runs the custom bootstrap method's command into an empty data
    /// directory; it must leave a PostgreSQL data directory there.
    pub async fn run_bootstrap_method(&self, method: &BootstrapMethod) -> anyhow::Result<()> {
        // As Patroni: the data directory is the command's to make (a copy
        // tool may refuse one that exists); its parent is there for it.
        if let Some(parent) = self.data_dir.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let args = method.arguments(&self.config().scope, &self.data_dir.display().to_string());
        info!(method = %method.name, command = %method.command, "bootstrapping with a custom method");
        run_logged(&format!("bootstrap method {}", method.name), &method.command, &args, &self.pgpass).await?;
        if !self.has_data() {
            bail!(
                "bootstrap method {} succeeded but left no PostgreSQL data directory (no PG_VERSION) in {}",
                method.name,
                self.data_dir.display()
            );
        }
        // PostgreSQL starts only on a directory no one else can read.
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("make {} private (0700)", self.data_dir.display()))?;
        // As Patroni after a restore: a promote trigger left in the backup
        // must not end the recovery early.
        let _ = std::fs::remove_file(self.data_dir.join("promote"));
        Ok(())
    }

    /// Removes the recovery signal files a restore left (a custom bootstrap
    /// with neither `recovery_conf` nor `keep_existing_recovery_conf`: the
    /// restored directory starts as a primary after its crash recovery).
    pub fn drop_recovery_signals(&self) -> anyhow::Result<()> {
        for name in ["recovery.signal", "standby.signal"] {
            match std::fs::remove_file(self.data_dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("remove {name}"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `bootstrap.post_bootstrap`: run once the new cluster's first primary
    /// answers, given a connection string to it as the superuser (the
    /// password in a temporary 0600 pgpass file, never on the command line),
    /// with `synchronous_commit=local` as Patroni sets. A failure fails the
    /// bootstrap.
    pub async fn run_post_bootstrap(&self, line: &str) -> anyhow::Result<()> {
        let superuser = &self.config().postgresql.authentication.superuser;
        let host = match &self.local {
            pgwarden_config::hba::LocalConnection::Socket(dir) => dir.display().to_string(),
            pgwarden_config::hba::LocalConnection::Tcp(host) => host.clone(),
        };
        let connstring = format!(
            "dbname=postgres user={} host={} port={}",
            crate::postgres::conninfo_value(&superuser.username),
            crate::postgres::conninfo_value(&host),
            self.port
        );
        let pgpass = self.data_dir.with_extension("post-bootstrap.pgpass");
        let escape = crate::postgres::pgpass_escape;
        let lines = superuser
            .password
            .as_ref()
            .map(|p| format!("*:{}:*:{}:{}\n", self.port, escape(&superuser.username), escape(p.expose())))
            .unwrap_or_default();
        crate::postgres::write_private(&pgpass, &lines)?;
        info!(command = %line, "running post_bootstrap");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(format!("{line} \"$@\"")).arg("sh").arg(&connstring);
        cmd.env("PGPASSFILE", &pgpass)
            .env("PGOPTIONS", "-c synchronous_commit=local -c statement_timeout=0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = cmd.output().await.with_context(|| format!("start post_bootstrap {line:?}"));
        let _ = std::fs::remove_file(&pgpass);
        let output = output?;
        for text in [&output.stdout, &output.stderr] {
            for out in String::from_utf8_lossy(text).lines().filter(|l| !l.trim().is_empty()) {
                info!(method = "post_bootstrap", "{out}");
            }
        }
        if !output.status.success() {
            bail!(
                "post_bootstrap {line:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}
