//! Synchronous replication as leader: one `ha_core::sync::next_step` (or, in quorum commit,
//! `ha_core::quorum::next_step`) per tick, carried out on PostgreSQL's
//! `synchronous_standby_names` and the `sync` key.

use ha_core::quorum::{Ledger, QuorumInput, QuorumStep};
use ha_core::sync::{Standby, SyncInput, SyncStep, next_step};
use pgwarden_config::SyncMode;

use super::*;

/// Synchronous mode, as leader: the standbys in `synchronous_standby_names`
/// (P) and the one joining.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    pub(super) configured: Vec<String>,
    pub(super) pending: Option<ha_core::sync::Pending>,
    /// `configured` was rebuilt from PostgreSQL's live setting since this
    /// agent last took the leader key.
    pub(super) rebuilt: bool,
    /// Quorum commit: the settings in effect since the last mark, and the
    /// mark (`ha_core::quorum`); `None` until rebuilt from PostgreSQL's
    /// live setting in this term.
    pub(super) ledger: Option<Ledger>,
    /// When the last step that changed something (a setting, a mark, the
    /// key) was taken: the next one follows within [`SYNC_FOLLOW_UP_TICK`]
    /// rather than a `loop_wait`.
    pub(super) stepped_at: Option<Instant>,
}

/// How soon the leader ticks again while a change to its synchronous
/// standbys is under way: each change takes several steps (name the
/// standby, see it confirm, see it flush, publish it), one per tick, and a
/// standby lost should be replaced in about a second, not in four
/// `loop_wait`s (Patroni replaces it within one).
pub(super) const SYNC_FOLLOW_UP_TICK: Duration = Duration::from_millis(200);

/// For how long after a step the leader ticks at [`SYNC_FOLLOW_UP_TICK`]:
/// long enough for a standby to confirm and flush; a standby that does not
/// is then waited for at the normal pace (no busy loop).
const SYNC_FOLLOW_UP_FOR: Duration = Duration::from_secs(3);

impl SyncState {
    /// A change to the synchronous standbys is under way: tick again soon.
    pub(super) fn in_flight(&self) -> bool {
        self.stepped_at.is_some_and(|at| at.elapsed() < SYNC_FOLLOW_UP_FOR)
    }

    /// `synchronous_standby_names` for the config files: none outside
    /// synchronous mode, else P (or, strict, a placeholder when P is empty).
    pub(super) fn names(&self, mode: SyncMode, strict: bool) -> Option<String> {
        match mode {
            SyncMode::Off => None,
            SyncMode::On => Some(ha_core::sync::standby_names(&self.configured, strict)),
            SyncMode::Quorum => Some(ha_core::quorum::standby_names(
                &self.ledger.as_ref().map(Ledger::current).unwrap_or_default(),
                strict,
            )),
        }
    }

    /// Not leading (or out of synchronous mode): no standby is ours to wait
    /// for, and the next term starts from PostgreSQL's live setting again.
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }

    /// Leading again (an agent restarted under a running primary, or a
    /// promotion): P starts from what PostgreSQL runs with (`live`) and
    /// every member of S (`published`), never from an empty memory (DESIGN
    /// invariant 4).
    pub(super) fn rebuild(&mut self, live: &str, published: &[String]) {
        let mut names = ha_core::sync::parse_standby_names(live);
        names.extend(published.iter().cloned());
        names.sort();
        names.dedup();
        self.configured = names;
        self.rebuilt = true;
    }

    /// The `sync` key now lists `names`: a joining standby among them has joined.
    pub(super) fn published(&mut self, names: &[String]) {
        if self.pending.as_ref().is_some_and(|p| names.contains(&p.name)) {
            self.pending = None;
        }
    }
}

/// The standbys PostgreSQL reports, as `ha_core::sync` sees them: eligible
/// unless their member is gone or tagged `nosync` (or `sync_priority: 0`),
/// ordered by their `sync_priority` tag (default 1).
pub(super) fn standbys(view: &ClusterView, replication: &[sql::ReplicationRow]) -> Vec<Standby> {
    let nosync = |name: &str| view.member(name).is_none_or(|m| m.data.known_tags().never_sync());
    replication
        .iter()
        .map(|r| Standby {
            name: r.application_name.clone(),
            streaming: r.state == "streaming",
            sync: r.sync_state == "sync" || r.sync_state == "quorum",
            listed: r.sync_priority > 0,
            flush_lsn: r.flush_lsn,
            eligible: !nosync(&r.application_name),
            priority: view.member(&r.application_name).map_or(1, |m| m.data.known_tags().sync_priority),
        })
        .collect()
}

impl Agent {
    /// Writes the `sync` key as this leader's with no standby
    /// (compare-and-swap against the tick's view).
    pub(super) async fn reset_sync_key(&mut self, view: &ClusterView) -> anyhow::Result<()> {
        if !self.write_sync_key(view, &[], 0).await? {
            bail!("promote: the sync key changed while resetting it; not promoting");
        }
        info!("synchronous mode: the sync key names this leader, with no standby yet");
        Ok(())
    }

    /// Writes the `sync` key: this leader, `standbys` and `quorum` (0 but in
    /// quorum commit, as Patroni writes it), by compare-and-swap on the
    /// revision the view read (created iff absent). Returns whether it was
    /// written.
    pub(super) async fn write_sync_key(
        &self,
        view: &ClusterView,
        standbys: &[String],
        quorum: usize,
    ) -> anyhow::Result<bool> {
        let value = serde_json::to_string(&dcs::SyncState {
            leader: Some(self.config.name.clone()),
            sync_standby: (!standbys.is_empty()).then(|| standbys.join(",")),
            quorum: Some(u32::try_from(quorum)?),
        })?;
        let key = self.keys.sync();
        // Revision 0: created iff absent.
        let revision = if view.sync.is_some() { view.sync_revision } else { 0 };
        Ok(self.etcd.put_if_revision(&key, value, revision).await?.is_some())
    }

    /// `synchronous_standby_names` for the config files: none outside
    /// synchronous mode, else P (or, strict, a placeholder when P is empty).
    pub(super) fn sync_names(&self, dynamic: &DynamicConfig) -> Option<String> {
        self.sync.names(dynamic.synchronous_mode, dynamic.synchronous_mode_strict)
    }

    /// Synchronous replication as leader: one step of `ha_core::sync` per
    /// tick; out of synchronous mode, the `sync` key goes.
    pub(super) async fn manage_sync(
        &mut self,
        view: &ClusterView,
        local: &LocalObservation,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<()> {
        let Some(sql) = local.sql.as_ref().filter(|s| !s.in_recovery) else { return Ok(()) };
        if dynamic.synchronous_mode == SyncMode::Off {
            self.sync.forget();
            if self.pg.set_sync_names(None) {
                info!("synchronous mode off: synchronous_standby_names cleared");
                self.pg.write_config(dynamic, &StartAs::Primary, false)?;
                self.pg.reload().await?;
            }
            if view.sync.is_some() && self.etcd.delete_if_revision(&self.keys.sync(), view.sync_revision).await? {
                info!("synchronous mode off: removed the sync key");
            }
            return Ok(());
        }
        let me = self.config.name.clone();
        let key_is_mine = view.sync.as_ref().is_some_and(|s| s.leader.as_deref() == Some(me.as_str()));
        let published: Vec<String> = view
            .sync
            .as_ref()
            .filter(|_| key_is_mine)
            .map(|s| s.members().into_iter().map(String::from).collect())
            .unwrap_or_default();
        let standbys = standbys(view, &sql.replication);
        if dynamic.synchronous_mode == SyncMode::Quorum {
            return self.manage_quorum(view, sql, dynamic, key_is_mine, standbys).await;
        }
        self.sync.ledger = None;
        // A key written in quorum commit with a quorum above 0 does not say
        // that every standby it lists holds every acknowledged commit, which
        // is what `ha_core::sync` takes it to say: list none first.
        if key_is_mine && view.sync.as_ref().and_then(|s| s.quorum).is_some_and(|q| q > 0) {
            if self.write_sync_key(view, &[], 0).await? {
                info!("synchronous mode on: the sync key of quorum commit lists no standby until one joins again");
            }
            return Ok(());
        }
        if !self.sync.rebuilt {
            let mut conn = self.connect().await?;
            let live = sql::show(&mut conn, "synchronous_standby_names").await;
            self.release(conn);
            self.sync.rebuild(&live?, &published);
            if !self.sync.configured.is_empty() {
                info!(standbys = ?self.sync.configured, "synchronous_standby_names rebuilt from PostgreSQL");
            }
        }
        let input = SyncInput {
            node_count: dynamic.synchronous_node_count as usize,
            published,
            key_is_mine,
            configured: self.sync.configured.clone(),
            pending: self.sync.pending.clone(),
            standbys,
            primary_lsn: sql.xlog_location,
            max_lag: u64::try_from(dynamic.maximum_lag_on_syncnode).ok().filter(|lag| *lag > 0),
        };
        // The configured names as PostgreSQL must have them (after a restart
        // or a promotion, before any step).
        if self.pg.set_sync_names(self.sync_names(dynamic)) {
            self.apply_sync_names(dynamic).await?;
        }
        let step = next_step(&input);
        if step != SyncStep::Idle {
            self.sync.stepped_at = Some(Instant::now());
        }
        match step {
            SyncStep::Idle => {}
            SyncStep::Mark(lsn) => {
                if let Some(pending) = &mut self.sync.pending {
                    info!(standby = %pending.name, lsn = %ha_core::Lsn(lsn), "synchronous: the standby confirms; waiting for it to flush this far");
                    pending.since_lsn = Some(lsn);
                }
            }
            SyncStep::Configure { names, pending } => {
                info!(standbys = ?names, joining = ?pending.as_ref().map(|p| &p.name), "synchronous_standby_names");
                self.sync.configured = names;
                self.sync.pending = pending;
                self.pg.set_sync_names(self.sync_names(dynamic));
                self.apply_sync_names(dynamic).await?;
            }
            SyncStep::Publish(names) => {
                if self.write_sync_key(view, &names, 0).await? {
                    info!(standbys = ?names, "published the sync key");
                    self.sync.published(&names);
                }
            }
        }
        Ok(())
    }

    /// Quorum commit as leader: one step of `ha_core::quorum` per tick.
    async fn manage_quorum(
        &mut self,
        view: &ClusterView,
        sql: &sql::SqlStatus,
        dynamic: &DynamicConfig,
        key_is_mine: bool,
        standbys: Vec<Standby>,
    ) -> anyhow::Result<()> {
        // Synchronous mode's memory is of no use here; back in it, it starts
        // again from PostgreSQL's live setting.
        self.sync.configured.clear();
        self.sync.pending = None;
        self.sync.rebuilt = false;
        if self.sync.ledger.is_none() {
            let mut conn = self.connect().await?;
            let live = sql::show(&mut conn, "synchronous_standby_names").await;
            self.release(conn);
            let voters: Vec<String> = view
                .sync
                .as_ref()
                .filter(|_| key_is_mine)
                .map(|s| s.members().into_iter().map(String::from).collect())
                .unwrap_or_default();
            let quorum = view.sync.as_ref().filter(|_| key_is_mine).and_then(|s| s.quorum).unwrap_or(0) as usize;
            let current = ha_core::quorum::rebuild(ha_core::quorum::parse_config(&live?), &voters, quorum);
            info!(standbys = ?current.names, k = current.k, "quorum commit: synchronous_standby_names from PostgreSQL and the sync key");
            self.sync.ledger = Some(Ledger::new(current));
        }
        let ledger = self.sync.ledger.clone().unwrap_or_default();
        let key = view.sync.as_ref().filter(|_| key_is_mine);
        let input = QuorumInput {
            node_count: dynamic.synchronous_node_count as usize,
            key_is_mine,
            voters: key.map(|s| s.members().into_iter().map(String::from).collect()).unwrap_or_default(),
            quorum: key.and_then(|s| s.quorum).unwrap_or(0) as usize,
            ledger,
            strict: dynamic.synchronous_mode_strict,
            standbys,
            primary_lsn: sql.xlog_location,
            max_lag: u64::try_from(dynamic.maximum_lag_on_syncnode).ok().filter(|lag| *lag > 0),
        };
        if self.pg.set_sync_names(self.sync_names(dynamic)) {
            self.apply_sync_names(dynamic).await?;
        }
        let step = ha_core::quorum::next_step(&input);
        if !matches!(step, QuorumStep::Idle(_)) {
            self.sync.stepped_at = Some(Instant::now());
        }
        match step {
            QuorumStep::Idle(why) => tracing::debug!(why, "quorum commit"),
            QuorumStep::Mark => {
                // Read after this tick's observation that every WAL sender
                // runs with the setting: every commit acknowledged by an
                // earlier one is at or below it.
                let mut conn = self.connect().await?;
                let lsn = sql::current_wal_lsn(&mut conn).await;
                self.release(conn);
                let lsn = lsn?;
                if let Some(ledger) = &mut self.sync.ledger {
                    let current = ledger.current();
                    *ledger = Ledger { epochs: vec![current], mark: Some(lsn) };
                }
                tracing::debug!(lsn = %ha_core::Lsn(lsn), "quorum commit: marked");
            }
            QuorumStep::Configure(config) => {
                info!(standbys = ?config.names, k = config.k, "quorum commit: synchronous_standby_names");
                if let Some(ledger) = &mut self.sync.ledger {
                    ledger.configured(config);
                }
                self.pg.set_sync_names(self.sync_names(dynamic));
                self.apply_sync_names(dynamic).await?;
            }
            QuorumStep::Publish { voters, quorum } => {
                if self.write_sync_key(view, &voters, quorum).await? {
                    info!(voters = ?voters, quorum, "quorum commit: published the sync key");
                }
            }
        }
        Ok(())
    }

    /// Rewrites the config with the current `synchronous_standby_names`,
    /// reloads, and waits until PostgreSQL uses it.
    pub(super) async fn apply_sync_names(&mut self, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let wanted = self.sync_names(dynamic).unwrap_or_default();
        self.pg.write_config(dynamic, &StartAs::Primary, false)?;
        self.pg.reload().await?;
        let mut conn = self.connect().await?;
        let started = Instant::now();
        loop {
            let current = sql::show(&mut conn, "synchronous_standby_names").await?;
            if current == wanted {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("PostgreSQL did not take synchronous_standby_names = {wanted:?} within 5 s (it has {current:?})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.release(conn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: &str, sync_state: &str) -> sql::ReplicationRow {
        sql::ReplicationRow {
            usename: "replicator".into(),
            application_name: name.into(),
            client_addr: "127.0.0.1".into(),
            state: state.into(),
            sync_state: sync_state.into(),
            sync_priority: 0,
            flush_lsn: 42,
        }
    }

    fn member(name: &str, tags: serde_json::Value) -> dcs::MemberEntry {
        dcs::MemberEntry {
            name: name.into(),
            data: MemberData { tags: tags.as_object().cloned().unwrap_or_default(), ..MemberData::default() },
            lease: 0,
        }
    }

    #[test]
    fn names_follow_the_mode_and_strictness() {
        let mut state = SyncState::default();
        assert_eq!(state.names(SyncMode::Off, false), None);
        assert_eq!(state.names(SyncMode::On, false).as_deref(), Some(""), "no standby: nothing waits");
        let strict = state.names(SyncMode::On, true).expect("strict");
        assert!(!strict.is_empty(), "strict with no standby: commits wait on a placeholder");
        state.configured = vec!["b".into()];
        assert!(state.names(SyncMode::On, false).expect("on").contains("\"b\""));
    }

    #[test]
    fn a_new_term_rebuilds_p_from_postgresql_and_the_sync_key_and_forget_starts_over() {
        let mut state = SyncState::default();
        state.rebuild("FIRST 1 (\"c\", \"b\")", &["d".into(), "b".into()]);
        assert_eq!(state.configured, ["b", "c", "d"]);
        assert!(state.rebuilt);
        state.pending = Some(ha_core::sync::Pending { name: "e".into(), since_lsn: None });
        state.forget();
        assert!(state.configured.is_empty() && state.pending.is_none() && !state.rebuilt);
    }

    #[test]
    fn a_joining_standby_has_joined_once_the_key_lists_it() {
        let mut state = SyncState {
            pending: Some(ha_core::sync::Pending { name: "c".into(), since_lsn: Some(7) }),
            ..SyncState::default()
        };
        state.published(&["b".into()]);
        assert!(state.pending.is_some());
        state.published(&["b".into(), "c".into()]);
        assert!(state.pending.is_none());
    }

    #[test]
    fn standbys_are_eligible_unless_gone_or_tagged_and_carry_their_priority() {
        let view = ClusterView {
            members: vec![
                member("b", serde_json::json!({})),
                member("c", serde_json::json!({"nosync": true})),
                member("d", serde_json::json!({"sync_priority": 0})),
                member("e", serde_json::json!({"sync_priority": 5})),
            ],
            ..ClusterView::default()
        };
        let rows = [
            row("b", "streaming", "sync"),
            row("c", "streaming", "async"),
            row("d", "catchup", "async"),
            row("e", "streaming", "quorum"),
            row("gone", "streaming", "async"),
        ];
        let got = standbys(&view, &rows);
        let summary: Vec<(&str, bool, bool, bool, u32)> =
            got.iter().map(|s| (s.name.as_str(), s.streaming, s.sync, s.eligible, s.priority)).collect();
        assert_eq!(
            summary,
            [
                ("b", true, true, true, 1),
                ("c", true, false, false, 0),
                ("d", false, false, false, 0),
                ("e", true, true, true, 5),
                ("gone", true, false, false, 1),
            ]
        );
    }
}
