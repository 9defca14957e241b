//! Reading the cluster from etcd for a tick, without waiting out a silent
//! etcd at every tick: once a read fails, a probe read runs in the
//! background (waking the loop when etcd answers) and ticks go on without a
//! view, each waiting for the probe at most `SILENT_ETCD_WAIT`, until etcd
//! answers; then they read afresh. A tick without a view acts only on a
//! primary that can no longer prove the key (`decide`), so what it skips
//! is waiting, not a decision; everything else the tick does (the local
//! PostgreSQL, the failsafe slot copies, the published status) keeps its
//! pace while etcd is out.

use super::*;

/// How long a tick waits for the probe read while etcd is silent.
const SILENT_ETCD_WAIT: Duration = Duration::from_millis(250);

impl Agent {
    /// The cluster as etcd has it now, read for this tick (`generation`:
    /// the watch's, to cache it at); `None` when etcd does not answer.
    pub(super) async fn read_view(&mut self, generation: u64) -> Option<ClusterView> {
        if self.etcd_silent && !self.etcd_answers_again().await {
            return None;
        }
        // Given up when a failsafe leader's call brings slot positions
        // meanwhile (the leader is cut off from etcd, and this read most
        // likely waits out its timeout): the copies move first, this tick
        // goes on without a view, and the next probes etcd.
        let read = tokio::select! {
            read = dcs::read_cluster(&self.etcd, &self.keys) => Some(read),
            () = self.wake.failsafe_positions.notified() => None,
        };
        match read {
            None => {
                info!("a failsafe leader's call brought slot positions during the etcd read: moving the copies first");
                if let Err(e) = self.follow_failsafe_slots().await {
                    warn!("failsafe: failed to move the slot copies along: {e:#}");
                }
                self.cached_view = None;
                self.etcd_silent = true;
                None
            }
            Some(Ok(view)) => {
                if std::mem::take(&mut self.etcd_silent) {
                    info!("etcd answers again");
                }
                self.last_dcs_seen_unix_ms = crate::now_unix_ms();
                self.cached_view = Some((view.clone(), generation, Instant::now()));
                Some(view)
            }
            Some(Err(e)) => {
                warn!(
                    "failed to read the cluster from etcd: {}; until it answers, ticks no longer wait for it (a read \
                     in the background watches for its return)",
                    dcs::describe_error(&e)
                );
                self.cached_view = None;
                self.etcd_silent = true;
                None
            }
        }
    }

    /// While etcd is silent: whether the background probe read got an
    /// answer (started if none runs; waited for at most `SILENT_ETCD_WAIT`).
    async fn etcd_answers_again(&mut self) -> bool {
        if self.etcd_probe.is_none() {
            let (etcd, keys, wake) = (self.etcd.clone(), self.keys.clone(), self.wake.clone());
            self.etcd_probe = Some(tokio::spawn(async move {
                let answered = dcs::read_cluster(&etcd, &keys).await.is_ok();
                if answered {
                    wake.nudge();
                }
                answered
            }));
        }
        let probe = self.etcd_probe.as_mut().expect("a probe runs");
        match tokio::time::timeout(SILENT_ETCD_WAIT, probe).await {
            Err(_) => false,
            Ok(joined) => {
                self.etcd_probe = None;
                joined.unwrap_or(false)
            }
        }
    }
}
