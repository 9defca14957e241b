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
//!     Stopped --> Replica: StartReplica, or Rejoin (pg_rewind) on a newer timeline
//!     Stopped --> Leader: StartPrimary (key held)
//!     Stopped --> Leader: AcquireLeader, StartPrimary (the last primary, nothing promoted since: same timeline)
//!     Leader --> Stopped: Switchover (clean stop, candidate has the checkpoint, key released)
//!     Leader --> Stopped: Demote, then ReleaseLeader (PostgreSQL not back within primary_start_timeout)
//! ```

use crate::candidate::Ineligible;
use crate::lsn::Lsn;

mod candidates;
mod inputs;

use candidates::*;
pub use candidates::{is_best_candidate, stream_source, switchover_candidate};
pub use inputs::*;

pub fn decide(obs: &Observed) -> Decision {
    // A promise to a leader cut off from etcd: that leader still runs as
    // primary (it asked every member and each accepted), so the cluster is
    // not leaderless, whatever etcd says (Patroni puts the caller in as
    // leader the same way).
    let promised;
    let obs = match (&obs.leader, &obs.failsafe_leader) {
        (None, Some(leader)) if *leader != obs.me => {
            promised = Observed { leader: Some(leader.clone()), ..obs.clone() };
            &promised
        }
        _ => obs,
    };
    let decision = decide_unfenced(obs);
    let rebind_own = matches!(obs.pg, RunningAs::Primary { .. }) && obs.leader.as_deref() == Some(obs.me.as_str());
    if decision.action == Some(Action::AcquireLeader) && !rebind_own {
        if let Some(leader) = obs.failsafe_leader.as_deref().filter(|l| *l != obs.me) {
            return Decision::idle(format!(
                "{}, but this member promised {leader} (failsafe: it runs without etcd) to take no part meanwhile",
                decision.reason
            ));
        }
        if !obs.candidate_rules().failsafe_allows(&obs.me) {
            return Decision::idle(format!(
                "{}, but failsafe_mode is on and the failsafe key does not list this member: waiting for the \
                 leader to list it",
                decision.reason
            ));
        }
    }
    // Without its fencer's acknowledgement a member may not take the key: it
    // waits (its member key tells the others to pass it over) rather than
    // take another path, such as starting read-only instead of resuming. Its
    // own key on an old lease is still re-bound: it already leads.
    let rebind_own = matches!(obs.pg, RunningAs::Primary { .. }) && obs.leader.as_deref() == Some(obs.me.as_str());
    if decision.action == Some(Action::AcquireLeader) && !obs.can_lead && !rebind_own {
        return Decision::idle(format!(
            "{}, but the fencer beside this agent has not acknowledged: waiting for it",
            decision.reason
        ));
    }
    decision
}

/// The leader of a standby cluster: a standby of the remote primary, never
/// a primary (Patroni's standby leader). A primary here (the cluster was just
/// demoted with `demote-cluster`) is stopped cleanly, then started as a
/// standby of the remote.
fn standby_leader(obs: &Observed) -> Decision {
    // A switchover: the same checks as a primary's, then the key is handed
    // over by releasing it (nothing to stop or wait for: nobody here writes);
    // the candidate takes it and follows the remote, this member follows it.
    if let (RunningAs::Replica { .. }, Some(request)) = (&obs.pg, &obs.failover) {
        let decision = leader_failover(obs, request);
        return match decision.action {
            Some(Action::Switchover { .. }) => Decision::act(
                format!("{}: a standby leader hands over by releasing the leader key", decision.reason),
                Action::ReleaseLeader,
            ),
            Some(_) => decision,
            None if obs.follows_remote => decision,
            None => Decision::act("standby leader: follow the remote primary", Action::FollowRemote),
        };
    }
    // The remote primary's newest timeline history (fetched by the WAL
    // receiver into pg_wal) says where the standby's timeline ended there.
    // A standby that received WAL past that point (the remote failed over to
    // a member that had less, asynchronously) can never follow: it is
    // stopped and rewound onto the remote primary. A WAL receiver that
    // streams follows the remote: the timeline a replica reports before its
    // receiver runs can be its last restartpoint's, older than its replay.
    let diverged = |lsn: u64, timeline: u64| {
        obs.not_streaming
            .as_ref()
            .and_then(|_| obs.history_switches.iter().find(|(tl, end)| *tl == timeline && lsn > *end))
    };
    let forked = obs.data.as_ref().and_then(|data| forked_standby(obs, data));
    match &obs.pg {
        _ if obs.paused => Decision::idle("paused: standby leader, no automatic action"),
        RunningAs::Primary { .. } => Decision::act(
            "standby cluster: the leader runs as a primary; stop it to follow the remote primary",
            Action::Demote,
        ),
        RunningAs::Replica { lsn, timeline, .. } if let Some((tl, end)) = diverged(*lsn, *timeline) => Decision::act(
            format!(
                "standby leader diverged from the remote primary: its WAL ({}) is past where timeline {tl} ended \
                 there ({}); stop it to rewind onto the remote primary",
                Lsn(*lsn),
                Lsn(*end)
            ),
            Action::Demote,
        ),
        RunningAs::Transitioning if let Some((tl, end)) = forked => Decision::act(
            format!(
                "standby leader still starting, its data past where timeline {tl} ended on the remote primary ({}): \
                 stop it to rewind",
                Lsn(end)
            ),
            Action::Demote,
        ),
        RunningAs::Replica { .. } if obs.follows_remote => {
            Decision::idle("standby leader: following the remote primary")
        }
        RunningAs::Replica { .. } => Decision::act("standby leader: follow the remote primary", Action::FollowRemote),
        RunningAs::Stopped if obs.data.as_ref().is_some_and(|d| d.was_primary) => Decision::act(
            "standby leader: a primary's data directory joins the remote primary's timeline (pg_rewind where it \
             diverged), then follows it",
            Action::RejoinRemote,
        ),
        RunningAs::Stopped if let Some((tl, end)) = forked => Decision::act(
            format!(
                "standby leader: the data directory is past where timeline {tl} ended on the remote primary ({}): \
                 pg_rewind onto it, then follow it",
                Lsn(end)
            ),
            Action::RejoinRemote,
        ),
        RunningAs::Stopped if obs.data.is_some() => {
            Decision::act("standby leader: start as a standby of the remote primary", Action::StartStandbyLeader)
        }
        RunningAs::Stopped => Decision::idle("leader key held without data: waiting"),
        RunningAs::Transitioning => Decision::idle("standby leader: PostgreSQL is starting or stopping"),
    }
}

fn decide_unfenced(obs: &Observed) -> Decision {
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
    // A setting whose meaning pgwarden does not implement, where acting as if
    // it were absent could give a second writer: no action at all.
    if let Some(what) = &obs.unsupported {
        return Decision::refuse(format!("{what}: refusing to act (nothing is changed)"));
    }
    // A former primary's data directory starting up (crash recovery) will
    // open as a writable primary: it is treated as one.
    let starting_primary = obs.pg == RunningAs::Transitioning
        && obs.pg_starting
        && obs.data.as_ref().is_some_and(|d| d.was_primary)
        && !obs.holds_leader;
    // Without etcd, the only safe decisions are those about a primary that
    // can no longer prove the key (DESIGN invariant 1): everything else waits.
    if !obs.etcd_answered && !matches!(obs.pg, RunningAs::Primary { .. }) && !starting_primary {
        return Decision::idle("etcd unreachable: waiting");
    }
    if starting_primary && !obs.paused {
        return Decision::act(
            "a primary's data directory is starting up here without the leader key: stop it before it opens for writes",
            Action::Demote,
        );
    }
    let leader_is_me = obs.leader.as_deref() == Some(obs.me.as_str());
    let other_leader = obs.leader.as_deref().filter(|l| *l != obs.me);
    let named_candidate = obs.failover.as_ref().and_then(|f| f.candidate.as_deref());
    // Patroni's primary_race_backoff: not for a named candidate, in a pause
    // or in a standby cluster.
    let race_waits = (named_candidate.is_none() && !obs.paused && !obs.standby_cluster)
        .then(|| obs.race_backoff.waits(obs.now_ms))
        .flatten();
    // Named or not, a member tagged nofailover never takes the key (a
    // `failover_priority` of 0 without a `nofailover: false` of its own
    // sets it: `pgwarden_config::TagPair`).
    let i_am_eligible = !obs.nofailover;

    if obs.holds_leader && obs.standby_cluster {
        return standby_leader(obs);
    }
    if obs.holds_leader {
        return match (&obs.pg, &obs.failover) {
            (RunningAs::Primary { .. }, Some(request)) => leader_failover(obs, request),
            // The fencer beside this agent went silent: a further fault (the
            // agent frozen) would leave nobody to fence this primary. Hand
            // over while that is still clean; stay if nobody can take over.
            (RunningAs::Primary { .. }, None) if obs.fencer_lost && !obs.paused => match switchover_candidate(obs) {
                Some(candidate) => Decision::act(
                    format!("leader, but the fencer beside this agent stopped acknowledging: hand over to {candidate}"),
                    Action::Switchover { candidate: None },
                ),
                None => Decision::idle(
                    "leader, but the fencer beside this agent stopped acknowledging and no member can take over: staying",
                ),
            },
            (RunningAs::Primary { .. }, None) => Decision::idle("leader: running as primary"),
            // The one thing a pause allows, finished: the candidate a named
            // switchover or failover handed the key to promotes.
            (RunningAs::Replica { .. }, Some(request))
                if obs.paused && request.candidate.as_deref() == Some(&obs.me) =>
            {
                Decision::act("paused, but the request names me and I hold the key: promote", Action::Promote)
            }
            (_, _) if obs.paused => Decision::idle("paused: leader, no automatic action"),
            (RunningAs::Replica { .. }, _) => Decision::act("leader key held: promote", Action::Promote),
            // `pg_ctl start` gave up, but the postmaster may still finish
            // crash recovery and open as a writable primary: stop it, and
            // give the key up only once it is gone.
            (RunningAs::Transitioning, _) if obs.start_timed_out() => Decision::act(
                "PostgreSQL is not back within primary_start_timeout: stop it before releasing the leader key",
                Action::Demote,
            ),
            (RunningAs::Stopped, _) if obs.start_timed_out() => Decision::act(
                "PostgreSQL is not back within primary_start_timeout: release the leader key",
                Action::ReleaseLeader,
            ),
            (RunningAs::Stopped, _) if obs.primary_start_failed => Decision::act(
                "PostgreSQL failed to start as primary: release the leader key so that a replica takes over",
                Action::ReleaseLeader,
            ),
            // A replica's data directory never starts as a primary: that
            // would stay on its timeline with no history entry, and a former
            // primary's diverged WAL would later look like no divergence at
            // all. It starts as a replica and is promoted onto a new timeline.
            (RunningAs::Stopped, _) if obs.data.as_ref().is_some_and(|d| !d.was_primary) => Decision::act(
                "leader key held, a replica's data directory: start it read-only, then promote",
                Action::StartReplica { upstream: None },
            ),
            (RunningAs::Stopped, _) if obs.data.is_some() => {
                Decision::act("leader key held: start as primary", Action::StartPrimary)
            }
            (RunningAs::Stopped, _) => Decision::idle("leader key held without data: waiting"),
            (RunningAs::Transitioning, _) => Decision::idle("leader: PostgreSQL is starting or stopping"),
        };
    }

    let request_due = obs.request_due();
    if obs.paused {
        // A running primary keeps (or takes back) its key during a pause: no
        // failover happens then, but a primary without its key would meet a
        // racing replica the moment the pause ends (as in Patroni).
        if matches!(obs.pg, RunningAs::Primary { .. })
            && obs.etcd_answered
            && obs.initialize.is_some()
            && (leader_is_me || obs.leader.is_none())
        {
            return Decision::act(
                "paused, and this running primary's key is not on this agent's lease: take it",
                Action::AcquireLeader,
            );
        }
        // A named switchover or failover is the one thing a pause allows.
        if let RunningAs::Replica { lsn, timeline, .. } = obs.pg
            && named_candidate == Some(obs.me.as_str())
            && request_due
            && named_may_lead(obs, lsn, timeline)
            && other_leader.is_none()
            && !obs.peers.iter().any(|p| p.primary)
        {
            return Decision::act("paused, but the request names me: take the leader key", Action::AcquireLeader);
        }
        // The former primary a switchover stopped rejoins the new leader, as
        // in Patroni: the switchover's own last step.
        if obs.pg == RunningAs::Stopped
            && obs.released_leader()
            && let (Some(leader), Some(data)) = (other_leader, obs.data.as_ref())
            && data.was_primary
        {
            return if obs.leader_checkpointed {
                Decision::act(
                    format!("paused, but I handed the key to {leader}: rejoin it"),
                    Action::Rejoin { leader: leader.to_string() },
                )
            } else {
                Decision::idle(format!(
                    "paused: waiting for {leader} to checkpoint after its promotion before rejoining"
                ))
            };
        }
        // An operator's reinit is carried out in a pause too, as in Patroni:
        // the data directory went aside; clone from the leader and start as
        // its replica (never anything that could write).
        if obs.reinit_requested
            && let Some(leader) = other_leader
        {
            match (&obs.data, &obs.pg) {
                (None, _) => {
                    return Decision::act(
                        format!("paused, reinitializing on request: clone from {leader}"),
                        Action::Clone { source: leader.to_string() },
                    );
                }
                (Some(data), RunningAs::Stopped) if !data.was_primary => {
                    return Decision::act(
                        format!("paused, reinitializing on request: start as a replica of {leader}"),
                        Action::StartReplica { upstream: stream_source(obs, leader) },
                    );
                }
                _ => {}
            }
        }
        return Decision::idle("paused: no automatic action");
    }

    if let RunningAs::Primary { .. } = obs.pg {
        // A primary in a scope etcd knows nothing of (no initialize key, no
        // leader) is not pgwarden's: someone else's cluster (Patroni on
        // etcd's v2 API, another namespace). Stopping it would take a live
        // database down; leave it running and say so.
        if obs.etcd_answered && obs.initialize.is_none() && obs.leader.is_none() {
            return Decision::refuse(
                "PostgreSQL runs here as a primary, but etcd holds no cluster under this scope (no initialize key, \
                 no leader): refusing to manage or stop it. If it belongs to a cluster run by Patroni on etcd's v2 \
                 API or under another namespace, migrate that first (docs/migrating-from-patroni.md); nothing was changed",
            );
        }
        if leader_is_me {
            // Our own key on an older lease (the agent restarted): re-bind it.
            return Decision::act("running primary, own leader key on an old lease: re-bind", Action::AcquireLeader);
        }
        let holder = other_leader.map_or_else(|| "nobody".to_string(), str::to_string);
        return Decision::act(format!("running as primary while {holder} holds the leader key: fence"), Action::Demote);
    }

    // A promotion this member recorded and never made: only it can tell
    // (by its own data directory), and until it withdraws the entry the
    // others may not race on that timeline.
    if let (Some(ended), Some(data)) = (obs.history_timeline, &obs.data)
        && obs.history_author.as_deref() == Some(obs.me.as_str())
        && obs.etcd_answered
        && data.timeline > 0
        && data.timeline <= ended
    {
        return Decision::act(
            format!("the history key records my promotion from timeline {ended}, which never happened: withdraw it"),
            Action::WithdrawPromotion { timeline: ended },
        );
    }

    if obs.data.is_none() {
        let with_data: Vec<&str> = obs.peers.iter().filter(|p| p.has_data).map(|p| p.name.as_str()).collect();
        return match (&obs.initialize, other_leader) {
            (None, _) if !with_data.is_empty() => Decision::refuse(format!(
                "no initialize key, but member(s) {} report a database: refusing to bootstrap a second cluster \
                 under this scope. If etcd lost the cluster's keys, restore them (or start pgwarden on the member \
                 with data first); nothing was changed",
                with_data.join(", ")
            )),
            (None, _) => Decision::act("no cluster yet: race to bootstrap it", Action::Bootstrap),
            (Some(id), _) if id.is_empty() => Decision::idle("another member is bootstrapping the cluster"),
            (Some(_), Some(leader)) => match clone_source(obs, leader) {
                Some(source) => Decision::act(format!("no data: clone from {source}"), Action::Clone { source }),
                None => {
                    Decision::idle(format!("no data: waiting for leader {leader} to advertise a running PostgreSQL"))
                }
            },
            // As Patroni: a member without data restores from a backup when
            // nobody leads. It comes up as a replica and may lead only as
            // any replica may (in synchronous mode, never: it is in no `sync`).
            (Some(_), None) if obs.clone_without_leader && !obs.paused => Decision::act(
                "no data and no leader: create a replica with a method that needs no member (no_leader)",
                Action::CloneWithoutLeader,
            ),
            (Some(_), None) => Decision::idle("no data and no leader to clone from: waiting"),
        };
    }

    if obs.initialize.is_none() {
        // As Patroni: a standby cluster is bootstrapped from a data directory
        // already here (a standby of the remote, which it will follow); it
        // never becomes writable, so no member's data is put at risk.
        let with_data = obs.peers.iter().any(|p| p.has_data);
        if obs.standby_cluster && !with_data && !obs.paused {
            return Decision::act(
                "no cluster yet, a standby cluster and data here: bootstrap it from this data directory",
                Action::Bootstrap,
            );
        }
        return Decision::idle("data directory present but the cluster has no initialize key: waiting");
    }

    let data = obs.data.as_ref().expect("checked above");
    let forked = forked_standby(obs, data);
    match (&obs.pg, other_leader) {
        (RunningAs::Transitioning, Some(leader)) if forked.is_some() => {
            let (timeline, end) = forked.unwrap_or_default();
            Decision::act(
                format!(
                    "a standby still starting whose data is past where timeline {timeline} ended ({}) in {leader}'s \
                     history: it can never become consistent, stop it to rewind",
                    Lsn(end)
                ),
                Action::Demote,
            )
        }
        // A standby that cannot reach consistency from its own WAL (a crash,
        // a failed rewind) stays `starting` until it has a WAL source: it
        // was started without one (no leader then) or with an old leader's.
        // Naming the leader needs only a reload, never makes it writable.
        (RunningAs::Transitioning, Some(leader))
            if !data.was_primary
                && let Some(source) = stream_source(obs, leader)
                && obs.standby_upstream.as_deref() != Some(source.as_str()) =>
        {
            Decision::act(
                format!("a standby still starting without {source} as its WAL source: follow it"),
                Action::Follow { upstream: Some(source) },
            )
        }
        (RunningAs::Transitioning, _) => Decision::idle("PostgreSQL is starting or stopping"),
        (RunningAs::Stopped, Some(leader)) => {
            let newer_timeline = obs.leader_timeline.is_some_and(|tl| tl > data.timeline);
            let fresh_restore = data.restored_backup && !data.was_primary;
            if fresh_restore || !(data.was_primary || newer_timeline || forked.is_some()) {
                let source = stream_source(obs, leader);
                Decision::act(
                    match source.as_deref() {
                        Some(s) if s == leader => format!("start as a replica of {leader}"),
                        Some(s) => format!("start as a replica of {leader}, streaming from {s} (replicatefrom)"),
                        None => format!("start as a replica of {leader}, without streaming (nostream)"),
                    },
                    Action::StartReplica { upstream: source },
                )
            } else if !obs.leader_checkpointed {
                Decision::idle(format!("waiting for {leader} to checkpoint after its promotion before rejoining"))
            } else if let Some((timeline, end)) = forked {
                Decision::act(
                    format!(
                        "rejoin {leader} by pg_rewind: this standby's data is past where timeline {timeline} ended ({})",
                        Lsn(end)
                    ),
                    Action::Rejoin { leader: leader.to_string() },
                )
            } else {
                Decision::act(
                    format!("rejoin {leader} (rewind if diverged)"),
                    Action::Rejoin { leader: leader.to_string() },
                )
            }
        }
        (RunningAs::Stopped, None)
            if may_resume(obs, data)
                && (leader_is_me
                    || (i_am_eligible
                        && named_candidate.is_none_or(|c| c == obs.me || eligible_peer(obs, c).is_none()))) =>
        {
            Decision::act(
                format!(
                    "the last primary, and nothing was promoted since: take the leader key and resume on timeline {}",
                    data.timeline
                ),
                Action::AcquireLeader,
            )
        }
        (RunningAs::Stopped, None) => Decision::act(
            "no leader: start read-only to learn the WAL position",
            Action::StartReplica { upstream: None },
        ),
        // A replica that replayed past the point where its timeline ended
        // can never follow the new one (PostgreSQL refuses: "forked off
        // before the current recovery point"): stop it, so it rejoins by
        // pg_rewind.
        (RunningAs::Replica { lsn, timeline, .. }, Some(leader))
            if obs.leader_timeline.is_some_and(|tl| tl > *timeline)
                && obs.history_switches.iter().any(|(tl, end)| tl == timeline && lsn > end) =>
        {
            Decision::act(
                format!(
                    "replica diverged from {leader}'s timeline (past where timeline {timeline} ended): stop it to rewind"
                ),
                Action::Demote,
            )
        }
        (RunningAs::Replica { upstream, lsn, timeline, .. }, Some(leader))
            if *upstream != stream_source(obs, leader) =>
        {
            let source = stream_source(obs, leader);
            Decision::act(
                match source.as_deref() {
                    Some(s) if s == leader => match candidates::why_the_new_leader(obs, leader, *lsn, *timeline) {
                        Some(why) => format!("follow the new leader {leader}: {why}"),
                        None => format!("follow the new leader {leader}"),
                    },
                    Some(s) => format!("stream from {s} (replicatefrom), a replica of {leader}"),
                    None => "stop streaming (nostream)".to_string(),
                },
                Action::Follow { upstream: source },
            )
        }
        (RunningAs::Replica { upstream: None, .. }, Some(leader)) => {
            Decision::idle(format!("replica of {leader}, recovering without streaming (nostream)"))
        }
        (RunningAs::Replica { upstream: Some(source), .. }, Some(leader)) => {
            match (&obs.not_streaming, source == leader) {
                (None, true) => Decision::idle(format!("replica streaming from {leader}")),
                (None, false) => {
                    Decision::idle(format!("replica of {leader}, streaming from {source} (replicatefrom)"))
                }
                (Some(why), true) => Decision::idle(format!("replica of {leader}, not streaming: {why}")),
                (Some(why), false) => {
                    Decision::idle(format!("replica of {leader}, not streaming from {source}: {why}"))
                }
            }
        }
        // The key names this member, on a lease its renewal task no longer
        // proves (a renewal was late, the agent restarted), and PostgreSQL
        // is not a primary: give the key up (compare-and-swap on value and
        // lease) so that the race runs, rather than hold it unproven.
        (RunningAs::Replica { .. }, None) if leader_is_me => Decision::act(
            "the leader key names me, unproven, and PostgreSQL is not a primary: give it up so the race can run",
            Action::ReleaseLeader,
        ),
        // Patroni's words, which operators grep for.
        (RunningAs::Replica { .. }, None) if race_waits.is_some() => Decision::idle(format!(
            "no leader: My ({}) wal position moved since last heart beat loop, {:.0} seconds until leader race \
             (primary_race_backoff)",
            obs.me,
            race_waits.unwrap_or_default() as f64 / 1000.0
        )),
        (RunningAs::Replica { .. }, None) if obs.peers.iter().any(|p| p.primary) => {
            let alive: Vec<&str> = obs.peers.iter().filter(|p| p.primary).map(|p| p.name.as_str()).collect();
            Decision::idle(format!(
                "no leader, but {} still runs as a primary: waiting for it to fence itself or take its key back",
                alive.join(", ")
            ))
        }
        // A named candidate passes the same checks as any other (DESIGN
        // invariant 4): in `sync` in synchronous mode, within the lag limit,
        // and only once the request is due. One that does not is passed
        // over: the others race as usual and the new leader clears it.
        (RunningAs::Replica { lsn, timeline, .. }, None)
            if named_candidate == Some(obs.me.as_str()) && request_due && named_may_lead(obs, *lsn, *timeline) =>
        {
            Decision::act("the switchover names me: take the leader key", Action::AcquireLeader)
        }
        (RunningAs::Replica { lsn, .. }, None)
            if request_due && named_candidate.is_some_and(|c| named_peer_may_take_over(obs, c, *lsn)) =>
        {
            Decision::idle(format!("waiting for {} to take over", named_candidate.unwrap_or_default()))
        }
        (RunningAs::Replica { lsn, timeline, .. }, None) if is_best_candidate(obs, *lsn, *timeline) => Decision::act(
            format!("no leader and I am the best candidate: take the leader key ({})", race_positions(obs, *lsn)),
            Action::AcquireLeader,
        ),
        (RunningAs::Replica { timeline, .. }, None) if behind_cluster_timeline(obs, *timeline) => Decision::idle(
            format!("no leader: not a candidate, timeline {timeline} ended with a promotion the history key records"),
        ),
        (RunningAs::Replica { lsn, .. }, None) => match obs.cluster_optime.map(|optime| optime.saturating_sub(*lsn)) {
            Some(lag) if lag > obs.maximum_lag_on_failover => Decision::idle(format!(
                "no leader: not a candidate, {lag} bytes behind the last leader (maximum_lag_on_failover {})",
                obs.maximum_lag_on_failover
            )),
            // Patroni's words for it, which operators grep for.
            _ if obs.nofailover => Decision::idle(
                "no leader: not a candidate: following a different leader because I am not allowed to promote \
                 (nofailover)",
            ),
            _ => match quorum_shortfall(obs, *lsn) {
                Some(why) => Decision::idle(why),
                None => match better_rival(obs, *lsn) {
                    Some(why) => Decision::idle(format!("no leader: waiting for a better candidate: {why}")),
                    None => Decision::idle("no leader: waiting for a better candidate"),
                },
            },
        },
        // A primary never gets here (it returned above); stay idle if it did.
        (RunningAs::Primary { .. }, _) => Decision::idle("running as primary"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A data directory of the cluster (`sysid` 7) on timeline 1.
    fn dir(was_primary: bool, wal_end: Option<u64>) -> DataDir {
        DataDir { sysid: "7".into(), was_primary, timeline: 1, wal_end, min_recovery_end: None, restored_backup: false }
    }

    fn base() -> Observed {
        Observed {
            me: "b".into(),
            data: Some(dir(false, None)),
            pg: RunningAs::Replica { lsn: 100, timeline: 1, upstream: Some("a".into()) },
            pg_starting: false,
            standby_upstream: Some("a".into()),
            initialize: Some("7".into()),
            leader: Some("a".into()),
            holds_leader: false,
            peers: vec![],
            nofailover: false,
            priority: 1,
            cluster_optime: Some(100),
            maximum_lag_on_failover: 1 << 20,
            leader_timeline: Some(1),
            leader_checkpointed: true,
            paused: false,
            failover: None,
            now_ms: 0,
            now_unix_ms: 0,
            ttl_ms: 10_000,
            primary_down_since_ms: None,
            primary_start_timeout_ms: 300_000,
            primary_start_failed: false,
            history_timeline: None,
            history_author: None,
            history_switches: vec![],
            released_at_ms: None,
            sync_mode: false,
            sync_standbys: vec![],
            sync_leader: None,
            sync_quorum: 0,
            etcd_answered: true,
            not_streaming: None,
            unsupported: None,
            can_lead: true,
            fencer_lost: false,
            reinit_requested: false,
            replicatefrom: None,
            nostream: false,
            cascades: vec![],
            failsafe_leader: None,
            failsafe_members: vec![],
            clone_without_leader: false,
            standby_cluster: false,
            follows_remote: false,
            race_backoff: RaceBackoff::default(),
        }
    }

    fn leader() -> Observed {
        Observed {
            leader: Some("b".into()),
            holds_leader: true,
            pg: RunningAs::Primary { lsn: 100, timeline: 1 },
            peers: vec![peer("a", 100), peer("c", 100)],
            ..base()
        }
    }

    /// The former primary `b`, stopped, no leader key, replicas on its timeline.
    fn resumable() -> Observed {
        Observed {
            pg: RunningAs::Stopped,
            data: Some(dir(true, Some(1 << 40))),
            leader: None,
            leader_timeline: None,
            peers: vec![peer("a", 90), peer("c", 100)],
            ..base()
        }
    }

    #[test]
    fn primary_race_backoff_holds_the_race_while_the_wal_moves_and_for_the_first_loop() {
        let backoff = RaceBackoff {
            backoff_ms: 10_000,
            loop_wait_ms: 1_000,
            since_ms: Some(0),
            had_position: true,
            wal_moved: false,
        };
        let race =
            |now_ms: u64, race_backoff: RaceBackoff| decide(&Observed { leader: None, now_ms, race_backoff, ..base() });
        // The first loop_wait: everyone waits.
        let first = race(500, backoff);
        assert_eq!(first.action, None, "{first}");
        assert!(first.reason.contains("seconds until leader race"), "{first}");
        // After it, only while the WAL still moves, and never past the backoff.
        assert_eq!(race(2_000, backoff).action, Some(Action::AcquireLeader), "{}", race(2_000, backoff));
        let moving = RaceBackoff { wal_moved: true, ..backoff };
        assert_eq!(race(9_000, moving).action, None);
        assert_eq!(race(10_000, moving).action, Some(Action::AcquireLeader), "the backoff is over");
        // Off by default, and not for a member that had no position yet.
        assert_eq!(race(500, RaceBackoff::default()).action, Some(Action::AcquireLeader));
        assert_eq!(race(500, RaceBackoff { had_position: false, ..moving }).action, Some(Action::AcquireLeader));
        // A named candidate does not wait.
        let named = Observed {
            leader: None,
            now_ms: 500,
            race_backoff: moving,
            failover: Some(FailoverRequest { leader: None, candidate: Some("b".into()), scheduled: Schedule::Now }),
            ..base()
        };
        assert_eq!(decide(&named).action, Some(Action::AcquireLeader), "{}", decide(&named));
    }

    #[test]
    fn a_replica_streams_from_its_replicatefrom_member_while_that_one_can_serve() {
        // b (a replica of leader a) is tagged replicatefrom: c.
        let cascading =
            Observed { replicatefrom: Some("c".into()), peers: vec![peer("a", 100), peer("c", 100)], ..base() };
        assert_eq!(stream_source(&cascading, "a").as_deref(), Some("c"));
        assert_eq!(decide(&cascading).action, Some(Action::Follow { upstream: Some("c".into()) }));
        let there = Observed {
            pg: RunningAs::Replica { lsn: 100, timeline: 1, upstream: Some("c".into()) },
            ..cascading.clone()
        };
        assert_eq!(decide(&there).action, None, "{}", decide(&there));
        let stopped = Observed { pg: RunningAs::Stopped, ..cascading.clone() };
        assert_eq!(decide(&stopped).action, Some(Action::StartReplica { upstream: Some("c".into()) }));
        // Back to the leader while c cannot serve.
        let down = Peer { running: false, lsn: None, ..peer("c", 100) };
        let cases = [
            ("c does not run", down),
            ("c gives no WAL position", Peer { lsn: None, ..peer("c", 100) }),
            ("c advertises no address", Peer { reachable: false, ..peer("c", 100) }),
            ("c runs as a primary", Peer { primary: true, ..peer("c", 100) }),
            ("c is on an older timeline", Peer { timeline: Some(0), ..peer("c", 100) }),
        ];
        for (why, c) in cases {
            let obs = Observed { peers: vec![peer("a", 100), c], ..there.clone() };
            assert_eq!(decide(&obs).action, Some(Action::Follow { upstream: Some("a".into()) }), "{why}");
        }
        let gone = Observed { peers: vec![peer("a", 100)], ..there.clone() };
        assert_eq!(decide(&gone).action, Some(Action::Follow { upstream: Some("a".into()) }), "c has no member key");
        // A chain that comes back here is not followed: c streams from d, d from b.
        let looped = Observed {
            cascades: vec![("c".into(), "d".into()), ("d".into(), "b".into())],
            peers: vec![peer("a", 100), peer("c", 100), peer("d", 100)],
            ..there.clone()
        };
        assert_eq!(stream_source(&looped, "a").as_deref(), Some("a"));
        // Naming itself or the leader is streaming from the leader.
        for wanted in ["b", "a"] {
            let obs = Observed { replicatefrom: Some(wanted.into()), ..base() };
            assert_eq!(stream_source(&obs, "a").as_deref(), Some("a"), "{wanted}");
            assert_eq!(decide(&obs).action, None);
        }
    }

    #[test]
    fn the_race_winner_logs_the_positions_it_compared() {
        let obs =
            Observed { leader: None, peers: vec![peer("a", 90), Peer { running: false, ..peer("c", 100) }], ..base() };
        let decision = decide(&obs);
        assert_eq!(decision.action, Some(Action::AcquireLeader), "{decision}");
        assert!(decision.reason.ends_with("(mine 0/64 priority 1, a at 0/5A priority 1, c not running)"), "{decision}");
    }

    #[test]
    fn a_replica_says_why_the_new_leader_went_before_it_in_patronis_words() {
        // b still streams from a; c has taken the key.
        let taken = |c: Peer, b_priority: u32| Observed {
            leader: Some("c".into()),
            priority: b_priority,
            peers: vec![c],
            ..base()
        };
        let higher = taken(Peer { priority: 2, ..peer("c", 100) }, 1);
        assert_eq!(decide(&higher).action, Some(Action::Follow { upstream: Some("c".into()) }));
        assert_eq!(
            decide(&higher).reason,
            "follow the new leader c: c has equally tolerable WAL position and priority 2, while this node has priority 1"
        );
        let promoting = taken(Peer { priority: 2, lsn: None, ..peer("c", 100) }, 1);
        assert_eq!(decide(&promoting).reason, decide(&higher).reason, "its position not published yet");
        let unknown = taken(Peer { lsn: None, ..peer("c", 100) }, 1);
        assert_eq!(decide(&unknown).reason, "follow the new leader c", "nothing to compare");
        let ahead = taken(peer("c", 120), 1);
        assert_eq!(
            decide(&ahead).reason,
            "follow the new leader c: Wal position of c is ahead of my wal position (0/78 > 0/64)"
        );
        // No comparison when c did not go before b, or b may not lead.
        let behind = taken(peer("c", 90), 1);
        assert_eq!(decide(&behind).reason, "follow the new leader c");
        // The new leader's promotion already recorded in `history`: b's
        // timeline has ended, which came after the race.
        let recorded = Observed { history_timeline: Some(1), leader_timeline: Some(2), ..higher.clone() };
        assert!(
            decide(&recorded).reason.contains("priority 2, while this node has priority 1"),
            "{}",
            decide(&recorded)
        );
        let never = Observed { nofailover: true, ..higher.clone() };
        assert_eq!(decide(&never).reason, "follow the new leader c");
    }

    #[test]
    fn a_failsafe_promise_keeps_a_member_out_of_every_race_and_following_the_caller() {
        // No leader key (a leader cut off from etcd let it expire), b a
        // replica that could win the race.
        let leaderless = Observed { leader: None, leader_timeline: None, peers: vec![peer("c", 90)], ..base() };
        assert_eq!(decide(&leaderless).action, Some(Action::AcquireLeader), "{}", decide(&leaderless));
        let promised = Observed { failsafe_leader: Some("a".into()), ..leaderless.clone() };
        let d = decide(&promised);
        assert_eq!(d.action, None, "{d}");
        assert!(d.reason.contains("replica streaming from a"), "a is the leader meanwhile: {d}");
        // Stopped, it starts as a's replica, never resumes on its own.
        let stopped = Observed { pg: RunningAs::Stopped, ..promised.clone() };
        assert_eq!(decide(&stopped).action, Some(Action::StartReplica { upstream: Some("a".into()) }));
        // A named failover to b waits too.
        let named = Observed { failover: request(None, Some("b")), ..promised.clone() };
        assert_ne!(decide(&named).action, Some(Action::AcquireLeader));
        // A key in etcd wins over the promise (the leader is back).
        let back = Observed { leader: Some("c".into()), failsafe_leader: Some("a".into()), ..base() };
        assert_eq!(decide(&back).action, Some(Action::Follow { upstream: Some("c".into()) }));
        // Not listed in the failsafe key: no race.
        let excluded = Observed { failsafe_members: vec!["a".into(), "c".into()], ..leaderless };
        let d = decide(&excluded);
        assert_eq!(d.action, None, "{d}");
        // Nor does a stopped former primary resume on its own.
        let resuming = Observed { failsafe_members: vec!["a".into(), "c".into()], ..resumable() };
        let d = decide(&resuming);
        assert_ne!(d.action, Some(Action::AcquireLeader), "{d}");
        // The leader's own promise (its own name) changes nothing, and a
        // running primary re-binds its own key whatever it promised.
        let own = Observed { failsafe_leader: Some("b".into()), ..leader() };
        assert_eq!(decide(&own), decide(&leader()));
    }

    #[test]
    fn a_nostream_replica_never_streams() {
        let obs = Observed { nostream: true, replicatefrom: Some("c".into()), peers: vec![peer("c", 100)], ..base() };
        assert_eq!(decide(&obs).action, Some(Action::Follow { upstream: None }), "a running one stops streaming");
        let quiet = Observed { pg: RunningAs::Replica { lsn: 100, timeline: 1, upstream: None }, ..obs.clone() };
        assert_eq!(decide(&quiet).action, None, "{}", decide(&quiet));
        let stopped = Observed { pg: RunningAs::Stopped, ..obs.clone() };
        assert_eq!(decide(&stopped).action, Some(Action::StartReplica { upstream: None }));
        let starting = Observed { pg: RunningAs::Transitioning, standby_upstream: None, ..obs };
        assert_eq!(decide(&starting).action, None, "a starting one is not given a WAL source");
    }

    fn request(leader: Option<&str>, candidate: Option<&str>) -> Option<FailoverRequest> {
        Some(FailoverRequest {
            leader: leader.map(String::from),
            candidate: candidate.map(String::from),
            scheduled: Schedule::Now,
        })
    }

    fn peer(name: &str, lsn: u64) -> Peer {
        Peer {
            name: name.into(),
            running: true,
            lsn: Some(lsn),
            nofailover: false,
            clonefrom: false,
            reachable: true,
            priority: 1,
            timeline: Some(1),
            has_data: true,
            can_lead: true,
            primary: false,
            released: false,
            position_unknown_since_ms: None,
        }
    }

    /// A new empty node in a scope whose only trace is another member with
    /// data (its keys lost, or a cluster pgwarden cannot see) must not start
    /// a second cluster: that is how a second writable primary got behind
    /// the same HAProxy in the guides' issue.
    #[test]
    fn a_standby_still_starting_is_pointed_at_the_leader_it_does_not_follow() {
        // Started without a WAL source (no leader then), it cannot reach
        // consistency from its own WAL: it would wait forever.
        let stuck = Observed { pg: RunningAs::Transitioning, standby_upstream: None, ..base() };
        assert_eq!(decide(&stuck).action, Some(Action::Follow { upstream: Some("a".into()) }));
        let old_leader = Observed { standby_upstream: Some("c".into()), ..stuck.clone() };
        assert_eq!(decide(&old_leader).action, Some(Action::Follow { upstream: Some("a".into()) }));
        // Following the leader already, or no leader, or a former primary's
        // directory (never a standby's WAL source to set): it waits.
        let following = Observed { standby_upstream: Some("a".into()), ..stuck.clone() };
        assert_eq!(decide(&following).action, None);
        let no_leader = Observed { leader: None, ..stuck.clone() };
        assert_eq!(decide(&no_leader).action, None);
        let was_primary = Observed { data: Some(dir(true, None)), ..stuck };
        assert_ne!(decide(&was_primary).action, Some(Action::Follow { upstream: Some("a".into()) }));
    }

    /// `patronictl reinit --wait` in a pause hung: the data directory went
    /// aside and the paused loop never cloned.
    #[test]
    fn a_standby_clusters_leader_follows_the_remote_primary_and_never_promotes() {
        let leading = Observed { holds_leader: true, leader: Some("b".into()), standby_cluster: true, ..base() };
        let act = |obs: &Observed| decide(obs).action;
        // A standby here would be promoted in any other cluster.
        assert_eq!(act(&leading), Some(Action::FollowRemote));
        assert_eq!(act(&Observed { follows_remote: true, ..leading.clone() }), None);
        let stopped = Observed { pg: RunningAs::Stopped, ..leading.clone() };
        assert_eq!(act(&stopped), Some(Action::StartStandbyLeader));
        // Just demoted (demote-cluster): a clean stop, then rewind onto the remote.
        let primary = Observed {
            pg: RunningAs::Primary { lsn: 100, timeline: 1 },
            data: Some(dir(true, None)),
            ..leading.clone()
        };
        assert_eq!(act(&primary), Some(Action::Demote));
        assert_eq!(act(&Observed { pg: RunningAs::Stopped, ..primary }), Some(Action::RejoinRemote));
        assert_eq!(act(&Observed { paused: true, ..stopped }), None, "a pause holds the standby leader too");
        // A standby cluster may be bootstrapped from data already here (the
        // data of no other cluster is at risk: nobody in it writes); a normal
        // cluster's member with data and no initialize key waits.
        let unborn = Observed { initialize: None, leader: None, pg: RunningAs::Stopped, ..base() };
        assert_eq!(act(&Observed { standby_cluster: true, ..unborn.clone() }), Some(Action::Bootstrap));
        assert_eq!(act(&unborn), None);
        let peer_with_data = Observed { standby_cluster: true, peers: vec![peer("a", 100)], ..unborn };
        assert_eq!(act(&peer_with_data), None, "another member with data bootstraps it");
        // Without the key, a member of a standby cluster follows its leader as any replica.
        for member in [base(), Observed { pg: RunningAs::Stopped, ..base() }] {
            assert_eq!(act(&Observed { standby_cluster: true, ..member.clone() }), act(&member));
        }
        // A switchover hands the key over without stopping anything.
        let following = Observed { follows_remote: true, peers: vec![peer("c", 100)], ..leading };
        let request = |candidate: Option<&str>| FailoverRequest {
            leader: Some("b".into()),
            candidate: candidate.map(str::to_string),
            scheduled: Schedule::Now,
        };
        for candidate in [None, Some("c")] {
            let asked = Observed { failover: Some(request(candidate)), ..following.clone() };
            assert_eq!(act(&asked), Some(Action::ReleaseLeader), "{candidate:?}");
        }
        let done = Observed { failover: Some(request(Some("b"))), ..following.clone() };
        assert_eq!(act(&done), Some(Action::ClearFailover), "the new standby leader clears the request");
        let nobody = Observed { failover: Some(request(None)), peers: vec![], ..following };
        assert_eq!(act(&nobody), Some(Action::ClearFailover), "no member can take over");
    }

    /// The remote cluster failed over asynchronously to a member that had
    /// less WAL than this standby leader: its timeline 2 forked off at 90,
    /// and the standby leader had received up to 100 on timeline 1.
    /// PostgreSQL never follows such a fork by itself (Patroni rewinds).
    #[test]
    fn a_standby_leader_past_the_remote_s_fork_is_stopped_and_rewound_onto_it() {
        let act = |obs: &Observed| decide(obs).action;
        let leading = Observed {
            holds_leader: true,
            leader: Some("b".into()),
            standby_cluster: true,
            follows_remote: true,
            ..base()
        };
        let forked = Observed {
            history_switches: vec![(1, 90)],
            not_streaming: Some("requested starting point is not in this server's history".into()),
            ..leading.clone()
        };
        assert_eq!(act(&leading), None, "no fork known: following");
        assert_eq!(act(&forked), Some(Action::Demote));
        let streaming = Observed { not_streaming: None, ..forked.clone() };
        assert_eq!(act(&streaming), None, "a streaming receiver follows the remote");
        // Behind the fork point, or already on the new timeline: PostgreSQL follows by itself.
        let behind = Observed { pg: RunningAs::Replica { lsn: 90, timeline: 1, upstream: None }, ..forked.clone() };
        assert_eq!(act(&behind), None);
        let followed = Observed { pg: RunningAs::Replica { lsn: 120, timeline: 2, upstream: None }, ..forked.clone() };
        assert_eq!(act(&followed), None);
        // Stopped (or still starting) with its data past the fork: rewound.
        let data = Some(DataDir { min_recovery_end: Some((1, 100)), ..dir(false, None) });
        let stopped = Observed { pg: RunningAs::Stopped, data: data.clone(), ..forked.clone() };
        assert_eq!(act(&stopped), Some(Action::RejoinRemote));
        assert_eq!(act(&Observed { pg: RunningAs::Transitioning, ..stopped.clone() }), Some(Action::Demote));
        let short = Some(DataDir { min_recovery_end: Some((1, 80)), ..dir(false, None) });
        assert_eq!(act(&Observed { data: short, ..stopped.clone() }), Some(Action::StartStandbyLeader));
        assert_eq!(act(&Observed { paused: true, ..forked }), None, "a pause holds it");
    }

    #[test]
    fn a_restored_backup_on_an_older_timeline_starts_as_a_replica_not_rewound() {
        // A backup taken on timeline 1, restored after two promotions: its
        // recovery follows the history to timeline 3; pg_rewind cannot run
        // on a directory that was never consistent.
        let restored = Observed {
            pg: RunningAs::Stopped,
            data: Some(DataDir { restored_backup: true, ..dir(false, None) }),
            leader_timeline: Some(3),
            peers: vec![peer("a", 100)],
            standby_upstream: None,
            ..base()
        };
        assert_eq!(decide(&restored).action, Some(Action::StartReplica { upstream: Some("a".into()) }));
        let started_before = Observed { data: Some(dir(false, None)), ..restored.clone() };
        assert_eq!(decide(&started_before).action, Some(Action::Rejoin { leader: "a".into() }));
        // A former primary's directory is never taken for a fresh restore.
        let primary = Observed { data: Some(DataDir { restored_backup: true, ..dir(true, None) }), ..restored };
        assert!(!matches!(decide(&primary).action, Some(Action::StartReplica { .. })), "{}", decide(&primary));
    }

    #[test]
    fn a_member_without_data_restores_with_a_no_leader_method_only_when_nobody_leads() {
        let empty = Observed { data: None, pg: RunningAs::Stopped, ..base() };
        let restorer = Observed { clone_without_leader: true, ..empty.clone() };
        let leaderless = Observed { leader: None, ..restorer.clone() };
        assert_eq!(decide(&leaderless).action, Some(Action::CloneWithoutLeader));
        // Without such a method, or in a pause: wait.
        assert_eq!(decide(&Observed { leader: None, ..empty.clone() }).action, None);
        assert_eq!(decide(&Observed { paused: true, ..leaderless.clone() }).action, None);
        // A leader to copy from is preferred to the backup, as in Patroni.
        let led = Observed { peers: vec![peer("a", 100)], ..restorer };
        assert_eq!(decide(&led).action, Some(Action::Clone { source: "a".into() }));
        // Never while another member bootstraps the cluster, nor before one exists.
        assert_eq!(decide(&Observed { initialize: Some(String::new()), ..leaderless.clone() }).action, None);
        assert_eq!(decide(&Observed { initialize: None, ..leaderless }).action, Some(Action::Bootstrap));
    }

    #[test]
    fn an_operators_reinit_is_carried_out_in_a_pause() {
        let aside = Observed { paused: true, reinit_requested: true, data: None, pg: RunningAs::Stopped, ..base() };
        assert_eq!(decide(&aside).action, Some(Action::Clone { source: "a".into() }));
        let cloned = Observed { data: Some(dir(false, None)), ..aside.clone() };
        assert_eq!(decide(&cloned).action, Some(Action::StartReplica { upstream: Some("a".into()) }));
        // Never a former primary's directory, never without a leader, never
        // without the request.
        let primary_dir = Observed { data: Some(dir(true, None)), ..aside.clone() };
        assert_eq!(decide(&primary_dir).action, None);
        let no_leader = Observed { leader: None, ..aside.clone() };
        assert_eq!(decide(&no_leader).action, None);
        let no_request = Observed { reinit_requested: false, ..aside };
        assert_eq!(decide(&no_request).action, None);
    }

    /// The 20-minute asynchronous chaos run (seed 2026120505): a standby
    /// whose pages reflected WAL past where its timeline ended was started
    /// as a replica (the new leader's history file, fetched by its WAL
    /// receiver, made its data look like it was on the leader's timeline)
    /// and stayed `starting` for ever.
    #[test]
    fn a_standby_past_where_its_timeline_ended_is_rewound_not_started() {
        let forked_data = DataDir {
            sysid: "7".into(),
            was_primary: false,
            // The newest history file in pg_wal: the leader's timeline.
            timeline: 2,
            wal_end: None,
            min_recovery_end: Some((1, 0x7850BC0)),
            restored_backup: false,
        };
        let stopped = Observed {
            pg: RunningAs::Stopped,
            data: Some(forked_data.clone()),
            leader_timeline: Some(2),
            history_switches: vec![(1, 0x7850B30)],
            ..base()
        };
        let d = decide(&stopped);
        assert_eq!(d.action, Some(Action::Rejoin { leader: "a".into() }), "{d}");
        assert!(d.reason.contains("past where timeline 1 ended (0/7850B30)"), "{d}");
        // Also while the leader's own timeline is not known yet.
        let unknown = Observed { leader_timeline: None, ..stopped.clone() };
        assert_eq!(decide(&unknown).action, Some(Action::Rejoin { leader: "a".into() }));
        // pg_rewind needs the new leader's checkpoint: wait for it.
        let unchecked = Observed { leader_checkpointed: false, ..stopped.clone() };
        assert_eq!(decide(&unchecked).action, None);
        // Started already (the history key did not confirm the switch in
        // time): it can never become consistent; stop it, to rewind.
        let starting = Observed { pg: RunningAs::Transitioning, standby_upstream: Some("a".into()), ..stopped.clone() };
        assert_eq!(decide(&starting).action, Some(Action::Demote), "{}", decide(&starting));
        // Up to the switch point exactly, on the ended timeline or on the
        // new one, or no switch confirmed: started as a replica, as before.
        for min_recovery_end in [Some((1, 0x7850B30)), Some((2, 0x7850BC0)), None] {
            let data = DataDir { min_recovery_end, ..forked_data.clone() };
            let fine = Observed { data: Some(data), ..stopped.clone() };
            assert_eq!(
                decide(&fine).action,
                Some(Action::StartReplica { upstream: Some("a".into()) }),
                "{min_recovery_end:?}: {}",
                decide(&fine)
            );
            let starting = Observed { data: fine.data.clone(), ..starting.clone() };
            assert_eq!(decide(&starting).action, None, "{min_recovery_end:?}");
        }
        let unconfirmed = Observed { history_switches: vec![], ..stopped.clone() };
        assert_eq!(decide(&unconfirmed).action, Some(Action::StartReplica { upstream: Some("a".into()) }));
        // A former primary's directory is the existing rule's (rejoin on a
        // newer leader timeline), not this one's.
        let primary_data = DataDir { was_primary: true, timeline: 1, ..forked_data };
        let starting_primary = Observed { data: Some(primary_data), ..starting };
        assert_ne!(decide(&starting_primary).action, Some(Action::Demote));
    }

    #[test]
    fn primary_start_timeout_counts_from_when_the_primary_went_down() {
        let down =
            Observed { pg: RunningAs::Stopped, primary_down_since_ms: Some(1_000), data: resumable().data, ..leader() };
        let before = Observed { now_ms: 300_999, ..down.clone() };
        assert_eq!(decide(&before).action, Some(Action::StartPrimary), "{}", decide(&before));
        let at = Observed { now_ms: 301_000, ..down.clone() };
        assert_eq!(decide(&at).action, Some(Action::ReleaseLeader), "{}", decide(&at));
        // 0: at once.
        let zero = Observed { primary_start_timeout_ms: 0, now_ms: 1_000, ..down.clone() };
        assert_eq!(decide(&zero).action, Some(Action::ReleaseLeader));
        // A start that failed outright (no postmaster left): at once too.
        let failed = Observed { primary_start_failed: true, ..before };
        assert_eq!(decide(&failed).action, Some(Action::ReleaseLeader), "{}", decide(&failed));
    }

    #[test]
    fn a_released_key_counts_as_just_released_for_two_ttls() {
        let released = Observed { released_at_ms: Some(5_000), ..resumable() };
        let inside = Observed { now_ms: 24_999, ..released.clone() };
        assert!(inside.released_leader());
        assert_ne!(decide(&inside).action, Some(Action::AcquireLeader), "{}", decide(&inside));
        let after = Observed { now_ms: 25_000, ..released };
        assert!(!after.released_leader());
        assert_eq!(decide(&after).action, Some(Action::AcquireLeader), "{}", decide(&after));
        assert!(!released_recently(Some(0), 0, 0), "ttl 0 gives no window");
    }

    #[test]
    fn a_peer_without_a_position_holds_the_race_back_for_one_ttl_only() {
        let silent = Peer { lsn: None, position_unknown_since_ms: Some(1_000), ..peer("a", 0) };
        let racing = Observed { leader: None, peers: vec![silent], ..base() };
        let waiting = Observed { now_ms: 11_000, ..racing.clone() };
        assert_eq!(decide(&waiting).action, None, "{}", decide(&waiting));
        let given_up = Observed { now_ms: 11_001, ..racing };
        assert_eq!(decide(&given_up).action, Some(Action::AcquireLeader), "{}", decide(&given_up));
    }

    #[test]
    fn a_scheduled_switchover_waits_for_its_time_and_an_unreadable_one_never_comes() {
        let scheduled = Observed {
            failover: Some(FailoverRequest {
                scheduled: Schedule::At(5_000),
                ..request(Some("b"), Some("a")).expect("some")
            }),
            ..leader()
        };
        let early = Observed { now_unix_ms: 4_999, ..scheduled.clone() };
        assert_eq!(decide(&early).action, None, "{}", decide(&early));
        let due = Observed { now_unix_ms: 5_000, ..scheduled };
        assert_eq!(decide(&due).action, Some(Action::Switchover { candidate: Some("a".into()) }));
        let unreadable = Observed {
            failover: Some(FailoverRequest {
                scheduled: Schedule::Unreadable("tomorrow".into()),
                ..request(Some("b"), Some("a")).expect("some")
            }),
            now_unix_ms: i64::MAX,
            ..leader()
        };
        let d = decide(&unreadable);
        assert_eq!(d.action, None);
        assert!(d.reason.contains("unreadable scheduled_at \"tomorrow\""), "{d}");
    }

    #[test]
    fn a_fencer_counts_for_two_seconds_after_it_acknowledges_and_is_lost_after_ten_silent() {
        assert!(fencer_ready(true, Some(1_000), 3_000));
        assert!(!fencer_ready(true, Some(1_000), 3_001));
        assert!(!fencer_ready(true, None, 0), "never heard from");
        assert!(fencer_ready(false, None, 0), "require_fencer: false");
        assert!(!fencer_lost(true, Some(1_000), 0, 11_000));
        assert!(fencer_lost(true, Some(1_000), 0, 11_001));
        assert!(!fencer_lost(true, None, 5_000, 15_000), "a restarted agent waits ten seconds from its start");
        assert!(fencer_lost(true, None, 5_000, 15_001));
        assert!(!fencer_lost(false, None, 0, u64::MAX));
    }

    #[test]
    fn the_deadline_fast_path_fences_only_a_writable_leader_whose_deadline_passed() {
        assert!(fence_at_once(true, false, true));
        assert!(!fence_at_once(true, true, true), "a live deadline");
        assert!(!fence_at_once(false, false, true), "never proved the key");
        assert!(!fence_at_once(true, false, false), "nothing writable to stop");
    }

    #[test]
    fn no_bootstrap_beside_a_member_with_data() {
        let obs = Observed {
            data: None,
            pg: RunningAs::Stopped,
            initialize: None,
            leader: None,
            peers: vec![Peer { running: false, lsn: None, timeline: None, ..peer("a", 0) }],
            ..base()
        };
        let d = decide(&obs);
        assert!(d.refused && d.action.is_none(), "{d}");
        assert!(d.reason.contains('a'), "{d}");
        // Members that are empty too: a fresh cluster bootstraps as before.
        let fresh = Observed {
            peers: vec![Peer { running: false, lsn: None, timeline: None, has_data: false, ..peer("a", 0) }],
            ..obs
        };
        assert_eq!(decide(&fresh).action, Some(Action::Bootstrap));
    }

    #[test]
    fn an_unsupported_setting_that_matters_stops_every_action() {
        let obs = Observed {
            data: None,
            pg: RunningAs::Stopped,
            initialize: None,
            leader: None,
            unsupported: Some("the config key sets standby_cluster".into()),
            ..base()
        };
        let d = decide(&obs);
        assert!(d.refused && d.action.is_none(), "{d}");
        assert_eq!(decide(&Observed { unsupported: None, ..obs }).action, Some(Action::Bootstrap));
    }

    /// The tick's reason (logged, and in `/patroni`) says "streaming" only
    /// while the WAL receiver streams, and otherwise why not.
    #[test]
    fn a_replica_that_does_not_stream_says_why() {
        assert_eq!(decide(&base()).reason, "replica streaming from a");
        let obs = Observed { not_streaming: Some("replication slot \"b\" does not exist".into()), ..base() };
        let d = decide(&obs);
        assert!(d.reason.contains("not streaming") && d.reason.contains("slot"), "{d}");
        assert!(!d.reason.contains("streaming from"), "{d}");
    }

    #[test]
    fn a_primary_etcd_knows_nothing_of_is_left_running() {
        let obs = Observed {
            pg: RunningAs::Primary { lsn: 100, timeline: 1 },
            data: Some(dir(true, Some(1 << 40))),
            initialize: None,
            leader: None,
            ..base()
        };
        let d = decide(&obs);
        assert!(d.refused && d.action.is_none(), "{d}");
        // Without an answer from etcd nothing is known: fence as before.
        let d = decide(&Observed { etcd_answered: false, ..obs.clone() });
        assert_eq!(d.action, Some(Action::Demote), "{d}");
        // In a known cluster, a primary without the key is fenced.
        let d = decide(&Observed { initialize: Some("7".into()), ..obs });
        assert_eq!(d.action, Some(Action::Demote), "{d}");
    }

    #[test]
    fn the_leader_says_why_it_clears_a_request_for_a_candidate_that_cannot_take_over() {
        let cases = [
            (Peer { nofailover: true, ..peer("a", 100) }, "tagged nofailover"),
            (Peer { can_lead: false, ..peer("a", 100) }, "fencer does not acknowledge"),
            (Peer { running: false, ..peer("a", 100) }, "not running"),
            (Peer { lsn: None, ..peer("a", 100) }, "no WAL position"),
            (Peer { timeline: Some(1), ..peer("a", 100) }, "on timeline 1, which ended"),
            (peer("a", 0), "bytes behind the last leader"),
        ];
        for (candidate, why) in cases {
            let obs = Observed {
                peers: vec![candidate, peer("c", 100)],
                failover: request(Some("b"), Some("a")),
                history_timeline: why.starts_with("on timeline").then_some(1),
                cluster_optime: Some(if why.contains("behind") { 1 << 30 } else { 100 }),
                ..leader()
            };
            let d = decide(&obs);
            assert_eq!(d.action, Some(Action::ClearFailover), "{d}");
            assert!(d.reason.contains(why), "{why}: {d}");
        }
        let obs = Observed { failover: request(Some("b"), Some("z")), ..leader() };
        assert!(decide(&obs).reason.contains("(not a member)"), "{}", decide(&obs));
    }

    #[test]
    fn without_a_leader_a_named_candidate_waits_for_the_requests_time_and_a_lesser_replica_says_it_waits() {
        // b is behind a (100 < 150): not the best candidate; the request
        // names b but is scheduled later.
        let scheduled = Observed {
            leader: None,
            peers: vec![peer("a", 150)],
            cluster_optime: Some(150),
            failover: Some(FailoverRequest {
                scheduled: Schedule::At(5_000),
                ..request(None, Some("b")).expect("some")
            }),
            now_unix_ms: 4_999,
            ..base()
        };
        let early = decide(&scheduled);
        assert_eq!(early.action, None, "not due yet: {early}");
        assert_eq!(
            early.reason,
            "no leader: waiting for a better candidate: Wal position of a is ahead of my wal position (0/96 > 0/64)",
            "{early}"
        );
        let due = Observed { now_unix_ms: 5_000, ..scheduled };
        assert_eq!(decide(&due).action, Some(Action::AcquireLeader), "{}", decide(&due));
    }

    /// Cases the mutation run of session 9 found untested (docs/mutants.md).
    #[test]
    fn cases_the_mutation_run_found_untested() {
        let act = |obs: &Observed| decide(obs).action;
        // A leader whose PostgreSQL is still starting waits (within
        // primary_start_timeout) rather than stopping it.
        let starting = Observed { pg: RunningAs::Transitioning, primary_down_since_ms: Some(0), ..leader() };
        assert_eq!(act(&starting), None, "{}", decide(&starting));
        // No member can take over: a switchover without a candidate is cleared.
        let nobody = Observed {
            peers: vec![Peer { nofailover: true, ..peer("a", 100) }, Peer { can_lead: false, ..peer("c", 100) }],
            failover: request(Some("b"), None),
            ..leader()
        };
        let d = decide(&nobody);
        assert_eq!(d.action, Some(Action::ClearFailover), "{d}");
        assert!(d.reason.contains("no member can take over"), "{d}");
        // The clone source: a `clonefrom` peer that does not run, or that
        // advertises no address, is passed over for the leader.
        let empty = Observed { data: None, pg: RunningAs::Stopped, ..base() };
        for unusable in [Peer { running: false, ..peer("c", 100) }, Peer { reachable: false, ..peer("c", 100) }] {
            let obs = Observed { peers: vec![peer("a", 100), Peer { clonefrom: true, ..unusable }], ..empty.clone() };
            assert_eq!(act(&obs), Some(Action::Clone { source: "a".into() }), "{}", decide(&obs));
        }
        let obs = Observed { peers: vec![peer("a", 100), Peer { clonefrom: true, ..peer("c", 100) }], ..empty };
        assert_eq!(act(&obs), Some(Action::Clone { source: "c".into() }), "a running clonefrom peer is preferred");
        // may_resume: a data directory whose timeline is unknown (0) does not
        // resume; the last primary of timeline 2, promoted from 1, does.
        let unknown = Observed {
            data: Some(DataDir { timeline: 0, ..resumable().data.expect("data") }),
            peers: vec![Peer { timeline: None, ..peer("a", 90) }],
            ..resumable()
        };
        assert_ne!(act(&unknown), Some(Action::AcquireLeader), "{}", decide(&unknown));
        let promoted = Observed {
            data: Some(DataDir { timeline: 2, ..resumable().data.expect("data") }),
            history_timeline: Some(1),
            peers: vec![Peer { timeline: Some(2), ..peer("a", 90) }],
            ..resumable()
        };
        assert_eq!(act(&promoted), Some(Action::AcquireLeader), "{}", decide(&promoted));
        // A stopped former primary never takes the key (even its own) without
        // its fencer: only a running primary re-binds its own key without one.
        let own_key = Observed { leader: Some("b".into()), can_lead: false, ..resumable() };
        assert_eq!(act(&own_key), None, "{}", decide(&own_key));
        // Tagged nofailover, the last primary does not resume by itself; with
        // priority 0 and an explicit `nofailover: false` it may (Patroni).
        let ineligible = Observed { nofailover: true, ..resumable() };
        assert_ne!(act(&ineligible), Some(Action::AcquireLeader), "{}", decide(&ineligible));
        let lowest = Observed { priority: 0, ..resumable() };
        assert_eq!(act(&lowest), Some(Action::AcquireLeader), "{}", decide(&lowest));
        // Without etcd a replica waits, whatever it last saw.
        let cut_off = Observed { leader: None, etcd_answered: false, ..base() };
        let d = decide(&cut_off);
        assert_eq!((d.action, d.reason.as_str()), (None, "etcd unreachable: waiting"));
        // A replica on an ended timeline says so.
        let ended = Observed { leader: None, history_timeline: Some(1), ..base() };
        let d = decide(&ended);
        assert!(d.reason.contains("timeline 1 ended with a promotion"), "{d}");

        // Pause: only a due request naming this member, with no primary
        // running, lets it take the key.
        let paused = Observed { paused: true, leader: None, peers: vec![peer("a", 100)], ..base() };
        let named_me = Observed { failover: request(None, Some("b")), ..paused.clone() };
        assert_eq!(act(&named_me), Some(Action::AcquireLeader), "{}", decide(&named_me));
        let named_other = Observed { failover: request(None, Some("a")), ..paused };
        assert_eq!(act(&named_other), None, "{}", decide(&named_other));
        // A promotion recorded by this member is withdrawn only when its data
        // directory's timeline is known.
        let unknown_timeline = Observed {
            leader: None,
            history_timeline: Some(1),
            history_author: Some("b".into()),
            data: Some(DataDir { timeline: 0, ..base().data.expect("data") }),
            ..base()
        };
        assert!(
            !matches!(act(&unknown_timeline), Some(Action::WithdrawPromotion { .. })),
            "{}",
            decide(&unknown_timeline)
        );
        // No data while another member bootstraps: wait, do not clone.
        let bootstrapping = Observed { data: None, pg: RunningAs::Stopped, initialize: Some(String::new()), ..base() };
        let d = decide(&bootstrapping);
        assert_eq!((d.action, d.reason.as_str()), (None, "another member is bootstrapping the cluster"));
        // The last primary resumes when the request names a member that cannot take over.
        let named_ineligible = Observed {
            peers: vec![Peer { nofailover: true, ..peer("a", 90) }, peer("c", 100)],
            failover: request(None, Some("a")),
            ..resumable()
        };
        assert_eq!(act(&named_ineligible), Some(Action::AcquireLeader), "{}", decide(&named_ineligible));
        // Divergence needs a newer leader timeline, and a position past the switch point.
        let same_timeline = Observed { history_switches: vec![(1, 50)], ..base() };
        assert_eq!(act(&same_timeline), None, "{}", decide(&same_timeline));
        let at_the_switch = Observed {
            leader_timeline: Some(2),
            history_switches: vec![(1, 100)],
            pg: RunningAs::Replica { lsn: 100, timeline: 1, upstream: Some("a".into()) },
            ..base()
        };
        assert_ne!(act(&at_the_switch), Some(Action::Demote), "{}", decide(&at_the_switch));
        // A request not yet due does not hold back the best candidate.
        let not_due = Observed {
            leader: None,
            peers: vec![peer("a", 90)],
            failover: Some(FailoverRequest { scheduled: Schedule::At(1), ..request(None, Some("a")).expect("some") }),
            ..base()
        };
        assert_eq!(act(&not_due), Some(Action::AcquireLeader), "{}", decide(&not_due));
        // Why a replica is not a candidate: its lag (beyond the limit, not at
        // it), or its tags.
        let limit = base().maximum_lag_on_failover;
        let lagging = Observed { leader: None, cluster_optime: Some(100 + limit + 1), ..base() };
        assert!(decide(&lagging).reason.contains("bytes behind the last leader"), "{}", decide(&lagging));
        let at_limit =
            Observed { leader: None, cluster_optime: Some(100 + limit), peers: vec![peer("a", 200)], ..base() };
        assert_eq!(
            decide(&at_limit).reason,
            "no leader: waiting for a better candidate: Wal position of a is ahead of my wal position (0/C8 > 0/64)",
            "{}",
            decide(&at_limit)
        );
        // It names whom it waits for, and why.
        let unknown = Observed { peers: vec![Peer { lsn: None, ..peer("a", 0) }], ..at_limit.clone() };
        assert_eq!(
            decide(&unknown).reason,
            "no leader: waiting for a better candidate: a runs, its WAL position not known yet"
        );
        let preferred = Observed { peers: vec![Peer { priority: 2, ..peer("a", 100) }], ..at_limit.clone() };
        assert!(
            decide(&preferred)
                .reason
                .ends_with("a has equally tolerable WAL position and priority 2, while this node has priority 1"),
            "{}",
            decide(&preferred)
        );
        let tied = Observed { me: "b".into(), peers: vec![peer("a", 100)], ..at_limit.clone() };
        assert!(
            decide(&tied).reason.ends_with("a has the same WAL position and priority, and comes first by name"),
            "{}",
            decide(&tied)
        );
        for tagged in [Observed { nofailover: true, ..base() }, Observed { nofailover: true, priority: 0, ..base() }] {
            let obs = Observed { leader: None, ..tagged };
            assert!(
                decide(&obs).reason.contains("following a different leader because I am not allowed to promote"),
                "{}",
                decide(&obs)
            );
        }
    }

    #[test]
    fn a_decision_prints_its_reason_and_action() {
        let acting = Decision::act("no leader", Action::AcquireLeader);
        assert_eq!(acting.to_string(), "no leader: AcquireLeader");
        assert_eq!(Decision::idle("waiting").to_string(), "waiting");
    }

    #[test]
    /// As in Patroni, `primary_start_timeout: 0` fails over at
    /// once; the crashed primary that released the key, back read-only with
    /// the most WAL, does not take it back while a replica may lead.
    fn a_member_that_released_the_key_leaves_the_race_to_the_others() {
        let released = Observed {
            pg: RunningAs::Replica { lsn: 200, timeline: 1, upstream: None },
            data: Some(dir(true, None)),
            leader: None,
            released_at_ms: Some(0),
            peers: vec![peer("a", 150), peer("c", 190)],
            cluster_optime: Some(200),
            ..base()
        };
        assert_ne!(decide(&released).action, Some(Action::AcquireLeader), "{}", decide(&released));
        let alone = Observed { peers: vec![Peer { can_lead: false, ..peer("a", 150) }], ..released.clone() };
        assert_eq!(decide(&alone).action, Some(Action::AcquireLeader), "nobody else may lead: it races");
        // Its peers do not wait for it in the race...
        let peer_view = Observed {
            me: "a".into(),
            pg: RunningAs::Replica { lsn: 190, timeline: 1, upstream: None },
            peers: vec![Peer { released: true, ..peer("b", 200) }],
            leader: None,
            cluster_optime: Some(200),
            ..base()
        };
        assert_eq!(decide(&peer_view).action, Some(Action::AcquireLeader), "{}", decide(&peer_view));
        // Among members that all gave the key up, the usual order decides.
        let both = Observed { peers: vec![Peer { released: true, ..peer("a", 250) }], ..released.clone() };
        assert_ne!(decide(&both).action, Some(Action::AcquireLeader), "a is further ahead: {}", decide(&both));
        // ...but one whose PostgreSQL does not answer (Patroni's "crashed
        // primary demotes after failed attempt to start": it gave the key up
        // because it cannot start) is not waited for.
        let down = Observed { peers: vec![Peer { released: true, lsn: None, ..peer("a", 0) }], ..released.clone() };
        assert_eq!(decide(&down).action, Some(Action::AcquireLeader), "{}", decide(&down));
        let not_released = Observed { peers: vec![Peer { lsn: None, ..peer("a", 0) }], ..released.clone() };
        assert!(decide(&not_released).reason.contains("its WAL position not known yet"), "{}", decide(&not_released));
        let both = Observed { peers: vec![Peer { released: true, ..peer("a", 150) }], ..released.clone() };
        assert_eq!(decide(&both).action, Some(Action::AcquireLeader), "{}", decide(&both));
        // ...but it stays a switchover candidate.
        let leading = Observed { peers: vec![Peer { released: true, ..peer("a", 100) }], ..leader() };
        assert_eq!(switchover_candidate(&leading).as_deref(), Some("a"));
        let not_released = Observed { released_at_ms: None, ..released };
        assert_eq!(decide(&not_released).action, Some(Action::AcquireLeader));
    }

    #[test]
    /// Issue 20, finding 3: `history` says nothing was promoted, but the
    /// leader published a position past the end of this node's WAL (a term
    /// whose history entry was lost, or its own writes lost): it does not
    /// resume on its old timeline; it starts read-only and races.
    fn a_former_primary_whose_wal_ends_before_the_published_optime_does_not_resume() {
        let short = Observed { data: Some(dir(true, Some(900))), cluster_optime: Some(1000), ..resumable() };
        assert_eq!(decide(&short).action, Some(Action::StartReplica { upstream: None }), "{}", decide(&short));
        let unknown = Observed { data: Some(dir(true, None)), cluster_optime: Some(1000), ..resumable() };
        assert_eq!(decide(&unknown).action, Some(Action::StartReplica { upstream: None }), "{}", decide(&unknown));
        let reaches = Observed { data: Some(dir(true, Some(1000))), cluster_optime: Some(1000), ..resumable() };
        assert_eq!(decide(&reaches).action, Some(Action::AcquireLeader), "{}", decide(&reaches));
    }

    #[test]
    fn quorum_commit_says_how_many_votes_a_voter_has() {
        let obs = Observed {
            leader: None,
            sync_mode: true,
            sync_leader: Some("a".into()),
            sync_standbys: vec!["b".into(), "c".into()],
            sync_quorum: 1,
            peers: vec![peer("c", 150)],
            ..base()
        };
        let d = decide(&obs);
        assert_eq!(d.action, None);
        assert_eq!(d.reason, "no leader: quorum commit needs 2 of a, b, c at or below my position, and 1 are");
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Observed, Option<Action>)> = vec![
            ("streaming replica of the leader idles", base(), None),
            (
                "no data, no cluster: bootstrap",
                Observed { data: None, pg: RunningAs::Stopped, initialize: None, leader: None, ..base() },
                Some(Action::Bootstrap),
            ),
            (
                "no data while another bootstraps: wait",
                Observed {
                    data: None,
                    pg: RunningAs::Stopped,
                    initialize: Some(String::new()),
                    leader: None,
                    ..base()
                },
                None,
            ),
            (
                "no data, leader a: clone from a",
                Observed { data: None, pg: RunningAs::Stopped, peers: vec![peer("a", 100)], ..base() },
                Some(Action::Clone { source: "a".into() }),
            ),
            (
                "no data, leader a not running yet: wait",
                Observed { data: None, pg: RunningAs::Stopped, ..base() },
                None,
            ),
            (
                "no data: clone from a clonefrom member",
                Observed {
                    data: None,
                    pg: RunningAs::Stopped,
                    peers: vec![Peer { clonefrom: true, ..peer("c", 50) }],
                    ..base()
                },
                Some(Action::Clone { source: "c".into() }),
            ),
            (
                "stopped with data: start following the leader",
                Observed { pg: RunningAs::Stopped, ..base() },
                Some(Action::StartReplica { upstream: Some("a".into()) }),
            ),
            (
                "replica of an old leader: follow the new one",
                Observed { leader: Some("c".into()), ..base() },
                Some(Action::Follow { upstream: Some("c".into()) }),
            ),
            (
                "no leader, stopped: start read-only",
                Observed { pg: RunningAs::Stopped, leader: None, ..base() },
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
                "key held, a former primary stopped: start as primary",
                Observed {
                    leader: Some("b".into()),
                    holds_leader: true,
                    pg: RunningAs::Stopped,
                    data: Some(dir(true, Some(1 << 40))),
                    ..base()
                },
                Some(Action::StartPrimary),
            ),
            (
                "primary while another holds the key: demote",
                Observed { pg: RunningAs::Primary { lsn: 5, timeline: 1 }, ..base() },
                Some(Action::Demote),
            ),
            (
                "primary with no key at all: demote",
                Observed { pg: RunningAs::Primary { lsn: 5, timeline: 1 }, leader: None, ..base() },
                Some(Action::Demote),
            ),
            (
                "primary with its own key on an old lease: re-bind",
                Observed { pg: RunningAs::Primary { lsn: 5, timeline: 1 }, leader: Some("b".into()), ..base() },
                Some(Action::AcquireLeader),
            ),
        ];
        let more: Vec<(&str, Observed, Option<Action>)> = vec![
            (
                "a more advanced position wins over a higher failover_priority (Patroni: priority breaks a tie)",
                Observed { leader: None, peers: vec![Peer { priority: 2, ..peer("c", 90) }], ..base() },
                Some(Action::AcquireLeader),
            ),
            (
                "at the same position a higher failover_priority goes first",
                Observed { leader: None, peers: vec![Peer { priority: 2, ..peer("c", 100) }], ..base() },
                None,
            ),
            ("nofailover never races", Observed { leader: None, nofailover: true, priority: 0, ..base() }, None),
            (
                "priority 0 with an explicit nofailover: false races when nobody is as far ahead",
                Observed { leader: None, priority: 0, peers: vec![peer("c", 90)], ..base() },
                Some(Action::AcquireLeader),
            ),
            (
                "priority 0 with an explicit nofailover: false lets a priority-1 member as far ahead go first",
                Observed { leader: None, priority: 0, peers: vec![peer("c", 100)], ..base() },
                None,
            ),
            (
                "a peer within the lag limit but behind me does not hold me back, whatever its priority",
                Observed {
                    leader: None,
                    cluster_optime: Some(3 << 20),
                    maximum_lag_on_failover: 3 << 20,
                    peers: vec![Peer { priority: 5, ..peer("c", 1) }],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "key held, PostgreSQL down past primary_start_timeout: release",
                Observed { pg: RunningAs::Stopped, primary_down_since_ms: Some(0), now_ms: 300_000, ..leader() },
                Some(Action::ReleaseLeader),
            ),
            (
                "a replica on a timeline the history key records as ended never races, whatever its LSN",
                Observed {
                    leader: None,
                    history_timeline: Some(1),
                    pg: RunningAs::Replica { lsn: 900, timeline: 1, upstream: None },
                    peers: vec![Peer { timeline: Some(2), ..peer("a", 100) }],
                    ..base()
                },
                None,
            ),
            (
                "key held with a replica's data directory: start read-only (then promote), never as primary",
                Observed { pg: RunningAs::Stopped, ..leader() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "key held with a former primary's data directory: start as primary",
                Observed { pg: RunningAs::Stopped, data: Some(dir(true, Some(1 << 40))), ..leader() },
                Some(Action::StartPrimary),
            ),
            (
                "a replica past the end of its timeline stops, to rewind",
                Observed {
                    leader_timeline: Some(2),
                    history_switches: vec![(1, 90)],
                    pg: RunningAs::Replica { lsn: 100, timeline: 1, upstream: Some("a".into()) },
                    ..base()
                },
                Some(Action::Demote),
            ),
            (
                "a replica behind the end of its timeline follows",
                Observed {
                    leader_timeline: Some(2),
                    history_switches: vec![(1, 120)],
                    pg: RunningAs::Replica { lsn: 100, timeline: 1, upstream: Some("a".into()) },
                    ..base()
                },
                None,
            ),
            (
                "a promotion I recorded and never made is withdrawn",
                Observed {
                    leader: None,
                    history_timeline: Some(1),
                    history_author: Some("b".into()),
                    pg: RunningAs::Replica { lsn: 900, timeline: 1, upstream: None },
                    ..base()
                },
                Some(Action::WithdrawPromotion { timeline: 1 }),
            ),
            (
                "a promotion recorded by another member is not mine to withdraw",
                Observed {
                    leader: None,
                    history_timeline: Some(1),
                    history_author: Some("a".into()),
                    pg: RunningAs::Replica { lsn: 900, timeline: 1, upstream: None },
                    ..base()
                },
                None,
            ),
            (
                "a former primary starting without the key is stopped before it opens",
                Observed {
                    leader: None,
                    pg: RunningAs::Transitioning,
                    pg_starting: true,
                    data: Some(dir(true, Some(1 << 40))),
                    ..base()
                },
                Some(Action::Demote),
            ),
            (
                "a running primary merely silent to queries (no status yet) is not stopped",
                Observed {
                    leader: Some("b".into()),
                    pg: RunningAs::Transitioning,
                    data: Some(dir(true, Some(1 << 40))),
                    ..base()
                },
                None,
            ),
            (
                "without etcd a replica waits",
                Observed { etcd_answered: false, leader: None, initialize: None, ..base() },
                None,
            ),
            // Cases that pin the candidate rule down (each kills a mutant
            // `cargo mutants` found surviving; docs/mutants.md).
            (
                "a rival tagged nofailover never holds me back, whatever its position",
                Observed {
                    leader: None,
                    peers: vec![Peer { nofailover: true, priority: 0, ..peer("a", 500) }],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "a rival of priority 0 (nofailover: false) as far as me does not hold me back",
                Observed { leader: None, peers: vec![Peer { priority: 0, ..peer("a", 100) }], ..base() },
                Some(Action::AcquireLeader),
            ),
            (
                "a rival of priority 0 (nofailover: false) ahead of me goes first",
                Observed { leader: None, peers: vec![Peer { priority: 0, ..peer("a", 101) }], ..base() },
                None,
            ),
            (
                "a rival beyond the lag limit never holds me back, whatever its priority",
                Observed {
                    leader: None,
                    cluster_optime: Some(1000),
                    maximum_lag_on_failover: 950,
                    peers: vec![Peer { priority: 5, ..peer("a", 1) }],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "a rival behind me with a smaller name does not hold me back",
                Observed { leader: None, peers: vec![peer("a", 50)], ..base() },
                Some(Action::AcquireLeader),
            ),
            (
                "an equal rival with a larger name does not hold me back",
                Observed { leader: None, peers: vec![peer("c", 100)], ..base() },
                Some(Action::AcquireLeader),
            ),
            (
                "an equal rival with a smaller name goes first",
                Observed { leader: None, peers: vec![peer("a", 100)], ..base() },
                None,
            ),
            (
                "a member named in the failover key tagged nofailover never takes the key",
                Observed { leader: None, nofailover: true, priority: 0, failover: request(None, Some("b")), ..base() },
                None,
            ),
            (
                "out of synchronous mode a stale sync key restricts nobody",
                Observed {
                    leader: None,
                    sync_mode: false,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["c".into()],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "the last primary resumes when its own key names it on its timeline",
                Observed { leader: Some("b".into()), leader_timeline: Some(1), ..resumable() },
                Some(Action::AcquireLeader),
            ),
            (
                "a replica holding its own key unproven gives it up",
                Observed { leader: Some("b".into()), holds_leader: false, ..base() },
                Some(Action::ReleaseLeader),
            ),
            (
                "no leader, but a peer still runs as a primary: nobody races",
                Observed { leader: None, peers: vec![Peer { primary: true, ..peer("a", 50) }], ..base() },
                None,
            ),
            (
                "paused, a running primary whose key is on an old lease re-binds it",
                Observed { paused: true, holds_leader: false, ..leader() },
                Some(Action::AcquireLeader),
            ),
            (
                "paused, a running primary whose key expired takes it back",
                Observed { paused: true, holds_leader: false, leader: None, ..leader() },
                Some(Action::AcquireLeader),
            ),
            (
                "leader whose fencer went silent hands over to an eligible replica",
                Observed { can_lead: false, fencer_lost: true, ..leader() },
                Some(Action::Switchover { candidate: None }),
            ),
            (
                "leader whose fencer went silent stays when nobody can take over",
                Observed { can_lead: false, fencer_lost: true, peers: vec![], ..leader() },
                None,
            ),
            (
                "a leader not yet acknowledged by its fencer (an agent just restarted) keeps leading",
                Observed { can_lead: false, fencer_lost: false, ..leader() },
                None,
            ),
            (
                "key held, PostgreSQL still in crash recovery past primary_start_timeout: stop it first",
                Observed { pg: RunningAs::Transitioning, primary_down_since_ms: Some(0), now_ms: 300_000, ..leader() },
                Some(Action::Demote),
            ),
            (
                "switchover to a named, eligible candidate",
                Observed { failover: request(Some("b"), Some("c")), ..leader() },
                Some(Action::Switchover { candidate: Some("c".into()) }),
            ),
            (
                "switchover without a candidate",
                Observed { failover: request(Some("b"), None), ..leader() },
                Some(Action::Switchover { candidate: None }),
            ),
            (
                "a scheduled switchover waits",
                Observed {
                    failover: Some(FailoverRequest {
                        scheduled: Schedule::At(1),
                        ..request(Some("b"), None).expect("some")
                    }),
                    ..leader()
                },
                None,
            ),
            (
                "a switchover to a nofailover member is cleared",
                Observed {
                    failover: request(Some("b"), Some("c")),
                    peers: vec![Peer { nofailover: true, ..peer("c", 100) }],
                    ..leader()
                },
                Some(Action::ClearFailover),
            ),
            (
                "a switchover to a lagging member is cleared",
                Observed {
                    failover: request(Some("b"), Some("c")),
                    cluster_optime: Some(100 + (2 << 20)),
                    peers: vec![peer("c", 100)],
                    ..leader()
                },
                Some(Action::ClearFailover),
            ),
            (
                "a request for another leader is cleared",
                Observed { failover: request(Some("a"), None), ..leader() },
                Some(Action::ClearFailover),
            ),
            (
                "the new leader clears the request that named it",
                Observed { failover: request(Some("a"), Some("b")), ..leader() },
                Some(Action::ClearFailover),
            ),
            (
                "the named candidate takes the free key",
                Observed {
                    leader: None,
                    failover: request(Some("a"), Some("b")),
                    peers: vec![peer("c", 500)],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "others wait for the named candidate",
                Observed {
                    me: "c".into(),
                    leader: None,
                    failover: request(Some("a"), Some("b")),
                    peers: vec![peer("b", 1)],
                    ..base()
                },
                None,
            ),
            (
                "a stopped former primary rejoins the new leader",
                Observed {
                    pg: RunningAs::Stopped,
                    data: Some(dir(true, Some(1 << 40))),
                    leader_timeline: Some(2),
                    ..base()
                },
                Some(Action::Rejoin { leader: "a".into() }),
            ),
            (
                "a stopped replica on an older timeline rejoins",
                Observed { pg: RunningAs::Stopped, leader_timeline: Some(2), ..base() },
                Some(Action::Rejoin { leader: "a".into() }),
            ),
            (
                "rejoin waits for the new leader's checkpoint",
                Observed { pg: RunningAs::Stopped, leader_timeline: Some(2), leader_checkpointed: false, ..base() },
                None,
            ),
            (
                "the last primary, stopped (fenced in an etcd outage), nothing promoted: resume",
                resumable(),
                Some(Action::AcquireLeader),
            ),
            (
                "the last primary with its own key on an old lease: re-bind and resume",
                Observed { leader: Some("b".into()), ..resumable() },
                Some(Action::AcquireLeader),
            ),
            (
                "a stopped former primary after a promotion recorded in history: start read-only",
                Observed { history_timeline: Some(1), ..resumable() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "a stopped former primary while a member reports a later timeline: start read-only",
                Observed { peers: vec![Peer { timeline: Some(2), ..peer("a", 100) }], ..resumable() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "a former primary that handed the key over does not take it back",
                Observed { released_at_ms: Some(0), ..resumable() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "a former primary while a switchover names another: start read-only",
                Observed { failover: request(Some("b"), Some("a")), ..resumable() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "a stopped replica's data never resumes as primary",
                Observed { data: Some(dir(false, None)), ..resumable() },
                Some(Action::StartReplica { upstream: None }),
            ),
            (
                "sync mode: a standby not in sync never races",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["c".into()],
                    ..base()
                },
                None,
            ),
            (
                "quorum commit: a voter that hears from no other of a quorum of 1 does not race, and says why",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["b".into(), "c".into()],
                    sync_quorum: 1,
                    peers: vec![Peer { running: false, lsn: None, ..peer("c", 0) }],
                    ..base()
                },
                None,
            ),
            (
                "quorum commit: a voter ahead of another voter has its quorum and races",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["b".into(), "c".into()],
                    sync_quorum: 1,
                    peers: vec![Peer { nofailover: true, ..peer("c", 90) }],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "quorum commit: a member not listed is no vote",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["b".into(), "c".into()],
                    sync_quorum: 1,
                    peers: vec![peer("d", 90)],
                    ..base()
                },
                None,
            ),
            (
                "quorum commit: the former leader counts as a vote",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["b".into(), "c".into()],
                    sync_quorum: 1,
                    peers: vec![Peer { nofailover: true, ..peer("a", 100) }],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "sync mode: the listed standby races",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["b".into()],
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "sync mode: an unlisted but more advanced peer does not make the listed one wait",
                Observed {
                    leader: None,
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["b".into()],
                    peers: vec![peer("c", 500)],
                    cluster_optime: Some(500),
                    maximum_lag_on_failover: 1 << 20,
                    ..base()
                },
                Some(Action::AcquireLeader),
            ),
            (
                "sync mode: a switchover to a standby not in sync is cleared",
                Observed {
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["a".into()],
                    failover: request(Some("b"), Some("c")),
                    ..leader()
                },
                Some(Action::ClearFailover),
            ),
            (
                "sync mode: a switchover to the sync standby proceeds",
                Observed {
                    sync_mode: true,
                    sync_leader: Some("a".into()),
                    sync_standbys: vec!["c".into()],
                    failover: request(Some("b"), Some("c")),
                    ..leader()
                },
                Some(Action::Switchover { candidate: Some("c".into()) }),
            ),
            ("paused: no race", Observed { leader: None, paused: true, ..base() }, None),
            (
                "paused: no fence",
                Observed { pg: RunningAs::Primary { lsn: 5, timeline: 1 }, paused: true, ..base() },
                None,
            ),
            ("paused: no restart", Observed { pg: RunningAs::Stopped, paused: true, ..base() }, None),
            (
                "paused: a named switchover still proceeds",
                Observed { paused: true, failover: request(Some("b"), Some("c")), ..leader() },
                Some(Action::Switchover { candidate: Some("c".into()) }),
            ),
            (
                "paused: the candidate a named switchover handed the key to promotes",
                Observed {
                    paused: true,
                    holds_leader: true,
                    leader: Some("b".into()),
                    failover: request(Some("a"), Some("b")),
                    ..base()
                },
                Some(Action::Promote),
            ),
            (
                "paused: the former primary a switchover stopped rejoins the new leader",
                Observed {
                    paused: true,
                    pg: RunningAs::Stopped,
                    data: Some(dir(true, Some(100))),
                    released_at_ms: Some(29_000),
                    now_ms: 30_000,
                    ..base()
                },
                Some(Action::Rejoin { leader: "a".into() }),
            ),
            (
                "paused: a replica holding the key is otherwise not promoted",
                Observed { paused: true, holds_leader: true, leader: Some("b".into()), ..base() },
                None,
            ),
            (
                "paused: a switchover without a candidate is cleared",
                Observed { paused: true, failover: request(Some("b"), None), ..leader() },
                Some(Action::ClearFailover),
            ),
        ];
        for (name, obs, expected) in cases.into_iter().chain(more) {
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

    fn arb_pg() -> impl Strategy<Value = RunningAs> {
        let upstream =
            proptest::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())]);
        prop_oneof![
            Just(RunningAs::Stopped),
            Just(RunningAs::Transitioning),
            (0u64..200, 1u64..3).prop_map(|(lsn, timeline)| RunningAs::Primary { lsn, timeline }),
            (0u64..200, 1u64..3, upstream).prop_map(|(lsn, timeline, upstream)| RunningAs::Replica {
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
            wal_end in proptest::option::of(0u64..400),
            leader_timeline in 1u64..3,
            leader_checkpointed in any::<bool>(),
            paused in any::<bool>(),
            failover in proptest::option::of((arb_name(), arb_name(), any::<bool>())),
            primary_down_since_ms in proptest::option::of(0u64..2_000),
            history_timeline in proptest::option::of(0u64..3),
            peer_timeline in proptest::option::of(1u64..3),
            released_at_ms in proptest::option::of(0u64..40_000),
            sync_mode in any::<bool>(),
            sync_standbys in proptest::collection::vec(prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())], 0..3),
            sync_leader in arb_name(),
            peers_have_data in any::<bool>(),
            etcd_answered in any::<bool>(),
            can_lead in any::<bool>(),
            peers_can_lead in any::<bool>(),
            peers_primary in any::<bool>(),
            peers_released in any::<bool>(),
            pg_starting in any::<bool>(),
            standby_cluster in any::<bool>(),
        ) -> Observed {
            // The shell reports the key held only when etcd names us.
            let holds_leader = holds && leader.as_deref() == Some("b");
            Observed {
                me: "b".into(),
                // From draws already here (see standby_upstream below).
                data: has_data.then_some(DataDir { sysid, was_primary, timeline: 1, wal_end, min_recovery_end: wal_end.map(|end| (1, end)), restored_backup: false }),
                pg: if has_data { pg.clone() } else { RunningAs::Stopped },
                pg_starting: pg_starting && pg == RunningAs::Transitioning,
                // One more strategy overflows the test thread's stack in a
                // debug build: an independent draw that is already here.
                standby_upstream: match &pg {
                    RunningAs::Replica { upstream, .. } => upstream.clone(),
                    _ => sync_leader.clone(),
                },
                initialize,
                leader,
                holds_leader,
                peers: peers.into_iter().map(|(name, running, lsn, nofailover)| Peer {
                    name: name.into(), running, lsn, nofailover, clonefrom: false, reachable: true, priority: 1,
                    timeline: peer_timeline, has_data: peers_have_data || running, can_lead: peers_can_lead,
                    primary: peers_primary && running,
                    released: peers_released,
                    position_unknown_since_ms: None,
                }).collect(),
                nofailover,
                priority: 1,
                cluster_optime: optime,
                maximum_lag_on_failover: 50,
                leader_timeline: Some(leader_timeline),
                leader_checkpointed,
                paused,
                failover: failover.map(|(leader, candidate, due)| FailoverRequest {
                    leader,
                    candidate,
                    scheduled: if due { Schedule::Now } else { Schedule::At(1) },
                }),
                now_ms: 30_000,
                now_unix_ms: 0,
                ttl_ms: 10_000,
                // Before now - 500: timed out; after it: not yet.
                primary_down_since_ms: primary_down_since_ms.map(|since| since + 28_500),
                primary_start_timeout_ms: 500,
                primary_start_failed: false,
                history_timeline,
                history_author: None,
                history_switches: history_timeline.filter(|tl| *tl > 0).map(|tl| vec![(tl, 150)]).unwrap_or_default(),
                released_at_ms,
                sync_mode,
                sync_standbys,
                sync_leader,
                // From a draw already here (see standby_upstream above).
                sync_quorum: optime.map_or(0, |o| (o % 3) as usize),
                etcd_answered,
                not_streaming: None,
                unsupported: None,
                can_lead,
                fencer_lost: !can_lead,
                // From a draw already here (see standby_upstream above).
                reinit_requested: pg_starting && paused,
                replicatefrom: None,
                nostream: false,
                cascades: vec![],
                failsafe_leader: None,
                failsafe_members: vec![],
                // From a draw already here: a no_leader method is configured
                // on some draws.
                clone_without_leader: peers_released,
                standby_cluster,
                follows_remote: standby_cluster && pg_starting,
                race_backoff: RaceBackoff::default(),
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
        fn only_a_former_primarys_data_starts_as_primary(obs in arb_observed()) {
            let d = decide(&obs);
            if d.action == Some(Action::StartPrimary) {
                prop_assert!(obs.data.as_ref().is_some_and(|data| data.was_primary), "{d}");
            }
        }

        #[test]
        fn a_primary_without_the_key_fences_or_rebinds_its_own(obs in arb_observed()) {
            let d = decide(&obs);
            if matches!(obs.pg, RunningAs::Primary { .. }) && !obs.holds_leader && !d.refused && !obs.paused {
                let rebind = obs.leader.as_deref() == Some("b") && d.action == Some(Action::AcquireLeader);
                prop_assert!(d.action == Some(Action::Demote) || rebind, "{d}");
            }
        }

        #[test]
        fn a_stopped_node_takes_the_key_only_to_resume_its_own_timeline(obs in arb_observed()) {
            let d = decide(&obs);
            if obs.pg == RunningAs::Stopped && !obs.holds_leader && d.action == Some(Action::AcquireLeader) {
                let data = obs.data.as_ref().expect("a node without data never takes the key");
                prop_assert!(data.was_primary && !obs.released_leader(), "{d}");
                prop_assert!(obs.history_timeline.is_none_or(|tl| tl < data.timeline), "{d}");
                prop_assert!(obs.peers.iter().all(|p| p.timeline.is_none_or(|tl| tl <= data.timeline)), "{d}");
                prop_assert!(obs.leader.is_none() || obs.leader.as_deref() == Some("b"), "{d}");
                // Finding 3: its own WAL reaches the last published position.
                prop_assert!(obs.cluster_optime.is_none_or(|o| data.wal_end.is_some_and(|end| end >= o)), "{d}");
            }
        }

        #[test]
        /// Named in the `failover` key or not (finding 2 of the safety
        /// review: a named candidate skipped this check).
        fn in_synchronous_mode_only_a_listed_standby_races(obs in arb_observed()) {
            let d = decide(&obs);
            let active = obs.sync_mode && obs.sync_leader.is_some();
            if active && matches!(obs.pg, RunningAs::Replica { .. }) && d.action == Some(Action::AcquireLeader) {
                let listed = obs.sync_standbys.iter().any(|s| s == "b") || obs.sync_leader.as_deref() == Some("b");
                prop_assert!(listed, "{d}");
            }
        }

        /// Quorum commit: a replica other than the former leader takes the
        /// key only when `quorum + 1` of the listed members (itself
        /// included) are at or below its position: at most `quorum` of them
        /// lack an acknowledged commit (`ha_core::quorum`).
        #[test]
        fn in_quorum_commit_a_replica_races_only_with_a_quorum_at_or_below_it(obs in arb_observed()) {
            let d = decide(&obs);
            if let RunningAs::Replica { lsn, .. } = obs.pg
                && obs.sync_mode
                && d.action == Some(Action::AcquireLeader)
                && let Some(leader) = obs.sync_leader.as_deref().filter(|l| *l != "b")
            {
                let listed = |n: &str| n == leader || obs.sync_standbys.iter().any(|s| s == n);
                let at_or_below = obs
                    .peers
                    .iter()
                    .filter(|p| listed(&p.name) && p.running && p.lsn.is_some_and(|l| l <= lsn))
                    .count();
                prop_assert!(usize::from(listed("b")) + at_or_below > obs.sync_quorum, "{d}");
            }
        }

        #[test]
        fn nobody_races_while_a_peer_runs_as_a_primary(obs in arb_observed()) {
            let d = decide(&obs);
            let primary_alive = obs.peers.iter().any(|p| p.primary);
            if primary_alive && !matches!(obs.pg, RunningAs::Primary { .. }) && !obs.holds_leader {
                prop_assert_ne!(d.action.clone(), Some(Action::AcquireLeader), "{}", d);
            }
        }

        #[test]
        fn a_replica_on_an_ended_timeline_never_races(obs in arb_observed()) {
            let d = decide(&obs);
            if let RunningAs::Replica { timeline, .. } = obs.pg
                && obs.history_timeline.is_some_and(|ended| timeline <= ended)
            {
                prop_assert_ne!(d.action.clone(), Some(Action::AcquireLeader), "{}", d);
            }
        }

        #[test]
        fn a_replica_races_only_within_the_lag_limit(obs in arb_observed()) {
            let d = decide(&obs);
            if let RunningAs::Replica { lsn, .. } = obs.pg
                && d.action == Some(Action::AcquireLeader)
            {
                let lag = obs.cluster_optime.map_or(0, |optime| optime.saturating_sub(lsn));
                prop_assert!(lag <= obs.maximum_lag_on_failover, "{d}");
            }
        }

        #[test]
        fn foreign_data_is_never_touched(obs in arb_observed()) {
            let d = decide(&obs);
            let foreign = matches!((&obs.data, &obs.initialize), (Some(data), Some(id)) if !id.is_empty() && *id != data.sysid);
            if foreign {
                prop_assert!(d.refused, "{d}");
            }
            if d.refused {
                prop_assert_eq!(d.action, None);
            }
        }

        #[test]
        fn paused_means_no_automatic_action(obs in arb_observed()) {
            let d = decide(&obs);
            if obs.paused {
                let named = obs.failover.as_ref().is_some_and(|f| f.candidate.is_some());
                // A running primary keeps or takes back its own key.
                let own_key = matches!(obs.pg, RunningAs::Primary { .. })
                    && d.action == Some(Action::AcquireLeader)
                    && obs.leader.as_deref().is_none_or(|l| l == "b");
                // An operator's reinit: a clone, then a start as a replica.
                let reinit = obs.reinit_requested
                    && matches!(d.action, Some(Action::Clone { .. }) | Some(Action::StartReplica { upstream: Some(_) }));
                // A named switchover's own last steps: the candidate holding
                // the key promotes; the former primary that handed it over
                // rejoins the new leader.
                let named_to_me = obs.failover.as_ref().is_some_and(|f| f.candidate.as_deref() == Some("b"));
                let promotes = named_to_me && obs.holds_leader && d.action == Some(Action::Promote);
                let handed_over = obs.pg == RunningAs::Stopped
                    && obs.released_leader()
                    && obs.data.as_ref().is_some_and(|data| data.was_primary)
                    && matches!(&d.action, Some(Action::Rejoin { leader }) if obs.leader.as_deref() == Some(leader.as_str()));
                let allowed = matches!(d.action, None | Some(Action::ClearFailover))
                    || reinit
                    || own_key
                    || promotes
                    || handed_over
                    || (named && matches!(d.action, Some(Action::Switchover { candidate: Some(_) }) | Some(Action::AcquireLeader)));
                prop_assert!(allowed, "{d}");
            }
        }

        /// Stopping a standby is never a way to a second writer, but it
        /// must be for a reason: one that can never become consistent.
        #[test]
        fn a_standby_still_starting_is_stopped_only_when_forked(obs in arb_observed()) {
            let d = decide(&obs);
            let standby = obs.data.as_ref().filter(|data| !data.was_primary);
            // (A leader's own start that timed out is the leader rules' to stop.)
            if let Some(data) = standby
                && obs.pg == RunningAs::Transitioning
                && !obs.holds_leader
                && d.action == Some(Action::Demote)
            {
                prop_assert!(forked_standby(&obs, data).is_some(), "{d}");
            }
        }

        #[test]
        fn rejoins_only_after_the_new_leader_checkpointed(obs in arb_observed()) {
            let d = decide(&obs);
            if matches!(d.action, Some(Action::Rejoin { .. })) {
                prop_assert!(obs.leader_checkpointed && obs.data.is_some());
            }
        }

        #[test]
        fn only_the_leader_switches_over(obs in arb_observed()) {
            let d = decide(&obs);
            if matches!(d.action, Some(Action::Switchover { .. })) {
                prop_assert!(obs.holds_leader);
            }
            if d.action == Some(Action::ReleaseLeader) {
                let own_unproven = obs.leader.as_deref() == Some("b") && !matches!(obs.pg, RunningAs::Primary { .. });
                prop_assert!(obs.holds_leader || own_unproven, "{d}");
            }
        }

        /// A member whose fencer does not acknowledge never races for the
        /// key (it could not take it: the others would wait on it), and a
        /// leader never hands over to such a member (the hardening probe saw
        /// a switchover to one leave the cluster without a primary for 50 s).
        #[test]
        fn only_a_member_whose_fencer_acknowledges_takes_or_is_handed_the_key(obs in arb_observed()) {
            let d = decide(&obs);
            let rebind_own = matches!(obs.pg, RunningAs::Primary { .. }) && obs.leader.as_deref() == Some("b");
            if !obs.can_lead && !rebind_own {
                prop_assert_ne!(d.action.clone(), Some(Action::AcquireLeader), "{}", d);
            }
            if let Some(Action::Switchover { candidate: Some(candidate) }) = &d.action {
                prop_assert!(obs.peers.iter().any(|p| &p.name == candidate && p.can_lead), "{}", d);
            }
        }

        #[test]
        fn the_switchover_candidate_is_always_eligible(obs in arb_observed()) {
            if let Some(name) = switchover_candidate(&obs) {
                prop_assert!(eligible_peer(&obs, &name).is_some());
            }
        }

        #[test]
        fn nofailover_never_races(obs in arb_observed()) {
            let obs = Observed { nofailover: true, ..obs };
            let d = decide(&obs);
            // Re-binding a key that already names this member (the last
            // primary after an agent restart) is not a race: nofailover
            // keeps a member from taking the key, not from keeping its own.
            let own_key = obs.leader.as_deref() == Some(obs.me.as_str());
            if obs.nofailover && !matches!(obs.pg, RunningAs::Primary { .. }) && !own_key {
                prop_assert_ne!(d.action.clone(), Some(Action::AcquireLeader), "{}", d);
            }
        }

        #[test]
        fn bootstraps_only_an_uninitialised_cluster_from_empty_data(obs in arb_observed()) {
            let d = decide(&obs);
            if d.action == Some(Action::Bootstrap) {
                // A standby cluster may start from data here (it never writes).
                prop_assert!((obs.data.is_none() || obs.standby_cluster) && obs.initialize.is_none());
                prop_assert!(obs.peers.iter().all(|p| !p.has_data), "bootstrapped beside a member with data: {d}");
            }
        }

        #[test]
        fn a_primary_in_a_scope_etcd_does_not_know_is_never_stopped(obs in arb_observed()) {
            let d = decide(&obs);
            if matches!(obs.pg, RunningAs::Primary { .. }) && obs.etcd_answered && obs.initialize.is_none() && obs.leader.is_none() && !obs.holds_leader {
                prop_assert!(d.action.is_none(), "{d}");
                prop_assert!(d.refused || obs.paused, "{d}");
            }
        }

        /// A standby cluster has no primary: nobody in it promotes, starts
        /// as a primary, or (its leader) follows a member instead of the
        /// remote primary.
        #[test]
        fn nobody_in_a_standby_cluster_ever_becomes_writable(obs in arb_observed()) {
            let obs = Observed { standby_cluster: true, ..obs };
            let d = decide(&obs);
            prop_assert!(
                !matches!(d.action, Some(Action::Promote) | Some(Action::StartPrimary)),
                "{:?} in a standby cluster: {}", d.action, d.reason
            );
            if obs.holds_leader {
                prop_assert!(
                    !matches!(d.action, Some(Action::StartReplica { .. }) | Some(Action::Follow { .. })),
                    "the standby leader follows the remote primary, not {:?}", d.action
                );
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
