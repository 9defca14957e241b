//! Replication slots: a leader keeps one per member (dropping a departed member's after
//! `member_slots_ttl`); a replica drops or advances the member slots left from a term as primary.

use super::*;

/// When each slot of a departed member was first seen without its member,
/// and when a replica last looked for member slots left from a term as primary.
#[derive(Debug, Default)]
pub(super) struct SlotKeeper {
    pub(super) absent_since: HashMap<String, Instant>,
    pub(super) replica_checked: Option<Instant>,
}

/// What a leader does to its slots this tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SlotPlan {
    /// Members without a slot yet.
    pub(super) create: Vec<String>,
    /// Slots whose member has been gone for `member_slots_ttl`.
    pub(super) drop: Vec<String>,
}

/// How often a replica looks for member slots left from a term as primary.
const REPLICA_CHECK_EVERY: Duration = Duration::from_secs(60);

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

    /// A replica looks again: at its start as a replica, then once a minute.
    pub(super) fn replica_check_due(&self, now: Instant) -> bool {
        self.replica_checked.is_none_or(|at| now.duration_since(at) >= REPLICA_CHECK_EVERY)
    }
}

impl Agent {
    pub(super) async fn manage_slots(&mut self, view: &ClusterView, dynamic: &DynamicConfig) -> anyhow::Result<()> {
        let wanted: Vec<String> =
            view.members.iter().filter(|m| m.name != self.config.name).map(|m| slot_name(&m.name)).collect();
        let mut conn = self.connect().await?;
        let existing = sql::physical_slots(&mut conn).await?;
        let plan = self.slots.plan(&wanted, &existing, Instant::now(), dynamic.member_slots_ttl);
        for slot in &plan.create {
            info!(slot, "creating a replication slot");
            sql::create_slot(&mut conn, slot).await?;
        }
        for slot in &plan.drop {
            info!(slot, "dropping the slot of a member gone longer than member_slots_ttl");
            sql::drop_slot(&mut conn, slot).await?;
            self.slots.dropped(slot);
        }
        sql::close(conn).await;
        Ok(())
    }

    /// On a replica: drops the inactive member slots it kept from a term as
    /// primary (they pin WAL forever; the next leader creates its own).
    /// Checked when the replica starts and then once a minute.
    pub(super) async fn drop_replica_slots(&mut self, view: &ClusterView, local: &Local) -> anyhow::Result<()> {
        if !local.sql.as_ref().is_some_and(|s| s.in_recovery) {
            self.slots.replica_checked = None;
            return Ok(());
        }
        if !self.slots.replica_check_due(Instant::now()) {
            return Ok(());
        }
        let mut conn = self.connect().await?;
        let stale = sql::inactive_physical_slots(&mut conn).await?;
        let members: Vec<String> = view.members.iter().map(|m| slot_name(&m.name)).collect();
        for slot in stale.iter().filter(|s| members.contains(s)) {
            if self.led_here {
                info!(slot, "dropping a member slot kept from a term as primary");
                sql::drop_slot(&mut conn, slot).await?;
            } else {
                // A replica adopted from Patroni keeps the member slots Patroni
                // kept on it (ready for a failover to this node); they are
                // moved along with replay, as Patroni does, so that they do
                // not pin WAL here.
                sql::advance_slot_to_replay(&mut conn, slot).await?;
            }
        }
        sql::close(conn).await;
        self.slots.replica_checked = Some(Instant::now());
        Ok(())
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
    fn a_replica_looks_at_once_then_once_a_minute() {
        let t0 = Instant::now();
        let mut keeper = SlotKeeper::default();
        assert!(keeper.replica_check_due(t0));
        keeper.replica_checked = Some(t0);
        assert!(!keeper.replica_check_due(t0 + Duration::from_secs(59)));
        assert!(keeper.replica_check_due(t0 + REPLICA_CHECK_EVERY));
    }
}
