//! Pure HA vocabulary and decisions: WAL positions, lag limits and (as the HA
//! loop lands) the decision function over an observed snapshot.
//!
//! This crate does no I/O of any kind (no files, network, clock or
//! processes): everything it needs is passed in, so every rule is
//! deterministic and tested without a cluster.

mod candidate;
mod decide;
mod lsn;
pub mod quorum;
pub mod sync;
pub mod timeline;
mod version;

pub use candidate::{CandidateRules, Contender, Ineligible};
pub use decide::{
    Action, DataDir, Decision, FENCER_ACK_MAX_AGE_MS, FENCER_LOST_AFTER_MS, FailoverRequest, Observed, Peer,
    RaceBackoff, RunningAs, Schedule, decide, fence_at_once, fencer_lost, fencer_ready, is_best_candidate,
    released_recently, stream_source, switchover_candidate,
};
pub use lsn::{Lsn, parse_lag};
pub use version::{format_postgres_version, parse_postgres_version};
