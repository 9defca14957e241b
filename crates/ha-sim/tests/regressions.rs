//! The seeds that reproduced the safety review's findings in the simulator
//! (issue 20), each run again: none may violate an invariant now. What each
//! showed before its fix is in the table; `ha-sim --replay <seed>` prints
//! the whole trace.

use ha_sim::{Options, kind, run};

/// (seed, what it showed before the fix).
const REGRESSIONS: &[(u64, &str)] = &[
    (6, "finding 1: a sync standby left synchronous_standby_names before sync; commits acknowledged without it"),
    (14, "finding 7: an agent restarted under a running primary set '' while sync listed a standby"),
    (99, "finding 7: the restart reloaded the placeholder, then rebuilt P empty and acknowledged asynchronously"),
    (48, "finding 4: the key released while PostgreSQL was still in crash recovery; it came up writable"),
    (156, "finding 6: with its fencer down, the agent fenced only after an etcd read timed out, past the lease"),
    (1290, "finding 5: an agent frozen in pre_promote promoted on thawing beside the new leader"),
    (24, "finding 2: a replica named in the failover key, outside sync, took over and lost commits"),
    (36, "finding 10: a replica on an ended timeline won on LSN and forked a second timeline 2"),
    (2854, "finding 9: a replica's data started as primary on its timeline; a diverged former primary streamed"),
    (3158, "finding 8: a sync key left by another leader counted once synchronous mode was turned on"),
    (6046, "finding 13: a start in crash recovery outlived the lease and came up writable beside the new leader"),
    (39, "liveness: synchronous mode turned on with the leader's PostgreSQL down: nobody could ever lead"),
    (2, "liveness: a replica past the end of its timeline waited forever instead of rewinding"),
    (20909, "pause: a restarted agent never re-bound its running primary's key; a replica raced when the pause ended"),
    (10354, "a restarted agent could not re-bind its running primary's key without a fencer; the old lease ran out"),
    (8109, "liveness: a replica held its own key unproven after a late renewal; nobody could lead"),
    (83138, "an agent restarted during a start in crash recovery left the postmaster to open writable without the key"),
    (
        110139,
        "a fencer restarted beside an agent blocked on etcd had lost its deadline; it judged only after the lease",
    ),
    (161842, "a fencer restarted just before its agent was killed was unarmed until after the lease expired"),
    (414, "quorum commit: a voter took over without quorum + 1 voters at or below it and lacked a commit"),
    (104, "quorum commit: a primary started again ran with '' while the sync key's voters lacked its commits"),
    (3336, "liveness, quorum commit: everyone waited for a named candidate that could not reach its quorum"),
];

#[test]
fn the_seeds_that_reproduced_the_findings_violate_nothing() {
    let mut failed = Vec::new();
    for (seed, what) in REGRESSIONS {
        let outcome = run(*seed, Options::default());
        if let Some(v) = outcome.violation {
            failed.push(format!(
                "seed {seed} ({what}): {} at {} ms: {}\n  replay: cargo run --release -p ha-sim -- --replay {seed}",
                kind(&v.what),
                v.at,
                v.what
            ));
        }
        assert!(outcome.events > 1_000, "seed {seed} ran only {} events", outcome.events);
        assert!(outcome.acknowledged > 100, "seed {seed}: only {} commits acknowledged", outcome.acknowledged);
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    for seed in [7, 1_234, 99_999] {
        let traced = |seed| run(seed, Options { trace: true, ..Options::default() });
        let (a, b) = (traced(seed), traced(seed));
        assert_eq!(a.events, b.events, "seed {seed}");
        assert_eq!(a.acknowledged, b.acknowledged, "seed {seed}");
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert!(!a.trace.is_empty());
        // Tracing changes nothing but the record.
        let untraced = run(seed, Options::default());
        assert_eq!(untraced.events, a.events, "seed {seed}: tracing changed the run");
    }
}

#[test]
fn every_seed_runs_faults_writes_and_operator_actions() {
    for seed in 0..50 {
        let outcome = run(seed, Options::default());
        assert!(outcome.faults + outcome.operator_actions >= 10, "seed {seed}: {outcome:?}");
        assert!(outcome.events >= 1_000, "seed {seed}: {} events", outcome.events);
        assert!(outcome.violation.is_none(), "seed {seed}: {:?}", outcome.violation);
    }
}
