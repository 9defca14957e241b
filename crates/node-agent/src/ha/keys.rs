//! The keys this agent writes besides the leader key: its member key, and as leader `status`,
//! `config`, `initialize` and `history`.

use std::collections::BTreeMap;

use super::*;

/// The member key's content as last written (written again only when it changes).
#[derive(Debug, Default)]
pub(super) struct MemberPublisher {
    pub(super) last_json: Option<String>,
}

/// The member key's `state`, as Patroni names it.
pub(super) fn member_state(local: &LocalObservation) -> &'static str {
    match local.postmaster.state {
        pg_local::PostmasterState::Running if local.sql.is_some() => "running",
        pg_local::PostmasterState::Running | pg_local::PostmasterState::Starting => "starting",
        pg_local::PostmasterState::Stopping => "stopping",
        _ => "stopped",
    }
}

/// The member key's `role`: PostgreSQL's own answer; while it does not
/// answer, only a proven leader key makes a primary.
pub(super) fn member_role(
    local: &LocalObservation,
    has_data: bool,
    leading: bool,
    follows_remote: bool,
) -> &'static str {
    match &local.sql {
        Some(sql) if !sql.in_recovery => "primary",
        // Patroni's name for a standby cluster's leader.
        Some(_) if leading && follows_remote => "standby_leader",
        Some(_) => "replica",
        None if leading => "primary",
        None if has_data => "replica",
        None => "uninitialized",
    }
}

/// What the agent knows about itself beyond PostgreSQL, for its member key.
#[derive(Debug, Default)]
pub(super) struct MemberFacts<'a> {
    /// Between taking the key and the first checkpoint after promotion.
    pub(super) checkpoint_pending: bool,
    pub(super) paused: bool,
    pub(super) pending_restart: bool,
    /// Patroni's `pending_restart_reason`: each parameter waiting for a
    /// restart, with the value PostgreSQL runs with and the one written.
    pub(super) pending_reason: BTreeMap<String, (String, String)>,
    pub(super) fencer_ready: bool,
    /// Gave the leader key up itself lately (`ha_core::released_recently`).
    pub(super) released: bool,
    pub(super) scheduled_restart: Option<&'a ScheduledRestart>,
    /// `postgresql.proxy_address`, published as Patroni's `proxy_url`.
    pub(super) proxy_address: Option<&'a pgwarden_config::HostPort>,
}

/// The member key's fields beyond Patroni's core ones: Patroni's
/// `checkpoint_after_promote`, `pause`, `pending_restart` and
/// `scheduled_restart`, and pgwarden's `fencer_ready` (a leader hands over
/// only to a member that may lead) and `released_leader` (the others race
/// without waiting for it: decide's `Peer::released`).
pub(super) fn member_extra(facts: &MemberFacts<'_>) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut extra = serde_json::Map::new();
    if facts.checkpoint_pending {
        extra.insert("checkpoint_after_promote".into(), Value::Bool(false));
    }
    if facts.paused {
        extra.insert("pause".into(), Value::Bool(true));
    }
    if facts.pending_restart {
        extra.insert("pending_restart".into(), Value::Bool(true));
    }
    if !facts.pending_reason.is_empty() {
        let reason: serde_json::Map<String, Value> = facts
            .pending_reason
            .iter()
            .map(|(name, (old, new))| (name.clone(), serde_json::json!({"old_value": old, "new_value": new})))
            .collect();
        extra.insert("pending_restart_reason".into(), Value::Object(reason));
    }
    extra.insert("fencer_ready".into(), Value::Bool(facts.fencer_ready));
    if facts.released {
        extra.insert("released_leader".into(), Value::Bool(true));
    }
    if let Some(scheduled) = facts.scheduled_restart {
        let request = &scheduled.request;
        let mut restart = serde_json::Map::new();
        restart.insert("schedule".into(), request.schedule.clone().into());
        if request.only_if_pending {
            restart.insert("restart_pending".into(), true.into());
        }
        if !request.role.is_empty() {
            restart.insert("role".into(), request.role.clone().into());
        }
        if request.below_version > 0 {
            restart.insert("postgres_version".into(), ha_core::format_postgres_version(request.below_version).into());
        }
        if request.timeout_seconds > 0 {
            restart.insert("timeout".into(), request.timeout_seconds.into());
        }
        extra.insert("scheduled_restart".into(), Value::Object(restart));
    }
    if let Some(proxy) = facts.proxy_address {
        extra.insert("proxy_url".into(), Value::String(format!("postgres://{proxy}/postgres")));
    }
    extra
}

impl Agent {
    /// Patroni's `pending_restart_reason`: each parameter waiting for a
    /// restart, with the value PostgreSQL runs with and the one written.
    pub(super) fn pending_reason(&self, local: &LocalObservation) -> BTreeMap<String, (String, String)> {
        local.sql.as_ref().map_or_else(BTreeMap::new, |sql| {
            let written = self.pg.written_parameters().unwrap_or_default();
            sql.pending_parameters
                .iter()
                .map(|(name, running)| {
                    let new = written.get(name).cloned().unwrap_or_else(|| "(not set here)".into());
                    (name.clone(), (running.clone(), new))
                })
                .collect()
        })
    }

    /// This member's key as it should read now; `clone` while a base backup
    /// copies its data directory (Patroni's state `creating replica`, with
    /// pgwarden's `clone_progress`).
    pub(super) fn member_data(
        &self,
        local: &LocalObservation,
        clone: Option<dcs::CloneProgress>,
    ) -> anyhow::Result<MemberData> {
        let connect = self
            .config
            .postgresql
            .connect_address
            .clone()
            .or_else(|| {
                self.config.postgresql.listen.as_ref().map(|l| {
                    let host = l.hosts.first().map(String::as_str).unwrap_or("127.0.0.1");
                    let host = if host == "*" || host == "0.0.0.0" { "127.0.0.1" } else { host };
                    pgwarden_config::HostPort::new(host, l.port)
                })
            })
            .context("no PostgreSQL address to advertise")?;
        // A data directory still being copied is no database yet (as Patroni says).
        let (state, role) = match clone {
            Some(_) => ("creating replica", "uninitialized"),
            None => (
                member_state(local),
                member_role(local, self.pg.has_data(), self.leader_deadline().is_some(), self.follows_remote),
            ),
        };
        let mut extra = member_extra(&MemberFacts {
            checkpoint_pending: self.checkpoint_pending,
            paused: self.view.borrow().paused,
            pending_restart: local.sql.as_ref().is_some_and(|s| s.pending_restart),
            pending_reason: self.pending_reason(local),
            fencer_ready: self.fencer_ready(),
            released: self.released_recently(self.view.borrow().ttl),
            scheduled_restart: self.scheduled_restart.as_ref(),
            proxy_address: self.config.postgresql.proxy_address.as_ref(),
        });
        if let Some(progress) = clone {
            extra.insert("clone_progress".into(), serde_json::to_value(progress)?);
        }
        Ok(MemberData {
            conn_url: format!("postgres://{connect}/{}", self.config.postgresql.database),
            api_url: self.config.restapi.api_url(),
            state: state.into(),
            role: role.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            xlog_location: local.sql.as_ref().map(|s| s.xlog_location),
            timeline: local.sql.as_ref().map(|s| s.timeline),
            receive_lsn: local.sql.as_ref().filter(|s| s.in_recovery).map(|s| s.receive_lsn),
            replay_lsn: local.sql.as_ref().filter(|s| s.in_recovery).map(|s| s.replay_lsn),
            replication_state: local
                .sql
                .as_ref()
                .filter(|s| s.in_recovery && !s.replication_state.is_empty())
                .map(|s| s.replication_state.clone()),
            tags: self.config.tags.json.clone(),
            grpc_url: Some(self.config.pgwarden.agent_grpc_url()),
            extra,
        })
    }

    /// Puts `json` as this member's key on the member lease.
    pub(super) async fn put_member(&self, json: &str) -> anyhow::Result<()> {
        let Some(lease) = self.keeper.lease else { return Ok(()) };
        let key = self.keys.member(&self.config.name);
        self.etcd
            .call(|mut client| {
                let (key, value) = (key.clone(), json.to_string());
                async move { client.put(key, value, Some(PutOptions::new().with_lease(lease.id))).await }
            })
            .await?;
        Ok(())
    }

    /// Writes this member's key when its content changed.
    pub(super) async fn publish_member(&mut self, local: &LocalObservation) -> anyhow::Result<()> {
        if self.keeper.lease.is_none() {
            return Ok(());
        }
        let json = serde_json::to_string(&self.member_data(local, None)?)?;
        if self.publisher.last_json.as_deref() == Some(json.as_str()) {
            return Ok(());
        }
        self.put_member(&json).await?;
        self.publisher.last_json = Some(json);
        Ok(())
    }

    /// The leader's duties: `status.optime`, the `config` and `initialize`
    /// keys, and a replication slot per member.
    pub(super) async fn leader_housekeeping(
        &mut self,
        view: &ClusterView,
        local: &LocalObservation,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<()> {
        // A standby cluster's leader is a standby: it keeps the keys and its
        // members' slots all the same.
        let Some(sql) = local.sql.as_ref().filter(|s| !s.in_recovery || dynamic.standby_cluster.is_some()) else {
            return Ok(());
        };
        // The slots first: the permanent ones' positions go into `status`.
        // A slot that cannot be made (a logical slot's plugin missing) must
        // not keep `status.optime` from being published.
        let slots = match dynamic.use_slots {
            true => self.manage_slots(view, dynamic).await.unwrap_or_else(|e| {
                warn!("failed to keep the replication slots: {e:#}");
                self.last_slots.clone()
            }),
            false => Default::default(),
        };
        // As Patroni: the leader's own member slot name at its position (a
        // replica keeps a slot for it), and `retain_slots`, every member's
        // slot name that is not a permanent slot's.
        let mut slots = slots;
        if dynamic.use_slots {
            slots.insert(slot_name(&self.config.name), sql.xlog_location.into());
        }
        let retain: Vec<String> = if dynamic.use_slots {
            let mut names: Vec<String> = view
                .members
                .iter()
                .map(|m| slot_name(&m.name))
                .chain([slot_name(&self.config.name)])
                .filter(|name| !dynamic.slots.contains_key(name))
                .collect();
            names.sort();
            names.dedup();
            names
        } else {
            Vec::new()
        };
        if self.last_optime != Some(sql.xlog_location) || self.last_slots != slots {
            let status = view.status.clone().unwrap_or_default();
            // Only this leader's positions: a stale copy (Patroni's last,
            // after a migration) would mislead a member that advances its
            // slots to them.
            let status = Status { optime: sql.xlog_location, slots: slots.clone(), retain_slots: retain, ..status };
            let value = serde_json::to_string(&status)?;
            let key = self.keys.status();
            self.etcd
                .call(|mut client| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { client.put(key, value, None).await }
                })
                .await?;
            self.last_optime = Some(sql.xlog_location);
            self.last_slots = slots;
        }
        if view.config.is_none() {
            self.etcd.create_if_absent(&self.keys.config(), self.config.bootstrap.dcs_json.to_string(), None).await?;
        }
        if view.initialize.as_deref().is_none_or(str::is_empty)
            && let Some(sysid) = &self.sysid
        {
            let _ = self.etcd.create_if_absent(&self.keys.initialize(), sysid.clone(), None).await?;
        }
        // The timelines it is on: a standby leader's are the remote
        // primary's, which its members need to tell a divergence.
        self.complete_history(view, sql.timeline).await?;
        if dynamic.standby_cluster.is_some() {
            // A standby leader has no synchronous standbys or failsafe; its
            // members rewind against it only once its control file is on
            // the timeline it replays.
            self.checkpoint_pending = self.restartpoint_onto(sql.timeline).await;
            return Ok(());
        }
        self.keep_failsafe_key(view, dynamic).await?;
        self.manage_sync(view, local, dynamic).await
    }

    /// A standby leader that moved to a new timeline (the remote primary
    /// failed over, or this member was rewound onto it): its control file
    /// names the old timeline until a restartpoint, and a member that
    /// pg_rewinds against it meanwhile would find no divergence. Asks for
    /// one (`CHECKPOINT` on a standby) and says whether the control file is
    /// still behind (`checkpoint_after_promote: false` in the member key,
    /// which makes the members wait, as after a promotion).
    async fn restartpoint_onto(&mut self, timeline: u64) -> bool {
        async fn behind(conn: &mut sqlx::postgres::PgConnection, timeline: u64) -> bool {
            let checkpointed: i64 = sqlx::query_scalar("select timeline_id::bigint from pg_control_checkpoint()")
                .fetch_one(conn)
                .await
                .unwrap_or(0);
            (checkpointed as u64) < timeline
        }
        let Ok(mut conn) = self.connect().await else { return true };
        let mut still_behind = behind(&mut conn, timeline).await;
        if still_behind {
            if let Err(e) = sql::checkpoint(&mut conn).await {
                warn!("standby leader: a restartpoint onto timeline {timeline} failed: {e:#}");
            }
            still_behind = behind(&mut conn, timeline).await;
        }
        self.release(conn);
        still_behind
    }

    /// `failsafe_mode`: the `failsafe` key lists every member with a REST
    /// API, this leader among them (Patroni's layout: name to `api_url`);
    /// without the mode it is removed.
    async fn keep_failsafe_key(&mut self, view: &ClusterView, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let key = self.keys.failsafe();
        if !dynamic.failsafe_mode {
            self.failsafe_written = None;
            if view.failsafe.is_some() {
                self.etcd
                    .call(|mut client| {
                        let key = key.clone();
                        async move { client.delete(key, None).await }
                    })
                    .await?;
                info!("failsafe_mode is off: removed the failsafe key");
            }
            return Ok(());
        }
        let mut members: std::collections::BTreeMap<String, String> = view
            .members
            .iter()
            .filter(|m| !m.data.api_url.is_empty())
            .map(|m| (m.name.clone(), m.data.api_url.clone()))
            .collect();
        members.insert(self.config.name.clone(), self.config.restapi.api_url());
        if view.failsafe.as_ref() != Some(&members) {
            let value = serde_json::to_string(&members)?;
            self.etcd
                .call(|mut client| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { client.put(key, value, None).await }
                })
                .await?;
        }
        self.failsafe_written = Some(members);
        Ok(())
    }

    /// Adds to the `history` key the promotions PostgreSQL's timeline history
    /// file records and the key lacks (one made by Patroni during a
    /// migration, or by an agent that died before writing its entry), as
    /// Patroni rebuilds it. Read once per timeline and history revision.
    pub(super) async fn complete_history(&mut self, view: &ClusterView, timeline: u64) -> anyhow::Result<()> {
        if timeline <= 1 || self.history_checked == Some((timeline, view.history.len())) {
            return Ok(());
        }
        let file = self.pg.data_dir.join("pg_wal").join(ha_core::timeline::history_file_name(timeline));
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                warn!("failed to read the timeline history file {}: {e}", file.display());
                self.history_checked = Some((timeline, view.history.len()));
                return Ok(());
            }
        };
        // Read afresh and written only if unchanged since: this tick's view
        // predates an entry the promotion may have appended a moment ago.
        let key = self.keys.history();
        let current = self
            .etcd
            .call(|mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await?;
        let (history, revision) = match current.kvs().first() {
            Some(kv) => {
                (serde_json::from_slice::<Vec<dcs::HistoryEntry>>(kv.value()).unwrap_or_default(), kv.mod_revision())
            }
            None => (Vec::new(), 0),
        };
        let known: Vec<u64> = history.iter().map(|h| h.timeline).collect();
        let switches = ha_core::timeline::parse_history_file(&text);
        let missing = ha_core::timeline::missing_switches(&known, &switches);
        if !missing.is_empty() {
            let mut history = history.clone();
            history.extend(missing.iter().map(|s| dcs::HistoryEntry {
                timeline: s.timeline,
                switch_lsn: s.lsn,
                reason: s.reason.clone(),
                timestamp: None,
                new_leader: None,
            }));
            history.sort_by_key(|h| h.timeline);
            let value = serde_json::to_string(&history)?;
            if self.etcd.put_if_revision(&key, value, revision).await?.is_none() {
                // Changed meanwhile: look again at the next tick.
                return Ok(());
            }
            info!(
                timelines = ?missing.iter().map(|s| s.timeline).collect::<Vec<_>>(),
                "history: added the promotions PostgreSQL's timeline history records and the key lacked"
            );
        }
        self.history_checked = Some((timeline, view.history.len()));
        Ok(())
    }

    /// Appends the promotion to the `history` key (Patroni's shape).
    pub(super) async fn append_history(
        &self,
        view: &ClusterView,
        entry: (u64, u64, String, String),
    ) -> anyhow::Result<()> {
        let (timeline, lsn, reason, timestamp) = entry;
        let mut history = view.history.clone();
        history.retain(|h| h.timeline < timeline);
        history.push(dcs::HistoryEntry {
            timeline,
            switch_lsn: lsn,
            reason,
            timestamp: Some(timestamp),
            new_leader: Some(self.config.name.clone()),
        });
        let value = serde_json::to_string(&history)?;
        let key = self.keys.history();
        self.etcd
            .call(|mut client| {
                let (key, value) = (key.clone(), value.clone());
                async move { client.put(key, value, None).await }
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg_local::PostmasterState as PostgresState;

    fn local(state: PostgresState, sql: Option<bool>) -> LocalObservation {
        LocalObservation {
            postmaster: pg_local::LocalPostgres { state, role: Default::default(), postmaster_pid: 0 },
            sql: sql.map(|in_recovery| sql::SqlStatus { in_recovery, ..Default::default() }),
            observed_at_unix_ms: 0,
            generation: 0,
            queried_at: None,
            looked_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn state_and_role_as_patroni_names_them() {
        let up = local(PostgresState::Running, Some(false));
        assert_eq!((member_state(&up), member_role(&up, true, false, false)), ("running", "primary"));
        let replica = local(PostgresState::Running, Some(true));
        assert_eq!(member_role(&replica, true, true, false), "replica", "PostgreSQL's answer wins");
        assert_eq!(member_role(&replica, true, true, true), "standby_leader", "a standby cluster's leader");
        assert_eq!(member_role(&replica, true, false, true), "replica", "the key makes the standby leader");
        let silent = local(PostgresState::Running, None);
        assert_eq!(member_state(&silent), "starting", "running but not answering yet");
        assert_eq!(member_role(&silent, true, true, false), "primary", "the proven key makes a primary");
        assert_eq!(member_role(&silent, true, false, false), "replica");
        assert_eq!(member_role(&silent, false, false, false), "uninitialized");
        assert_eq!(member_state(&local(PostgresState::Stopping, None)), "stopping");
        assert_eq!(member_state(&local(PostgresState::Stopped, None)), "stopped");
    }

    #[test]
    fn extra_fields_appear_only_when_they_say_something() {
        let quiet = member_extra(&MemberFacts { fencer_ready: true, ..MemberFacts::default() });
        assert_eq!(serde_json::Value::Object(quiet), serde_json::json!({"fencer_ready": true}));
        let restart = ScheduledRestart {
            at: time::OffsetDateTime::UNIX_EPOCH,
            request: ha_proto::v1::RestartRequest {
                schedule: "2026-12-05T12:00:00+00:00".into(),
                only_if_pending: true,
                role: "replica".into(),
                below_version: 150_004,
                timeout_seconds: 0,
            },
        };
        let all = member_extra(&MemberFacts {
            checkpoint_pending: true,
            paused: true,
            pending_restart: true,
            pending_reason: [("max_connections".to_string(), ("100".to_string(), "120".to_string()))].into(),
            fencer_ready: false,
            released: true,
            scheduled_restart: Some(&restart),
            proxy_address: Some(&pgwarden_config::HostPort::new("10.0.0.5", 6432)),
        });
        assert_eq!(
            serde_json::Value::Object(all),
            serde_json::json!({
                "checkpoint_after_promote": false,
                "pause": true,
                "pending_restart": true,
                "pending_restart_reason": {"max_connections": {"old_value": "100", "new_value": "120"}},
                "fencer_ready": false,
                "released_leader": true,
                "scheduled_restart": {"schedule": "2026-12-05T12:00:00+00:00", "restart_pending": true, "role": "replica", "postgres_version": "15.4"},
                "proxy_url": "postgres://10.0.0.5:6432/postgres",
            })
        );
    }
}
