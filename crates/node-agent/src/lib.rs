//! `pgwarden-agent`: one per PostgreSQL node. It owns the local PostgreSQL
//! (observing it now; bootstrap, replication and the HA loop build on this)
//! and serves the `NodeAgent` gRPC API that the health API, the controller and
//! peer agents read this node's status from.
//!
//! It must never act on another node's PostgreSQL, and never write another
//! member's keys.

mod grpc;
mod lock;
pub mod observe;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use ha_proto::v1::NodeStatus;
use pgwarden_config::{Config, Purpose, Severity};
use pgwarden_runtime::ConfigArgs;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use grpc::AgentService;
pub use lock::{DataDirLock, check_ownership, lock_path};

/// How often the local PostgreSQL is observed: twice per the 500 ms
/// freshness bound of the health checks (DESIGN.md invariant 2).
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Parser)]
#[command(name = "pgwarden-agent", version, about = "pgwarden node agent: supervises the local PostgreSQL")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Check the config file and exit: 0 if valid (warnings printed), 1 with one line per problem.
    #[arg(long)]
    pub validate_config: bool,
}

/// `--validate-config`: every problem on its own line, naming the key.
pub fn validate_config(args: &ConfigArgs) -> ExitCode {
    match args.load(Purpose::Agent) {
        Ok(loaded) => {
            for problem in &loaded.warnings {
                eprintln!("{problem}");
            }
            let warnings = loaded.warnings.iter().filter(|p| p.severity == Severity::Warning).count();
            println!(
                "{}: valid (scope {}, member {}, {warnings} warning(s))",
                loaded.origin, loaded.config.scope, loaded.config.name
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Observes the local PostgreSQL every [`OBSERVE_INTERVAL`] and publishes the
/// status to `tx` until every receiver is gone.
async fn observe_loop(config: Config, tx: watch::Sender<NodeStatus>) {
    let mut sequence = 0;
    let mut ticker = tokio::time::interval(OBSERVE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_logged = None;
    loop {
        ticker.tick().await;
        let local = observe::observe(&config.postgresql.data_dir);
        if last_logged != Some(local) {
            info!(state = ?local.state, role = ?local.role, pid = local.postmaster_pid, "local PostgreSQL");
            last_logged = Some(local);
        }
        sequence += 1;
        let status = status_of(&config, local, sequence);
        if tx.send(status).is_err() {
            return;
        }
    }
}

fn status_of(config: &Config, local: observe::LocalPostgres, sequence: u64) -> NodeStatus {
    NodeStatus {
        member: config.name.clone(),
        scope: config.scope.clone(),
        postgres_state: local.state as i32,
        role: local.role as i32,
        postmaster_pid: local.postmaster_pid,
        observed_at_unix_ms: now_unix_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sequence,
        data_dir: config.postgresql.data_dir.display().to_string(),
    }
}

/// Runs the agent until `shutdown` resolves: observes PostgreSQL and serves
/// the `NodeAgent` gRPC API on `grpc_listener`.
pub async fn run(
    config: Config,
    grpc_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = observe::observe(&config.postgresql.data_dir);
    let (tx, rx) = watch::channel(status_of(&config, local, 0));
    let observer = tokio::spawn(observe_loop(config.clone(), tx));
    let address = grpc_listener.local_addr().context("read the gRPC listener's address")?;
    info!(%address, "serving the NodeAgent gRPC API");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
    let result = tonic::transport::Server::builder()
        .add_service(AgentService::new(rx).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serve the NodeAgent gRPC API");
    observer.abort();
    info!("agent stopped");
    result
}

/// The agent's start-up: config, ownership and lock checks, listeners, run.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_runtime::start(&args.config, Purpose::Agent)?;
    let data_dir: &Path = &config.postgresql.data_dir;
    check_ownership(data_dir)?;
    let lock = DataDirLock::acquire(data_dir)?;
    info!(lock = %lock.path.display(), "holding the data directory lock");
    let listener = pgwarden_runtime::bind(
        &config.pgwarden.agent_grpc_listen,
        "the agent's gRPC API",
        "pgwarden.agent_grpc_listen (default: restapi.listen port + 1000)",
    )
    .await?;
    run(config, listener, pgwarden_runtime::shutdown_signal()).await
}
