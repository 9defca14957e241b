//! The observer: what the local PostgreSQL is doing, every 250 ms, from its
//! data directory and (while it runs) a few read-only queries.

use std::time::Duration;

use ha_proto::v1::{PostgresState, Role};
use pgwarden_config::Config;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;
use tracing::debug;

use crate::sql::{self, SqlStatus};
use pg_local::{self, LocalPostgres};

/// One observation: the postmaster as seen on disk, and PostgreSQL's own
/// answers while it runs (`None` when it does not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub postmaster: LocalPostgres,
    pub sql: Option<SqlStatus>,
    /// Unix time in milliseconds of this observation.
    pub observed_at_unix_ms: i64,
}

impl Local {
    /// The role, from PostgreSQL's own answer when there is one.
    pub fn role(&self) -> Role {
        match &self.sql {
            Some(sql) if sql.in_recovery => Role::Replica,
            Some(_) => Role::Primary,
            None => self.postmaster.role,
        }
    }
}

/// How long one round of status queries may take: under the 500 ms in which
/// a health check still trusts an observation.
const QUERY_TIMEOUT: Duration = Duration::from_millis(400);

/// Observes every `interval` and publishes each observation.
pub async fn observe_loop(
    config: Config,
    local: pgwarden_config::hba::LocalConnection,
    port: u16,
    interval: Duration,
    tx: watch::Sender<Local>,
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
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let postmaster = pg_local::observe(&config.postgresql.data_dir);
        let mut status: Option<sql::SqlStatus> = None;
        if postmaster.state == PostgresState::Running {
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
        // Sent every time, changed or not: the timestamp is what tells a
        // reader the observation is fresh.
        if tx.send(Local { postmaster, sql: status, observed_at_unix_ms: crate::now_unix_ms() }).is_err() {
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
