//! The HA decision: a pure function from one observed snapshot to the next
//! action. The agent builds the snapshot, calls [`decide`], and executes at
//! most one irreversible action per tick; then it observes again.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> NoData
//!     NoData --> Bootstrap: no initialize key
//!     NoData --> Clone: a leader to clone from
//!     Bootstrap --> Leader
//!     Clone --> Replica: StartReplica
//!     Replica --> Leader: AcquireLeader, then Promote
//!     Leader --> Replica: Demote (another holds the key)
//!     Stopped --> Replica: StartReplica
//!     Stopped --> Leader: StartPrimary (key held)
//! ```

use std::fmt;

/// The local data directory, as read from `pg_controldata` and the signal files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    /// The database system identifier.
    pub sysid: String,
    /// The data directory was last a primary (no standby signal file).
    pub was_primary: bool,
}

/// What the local postmaster is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgRun {
    Stopped,
    /// Started or stopping, not yet answering queries.
    Transitioning,
    Primary {
        lsn: u64,
        timeline: u64,
    },
    /// `upstream` is the member named in `primary_conninfo` (`None`: no upstream).
    Replica {
        lsn: u64,
        timeline: u64,
        upstream: Option<String>,
    },
}

/// Another member, as its agent (or its key in etcd) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// It takes part: its agent answers and its PostgreSQL has data.
    pub running: bool,
    /// Its WAL position; `None` while its PostgreSQL does not answer yet
    /// (a running peer without a position makes a candidate wait).
    pub lsn: Option<u64>,
    pub nofailover: bool,
    pub clonefrom: bool,
    /// It advertises a PostgreSQL address to clone or stream from.
    pub reachable: bool,
}

/// One instant's view of the world, built by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub me: String,
    /// `None`: no initialised data directory.
    pub data: Option<DataDir>,
    pub pg: PgRun,
    /// The `initialize` key: `None` absent, `Some("")` while a bootstrap runs.
    pub initialize: Option<String>,
    /// Holder of the leader key.
    pub leader: Option<String>,
    /// The renewal task has proven the leader key ours and its deadline has not passed.
    pub holds_leader: bool,
    pub peers: Vec<Peer>,
    pub nofailover: bool,
    /// The leader's last published WAL position (`status.optime`).
    pub cluster_optime: Option<u64>,
    pub maximum_lag_on_failover: u64,
}

/// What to do next. Every action is idempotent; the executor stops at the
/// first failure and the next tick observes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for `initialize`; the winner runs initdb, creates the roles,
    /// writes the cluster keys and takes the leader key.
    Bootstrap,
    /// Copy the data directory from `source` with pg_basebackup.
    Clone { source: String },
    /// Start PostgreSQL as a standby of `upstream` (`None`: recover only).
    StartReplica { upstream: Option<String> },
    /// Point a running standby at `upstream`.
    Follow { upstream: String },
    /// Take the leader key (create iff absent, or re-bind our own key).
    AcquireLeader,
    /// Start PostgreSQL as the primary; the leader key is held.
    StartPrimary,
    /// Promote the running standby; the leader key is held.
    Promote,
    /// Stop PostgreSQL at once (immediate shutdown): a primary without the key.
    Demote,
}

/// The decision of one tick: why, and what (nothing, or one action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reason: String,
    pub action: Option<Action>,
    /// The node must not take part: its data belongs to another cluster.
    /// Nothing is touched; the reason says why.
    pub refused: bool,
}

impl Decision {
    fn act(reason: impl Into<String>, action: Action) -> Self {
        Self { reason: reason.into(), action: Some(action), refused: false }
    }

    fn idle(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), action: None, refused: false }
    }

    fn refuse(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), action: None, refused: true }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Some(action) => write!(f, "{}: {action:?}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Whether this node may race for the leader key now: not tagged
/// `nofailover`, not lagging more than allowed behind the last leader, no
/// running, eligible peer is ahead of it (equal positions: the lower name),
/// and none is still to report its position.
pub fn is_best_candidate(obs: &Observed, my_lsn: u64) -> bool {
    if obs.nofailover {
        return false;
    }
    if let Some(optime) = obs.cluster_optime
        && optime.saturating_sub(my_lsn) > obs.maximum_lag_on_failover
    {
        return false;
    }
    obs.peers.iter().filter(|p| p.running && !p.nofailover).all(|peer| match peer.lsn {
        Some(lsn) if lsn > my_lsn => false,
        Some(lsn) if lsn == my_lsn => peer.name > obs.me,
        Some(_) => true,
        None => false,
    })
}

/// The member to clone from: a running peer tagged `clonefrom`, else the
/// leader once it advertises an address.
fn clone_source(obs: &Observed, leader: &str) -> Option<String> {
    let reachable = |p: &&Peer| p.running && p.reachable && p.name != obs.me;
    obs.peers
        .iter()
        .filter(reachable)
        .find(|p| p.clonefrom)
        .or_else(|| obs.peers.iter().filter(reachable).find(|p| p.name == leader))
        .map(|p| p.name.clone())
}

pub fn decide(obs: &Observed) -> Decision {
    // Data of another cluster: touch nothing.
    if let (Some(data), Some(cluster)) = (&obs.data, &obs.initialize)
        && !cluster.is_empty()
        && data.sysid != *cluster
    {
        return Decision::refuse(format!(
            "the data directory belongs to database system {}, but this cluster is {cluster}; \
             refusing to join (nothing was changed: move the data directory away to re-clone)",
            data.sysid
        ));
    }
    let leader_is_me = obs.leader.as_deref() == Some(obs.me.as_str());
    let other_leader = obs.leader.as_deref().filter(|l| *l != obs.me);

    if obs.holds_leader {
        return match &obs.pg {
            PgRun::Primary { .. } => Decision::idle("leader: running as primary"),
            PgRun::Replica { .. } => Decision::act("leader key held: promote", Action::Promote),
            PgRun::Stopped if obs.data.is_some() => {
                Decision::act("leader key held: start as primary", Action::StartPrimary)
            }
            PgRun::Stopped => Decision::idle("leader key held without data: waiting"),
            PgRun::Transitioning => Decision::idle("leader: PostgreSQL is starting or stopping"),
        };
    }

    if let PgRun::Primary { .. } = obs.pg {
        if leader_is_me {
            // Our own key on an older lease (the agent restarted): re-bind it.
            return Decision::act("running primary, own leader key on an old lease: re-bind", Action::AcquireLeader);
        }
        let holder = other_leader.map_or_else(|| "nobody".to_string(), str::to_string);
        return Decision::act(format!("running as primary while {holder} holds the leader key: fence"), Action::Demote);
    }

    let Some(_data) = &obs.data else {
        return match (&obs.initialize, other_leader) {
            (None, _) => Decision::act("no cluster yet: race to bootstrap it", Action::Bootstrap),
            (Some(id), _) if id.is_empty() => Decision::idle("another member is bootstrapping the cluster"),
            (Some(_), Some(leader)) => match clone_source(obs, leader) {
                Some(source) => Decision::act(format!("no data: clone from {source}"), Action::Clone { source }),
                None => {
                    Decision::idle(format!("no data: waiting for leader {leader} to advertise a running PostgreSQL"))
                }
            },
            (Some(_), None) => Decision::idle("no data and no leader to clone from: waiting"),
        };
    };

    if obs.initialize.is_none() {
        return Decision::idle("data directory present but the cluster has no initialize key: waiting");
    }

    match (&obs.pg, other_leader) {
        (PgRun::Transitioning, _) => Decision::idle("PostgreSQL is starting or stopping"),
        (PgRun::Stopped, Some(leader)) => Decision::act(
            format!("start as a replica of {leader}"),
            Action::StartReplica { upstream: Some(leader.to_string()) },
        ),
        (PgRun::Stopped, None) => Decision::act(
            "no leader: start read-only to learn the WAL position",
            Action::StartReplica { upstream: None },
        ),
        (PgRun::Replica { upstream, .. }, Some(leader)) if upstream.as_deref() != Some(leader) => {
            Decision::act(format!("follow the new leader {leader}"), Action::Follow { upstream: leader.to_string() })
        }
        (PgRun::Replica { .. }, Some(leader)) => Decision::idle(format!("replica streaming from {leader}")),
        (PgRun::Replica { lsn, .. }, None) if is_best_candidate(obs, *lsn) => {
            Decision::act("no leader and I am the best candidate: take the leader key", Action::AcquireLeader)
        }
        (PgRun::Replica { .. }, None) => Decision::idle("no leader: waiting for a better candidate"),
        // A primary never gets here (it returned above); stay idle if it did.
        (PgRun::Primary { .. }, _) => Decision::idle("running as primary"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Observed {
        Observed {
            me: "b".into(),
            data: Some(DataDir { sysid: "7".into(), was_primary: false }),
            pg: PgRun::Replica { lsn: 100, timeline: 1, upstream: Some("a".into()) },
            initialize: Some("7".into()),
            leader: Some("a".into()),
            holds_leader: false,
            peers: vec![],
            nofailover: false,
            cluster_optime: Some(100),
            maximum_lag_on_failover: 1 << 20,
        }
    }

    fn peer(name: &str, lsn: u64) -> Peer {
        Peer { name: name.into(), running: true, lsn: Some(lsn), nofailover: false, clonefrom: false, reachable: true }
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Observed, Option<Action>)> = vec![
            ("streaming replica of the leader idles", base(), None),
            (
                "no data, no cluster: bootstrap",
                Observed { data: None, pg: PgRun::Stopped, initialize: None, leader: None, ..base() },
                Some(Action::Bootstrap),
            ),
            (
                "no data while another bootstraps: wait",
                Observed { data: None, pg: PgRun::Stopped, initialize: Some(String::new()), leader: None, ..base() },
                None,
            ),
            (
                "no data, leader a: clone from a",
                Observed { data: None, pg: PgRun::Stopped, peers: vec![peer("a", 100)], ..base() },
                Some(Action::Clone { source: "a".into() }),
            ),
            ("no data, leader a not running yet: wait", Observed { data: None, pg: PgRun::Stopped, ..base() }, None),
            (
                "no data: clone from a clonefrom member",
                Observed {
                    data: None,
                    pg: PgRun::Stopped,
                    peers: vec![Peer { clonefrom: true, ..peer("c", 50) }],
                    ..base()
                },
                Some(Action::Clone { source: "c".into() }),
            ),
            (
                "stopped with data: start following the leader",
                Observed { pg: PgRun::Stopped, ..base() },
                Some(Action::StartReplica { upstream: Some("a".into()) }),
            ),
            (
                "replica of an old leader: follow the new one",
                Observed { leader: Some("c".into()), ..base() },
                Some(Action::Follow { upstream: "c".into() }),
            ),
            (
                "no leader, stopped: start read-only",
                Observed { pg: PgRun::Stopped, leader: None, ..base() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "no leader, most advanced replica: acquire",
                Observed { leader: None, peers: vec![peer("c", 90)], ..base() },
                Some(Action::AcquireLeader),
            ),
            (
                "no leader, a peer is ahead: wait",
                Observed { leader: None, peers: vec![peer("c", 101)], ..base() },
                None,
            ),
            (
                "no leader, equal position: the lower name races",
                Observed { leader: None, peers: vec![peer("a", 100)], ..base() },
                None,
            ),
            ("no leader, nofailover: never races", Observed { leader: None, nofailover: true, ..base() }, None),
            (
                "no leader, lagging beyond maximum_lag_on_failover: no race",
                Observed { leader: None, cluster_optime: Some(100 + (2 << 20)), ..base() },
                None,
            ),
            (
                "key held as replica: promote",
                Observed { leader: Some("b".into()), holds_leader: true, ..base() },
                Some(Action::Promote),
            ),
            (
                "key held, stopped: start as primary",
                Observed { leader: Some("b".into()), holds_leader: true, pg: PgRun::Stopped, ..base() },
                Some(Action::StartPrimary),
            ),
            (
                "primary while another holds the key: demote",
                Observed { pg: PgRun::Primary { lsn: 5, timeline: 1 }, ..base() },
                Some(Action::Demote),
            ),
            (
                "primary with no key at all: demote",
                Observed { pg: PgRun::Primary { lsn: 5, timeline: 1 }, leader: None, ..base() },
                Some(Action::Demote),
            ),
            (
                "primary with its own key on an old lease: re-bind",
                Observed { pg: PgRun::Primary { lsn: 5, timeline: 1 }, leader: Some("b".into()), ..base() },
                Some(Action::AcquireLeader),
            ),
        ];
        for (name, obs, expected) in cases {
            let decision = decide(&obs);
            assert_eq!(decision.action, expected, "{name}: {decision}");
            assert!(!decision.refused, "{name}");
        }
    }

    #[test]
    fn foreign_data_is_refused_and_untouched() {
        let obs = Observed { initialize: Some("8".into()), ..base() };
        let decision = decide(&obs);
        assert!(decision.refused);
        assert_eq!(decision.action, None);
        assert!(decision.reason.contains('7') && decision.reason.contains('8'), "{decision}");
    }

    fn arb_pg() -> impl Strategy<Value = PgRun> {
        let upstream =
            proptest::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())]);
        prop_oneof![
            Just(PgRun::Stopped),
            Just(PgRun::Transitioning),
            (0u64..200, 1u64..3).prop_map(|(lsn, timeline)| PgRun::Primary { lsn, timeline }),
            (0u64..200, 1u64..3, upstream).prop_map(|(lsn, timeline, upstream)| PgRun::Replica {
                lsn,
                timeline,
                upstream
            }),
        ]
    }

    fn arb_name() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())])
    }

    prop_compose! {
        fn arb_observed()(
            has_data in any::<bool>(),
            sysid in prop_oneof![Just("7".to_string()), Just("8".to_string())],
            was_primary in any::<bool>(),
            pg in arb_pg(),
            initialize in proptest::option::of(prop_oneof![Just(String::new()), Just("7".to_string()), Just("8".to_string())]),
            leader in arb_name(),
            holds in any::<bool>(),
            nofailover in any::<bool>(),
            peers in proptest::collection::vec((prop_oneof![Just("a"), Just("c")], any::<bool>(), proptest::option::of(0u64..200), any::<bool>()), 0..3),
            optime in proptest::option::of(0u64..300),
        ) -> Observed {
            // The shell reports the key held only when etcd names us.
            let holds_leader = holds && leader.as_deref() == Some("b");
            Observed {
                me: "b".into(),
                data: has_data.then_some(DataDir { sysid, was_primary }),
                pg: if has_data { pg } else { PgRun::Stopped },
                initialize,
                leader,
                holds_leader,
                peers: peers.into_iter().map(|(name, running, lsn, nofailover)| Peer {
                    name: name.into(), running, lsn, nofailover, clonefrom: false, reachable: true,
                }).collect(),
                nofailover,
                cluster_optime: optime,
                maximum_lag_on_failover: 50,
            }
        }
    }

    proptest! {
        #[test]
        fn becomes_primary_only_while_holding_the_key(obs in arb_observed()) {
            let d = decide(&obs);
            let makes_primary = matches!(d.action, Some(Action::Promote | Action::StartPrimary));
            prop_assert!(!makes_primary || obs.holds_leader, "{d}");
        }

        #[test]
        fn a_primary_without_the_key_fences_or_rebinds_its_own(obs in arb_observed()) {
            let d = decide(&obs);
            if matches!(obs.pg, PgRun::Primary { .. }) && !obs.holds_leader && !d.refused {
                let rebind = obs.leader.as_deref() == Some("b") && d.action == Some(Action::AcquireLeader);
                prop_assert!(d.action == Some(Action::Demote) || rebind, "{d}");
            }
        }

        #[test]
        fn foreign_data_is_never_touched(obs in arb_observed()) {
            let d = decide(&obs);
            let foreign = matches!((&obs.data, &obs.initialize), (Some(data), Some(id)) if !id.is_empty() && *id != data.sysid);
            prop_assert_eq!(d.refused, foreign);
            if foreign {
                prop_assert_eq!(d.action, None);
            }
        }

        #[test]
        fn nofailover_never_races(obs in arb_observed()) {
            let d = decide(&obs);
            if obs.nofailover && !matches!(obs.pg, PgRun::Primary { .. }) {
                prop_assert_ne!(d.action, Some(Action::AcquireLeader));
            }
        }

        #[test]
        fn bootstraps_only_an_uninitialised_cluster_from_empty_data(obs in arb_observed()) {
            let d = decide(&obs);
            if d.action == Some(Action::Bootstrap) {
                prop_assert!(obs.data.is_none() && obs.initialize.is_none());
            }
        }

        #[test]
        fn clones_only_into_an_empty_data_directory(obs in arb_observed()) {
            let d = decide(&obs);
            if matches!(d.action, Some(Action::Clone { .. })) {
                prop_assert!(obs.data.is_none());
            }
        }
    }
}
