//! Probes every node directly (not through HAProxy) for writability, many
//! times a second, so a test can tell whether two nodes ever accepted writes
//! at the same moment. A probe is `select txid_current()`: it needs a write
//! transaction id, which only a primary open for writes hands out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use sqlx::postgres::PgConnection;
use tokio::task::JoinHandle;

/// One node's stretch of consecutive successful probes: it accepted writes
/// at some moment in `[from, to]` (send time of the first, answer time of the last).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub node: usize,
    pub from: SystemTime,
    pub to: SystemTime,
}

/// What the probes saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub spans: Vec<Span>,
}

impl ProbeReport {
    /// Seconds during which two nodes' writable spans overlap (an upper
    /// bound: a span reaches from a probe's send to the last answer).
    pub fn two_writer_seconds(&self) -> f64 {
        let mut total = 0.0;
        for (i, a) in self.spans.iter().enumerate() {
            for b in self.spans.iter().skip(i + 1).filter(|b| b.node != a.node) {
                let from = a.from.max(b.from);
                let to = a.to.min(b.to);
                if let Ok(overlap) = to.duration_since(from) {
                    total += overlap.as_secs_f64();
                }
            }
        }
        total
    }

    /// The nodes that accepted writes at some point, in order of first write.
    pub fn writers(&self) -> Vec<usize> {
        let mut spans = self.spans.clone();
        spans.sort_by_key(|s| s.from);
        let mut writers: Vec<usize> = Vec::new();
        for span in spans {
            if !writers.contains(&span.node) {
                writers.push(span.node);
            }
        }
        writers
    }
}

/// Probes running in the background until [`WriteProbe::stop`].
pub struct WriteProbe {
    stop: Arc<AtomicBool>,
    /// Per node: a probe got an answer (writable or read-only) at least once.
    answered: Vec<Arc<AtomicBool>>,
    tasks: Vec<JoinHandle<Vec<Span>>>,
}

impl WriteProbe {
    /// Starts probing each of `ports` (PostgreSQL ports, node index = position).
    pub fn start(ports: &[u16], password: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered: Vec<Arc<AtomicBool>> = ports.iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
        let tasks = ports
            .iter()
            .enumerate()
            .map(|(node, &port)| {
                tokio::spawn(probe_node(node, port, password.to_string(), stop.clone(), answered[node].clone()))
            })
            .collect();
        Self { stop, answered, tasks }
    }

    /// Waits until every node answered a probe: before a fault, so that the
    /// probes are known to see the old primary (a connection can take a
    /// while on a loaded machine: SCRAM in a debug build).
    pub async fn wait_answered(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let silent: Vec<usize> =
                (0..self.answered.len()).filter(|&n| !self.answered[n].load(Ordering::Relaxed)).collect();
            if silent.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("write probes: no answer from node(s) {silent:?} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = ProbeReport::default();
        for task in std::mem::take(&mut self.tasks) {
            report.spans.extend(task.await.unwrap_or_default());
        }
        report
    }
}

/// Probes dropped without `stop` (a run that failed half-way) end, rather
/// than probing a cluster that lives on.
impl Drop for WriteProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn probe_node(
    node: usize,
    port: u16,
    password: String,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicBool>,
) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut current: Option<Span> = None;
    let mut conn: Option<PgConnection> = None;
    while !stop.load(Ordering::Relaxed) {
        let sent = SystemTime::now();
        if conn.is_none() {
            conn = tokio::time::timeout(Duration::from_secs(3), crate::writer::connect(port, &password))
                .await
                .ok()
                .flatten();
        }
        let ok = match conn.as_mut() {
            Some(connection) => {
                let probe = sqlx::query("select txid_current()").execute(connection);
                match tokio::time::timeout(Duration::from_millis(500), probe).await {
                    Ok(Ok(_)) => {
                        answered.store(true, Ordering::Relaxed);
                        true
                    }
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
            let now = SystemTime::now();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn overlap_is_counted_between_different_nodes_only() {
        let report = ProbeReport {
            spans: vec![
                Span { node: 0, from: at(0), to: at(1000) },
                Span { node: 0, from: at(500), to: at(600) },
                Span { node: 1, from: at(900), to: at(2000) },
                Span { node: 2, from: at(3000), to: at(4000) },
            ],
        };
        assert!((report.two_writer_seconds() - 0.1).abs() < 1e-9);
        assert_eq!(report.writers(), vec![0, 1, 2]);
    }
}
