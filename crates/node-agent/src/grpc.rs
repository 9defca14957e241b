//! The `NodeAgent` gRPC service.

use std::pin::Pin;

use ha_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use ha_proto::v1::{
    ActionReply, CheckParametersReply, CheckParametersRequest, FailsafeReply, FailsafeRequest, FencerAck,
    FencerAckReply, GetStatusRequest, NodeStatus, ReinitializeRequest, ReloadRequest, RestartRequest,
    WatchStatusRequest,
};
use tokio::sync::{mpsc, oneshot, watch};

/// A request the HA loop carries out between ticks (one thing at a time).
#[derive(Debug)]
pub enum Command {
    Restart(RestartRequest),
    CancelRestart,
    /// `from_leader`: clone from the leader, whatever the `clonefrom` tags say.
    Reinitialize {
        from_leader: bool,
    },
    Reload,
}

#[derive(Debug)]
pub enum Outcome {
    Action(ActionReply),
}

pub type CommandMsg = (Command, oneshot::Sender<Result<Outcome, Status>>);
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// When the fencer last acknowledged; shared with the HA loop.
pub type FencerAcks = std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>;

/// Serves the latest status published by the observer.
pub struct AgentService {
    status: watch::Receiver<NodeStatus>,
    member: String,
    fencer: FencerAcks,
    /// The secret in `pg_local::fencer_token_path`: an acknowledgement must
    /// carry it.
    fencer_token: String,
    /// Woken when the fencer acknowledges again after a silence, so the
    /// member key says at once that this member may lead.
    waker: Option<std::sync::Arc<crate::ha::ClusterWatch>>,
    commands: mpsc::Sender<CommandMsg>,
    parameters: std::sync::Arc<ParameterChecker>,
    /// `failsafe_mode`'s promises (shared with the HA loop), and where they
    /// are written down.
    failsafe: Option<(crate::failsafe::SharedFailsafe, std::path::PathBuf)>,
    /// Asked for a fresh look before `GetStatus` answers (a peer comparing
    /// WAL positions before a race must not read a settled observer's
    /// second-old position), and the status composed from that look.
    observer: Option<(crate::local::Observer, Composer)>,
}

/// A status composed from a look of the local PostgreSQL (and the HA
/// loop's latest view), as the composer publishes it.
pub type Composer = std::sync::Arc<dyn Fn(&crate::LocalObservation) -> NodeStatus + Send + Sync>;

/// A `GetStatus` answer's WAL position is from a look that began after the
/// call arrived (one under way then counts: it began a query's time
/// earlier at most). A racing peer asks after it saw the leader key go, so
/// the answer includes the last WAL the old primary sent before it
/// stopped. With a look up to 50 ms old (and a composed status waited for
/// 50 ms at most), two replicas could compare positions taken on either
/// side of the old primary's shutdown checkpoint, and the lower priority
/// won once in Patroni's `priority_failover` scenario...
const FRESH_FOR_PEERS: std::time::Duration = std::time::Duration::ZERO;
/// ...unless PostgreSQL does not answer within this (then the latest look):
/// well inside the 800 ms a racing peer waits (`ha::observe::ask_peers`), so
/// a member whose PostgreSQL hangs still answers, as one with data whose
/// position is unknown or last known, not as an unreachable one.
const FRESH_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// `WatchStatus` sends a status whose only news is its timestamps at most
/// this often: every look at PostgreSQL is one, and a reader woken for each
/// costs more at idle than the whole HA loop. Readers that need state
/// confirmed as current ask `GetStatus{latest}` (the health API does, for
/// any check its stream has not confirmed within 500 ms).
const STREAM_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether two statuses differ only in the fields every look or HA loop
/// tick renews (when, and how long it took), not in what they say.
fn same_but_timestamps(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| NodeStatus {
        sequence: 0,
        observed_at_unix_ms: 0,
        last_tick_unix_ms: 0,
        dcs_last_seen_unix_ms: 0,
        ha_loop_duration_us: 0,
        etcd_read_duration_us: 0,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Most parameters one `CheckParameters` call may carry (PostgreSQL has
/// about 350), and the longest name and value.
const MAX_CHECKED_PARAMETERS: usize = 1000;
const MAX_PARAMETER_NAME: usize = 63;
const MAX_PARAMETER_VALUE: usize = 8192;

/// Answers `CheckParameters` from its own connections, beside the HA loop
/// (never in its command queue, where a flood of checks delayed reloads and
/// restarts), at most two at a time.
pub struct ParameterChecker {
    pub config: pgwarden_config::Config,
    pub local: pgwarden_config::hba::LocalConnection,
    pub port: u16,
    pub permits: tokio::sync::Semaphore,
}

impl AgentService {
    pub fn new(
        status: watch::Receiver<NodeStatus>,
        member: String,
        fencer: FencerAcks,
        fencer_token: String,
        commands: mpsc::Sender<CommandMsg>,
        parameters: std::sync::Arc<ParameterChecker>,
    ) -> Self {
        Self { status, member, fencer, fencer_token, waker: None, commands, parameters, failsafe: None, observer: None }
    }

    /// Answers `GetStatus` from a fresh look of `observer`, composed by
    /// `compose` (not waiting for the composer to publish it).
    pub fn with_observer(mut self, observer: crate::local::Observer, compose: Composer) -> Self {
        self.observer = Some((observer, compose));
        self
    }

    /// Answers `Failsafe` calls from `shared`, writing each promise down
    /// beside `data_dir`.
    pub fn with_failsafe(mut self, shared: crate::failsafe::SharedFailsafe, data_dir: std::path::PathBuf) -> Self {
        self.failsafe = Some((shared, data_dir));
        self
    }

    /// Wakes the HA loop through `waker` when the fencer acknowledges again.
    pub fn with_waker(mut self, waker: std::sync::Arc<crate::ha::ClusterWatch>) -> Self {
        self.waker = Some(waker);
        self
    }

    /// Hands `command` to the HA loop and waits for its outcome.
    async fn ask(&self, command: Command) -> Result<Outcome, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands.send((command, tx)).await.map_err(|_| Status::unavailable("the agent is shutting down"))?;
        rx.await.map_err(|_| Status::unavailable("the agent is shutting down"))?
    }

    async fn action(&self, command: Command) -> Result<Response<ActionReply>, Status> {
        match self.ask(command).await? {
            Outcome::Action(reply) => Ok(Response::new(reply)),
        }
    }

    pub fn into_server(self) -> NodeAgentServer<Self> {
        NodeAgentServer::new(self)
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<NodeStatus, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for AgentService {
    async fn get_status(&self, request: Request<GetStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        if let Some((observer, compose)) = self.observer.as_ref().filter(|_| !request.get_ref().latest) {
            let local = observer.fresh(FRESH_FOR_PEERS, FRESH_WAIT).await;
            // Composed here: the composer's status may come later than a
            // loaded machine's caller can wait (it waited up to 50 ms, then
            // answered with the previous look).
            let mut status = compose(&local);
            status.sequence = self.status.borrow().sequence;
            return Ok(Response::new(status));
        }
        Ok(Response::new(self.status.borrow().clone()))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        _request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let mut last_sent: Option<(NodeStatus, std::time::Instant)> = None;
        let stream = tokio_stream::wrappers::WatchStream::new(self.status.clone()).filter_map(move |status| {
            let send = last_sent
                .as_ref()
                .is_none_or(|(last, at)| at.elapsed() >= STREAM_HEARTBEAT || !same_but_timestamps(last, &status));
            send.then(|| {
                last_sent = Some((status.clone(), std::time::Instant::now()));
                Ok(status)
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn acknowledge_fencer(&self, request: Request<FencerAck>) -> Result<Response<FencerAckReply>, Status> {
        let token = request.metadata().get(pg_local::FENCER_TOKEN_METADATA).and_then(|v| v.to_str().ok());
        // Compared in full whatever the input, so timing tells nothing.
        let expected = self.fencer_token.as_bytes();
        let matches = token.is_some_and(|t| {
            t.len() == expected.len() && t.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        });
        if !matches {
            return Err(Status::permission_denied(
                "only the pgwarden-health beside this agent may acknowledge the fencer: it sends the token the \
                 agent writes to <data_dir>.pgwarden.fencer-token (run both as the data directory's owner)",
            ));
        }
        let ack = request.into_inner();
        if ack.member != self.member {
            return Err(Status::invalid_argument(format!(
                "this is the agent of member {}, not {}: check the fencer's pgwarden.agent_grpc_listen",
                self.member, ack.member
            )));
        }
        let was_silent = {
            let mut last = self.fencer.lock().map_err(|_| Status::internal("fencer state poisoned"))?;
            let silent = last.is_none_or(|at| at.elapsed() > crate::ha::FENCER_ACK_MAX_AGE);
            *last = Some(std::time::Instant::now());
            silent
        };
        if was_silent && let Some(waker) = &self.waker {
            waker.nudge();
        }
        Ok(Response::new(FencerAckReply {}))
    }

    async fn restart(&self, request: Request<RestartRequest>) -> Result<Response<ActionReply>, Status> {
        let request = request.into_inner();
        if !matches!(request.role.as_str(), "" | "primary" | "replica") {
            return Err(Status::invalid_argument(format!("role {:?}: expected primary or replica", request.role)));
        }
        self.action(Command::Restart(request)).await
    }

    async fn cancel_restart(
        &self,
        _request: Request<ha_proto::v1::CancelRestartRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.action(Command::CancelRestart).await
    }

    async fn reinitialize(&self, request: Request<ReinitializeRequest>) -> Result<Response<ActionReply>, Status> {
        self.action(Command::Reinitialize { from_leader: request.into_inner().from_leader }).await
    }

    async fn reload(&self, _request: Request<ReloadRequest>) -> Result<Response<ActionReply>, Status> {
        self.action(Command::Reload).await
    }

    async fn failsafe(&self, request: Request<FailsafeRequest>) -> Result<Response<FailsafeReply>, Status> {
        let Some((shared, data_dir)) = &self.failsafe else {
            return Err(Status::unimplemented("failsafe calls are not served here"));
        };
        let request = request.into_inner();
        // The same lock as the HA loop's acquisition: no promise while this
        // member takes the key, and no key while a promise runs.
        let mut failsafe = shared.lock().await;
        let status = self.status.borrow().clone();
        let before = failsafe.promise.clone();
        let slots_before = failsafe.leader_slots.clone();
        let reply = failsafe.answer(&self.member, &request, &status, election::BootInstant::now());
        if reply.accepted
            && let Some(promise) = &failsafe.promise
            && let Err(e) = crate::failsafe::save(data_dir, promise)
        {
            // Not written down, not promised: a restart would forget it.
            failsafe.promise = before;
            tracing::error!("failsafe: could not write the promise down: {e:#}");
            return Ok(Response::new(FailsafeReply {
                accepted: false,
                message: format!("could not write the promise down: {e:#}"),
                lsn: 0,
            }));
        }
        if reply.accepted && before.as_ref().is_none_or(|p| p.leader != request.leader) {
            tracing::info!(leader = %request.leader, hold_ms = request.hold_ms, "failsafe: promised the leader to stay out of any race");
        }
        // New slot positions: the HA loop moves the copies here at once
        // (`Agent::follow_failsafe_slots`), not at its next timed tick.
        if reply.accepted
            && failsafe.leader_slots != slots_before
            && let Some(waker) = &self.waker
        {
            waker.failsafe_positions();
        }
        Ok(Response::new(reply))
    }

    async fn check_parameters(
        &self,
        request: Request<CheckParametersRequest>,
    ) -> Result<Response<CheckParametersReply>, Status> {
        let parameters: std::collections::BTreeMap<String, String> =
            request.into_inner().parameters.into_iter().collect();
        if parameters.len() > MAX_CHECKED_PARAMETERS {
            return Err(Status::invalid_argument(format!(
                "{} parameters: at most {MAX_CHECKED_PARAMETERS} per request",
                parameters.len()
            )));
        }
        for (name, value) in &parameters {
            if name.len() > MAX_PARAMETER_NAME || value.len() > MAX_PARAMETER_VALUE {
                return Err(Status::invalid_argument(format!(
                    "parameter {:?}: names are at most {MAX_PARAMETER_NAME} bytes and values {MAX_PARAMETER_VALUE}",
                    name.chars().take(MAX_PARAMETER_NAME).collect::<String>()
                )));
            }
            pgwarden_config::check_parameter_text(name, value)
                .map_err(|why| Status::invalid_argument(format!("{name}: {why}")))?;
        }
        let checker = &self.parameters;
        let _permit = checker.permits.acquire().await.map_err(|_| Status::unavailable("the agent is shutting down"))?;
        let failed = |e: anyhow::Error| Status::unavailable(format!("{e:#}"));
        let mut conn =
            crate::sql::connect(&checker.config, &checker.local, checker.port, std::time::Duration::from_secs(5))
                .await
                .map_err(failed)?;
        let (problems, need_restart) = crate::sql::check_parameters(&mut conn, &parameters).await.map_err(failed)?;
        crate::sql::close(conn).await;
        Ok(Response::new(CheckParametersReply { problems, need_restart }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream skips a status whose news is only when it was made; any
    /// other field, the leader deadline the fencer follows included, is news.
    #[test]
    fn only_timestamps_are_not_news() {
        let before =
            NodeStatus { member: "node1".into(), sequence: 1, observed_at_unix_ms: 1_000, ..Default::default() };
        let later = NodeStatus {
            sequence: 2,
            observed_at_unix_ms: 1_500,
            last_tick_unix_ms: 1_400,
            dcs_last_seen_unix_ms: 1_300,
            ha_loop_duration_us: 900,
            etcd_read_duration_us: 800,
            ..before.clone()
        };
        assert!(same_but_timestamps(&before, &later));
        let renewed = NodeStatus { leader_deadline_boot_ns: 7, ..later.clone() };
        assert!(!same_but_timestamps(&later, &renewed), "a renewal is news for the fencer");
        let stopped = NodeStatus { postgres_state: ha_proto::v1::PostgresState::Stopped as i32, ..later.clone() };
        assert!(!same_but_timestamps(&later, &stopped));
        let moved = NodeStatus { xlog_location: 1, ..later.clone() };
        assert!(!same_but_timestamps(&later, &moved));
    }
}
