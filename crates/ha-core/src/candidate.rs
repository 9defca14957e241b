//! Who may take the leader key over: the one rule used by `decide` (the
//! race, a named candidate, the rivals a candidate waits for), by the
//! leader's switchover check and pick, and by the controller before it
//! writes a switchover or failover request (DESIGN invariant 4).

use std::fmt;

/// The cluster's facts the rule reads.
#[derive(Debug, Clone, Copy)]
pub struct CandidateRules<'a> {
    /// `synchronous_mode` is on.
    pub sync_mode: bool,
    /// The standbys the `sync` key lists.
    pub sync_standbys: &'a [String],
    /// The leader the `sync` key names (`None`: the mode was never active
    /// under a leader, so it restricts nobody, as in Patroni).
    pub sync_leader: Option<&'a str>,
    /// The highest timeline the `history` key records a promotion from.
    pub history_timeline: Option<u64>,
    /// The last leader's WAL position (`status.optime`, or the leader's own).
    pub cluster_optime: Option<u64>,
    pub maximum_lag_on_failover: u64,
    /// `failsafe_mode`'s members (the `failsafe` key; empty: the mode is off
    /// or the key lists nobody, and restricts nobody).
    pub failsafe_members: &'a [String],
}

/// A member considered for taking over, as it reports itself.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    pub name: &'a str,
    pub nofailover: bool,
    /// `tags.failover_priority`: ranks members as far ahead (0 is the
    /// lowest; `nofailover` alone says never).
    pub priority: u32,
    /// Its agent reports it running with data.
    pub running: bool,
    /// Its fencer acknowledges.
    pub can_lead: bool,
    pub timeline: Option<u64>,
    /// Its WAL position (`None`: its PostgreSQL has not given one yet).
    pub lsn: Option<u64>,
}

/// Why a member may not take over, checked in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    /// Tagged `nofailover` (also set by `failover_priority: 0` alone).
    NeverLeads,
    /// Synchronous mode is active and the `sync` key neither lists it nor
    /// names it leader: it may miss acknowledged commits.
    NotSynchronous,
    /// It does not run (with data), as far as its agent says.
    NotRunning,
    /// Its fencer does not acknowledge: nobody would fence it as primary.
    FencerSilent,
    /// Its timeline ended with a promotion the `history` key records:
    /// promoting it would fork a second history.
    EndedTimeline { timeline: u64, ended: u64 },
    /// It has not given a WAL position yet.
    NoPosition,
    /// It is further behind the last leader than `maximum_lag_on_failover`.
    Lagging { lag: u64, limit: u64 },
    /// `failsafe_mode` is on and the `failsafe` key does not list it: a
    /// leader cut off from etcd would not have asked it to stay out.
    NotInFailsafe,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeverLeads => f.write_str("tagged nofailover (or failover_priority 0)"),
            Self::NotSynchronous => f.write_str("not a synchronous standby"),
            Self::NotRunning => f.write_str("not running"),
            Self::FencerSilent => f.write_str("its fencer does not acknowledge"),
            Self::EndedTimeline { timeline, ended } => {
                write!(f, "on timeline {timeline}, which ended with a promotion from timeline {ended}")
            }
            Self::NoPosition => f.write_str("no WAL position yet"),
            Self::Lagging { lag, limit } => {
                write!(f, "{lag} bytes behind the last leader (maximum_lag_on_failover {limit})")
            }
            Self::NotInFailsafe => f.write_str("not listed in the failsafe key (failsafe_mode)"),
        }
    }
}

impl CandidateRules<'_> {
    /// In synchronous mode, once active under a leader, only a standby the
    /// `sync` key lists, or that leader, may take over.
    pub fn sync_allows(&self, name: &str) -> bool {
        !self.sync_mode
            || self.sync_leader.is_none()
            || self.sync_standbys.iter().any(|s| s == name)
            || self.sync_leader == Some(name)
    }

    /// With `failsafe_mode`, only a member the `failsafe` key lists may take
    /// over (Patroni's rule): the leader, cut off from etcd, asks those.
    pub fn failsafe_allows(&self, name: &str) -> bool {
        self.failsafe_members.is_empty() || self.failsafe_members.iter().any(|m| m == name)
    }

    /// A timeline the `history` key records as ended.
    pub fn timeline_ended(&self, timeline: u64) -> bool {
        self.history_timeline.is_some_and(|ended| timeline <= ended)
    }

    /// How far `lsn` is behind the last leader (0 when unknown).
    pub fn lag(&self, lsn: u64) -> u64 {
        self.cluster_optime.map_or(0, |optime| optime.saturating_sub(lsn))
    }

    /// Why `c` may not take over (`None`: it may).
    pub fn problem(&self, c: &Contender<'_>) -> Option<Ineligible> {
        if c.nofailover {
            return Some(Ineligible::NeverLeads);
        }
        if !self.sync_allows(c.name) {
            return Some(Ineligible::NotSynchronous);
        }
        if !self.failsafe_allows(c.name) {
            return Some(Ineligible::NotInFailsafe);
        }
        if !c.running {
            return Some(Ineligible::NotRunning);
        }
        if !c.can_lead {
            return Some(Ineligible::FencerSilent);
        }
        if let Some(timeline) = c.timeline.filter(|tl| self.timeline_ended(*tl)) {
            return Some(Ineligible::EndedTimeline { timeline, ended: self.history_timeline.unwrap_or_default() });
        }
        let Some(lsn) = c.lsn else {
            return Some(Ineligible::NoPosition);
        };
        let lag = self.lag(lsn);
        (lag > self.maximum_lag_on_failover).then_some(Ineligible::Lagging { lag, limit: self.maximum_lag_on_failover })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sync: &[String]) -> CandidateRules<'_> {
        CandidateRules {
            sync_mode: true,
            sync_standbys: sync,
            sync_leader: Some("a"),
            history_timeline: Some(2),
            cluster_optime: Some(1000),
            maximum_lag_on_failover: 100,
            failsafe_members: &[],
        }
    }

    fn fit(name: &str) -> Contender<'_> {
        Contender {
            name,
            nofailover: false,
            priority: 1,
            running: true,
            can_lead: true,
            timeline: Some(3),
            lsn: Some(950),
        }
    }

    #[test]
    fn each_condition_bars_a_candidate_and_says_which() {
        let sync = vec!["b".to_string()];
        let r = rules(&sync);
        assert_eq!(r.problem(&fit("b")), None);
        assert_eq!(r.problem(&fit("a")), None, "the leader the sync key names may take over");
        assert_eq!(r.problem(&Contender { nofailover: true, ..fit("b") }), Some(Ineligible::NeverLeads));
        // Priority 0 with an explicit `nofailover: false` (Patroni): it may
        // lead, ranked below the others.
        assert_eq!(r.problem(&Contender { priority: 0, ..fit("b") }), None);
        assert_eq!(r.problem(&fit("c")), Some(Ineligible::NotSynchronous));
        assert_eq!(r.problem(&Contender { running: false, ..fit("b") }), Some(Ineligible::NotRunning));
        assert_eq!(r.problem(&Contender { can_lead: false, ..fit("b") }), Some(Ineligible::FencerSilent));
        assert_eq!(
            r.problem(&Contender { timeline: Some(2), ..fit("b") }),
            Some(Ineligible::EndedTimeline { timeline: 2, ended: 2 })
        );
        assert_eq!(r.problem(&Contender { lsn: None, ..fit("b") }), Some(Ineligible::NoPosition));
        assert_eq!(
            r.problem(&Contender { lsn: Some(899), ..fit("b") }),
            Some(Ineligible::Lagging { lag: 101, limit: 100 })
        );
        assert_eq!(r.problem(&Contender { lsn: Some(900), ..fit("b") }), None, "exactly at the limit is within it");
    }

    #[test]
    fn a_sync_key_without_a_leader_or_sync_mode_off_restricts_nobody() {
        let sync = vec!["b".to_string()];
        let never_active = CandidateRules { sync_leader: None, ..rules(&sync) };
        assert_eq!(never_active.problem(&fit("c")), None);
        let off = CandidateRules { sync_mode: false, ..rules(&sync) };
        assert_eq!(off.problem(&fit("c")), None);
    }

    #[test]
    fn with_failsafe_mode_only_a_listed_member_may_take_over() {
        let sync = vec!["b".to_string()];
        let listed = vec!["a".to_string(), "b".to_string()];
        let r = CandidateRules { failsafe_members: &listed, ..rules(&sync) };
        assert_eq!(r.problem(&fit("b")), None);
        let unlisted = CandidateRules { failsafe_members: &["a".to_string()], ..rules(&sync) };
        assert_eq!(unlisted.problem(&fit("b")), Some(Ineligible::NotInFailsafe));
        assert_eq!(rules(&sync).problem(&fit("b")), None, "no failsafe key: nobody barred");
    }

    #[test]
    fn an_unknown_timeline_or_optime_bars_nobody() {
        let r = CandidateRules { cluster_optime: None, ..rules(&[]) };
        let c = Contender { timeline: None, lsn: Some(0), ..fit("a") };
        assert_eq!(r.problem(&c), None);
    }
}
