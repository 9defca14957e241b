//! A deterministic simulation of a whole pgwarden cluster: etcd, one
//! PostgreSQL, agent and fencer per node, the network, clients and
//! operators, under seeded faults. The decisions are the real ones
//! (`ha_core::decide`, `ha_core::sync::next_step`); everything else is a
//! model (ARCHITECTURE.md, "The simulator"). After every event the
//! invariants of DESIGN.md are checked; once every fault has healed, the
//! cluster must settle within a stated bound.

mod agent;
pub mod model;
pub mod rng;
pub mod world;

pub use world::{Options, Violation, World};

/// What one seeded run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub events: u64,
    pub faults: usize,
    pub operator_actions: usize,
    pub acknowledged: u64,
    pub violation: Option<Violation>,
    pub trace: Vec<String>,
}

/// The class of a violation, for counting and shrinking.
pub fn kind(what: &str) -> &'static str {
    if what.starts_with("two writers") {
        "two writers"
    } else if what.contains("listed in sync) lacks") {
        "sync member lacks an acknowledged commit"
    } else if what.contains("became primary without commit") {
        "new primary lacks an acknowledged commit"
    } else if what.contains("diverged") {
        "streams from a diverged timeline"
    } else if what.contains("lease") {
        "leader key on another lease"
    } else if what.contains("no leader") {
        "liveness: no leader"
    } else if what.contains("not streaming") {
        "liveness: a member does not stream"
    } else {
        "liveness: other"
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: Options) -> Outcome {
    let mut world = World::new(seed, opts);
    let events = world.run();
    Outcome {
        seed,
        events,
        faults: world.faults_drawn,
        operator_actions: world.ops_drawn,
        acknowledged: world.acked,
        violation: world.violation.clone(),
        trace: world.trace.take().unwrap_or_default(),
    }
}

/// The smallest set of faults and operator actions (dropping one at a
/// time) with which `seed` still violates an invariant of the same kind.
pub fn shrink(seed: u64) -> Options {
    let kind = |o: &Outcome| o.violation.as_ref().map(|v| kind(&v.what));
    let first = run(seed, Options::default());
    let Some(wanted) = kind(&first) else { return Options::default() };
    let mut opts = Options::default();
    for index in 0..first.faults {
        opts.skip_faults.push(index);
        if kind(&run(seed, opts.clone())).as_ref() != Some(&wanted) {
            opts.skip_faults.pop();
        }
    }
    for index in 0..first.operator_actions {
        opts.skip_operators.push(index);
        if kind(&run(seed, opts.clone())).as_ref() != Some(&wanted) {
            opts.skip_operators.pop();
        }
    }
    opts
}
