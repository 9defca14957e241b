//! Replication slots: a leader keeps one per member (dropping a departed member's after
//! `member_slots_ttl`) and the permanent ones (`slots`), never drops a permanent or ignored one
//! (`ignore_slots`), and publishes the permanent ones' positions in `status`. A replica that may
//! lead keeps, as Patroni does, a slot for every other streaming member and the permanent physical
//! slots, each moved along to the position its member (or the leader) reports, so that a new
//! leader has its followers' slots with the WAL they need; one that may not (`nofailover`) keeps
//! none of them.
//!
//! Cascading replication (`replicatefrom`): a replica keeps the slots of the
//! members that stream from it (also when it may not lead), and the leader keeps theirs too (for
//! when they fall back to it), moved along to the positions they report. A `nostream` member has
//! no slot anywhere.

use super::*;

/// When each slot of a departed member was first seen without its member,
/// and when a replica last looked for member slots left from a term as primary.
#[derive(Debug, Default)]
pub(super) struct SlotKeeper {
    pub(super) absent_since: HashMap<String, Instant>,
    pub(super) replica_checked: Option<Instant>,
    /// Permanent slots already warned about (named as a member, or present
    /// with other attributes), so that the warning is given once.
    pub(super) warned: std::collections::HashSet<String>,
    /// Logical slots a replica does not copy yet: the leader's slot begins
    /// before the oldest WAL here (the position named), so a copy could not
    /// be decoded from. Said once per position.
    pub(super) waiting: HashMap<String, u64>,
}

/// A logical slot copy on a replica that can never serve its consumer: the
/// WAL it decodes from is gone here (copied when the leader's slot began
/// before this replica's oldest WAL, or lost to `max_slot_wal_keep_size`).
/// After a failover its consumer would fail for good ("requested WAL
/// segment ... has already been removed").
pub(super) fn undecodable(slot: &sql::Slot, oldest_wal: Option<u64>) -> bool {
    slot.lost || slot.restart_lsn.is_none_or(|restart| oldest_wal.is_some_and(|oldest| restart < oldest))
}

/// A slot pgwarden must not drop: permanent, or matched by `ignore_slots`.
pub(super) fn kept(dynamic: &DynamicConfig, slot: &sql::Slot) -> bool {
    dynamic.slots.contains_key(&slot.name)
        || dynamic
            .ignore_slots
            .iter()
            .any(|m| m.matches(&slot.name, &slot.kind, slot.database.as_deref(), slot.plugin.as_deref()))
}

/// Whether an existing slot is the permanent one the config describes.
fn same_slot(wanted: &pgwarden_config::PermanentSlot, slot: &sql::Slot) -> bool {
    match wanted {
        pgwarden_config::PermanentSlot::Physical => slot.kind == "physical",
        pgwarden_config::PermanentSlot::Logical { database, plugin } => {
            slot.kind == "logical" && slot.database.as_ref() == Some(database) && slot.plugin.as_ref() == Some(plugin)
        }
    }
}

/// What a leader does to its slots this tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SlotPlan {
    /// Members without a slot yet.
    pub(super) create: Vec<String>,
    /// Slots whose member has been gone for `member_slots_ttl`.
    pub(super) drop: Vec<String>,
}

impl SlotKeeper {
    /// The leader's plan: a slot for every member in `wanted`; a slot in
    /// `existing` without its member is dropped once it has been so for
    /// `member_slots_ttl` (a member back in time keeps it).
    pub(super) fn plan(&mut self, wanted: &[String], existing: &[String], now: Instant, ttl: Duration) -> SlotPlan {
        self.absent_since.retain(|slot, _| !wanted.contains(slot) && existing.contains(slot));
        let create = wanted.iter().filter(|s| !existing.contains(s)).cloned().collect();
        let drop = existing
            .iter()
            .filter(|s| !wanted.contains(s))
            .filter(|slot| now.duration_since(*self.absent_since.entry((*slot).clone()).or_insert(now)) >= ttl)
            .cloned()
            .collect();
        SlotPlan { create, drop }
    }

    /// `slot` was dropped.
    pub(super) fn dropped(&mut self, slot: &str) {
        self.absent_since.remove(slot);
    }

    /// A replica looks again: at its start as a replica, then every `every`
    /// (`loop_wait`, as Patroni moves its slots along).
    pub(super) fn replica_check_due(&self, now: Instant, every: Duration) -> bool {
        self.replica_checked.is_none_or(|at| now.duration_since(at) >= every)
    }
}

/// The members that stream (by their tags) from `upstream` rather than from
/// whoever leads: those whose `replicatefrom` names it. Their slot names.
fn downstream_of(view: &ClusterView, upstream: &str) -> Vec<String> {
    view.members
        .iter()
        .filter(|m| m.name != upstream && !m.data.known_tags().nostream)
        .filter(|m| m.data.known_tags().replicatefrom.as_deref() == Some(upstream))
        .map(|m| slot_name(&m.name))
        .collect()
}

/// Whether a member that streams from `me` (`replicatefrom`), directly or
/// through others, keeps logical slot copies (as
/// [`crate::postgres::Postgres::keeps_logical_slots`] decides for itself):
/// its feedback, which keeps the catalog rows its copies need on the
/// primary, reaches the primary only if `me` sends feedback too. Patroni's
/// `should_enforce_hot_standby_feedback`.
pub(super) fn relays_feedback(view: &ClusterView, me: &str, dynamic: &DynamicConfig) -> bool {
    let copies_kept = dynamic.standby_cluster.is_none()
        && dynamic.use_slots
        && dynamic.slots.values().any(|slot| matches!(slot, pgwarden_config::PermanentSlot::Logical { .. }));
    if !copies_kept {
        return false;
    }
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    if leader == Some(me) {
        return false;
    }
    // Walked breadth-first from `me`, each member once (tags may loop).
    let mut seen = vec![me.to_string()];
    let mut next = 0;
    while next < seen.len() {
        let upstream = seen[next].clone();
        next += 1;
        for member in &view.members {
            let tags = member.data.known_tags();
            if tags.replicatefrom.as_deref() != Some(upstream.as_str())
                || Some(member.name.as_str()) == leader
                || tags.nostream
                || seen.contains(&member.name)
            {
                continue;
            }
            if !tags.nofailover {
                return true;
            }
            seen.push(member.name.clone());
        }
    }
    false
}

impl Agent {
    /// The leader's slots: one per member, and the permanent ones. Returns
    /// the members' and the permanent slots' positions, for the `status` key.
    pub(super) async fn manage_slots(
        &mut self,
        view: &ClusterView,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let wanted: Vec<String> = view
            .members
            .iter()
            .filter(|m| m.name != self.config.name && !m.data.known_tags().nostream)
            .map(|m| slot_name(&m.name))
            .collect();
        let mut conn = self.connect().await?;
        let slots = sql::slots(&mut conn).await?;
        // Only member slots, and slots nobody claims, are this rule's.
        let existing: Vec<String> =
            slots.iter().filter(|s| s.kind == "physical" && !kept(dynamic, s)).map(|s| s.name.clone()).collect();
        let plan = self.slots.plan(&wanted, &existing, Instant::now(), dynamic.member_slots_ttl);
        // A member's slot may already be there as a permanent one (listed in
        // `slots` before the member joined): it is that member's slot now.
        for slot in plan.create.iter().filter(|name| !slots.iter().any(|s| s.name == **name && s.kind == "physical")) {
            info!(slot, "creating a replication slot");
            sql::create_slot(&mut conn, slot).await?;
        }
        for slot in &plan.drop {
            info!(slot, "dropping the slot of a member gone longer than member_slots_ttl");
            sql::drop_slot(&mut conn, slot).await?;
            self.slots.dropped(slot);
        }
        // A member that streams from another replica does not use its slot
        // here: move it along to the position it reports (WAL it may need
        // when it falls back to this leader, no more).
        for member in &view.members {
            let cascading = member
                .data
                .tags
                .get("replicatefrom")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|from| from != self.config.name && from != member.name);
            if let (true, Some(lsn)) =
                (cascading && wanted.contains(&slot_name(&member.name)), member.data.xlog_location)
                && slots.iter().any(|s| s.name == slot_name(&member.name) && !s.active && s.position < Some(lsn))
            {
                sql::advance_slot(&mut conn, &slot_name(&member.name), lsn).await?;
            }
        }
        // The member slots' positions are published too, as Patroni's.
        let mut positions = serde_json::Map::new();
        for slot in slots.iter().filter(|s| wanted.contains(&s.name) && s.kind == "physical") {
            if let Some(position) = slot.position {
                positions.insert(slot.name.clone(), position.into());
            }
        }
        for (name, permanent) in &dynamic.slots {
            if wanted.contains(name) || slot_name(&self.config.name) == *name {
                if self.slots.warned.insert(name.clone()) {
                    warn!(
                        slot = name,
                        "a permanent slot named as a member is that member's slot: not kept as permanent"
                    );
                }
                continue;
            }
            match slots.iter().find(|s| s.name == *name) {
                Some(slot) if same_slot(permanent, slot) => {
                    // Left for the operator (Patroni drops and recreates it,
                    // and its consumer would go on with changes missing).
                    if slot.lost && self.slots.warned.insert(format!("{name} lost")) {
                        warn!(
                            slot = name,
                            "the WAL this permanent slot needs is gone (wal_status lost, max_slot_wal_keep_size): \
                             its consumer can read no more; drop the slot to have pgwarden create it afresh"
                        );
                    }
                    if let Some(position) = slot.position {
                        positions.insert(name.clone(), position.into());
                    }
                }
                Some(_) => {
                    if self.slots.warned.insert(name.clone()) {
                        warn!(
                            slot = name,
                            "a slot of this name exists with another type, database or plugin than the permanent \
                             slot's: left as it is (drop it to have pgwarden create the configured one)"
                        );
                    }
                }
                None => match permanent {
                    pgwarden_config::PermanentSlot::Physical => {
                        info!(slot = name, "creating a permanent physical replication slot");
                        sql::create_slot(&mut conn, name).await?;
                    }
                    pgwarden_config::PermanentSlot::Logical { database, plugin } => {
                        info!(slot = name, database, plugin, "creating a permanent logical replication slot");
                        let mut there = self.connect_database(database).await?;
                        // From 17 on, standbys keep the copies themselves
                        // (`sync_replication_slots`), of slots marked for failover.
                        let failover = self.pg.major().is_some_and(|m| m >= 17);
                        let created = sql::create_logical_slot(&mut there, name, plugin, failover).await;
                        sql::close(there).await;
                        created?;
                    }
                },
            }
        }
        self.release(conn);
        Ok(positions)
    }

    /// On a replica: drops the inactive member slots it kept from a term as
    /// primary (they pin WAL forever; the next leader creates its own), and
    /// keeps the permanent physical slots, moved along to the positions the
    /// leader publishes (so that after a failover they are there, not far
    /// behind). Checked when the replica starts and then once a minute.
    pub(super) async fn replica_slots(
        &mut self,
        view: &ClusterView,
        local: &LocalObservation,
        dynamic: &DynamicConfig,
    ) -> anyhow::Result<()> {
        if !local.sql.as_ref().is_some_and(|s| s.in_recovery) {
            self.slots.replica_checked = None;
            return Ok(());
        }
        if !self.slots.replica_check_due(Instant::now(), dynamic.loop_wait()) {
            return Ok(());
        }
        let mut conn = self.connect().await?;
        // The member slots this replica keeps: one for each member that
        // streams from it (it needs them now) and, while it may become the
        // leader, one for every other streaming member, as Patroni keeps
        // them (a new leader then has each follower's slot, with the WAL it
        // needs). Each unused one is moved along to the position its member
        // reports, so that it pins no more WAL than that member needs.
        let may_lead = !self.config.tags.nofailover;
        let me = self.config.name.clone();
        let wanted: Vec<(String, Option<u64>)> = if dynamic.use_slots {
            let downstream = downstream_of(view, &me);
            view.members
                .iter()
                .filter(|m| m.name != me && !m.data.known_tags().nostream)
                .filter(|m| may_lead || downstream.contains(&slot_name(&m.name)))
                .map(|m| (slot_name(&m.name), m.data.xlog_location))
                .collect()
        } else {
            Vec::new()
        };
        let mut existing = sql::slots(&mut conn).await?;
        // A slot nobody streams from here that holds an xmin (the feedback
        // of a standby that streamed from this node when it was primary)
        // would hold back vacuum for good, here and, through this standby's
        // own feedback, on the primary: it is dropped and made afresh, as
        // Patroni does.
        // Not a downstream member's (`replicatefrom` this node): that one is
        // expected to come back to it.
        let downstream = downstream_of(view, &me);
        let physical_kept = |name: &str| {
            !downstream.iter().any(|d| d == name)
                && (wanted.iter().any(|(w, _)| w == name)
                    || matches!(dynamic.slots.get(name), Some(pgwarden_config::PermanentSlot::Physical)))
        };
        for slot in existing.iter().filter(|s| s.kind == "physical" && !s.active && s.xmin.is_some()) {
            if physical_kept(&slot.name) {
                warn!(slot = slot.name, xmin = slot.xmin, "dropping an unused replication slot that holds an xmin");
                sql::drop_slot(&mut conn, &slot.name).await?;
            }
        }
        existing.retain(|s| !(s.kind == "physical" && !s.active && s.xmin.is_some() && physical_kept(&s.name)));
        for (slot, reported) in &wanted {
            match existing.iter().find(|s| s.name == *slot) {
                None => {
                    info!(slot, "creating a member's replication slot on this replica");
                    sql::create_slot(&mut conn, slot).await?;
                }
                Some(found) if !found.active && found.kind == "physical" => {
                    if let Some(lsn) = reported {
                        sql::advance_slot(&mut conn, slot, *lsn).await?;
                    }
                }
                Some(_) => {}
            }
        }
        // A member slot it should not keep (this member may not lead, or the
        // member does not stream) goes, unless permanent or ignored.
        let members: Vec<String> = view.members.iter().map(|m| slot_name(&m.name)).collect();
        for slot in existing.iter().filter(|s| {
            s.kind == "physical"
                && !s.active
                && members.contains(&s.name)
                && !wanted.iter().any(|(w, _)| *w == s.name)
                && !kept(dynamic, s)
        }) {
            info!(slot = slot.name, "dropping a member slot this replica does not keep");
            sql::drop_slot(&mut conn, &slot.name).await?;
        }
        // The permanent physical slots, moved along to the leader's
        // positions, on a replica that may lead (Patroni's rule); one that
        // may not drops them.
        let existing = sql::slots(&mut conn).await?;
        let published = view.status.as_ref().map(|s| &s.slots);
        for (name, permanent) in &dynamic.slots {
            if *permanent != pgwarden_config::PermanentSlot::Physical || members.contains(name) {
                continue;
            }
            let found = existing.iter().find(|s| s.name == *name);
            if !may_lead {
                if found.is_some_and(|s| !s.active && s.kind == "physical") {
                    info!(slot = name, "dropping a permanent slot: this member may not lead (nofailover)");
                    sql::drop_slot(&mut conn, name).await?;
                }
                continue;
            }
            if found.is_none() {
                info!(slot = name, "creating a permanent physical replication slot on this replica");
                sql::create_slot(&mut conn, name).await?;
            }
            if let Some(lsn) = published.and_then(|slots| slots.get(name)).and_then(serde_json::Value::as_u64) {
                sql::advance_slot(&mut conn, name, lsn).await?;
            }
        }
        let segment_size = match self.pg.keeps_logical_slots(dynamic) {
            true => Some(sql::wal_segment_size(&mut conn).await?),
            false => None,
        };
        self.release(conn);
        // Logical slot failover before 17, and from 17 on a cascading
        // replica (elsewhere PostgreSQL keeps the copies,
        // `sync_replication_slots`, but its sync worker reads only from the
        // primary): as Patroni, each permanent logical slot the leader has
        // is copied from its `pg_replslot` (a restart loads it), then moved
        // along to the position the leader publishes, which its consumer has
        // confirmed; never further, so that a consumer continues after a
        // failover with nothing missing.
        // Not behind a `nostream` member either: its feedback, which keeps
        // the catalog rows the copies need, would never reach the primary.
        let upstream_streams = self
            .config
            .tags
            .replicatefrom
            .as_deref()
            .and_then(|from| view.member(from))
            .is_none_or(|m| !m.data.known_tags().nostream);
        let own_copies = !self.pg.postgres_syncs_slots();
        if let (Some(segment_size), true) = (segment_size, upstream_streams) {
            let oldest_wal = self.pg.oldest_wal(segment_size)?;
            let mut missing = Vec::new();
            for (name, permanent) in &dynamic.slots {
                let pgwarden_config::PermanentSlot::Logical { database, plugin } = permanent else { continue };
                let Some(lsn) = published.and_then(|slots| slots.get(name)).and_then(serde_json::Value::as_u64) else {
                    continue;
                };
                match existing.iter().find(|s| s.name == *name) {
                    None if own_copies && !members.contains(name) => missing.push(name.clone()),
                    // PostgreSQL's copy from before this replica cascaded:
                    // its sync worker no longer moves it and nothing else
                    // may (nor drop it): replaced by a fresh copy.
                    Some(found) if found.synced && own_copies => missing.push(name.clone()),
                    Some(found) if found.synced => {}
                    // A copy of pgwarden's that no consumer could decode
                    // from here: dropped, and copied again once the
                    // leader's slot has moved past this replica's oldest WAL.
                    Some(found) if same_slot(permanent, found) && !found.active && undecodable(found, oldest_wal) => {
                        warn!(
                            slot = name,
                            restart_lsn = found.restart_lsn.map(|l| ha_core::Lsn(l).to_string()),
                            oldest_wal = oldest_wal.map(|l| ha_core::Lsn(l).to_string()),
                            lost = found.lost,
                            "this logical slot copy begins before the WAL this replica has: dropping it, to be \
                             copied again once the leader's slot has moved past that"
                        );
                        let mut there = self.connect_database(database).await?;
                        let dropped = sql::drop_slot(&mut there, name).await;
                        sql::close(there).await;
                        dropped?;
                        if own_copies {
                            missing.push(name.clone());
                        }
                    }
                    // A copy of pgwarden's keeps moving, also once PostgreSQL
                    // keeps the others (its sync worker leaves this name alone).
                    Some(found) if same_slot(permanent, found) && !found.active && found.position < Some(lsn) => {
                        let mut there = self.connect_database(database).await?;
                        let advanced = sql::advance_logical_slot(&mut there, name, lsn).await;
                        // Copied when the leader's slot still began before
                        // this replica's oldest WAL: it can never move, and
                        // could not serve after a failover. As Patroni:
                        // copied afresh.
                        let stale = advanced.as_ref().is_err_and(sql::wal_removed);
                        if stale {
                            warn!(slot = name, "the WAL this slot copy starts from is gone here: copying it afresh");
                            let dropped = sql::drop_slot(&mut there, name).await;
                            sql::close(there).await;
                            dropped?;
                            missing.push(name.clone());
                        } else {
                            sql::close(there).await;
                            advanced.with_context(|| format!("plugin {plugin}"))?;
                        }
                    }
                    _ => {}
                }
            }
            if !missing.is_empty() {
                self.copy_logical_slots(view, dynamic, &missing).await?;
            }
        }
        self.slots.replica_checked = Some(Instant::now());
        Ok(())
    }

    /// `failsafe_mode` with etcd out of reach, on the leader: the slots of
    /// members that stream from another (`replicatefrom`) are moved along
    /// to the positions they gave with their promises, as their member keys
    /// would move them. (The leader's rounds of calls carry its own slots'
    /// positions: `failsafe::keep_running`.)
    pub(super) async fn failsafe_member_slots(&mut self, obs: &Observed) -> anyhow::Result<()> {
        let running = self.local.borrow().sql.as_ref().map(|s| s.in_recovery);
        if obs.holds_leader && running == Some(false) {
            if !self.failsafe_plan.borrow().enabled {
                return Ok(());
            }
            // Left inactive here: moved along to the position it gave with
            // its promise, as the member key's would be.
            let members = self.failsafe.lock().await.member_positions.clone();
            if members.is_empty() {
                return Ok(());
            }
            let mut conn = self.connect().await?;
            for (member, lsn) in &members {
                if let Err(e) = sql::advance_slot(&mut conn, &slot_name(member), *lsn).await {
                    warn!("failsafe: {e:#}");
                }
            }
            self.release(conn);
        }
        Ok(())
    }

    /// `failsafe_mode` with etcd out of reach, where no `status` key carries
    /// the leader's slot positions: a replica that promised the leader moves
    /// its copies (inactive, behind) along to what the leader's last call
    /// carried, as Patroni's failsafe does. Run first in a tick (a call
    /// wakes the loop), before the etcd read that may wait out its timeout.
    pub(super) async fn follow_failsafe_slots(&mut self) -> anyhow::Result<()> {
        if self.local.borrow().sql.as_ref().map(|s| s.in_recovery) != Some(true) {
            return Ok(());
        }
        let (leader, leader_url, positions) = {
            let failsafe = self.failsafe.lock().await;
            match failsafe.promised_to(election::BootInstant::now()) {
                Some(leader) => (leader.to_string(), failsafe.leader_conn_url.clone(), failsafe.leader_slots.clone()),
                None => return Ok(()),
            }
        };
        if positions.is_empty() {
            return Ok(());
        }
        let mut conn = self.connect().await?;
        let existing = sql::slots(&mut conn).await;
        let existing = match existing {
            Ok(existing) => existing,
            Err(e) => {
                self.release(conn);
                return Err(e);
            }
        };
        // PostgreSQL's own copies (`synced`) are its sync worker's to move.
        let behind = |slot: &&sql::Slot| {
            !slot.active
                && !slot.synced
                && positions.get(&slot.name).is_some_and(|lsn| slot.position.is_none_or(|p| p < *lsn))
        };
        let mut result = Ok(());
        let mut stale = Vec::new();
        for slot in existing.iter().filter(behind) {
            let lsn = positions[&slot.name];
            let advanced = match (slot.kind.as_str(), &slot.database) {
                ("physical", _) => sql::advance_slot(&mut conn, &slot.name, lsn).await,
                ("logical", Some(database)) => match self.connect_database(database).await {
                    Ok(mut there) => {
                        let advanced = sql::advance_logical_slot(&mut there, &slot.name, lsn).await;
                        sql::close(there).await;
                        advanced
                    }
                    Err(e) => Err(e),
                },
                _ => Ok(()),
            };
            match advanced {
                // As with etcd: a copy whose WAL is gone here is copied afresh.
                Err(e) if sql::wal_removed(&e) => stale.push(slot.name.clone()),
                Err(e) => {
                    result = Err(e.context(format!("move slot {} along to the failsafe leader's position", slot.name)));
                    break;
                }
                Ok(()) => {}
            }
        }
        // From the leader itself, and only by a replica that streams from
        // it: a cascading one could not resolve its own upstream's address
        // (its key) to keep that password beside the leader's.
        let from_leader = self.upstream.as_deref().is_none_or(|u| u == leader);
        let host_port = dcs::MemberData { conn_url: leader_url, ..Default::default() }.host_port();
        let copy = match (stale.is_empty(), from_leader, host_port) {
            (false, true, Some((host, port))) => Some(Upstream { member: leader, host, port }),
            _ => None,
        };
        if copy.is_some() {
            for name in &stale {
                warn!(slot = name, "the WAL this slot copy starts from is gone here: copying it afresh");
                if let Err(e) = sql::drop_slot(&mut conn, name).await {
                    result = result.and(Err(e));
                }
            }
        }
        self.release(conn);
        result?;
        match copy {
            Some(upstream) => self.copy_logical_slots_from(&upstream, None, &stale, |_| true).await,
            None => Ok(()),
        }
    }

    /// A connection to `database` on the local PostgreSQL (a logical slot's).
    async fn connect_database(&self, database: &str) -> anyhow::Result<sqlx::postgres::PgConnection> {
        sql::connect_to(&self.config, &self.pg.local, self.pg.port, Duration::from_secs(5), database).await
    }

    /// Copies the leader's logical slots `names` into this replica: their
    /// state files are read on the leader and written into this data
    /// directory's `pg_replslot` while PostgreSQL is stopped; it starts
    /// again as the same replica and loads them.
    async fn copy_logical_slots(
        &mut self,
        view: &ClusterView,
        dynamic: &DynamicConfig,
        names: &[String],
    ) -> anyhow::Result<()> {
        let leader = view.leader.as_ref().context("no leader to copy logical slots from")?;
        let upstream = self.upstream_of(view, &leader.name)?;
        // The copy reads from the leader; the WAL receiver, after the
        // restart below, connects to this replica's own upstream (another
        // replica when it cascades): the file must serve both.
        let streaming = self.upstream.clone().filter(|u| *u != leader.name).map(|u| self.upstream_of(view, &u));
        let streaming = match &streaming {
            Some(Ok(streaming)) => Some(streaming),
            _ => None,
        };
        let wanted = |state: &sql::SlotState| {
            let wanted = pgwarden_config::PermanentSlot::Logical {
                database: state.database.clone(),
                plugin: state.plugin.clone(),
            };
            dynamic.slots.get(&state.name) == Some(&wanted)
        };
        self.copy_logical_slots_from(&upstream, streaming, names, wanted).await
    }

    /// [`Agent::copy_logical_slots`] from `leader`, of the slots `keep`
    /// accepts; `streaming` is this replica's own upstream when it is
    /// another member (the password file serves both).
    async fn copy_logical_slots_from(
        &mut self,
        leader: &Upstream,
        streaming: Option<&Upstream>,
        names: &[String],
        keep: impl Fn(&sql::SlotState) -> bool,
    ) -> anyhow::Result<()> {
        match streaming {
            Some(streaming) => self.pg.write_pgpass_for(&[streaming, leader])?,
            None => self.pg.write_pgpass(Some(leader))?,
        }
        let states: Vec<sql::SlotState> =
            self.pg.logical_slot_states(leader, names).await?.into_iter().filter(|state| keep(state)).collect();
        if states.is_empty() {
            return Ok(());
        }
        let mut conn = self.connect().await?;
        let segment_size = sql::wal_segment_size(&mut conn).await;
        self.release(conn);
        let segment_size = segment_size?;
        // A copy needs the WAL from the leader's restart_lsn on, here; until
        // the leader's slot has moved past this replica's oldest WAL (its
        // consumer confirming), a copy could not serve after a failover.
        let oldest_wal = self.pg.oldest_wal(segment_size)?;
        let (states, early): (Vec<_>, Vec<_>) =
            states.into_iter().partition(|state| oldest_wal.is_none_or(|oldest| state.restart_lsn >= oldest));
        for state in &early {
            self.slot_waits(&state.name, state.restart_lsn, oldest_wal.unwrap_or_default());
        }
        if states.is_empty() {
            return Ok(());
        }
        let slots: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
        info!(
            ?slots,
            leader = leader.member,
            "copying the leader's logical slots: restarting this replica to load them"
        );
        self.pg.stop(StopMode::Fast).await?;
        let written = states.iter().try_for_each(|state| self.pg.write_slot_state(&state.name, &state.state));
        self.pg.start().await?;
        written?;
        self.await_local("answer as a replica", |l| l.sql.as_ref().is_some_and(|s| s.in_recovery)).await?;
        // The stop's restartpoint may have removed WAL the copies begin in
        // (nothing held it before they were loaded): such a copy is dropped
        // at once, not left to fail its consumer after a failover.
        let oldest_wal = self.pg.oldest_wal(segment_size)?;
        let (gone, loaded): (Vec<_>, Vec<_>) =
            states.iter().partition(|state| oldest_wal.is_some_and(|oldest| state.restart_lsn < oldest));
        for state in loaded {
            self.slots.waiting.remove(&state.name);
        }
        for state in gone {
            let oldest = oldest_wal.unwrap_or_default();
            warn!(
                slot = state.name,
                restart_lsn = %ha_core::Lsn(state.restart_lsn),
                oldest_wal = %ha_core::Lsn(oldest),
                "the WAL this slot copy begins in was removed as this replica restarted: dropping the copy"
            );
            let mut there = self.connect_database(&state.database).await?;
            let dropped = sql::drop_slot(&mut there, &state.name).await;
            sql::close(there).await;
            dropped?;
            self.slot_waits(&state.name, state.restart_lsn, oldest);
        }
        Ok(())
    }

    /// `name` is not copied yet: the leader's slot begins at `restart_lsn`,
    /// before this replica's oldest WAL (`oldest`). Said once per `oldest`.
    fn slot_waits(&mut self, name: &str, restart_lsn: u64, oldest: u64) {
        if self.slots.waiting.insert(name.to_string(), oldest) != Some(oldest) {
            info!(
                slot = name,
                restart_lsn = %ha_core::Lsn(restart_lsn),
                oldest_wal = %ha_core::Lsn(oldest),
                "not copying the leader's logical slot yet: it begins before the oldest WAL this replica has, \
                 so a copy could not serve its consumer; copied once the consumer has moved the leader's slot \
                 past that position"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_slots_are_created_and_a_departed_members_slot_dropped_after_the_ttl() {
        let mut keeper = SlotKeeper::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let plan = keeper.plan(&names(&["b", "c"]), &names(&["b", "old"]), t0, ttl);
        assert_eq!(plan, SlotPlan { create: names(&["c"]), drop: vec![] });
        let plan =
            keeper.plan(&names(&["b", "c"]), &names(&["b", "c", "old"]), t0 + ttl - Duration::from_millis(1), ttl);
        assert!(plan.drop.is_empty(), "not yet: {plan:?}");
        let plan = keeper.plan(&names(&["b", "c"]), &names(&["b", "c", "old"]), t0 + ttl, ttl);
        assert_eq!(plan.drop, names(&["old"]));
        keeper.dropped("old");
        assert!(keeper.absent_since.is_empty());
    }

    #[test]
    fn a_member_back_within_the_ttl_keeps_its_slot_and_its_clock_starts_over() {
        let mut keeper = SlotKeeper::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        keeper.plan(&names(&[]), &names(&["b"]), t0, ttl);
        keeper.plan(&names(&["b"]), &names(&["b"]), t0 + Duration::from_secs(20), ttl);
        let plan = keeper.plan(&names(&[]), &names(&["b"]), t0 + Duration::from_secs(40), ttl);
        assert!(plan.drop.is_empty(), "gone again only since 40 s: {plan:?}");
        let plan = keeper.plan(&names(&[]), &names(&["b"]), t0 + Duration::from_secs(70), ttl);
        assert_eq!(plan.drop, names(&["b"]));
    }

    #[test]
    fn a_replica_looks_at_once_then_every_loop_wait() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut keeper = SlotKeeper::default();
        assert!(keeper.replica_check_due(t0, every));
        keeper.replica_checked = Some(t0);
        assert!(!keeper.replica_check_due(t0 + Duration::from_secs(9), every));
        assert!(keeper.replica_check_due(t0 + every, every));
    }

    #[test]
    fn permanent_and_ignored_slots_are_kept_and_compared_by_attributes() {
        let dynamic = DynamicConfig {
            slots: [
                ("archive".to_string(), pgwarden_config::PermanentSlot::Physical),
                (
                    "cdc".to_string(),
                    pgwarden_config::PermanentSlot::Logical { database: "app".into(), plugin: "pgoutput".into() },
                ),
            ]
            .into(),
            ignore_slots: vec![pgwarden_config::SlotMatcher { name: Some("manual".into()), ..Default::default() }],
            ..DynamicConfig::default()
        };
        let slot = |name: &str, kind: &str, database: Option<&str>, plugin: Option<&str>| sql::Slot {
            name: name.into(),
            kind: kind.into(),
            database: database.map(String::from),
            plugin: plugin.map(String::from),
            active: false,
            position: None,
            xmin: None,
            synced: false,
            restart_lsn: Some(0x0300_0028),
            lost: false,
        };
        assert!(kept(&dynamic, &slot("archive", "physical", None, None)));
        assert!(kept(&dynamic, &slot("manual", "physical", None, None)));
        assert!(!kept(&dynamic, &slot("stray", "physical", None, None)));
        let cdc = &dynamic.slots["cdc"];
        assert!(same_slot(cdc, &slot("cdc", "logical", Some("app"), Some("pgoutput"))));
        assert!(!same_slot(cdc, &slot("cdc", "logical", Some("app"), Some("wal2json"))));
        assert!(!same_slot(cdc, &slot("cdc", "physical", None, None)));
    }

    #[test]
    fn a_member_relays_feedback_for_a_downstream_member_that_keeps_logical_copies() {
        let member = |name: &str, tags: serde_json::Value| dcs::MemberEntry {
            name: name.into(),
            data: dcs::MemberData { tags: tags.as_object().cloned().unwrap_or_default(), ..Default::default() },
            lease: 0,
        };
        let logical = DynamicConfig {
            slots: [(
                "cdc".to_string(),
                pgwarden_config::PermanentSlot::Logical { database: "app".into(), plugin: "pgoutput".into() },
            )]
            .into(),
            ..DynamicConfig::default()
        };
        let view = |members: Vec<dcs::MemberEntry>| ClusterView {
            leader: Some(dcs::LeaderView { name: "a".into(), lease: 1, mod_revision: 1 }),
            members,
            ..ClusterView::default()
        };
        // a leads; b (nofailover) streams from a; c from b; d from c.
        let chain = |c_tags: serde_json::Value| {
            view(vec![
                member("a", serde_json::json!({})),
                member("b", serde_json::json!({"nofailover": true})),
                member("c", c_tags),
            ])
        };
        let c_may_lead = chain(serde_json::json!({"replicatefrom": "b"}));
        assert!(relays_feedback(&c_may_lead, "b", &logical));
        assert!(!relays_feedback(&c_may_lead, "c", &logical), "nobody streams from c");
        assert!(!relays_feedback(&c_may_lead, "a", &logical), "the leader");
        assert!(!relays_feedback(&c_may_lead, "b", &DynamicConfig::default()), "no logical slot configured");
        let no_slots = DynamicConfig { use_slots: false, ..logical.clone() };
        assert!(!relays_feedback(&c_may_lead, "b", &no_slots), "use_slots off: no copies anywhere");
        // Neither c (nofailover) nor a nostream member keeps copies...
        let c_nofailover = chain(serde_json::json!({"replicatefrom": "b", "nofailover": "true"}));
        assert!(!relays_feedback(&c_nofailover, "b", &logical));
        let c_nostream = chain(serde_json::json!({"replicatefrom": "b", "nostream": true}));
        assert!(!relays_feedback(&c_nostream, "b", &logical));
        // ...but one further down, through c, does.
        let mut deeper = c_nofailover.clone();
        deeper.members.push(member("d", serde_json::json!({"replicatefrom": "c"})));
        assert!(relays_feedback(&deeper, "b", &logical) && relays_feedback(&deeper, "c", &logical));
        // Tags that loop end the walk.
        let looped = view(vec![
            member("b", serde_json::json!({"replicatefrom": "c", "nofailover": true})),
            member("c", serde_json::json!({"replicatefrom": "b", "nofailover": true})),
        ]);
        assert!(!relays_feedback(&looped, "b", &logical));
    }

    #[test]
    fn a_copy_is_undecodable_when_its_wal_is_gone_here() {
        let copy = |restart_lsn: Option<u64>, lost: bool| sql::Slot {
            name: "cdc".into(),
            kind: "logical".into(),
            database: Some("app".into()),
            plugin: Some("test_decoding".into()),
            active: false,
            position: Some(0x0400_0000),
            xmin: None,
            synced: false,
            restart_lsn,
            lost,
        };
        // The copy begins in segment 2; this replica's WAL, in segment 3.
        assert!(undecodable(&copy(Some(0x0200_0028), false), Some(0x0300_0000)));
        assert!(!undecodable(&copy(Some(0x0300_0000), false), Some(0x0300_0000)), "its first byte is there");
        assert!(!undecodable(&copy(Some(0x0200_0028), false), None), "no WAL listed: nothing to say");
        assert!(undecodable(&copy(Some(0x0500_0000), true), Some(0x0300_0000)), "wal_status lost");
        assert!(undecodable(&copy(None, false), Some(0x0300_0000)), "invalidated: no restart_lsn");
    }
}
