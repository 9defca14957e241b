//! The real-process test harness: etcd (one member or three), PostgreSQL
//! instances and HAProxy, started on free loopback ports in temporary
//! directories the `postgres` user can reach, waited for with deadlines, and
//! stopped when dropped (also when a test panics). A test process that dies
//! without unwinding leaves its processes behind; the next harness start
//! reaps them (see [`process::reap_orphans`]).
//!
//! No mock stands in for etcd or PostgreSQL here.

pub mod backrest;
pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod grpc;
pub mod guides;
pub mod haproxy;
pub mod loaded;
pub mod migration;
pub mod netns;
pub mod patroni;
pub mod port;
pub mod postgres;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod service;
pub mod spec;
pub mod wait;
pub mod watchdog;
pub mod writer;
pub mod yaml;

pub use cluster::{Node, PgwardenCluster, Service};
pub use etcd::EtcdCluster;
pub use haproxy::HaProxy;
pub use loaded::{Fault, FaultTarget, Load, LoadedCluster};
pub use port::free_port;
pub use postgres::PgInstance;
pub use process::{TestDir, postgres_user};
pub use spec::ClusterSpec;
pub use wait::wait_until;

/// Sets up test logging once (`RUST_LOG` controls it; default warnings only).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Merges `patch` into the YAML config file at `path` as values (a map's keys
/// into the map, anything else replacing), so a test can add to the sections
/// the harness writes. The file is written back as JSON, which YAML (and so
/// pgwarden and Patroni) reads; its owner and mode are kept.
pub fn merge_config_file(path: &std::path::Path, patch: serde_json::Value) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut config: serde_json::Value = serde_saphyr::from_str(&text)?;
    yaml::merge(&mut config, patch);
    std::fs::write(path, serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

/// `text` without terminal colour codes (the services colour their log
/// fields when a test reads them).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
