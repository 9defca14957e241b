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
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let postmaster = pg_local::observe(&config.postgresql.data_dir);
        let mut status = None;
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
        // Sent every time, changed or not: the timestamp is what tells a
        // reader the observation is fresh.
        if tx.send(Local { postmaster, sql: status, observed_at_unix_ms: crate::now_unix_ms() }).is_err() {
            return;
        }
    }
}
