//! Bootstrap: the race for `initialize`, then building the cluster (initdb
//! or a custom bootstrap method, roles, the cluster keys, the leader key),
//! or a standby cluster's first member from its remote primary.

use super::*;
use crate::methods::CloneFor;

/// How long a custom bootstrap's restore may take to start (pg_ctl waits
/// until PostgreSQL accepts connections, which a recovery reaches only at
/// consistency): a day.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Agent {
    /// Races for `initialize` and builds the cluster (DESIGN: bootstrap).
    pub(super) async fn bootstrap(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let lease = self.keeper.lease.context("no lease yet")?;
        // A node that may not lead (watchdog required, none usable) must not
        // build the cluster either.
        lock_watchdog(&self.watchdog).arm(lease_ttl(&lease))?;
        // Bound to our lease while we bootstrap: if we die, the key goes away
        // and another member can try.
        if !self.etcd.create_if_absent(&self.keys.initialize(), String::new(), Some(lease.id)).await? {
            info!("another member won the bootstrap race");
            return Ok(());
        }
        info!("won the bootstrap race: initialising a new cluster");
        // A standby cluster may start from data already here: never removed.
        let had_data = self.pg.has_data();
        let result = self.build_cluster(dynamic, lease).await;
        if let Err(e) = &result {
            error!("bootstrap failed, cleaning up so another attempt can run: {e:#}");
            let _ = self.pg.stop(StopMode::Immediate).await;
            if !had_data {
                self.pg.remove_unfinished_data_dir();
            }
            self.sysid = None;
            let _ = self.etcd.delete_if_on_lease(&self.keys.initialize(), "", lease.id).await;
        }
        result
    }

    pub(super) async fn build_cluster(&mut self, dynamic: &DynamicConfig, lease: Lease) -> anyhow::Result<()> {
        if let Some(remote) = dynamic.standby_cluster.clone() {
            return self.build_standby_cluster(dynamic, lease, remote).await;
        }
        if self.pg.data_dir.exists() && std::fs::read_dir(&self.pg.data_dir)?.next().is_some() {
            bail!("{} is not empty: refusing to run initdb over it", self.pg.data_dir.display());
        }
        let method = self.config.bootstrap.method.clone();
        let start_as = match &method {
            None => {
                self.pg.initdb().await?;
                StartAs::Primary
            }
            Some(method) => {
                self.pg.run_bootstrap_method(method).await?;
                match (&method.recovery_conf, method.keep_existing_recovery_conf) {
                    (Some(settings), _) => StartAs::Restore { recovery: Some(settings.clone()) },
                    (None, true) => StartAs::Restore { recovery: None },
                    (None, false) => {
                        self.pg.drop_recovery_signals()?;
                        StartAs::Primary
                    }
                }
            }
        };
        self.pg.write_bootstrap_hba(dynamic)?;
        self.pg.write_pgpass(None)?;
        // Local connections only until we hold the leader key, and no
        // synchronous standby: no client can have written yet, and the
        // roles' commit must not wait for a standby that cannot exist
        // (in synchronous mode the tick left the placeholder here).
        self.pg.set_sync_names(None);
        self.pg.write_config(dynamic, &start_as, true)?;
        if method.is_some() {
            // A restore replays WAL until its end or target before it
            // answers as a primary: as long as the backup needs.
            self.pg.start_within(RESTORE_TIMEOUT).await?;
            self.await_end_of_recovery().await?;
        } else {
            self.pg.start().await?;
        }
        let mut conn = self.connect().await?;
        sql::create_roles(&mut conn, &self.config).await?;
        self.release(conn);
        if let Some(line) = &self.config.bootstrap.post_bootstrap {
            self.pg.run_post_bootstrap(line).await?;
        }
        let sysid = self.claim_new_cluster(dynamic, lease).await?;
        info!(system_identifier = %sysid, "cluster initialised; opening PostgreSQL to the network");
        // Open with what a leader without standbys runs: in synchronous
        // mode '' (or, strict, the placeholder) until its first sync step.
        self.pg.set_sync_names(self.sync_names(dynamic));
        self.pg.write_config(dynamic, &StartAs::Primary, false)?;
        self.pg.stop(StopMode::Fast).await?;
        self.pg.start().await?;
        self.await_local("answer as a primary", |l| l.sql.as_ref().is_some_and(|s| !s.in_recovery)).await?;
        Ok(())
    }

    /// The end of every bootstrap, with PostgreSQL up: the data directory's
    /// system identifier replaces the `initialize` placeholder (the cluster
    /// now exists whoever leads it), the `config` key is written, and, once
    /// the fencer beside us watches, this member takes the leader key.
    async fn claim_new_cluster(&mut self, dynamic: &DynamicConfig, lease: Lease) -> anyhow::Result<String> {
        let sysid = self.pg.system_identifier().await?;
        self.sysid = Some(sysid.clone());
        let written = self.etcd.put_if_value(&self.keys.initialize(), "", &sysid, None).await?;
        if !written {
            bail!("the initialize key changed while bootstrapping");
        }
        self.etcd.create_if_absent(&self.keys.config(), self.config.bootstrap.dcs_json.to_string(), None).await?;
        // The fencer beside us must be watching before we lead.
        let waited = Instant::now();
        while !self.fencer_ready() && waited.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.require_fencer()?;
        let mut election = self.election(dynamic);
        match election.acquire(&lease).await? {
            Acquired::Won { .. } => {}
            Acquired::Held(holder) => bail!("{} took the leader key during bootstrap", holder.member),
        }
        self.prove_leader(dynamic, lease).await;
        Ok(sysid)
    }

    /// A standby cluster's first member: a clone of the remote primary
    /// (`standby_cluster.create_replica_methods`, pg_basebackup by default),
    /// started as its standby, becomes the standby leader. No roles are
    /// made: it is read-only, and has the remote cluster's.
    async fn build_standby_cluster(
        &mut self,
        dynamic: &DynamicConfig,
        lease: Lease,
        remote: pgwarden_config::StandbyCluster,
    ) -> anyhow::Result<()> {
        let upstream = crate::postgres::remote_upstream(&remote);
        self.pg.write_pgpass(upstream.as_ref())?;
        if self.pg.has_data() {
            // A data directory already here (a standby of the remote, as
            // Patroni allows): used as it is, restarted as the standby leader.
            info!("bootstrapping a standby cluster from the data directory here");
            self.pg.stop(StopMode::Fast).await?;
        } else {
            self.pg.prepare_empty_data_dir()?;
            let methods = self.pg.replica_methods(CloneFor::StandbyCluster(&remote.create_replica_methods));
            info!(host = ?remote.host, port = remote.port, "bootstrapping a standby cluster from the remote primary");
            self.pg.create_replica(upstream.as_ref(), &methods, |_, _| {}).await?;
        }
        self.pg.write_config(dynamic, &StartAs::StandbyLeader { remote }, false)?;
        self.pg.start_within(RESTORE_TIMEOUT).await?;
        self.upstream = None;
        self.follows_remote = true;
        self.await_local("answer as a standby", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
        let sysid = self.claim_new_cluster(dynamic, lease).await?;
        info!(system_identifier = %sysid, "standby cluster initialised: this member is its standby leader");
        Ok(())
    }

    /// After a custom bootstrap's start: waits until PostgreSQL has replayed
    /// to the end of its recovery (or target) and promoted itself. A
    /// recovery paused at its target, or a postmaster that stops, fails the
    /// bootstrap with the reason.
    async fn await_end_of_recovery(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            let postmaster = pg_local::observe(&self.pg.data_dir).postmaster_pid;
            if postmaster == 0 || !pg_local::is_running(postmaster) {
                bail!(
                    "PostgreSQL stopped during the restore's recovery (see {}): a recovery_target_action of \
                     shutdown, or WAL the restore_command cannot find",
                    self.pg.log_file.display()
                );
            }
            let state = match self.connect().await {
                Ok(mut conn) => {
                    let row = sqlx::query_as::<_, (bool, bool, Option<String>)>(
                        "select pg_is_in_recovery(), pg_is_in_recovery() and pg_is_wal_replay_paused(), \
                         pg_last_wal_replay_lsn()::text",
                    )
                    .fetch_one(&mut conn)
                    .await;
                    self.release(conn);
                    row.ok()
                }
                Err(_) => None,
            };
            match state {
                Some((false, _, _)) => {
                    info!(took = ?started.elapsed(), "the restore's recovery ended: PostgreSQL runs as a primary");
                    return Ok(());
                }
                Some((true, true, lsn)) => bail!(
                    "the restore's recovery paused at {} (its target, with recovery_target_action pause, \
                     PostgreSQL's default): set recovery_target_action: promote in the bootstrap method's \
                     recovery_conf",
                    lsn.unwrap_or_default()
                ),
                _ if reported.elapsed() >= Duration::from_secs(10) => {
                    info!(replayed = ?state.and_then(|s| s.2), took = ?started.elapsed(), "waiting for the restore's recovery to end");
                    reported = Instant::now();
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
