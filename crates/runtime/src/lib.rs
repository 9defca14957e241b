//! Start-up pieces shared by the pgwarden services: the config-file argument
//! (positional as in `patroni /etc/patroni.yml`, or `--config`), printing the
//! config's warnings once, logging set up from Patroni's `log:` section, and
//! the shutdown signal. It owns no service logic.

pub mod grpc;
pub mod keyfile;
mod logfile;
mod logline;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use pgwarden_config::{Config, Loaded, Purpose};
use tracing_subscriber::EnvFilter;

/// The config-file arguments every service takes.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Patroni-format YAML config file (or set PATRONI_CONFIGURATION to the YAML itself).
    #[arg(value_name = "CONFIG")]
    pub config_file: Option<PathBuf>,
    /// The same file, given as an option.
    #[arg(long = "config", value_name = "CONFIG", conflicts_with = "config_file")]
    pub config_flag: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn path(&self) -> Option<PathBuf> {
        self.config_file.clone().or_else(|| self.config_flag.clone())
    }

    /// Loads and validates the config; a bad config is one error listing
    /// every problem.
    pub fn load(&self, purpose: Purpose) -> anyhow::Result<Loaded> {
        Ok(pgwarden_config::load(self.path().as_deref(), purpose)?)
    }
}

/// Sets up logging from the `log:` section; `RUST_LOG` overrides the level.
pub fn init_tracing(log: &pgwarden_config::Log) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives).context("parse RUST_LOG")?,
        _ => {
            let mut filter = EnvFilter::try_new(&log.level).context("parse log.level")?;
            for directive in &log.loggers {
                filter = filter.add_directive(directive.parse().with_context(|| format!("log.loggers: {directive}"))?);
            }
            filter
        }
    };
    // tonic reports a refused gRPC TLS handshake (no or a foreign client
    // certificate) only at debug level; it is worth a line at every level.
    let filter = filter.add_directive("tonic::transport::server::io_stream=debug".parse().context("tonic directive")?);
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let fields = if log.json { log.static_fields.clone() } else { Default::default() };
    let (writer, ansi) = match &log.dir {
        // Patroni's `log.dir`: a file per service in that directory, appended
        // to, rotated by size (`log.file_size`, `log.file_num`).
        Some(dir) => {
            let service = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "pgwarden".into());
            std::fs::create_dir_all(dir).with_context(|| format!("create log.dir {}", dir.display()))?;
            let path = dir.join(format!("{service}.log"));
            let file = logfile::RotatingFile::open(path.clone(), log.mode, log.file_size, log.file_num)
                .with_context(|| format!("open the log file {} (log.dir, log.mode)", path.display()))?;
            let file = std::sync::Mutex::new(logfile::StaticFields::new(file, fields));
            (BoxMakeWriter::new(file), false)
        }
        None => {
            // Colour only on a terminal: journald and log files get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let writer = move || logfile::StaticFields::new(std::io::stderr(), fields.clone());
            (BoxMakeWriter::new(writer), ansi)
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi && !log.json).with_writer(writer);
    let result = match &log.format {
        _ if log.json => builder.json().try_init(),
        Some(parts) => builder.event_format(patroni_format(log, parts)).try_init(),
        None => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("set up logging: {e}"))
}

fn patroni_format(log: &pgwarden_config::Log, parts: &[pgwarden_config::logformat::LogPart]) -> logline::PatroniFormat {
    logline::start_clock();
    logline::PatroniFormat { parts: parts.to_vec(), dateformat: log.dateformat.clone() }
}

/// Logs a loaded config's warnings and notes, at start and at each reload
/// (Patroni warns about conflicting tags on both).
pub fn log_config_problems(problems: &[pgwarden_config::Problem]) {
    for problem in problems {
        match problem.severity {
            pgwarden_config::Severity::Notice => {
                tracing::info!(path = %problem.path, "config: {}", problem.message)
            }
            _ => tracing::warn!(path = %problem.path, "config: {}", problem.message),
        }
    }
}

/// Loads the config, sets up logging and logs the config's warnings once.
pub fn start(args: &ConfigArgs, purpose: Purpose) -> anyhow::Result<Config> {
    let loaded = args.load(purpose)?;
    init_tracing(&loaded.config.log)?;
    log_config_problems(&loaded.warnings);
    tracing::info!(origin = %loaded.origin, scope = %loaded.config.scope, member = %loaded.config.name, "config loaded");
    Ok(loaded.config)
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("failed to listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A service with nothing to re-read keeps running on SIGHUP (`systemctl
/// reload` of the whole target) and says so, instead of dying of it.
pub fn ignore_sighup(service: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: {service} reads its config only at start; restart it to apply a changed file \
                 (pgwarden-agent applies PostgreSQL settings on reload)"
            );
        }
    });
}

/// Binds a TCP listener with an error that names the setting to change.
pub async fn bind(
    address: &pgwarden_config::HostPort,
    what: &str,
    setting: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    bind_with_backlog(address, what, setting, None).await
}

/// As [`bind`], with a listen backlog (`restapi.request_queue_size`);
/// `None`: the system's default.
pub async fn bind_with_backlog(
    address: &pgwarden_config::HostPort,
    what: &str,
    setting: &str,
    backlog: Option<u32>,
) -> anyhow::Result<tokio::net::TcpListener> {
    let host = if address.host == "*" { "0.0.0.0" } else { address.host.as_str() };
    let context = || format!("listen on {address} for {what} (is another process using the port? change {setting})");
    let Some(backlog) = backlog else {
        return tokio::net::TcpListener::bind((host, address.port)).await.with_context(context);
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, address.port)).await.with_context(context)? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let listening = socket.and_then(|socket| {
            // As std's and tokio's own `bind` do on Unix.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(backlog)
        });
        match listening {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing"))).with_context(context)
}

/// Warns once at start when state-changing endpoints (`what`) listen on
/// an address other hosts can reach and `restapi.authentication` is not set:
/// anyone who reaches the port can then switch over, restart or reinit.
pub fn warn_if_writes_are_open(listener: &tokio::net::TcpListener, config: &pgwarden_config::Config, what: &str) {
    let Ok(address) = listener.local_addr() else { return };
    if writes_are_open(address, config.restapi.authentication.is_some()) {
        tracing::warn!(
            %address,
            "{what} accepts state-changing requests from anyone who reaches {address}: set restapi.authentication \
             (and TLS), or listen on a loopback or private address only"
        );
    }
}

/// Whether write endpoints on `address` are open to other hosts without
/// credentials (a wildcard address counts as reachable).
fn writes_are_open(address: std::net::SocketAddr, authenticated: bool) -> bool {
    !authenticated && !address.ip().is_loopback()
}

/// systemd notifications (`Type=notify` units). Outside systemd
/// (`NOTIFY_SOCKET` unset) every call does nothing.
pub mod notify {
    use std::time::Duration;

    use sd_notify::NotifyState;

    fn send(states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("failed to notify systemd: {e}");
        }
    }

    /// `READY=1`: the service is serving.
    pub fn ready(status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1`.
    pub fn stopping() {
        send(&[NotifyState::Stopping]);
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog() {
        send(&[NotifyState::Watchdog]);
    }

    /// `WATCHDOG_USEC=`: changes the unit's watchdog timeout at run time.
    pub fn watchdog_timeout(timeout: Duration) {
        let usec = u32::try_from(timeout.as_micros()).unwrap_or(u32::MAX);
        send(&[NotifyState::WatchdogUsec(usec)]);
    }

    /// The unit's watchdog timeout, when systemd set one for this process.
    pub fn watchdog_enabled() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `restapi.request_queue_size` reaches the socket: the kernel reports
    /// a listening socket's backlog as its send queue (`ss -ltn`).
    #[tokio::test]
    async fn the_listen_backlog_is_the_one_configured() {
        let backlog_of = |port: u16| {
            let out = std::process::Command::new("ss")
                .args(["-Hltn", &format!("sport = :{port}")])
                .output()
                .expect("ss (iproute2) runs");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.split_whitespace().nth(2).and_then(|q| q.parse::<u32>().ok()).unwrap_or_else(|| panic!("{text}"))
        };
        let address = pgwarden_config::HostPort::new("127.0.0.1", 0);
        let listener = bind_with_backlog(&address, "a test", "restapi.listen", Some(7)).await.expect("bind");
        assert_eq!(backlog_of(listener.local_addr().expect("address").port()), 7);
        let default = bind(&address, "a test", "restapi.listen").await.expect("bind");
        let system = backlog_of(default.local_addr().expect("address").port());
        assert!(system > 7, "unset: the standard library's default (128 on Linux), not Patroni's 5: {system}");
        // A port in use is refused with the setting to change.
        let taken = listener.local_addr().expect("address").port();
        let error =
            bind_with_backlog(&pgwarden_config::HostPort::new("127.0.0.1", taken), "a test", "restapi.listen", Some(7))
                .await
                .expect_err("in use");
        assert!(format!("{error:#}").contains("change restapi.listen"), "{error:#}");
    }

    #[test]
    fn open_write_endpoints_are_those_others_reach_without_credentials() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().expect("address");
        assert!(writes_are_open(at("0.0.0.0:8008"), false));
        assert!(writes_are_open(at("10.0.0.11:8008"), false));
        assert!(writes_are_open(at("[::]:8008"), false));
        assert!(!writes_are_open(at("127.0.0.1:8008"), false));
        assert!(!writes_are_open(at("[::1]:8008"), false));
        assert!(!writes_are_open(at("0.0.0.0:8008"), true));
    }
}
