//! A client that writes numbered rows through a PostgreSQL address (HAProxy's
//! write port) and records which writes were acknowledged and when, so a
//! test can check that no acknowledged row was lost and measure how long
//! writes were unavailable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::task::JoinHandle;

/// What the writer saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Acknowledged ids with the time of their acknowledgement.
    pub acked: Vec<(i64, Instant)>,
    /// The wall-clock time of the last acknowledgement.
    pub last_ack_wall: Option<std::time::SystemTime>,
    pub failed_attempts: u64,
}

impl WriterReport {
    /// The longest time between two acknowledged writes after `from`
    /// (the write-unavailability window of a fault injected then).
    pub fn max_gap_after(&self, from: Instant) -> Duration {
        self.max_gap_in(from, None)
    }

    /// As [`WriterReport::max_gap_after`], counting only acknowledgements
    /// before `to`.
    pub fn max_gap_between(&self, from: Instant, to: Instant) -> Duration {
        self.max_gap_in(from, Some(to))
    }

    fn max_gap_in(&self, from: Instant, to: Option<Instant>) -> Duration {
        let mut previous = self.acked.iter().rev().find(|(_, at)| *at <= from).map_or(from, |(_, at)| *at);
        let mut max = Duration::ZERO;
        for (_, at) in self.acked.iter().filter(|(_, at)| *at > from && to.is_none_or(|to| *at < to)) {
            max = max.max(at.duration_since(previous));
            previous = *at;
        }
        max
    }

    pub fn ids(&self) -> Vec<i64> {
        self.acked.iter().map(|(id, _)| *id).collect()
    }
}

/// A running writer.
pub struct Writer {
    stop: Arc<AtomicBool>,
    last_ack: Arc<std::sync::Mutex<Option<Instant>>>,
    task: Option<JoinHandle<WriterReport>>,
}

/// A writer dropped without `stop` (a test or run that failed half-way)
/// stops writing, rather than hammering a cluster that lives on.
impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(crate) async fn connect(port: u16, password: &str) -> Option<PgConnection> {
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres")
        .password(password)
        .database("postgres")
        .disable_statement_logging();
    // Long enough for HAProxy to hold a connection while no server is up yet.
    tokio::time::timeout(Duration::from_secs(5), options.connect()).await.ok()?.ok()
}

impl Writer {
    /// Creates `table(id bigint primary key)` through `port` (retrying until
    /// it works) and starts writing one row every `interval`.
    pub async fn start(port: u16, password: &str, table: &str, interval: Duration) -> anyhow::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(mut conn) = connect(port, password).await {
                let ddl = format!("create table if not exists {table}(id bigint primary key)");
                if sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut conn).await.is_ok() {
                    let _ = conn.close().await;
                    break;
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "cannot create {table} through port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let last_ack = Arc::new(std::sync::Mutex::new(None));
        let last = last_ack.clone();
        let insert = format!("insert into {table}(id) values ($1)");
        let password = password.to_string();
        let task = tokio::spawn(async move {
            let mut report = WriterReport::default();
            let mut conn: Option<PgConnection> = None;
            let mut next_id = 1i64;
            while !flag.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = connect(port, &password).await;
                    if conn.is_none() {
                        report.failed_attempts += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                let connection = conn.as_mut().expect("connected above");
                let write = sqlx::query(sqlx::AssertSqlSafe(insert.clone())).bind(next_id).execute(connection);
                match tokio::time::timeout(Duration::from_secs(2), write).await {
                    Ok(Ok(_)) => {
                        let now = Instant::now();
                        report.acked.push((next_id, now));
                        report.last_ack_wall = Some(std::time::SystemTime::now());
                        *last.lock().expect("ack time") = Some(now);
                        next_id += 1;
                    }
                    _ => {
                        // The outcome is unknown; that id is never reused.
                        report.failed_attempts += 1;
                        next_id += 1;
                        conn = None;
                    }
                }
                tokio::time::sleep(interval).await;
            }
            report
        });
        Ok(Self { stop, last_ack, task: Some(task) })
    }

    /// Waits until a write is acknowledged after `instant`.
    pub async fn wait_ack_after(&self, instant: Instant, timeout: Duration) -> anyhow::Result<()> {
        crate::wait::wait_until("an acknowledged write", timeout, || async {
            let last = *self.last_ack.lock().expect("ack time");
            Ok::<_, String>(last.filter(|at| *at > instant).map(|_| ()))
        })
        .await
    }

    /// The time of the last acknowledged write.
    pub fn last_ack(&self) -> Option<Instant> {
        *self.last_ack.lock().expect("ack time")
    }

    pub async fn stop(mut self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => WriterReport::default(),
        }
    }
}

/// The ids of `acked` that are missing from `table` on `port`. Right after a
/// fault the node may still refuse a connection for a moment: retried up to 30 s.
pub async fn missing_rows(port: u16, password: &str, table: &str, acked: &[i64]) -> anyhow::Result<Vec<i64>> {
    let mut conn =
        crate::wait::wait_until(&format!("a connection to port {port}"), Duration::from_secs(30), || async {
            Ok(connect(port, password).await)
        })
        .await?;
    let query = format!("select id from {table}");
    let present: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(query)).fetch_all(&mut conn).await?;
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    Ok(acked.iter().copied().filter(|id| !present.contains(id)).collect())
}

/// How often each of [`Writers`] writes, unless told otherwise.
pub const WRITE_EVERY: Duration = Duration::from_millis(5);

/// Several writers at once, each on its own table (`{prefix}0`, `{prefix}1`,
/// ...): the concurrent clients every fault test runs.
pub struct Writers {
    port: u16,
    password: String,
    writers: Vec<(String, Writer)>,
}

impl Writers {
    /// Starts `count` writers through `port`, each writing every 5 ms, and
    /// waits for each one's first acknowledgement.
    pub async fn start(
        port: u16,
        password: &str,
        prefix: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_every(port, password, prefix, count, WRITE_EVERY, timeout).await
    }

    /// As [`Writers::start`], each writing every `every`.
    pub async fn start_every(
        port: u16,
        password: &str,
        prefix: &str,
        count: usize,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut writers = Vec::new();
        for w in 0..count {
            let table = format!("{prefix}{w}");
            writers.push((table.clone(), Writer::start(port, password, &table, every).await?));
        }
        let group = Self { port, password: password.to_string(), writers };
        group.wait_ack_after(Instant::now(), timeout).await?;
        Ok(group)
    }

    /// How many writers run.
    pub fn len(&self) -> usize {
        self.writers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }

    /// Waits until every writer has an acknowledgement after `instant`.
    pub async fn wait_ack_after(&self, instant: Instant, timeout: Duration) -> anyhow::Result<()> {
        for (_, writer) in &self.writers {
            writer.wait_ack_after(instant, timeout).await?;
        }
        Ok(())
    }

    /// Waits until any writer has an acknowledgement after `instant` (an
    /// error if none has within `timeout`: what a test of blocked writes
    /// wants).
    pub async fn wait_any_ack_after(&self, instant: Instant, timeout: Duration) -> anyhow::Result<()> {
        crate::wait::wait_until("an acknowledged write from any writer", timeout, || async {
            let any = self.writers.iter().any(|(_, w)| w.last_ack().is_some_and(|at| at > instant));
            Ok::<_, String>(any.then_some(()))
        })
        .await
    }

    /// Stops every writer once each has written again, and reads back what
    /// each saw acknowledged: the number of acknowledged rows, and every
    /// acknowledged id missing from its table (`table: ids`).
    pub async fn stop_and_check(self, timeout: Duration) -> anyhow::Result<(usize, Vec<String>)> {
        let tables: Vec<String> = self.writers.iter().map(|(table, _)| table.clone()).collect();
        let (reports, missing) = self.stop_and_report(timeout).await?;
        let lost = tables
            .iter()
            .zip(&missing)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(table, ids)| format!("{table}: {ids:?}"))
            .collect();
        Ok((reports.iter().map(|r| r.acked.len()).sum(), lost))
    }

    /// As [`Writers::stop_and_check`]: each writer's report, and the
    /// acknowledged ids missing from its table, in the writers' order.
    pub async fn stop_and_report(self, timeout: Duration) -> anyhow::Result<(Vec<WriterReport>, Vec<Vec<i64>>)> {
        self.wait_ack_after(Instant::now(), timeout).await?;
        let (mut reports, mut missing) = (Vec::new(), Vec::new());
        for (table, writer) in self.writers {
            let report = writer.stop().await;
            missing.push(missing_rows(self.port, &self.password, &table, &report.ids()).await?);
            reports.push(report);
        }
        Ok((reports, missing))
    }
}
