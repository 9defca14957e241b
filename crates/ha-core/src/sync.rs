//! Synchronous replication, decided purely: which standbys the leader lists
//! in `synchronous_standby_names` (the configured set P) and which it
//! publishes in the `sync` key (the set S, the only members that may take
//! over). One step at a time, in an order that keeps every acknowledged
//! commit on every member of S (DESIGN.md invariant 4):
//!
//! - `synchronous_standby_names = 'n (P)'` (`FIRST n`) with `n = |P|`: a commit
//!   waits for every listed standby;
//! - a standby enters P first; it enters S only once PostgreSQL reports it
//!   `sync` and it has then flushed up to the primary's position taken after
//!   that (every commit acknowledged before it joined P is below that
//!   position, every later one waited for it);
//! - a standby that is gone leaves S first (compare-and-swap), and only
//!   once that write succeeded leaves P: until then commits wait for it, so
//!   every member of S has every acknowledged commit;
//! - with no standby left, strict mode lists a placeholder nobody can match,
//!   so commits block instead of going asynchronous;
//! - a standby with a higher `sync_priority` than one in S takes its place:
//!   it joins P and then S as any does, and only then does the weaker one
//!   leave S and then P (so S never lacks a caught-up member); the same
//!   shrinking applies when `synchronous_node_count` is lowered;
//! - `maximum_lag_on_syncnode`: a standby whose flushed position lags the
//!   most advanced standby's (the primary's, when it is the only one) by
//!   more than that is not healthy: it leaves as a lost one does (S first),
//!   and is not chosen to join, so a hung standby stops holding commits.

/// Listed when strict mode has no standby: no server has this name.
pub const STRICT_PLACEHOLDER: &str = "__pgwarden_strict_sync_placeholder__";

/// One standby as the primary's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    pub name: String,
    /// `state = 'streaming'`.
    pub streaming: bool,
    /// PostgreSQL counts it as synchronous now (`sync_state = 'sync'`).
    pub sync: bool,
    pub flush_lsn: u64,
    /// A member of the cluster, not tagged `nosync` (nor `sync_priority: 0`).
    pub eligible: bool,
    /// Its `sync_priority` tag (default 1): a higher one is chosen first.
    pub priority: u32,
    /// Its WAL sender runs with a `synchronous_standby_names` that lists it
    /// (`pg_stat_replication.sync_priority > 0`).
    pub listed: bool,
}

/// A standby put in P and not yet in S; `since_lsn` is the primary's
/// position recorded once PostgreSQL reported it synchronous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub name: String,
    pub since_lsn: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncInput {
    pub node_count: usize,
    /// S: the `sync` key's standbys, when the key names this leader.
    pub published: Vec<String>,
    /// Whether the `sync` key exists and names this leader.
    pub key_is_mine: bool,
    /// P: the standbys in `synchronous_standby_names` now.
    pub configured: Vec<String>,
    pub pending: Option<Pending>,
    pub standbys: Vec<Standby>,
    pub primary_lsn: u64,
    /// `maximum_lag_on_syncnode` in bytes (`None`: -1 or 0, no limit).
    pub max_lag: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    /// Nothing to do now (or waiting for a standby to catch up).
    Idle,
    /// Write the `sync` key (compare-and-swap): this leader and these standbys.
    Publish(Vec<String>),
    /// Set `synchronous_standby_names` to these standbys and reload.
    Configure { names: Vec<String>, pending: Option<Pending> },
    /// The pending standby is synchronous: remember the primary's position.
    Mark(u64),
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

/// The standbys that may be synchronous: streaming, eligible, and within
/// `maximum_lag_on_syncnode` (`max_lag`) of the most advanced streaming
/// standby (of the primary, `primary_lsn`, when there is only one), as
/// Patroni measures it.
pub fn healthy(standbys: &[Standby], max_lag: Option<u64>, primary_lsn: u64) -> Vec<&Standby> {
    let streaming: Vec<u64> = standbys.iter().filter(|s| s.streaming && s.eligible).map(|s| s.flush_lsn).collect();
    let reference = if streaming.len() > 1 { streaming.iter().copied().max().unwrap_or(0) } else { primary_lsn };
    let lagging = |s: &Standby| max_lag.is_some_and(|max| reference.saturating_sub(s.flush_lsn) > max);
    standbys.iter().filter(|s| s.streaming && s.eligible && !lagging(s)).collect()
}

/// The next step towards `node_count` synchronous standbys.
pub fn next_step(input: &SyncInput) -> SyncStep {
    let fit = healthy(&input.standbys, input.max_lag, input.primary_lsn);
    let healthy = |name: &str| fit.iter().any(|s| s.name == name);
    let row = |name: &str| input.standbys.iter().find(|s| s.name == name);
    // A key left by another leader: start from nothing we have not checked.
    if !input.key_is_mine {
        return SyncStep::Publish(Vec::new());
    }
    let s = &input.published;
    let p = &input.configured;
    // Every member of S is in P, whatever P was rebuilt from (an agent
    // restarted under a running primary): commits wait for all of them.
    if s.iter().any(|n| !p.contains(n)) {
        let names = sorted(p.iter().chain(s).cloned().collect());
        return SyncStep::Configure { names, pending: input.pending.clone() };
    }
    // Leaving: out of S first (a compare-and-swap that may fail and is
    // retried: until it succeeds, P still lists the standby and commits wait
    // for it), then out of P. The other order acknowledges commits without
    // a member that is still promotable.
    let gone: Vec<&String> = s.iter().filter(|n| !healthy(n)).collect();
    if !gone.is_empty() {
        return SyncStep::Publish(sorted(s.iter().filter(|n| !gone.contains(n)).cloned().collect()));
    }
    // More in S than synchronous_node_count (lowered, or a swap for a
    // higher sync_priority below completed): the weakest (lowest priority,
    // then least advanced) leaves S first, then P (next rule).
    let weakest = |names: &[String]| -> Option<String> {
        names
            .iter()
            .filter_map(|n| row(n))
            .min_by(|a, b| {
                a.priority.cmp(&b.priority).then(a.flush_lsn.cmp(&b.flush_lsn)).then_with(|| b.name.cmp(&a.name))
            })
            .map(|r| r.name.clone())
    };
    if s.len() > input.node_count.max(1)
        && let Some(out) = weakest(s)
    {
        return SyncStep::Publish(sorted(s.iter().filter(|n| **n != out).cloned().collect()));
    }
    // A standby outranks S when its sync_priority is higher than the
    // lowest in S: it joins (P, then S) and the weakest then leaves, as
    // Patroni prefers the higher priority.
    let lowest = s.iter().filter_map(|n| row(n)).map(|r| r.priority).min();
    let outranks = |name: &str| row(name).is_some_and(|r| lowest.is_some_and(|low| r.priority > low));
    // Names in P that are neither published nor pending go (a standby
    // unpublished above, or one that never made it into S).
    let pending_name = input.pending.as_ref().map(|x| &x.name);
    if p.iter().any(|n| !s.contains(n) && Some(n) != pending_name) {
        let names = sorted(p.iter().filter(|n| s.contains(n) || Some(*n) == pending_name).cloned().collect());
        return SyncStep::Configure { names, pending: input.pending.clone() };
    }
    if let Some(pending) = &input.pending {
        if !healthy(&pending.name)
            || s.len() >= input.node_count.max(1) && !s.contains(&pending.name) && !outranks(&pending.name)
        {
            let names = sorted(p.iter().filter(|n| **n != pending.name).cloned().collect());
            return SyncStep::Configure { names, pending: None };
        }
        if s.contains(&pending.name) {
            // Published: clear the pending mark (P already lists it).
            return SyncStep::Configure { names: sorted(p.clone()), pending: None };
        }
        if !p.contains(&pending.name) {
            let mut names = p.clone();
            names.push(pending.name.clone());
            return SyncStep::Configure { names: sorted(names), pending: Some(pending.clone()) };
        }
        let standby = row(&pending.name).expect("healthy means listed");
        return match pending.since_lsn {
            None if standby.sync => SyncStep::Mark(input.primary_lsn),
            Some(lsn) if standby.sync && standby.flush_lsn >= lsn => {
                let mut names = s.clone();
                names.push(pending.name.clone());
                SyncStep::Publish(sorted(names))
            }
            _ => SyncStep::Idle,
        };
    }
    // Joining: one standby at a time, the highest `sync_priority` first, then
    // the most advanced; with S full, only one that outranks it.
    let full = s.len() >= input.node_count.max(1);
    {
        let best = input
            .standbys
            .iter()
            .filter(|c| healthy(&c.name) && !s.contains(&c.name) && (!full || outranks(&c.name)))
            .max_by(|a, b| {
                a.priority.cmp(&b.priority).then(a.flush_lsn.cmp(&b.flush_lsn)).then_with(|| b.name.cmp(&a.name))
            });
        if let Some(best) = best {
            let mut names = p.clone();
            names.push(best.name.clone());
            return SyncStep::Configure {
                names: sorted(names),
                pending: Some(Pending { name: best.name.clone(), since_lsn: None }),
            };
        }
    }
    SyncStep::Idle
}

/// The standbys a `synchronous_standby_names` value lists, in PostgreSQL's
/// syntax (`FIRST n (a, b)`, `ANY n (a, b)`, `n (a, b)` or a plain list;
/// names may be double-quoted). The strict placeholder and `*` name nobody.
/// An agent that starts under a running primary rebuilds P from this.
pub fn parse_standby_names(value: &str) -> Vec<String> {
    let mut rest = value.trim();
    // A keyword only where a count follows it: `anya, bob` lists `anya`.
    for keyword in ["FIRST", "ANY"] {
        if let Some(head) = rest.get(..keyword.len())
            && head.eq_ignore_ascii_case(keyword)
            && let after = &rest[keyword.len()..]
            && after.starts_with(char::is_whitespace)
            && after.trim_start().starts_with(|c: char| c.is_ascii_digit())
        {
            rest = after.trim_start();
        }
    }
    if let Some(open) = rest.find('(')
        && rest[..open].trim().chars().all(|c| c.is_ascii_digit())
    {
        rest = rest[open + 1..].trim_end().trim_end_matches(')');
    }
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut current)),
            c if quoted || !c.is_whitespace() => current.push(c),
            _ => {}
        }
    }
    names.push(current);
    sorted(names.into_iter().filter(|n| !n.is_empty() && n != "*" && n != STRICT_PLACEHOLDER).collect())
}

/// `synchronous_standby_names` for P: every listed standby must confirm.
/// Written as Patroni writes it: one standby alone (`"b"`, which is `FIRST
/// 1`), several as `n ("b","c")` (`FIRST n`).
pub fn standby_names(names: &[String], strict: bool) -> String {
    if names.is_empty() {
        return if strict { format!("\"{STRICT_PLACEHOLDER}\"") } else { String::new() };
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("{} ({})", names.len(), quoted.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn standby(name: &str, sync: bool, flush: u64) -> Standby {
        Standby {
            name: name.into(),
            streaming: true,
            sync,
            flush_lsn: flush,
            eligible: true,
            priority: 1,
            listed: sync,
        }
    }

    #[test]
    fn a_higher_sync_priority_is_chosen_before_a_more_advanced_standby() {
        let input = SyncInput {
            node_count: 1,
            published: vec![],
            key_is_mine: true,
            configured: vec![],
            pending: None,
            standbys: vec![standby("a", false, 900), Standby { priority: 2, ..standby("b", false, 100) }],
            primary_lsn: 1000,
            max_lag: None,
        };
        match next_step(&input) {
            SyncStep::Configure { names, .. } => assert_eq!(names, vec!["b".to_string()]),
            other => panic!("{other:?}"),
        }
    }

    fn input() -> SyncInput {
        SyncInput {
            node_count: 1,
            published: vec![],
            key_is_mine: true,
            configured: vec![],
            pending: None,
            standbys: vec![standby("b", false, 90), standby("c", false, 100)],
            primary_lsn: 100,
            max_lag: None,
        }
    }

    /// Applies steps the way the agent does, with PostgreSQL reporting a
    /// listed standby `sync` and flushing up to the primary's position.
    fn run(mut state: SyncInput, steps: usize) -> (SyncInput, Vec<SyncStep>) {
        let mut seen = Vec::new();
        for _ in 0..steps {
            let step = next_step(&state);
            seen.push(step.clone());
            match step {
                SyncStep::Idle => {
                    for s in &mut state.standbys {
                        s.sync = state.configured.contains(&s.name);
                        if s.sync {
                            s.flush_lsn = state.primary_lsn;
                        }
                    }
                    state.primary_lsn += 10;
                }
                SyncStep::Publish(names) => {
                    state.key_is_mine = true;
                    if state.pending.as_ref().is_some_and(|p| names.contains(&p.name)) {
                        state.pending = None;
                    }
                    state.published = names;
                }
                SyncStep::Configure { names, pending } => {
                    state.configured = names;
                    state.pending = pending;
                    for s in &mut state.standbys {
                        s.sync = state.configured.contains(&s.name) && s.sync;
                    }
                }
                SyncStep::Mark(lsn) => {
                    if let Some(p) = &mut state.pending {
                        p.since_lsn = Some(lsn);
                    }
                }
            }
        }
        (state, seen)
    }

    #[test]
    fn a_standby_joins_p_then_s_once_caught_up() {
        let (state, steps) = run(input(), 8);
        assert_eq!(
            steps[0],
            SyncStep::Configure {
                names: vec!["c".into()],
                pending: Some(Pending { name: "c".into(), since_lsn: None })
            },
            "the most advanced standby first"
        );
        assert_eq!(state.published, vec!["c".to_string()]);
        assert_eq!(state.configured, vec!["c".to_string()]);
        assert_eq!(state.pending, None);
    }

    #[test]
    fn a_lost_standby_leaves_s_before_p_and_another_takes_its_place() {
        let mut state = input();
        state.published = vec!["c".into()];
        state.configured = vec!["c".into()];
        state.standbys[1].streaming = false;
        // Out of S first; while that write fails, P keeps it (commits wait).
        assert_eq!(next_step(&state), SyncStep::Publish(vec![]));
        state.published = vec![];
        assert_eq!(next_step(&state), SyncStep::Configure { names: vec![], pending: None });
        state.configured = vec![];
        let (state, _) = run(state, 8);
        assert_eq!(state.published, vec!["b".to_string()]);
    }

    #[test]
    fn a_standby_past_maximum_lag_on_syncnode_is_swapped_out_s_first() {
        // c is the synchronous standby and hangs at 100 while b streams on.
        let mut state = SyncInput {
            published: vec!["c".into()],
            configured: vec!["c".into()],
            standbys: vec![standby("b", false, 500), standby("c", true, 100)],
            primary_lsn: 600,
            ..input()
        };
        assert_eq!(next_step(&state), SyncStep::Idle, "no limit: c stays, commits wait for it");
        state.max_lag = Some(400);
        assert_eq!(next_step(&state), SyncStep::Idle, "400 behind b is within the limit");
        state.max_lag = Some(399);
        assert_eq!(next_step(&state), SyncStep::Publish(vec![]), "out of S first");
        state.published = vec![];
        assert_eq!(next_step(&state), SyncStep::Configure { names: vec![], pending: None }, "then out of P");
        state.configured = vec![];
        match next_step(&state) {
            SyncStep::Configure { names, .. } => assert_eq!(names, vec!["b".to_string()], "b takes its place"),
            other => panic!("{other:?}"),
        }
        // With one standby the lag is measured from the primary's position.
        let alone = SyncInput {
            published: vec!["c".into()],
            configured: vec!["c".into()],
            standbys: vec![standby("c", true, 100)],
            primary_lsn: 600,
            max_lag: Some(499),
            ..input()
        };
        assert_eq!(next_step(&alone), SyncStep::Publish(vec![]));
        // A lagging standby is not chosen to join.
        let joining = SyncInput {
            standbys: vec![standby("b", false, 500), standby("c", false, 100)],
            primary_lsn: 600,
            max_lag: Some(300),
            ..input()
        };
        match next_step(&joining) {
            SyncStep::Configure { names, .. } => assert_eq!(names, vec!["b".to_string()]),
            other => panic!("{other:?}"),
        }
        let nobody =
            SyncInput { standbys: vec![standby("c", false, 100)], primary_lsn: 600, max_lag: Some(300), ..input() };
        assert_eq!(next_step(&nobody), SyncStep::Idle);
    }

    #[test]
    fn a_higher_sync_priority_takes_the_place_of_a_lower_one_which_leaves_only_after() {
        // b (priority 1) is the synchronous standby; c (priority 2) arrives.
        let state = SyncInput {
            published: vec!["b".into()],
            configured: vec!["b".into()],
            standbys: vec![standby("b", true, 100), Standby { priority: 2, ..standby("c", false, 100) }],
            ..input()
        };
        let (state, steps) = run(state, 12);
        assert_eq!(state.published, vec!["c".to_string()], "{steps:?}");
        assert_eq!(state.configured, vec!["c".to_string()], "{steps:?}");
        // c was published while b still was (S never lacked a caught-up
        // member), then b left S, then P.
        let both = SyncStep::Publish(vec!["b".into(), "c".into()]);
        let at = steps.iter().position(|s| *s == both).expect("S held both for a moment");
        assert_eq!(steps[at + 1], SyncStep::Publish(vec!["c".into()]), "{steps:?}");
        // Equal priority: no swap.
        let same = SyncInput {
            published: vec!["b".into()],
            configured: vec!["b".into()],
            standbys: vec![standby("b", true, 100), standby("c", false, 200)],
            ..input()
        };
        assert_eq!(next_step(&same), SyncStep::Idle);
        // synchronous_node_count lowered: the weakest leaves S first.
        let lowered = SyncInput {
            published: vec!["b".into(), "c".into()],
            configured: vec!["b".into(), "c".into()],
            standbys: vec![standby("b", true, 90), standby("c", true, 100)],
            ..input()
        };
        assert_eq!(next_step(&lowered), SyncStep::Publish(vec!["c".into()]));
    }

    #[test]
    fn a_key_of_another_leader_is_reset_first() {
        let state = SyncInput { key_is_mine: false, published: vec!["me".into()], ..input() };
        assert_eq!(next_step(&state), SyncStep::Publish(vec![]));
    }

    #[test]
    fn nosync_never_joins() {
        let mut state = input();
        for s in &mut state.standbys {
            s.eligible = false;
        }
        assert_eq!(next_step(&state), SyncStep::Idle);
    }

    #[test]
    fn a_published_standby_missing_from_p_is_put_back_first() {
        // An agent restarted under a running primary lost P; S lists c.
        let state = SyncInput { published: vec!["c".into()], configured: vec![], ..input() };
        assert_eq!(next_step(&state), SyncStep::Configure { names: vec!["c".into()], pending: None });
    }

    #[test]
    fn reads_postgres_standby_lists() {
        assert_eq!(parse_standby_names(""), Vec::<String>::new());
        assert_eq!(parse_standby_names("FIRST 2 (\"b\", \"c\")"), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(parse_standby_names("any 1 (c,b)"), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(parse_standby_names("2 (b, \"x\"\"y\")"), vec!["b".to_string(), "x\"y".to_string()]);
        assert_eq!(parse_standby_names("b, c"), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(parse_standby_names(&standby_names(&[], true)), Vec::<String>::new());
        assert_eq!(parse_standby_names("*"), Vec::<String>::new());
        // Names that begin like a keyword are names (found by `make fuzz`:
        // these sliced inside a character, or lost their first letters).
        assert_eq!(parse_standby_names("anya, firstnode"), vec!["anya".to_string(), "firstnode".to_string()]);
        assert_eq!(parse_standby_names("añy, ü"), vec!["añy".to_string(), "ü".to_string()]);
        assert_eq!(parse_standby_names("ñ"), vec!["ñ".to_string()]);
        let rendered = standby_names(&["a b".into(), "c".into()], false);
        assert_eq!(parse_standby_names(&rendered), vec!["a b".to_string(), "c".to_string()]);
    }

    #[test]
    fn names_are_rendered_for_postgres() {
        assert_eq!(standby_names(&[], false), "");
        assert_eq!(standby_names(&[], true), format!("\"{STRICT_PLACEHOLDER}\""));
        assert_eq!(standby_names(&["a".into(), "b".into()], false), "2 (\"a\",\"b\")");
        assert_eq!(standby_names(&["a".into()], false), "\"a\"");
    }

    proptest! {
        /// Whatever the standbys do, a member is published in S only while
        /// it is listed in P (commits wait for it) and only after it caught
        /// up with a position taken once PostgreSQL counted it synchronous;
        /// and it stays in P as long as it is in S.
        #[test]
        fn s_only_names_caught_up_standbys_listed_in_p(
            flips in proptest::collection::vec((0usize..3, any::<bool>()), 0..30),
            count in 1usize..3,
            max_lag in proptest::option::of(0u64..40),
            priorities in proptest::collection::vec(1u32..4, 3),
        ) {
            let with = |name: &str, priority: u32| Standby { priority, ..standby(name, false, 0) };
            let mut state = SyncInput {
                node_count: count,
                max_lag,
                standbys: vec![with("a", priorities[0]), with("b", priorities[1]), with("c", priorities[2])],
                ..input()
            };
            let mut caught_up_since: std::collections::HashMap<String, u64> = Default::default();
            for (who, streaming) in flips {
                state.standbys[who].streaming = streaming;
                if !streaming {
                    state.standbys[who].sync = false;
                }
                for _ in 0..4 {
                    let step = next_step(&state);
                    if let SyncStep::Publish(names) = &step {
                        for name in names.iter().filter(|n| !state.published.contains(n)) {
                            prop_assert!(state.configured.contains(name), "{name} published before listed");
                            let mark = state.pending.as_ref().and_then(|p| p.since_lsn);
                            prop_assert!(mark.is_some(), "{name} published without a mark");
                            let row = state.standbys.iter().find(|s| &s.name == name).expect("row");
                            prop_assert!(row.flush_lsn >= mark.unwrap_or(u64::MAX));
                            caught_up_since.insert(name.clone(), row.flush_lsn);
                        }
                    }
                    if let SyncStep::Configure { names, .. } = &step {
                        // A member of S never leaves P (it leaves S first).
                        for gone in state.published.iter().filter(|n| !names.contains(n)) {
                            prop_assert!(false, "{gone} dropped from P while still published in S");
                        }
                    }
                    let (next, _) = run(state.clone(), 1);
                    state = next;
                }
            }
        }
    }
}
