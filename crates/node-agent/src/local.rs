//! The observer: what the local PostgreSQL is doing, from its data
//! directory and (while it runs) a few read-only queries. While anything
//! changes it looks every 100 ms; once PostgreSQL's answers stay the same it
//! reads the data directory every 500 ms (a server shutting down says so in
//! its lock file) and queries once a second, or at once when asked (the HA
//! loop's tick, a peer's position question) or when the postmaster exits
//! (a pidfd, so a crash is seen at once, not at the next look).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_config::Config;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;
use tracing::debug;

use crate::sql::{self, SqlStatus};
use pg_local::{self, DataRole, LocalPostgres, PostmasterState};

/// One observation: the postmaster as seen on disk, and PostgreSQL's own
/// answers while it runs (`None` when it does not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalObservation {
    pub postmaster: LocalPostgres,
    pub sql: Option<SqlStatus>,
    /// Unix time in milliseconds of this observation.
    pub observed_at_unix_ms: i64,
    /// Counts the observations that queried PostgreSQL (or found it not
    /// running), so that a reader can wait for one newer than it has.
    pub generation: u64,
    /// When `sql` was queried (`None`: never, or PostgreSQL does not run).
    pub queried_at: Option<Instant>,
    /// When the data directory was read.
    pub looked_at: Instant,
}

impl LocalObservation {
    /// Before the observer's first look.
    pub fn initial(postmaster: LocalPostgres) -> Self {
        LocalObservation {
            postmaster,
            sql: None,
            observed_at_unix_ms: crate::now_unix_ms(),
            generation: 0,
            queried_at: None,
            looked_at: Instant::now(),
        }
    }

    /// The role, from PostgreSQL's own answer when there is one.
    pub fn role(&self) -> DataRole {
        match &self.sql {
            Some(sql) if sql.in_recovery => DataRole::Replica,
            Some(_) => DataRole::Primary,
            None => self.postmaster.role,
        }
    }
}

/// How long one round of status queries may take: under the 500 ms in which
/// a health check still trusts an observation.
const QUERY_TIMEOUT: Duration = Duration::from_millis(400);

/// How often the observer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Every look queries, this often, while anything changes and for
    /// `settle` after the last change.
    pub busy: Duration,
    /// How long answers must stay the same before the observer slows down.
    pub settle: Duration,
    /// Once settled: the data directory this often...
    pub heartbeat: Duration,
    /// ...and a query this often.
    pub steady: Duration,
}

impl Cadence {
    pub const DEFAULT: Cadence = Cadence {
        busy: Duration::from_millis(100),
        settle: Duration::from_secs(2),
        heartbeat: Duration::from_millis(500),
        steady: Duration::from_secs(1),
    };

    /// When the next look is due, and whether it must query: `last_look`
    /// and `last_query` are the previous ones, `busy` whether anything
    /// changed within `settle`.
    pub fn next(&self, busy: bool, last_look: Instant, last_query: Option<Instant>) -> (Instant, bool) {
        if busy {
            return (last_look + self.busy, true);
        }
        let look = last_look + self.heartbeat;
        match last_query {
            Some(queried) if queried + self.steady > look => (look, false),
            Some(queried) => (queried + self.steady, true),
            None => (look, true),
        }
    }
}

/// Asks the observer for a look now; shared by the HA loop and the gRPC
/// service.
#[derive(Debug, Clone)]
pub struct Observer {
    rx: watch::Receiver<LocalObservation>,
    /// The generation a reader waits for: the observer queries while it
    /// has not published that one.
    wanted: Arc<watch::Sender<u64>>,
}

impl Observer {
    pub fn new(rx: watch::Receiver<LocalObservation>, wanted: Arc<watch::Sender<u64>>) -> Self {
        Observer { rx, wanted }
    }

    /// The observations as they come.
    pub fn receiver(&self) -> watch::Receiver<LocalObservation> {
        self.rx.clone()
    }

    /// The latest observation, or a new one if PostgreSQL was last queried
    /// (the data directory last read, while it does not run) longer than
    /// `max_age` ago: the observer is asked to look now, and waited for up
    /// to `wait` (a PostgreSQL that does not answer within its query timeout
    /// is an answer too).
    pub async fn fresh(&self, max_age: Duration, wait: Duration) -> LocalObservation {
        let current = self.rx.borrow().clone();
        let looked = match current.postmaster.state {
            PostmasterState::Running => current.queried_at,
            _ => Some(current.looked_at),
        };
        if looked.is_some_and(|at| at.elapsed() <= max_age) {
            return current;
        }
        let mut rx = self.rx.clone();
        // A query under way when asked counts: it started less than a
        // query's time ago (asking for one more would query twice).
        let wanted = current.generation + 1;
        self.wanted.send_if_modified(|asked| {
            let more = *asked < wanted;
            *asked = (*asked).max(wanted);
            more
        });
        let newer = rx.wait_for(|local| local.generation > current.generation);
        match tokio::time::timeout(wait, newer).await {
            Ok(Ok(local)) => local.clone(),
            _ => self.rx.borrow().clone(),
        }
    }
}

/// Tells when a postmaster exits, by a pidfd (Linux 5.3 and later; without
/// one, the next look finds it gone).
struct ExitWatch {
    pid: u32,
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl ExitWatch {
    // `with_interest` is deprecated because a borrowed raw descriptor could
    // be closed under the reactor; an `OwnedFd` moved into the `AsyncFd`
    // stays open as long as it is registered, so the use here is sound.
    #[allow(deprecated)]
    fn open(pid: u32) -> Self {
        let fd = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok())
            .and_then(|fd| tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok());
        ExitWatch { pid, fd }
    }

    /// Resolves once the process has exited (never without a pidfd).
    async fn exited(&self) {
        match &self.fd {
            Some(fd) => {
                let _ = fd.readable().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Observes at `cadence` and publishes each observation; `wanted` asks for
/// a look (with a query) at once until that generation is published.
pub async fn observe_loop(
    config: Config,
    local: pgwarden_config::hba::LocalConnection,
    port: u16,
    cadence: Cadence,
    mut wanted: watch::Receiver<u64>,
    tx: watch::Sender<LocalObservation>,
) {
    let mut connection: Option<PgConnection> = None;
    // A failure to connect to a running PostgreSQL (authentication, pg_hba,
    // socket) is logged once per distinct cause, not every 100 ms.
    let mut last_connect_error: Option<String> = None;
    // The last timeline the WAL receiver reported, by postmaster start time:
    // while the receiver is down (its upstream stopped or switched), a
    // replica still replays that timeline, though its latest restartpoint
    // may name an older one.
    let mut received: Option<(String, u64)> = None;
    let mut generation = 0u64;
    let mut last_look = Instant::now() - cadence.busy;
    let mut last_query: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut last_shape: Option<(LocalPostgres, Option<SqlStatus>)> = None;
    let mut last_sql: Option<SqlStatus> = None;
    let mut exit_watch: Option<ExitWatch> = None;
    // A postmaster whose exit the pidfd reported: not watched again (a
    // zombie still has its pid until its parent reaps it).
    let mut exited_pid: Option<u32> = None;
    loop {
        let busy = last_change.elapsed() < cadence.settle;
        let (due, mut query) = cadence.next(busy, last_look, last_query);
        let exited = async {
            match &exit_watch {
                Some(watch) => watch.exited().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            Ok(()) = wanted.changed() => query |= *wanted.borrow_and_update() > generation,
            () = exited => {
                exited_pid = exit_watch.take().map(|watch| watch.pid);
                query = true;
            }
        }
        last_look = Instant::now();
        let postmaster = pg_local::observe(&config.postgresql.data_dir);
        let running = postmaster.state == PostmasterState::Running;
        let same_postmaster = last_shape.as_ref().is_some_and(|(previous, _)| *previous == postmaster);
        // A look that does not query keeps the last answer, only while the
        // same postmaster still runs as it did.
        query |= !same_postmaster || (running && last_sql.is_none());
        let mut status: Option<sql::SqlStatus> = None;
        if query {
            if running {
                if connection.is_none() {
                    match sql::connect(&config, &local, port, QUERY_TIMEOUT).await {
                        Ok(conn) => {
                            if last_connect_error.take().is_some() {
                                tracing::info!("connected to the local PostgreSQL again");
                            }
                            connection = Some(conn);
                        }
                        Err(e) => {
                            let text = format!("{e:#}");
                            // Refused while starting up is expected; anything else says why.
                            let starting = text.contains("starting up") || text.contains("Connection refused");
                            if !starting && last_connect_error.as_deref() != Some(text.as_str()) {
                                tracing::warn!("PostgreSQL runs but the agent cannot log in: {text}");
                            } else {
                                debug!("observer: {text}");
                            }
                            last_connect_error = Some(text);
                        }
                    }
                }
                if let Some(conn) = connection.as_mut() {
                    match tokio::time::timeout(QUERY_TIMEOUT, sql::status(conn)).await {
                        Ok(Ok(answer)) => status = Some(answer),
                        Ok(Err(e)) => {
                            debug!("observer: {e:#}");
                            connection = None;
                        }
                        Err(_) => connection = None,
                    }
                }
            } else if let Some(conn) = connection.take() {
                sql::close(conn).await;
            }
            if let Some(status) = status.as_mut() {
                keep_received_timeline(status, &mut received);
            }
            generation += 1;
            last_query = Some(Instant::now());
            last_sql = status.clone();
        } else {
            status = last_sql.clone();
        }
        // Any change but the moment of the look keeps the observer busy:
        // the postmaster, the role, a WAL position, a standby.
        let shape = (postmaster, status.clone());
        if last_shape.as_ref() != Some(&shape) {
            last_change = Instant::now();
            last_shape = Some(shape);
        }
        // The postmaster's exit is waited for while it runs (or starts).
        let pid = postmaster.postmaster_pid;
        let watched = exit_watch.as_ref().map(|watch| watch.pid);
        if pid == 0 || postmaster.state == PostmasterState::Stopped {
            exit_watch = None;
        } else if watched != Some(pid) && exited_pid != Some(pid) {
            exit_watch = Some(ExitWatch::open(pid));
        }
        // Sent every time, changed or not: the timestamp is what tells a
        // reader the observation is fresh.
        let observation = LocalObservation {
            postmaster,
            sql: status,
            observed_at_unix_ms: crate::now_unix_ms(),
            generation,
            queried_at: last_query.filter(|_| running),
            looked_at: last_look,
        };
        if tx.send(observation).is_err() {
            return;
        }
    }
}

/// A replica's timeline while its WAL receiver is down: the last one the
/// receiver reported under this postmaster, if later than the restartpoint's.
fn keep_received_timeline(status: &mut sql::SqlStatus, received: &mut Option<(String, u64)>) {
    if !status.in_recovery {
        *received = None;
        return;
    }
    if status.timeline_from_receiver {
        *received = Some((status.postmaster_start_time.clone(), status.timeline));
    } else if let Some((started, timeline)) = received.as_ref()
        && *started == status.postmaster_start_time
    {
        status.timeline = status.timeline.max(*timeline);
    }
}

#[cfg(test)]
mod timeline_tests {
    use super::*;

    #[test]
    fn the_cadence_queries_every_look_while_busy_and_once_a_second_when_settled() {
        let cadence = Cadence::DEFAULT;
        let t0 = Instant::now();
        assert_eq!(cadence.next(true, t0, Some(t0)), (t0 + Duration::from_millis(100), true));
        // Settled: heartbeats without a query until a second has passed.
        assert_eq!(cadence.next(false, t0, Some(t0)), (t0 + Duration::from_millis(500), false));
        let later = t0 + Duration::from_millis(800);
        assert_eq!(cadence.next(false, later, Some(t0)), (t0 + Duration::from_secs(1), true));
        assert_eq!(cadence.next(false, t0, None), (t0 + Duration::from_millis(500), true), "never queried");
    }

    #[test]
    fn a_replica_keeps_the_receivers_timeline_while_the_receiver_is_down() {
        let replica = |timeline, from_receiver, started: &str| sql::SqlStatus {
            in_recovery: true,
            timeline,
            timeline_from_receiver: from_receiver,
            postmaster_start_time: started.into(),
            ..sql::SqlStatus::default()
        };
        let mut received = None;
        let mut streaming = replica(6, true, "t1");
        keep_received_timeline(&mut streaming, &mut received);
        // Its upstream stopped: the restartpoint still says 5.
        let mut down = replica(5, false, "t1");
        keep_received_timeline(&mut down, &mut received);
        assert_eq!(down.timeline, 6);
        // Restarted (another postmaster): nothing carried over.
        let mut restarted = replica(5, false, "t2");
        keep_received_timeline(&mut restarted, &mut received);
        assert_eq!(restarted.timeline, 5);
    }
}
