//! The clients of a chaos run, each recording what it saw:
//!
//! - writers inserting unique ids (through HAProxy, directly to one node over
//!   the network, or locally on a node through its Unix socket, as a client
//!   on the same host would), each with the ids acknowledged and when;
//! - transfers moving money between accounts in single statements, whose
//!   total must never change;
//! - readers through HAProxy's replica port checking, per server, that the
//!   total is right and that no row they saw goes away;
//! - a write probe per node through its Unix socket (`select
//!   txid_current()`, which only a writable primary answers), whatever the
//!   partitions, for the two-writer check;
//! - a monitor of every node's REST API: whether the cluster is converged
//!   (one primary, every other member streaming) and the replication lag.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwarden_integration_tests::cluster::SUPERUSER_PASSWORD;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::task::JoinHandle;

use crate::cluster::{PG_PORT, http};

/// Seconds since the run started: the one clock of the timeline.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Where a client connects.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(Ipv4Addr, u16),
    Socket(PathBuf),
}

impl Target {
    fn options(&self) -> PgConnectOptions {
        let options = PgConnectOptions::new()
            .username("postgres")
            .password(SUPERUSER_PASSWORD)
            .database("postgres")
            .disable_statement_logging();
        match self {
            Target::Tcp(ip, port) => options.host(&ip.to_string()).port(*port),
            Target::Socket(dir) => options.socket(dir).port(PG_PORT),
        }
    }

    pub async fn connect(&self) -> Option<PgConnection> {
        tokio::time::timeout(Duration::from_secs(3), self.options().connect()).await.ok()?.ok()
    }
}

/// What one writer saw.
#[derive(Debug, Default, Clone)]
pub struct Acks {
    pub table: String,
    /// Acknowledged ids and the time of each acknowledgement.
    pub acked: Vec<(i64, f64)>,
    /// Attempts whose outcome is unknown or refused.
    pub failed: u64,
}

pub struct Workers {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<Acks>>,
    transfers: Vec<JoinHandle<u64>>,
    readers: Vec<JoinHandle<ReadReport>>,
}

pub const ACCOUNTS: i64 = 10;
pub const BALANCE: i64 = 1000;

/// Creates the tables every workload uses, through `primary`.
pub async fn create_tables(primary: &Target, tables: &[String]) -> anyhow::Result<()> {
    let mut conn =
        pgwarden_integration_tests::wait_until("a connection through HAProxy", Duration::from_secs(60), || async {
            Ok::<_, String>(primary.connect().await)
        })
        .await?;
    for table in tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create table if not exists {table}(id bigint primary key)")))
            .execute(&mut conn)
            .await?;
    }
    sqlx::raw_sql(
        "create table if not exists accounts(id bigint primary key, balance bigint not null);
         insert into accounts select g, 1000 from generate_series(1, 10) g on conflict do nothing",
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

impl Workers {
    pub fn new() -> Self {
        Self { stop: Arc::new(AtomicBool::new(false)), writers: Vec::new(), transfers: Vec::new(), readers: Vec::new() }
    }

    /// A writer inserting 1, 2, 3, ... into `table` through `target`, one at
    /// a time, every `interval`; an id whose outcome is unknown is never reused.
    pub fn writer(&mut self, clock: Clock, target: Target, table: &str, interval: Duration) {
        let stop = self.stop.clone();
        let table = table.to_string();
        self.writers.push(tokio::spawn(async move {
            let mut acks = Acks { table: table.clone(), ..Acks::default() };
            let insert = format!("insert into {table}(id) values ($1)");
            let mut conn: Option<PgConnection> = None;
            let mut next = 1i64;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = target.connect().await;
                }
                if let Some(connection) = conn.as_mut() {
                    let write = sqlx::query(sqlx::AssertSqlSafe(insert.clone())).bind(next).execute(connection);
                    match tokio::time::timeout(Duration::from_secs(2), write).await {
                        Ok(Ok(_)) => acks.acked.push((next, clock.now())),
                        Ok(Err(sqlx::Error::Database(_))) => acks.failed += 1,
                        _ => {
                            acks.failed += 1;
                            conn = None;
                        }
                    }
                    next += 1;
                } else {
                    acks.failed += 1;
                }
                tokio::time::sleep(interval).await;
            }
            acks
        }));
    }

    /// A client moving 1..=50 between two random accounts, one statement per
    /// transfer; returns how many were acknowledged.
    pub fn transfers(&mut self, target: Target, seed: u64) {
        let stop = self.stop.clone();
        self.transfers.push(tokio::spawn(async move {
            let mut rng = ha_sim::rng::Rng::new(seed);
            let mut acked = 0u64;
            let mut conn: Option<PgConnection> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = target.connect().await;
                }
                if let Some(connection) = conn.as_mut() {
                    let from = rng.range(1, ACCOUNTS as u64) as i64;
                    let to = 1 + (from + rng.range(0, ACCOUNTS as u64 - 2) as i64) % ACCOUNTS;
                    let amount = rng.range(1, 50) as i64;
                    let transfer = sqlx::query(
                        "update accounts set balance = balance + case when id = $1 then -$3::bigint else $3::bigint end \
                         where id in ($1, $2)",
                    )
                    .bind(from)
                    .bind(to)
                    .bind(amount)
                    .execute(connection);
                    match tokio::time::timeout(Duration::from_secs(2), transfer).await {
                        Ok(Ok(done)) if done.rows_affected() == 2 => acked += 1,
                        Ok(Ok(_)) | Ok(Err(sqlx::Error::Database(_))) => {}
                        _ => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        }));
    }

    /// A reader through HAProxy's replica port, watching `table` (written by
    /// one writer, ids ascending) and the accounts' total.
    pub fn reader(&mut self, clock: Clock, target: Target, table: &str) {
        let stop = self.stop.clone();
        let query = format!(
            "select inet_server_addr()::text, (select coalesce(max(id), 0) from {table}), \
             (select coalesce(sum(balance), 0)::bigint from accounts), (select count(*) from accounts)"
        );
        self.readers.push(tokio::spawn(async move {
            let mut report = ReadReport::default();
            let mut seen: BTreeMap<String, i64> = BTreeMap::new();
            let mut conn: Option<PgConnection> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = target.connect().await;
                }
                if let Some(connection) = conn.as_mut() {
                    let read = sqlx::query_as::<_, (Option<String>, i64, i64, i64)>(sqlx::AssertSqlSafe(query.clone()))
                        .fetch_one(connection);
                    match tokio::time::timeout(Duration::from_secs(2), read).await {
                        Ok(Ok((server, max, total, accounts))) => {
                            report.reads += 1;
                            let server = server.unwrap_or_default();
                            let server = server.split('/').next().unwrap_or_default().to_string();
                            if accounts == ACCOUNTS && total != ACCOUNTS * BALANCE {
                                report.wrong_totals.push((clock.now(), server.clone(), total));
                            }
                            let before = seen.entry(server.clone()).or_insert(0);
                            if max < *before {
                                report.vanished.push(Vanished { at: clock.now(), server, from: *before, to: max });
                            }
                            *before = max;
                        }
                        Ok(Err(sqlx::Error::Database(_))) => {}
                        _ => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            report
        }));
    }

    /// Stops every client and collects what each saw.
    pub async fn stop(self) -> (Vec<Acks>, u64, ReadReport) {
        self.stop.store(true, Ordering::Relaxed);
        let mut acks = Vec::new();
        for writer in self.writers {
            acks.push(writer.await.unwrap_or_default());
        }
        let mut transfers = 0;
        for t in self.transfers {
            transfers += t.await.unwrap_or_default();
        }
        let mut reads = ReadReport::default();
        for reader in self.readers {
            let report = reader.await.unwrap_or_default();
            reads.reads += report.reads;
            reads.wrong_totals.extend(report.wrong_totals);
            reads.vanished.extend(report.vanished);
        }
        (acks, transfers, reads)
    }
}

/// A server's newest id of the watched table went down: rows went away.
#[derive(Debug, Clone)]
pub struct Vanished {
    pub at: f64,
    pub server: String,
    pub from: i64,
    pub to: i64,
}

#[derive(Debug, Default)]
pub struct ReadReport {
    pub reads: u64,
    /// (time, server, total) of every read whose total was not the starting one.
    pub wrong_totals: Vec<(f64, String, i64)>,
    pub vanished: Vec<Vanished>,
}

/// A stretch of one node accepting writes: `[from, to]` in run seconds.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub node: usize,
    pub from: f64,
    pub to: f64,
}

/// Write probes on every node through its Unix socket.
pub struct Probes {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Span>>>,
    answered: Vec<Arc<AtomicBool>>,
}

impl Probes {
    pub fn start(clock: Clock, sockets: &[PathBuf]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered: Vec<Arc<AtomicBool>> = sockets.iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
        let tasks = sockets
            .iter()
            .enumerate()
            .map(|(node, dir)| {
                let stop = stop.clone();
                let answered = answered[node].clone();
                let target = Target::Socket(dir.clone());
                tokio::spawn(async move {
                    let mut spans = Vec::new();
                    let mut current: Option<Span> = None;
                    let mut conn: Option<PgConnection> = None;
                    while !stop.load(Ordering::Relaxed) {
                        if conn.is_none() {
                            conn = target.connect().await;
                        }
                        // Sent after the connection is made: the write was
                        // accepted at some instant in [sent, answered].
                        let sent = clock.now();
                        let ok = match conn.as_mut() {
                            Some(c) => {
                                let probe = sqlx::query("select txid_current()").execute(c);
                                match tokio::time::timeout(Duration::from_millis(500), probe).await {
                                    Ok(Ok(_)) => true,
                                    Ok(Err(sqlx::Error::Database(_))) => {
                                        answered.store(true, Ordering::Relaxed);
                                        false
                                    }
                                    _ => {
                                        conn = None;
                                        false
                                    }
                                }
                            }
                            None => false,
                        };
                        if ok {
                            answered.store(true, Ordering::Relaxed);
                            let now = clock.now();
                            match current.as_mut() {
                                Some(span) => span.to = now,
                                None => current = Some(Span { node, from: sent, to: now }),
                            }
                        } else if let Some(span) = current.take() {
                            spans.push(span);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    spans.extend(current);
                    spans
                })
            })
            .collect();
        Self { stop, tasks, answered }
    }

    pub async fn wait_answered(&self, within: Duration) -> anyhow::Result<()> {
        pgwarden_integration_tests::wait_until("a write probe answer from every node", within, || async {
            let silent: Vec<usize> =
                (0..self.answered.len()).filter(|&n| !self.answered[n].load(Ordering::Relaxed)).collect();
            if silent.is_empty() { Ok(Some(())) } else { Err(format!("no answer yet from node index(es) {silent:?}")) }
        })
        .await
    }

    pub async fn stop(self) -> Vec<Span> {
        self.stop.store(true, Ordering::Relaxed);
        let mut spans = Vec::new();
        for task in self.tasks {
            spans.extend(task.await.unwrap_or_default());
        }
        spans
    }
}

/// Intervals during which two nodes' writable spans overlap: (from, to, nodes).
pub fn two_writer_intervals(spans: &[Span]) -> Vec<(f64, f64, usize, usize)> {
    let mut out = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        for b in spans.iter().skip(i + 1).filter(|b| b.node != a.node) {
            let (from, to) = (a.from.max(b.from), a.to.min(b.to));
            if to > from {
                out.push((from, to, a.node.min(b.node), a.node.max(b.node)));
            }
        }
    }
    out.sort_by(|x, y| x.0.total_cmp(&y.0));
    out
}

/// One look at the cluster through every node's REST API.
#[derive(Debug, Clone, Default)]
pub struct Look {
    pub at: f64,
    /// Nodes answering 200 on `/primary`.
    pub primaries: Vec<usize>,
    /// Nodes answering 200 on `/replica`.
    pub replicas: Vec<usize>,
    /// From `/cluster` (the first node that answers): members streaming,
    /// whether a leader is running, the largest replica lag in bytes.
    pub streaming: usize,
    pub leader_running: bool,
    pub leader: Option<String>,
    pub paused: bool,
    pub max_lag: Option<u64>,
}

impl Look {
    pub fn converged(&self, nodes: usize) -> bool {
        self.primaries.len() == 1
            && self.replicas.len() == nodes - 1
            && self.streaming == nodes - 1
            && self.leader_running
    }
}

pub async fn look(clock: Clock, ips: &[Ipv4Addr]) -> Look {
    let timeout = Duration::from_millis(800);
    let mut look = Look { at: clock.now(), ..Look::default() };
    let checks = ips.iter().map(|&ip| async move {
        let primary = http(ip, "GET", "/primary", None, timeout).await.map(|(s, _)| s);
        let replica = http(ip, "GET", "/replica", None, timeout).await.map(|(s, _)| s);
        (primary, replica)
    });
    for (i, (primary, replica)) in futures_join(checks).await.into_iter().enumerate() {
        if primary == Some(200) {
            look.primaries.push(i);
        }
        if replica == Some(200) {
            look.replicas.push(i);
        }
    }
    for &ip in ips {
        let Some((200, body)) = http(ip, "GET", "/cluster", None, timeout).await else { continue };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        look.paused = json["pause"].as_bool().unwrap_or(false);
        for member in json["members"].as_array().into_iter().flatten() {
            let role = member["role"].as_str().unwrap_or_default();
            let state = member["state"].as_str().unwrap_or_default();
            if role == "leader" {
                look.leader_running = state == "running";
                look.leader = member["name"].as_str().map(str::to_string);
            } else if state == "streaming" {
                look.streaming += 1;
            }
            if let Some(lag) = member["lag"].as_u64() {
                look.max_lag = Some(look.max_lag.unwrap_or(0).max(lag));
            }
        }
        break;
    }
    look
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<JoinHandle<F::Output>> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("a check task"));
    }
    out
}

/// Looks at the cluster every 500 ms until stopped; the latest look is shared.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    pub latest: Arc<Mutex<Look>>,
    task: JoinHandle<Vec<Look>>,
}

impl Monitor {
    /// `say` hears of every change of leader (a name in `/cluster`).
    pub fn start(clock: Clock, ips: Vec<Ipv4Addr>, say: impl Fn(String) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(Mutex::new(Look::default()));
        let (flag, shared) = (stop.clone(), latest.clone());
        let task = tokio::spawn(async move {
            let mut looks = Vec::new();
            let mut leader: Option<String> = None;
            while !flag.load(Ordering::Relaxed) {
                let look = look(clock, &ips).await;
                if look.leader.is_some() && look.leader != leader {
                    say(format!(
                        "leader {} → {}",
                        leader.as_deref().unwrap_or("none"),
                        look.leader.as_deref().unwrap_or_default()
                    ));
                    leader = look.leader.clone();
                }
                *shared.lock().expect("the latest look") = look.clone();
                looks.push(look);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            looks
        });
        Self { stop, latest, task }
    }

    pub fn latest(&self) -> Look {
        self.latest.lock().expect("the latest look").clone()
    }

    pub async fn stop(self) -> Vec<Look> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Every id of `table` on the primary behind `target`.
pub async fn ids_in(target: &Target, table: &str) -> anyhow::Result<std::collections::HashSet<i64>> {
    let mut conn = pgwarden_integration_tests::wait_until(
        &format!("a connection to read {table}"),
        Duration::from_secs(30),
        || async { Ok::<_, String>(target.connect().await) },
    )
    .await?;
    let ids: Vec<i64> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select id from {table}"))).fetch_all(&mut conn).await?;
    let _ = conn.close().await;
    Ok(ids.into_iter().collect())
}

/// The accounts' total on the primary behind `target`.
pub async fn total(target: &Target) -> anyhow::Result<i64> {
    let mut conn = pgwarden_integration_tests::wait_until(
        "a connection to read the accounts",
        Duration::from_secs(30),
        || async { Ok::<_, String>(target.connect().await) },
    )
    .await?;
    let total: i64 = sqlx::query_scalar("select sum(balance)::bigint from accounts").fetch_one(&mut conn).await?;
    Ok(total)
}
