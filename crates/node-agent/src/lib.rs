//! `pgwarden-agent`: one per PostgreSQL node. It owns the local PostgreSQL
//! (observing it now; bootstrap, replication and the HA loop build on this)
//! and serves the `NodeAgent` gRPC API that the health API, the controller and
//! peer agents read this node's status from.
//!
//! It must never act on another node's PostgreSQL, and never write another
//! member's keys.

mod ackhold;
mod callbacks;
mod confdir;
mod failsafe;
mod grpc;
mod ha;
mod local;
mod lock;
mod methods;
mod peers;
mod postgres;
mod sql;
mod version;
mod watchdog;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use election::BootInstant;
use ha_proto::v1::{NodeStatus, PostgresState, ReplicationClient, Role};

use crate::ha::PublishedStatus;
use crate::local::LocalObservation;
use pg_local::{DataRole, PostmasterState};
use pgwarden_config::{Config, Purpose, Severity};
use pgwarden_runtime::ConfigArgs;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use grpc::AgentService;
pub use lock::{DataDirLock, check_ownership, lock_path};

/// How often the local PostgreSQL is observed: every 100 ms while anything
/// changes; once settled, a status every 200 ms (under the 500 ms freshness
/// bound of the health checks, DESIGN.md invariant 2) and a query every
/// second or when the HA loop or a peer asks. A dead postmaster is noticed
/// at once (its pidfd).
pub const OBSERVE_CADENCE: local::Cadence = local::Cadence::DEFAULT;

#[derive(Debug, Parser)]
#[command(name = "pgwarden-agent", version, about = "pgwarden node agent: supervises the local PostgreSQL")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Check the config file and exit: 0 if valid (warnings printed), 1 with one line per problem.
    #[arg(long)]
    pub validate_config: bool,
    /// With --validate-config: a key nobody knows is a problem too (exit 1),
    /// not only a warning.
    #[arg(long, requires = "validate_config")]
    pub strict: bool,
    /// For the systemd unit's `ExecStopPost=`: when the unit stopped because
    /// its watchdog expired (`$SERVICE_RESULT` is `watchdog`), stop the local
    /// PostgreSQL at once (immediate shutdown); otherwise do nothing.
    #[arg(long)]
    pub fence_if_watchdog: bool,
}

/// `--fence-if-watchdog`: the unit-level fence. The agent's unit keeps
/// PostgreSQL alive across agent restarts (`KillMode=process`), so a hung
/// agent killed by the systemd watchdog would leave a primary nobody fences.
pub async fn fence_if_watchdog(args: &ConfigArgs) -> anyhow::Result<()> {
    let result = std::env::var("SERVICE_RESULT").unwrap_or_default();
    if result != "watchdog" {
        println!(
            "pgwarden-agent: the unit ended with SERVICE_RESULT={result:?}, not a watchdog expiry: nothing to fence"
        );
        return Ok(());
    }
    let config = args.load(Purpose::Agent)?.config;
    let bins = config.postgres_binaries().map_err(|e| anyhow::anyhow!(e))?;
    let pg = postgres::Postgres::new(&config, bins)?;
    eprintln!(
        "pgwarden-agent: the systemd watchdog expired: fencing PostgreSQL in {} (immediate shutdown)",
        config.postgresql.data_dir.display()
    );
    pg.stop(crate::postgres::StopMode::Immediate).await
}

/// `--validate-config`: every problem on its own line, naming the key;
/// `strict`: a key nobody knows fails it too.
pub fn validate_config(args: &ConfigArgs, strict: bool) -> ExitCode {
    match args.load(Purpose::Agent) {
        Ok(loaded) => {
            for problem in &loaded.warnings {
                eprintln!("{problem}");
            }
            let unknown = loaded.warnings.iter().filter(|p| p.message.starts_with(pgwarden_config::keys::UNKNOWN_KEY));
            if strict && unknown.count() > 0 {
                eprintln!("{}: refused by --strict: unknown keys (above)", loaded.origin);
                return ExitCode::FAILURE;
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

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The status the gRPC API serves: the latest observation and HA view.
fn compose(config: &Config, local: &LocalObservation, view: &PublishedStatus) -> NodeStatus {
    let sql = local.sql.clone().unwrap_or_default();
    NodeStatus {
        member: config.name.clone(),
        scope: config.scope.clone(),
        // Running means answering queries: a postmaster that does not answer
        // is reported as starting, so every check that needs it fails closed.
        postgres_state: match (local.postmaster.state, &local.sql) {
            (PostmasterState::Uninitialized, _) => PostgresState::Uninitialized,
            (PostmasterState::Stopped, _) => PostgresState::Stopped,
            (PostmasterState::Running, None) | (PostmasterState::Starting, _) => PostgresState::Starting,
            (PostmasterState::Running, Some(_)) => PostgresState::Running,
            (PostmasterState::Stopping, _) => PostgresState::Stopping,
        } as i32,
        role: match local.role() {
            DataRole::Replica if view.follows_remote && view.leader_deadline.is_some_and(|d| !d.has_passed()) => {
                Role::StandbyLeader
            }
            DataRole::Replica => Role::Replica,
            DataRole::Primary => Role::Primary,
            DataRole::Uninitialized => Role::Uninitialized,
        } as i32,
        postmaster_pid: local.postmaster.postmaster_pid,
        observed_at_unix_ms: local.observed_at_unix_ms,
        version: env!("CARGO_PKG_VERSION").to_string(),
        sequence: 0,
        data_dir: config.postgresql.data_dir.display().to_string(),
        holds_leader: view.leader_deadline.is_some_and(|deadline| !deadline.has_passed()),
        leader: view.leader.clone().unwrap_or_default(),
        xlog_location: sql.xlog_location,
        receive_lsn: sql.receive_lsn,
        replay_lsn: sql.replay_lsn,
        timeline: sql.timeline,
        replication_state: sql.replication_state.clone(),
        cluster_optime: view.cluster_optime.unwrap_or_default(),
        // From the HA loop: a reload may have changed them since the start.
        tags_json: view.tags_json.clone(),
        system_identifier: sql.system_identifier.clone(),
        server_version: sql.server_version,
        postmaster_start_time: sql.postmaster_start_time.clone(),
        ha_state: view.reason.clone(),
        last_tick_unix_ms: view.last_tick_unix_ms,
        replication: sql
            .replication
            .iter()
            .map(|r| ReplicationClient {
                usename: r.usename.clone(),
                application_name: r.application_name.clone(),
                client_addr: r.client_addr.clone(),
                state: r.state.clone(),
                sync_state: r.sync_state.clone(),
                sync_priority: r.sync_priority,
            })
            .collect(),
        upstream: view.upstream.clone().unwrap_or_default(),
        refused: view.refused.clone().unwrap_or_default(),
        leader_deadline_boot_ns: view.leader_deadline.map_or(0, BootInstant::as_nanos),
        noloadbalance: view.noloadbalance,
        shutting_down: view.shutting_down,
        paused: view.paused,
        sync_standby: view.sync_standby,
        quorum_standby: view.quorum_standby,
        ttl: view.ttl,
        maximum_lag_on_failover: view.maximum_lag_on_failover,
        ha_loop_duration_us: view.tick_duration.as_micros() as u64,
        etcd_read_duration_us: view.etcd_read_duration.as_micros() as u64,
        dcs_last_seen_unix_ms: view.dcs_last_seen_unix_ms,
        pending_restart: sql.pending_restart,
        replay_paused: sql.replay_paused,
        replayed_timestamp: sql.replayed_timestamp.clone(),
        failsafe_mode: view.failsafe_mode,
        failsafe_active: view.failsafe_active,
        failsafe_json: view.failsafe_json.clone(),
        pending_restart_reason_json: view.pending_restart_reason_json.clone(),
    }
}

/// Publishes a composed status on every observation and HA view change.
async fn compose_loop(
    config: Config,
    mut local: watch::Receiver<LocalObservation>,
    mut view: watch::Receiver<PublishedStatus>,
    tx: watch::Sender<NodeStatus>,
) {
    let mut sequence = 0;
    loop {
        tokio::select! {
            changed = local.changed() => if changed.is_err() { return },
            changed = view.changed() => if changed.is_err() { return },
        }
        sequence += 1;
        let mut status = compose(&config, &local.borrow(), &view.borrow());
        status.sequence = sequence;
        if tx.send(status).is_err() {
            return;
        }
    }
}

/// Tells the HA loop about every change under the cluster's prefix (and
/// when the watch starts or ends, so that it reads etcd again).
async fn watch_cluster(etcd: dcs::Etcd, prefix: String, watch: std::sync::Arc<ha::ClusterWatch>) {
    loop {
        match election::watch(&etcd, &prefix, true, None).await {
            Ok(mut watcher) => {
                watch.set_watching(true);
                loop {
                    match watcher.next().await {
                        Ok(Some(_)) => watch.changed(),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("cluster watch ended: {e}");
                            break;
                        }
                    }
                }
                watch.set_watching(false);
            }
            Err(e) => tracing::debug!("failed to watch the cluster: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the agent until `shutdown` resolves: observes PostgreSQL, runs the
/// HA loop and serves the `NodeAgent` gRPC API on `grpc_listener`. On
/// shutdown it stops PostgreSQL and hands the leader key over before the
/// gRPC API goes away.
/// SIGHUP re-reads the config file, as Patroni does (`systemctl reload`).
async fn reload_on_sighup(commands: tokio::sync::mpsc::Sender<grpc::CommandMsg>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload with `pgwardenctl reload` instead");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the config");
        let (tx, rx) = tokio::sync::oneshot::channel();
        if commands.send((grpc::Command::Reload, tx)).await.is_err() {
            return;
        }
        match rx.await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::error!("reload refused: {}", status.message()),
            Err(_) => return,
        }
    }
}

pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    grpc_listener: TcpListener,
    fencer_token: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let bins = config.postgres_binaries().map_err(|e| anyhow::anyhow!(e))?;
    let major = version::check(&bins, &config.postgresql.data_dir)?;
    tracing::info!(bin_dir = %bins.bin_dir.display(), major, "PostgreSQL binaries");
    let pg = postgres::Postgres::new(&config, bins)?;
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let etcd = dcs::connect(&dcs::EtcdSettings::from_config(&config.etcd, timeout)).await?;
    if let Err(e) = etcd.probe().await {
        tracing::warn!("{e} (the agent keeps trying)");
    }
    if config.etcd.section == "etcd" {
        dcs::v2::check_scope(&config, &etcd, timeout, config_path.as_deref()).await?;
    }
    check_unique_name(&config, &etcd).await?;
    // A hold on acknowledgements an earlier run left (it died holding one)
    // would block every commit of the running primary it adopts.
    match ackhold::clear_residue(&config.postgresql.data_dir) {
        Ok(true) if pg_local::observe(&config.postgresql.data_dir).state != pg_local::PostmasterState::Stopped => {
            if let Err(e) = pg.reload().await {
                tracing::warn!("failed to reload PostgreSQL after removing the hold: {e:#}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("failed to remove a hold on commit acknowledgements: {e:#}"),
    }
    let initial_local = LocalObservation::initial(pg_local::observe(&config.postgresql.data_dir));
    let (local_tx, local_rx) = watch::channel(initial_local.clone());
    let (view_tx, view_rx) = watch::channel(PublishedStatus::initial(&config));
    let (status_tx, status_rx) = watch::channel(compose(&config, &initial_local, &PublishedStatus::initial(&config)));
    let (wanted_tx, wanted_rx) = watch::channel(0u64);
    let observer_handle = local::Observer::new(local_rx.clone(), std::sync::Arc::new(wanted_tx));
    let observer = tokio::spawn(local::observe_loop(
        config.clone(),
        pg.local.clone(),
        pg.port,
        OBSERVE_CADENCE,
        wanted_rx,
        local_tx,
    ));
    let parameter_checker = std::sync::Arc::new(grpc::ParameterChecker {
        config: config.clone(),
        local: pg.local.clone(),
        port: pg.port,
        permits: tokio::sync::Semaphore::new(2),
    });
    let view_rx_for_watchdog = view_rx.clone();
    let compose_now: grpc::Composer = {
        let (config, view) = (config.clone(), view_rx.clone());
        std::sync::Arc::new(move |local: &LocalObservation| compose(&config, local, &view.borrow()))
    };
    let composer = tokio::spawn(compose_loop(config.clone(), local_rx.clone(), view_rx, status_tx));
    let fencer_acks = grpc::FencerAcks::default();
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(8);
    // A promise made by this agent's previous run still binds it.
    let failsafe_state =
        crate::failsafe::Failsafe { promise: crate::failsafe::load(&config.postgresql.data_dir), ..Default::default() };
    if let Some(promise) = &failsafe_state.promise {
        info!(leader = %promise.leader, "failsafe: a promise made before this start still runs");
    }
    let failsafe = std::sync::Arc::new(tokio::sync::Mutex::new(failsafe_state));
    let agent = ha::Agent::new(
        config.clone(),
        pg,
        etcd.clone(),
        observer_handle.clone(),
        view_tx,
        fencer_acks.clone(),
        ha::Requests { commands: commands_rx, config_path, failsafe: failsafe.clone() },
    );
    let waker = agent.waker();
    let sighup = tokio::spawn(reload_on_sighup(commands_tx.clone()));
    let watcher = tokio::spawn(watch_cluster(
        etcd,
        dcs::Keys::new(&config.namespace, &config.scope).prefix().to_string(),
        agent.waker(),
    ));
    let systemd_watchdog =
        tokio::spawn(watchdog::systemd_watchdog(view_rx_for_watchdog, config.watchdog.safety_margin));
    let ha_loop = tokio::spawn(agent.run(shutdown));
    let address = grpc_listener.local_addr().context("read the gRPC listener's address")?;
    info!(%address, "serving the NodeAgent gRPC API");
    pgwarden_runtime::notify::ready("serving the NodeAgent gRPC API; the HA loop runs");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        pgwarden_runtime::grpc::server(config.pgwarden.grpc_tls.as_ref())?
            .layer(pgwarden_runtime::grpc::RequireAuth::new(config.restapi.authentication.as_ref(), OPEN_METHODS))
            .add_service(
                AgentService::new(
                    status_rx,
                    config.name.clone(),
                    fencer_acks,
                    fencer_token,
                    commands_tx,
                    parameter_checker,
                )
                .with_waker(waker)
                .with_observer(observer_handle, compose_now)
                .with_failsafe(failsafe, config.postgresql.data_dir.clone())
                .into_server(),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = done_rx.await;
            }),
    );
    let ha_result = ha_loop.await;
    systemd_watchdog.abort();
    sighup.abort();
    let _ = done_tx.send(());
    let served = server.await;
    watcher.abort();
    composer.abort();
    observer.abort();
    info!("agent stopped");
    ha_result.context("the HA loop panicked")?;
    served.context("the gRPC server panicked")?.context("serve the NodeAgent gRPC API")
}

pub use dcs::v2::StartRefused;

/// DESIGN invariant 3: a member name is unique. A live member key under our
/// name that another node keeps (another REST address) makes this agent
/// refuse to start; one left by this node's previous run, or one that stops
/// being renewed, is waited out (at most ttl + 5 s).
async fn check_unique_name(config: &Config, etcd: &dcs::Etcd) -> anyhow::Result<()> {
    let keys = dcs::Keys::new(&config.namespace, &config.scope);
    let ours = config.restapi.api_url();
    // Our PostgreSQL address as the member key carries it (when it can be
    // known here): a twin may share the REST address but not both.
    let our_conn = config.postgresql.connect_address.as_ref().map(|a| format!("postgres://{a}/postgres"));
    let patience = Duration::from_secs(u64::from(config.bootstrap.dcs.ttl) + 5);
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        let view = match dcs::read_cluster(etcd, &keys).await {
            Ok(view) => view,
            // etcd not answering: the HA loop waits for it; nothing to compare.
            Err(_) => return Ok(()),
        };
        let twin = view
            .member(&config.name)
            .filter(|m| m.data.api_url != ours || our_conn.as_ref().is_some_and(|conn| m.data.conn_url != *conn));
        let Some(twin) = twin else { return Ok(()) };
        let other = format!("{} and PostgreSQL at {}", twin.data.api_url, twin.data.conn_url);
        // Its agent answers from other addresses than ours: it runs, no need
        // to wait for its key (Patroni refuses at once too).
        let our_grpc = config.pgwarden.agent_grpc_url();
        let elsewhere = twin.data.api_url != ours && twin.data.grpc_url.as_ref().is_none_or(|url| *url != our_grpc);
        if elsewhere
            && peers::ask(twin.data.grpc_url.clone(), twin.data.api_url.clone(), Duration::from_secs(1)).await.is_some()
        {
            return Err(StartRefused(format!(
                "Can't start; there is already a node named {:?} running (it answers at {other}): names must be \
                 unique in a cluster (DESIGN invariant 3). Give this node its own `name`; nothing was changed",
                config.name
            ))
            .into());
        }
        if started.elapsed() >= patience {
            return Err(StartRefused(format!(
                "member name {:?} is in use by another node (its REST API is {other}; ours is {ours}{}), and its key \
                 stayed alive for {} s: names must be unique in a cluster (DESIGN invariant 3). Give this node its \
                 own `name`; nothing was changed",
                config.name,
                our_conn.as_ref().map(|c| format!(" and PostgreSQL at {c}")).unwrap_or_default(),
                patience.as_secs()
            ))
            .into());
        }
        if !warned {
            tracing::warn!(
                %other,
                "member key {:?} names another node's addresses: waiting up to {} s for it to expire",
                config.name,
                patience.as_secs()
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The agent's start-up: config, ownership and lock checks, listeners, run.
/// The `NodeAgent` calls anyone may make; the others change state and need
/// `restapi.authentication`'s credentials when it is set.
const OPEN_METHODS: &[&str] = &["/pgwarden.v1.NodeAgent/GetStatus", "/pgwarden.v1.NodeAgent/WatchStatus"];

pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_runtime::start(&args.config, Purpose::Agent)?;
    pgwarden_runtime::grpc::init_service_client(&config)?;
    let data_dir: &Path = &config.postgresql.data_dir;
    check_ownership(data_dir)?;
    if lock::ensure_parent(data_dir)? {
        info!(parent = %data_dir.parent().unwrap_or(data_dir).display(), "created the directory postgresql.data_dir goes in");
    }
    let lock = DataDirLock::acquire(data_dir)?;
    info!(lock = %lock.path.display(), "holding the data directory lock");
    // A new secret for the fencer link at every start (0600, beside the lock).
    let token_path = pg_local::fencer_token_path(data_dir);
    let mut random = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").context("open /dev/urandom")?, &mut random)
        .context("read /dev/urandom")?;
    let fencer_token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    postgres::write_private(&token_path, &fencer_token)
        .with_context(|| format!("write the fencer token {}", token_path.display()))?;
    let listener = pgwarden_runtime::bind(
        &config.pgwarden.agent_grpc_listen,
        "the agent's gRPC API",
        "pgwarden.agent_grpc_listen (default: restapi.listen port + 1000)",
    )
    .await?;
    pgwarden_runtime::warn_if_writes_are_open(&listener, &config, "the agent's gRPC API");
    run(config, args.config.path(), listener, fencer_token, pgwarden_runtime::shutdown_signal()).await
}
