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

/// Seconds since the run started: the one clock of the timeline. Servers'
/// instants (`clock_timestamp()`, on this machine's clock) convert to it
/// through the start's Unix time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_unix: f64,
}

impl Clock {
    pub fn start() -> Self {
        let start_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Self { start: Instant::now(), start_unix }
    }

    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A Unix time (seconds) on the run's clock.
    pub fn at_unix(&self, unix: f64) -> f64 {
        unix - self.start_unix
    }
}

/// The role the clients connect as: an application's, not a superuser, so
/// that the superuser's reserved connections stay free for pgwarden.
pub const CLIENT_USER: &str = "chaos_client";
const CLIENT_PASSWORD: &str = "chaos-client-secret";

/// Where a client connects.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(Ipv4Addr, u16),
    Socket(PathBuf),
}

impl Target {
    fn options(&self, user: &str, password: &str) -> PgConnectOptions {
        let options =
            PgConnectOptions::new().username(user).password(password).database("postgres").disable_statement_logging();
        match self {
            Target::Tcp(ip, port) => options.host(&ip.to_string()).port(*port),
            Target::Socket(dir) => options.socket(dir).port(PG_PORT),
        }
    }

    /// A connection as the clients' role.
    pub async fn connect(&self) -> Option<PgConnection> {
        let options = self.options(CLIENT_USER, CLIENT_PASSWORD);
        tokio::time::timeout(Duration::from_secs(3), options.connect()).await.ok()?.ok()
    }

    /// A connection as the superuser (setting up, checking at the end).
    pub async fn connect_superuser(&self) -> Option<PgConnection> {
        let options = self.options("postgres", SUPERUSER_PASSWORD);
        tokio::time::timeout(Duration::from_secs(3), options.connect()).await.ok()?.ok()
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
    /// Per writer: its table and the time of its last acknowledgement.
    last_acks: Vec<(String, Arc<Mutex<f64>>)>,
    writers: Vec<JoinHandle<Acks>>,
    transfers: Vec<JoinHandle<u64>>,
    readers: Vec<JoinHandle<ReadReport>>,
}

pub const ACCOUNTS: i64 = 10;
pub const BALANCE: i64 = 1000;

/// Creates the clients' role and the tables every workload uses, through `primary`.
pub async fn create_tables(primary: &Target, tables: &[String]) -> anyhow::Result<()> {
    let mut conn =
        pgwarden_integration_tests::wait_until("a connection through HAProxy", Duration::from_secs(60), || async {
            Ok::<_, String>(primary.connect_superuser().await)
        })
        .await?;
    let role = format!("create role {CLIENT_USER} login password '{CLIENT_PASSWORD}'");
    sqlx::raw_sql(sqlx::AssertSqlSafe(role)).execute(&mut conn).await?;
    for table in tables {
        let ddl = format!(
            "create table if not exists {table}(id bigint primary key); grant select, insert on {table} to {CLIENT_USER}"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut conn).await?;
    }
    let accounts = format!(
        "create table if not exists accounts(id bigint primary key, balance bigint not null);
         insert into accounts select g, {BALANCE} from generate_series(1, {ACCOUNTS}) g on conflict do nothing;
         grant select, update on accounts to {CLIENT_USER}"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(accounts)).execute(&mut conn).await?;
    Ok(())
}

impl Workers {
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            last_acks: Vec::new(),
            writers: Vec::new(),
            transfers: Vec::new(),
            readers: Vec::new(),
        }
    }

    /// A writer inserting 1, 2, 3, ... into `table` through `target`, one at
    /// a time, every `interval`; an id whose outcome is unknown is never reused.
    pub fn writer(&mut self, clock: Clock, target: Target, table: &str, interval: Duration) {
        let stop = self.stop.clone();
        let table = table.to_string();
        let last_ack = Arc::new(Mutex::new(f64::NEG_INFINITY));
        self.last_acks.push((table.clone(), last_ack.clone()));
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
                    match tokio::time::timeout(Duration::from_secs(5), write).await {
                        Ok(Ok(_)) => {
                            let at = clock.now();
                            acks.acked.push((next, at));
                            *last_ack.lock().expect("the last acknowledgement") = at;
                        }
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
                    match tokio::time::timeout(Duration::from_secs(5), transfer).await {
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
            "select inet_server_addr()::text, pg_postmaster_start_time()::text, \
             (select coalesce(max(id), 0) from {table}), (select coalesce(sum(balance), 0)::bigint from accounts), (select count(*) from accounts)"
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
                    let read = sqlx::query_as::<_, (Option<String>, String, i64, i64, i64)>(sqlx::AssertSqlSafe(
                        query.clone(),
                    ))
                    .fetch_one(connection);
                    match tokio::time::timeout(Duration::from_secs(5), read).await {
                        Ok(Ok((server, started, max, total, accounts))) => {
                            report.reads += 1;
                            let server = server.unwrap_or_default();
                            let server = server.split('/').next().unwrap_or_default().to_string();
                            if accounts == ACCOUNTS && total != ACCOUNTS * BALANCE {
                                report.wrong_totals.push((clock.now(), server.clone(), total));
                            }
                            // A restarted standby may open at an older
                            // consistent point than it showed before its
                            // crash: each run of a server is watched apart.
                            let before = seen.entry(format!("{server} (up since {started})")).or_insert(0);
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

    /// The last acknowledgement of each writer whose table starts with `prefix`.
    pub fn last_acks(&self, prefix: &str) -> Vec<(String, f64)> {
        self.last_acks
            .iter()
            .filter(|(table, _)| table.starts_with(prefix))
            .map(|(table, at)| (table.clone(), *at.lock().expect("the last acknowledgement")))
            .collect()
    }

    /// Stops every client and collects what each saw; a client that
    /// panicked is an error (what it saw is lost).
    pub async fn stop(self) -> anyhow::Result<(Vec<Acks>, u64, ReadReport)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acks = Vec::new();
        for writer in self.writers {
            acks.push(writer.await.map_err(|e| anyhow::anyhow!("a writer task failed: {e}"))?);
        }
        let mut transfers = 0;
        for t in self.transfers {
            transfers += t.await.map_err(|e| anyhow::anyhow!("a transfer task failed: {e}"))?;
        }
        let mut reads = ReadReport::default();
        for reader in self.readers {
            let report = reader.await.map_err(|e| anyhow::anyhow!("a reader task failed: {e}"))?;
            reads.reads += report.reads;
            reads.wrong_totals.extend(report.wrong_totals);
            reads.vanished.extend(report.vanished);
        }
        Ok((acks, transfers, reads))
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

/// A stretch of one node accepting writes: the server's instants of the
/// first and the last of consecutive accepted probes (every 20 ms), in run
/// seconds.
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
                        // The server's own instant of the write: it held a
                        // write transaction id at that moment. The servers
                        // share this machine's clock, so instants of
                        // different nodes compare without client delays.
                        let accepted = match conn.as_mut() {
                            Some(c) => {
                                let probe = sqlx::query_scalar::<_, f64>(
                                    "select extract(epoch from clock_timestamp())::float8 from txid_current()",
                                )
                                .fetch_one(c);
                                match tokio::time::timeout(Duration::from_millis(500), probe).await {
                                    Ok(Ok(unix)) => Some(clock.at_unix(unix)),
                                    Ok(Err(sqlx::Error::Database(_))) => {
                                        answered.store(true, Ordering::Relaxed);
                                        None
                                    }
                                    _ => {
                                        conn = None;
                                        None
                                    }
                                }
                            }
                            None => None,
                        };
                        if let Some(at) = accepted {
                            answered.store(true, Ordering::Relaxed);
                            match current.as_mut() {
                                Some(span) => span.to = at,
                                None => current = Some(Span { node, from: at, to: at }),
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

    pub async fn stop(self) -> anyhow::Result<Vec<Span>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut spans = Vec::new();
        for task in self.tasks {
            spans.extend(task.await.map_err(|e| anyhow::anyhow!("a write probe failed: {e}"))?);
        }
        Ok(spans)
    }
}

/// Intervals during which two nodes' writable spans overlap: (from, to, nodes).
pub fn two_writer_intervals(spans: &[Span]) -> Vec<(f64, f64, usize, usize)> {
    let mut out = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        for b in spans.iter().skip(i + 1).filter(|b| b.node != a.node) {
            let (from, to) = (a.from.max(b.from), a.to.min(b.to));
            // A single accepted probe inside another node's span counts too.
            if to >= from {
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
    /// Members streaming from the leader, the synchronous standbys first.
    pub streaming_members: Vec<String>,
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
                let name = member["name"].as_str().unwrap_or_default().to_string();
                if role == "sync_standby" {
                    look.streaming_members.insert(0, name);
                } else {
                    look.streaming_members.push(name);
                }
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
        || async { Ok::<_, String>(target.connect_superuser().await) },
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
        || async { Ok::<_, String>(target.connect_superuser().await) },
    )
    .await?;
    let total: i64 = sqlx::query_scalar("select sum(balance)::bigint from accounts").fetch_one(&mut conn).await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_writer_intervals_are_the_overlaps_of_different_nodes_only() {
        let spans = [
            Span { node: 0, from: 0.0, to: 10.0 },
            Span { node: 0, from: 9.0, to: 12.0 },
            Span { node: 1, from: 11.5, to: 20.0 },
            Span { node: 2, from: 20.5, to: 30.0 },
        ];
        let overlaps = two_writer_intervals(&spans);
        assert_eq!(overlaps.len(), 1, "{overlaps:?}");
        let (from, to, a, b) = overlaps[0];
        assert_eq!((a, b), (0, 1));
        assert!((from - 11.5).abs() < 1e-9 && (to - 12.0).abs() < 1e-9);
        // One accepted probe inside another node's span is two writers too.
        let point = [Span { node: 0, from: 0.0, to: 10.0 }, Span { node: 2, from: 4.0, to: 4.0 }];
        assert_eq!(two_writer_intervals(&point).len(), 1);
    }

    #[test]
    fn converged_needs_one_primary_and_every_other_member_streaming() {
        let mut look =
            Look { primaries: vec![0], replicas: vec![1, 2], streaming: 2, leader_running: true, ..Look::default() };
        assert!(look.converged(3));
        look.streaming = 1;
        assert!(!look.converged(3));
        look.streaming = 2;
        look.primaries = vec![0, 1];
        assert!(!look.converged(3));
    }
}
