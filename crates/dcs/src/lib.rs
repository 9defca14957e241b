//! The typed etcd layer: the cluster's key layout and the JSON shapes stored in
//! it, exactly as Patroni writes them, plus connecting to etcd.
//!
//! Key names and shapes are a compatibility contract (DESIGN.md "etcd
//! layout"): a tool that reads Patroni's keys reads pgwarden's. This crate
//! decides nothing about leadership; leases and the leader key's lifecycle
//! belong to the `election` crate.

mod cas;
mod connect;
mod keys;
mod model;
mod srv;
pub mod v2;
mod view;

pub use connect::{ConnectError, Etcd, EtcdSettings, connect, describe_error, is_unreachable};
/// The etcd client error type, re-exported so users need not depend on etcd-client.
pub use etcd_client::Error as EtcdError;
pub use keys::Keys;
pub use model::{
    CloneProgress, Failover, HistoryEntry, MemberData, MemberRole, MemberTags, Scheduled, Status, SyncState,
    parse_scheduled_at,
};
pub use view::{ClusterRole, ClusterView, LeaderView, MemberEntry, MemberSummary, read_cluster};
