//! The real-process test harness: etcd (one member or three), PostgreSQL
//! instances and HAProxy, started on free loopback ports in temporary
//! directories the `postgres` user can reach, waited for with deadlines, and
//! stopped when dropped (also when a test panics). A test process that dies
//! without unwinding leaves its processes behind; the next harness start
//! reaps them (see [`process::reap_orphans`]).
//!
//! No mock stands in for etcd or PostgreSQL here.

pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod grpc;
pub mod guides;
pub mod haproxy;
pub mod migration;
pub mod netns;
pub mod patroni;
pub mod port;
pub mod postgres;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod service;
pub mod wait;
pub mod writer;

pub use cluster::{Node, PgwardenCluster};
pub use etcd::EtcdCluster;
pub use haproxy::HaProxy;
pub use port::free_port;
pub use postgres::PgInstance;
pub use process::{TestDir, postgres_user};
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
