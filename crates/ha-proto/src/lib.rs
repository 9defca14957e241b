//! Generated gRPC code for the `pgwarden.v1` package in `proto/`.
//!
//! This crate owns no decisions: every gRPC contract between pgwarden
//! services is defined in `proto/` and only compiled here. Hand-written code
//! here is limited to accessors every user of a type would otherwise repeat;
//! logic belongs in the crates that use these types.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pgwarden.v1");
}

impl v1::NodeStatus {
    /// How far this member's WAL reaches: a primary's current position, a
    /// replica's furthest of received and replayed (the agent also reports
    /// that as a replica's `xlog_location`). What candidates are compared by.
    pub fn position(&self) -> u64 {
        self.xlog_location.max(self.receive_lsn).max(self.replay_lsn)
    }
}
