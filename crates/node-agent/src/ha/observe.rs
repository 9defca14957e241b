//! Building `ha_core::Observed` from the local PostgreSQL, the cluster in etcd, the peers'
//! agents and the agent's own records: facts and the instants they began, no decision.

use super::*;

impl Agent {
    /// The data directory's system identifier (cached) and, while
    /// PostgreSQL does not answer, its latest checkpoint's timeline (or the
    /// newest history file's) and minimum recovery point.
    pub(super) async fn local_identity(&mut self, running_timeline: Option<u64>) -> Option<(String, u64)> {
        self.min_recovery_end = None;
        if !self.pg.has_data() {
            self.sysid = None;
            return None;
        }
        if let (Some(sysid), Some(timeline)) = (&self.sysid, running_timeline) {
            return Some((sysid.clone(), timeline));
        }
        match self.pg.identity().await {
            Ok(identity) => {
                self.sysid = Some(identity.sysid.clone());
                self.redo = identity.redo;
                self.min_recovery_end = identity.min_recovery_end;
                Some((identity.sysid, identity.timeline.max(self.pg.latest_history_timeline())))
            }
            Err(e) => {
                warn!("failed to read pg_controldata: {e:#}");
                self.sysid.clone().map(|sysid| (sysid, 0))
            }
        }
    }

    /// The end of a stopped data directory's WAL, read once per REDO point
    /// (the data cannot change while PostgreSQL is stopped, except by
    /// pg_rewind, which moves the REDO point). `None` when it cannot be read.
    /// The REDO point is the one `local_identity` read this tick.
    pub(super) async fn stopped_wal_end(&mut self) -> Option<u64> {
        let Some(redo) = self.redo.clone() else {
            warn!("pg_controldata gave no REDO point: this node will not resume as primary");
            return None;
        };
        if let Some((key, end)) = &self.wal_end_cache
            && *key == redo
        {
            return *end;
        }
        let end = match self.pg.wal_end(&redo.0, redo.1).await {
            Ok(end) => {
                info!(redo = %redo.0, end = %ha_core::Lsn(end), "read where the local WAL ends");
                Some(end)
            }
            Err(e) => {
                warn!("failed to read where the local WAL ends (this node will not resume as primary): {e:#}");
                None
            }
        };
        self.wal_end_cache = Some((redo, end));
        end
    }

    pub(super) async fn observed(&mut self, view: Option<&ClusterView>, local: &LocalObservation) -> Observed {
        let me = self.config.name.clone();
        let running_timeline = local.sql.as_ref().map(|s| s.timeline);
        let mut data = self.local_identity(running_timeline).await.map(|(sysid, timeline)| DataDir {
            sysid,
            was_primary: self.pg.was_primary(),
            timeline,
            wal_end: None,
            min_recovery_end: self.min_recovery_end,
            restored_backup: self.pg.data_dir.join("backup_label").exists(),
        });
        let pg = match (&local.sql, local.postmaster.state) {
            (Some(sql), _) if !sql.in_recovery => RunningAs::Primary { lsn: sql.xlog_location, timeline: sql.timeline },
            (Some(sql), _) => {
                RunningAs::Replica { lsn: sql.xlog_location, timeline: sql.timeline, upstream: self.upstream.clone() }
            }
            (None, pg_local::PostmasterState::Stopped | pg_local::PostmasterState::Uninitialized) => RunningAs::Stopped,
            (None, _) => RunningAs::Transitioning,
        };
        // A stopped former primary resumes only if its WAL reaches the last
        // published position (decide's may_resume): read where it ends.
        if let Some(data) = data.as_mut().filter(|d| d.was_primary && pg == RunningAs::Stopped) {
            data.wal_end = self.stopped_wal_end().await;
        }
        if pg == RunningAs::Stopped {
            self.upstream = None;
            self.follows_remote = false;
        }
        // A reinit is done once the new copy runs as a replica.
        if matches!(pg, RunningAs::Replica { .. }) {
            self.reinit_requested = false;
        }
        let not_streaming = match &local.sql {
            Some(sql) if sql.in_recovery && sql.replication_state != "streaming" => {
                Some(self.why_not_streaming(&sql.receiver_status))
            }
            _ => None,
        };
        let dynamic = self.dynamic(view);
        let mut peers: Vec<Peer> = view
            .map(|v| {
                v.members
                    .iter()
                    .filter(|m| m.name != me)
                    .map(|m| {
                        let (tags, role) = (m.data.known_tags(), m.data.member_role());
                        Peer {
                            name: m.name.clone(),
                            running: m.data.is_running(),
                            lsn: m.data.xlog_location,
                            nofailover: tags.nofailover,
                            clonefrom: tags.clonefrom,
                            reachable: m.data.host_port().is_some(),
                            priority: tags.failover_priority,
                            timeline: m.data.timeline,
                            has_data: m.data.is_running()
                                || m.data.xlog_location.is_some()
                                || m.data.timeline.is_some()
                                || role.has_data(),
                            can_lead: m.data.fencer_ready(),
                            released: m.data.released_leader(),
                            primary: m.data.is_running() && role == dcs::MemberRole::Primary,
                            position_unknown_since_ms: None,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Without a leader, a member keys' positions may be a loop old: ask
        // each peer's agent directly (DESIGN invariant 4).
        if let Some(view) = view
            && view.leader.is_none()
        {
            self.ask_peers(view, &mut peers).await;
        }
        let leader = view.and_then(|v| v.leader.as_ref());
        // Without etcd, the proven deadline alone says whether the key is
        // still ours (DESIGN invariant 1): lead until it passes, then fence.
        let holds_leader = self.leader_deadline().is_some()
            && (view.is_none()
                || leader.is_some_and(|l| l.name == me && Some(l.lease) == self.keeper.lease.map(|lease| lease.id)));
        let leader_member = leader.and_then(|l| view.and_then(|v| v.member(&l.name)));
        let now_ms = self.now_ms();
        if holds_leader && !matches!(pg, RunningAs::Primary { .. }) {
            self.primary_down_since_ms.get_or_insert(now_ms);
        } else {
            // A restart's timeout was for that start only (and this agent's
            // term as leader).
            self.primary_down_since_ms = None;
            self.start_timeout_override_ms = None;
            self.primary_start_failures = 0;
        }
        // Patroni's primary_race_backoff: since when no leader is seen, and
        // whether the WAL still arrives since the last tick.
        if leader.is_some() || view.is_none() {
            self.no_leader_since_ms = None;
        } else {
            self.no_leader_since_ms.get_or_insert(now_ms);
        }
        let lsn = match &pg {
            RunningAs::Replica { lsn, .. } => Some(*lsn),
            _ => None,
        };
        let streaming = local.sql.as_ref().is_some_and(|s| s.replication_state == "streaming");
        let race_backoff = ha_core::RaceBackoff {
            backoff_ms: u64::from(dynamic.primary_race_backoff) * 1000,
            loop_wait_ms: u64::from(dynamic.loop_wait) * 1000,
            since_ms: self.no_leader_since_ms,
            had_position: self.last_tick_lsn.is_some(),
            wal_moved: streaming && lsn.zip(self.last_tick_lsn).is_some_and(|(now, before)| now > before),
        };
        self.last_tick_lsn = lsn;
        let failover = view.and_then(|v| v.failover.as_ref()).map(|f| ha_core::FailoverRequest {
            leader: f.leader.clone(),
            candidate: f.member.clone(),
            scheduled: match f.scheduled() {
                dcs::Scheduled::Now => ha_core::Schedule::Now,
                dcs::Scheduled::At(when) => ha_core::Schedule::At((when.unix_timestamp_nanos() / 1_000_000) as i64),
                dcs::Scheduled::Unreadable(at) => ha_core::Schedule::Unreadable(at),
            },
        });
        Observed {
            me,
            data,
            pg_starting: local.sql.is_none() && local.postmaster.state == pg_local::PostmasterState::Starting,
            standby_upstream: self.upstream.clone(),
            pg,
            initialize: view.and_then(|v| v.initialize.clone()),
            leader: if view.is_none() && holds_leader {
                Some(self.config.name.clone())
            } else {
                leader.map(|l| l.name.clone())
            },
            holds_leader,
            peers,
            nofailover: self.config.tags.nofailover,
            priority: self.config.tags.failover_priority,
            cluster_optime: view.and_then(|v| v.status.as_ref()).map(|s| s.optime),
            maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
            leader_timeline: leader_member.and_then(|m| m.data.timeline),
            leader_checkpointed: leader_member.is_none_or(|m| !m.data.awaits_checkpoint_after_promote()),
            paused: dynamic.pause,
            failover,
            now_ms,
            now_unix_ms: crate::now_unix_ms(),
            ttl_ms: u64::from(dynamic.ttl) * 1000,
            primary_down_since_ms: self.primary_down_since_ms,
            primary_start_timeout_ms: self
                .start_timeout_override_ms
                .unwrap_or(u64::from(dynamic.primary_start_timeout) * 1000),
            history_timeline: view.and_then(|v| v.history.iter().map(|entry| entry.timeline).max()),
            // Only switch points PostgreSQL's own timeline history confirmed:
            // the entry a candidate writes before it promotes carries its
            // position of a moment before, which a replica holding the old
            // primary's last records has passed without having diverged.
            // A standby cluster's timelines are the remote primary's, which
            // its `history` key does not record: the history file the WAL
            // receiver fetched from upstream says where they forked.
            history_switches: match (&dynamic.standby_cluster, view) {
                (Some(_), _) => self.pg.timeline_switches(),
                (None, Some(v)) => {
                    v.history.iter().filter(|h| h.reason != PROMOTING).map(|h| (h.timeline, h.switch_lsn)).collect()
                }
                (None, None) => Vec::new(),
            },
            history_author: view
                .and_then(|v| v.history.iter().max_by_key(|entry| entry.timeline))
                .and_then(|entry| entry.new_leader.clone()),
            released_at_ms: self.released_at_ms,
            // A standby cluster has no synchronous replication (as in
            // Patroni): its leader is a standby itself.
            sync_mode: dynamic.synchronous_mode != pgwarden_config::SyncMode::Off && dynamic.standby_cluster.is_none(),
            sync_standbys: view
                .and_then(|v| v.sync.as_ref())
                .map(|s| s.members().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            sync_leader: view.and_then(|v| v.sync.as_ref()).and_then(|s| s.leader.clone()),
            sync_quorum: view.and_then(|v| v.sync.as_ref()).and_then(|s| s.quorum).unwrap_or(0) as usize,
            etcd_answered: view.is_some(),
            can_lead: self.fencer_ready(),
            fencer_lost: self.fencer_lost(),
            reinit_requested: self.reinit_requested,
            primary_start_failed: self.primary_start_failures >= 2,
            failsafe_leader: self.failsafe.lock().await.promised_to(election::BootInstant::now()).map(str::to_string),
            failsafe_members: match view.and_then(|v| v.failsafe.as_ref()) {
                Some(members) if dynamic.failsafe_mode => members.keys().cloned().collect(),
                _ => Vec::new(),
            },
            replicatefrom: self.config.tags.replicatefrom.clone(),
            standby_cluster: dynamic.standby_cluster.is_some(),
            follows_remote: self.follows_remote,
            race_backoff,
            clone_without_leader: self
                .config
                .postgresql
                .create_replica_methods
                .iter()
                .any(pgwarden_config::ReplicaMethod::works_without_leader),
            nostream: self.config.tags.nostream,
            cascades: view
                .map(|v| {
                    v.members
                        .iter()
                        .filter_map(|m| Some((m.name.clone(), m.data.known_tags().replicatefrom?)))
                        .collect()
                })
                .unwrap_or_default(),
            not_streaming,
            unsupported: None,
        }
    }

    /// Why the local replica's WAL receiver does not stream: its status, and
    /// the last complaint of the WAL receiver in PostgreSQL's log (a missing
    /// replication slot, a refused login). Looked up at most every 2 s.
    pub(super) fn why_not_streaming(&mut self, receiver_status: &str) -> String {
        if let Some((at, why)) = &self.not_streaming_cache
            && at.elapsed() < Duration::from_secs(2)
        {
            return why.clone();
        }
        let mut why = if receiver_status.is_empty() {
            "no WAL receiver runs".to_string()
        } else {
            format!("the WAL receiver is {receiver_status}")
        };
        if let Some(line) = last_receiver_complaint(&self.pg.log_file) {
            why.push_str(&format!("; PostgreSQL's log: {line}"));
        }
        self.not_streaming_cache = Some((Instant::now(), why.clone()));
        why
    }

    /// Replaces each peer's key-reported state with what its agent says now.
    /// Unreachable agents are skipped; for a peer whose PostgreSQL has data
    /// but does not answer yet, since when (`decide` waits for it at most
    /// one ttl: `Observed::takes_part`).
    pub(super) async fn ask_peers(&mut self, view: &ClusterView, peers: &mut [Peer]) {
        let timeout = Duration::from_millis(800);
        let asks = peers.iter().map(|peer| {
            let member = view.member(&peer.name);
            let grpc_url = member.and_then(|m| m.data.grpc_url.clone());
            let api_url = member.map(|m| m.data.api_url.clone()).unwrap_or_default();
            crate::peers::ask(grpc_url, api_url, timeout)
        });
        let answers = futures_util::future::join_all(asks).await;
        let now_ms = self.now_ms();
        for (peer, answer) in peers.iter_mut().zip(answers) {
            let Some(status) = answer else {
                peer.running = false;
                peer.primary = false;
                continue;
            };
            peer.running = status.has_data && !status.shutting_down;
            peer.lsn = status.lsn;
            peer.primary = status.primary;
            if peer.running && peer.lsn.is_none() {
                peer.position_unknown_since_ms =
                    Some(*self.peer_unknown_since.entry(peer.name.clone()).or_insert(now_ms));
            } else {
                self.peer_unknown_since.remove(&peer.name);
            }
        }
    }
}

/// The WAL receiver's last complaint in the tail of PostgreSQL's log
/// (`FATAL:` / `ERROR:` lines about the primary, WAL streaming or slots),
/// from the message on. `None` without such a line or a readable log.
fn last_receiver_complaint(log_file: &std::path::Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(log_file).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(32 * 1024))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    const ABOUT: [&str; 6] =
        ["primary server", "WAL stream", "replication slot", "pg_hba.conf", "authentication failed", "upstream"];
    // A complaint older than the last "started streaming" is not the cause.
    let line =
        text.lines().rev().take(200).take_while(|line| !line.contains("started streaming WAL")).find(|line| {
            (line.contains("FATAL:") || line.contains("ERROR:")) && ABOUT.iter().any(|a| line.contains(a))
        })?;
    let from = line.find("FATAL:").or_else(|| line.find("ERROR:")).unwrap_or(0);
    Some(line[from..].split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::last_receiver_complaint;

    #[test]
    fn finds_the_wal_receivers_last_complaint_since_it_last_streamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("pg.log");
        std::fs::write(
            &log,
            "2026-12-05 LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n\
             2026-12-05 FATAL:  could not start WAL streaming: ERROR:  replication slot \"node2\" does not exist\n\
             2026-12-05 LOG:  waiting for WAL to become available at 0/3000060\n",
        )
        .expect("write log");
        let why = last_receiver_complaint(&log).expect("a complaint");
        assert!(
            why.starts_with("FATAL: could not start WAL streaming") && why.contains("\"node2\" does not exist"),
            "{why}"
        );
        // Streaming again since: the old complaint is not the cause.
        std::fs::write(
            &log,
            "FATAL:  could not connect to the primary server: connection refused\n\
             LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n",
        )
        .expect("write log");
        assert_eq!(last_receiver_complaint(&log), None);
        assert_eq!(last_receiver_complaint(&dir.path().join("missing.log")), None);
    }
}
