//! Operator commands from the gRPC API (restart, reinitialize, reload, parameter checks), carried
//! out between ticks, and restarts scheduled for later.

use super::*;

impl Agent {
    /// One request from the gRPC API (or SIGHUP), between ticks.
    pub(super) async fn command(
        &mut self,
        command: crate::grpc::Command,
    ) -> Result<crate::grpc::Outcome, tonic::Status> {
        use crate::grpc::{Command, Outcome};
        use ha_proto::v1::ActionReply;
        use tonic::Status;
        let failed = |e: anyhow::Error| Status::unavailable(format!("{e:#}"));
        let reply = |done: bool, message: String| Ok(Outcome::Action(ActionReply { done, message }));
        match command {
            Command::CancelRestart => match self.scheduled_restart.take() {
                Some(_) => {
                    let local = self.local.borrow().clone();
                    let _ = self.publish_member(&local).await;
                    reply(true, "scheduled restart deleted".into())
                }
                None => Err(Status::not_found("no restarts are scheduled")),
            },
            Command::Restart(request) if !request.schedule.is_empty() => {
                let schedule = &request.schedule;
                let at = time::OffsetDateTime::parse(schedule, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        Status::invalid_argument(format!(
                            "schedule {schedule:?}: expected an ISO 8601 time with a time zone"
                        ))
                    })?;
                if at <= time::OffsetDateTime::now_utc() {
                    return Err(Status::invalid_argument(format!("schedule {schedule} is in the past")));
                }
                if self.scheduled_restart.is_some() {
                    return Err(Status::already_exists("Another restart is already scheduled"));
                }
                let reply_text = format!("Restart scheduled at {schedule}");
                self.scheduled_restart = Some(ScheduledRestart { at, request });
                let local = self.local.borrow().clone();
                let _ = self.publish_member(&local).await;
                reply(true, reply_text)
            }
            Command::Restart(request) => {
                let ha_proto::v1::RestartRequest { only_if_pending, role, below_version, timeout_seconds, .. } =
                    request;
                let local = self.local.borrow().clone();
                let stopped = matches!(
                    local.postmaster.state,
                    pg_local::PostmasterState::Stopped | pg_local::PostmasterState::Uninitialized
                );
                if local.sql.is_none() && stopped {
                    return self.start_on_request(&role, only_if_pending).await;
                }
                // A postmaster that runs but does not answer (starting,
                // stuck) is restarted too, as Patroni would; its role is then
                // the leader key's, its version and pending flag unknown.
                let leading = self.leader_deadline().is_some();
                // Restarted, a former primary's directory opens writable:
                // not without the key (a second writer).
                if local.sql.is_none() && !leading && self.pg.was_primary() {
                    return Err(Status::failed_precondition(
                        "PostgreSQL does not answer, its data directory was last a primary and this member does not \
                         hold the leader key: restarting it would open a second writable database",
                    ));
                }
                let mine = match &local.sql {
                    Some(sql) if sql.in_recovery => Role::Replica,
                    Some(_) => Role::Primary,
                    None if leading => Role::Primary,
                    None => Role::Replica,
                };
                if !role.is_empty() && role != mine.as_str() {
                    return reply(false, format!("skipped: {} is a {mine}", self.config.name));
                }
                if only_if_pending && !local.sql.as_ref().is_some_and(|sql| sql.pending_restart) {
                    return reply(false, format!("skipped: {} has no restart pending", self.config.name));
                }
                let running = local.sql.as_ref().map_or(0, |sql| u32::try_from(sql.server_version).unwrap_or(0));
                if below_version > 0 && running > 0 && running >= below_version {
                    return reply(
                        false,
                        format!(
                            "skipped: {} runs PostgreSQL {}, not below {}",
                            self.config.name,
                            ha_core::format_postgres_version(running),
                            ha_core::format_postgres_version(below_version)
                        ),
                    );
                }
                let timeout = (timeout_seconds > 0).then(|| Duration::from_secs(u64::from(timeout_seconds)));
                // As Patroni's set_start_timeout: on the leader the restart's
                // timeout is also how long the HA loop waits for PostgreSQL
                // back as primary, counted from now, before it hands over.
                if let Some(timeout) = timeout
                    && leading
                {
                    self.start_timeout_override_ms = Some(timeout.as_millis() as u64);
                    self.primary_down_since_ms = Some(self.now_ms());
                }
                let started = Instant::now();
                self.callbacks.before_stop(mine).await;
                if let Err(e) = self.pg.restart(timeout).await {
                    return match timeout {
                        Some(timeout) => reply(
                            false,
                            format!("postgres is still starting: not back within the timeout of {timeout:?} ({e:#})"),
                        ),
                        None => Err(failed(e)),
                    };
                }
                self.await_local("answer after the restart", |l| l.sql.is_some()).await.map_err(failed)?;
                self.callbacks.fire(Event::Restart, mine);
                info!(role = %mine, took = ?started.elapsed(), "restarted PostgreSQL on request");
                reply(true, format!("restarted {} ({mine}) in {} ms", self.config.name, started.elapsed().as_millis()))
            }
            Command::Reinitialize { from_leader } => {
                if self.leader_deadline().is_some() {
                    return Err(Status::failed_precondition("I am the leader, can not reinitialize"));
                }
                let view = dcs::read_cluster(&self.etcd, &self.keys)
                    .await
                    .map_err(|e| Status::unavailable(dcs::describe_error(&e)))?;
                if view.leader.is_none() {
                    return Err(Status::failed_precondition("Cluster has no leader, can not reinitialize"));
                }
                self.pg.stop(StopMode::Immediate).await.map_err(failed)?;
                self.await_local("stopped", |l| l.sql.is_none()).await.map_err(failed)?;
                let aside = self.pg.move_aside("reinit").map_err(failed)?;
                self.upstream = None;
                self.follows_remote = false;
                self.clone_from_leader = from_leader;
                self.reinit_requested = true;
                self.wake.wake.notify_one();
                reply(true, format!("reinitialize started: the old data directory is kept at {}", aside.display()))
            }
            Command::Reload => {
                let loaded = pgwarden_config::load(self.config_path.as_deref(), pgwarden_config::Purpose::Agent)
                    .map_err(|e| {
                        Status::invalid_argument(format!("the config file is not valid; nothing changed: {e:#}"))
                    })?;
                pgwarden_runtime::log_config_problems(&loaded.warnings);
                let new = loaded.config;
                let fixed =
                    |c: &Config| (c.name.clone(), c.scope.clone(), c.postgresql.data_dir.clone(), c.namespace.clone());
                if fixed(&new) != fixed(&self.config) {
                    return Err(Status::failed_precondition(
                        "name, scope, namespace or data_dir changed: restart pgwarden-agent to apply that",
                    ));
                }
                self.config = new.clone();
                self.callbacks = crate::callbacks::Callbacks::new(&new);
                self.pg.set_config(new);
                let view = dcs::read_cluster(&self.etcd, &self.keys).await.ok();
                let dynamic = self.dynamic(view.as_ref());
                self.rewrite_running_config(view.as_ref(), &dynamic).await.map_err(failed)?;
                info!(origin = %loaded.origin, "config reloaded");
                if let Some(role) = self.seen_running {
                    self.callbacks.fire(Event::Reload, role);
                }
                reply(true, format!("reloaded the config of {}", self.config.name))
            }
        }
    }

    /// `POST /restart` of a stopped PostgreSQL starts it, as Patroni does (in
    /// pause the HA loop would not): as the primary on the leader, as a
    /// replica of the leader elsewhere. A former primary's data directory
    /// that does not hold the leader key is refused: it would open a second
    /// writable database.
    pub(super) async fn start_on_request(
        &mut self,
        role: &str,
        only_if_pending: bool,
    ) -> Result<crate::grpc::Outcome, tonic::Status> {
        use tonic::Status;
        let failed = |e: anyhow::Error| Status::unavailable(format!("{e:#}"));
        let reply =
            |done: bool, message: String| Ok(crate::grpc::Outcome::Action(ha_proto::v1::ActionReply { done, message }));
        if only_if_pending {
            return reply(
                false,
                format!("skipped: PostgreSQL is not running on {}, so no restart is pending", self.config.name),
            );
        }
        let view = dcs::read_cluster(&self.etcd, &self.keys)
            .await
            .map_err(|e| Status::unavailable(dcs::describe_error(&e)))?;
        let dynamic = self.dynamic(Some(&view));
        let local = self.local.borrow().clone();
        let obs = self.observed(Some(&view), &local).await;
        if obs.pg != RunningAs::Stopped {
            return Err(Status::failed_precondition("PostgreSQL is starting or stopping here: try again in a moment"));
        }
        let Some(data) = obs.data.clone() else {
            return Err(Status::failed_precondition("PostgreSQL has no data directory here: nothing to start"));
        };
        if self.pg.rewind_interrupted() {
            return Err(Status::failed_precondition(
                "a pg_rewind of this data directory stopped midway: no start can trust it; reinitialize it \
                 (outside a pause the agent moves it aside and clones by itself)",
            ));
        }
        let (action, starts_as) = if obs.holds_leader && obs.standby_cluster {
            (Action::StartStandbyLeader, "standby_leader")
        } else if obs.holds_leader && data.was_primary {
            (Action::StartPrimary, "primary")
        } else if data.was_primary {
            return Err(Status::failed_precondition(
                "this data directory was last a primary and this member does not hold the leader key: starting it \
                 would open a second writable database; reinitialize it (or resume, and the HA loop rejoins it)",
            ));
        } else {
            (
                Action::StartReplica {
                    upstream: view.leader.as_ref().and_then(|l| ha_core::stream_source(&obs, &l.name)),
                },
                "replica",
            )
        };
        if !role.is_empty() && role != starts_as {
            return reply(false, format!("skipped: {} would start as a {starts_as}", self.config.name));
        }
        let started = Instant::now();
        self.execute(&action, &view, &dynamic, &obs).await.map_err(failed)?;
        self.await_local("answer after the start", |l| l.sql.is_some()).await.map_err(failed)?;
        info!(role = starts_as, took = ?started.elapsed(), "started PostgreSQL on a restart request");
        reply(true, format!("started {} ({starts_as}) in {} ms", self.config.name, started.elapsed().as_millis()))
    }

    /// Writes the config files for the role PostgreSQL runs in now and
    /// reloads it (parameters, pg_hba); nothing when it does not run.
    /// The role whose role-based settings the running PostgreSQL should
    /// have, as `rewrite_running_config` writes them (`None`: not running).
    pub(super) fn running_role(&self, dynamic: &DynamicConfig) -> Option<pgwarden_config::PgRole> {
        let local = self.local.borrow();
        let sql = local.sql.as_ref()?;
        Some(if !sql.in_recovery {
            pgwarden_config::PgRole::Primary
        } else if dynamic.standby_cluster.is_some() && self.follows_remote {
            pgwarden_config::PgRole::StandbyLeader
        } else {
            pgwarden_config::PgRole::Replica
        })
    }

    pub(super) async fn rewrite_running_config(
        &mut self,
        view: Option<&ClusterView>,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<()> {
        let local = self.local.borrow().clone();
        let Some(sql) = local.sql else { return Ok(()) };
        let start_as = if !sql.in_recovery {
            StartAs::Primary
        } else if let Some(remote) = dynamic.standby_cluster.clone().filter(|_| self.follows_remote) {
            StartAs::StandbyLeader { remote }
        } else {
            let upstream = match (&self.upstream, view) {
                (Some(member), Some(view)) => Some(self.upstream_of(view, member)?),
                _ => None,
            };
            StartAs::Replica { upstream }
        };
        // The password for the (maybe new) upstream before PostgreSQL
        // reconnects with the new primary_conninfo.
        match &start_as {
            StartAs::StandbyLeader { remote } => {
                self.pg.write_pgpass(crate::postgres::remote_upstream(remote).as_ref())?
            }
            StartAs::Replica { upstream: Some(upstream) } => self.pg.write_pgpass(Some(upstream))?,
            _ => {}
        }
        self.pg.write_config(dynamic, &start_as, false)?;
        self.pg.reload().await
    }
}
