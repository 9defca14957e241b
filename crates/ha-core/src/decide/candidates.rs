//! Who may lead, and from whom to stream and clone: the race's ranking,
//! a named candidate's checks, quorum commit's rule, a leader's pick for a
//! switchover, and the upstream a replica follows.

use super::*;

/// Whether this node may race for the leader key now: not tagged
/// `nofailover`, not lagging more than allowed behind the last leader, and
/// no running, eligible peer is better: a more advanced WAL position, then,
/// at the same position, a higher `failover_priority` (Patroni's order:
/// priority never outweighs WAL, which would lose commits), then (all
/// equal) a lower name. A running peer that has not reported its position
/// yet makes it wait.
pub fn is_best_candidate(obs: &Observed, my_lsn: u64, my_timeline: u64) -> bool {
    let rules = obs.candidate_rules();
    if rules.problem(&obs.contender_self(my_lsn, my_timeline)).is_some() || !quorum_reached(obs, my_lsn) {
        return false;
    }
    better_rival(obs, my_lsn).is_none()
}

/// Why `is_best_candidate` makes this node wait for a peer, naming the
/// first such peer: further ahead, as far and of a higher priority, equal
/// and first by name, or running with no position reported yet. The
/// first two are Patroni's log lines, which operators grep for.
pub(super) fn better_rival(obs: &Observed, my_lsn: u64) -> Option<String> {
    let rules = obs.candidate_rules();
    let mine = (my_lsn, obs.priority);
    // A rival: it could lead but for its position, which is compared below
    // (one beyond the lag limit never holds a candidate back).
    let may_lead = |p: &&Peer| {
        matches!(rules.problem(&obs.contender(p)), None | Some(Ineligible::Lagging { .. } | Ineligible::NoPosition))
    };
    // A member that gave the key up itself (a switchover, or its PostgreSQL
    // not back within primary_start_timeout: 0 means "fail over at once")
    // leaves the race to the members that did not, as Patroni does: the
    // others do not wait for it, and it races only when none of them can
    // (then against the other members that gave the key up, as usual).
    let fresh = |p: &&Peer| !p.released && rules.problem(&obs.contender(p)).is_none();
    let fresh_rival = obs.peers.iter().find(fresh);
    if obs.released_leader()
        && let Some(peer) = fresh_rival
    {
        return Some(format!("{} may lead, and I gave the key up", peer.name));
    }
    let fresh_rival = fresh_rival.is_some();
    let rivals = |p: &&Peer| may_lead(p) && (!p.released || !fresh_rival && obs.released_leader());
    obs.peers.iter().filter(rivals).find_map(|peer| {
        let name = &peer.name;
        Some(match peer.lsn {
            Some(lsn) => return ahead_of_me(obs, peer, lsn, mine),
            // It gave the key up, and its PostgreSQL does not answer (it did
            // not start again after a crash, or it is stopping for a
            // switchover): not waited for, as a peer whose position stays
            // unknown for a ttl is not (`Observed::takes_part`); the lag
            // limit and the synchronous rule still bound what this node
            // may lack.
            None if peer.released => return None,
            None => format!("{name} runs, its WAL position not known yet"),
        })
    })
}

/// What a race was decided on, for the log: this node's position and
/// priority, then each other member's ("b at 0/3000060 priority 2", "c not
/// running").
pub(super) fn race_positions(obs: &Observed, my_lsn: u64) -> String {
    let mut parts = vec![format!("mine {} priority {}", Lsn(my_lsn), obs.priority)];
    parts.extend(obs.peers.iter().map(|peer| match (peer.running, peer.lsn) {
        (true, Some(lsn)) => format!("{} at {} priority {}", peer.name, Lsn(lsn), peer.priority),
        (true, None) => format!("{} position unknown", peer.name),
        (false, _) => format!("{} not running", peer.name),
    }));
    parts.join(", ")
}

/// Why `peer`, at `lsn`, goes before this node (`mine`: its position and
/// priority) in the race, in Patroni's words; `None` when it does not, or
/// when it lags beyond `maximum_lag_on_failover`.
fn ahead_of_me(obs: &Observed, peer: &Peer, lsn: u64, mine: (u64, u32)) -> Option<String> {
    let name = &peer.name;
    if obs.candidate_rules().lag(lsn) > obs.maximum_lag_on_failover {
        return None;
    }
    let (my_lsn, my_priority) = mine;
    Some(match lsn.cmp(&my_lsn) {
        // Patroni's words, then both positions (races lost by a few bytes
        // are told apart in the log).
        std::cmp::Ordering::Greater => {
            format!("Wal position of {name} is ahead of my wal position ({} > {})", Lsn(lsn), Lsn(my_lsn))
        }
        std::cmp::Ordering::Equal if peer.priority > my_priority => format!(
            "{name} has equally tolerable WAL position and priority {}, while this node has priority {my_priority}",
            peer.priority
        ),
        std::cmp::Ordering::Equal if peer.priority == my_priority && peer.name < obs.me => {
            format!("{name} has the same WAL position and priority, and comes first by name")
        }
        _ => return None,
    })
}

/// Why a replica that could lead follows `leader`, which has just taken
/// the key, in the race's words ("X has equally tolerable WAL position and
/// priority 2, ...", "Wal position of X is ahead of my wal position"), from
/// the new leader's last published position: a fast taker can hold the
/// key before this node's tick ever sees it free, and the explanation is
/// logged all the same (Patroni's replicas always log it). `None` when
/// this node may not lead, or the leader did not go before it.
pub(super) fn why_the_new_leader(obs: &Observed, leader: &str, my_lsn: u64, my_timeline: u64) -> Option<String> {
    // The new leader's promotion may already have ended this node's
    // timeline in the `history` key: that came after the race.
    let rules = obs.candidate_rules();
    if !matches!(rules.problem(&obs.contender_self(my_lsn, my_timeline)), None | Some(Ineligible::EndedTimeline { .. }))
    {
        return None;
    }
    let peer = obs.peers.iter().find(|p| p.name == leader)?;
    match peer.lsn {
        Some(lsn) => ahead_of_me(obs, peer, lsn, (my_lsn, obs.priority)),
        // Promoting, its position not published yet: it passed the lag
        // limit to take the key, so only the priority can be told.
        None if peer.priority > obs.priority => ahead_of_me(obs, peer, my_lsn, (my_lsn, obs.priority)),
        None => None,
    }
}

/// A member on a timeline the `history` key records as ended: its WAL
/// misses the latest promotion, and promoting it would fork a second
/// history (DESIGN invariant 4; Patroni checks the same).
pub(super) fn behind_cluster_timeline(obs: &Observed, timeline: u64) -> bool {
    obs.candidate_rules().timeline_ended(timeline)
}

/// A member named in the `failover` key may take the key: the candidate
/// rule, as for any other (`CandidateRules::problem`), and in quorum commit
/// the quorum (`quorum_reached`).
pub(super) fn named_may_lead(obs: &Observed, my_lsn: u64, my_timeline: u64) -> bool {
    obs.candidate_rules().problem(&obs.contender_self(my_lsn, my_timeline)).is_none() && quorum_reached(obs, my_lsn)
}

/// Quorum commit (`ha_core::quorum`): at most `quorum` of the members the
/// `sync` key lists (its leader and standbys) lack any acknowledged commit,
/// so a member that sees `quorum + 1` of them (itself counted when listed)
/// answer with a WAL position no further than its own holds every one, as
/// in Patroni's race. The former leader itself needs no votes (the
/// candidate rule still makes it wait for anyone ahead). With `quorum` 0
/// (synchronous mode `on`, or quorum commit with one voter) every listed
/// member holds every acknowledged commit, and being listed is enough.
pub(super) fn quorum_reached(obs: &Observed, my_lsn: u64) -> bool {
    quorum_shortfall(obs, my_lsn).is_none()
}

/// Why `quorum_reached` is not: how many listed members are at or below
/// this member's position, against how many are needed.
pub(super) fn quorum_shortfall(obs: &Observed, my_lsn: u64) -> Option<String> {
    let (needed, have) = quorum_count(obs, &obs.me, my_lsn, None)?;
    (have < needed).then(|| {
        format!(
            "no leader: quorum commit needs {needed} of {}, {} at or below my position, and {have} are",
            obs.sync_leader.as_deref().unwrap_or_default(),
            obs.sync_standbys.join(", "),
        )
    })
}

/// Quorum commit: the votes `candidate` (at `lsn`) needs and the ones this
/// member sees it have: the members the `sync` key lists that are at or
/// below `lsn` (this member at `my_lsn`, when it is not the candidate), the
/// candidate itself when listed. `None`: no quorum applies to it.
pub(super) fn quorum_count(obs: &Observed, candidate: &str, lsn: u64, my_lsn: Option<u64>) -> Option<(usize, usize)> {
    let leader = obs.sync_leader.as_deref().filter(|_| obs.sync_mode && obs.sync_quorum > 0)?;
    if leader == candidate {
        return None;
    }
    let listed = |name: &str| name == leader || obs.sync_standbys.iter().any(|s| s == name);
    let me = candidate != obs.me && listed(&obs.me) && my_lsn.is_some_and(|mine| mine <= lsn);
    let peers = obs
        .peers
        .iter()
        .filter(|p| p.name != candidate && listed(&p.name) && obs.takes_part(p) && p.lsn.is_some_and(|l| l <= lsn))
        .count();
    Some((obs.sync_quorum + 1, usize::from(listed(candidate)) + usize::from(me) + peers))
}

/// A named candidate this member waits for: eligible, and in quorum commit
/// with its quorum as far as this member sees (one that cannot reach it
/// would hold everyone back for ever).
pub(super) fn named_peer_may_take_over(obs: &Observed, candidate: &str, my_lsn: u64) -> bool {
    eligible_peer(obs, candidate).is_some_and(|peer| {
        peer.lsn.is_some_and(|lsn| {
            quorum_count(obs, candidate, lsn, Some(my_lsn)).is_none_or(|(needed, have)| have >= needed)
        })
    })
}

/// A peer that could take over in a switchover: the candidate rule
/// (`CandidateRules::problem`) finds nothing against it.
pub(super) fn eligible_peer<'a>(obs: &'a Observed, name: &str) -> Option<&'a Peer> {
    let rules = obs.candidate_rules();
    obs.peers.iter().find(|p| p.name == name && rules.problem(&obs.contender(p)).is_none())
}

/// The member a switchover without a named candidate hands over to: the
/// eligible peer (`CandidateRules::problem`: running, its fencer
/// acknowledging, not `nofailover`, in `sync` in synchronous mode, not on an
/// ended timeline, within the lag limit) with
/// the highest `failover_priority`, then the most advanced LSN, then the
/// smallest name.
pub fn switchover_candidate(obs: &Observed) -> Option<String> {
    obs.peers
        .iter()
        .filter(|p| eligible_peer(obs, &p.name).is_some())
        .max_by_key(|p| (p.priority, p.lsn, std::cmp::Reverse(p.name.clone())))
        .map(|p| p.name.clone())
}

/// What the leader does about a `failover` request.
pub(super) fn leader_failover(obs: &Observed, request: &FailoverRequest) -> Decision {
    let me = obs.me.as_str();
    if request.candidate.as_deref() == Some(me) {
        return Decision::act("the switchover to me is done: clear the request", Action::ClearFailover);
    }
    if let Some(leader) = request.leader.as_deref().filter(|l| *l != me) {
        return Decision::act(
            format!("the request names leader {leader}, but I lead: clear it"),
            Action::ClearFailover,
        );
    }
    match request.candidate.as_deref() {
        Some(candidate) if eligible_peer(obs, candidate).is_none() => {
            let why = obs
                .peers
                .iter()
                .find(|p| p.name == candidate)
                .and_then(|p| obs.candidate_rules().problem(&obs.contender(p)))
                .map_or_else(|| "not a member".to_string(), |problem| problem.to_string());
            Decision::act(
                format!("switchover candidate {candidate} cannot take over ({why}): clear the request"),
                Action::ClearFailover,
            )
        }
        _ if obs.paused && request.candidate.is_none() => {
            Decision::act("paused: a switchover needs a named candidate: clear the request", Action::ClearFailover)
        }
        None if !obs.peers.iter().any(|p| eligible_peer(obs, &p.name).is_some()) => {
            Decision::act("switchover requested but no member can take over: clear the request", Action::ClearFailover)
        }
        _ if !request.due(obs.now_unix_ms) => match &request.scheduled {
            Schedule::Unreadable(at) => {
                Decision::idle(format!("leader: ignoring a switchover with an unreadable scheduled_at {at:?}"))
            }
            _ => Decision::idle("leader: a switchover is scheduled"),
        },
        candidate => Decision::act(
            format!("switchover to {}", candidate.unwrap_or("the best candidate")),
            Action::Switchover { candidate: candidate.map(str::to_string) },
        ),
    }
}

/// Where a replica streams WAL from while `leader` leads: nowhere with
/// `nostream`; its `replicatefrom` member while that one can serve (it runs
/// and answers with a WAL position, advertises an address, is not a primary
/// other than the leader, is not on an older timeline than the leader, and
/// its own chain of `replicatefrom` does not come back to this member);
/// otherwise the leader (Patroni falls back to the leader too, once the
/// member's key is gone).
pub fn stream_source(obs: &Observed, leader: &str) -> Option<String> {
    if obs.nostream {
        return None;
    }
    let Some(wanted) = obs.replicatefrom.as_deref().filter(|w| *w != obs.me && *w != leader) else {
        return Some(leader.to_string());
    };
    let serves = obs.peers.iter().find(|p| p.name == wanted).is_some_and(|p| {
        obs.takes_part(p)
            && p.lsn.is_some()
            && p.reachable
            && !p.primary
            && match (p.timeline, obs.leader_timeline) {
                (Some(theirs), Some(leaders)) => theirs >= leaders,
                _ => true,
            }
    });
    // Follow the chain: a member that streams (by its tag) from this one,
    // directly or through others, cannot be this member's source.
    let mut hop = wanted;
    let mut loops = false;
    for _ in 0..=obs.cascades.len() {
        match obs.cascades.iter().find(|(peer, _)| peer == hop) {
            Some((_, next)) if *next == obs.me => {
                loops = true;
                break;
            }
            Some((_, next)) => hop = next,
            None => break,
        }
    }
    Some(if serves && !loops { wanted } else { leader }.to_string())
}

/// The member to clone from: a running peer tagged `clonefrom`, else the
/// leader once it advertises an address.
pub(super) fn clone_source(obs: &Observed, leader: &str) -> Option<String> {
    let reachable = |p: &&Peer| obs.takes_part(p) && p.reachable && p.name != obs.me;
    obs.peers
        .iter()
        .filter(reachable)
        .find(|p| p.clonefrom)
        .or_else(|| obs.peers.iter().filter(reachable).find(|p| p.name == leader))
        .map(|p| p.name.clone())
}

/// A stopped former primary may resume on its own timeline: it was the
/// primary of `data.timeline` (a primary's data directory on timeline T
/// belongs to the one member that promoted onto T, or bootstrapped T = 1),
/// and no promotion has happened since: `history` records none from T, and
/// no member reports a later timeline. Its WAL then contains everything any
/// replica received, so starting it as primary loses nothing and keeps the
/// timeline (Patroni would start it read-only and promote onto T + 1).
/// Besides the `history` key (which a new leader writes before it
/// promotes), its own WAL must reach the last position a leader published
/// (`status.optime`): WAL that ends short of it means someone led past it
/// (or its own last writes were lost), so it starts read-only and races.
pub(super) fn may_resume(obs: &Observed, data: &DataDir) -> bool {
    data.was_primary
        && data.timeline > 0
        && obs.cluster_optime.is_none_or(|optime| data.wal_end.is_some_and(|end| end >= optime))
        && !obs.released_leader()
        && obs.history_timeline.is_none_or(|tl| tl < data.timeline)
        && obs.leader_timeline.is_none_or(|tl| tl <= data.timeline)
        && obs.peers.iter().all(|p| p.timeline.is_none_or(|tl| tl <= data.timeline))
        && !obs.peers.iter().any(|p| p.primary)
}

/// A standby's data directory whose pages may already reflect WAL past the
/// point where its timeline ended in the cluster's history: PostgreSQL can
/// never make it consistent on a later timeline (it replays its own
/// timeline only up to the switch, then follows the new one, and never
/// reaches its minimum recovery point), so it would stay `starting` for
/// ever; only pg_rewind brings it back. Its timeline is the one
/// `pg_controldata` names with that location, not the newest history file
/// in `pg_wal`, which the WAL receiver may have fetched from the new leader
/// before it found the fork. Returns the timeline and where it ended.
pub(super) fn forked_standby(obs: &Observed, data: &DataDir) -> Option<(u64, u64)> {
    let (timeline, lsn) = data.min_recovery_end.filter(|_| !data.was_primary)?;
    obs.history_switches.iter().find(|(tl, end)| *tl == timeline && lsn > *end).copied()
}
