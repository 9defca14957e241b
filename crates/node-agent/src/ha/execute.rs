//! The executors: one `ha_core::Action` carried out per tick (clone, start, promote, rejoin,
//! switchover; bootstrap in `bootstrap.rs`), each re-checking what it needs just before it acts.

use super::*;
use crate::methods::CloneFor;

/// How often a clone's progress reaches the member key.
const CLONE_PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Agent {
    /// Creates the replica's data directory from `upstream` (or, `None`,
    /// with a `no_leader` method), with the member key saying `creating
    /// replica` and how far pg_basebackup has come (rate, time left) every
    /// second meanwhile, for `pgwardenctl list` and `reinit --wait`.
    async fn clone_reporting_progress(&self, upstream: Option<&Upstream>, methods: CloneFor<'_>) -> anyhow::Result<()> {
        let started = Instant::now();
        let progress = std::sync::Mutex::new(dcs::CloneProgress::default());
        let lock = || progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let methods = self.pg.replica_methods(methods);
        let copy = self.pg.create_replica(upstream, &methods, |done, total| {
            *lock() = dcs::CloneProgress::measure(done, total, started.elapsed());
        });
        // Nothing runs on a data directory being copied, whatever the last
        // observation (from before a reinit's stop) said.
        let mut local = self.local.borrow().clone();
        local.sql = None;
        let report = async {
            loop {
                let current = *lock();
                match self.member_data(&local, Some(current)).map(|m| serde_json::to_string(&m)) {
                    Ok(Ok(json)) => {
                        if let Err(e) = self.put_member(&json).await {
                            warn!("failed to publish the clone's progress: {e:#}");
                        }
                    }
                    Ok(Err(e)) => warn!("failed to publish the clone's progress: {e}"),
                    Err(e) => warn!("failed to publish the clone's progress: {e:#}"),
                }
                tokio::time::sleep(CLONE_PROGRESS_EVERY).await;
            }
        };
        tokio::select! {
            copied = copy => copied.map(|_method| ()),
            () = report => unreachable!("the progress report loops until the copy ends"),
        }
    }

    /// Clones into the empty data directory; on success it is a replica's
    /// data directory from the first moment (never a former primary's to be
    /// rewound), on failure it is removed.
    async fn clone_into_empty(&mut self, upstream: Option<&Upstream>, methods: CloneFor<'_>) -> anyhow::Result<()> {
        self.pg.write_pgpass(upstream)?;
        self.pg.prepare_empty_data_dir()?;
        let copied = self.clone_reporting_progress(upstream, methods).await;
        // The next publish writes the member key afresh.
        self.publisher.last_json = None;
        if let Err(e) = copied {
            self.pg.remove_unfinished_data_dir();
            return Err(e);
        }
        std::fs::write(self.pg.data_dir.join("standby.signal"), "").context("write standby.signal")?;
        self.sysid = None;
        Ok(())
    }

    /// Runs one action. While a switchover or failover request is pending,
    /// the span carries its `request` (the `failover` key's revision, which
    /// the controller's workflow logs too): one request can be followed
    /// across the controller and every agent.
    #[tracing::instrument(name = "ha_action", skip_all, fields(action = ?action, request = tracing::field::Empty))]
    pub(super) async fn execute(
        &mut self,
        action: &Action,
        view: &ClusterView,
        dynamic: &DynamicConfig,
        obs: &Observed,
    ) -> anyhow::Result<NextTick> {
        if view.failover.is_some() {
            tracing::Span::current().record("request", view.failover_revision);
        }
        match action {
            Action::Bootstrap => self.bootstrap(dynamic).await.map(|()| NextTick::AtOnce),
            Action::Clone { source } => {
                // `reinit --from-leader`: the leader with pg_basebackup,
                // whatever the tags and methods say.
                let from_leader = std::mem::take(&mut self.clone_from_leader);
                let source = match (from_leader, &view.leader) {
                    (true, Some(leader)) => leader.name.as_str(),
                    _ => source.as_str(),
                };
                let upstream = self.upstream_of(view, source)?;
                let methods = if from_leader { CloneFor::LeaderOnly } else { CloneFor::Member };
                self.clone_into_empty(Some(&upstream), methods).await.map(|()| NextTick::AtOnce)
            }
            Action::CloneWithoutLeader => {
                self.clone_into_empty(None, CloneFor::Member).await.map(|()| NextTick::AtOnce)
            }
            Action::StartStandbyLeader | Action::FollowRemote | Action::RejoinRemote => {
                let remote =
                    dynamic.standby_cluster.clone().context("the config key no longer sets standby_cluster")?;
                let upstream = crate::postgres::remote_upstream(&remote);
                self.pg.write_pgpass(upstream.as_ref())?;
                if matches!(action, Action::RejoinRemote) {
                    self.rewind_onto_remote(upstream.as_ref(), dynamic).await?;
                }
                self.pg.write_config(dynamic, &StartAs::StandbyLeader { remote }, false)?;
                let start = !matches!(action, Action::FollowRemote);
                if start {
                    self.pg.start().await?;
                } else {
                    self.pg.reload().await?;
                }
                self.upstream = None;
                self.follows_remote = true;
                match &upstream {
                    Some(u) => info!(host = %u.host, port = u.port, "standby leader: following the remote primary"),
                    None => info!("standby leader: replaying the remote cluster's archive"),
                }
                if start {
                    self.await_local("answer as a standby", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
                }
                Ok(if start { NextTick::AtOnce } else { NextTick::AfterLoopWait })
            }
            Action::StartReplica { upstream } => {
                let upstream = match upstream {
                    Some(member) => Some(self.upstream_of(view, member)?),
                    None => None,
                };
                self.pg.write_pgpass(upstream.as_ref())?;
                self.pg.set_cascading(cascades(view, upstream.as_ref()));
                self.pg.write_config(dynamic, &StartAs::Replica { upstream: upstream.clone() }, false)?;
                self.pg.start().await?;
                self.upstream = upstream.map(|u| u.member);
                self.follows_remote = false;
                self.await_local("answer as a replica", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
                Ok(NextTick::AtOnce)
            }
            Action::Follow { upstream } => {
                let target = match upstream {
                    Some(member) => Some(self.upstream_of(view, member)?),
                    None => None,
                };
                // The new primary_conninfo names the pgpass file: it must
                // hold the password before the WAL receiver reconnects (an
                // adopted replica may never have had it written).
                self.pg.write_pgpass(target.as_ref())?;
                self.pg.set_cascading(cascades(view, target.as_ref()));
                self.pg.write_config(dynamic, &StartAs::Replica { upstream: target }, false)?;
                self.pg.reload().await?;
                match upstream {
                    Some(upstream) => info!(upstream, "following"),
                    None => info!("not streaming (nostream)"),
                }
                self.upstream = upstream.clone();
                self.follows_remote = false;
                Ok(NextTick::AfterLoopWait)
            }
            Action::AcquireLeader => {
                // Re-binding its own key under a running primary needs no
                // fencer: it already leads, and the proven deadline lets this
                // agent fence by itself (without it, nobody would).
                let rebind =
                    matches!(obs.pg, RunningAs::Primary { .. }) && obs.leader.as_deref() == Some(obs.me.as_str());
                let taken = self.acquire_leader(dynamic, rebind).await?;
                Ok(if taken { NextTick::AtOnce } else { NextTick::AfterLoopWait })
            }
            Action::StartPrimary => {
                // Restart in place, but never past primary_start_timeout:
                // after that the key goes to a replica.
                let budget = Duration::from_secs(u64::from(dynamic.primary_start_timeout));
                let spent = Duration::from_millis(
                    self.primary_down_since_ms.map_or(0, |since| self.now_ms().saturating_sub(since)),
                );
                self.pg.write_config(dynamic, &StartAs::Primary, false)?;
                if self.leader_deadline().is_none() {
                    bail!("start as primary: the leader key is no longer proven ours (its deadline passed)");
                }
                if let Err(e) = self.pg.start_within(budget.saturating_sub(spent).max(Duration::from_secs(1))).await {
                    // Not merely slow: no postmaster runs (it exited, e.g. on
                    // a setting it refuses). Patroni then gives the key up at
                    // once rather than wait for primary_start_timeout.
                    if pg_local::observe(&self.pg.data_dir).state == pg_local::PostmasterState::Stopped {
                        self.primary_start_failures += 1;
                    }
                    return Err(e);
                }
                self.await_local("answer", |l| l.sql.is_some()).await?;
                info!(from = "stopped", to = "primary", "role change: restarted in place");
                Ok(NextTick::AtOnce)
            }
            Action::ReleaseLeader => {
                self.release_leader(dynamic).await?;
                // A primary whose PostgreSQL did not come back gives the key
                // up: its callback hears `demoted`, as Patroni's does.
                if obs.pg == RunningAs::Stopped && self.last_role.is_some_and(Role::leads) {
                    self.last_role = Some(Role::Demoted);
                    self.callbacks.fire(Event::RoleChange, Role::Demoted);
                }
                Ok(NextTick::AtOnce)
            }
            Action::ClearFailover => {
                if self.etcd.delete_if_revision(&self.keys.failover(), view.failover_revision).await? {
                    info!("cleared the switchover request");
                }
                Ok(NextTick::AtOnce)
            }
            Action::Switchover { candidate } => {
                self.switchover(view, dynamic, obs, candidate.clone()).await.map(|()| NextTick::AtOnce)
            }
            Action::Rejoin { leader } => self.rejoin(view, dynamic, leader).await.map(|()| NextTick::AtOnce),
            Action::Promote => {
                if let Err(e) = self.callbacks.pre_promote().await {
                    error!("pre_promote vetoed the promotion: {e:#}; giving the leader key up");
                    self.checkpoint_pending = false;
                    self.release_leader(dynamic).await?;
                    bail!("pre_promote vetoed the promotion: {e:#}");
                }
                self.checkpoint_pending = true;
                let local = self.local.borrow().clone();
                self.publish_member(&local).await?;
                // pre_promote and the member key took time (the agent may
                // even have been frozen): promote only while the key is
                // still proven ours, never on the tick's old view.
                if self.leader_deadline().is_none() {
                    self.checkpoint_pending = false;
                    bail!("promote: the leader key is no longer proven ours (its deadline passed); not promoting");
                }
                // Synchronous mode: the sync key names this leader with no
                // standby before PostgreSQL may acknowledge anything; a stale
                // key could let a standby that never confirmed our commits
                // take over (finding 8 of the safety review).
                // Out of synchronous mode too: a key another leader left
                // would count the moment the mode is turned on.
                let stale = view.sync.as_ref().is_some_and(|k| k.leader.as_deref() != Some(self.config.name.as_str()));
                if stale || (dynamic.synchronous_mode != pgwarden_config::SyncMode::Off && view.sync.is_none()) {
                    self.reset_sync_key(view).await.inspect_err(|_| self.checkpoint_pending = false)?;
                }
                // The promotion is recorded before it happens, at the WAL
                // position it will switch at (corrected from the timeline
                // history file once promoted): if this node dies right after,
                // no former primary resumes and no replica races on the
                // old timeline (finding 3 of the safety review).
                // The position now, not the observer's last look: WAL the old
                // primary sent last (its shutdown checkpoint) may have arrived
                // since.
                // The timeline is the observer's (it keeps the WAL
                // receiver's while the receiver is down).
                let mut conn = self.connect().await?;
                let fresh = sql::status(&mut conn).await.ok().map(|sql| sql.xlog_location);
                self.release(conn);
                let position = self.local.borrow().sql.as_ref().map(|sql| (sql.timeline, sql.xlog_location));
                let (timeline, lsn) = position.context("promote: PostgreSQL does not answer")?;
                let lsn = lsn.max(fresh.unwrap_or(0));
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                if let Err(e) = self.append_history(view, (timeline, lsn, PROMOTING.into(), now)).await {
                    self.checkpoint_pending = false;
                    bail!("promote: record the promotion in the history key first: {e:#}");
                }
                self.pg.promote().await?;
                self.upstream = None;
                self.follows_remote = false;
                self.await_local("answer as a primary", |l| l.sql.as_ref().is_some_and(|s| !s.in_recovery)).await?;
                info!(from = "replica", to = "primary", "role change: promoted");
                // The followers' slots first, so they can stream at once.
                if dynamic.use_slots
                    && let Err(e) = self.manage_slots(view, dynamic).await
                {
                    warn!("failed to create the replication slots: {e:#}");
                }
                let mut conn = self.connect().await?;
                sql::checkpoint(&mut conn).await?;
                let entry = sql::latest_history_entry(&mut conn).await;
                self.release(conn);
                self.checkpoint_pending = false;
                let written = (self.pg.written_parameters(), self.pg.written_auth_files());
                self.pg.write_config(dynamic, &StartAs::Primary, false)?;
                // Role-based settings (`parameters_primary`, `pg_hba_primary`)
                // take effect now, as Patroni applies them after a promotion.
                if written != (self.pg.written_parameters(), self.pg.written_auth_files()) {
                    info!("promoted: the primary's role-based settings differ from the replica's: reloading");
                    self.pg.reload().await?;
                }
                match entry {
                    Ok(Some(entry)) => {
                        if let Err(e) = self.append_history(view, entry).await {
                            warn!("failed to write the history key: {e:#}");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!("failed to read the timeline history: {e:#}"),
                }
                Ok(NextTick::AtOnce)
            }
            Action::WithdrawPromotion { timeline } => {
                let mut history = view.history.clone();
                history.retain(|h| h.timeline < *timeline);
                let key = self.keys.history();
                if self
                    .etcd
                    .put_if_revision(&key, serde_json::to_string(&history)?, view.history_revision)
                    .await?
                    .is_some()
                {
                    warn!(timeline, "withdrew the promotion this member recorded and never made");
                }
                Ok(NextTick::AtOnce)
            }
            Action::Demote => {
                let replica = matches!(obs.pg, RunningAs::Replica { .. });
                // The leader of a cluster just made a standby cluster holds
                // its key: a clean stop, so that it can follow the remote.
                let demoted_cluster = obs.holds_leader && obs.standby_cluster;
                if replica || demoted_cluster {
                    self.pg.stop(StopMode::Fast).await?;
                } else {
                    self.pg.fence().await?;
                }
                // Gone, not only silent: a postmaster still in crash recovery
                // answers no query either.
                self.await_local("stopped", |l| {
                    l.sql.is_none()
                        && matches!(
                            l.postmaster.state,
                            pg_local::PostmasterState::Stopped | pg_local::PostmasterState::Uninitialized
                        )
                })
                .await?;
                // As Patroni's demote-cluster: the WAL file holding the
                // shutdown checkpoint goes to the archive, so that a remote
                // cluster replaying that archive, promoted later, forks
                // after it and this one follows with no rewind.
                if demoted_cluster && !replica {
                    match self.pg.archive_shutdown_checkpoint_wal().await {
                        Ok(Some(file)) => info!(file, "archived the WAL file with the shutdown checkpoint"),
                        Ok(None) => info!("not archiving the WAL file with the shutdown checkpoint: archiving is off"),
                        Err(e) => error!("failed to archive the WAL file with the shutdown checkpoint: {e:#}"),
                    }
                }
                if replica {
                    info!(from = "replica", to = "stopped", "role change: stopped to rewind");
                } else if obs.data.as_ref().is_some_and(|data| !data.was_primary) {
                    info!(from = "starting standby", to = "stopped", "role change: stopped to rewind");
                } else {
                    info!(from = "primary", to = "stopped", "role change: fenced");
                }
                Ok(NextTick::AtOnce)
            }
        }
    }

    /// Deletes the `failover` key of a switchover given up, iff it is still
    /// at `revision`; a request written since is left for the next tick.
    async fn drop_request(&self, revision: i64) {
        match self.etcd.delete_if_revision(&self.keys.failover(), revision).await {
            Ok(true) => {}
            Ok(false) => info!("the switchover request changed meanwhile: left in place"),
            Err(e) => warn!("failed to drop the switchover request: {}", dcs::describe_error(&e)),
        }
    }

    /// The planned hand-over (DESIGN "Who may touch what"): checkpoint, clean
    /// shutdown, wait until the candidate has received the shutdown
    /// checkpoint, release the key. If the candidate never gets it, start
    /// again as primary and drop the request.
    pub(super) async fn switchover(
        &mut self,
        view: &ClusterView,
        dynamic: &DynamicConfig,
        obs: &Observed,
        candidate: Option<String>,
    ) -> anyhow::Result<()> {
        // The request's revision as this switchover last saw it: it is
        // dropped on failure only if nobody changed it since (an operator's
        // cancel and new request stay).
        let mut request_revision = view.failover_revision;
        let candidate = match candidate {
            Some(candidate) => candidate,
            None => {
                // The best eligible replica, named in the request so that the
                // others (and this node) defer to it.
                let best = ha_core::switchover_candidate(obs).context("no candidate for the switchover")?;
                let key = self.keys.failover();
                let value = serde_json::to_string(&dcs::Failover {
                    leader: Some(self.config.name.clone()),
                    member: Some(best.clone()),
                    scheduled_at: None,
                })?;
                let Some(written) = self.etcd.put_if_revision(&key, value, view.failover_revision).await? else {
                    bail!("the switchover request changed while choosing a candidate");
                };
                request_revision = written;
                best
            }
        };
        let grpc = view
            .member(&candidate)
            .and_then(|m| m.data.grpc_url.clone())
            .with_context(|| format!("candidate {candidate} advertises no gRPC address"))?;
        let wait = Duration::from_secs(u64::from(dynamic.retry_timeout).max(5));
        // A candidate whose WAL receiver is not connected (it reconnects a
        // few seconds after its upstream restarted, say) would miss the
        // shutdown checkpoint: wait for it to stream before stopping.
        let nostream = view.member(&candidate).is_some_and(|m| m.data.known_tags().nostream);
        if !nostream && !candidate_until(&grpc, wait, |status| status.replication_state == "streaming").await {
            warn!(candidate, "switchover: the candidate does not stream from its upstream; staying primary");
            self.drop_request(request_revision).await;
            return Ok(());
        }
        self.callbacks.before_stop(Role::Primary).await;
        info!(candidate, "switchover: checkpoint, then a clean shutdown");
        let mut conn = self.connect().await?;
        sql::checkpoint(&mut conn).await?;
        self.release(conn);
        self.pg.stop(StopMode::Fast).await?;
        self.await_local("stopped", |l| l.sql.is_none()).await?;
        let checkpoint = self.pg.latest_checkpoint().await?;
        // What it received or replayed, not `position()`: a member that is
        // not a replica reports its own WAL there, which proves nothing.
        let received =
            candidate_until(&grpc, wait, |status| status.receive_lsn.max(status.replay_lsn) > checkpoint).await;
        if !received {
            warn!(candidate, "switchover: the candidate did not receive the shutdown checkpoint; staying primary");
            self.drop_request(request_revision).await;
            // Started again here: in a pause nothing else would (the key is
            // still this agent's, the data directory a clean primary's).
            self.pg.start().await?;
            info!(candidate, "switchover abandoned: PostgreSQL running as primary again");
            return Ok(());
        }
        info!(candidate, checkpoint = %ha_core::Lsn(checkpoint), "switchover: the candidate has the shutdown checkpoint");
        self.release_leader(dynamic).await?;
        info!(from = "primary", to = "stopped", candidate, "role change: switched over");
        Ok(())
    }

    /// A data directory on an older timeline joins the leader: pg_rewind
    /// (or, where the config allows, a re-clone with the old directory moved
    /// aside), then start as its replica (DESIGN invariant 5).
    pub(super) async fn rejoin(
        &mut self,
        view: &ClusterView,
        dynamic: &DynamicConfig,
        leader: &str,
    ) -> anyhow::Result<()> {
        let upstream = self.upstream_of(view, leader)?;
        self.pg.write_pgpass(Some(&upstream))?;
        let use_rewind = self.config.postgresql.use_pg_rewind.unwrap_or(dynamic.use_pg_rewind);
        let outcome = self.pg.rewind(&upstream, !use_rewind).await;
        match outcome {
            Ok(false) => info!(leader, "no divergence: following"),
            Ok(true) if use_rewind => info!(leader, "rewound onto the leader's timeline"),
            Ok(true) if self.config.postgresql.remove_data_directory_on_diverged_timelines => {
                self.pg.move_aside("diverged")?;
                self.sysid = None;
                return Ok(());
            }
            Ok(true) => bail!(
                "the data directory diverged from {leader}'s timeline and use_pg_rewind is off: set \
                 postgresql.use_pg_rewind (or remove_data_directory_on_diverged_timelines to re-clone)"
            ),
            Err(e) if self.config.postgresql.remove_data_directory_on_rewind_failure => {
                warn!("pg_rewind failed, re-cloning as configured: {e:#}");
                self.pg.move_aside("rewind-failed")?;
                self.sysid = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.pg.set_cascading(false);
        self.pg.write_config(dynamic, &StartAs::Replica { upstream: Some(upstream.clone()) }, false)?;
        self.pg.start().await?;
        self.upstream = Some(upstream.member);
        self.follows_remote = false;
        self.await_local("answer as a replica", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
        Ok(())
    }

    /// A former primary's data directory (its cluster was just demoted to a
    /// standby cluster) onto the remote primary's timeline: pg_rewind where
    /// it diverged, as a rejoin does onto a leader of its own cluster.
    async fn rewind_onto_remote(&mut self, upstream: Option<&Upstream>, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        // Archive recovery only: nothing to compare with, as in Patroni it
        // starts as the standby leader (never writable); had it diverged,
        // PostgreSQL refuses the archive's timeline and says so in its log.
        let Some(upstream) = upstream else {
            warn!(
                "a former primary joins a standby cluster that replays the archive only (no standby_cluster.host): \
                 whether it diverged cannot be checked; if PostgreSQL reports a timeline that is not a child of \
                 its own, reinitialize this member"
            );
            return Ok(());
        };
        let use_rewind = self.config.postgresql.use_pg_rewind.unwrap_or(dynamic.use_pg_rewind);
        let postgresql = &self.config.postgresql;
        // As a rejoin onto a leader of its own cluster: with the settings
        // that allow it, a data directory pg_rewind cannot fix is moved
        // aside and copied afresh from the remote primary.
        let aside = match self.pg.rewind(upstream, !use_rewind).await {
            Ok(false) => None,
            Ok(true) if use_rewind => {
                info!("rewound onto the remote primary's timeline");
                None
            }
            Ok(true) if postgresql.remove_data_directory_on_diverged_timelines => Some("diverged"),
            Ok(true) => bail!(
                "this data directory diverged from the remote primary's timeline and use_pg_rewind is off: set \
                 postgresql.use_pg_rewind (or remove_data_directory_on_diverged_timelines), or reinitialize this \
                 member"
            ),
            Err(e) if postgresql.remove_data_directory_on_rewind_failure => {
                warn!("pg_rewind onto the remote primary failed, copying it afresh as configured: {e:#}");
                Some("rewind-failed")
            }
            Err(e) => return Err(e),
        };
        let Some(why) = aside else {
            info!("no divergence from the remote primary left: following it");
            return Ok(());
        };
        let remote = dynamic.standby_cluster.clone().context("the config key no longer sets standby_cluster")?;
        let moved = self.pg.move_aside(why)?;
        self.sysid = None;
        info!(old = %moved.display(), "copying the remote primary afresh");
        self.pg.prepare_empty_data_dir()?;
        let methods = self.pg.replica_methods(CloneFor::StandbyCluster(&remote.create_replica_methods));
        self.pg.create_replica(Some(upstream), &methods, |_, _| {}).await.map(|_| ())
    }

    /// Waits until the observer reports what an action just did, so that the
    /// next tick does not act on an observation from before it.
    pub(super) async fn await_local(
        &mut self,
        what: &str,
        done: impl Fn(&LocalObservation) -> bool,
    ) -> anyhow::Result<()> {
        let timeout = self.pg.pg_ctl_timeout();
        let mut rx = self.local.clone();
        let wait = async {
            loop {
                if done(&rx.borrow_and_update()) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    bail!("the observer stopped");
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .with_context(|| format!("see PostgreSQL {what} within {timeout:?}"))?
    }

    pub(super) fn upstream_of(&self, view: &ClusterView, member: &str) -> anyhow::Result<Upstream> {
        let entry = view
            .member(member)
            .with_context(|| format!("find member {member} to copy or stream from: it has no key in etcd yet"))?;
        let (host, port) = entry
            .data
            .host_port()
            .with_context(|| format!("find member {member}'s PostgreSQL: it advertises no conn_url"))?;
        Ok(Upstream { member: member.to_string(), host, port })
    }
}

/// Polls the agent at `grpc` until its status satisfies `done` (true) or
/// `wait` runs out (false).
async fn candidate_until(grpc: &str, wait: Duration, done: impl Fn(&ha_proto::v1::NodeStatus) -> bool) -> bool {
    tokio::time::timeout(wait, async {
        loop {
            if let Ok(channel) = pgwarden_runtime::grpc::connect(grpc, Duration::from_secs(1)).await
                && let Ok(status) = ha_proto::v1::node_agent_client::NodeAgentClient::new(channel)
                    .get_status(ha_proto::v1::GetStatusRequest::default())
                    .await
                && done(&status.into_inner())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// Whether `upstream` is another replica rather than the leader `view` names
/// (`replicatefrom`): PostgreSQL's slot synchronisation cannot serve it.
fn cascades(view: &ClusterView, upstream: Option<&Upstream>) -> bool {
    upstream.is_some_and(|u| view.leader.as_ref().is_some_and(|leader| leader.name != u.member))
}
