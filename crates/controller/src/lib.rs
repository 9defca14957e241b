//! `pgwarden-controller`: operator workflows (switchover, failover, restart,
//! config edits, ...) behind the gRPC `Controller` service. It reads the
//! cluster from etcd and expresses intent there; it never writes the `leader`
//! key and never promotes or demotes PostgreSQL (DESIGN.md "Who may touch what").

pub mod active;
pub mod events;

use pgwarden_runtime::grpc::AuthChannel;
use std::pin::Pin;
use std::time::Duration;

use clap::Parser;
use dcs::{ClusterView, EtcdSettings, Keys};
use ha_proto::v1::controller_client::ControllerClient;
use ha_proto::v1::controller_server::{Controller, ControllerServer};
use ha_proto::v1::{
    CancelSwitchoverRequest, CancelSwitchoverResponse, ClusterEvent, ConfigResponse, EventKind, FailoverRequest,
    GetActiveRequest, GetActiveResponse, GetConfigRequest, ListMembersRequest, ListMembersResponse, Member,
    MembersResponse, PatchConfigRequest, PutConfigRequest, ReinitializeMemberRequest, ReloadMembersRequest,
    RestartMembersRequest, SwitchoverRequest, WatchEventsRequest, WorkflowResponse,
};
use pgwarden_config::{Config, Purpose};
use pgwarden_runtime::ConfigArgs;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use tracing::info;

use workflows::{Cluster, WorkflowError, operations, workflow};

use crate::active::ActiveState;

#[derive(Debug, Parser)]
#[command(name = "pgwarden-controller", version, about = "pgwarden controller: operator workflows over gRPC")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The members of a cluster view as the `Controller` API reports them.
pub fn members_response(scope: &str, view: &ClusterView) -> ListMembersResponse {
    let leader = view.leader.as_ref().map(|l| l.name.clone()).unwrap_or_default();
    let members = view
        .members
        .iter()
        .map(|entry| Member {
            name: entry.name.clone(),
            role: entry.data.role.clone(),
            state: entry.data.state.clone(),
            conn_url: entry.data.conn_url.clone(),
            api_url: entry.data.api_url.clone(),
            grpc_url: entry.data.grpc_url.clone().unwrap_or_default(),
            timeline: entry.data.timeline.unwrap_or_default(),
            xlog_location: entry.data.xlog_location,
            is_leader: entry.name == leader,
            tags_json: serde_json::Value::Object(entry.data.tags.clone()).to_string(),
            replication_state: entry.data.replication_state.clone().unwrap_or_default(),
            receive_lsn: entry.data.receive_lsn,
            replay_lsn: entry.data.replay_lsn,
            pending_restart: entry.data.pending_restart(),
            scheduled_restart: entry.data.scheduled_restart_field("schedule").to_string(),
            pending_restart_reason_json: entry
                .data
                .pending_restart_reason()
                .map(|reason| serde_json::Value::Object(reason.clone()).to_string())
                .unwrap_or_default(),
            scheduled_restart_postgres_version: entry.data.scheduled_restart_field("postgres_version").to_string(),
            clone_progress: entry.data.clone_progress().map(|p| ha_proto::v1::CloneProgress {
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
                bytes_per_second: p.bytes_per_second,
                seconds_left: p.seconds_left,
            }),
        })
        .collect();
    ListMembersResponse {
        scope: scope.to_string(),
        system_identifier: view.initialize.clone().unwrap_or_default(),
        leader,
        members,
        optime: view.status.as_ref().map_or(0, |s| s.optime),
        sync_standbys: view
            .sync
            .as_ref()
            .map(|s| s.members().into_iter().map(String::from).collect())
            .unwrap_or_default(),
        paused: view
            .config
            .as_ref()
            .is_some_and(|(c, _)| c.get("pause").and_then(serde_json::Value::as_bool) == Some(true)),
        history_json: serde_json::to_string(&view.history).unwrap_or_default(),
        config_json: view.config.as_ref().map(|(c, _)| c.to_string()).unwrap_or_default(),
    }
}

/// The `Controller` gRPC service.
pub struct ControllerService {
    cluster: Cluster,
    /// This controller's own URL: never a forwarding target.
    own_url: String,
    active: watch::Receiver<ActiveState>,
    events: broadcast::Sender<ClusterEvent>,
}

impl ControllerService {
    pub fn new(
        cluster: Cluster,
        own_url: String,
        active: watch::Receiver<ActiveState>,
        events: broadcast::Sender<ClusterEvent>,
    ) -> Self {
        Self { cluster, own_url, active, events }
    }

    /// The active controller to forward a write to, or `None` when this is
    /// it. A dead active controller is waited out (its key expires within a
    /// ttl and another takes over), up to `FORWARD_PATIENCE`.
    async fn forward_to(&self) -> Result<Option<ControllerClient<AuthChannel>>, Status> {
        let started = std::time::Instant::now();
        loop {
            let active = self.active.borrow().clone();
            if active.this_one {
                return Ok(None);
            }
            let why = if active.url.is_empty() || active.url == self.own_url {
                "no controller is active yet (is etcd reachable?)".to_string()
            } else {
                match pgwarden_runtime::grpc::connect(&active.url, Duration::from_secs(1)).await {
                    Ok(channel) => return Ok(Some(ControllerClient::new(channel))),
                    Err(e) => format!(
                        "this controller is not active; the active one is {} at {}, and it does not answer: {e:#}",
                        active.member, active.url
                    ),
                }
            };
            if started.elapsed() > FORWARD_PATIENCE {
                return Err(Status::unavailable(format!("{why}; retry in a few seconds")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl ControllerService {
    /// A write: carried out by `here` when this controller is the active
    /// one, else sent on to the active one by `forward` (its answer is
    /// this call's). The one place a call is forwarded.
    async fn forward_or<Req, Resp>(
        &self,
        request: Request<Req>,
        forward: impl AsyncFnOnce(ControllerClient<AuthChannel>, Req) -> Result<Response<Resp>, Status>,
        here: impl AsyncFnOnce(Req) -> Result<Resp, WorkflowError>,
    ) -> Result<Response<Resp>, Status> {
        match self.forward_to().await? {
            Some(active) => forward(active, request.into_inner()).await,
            None => here(request.into_inner()).await.map(Response::new).map_err(Status::from),
        }
    }
}

/// How long a request waits for a reachable active controller: longer than
/// a ttl, so that a dead one's key expires and another takes over.
const FORWARD_PATIENCE: Duration = Duration::from_secs(40);

type EventStream = Pin<Box<dyn Stream<Item = Result<ClusterEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn list_members(
        &self,
        _request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let view = self.cluster.read().await?;
        Ok(Response::new(members_response(&self.cluster.scope, &view)))
    }

    async fn switchover(&self, request: Request<SwitchoverRequest>) -> Result<Response<WorkflowResponse>, Status> {
        self.forward_or(request, async |mut active, r| active.switchover(r).await, async |r| {
            info!(leader = %r.leader, candidate = %r.candidate, scheduled_at = %r.scheduled_at, "switchover requested");
            let outcome = workflow::switchover(&self.cluster, &r.leader, &r.candidate, &r.scheduled_at).await;
            self.report("switchover", &outcome);
            outcome
        })
        .await
    }

    async fn cancel_switchover(
        &self,
        request: Request<CancelSwitchoverRequest>,
    ) -> Result<Response<CancelSwitchoverResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.cancel_switchover(r).await,
            async |_| {
                let message = workflow::cancel(&self.cluster).await?;
                let _ = self.events.send(workflows::event(
                    EventKind::Workflow,
                    "",
                    "the pending switchover was cancelled".into(),
                ));
                Ok(CancelSwitchoverResponse { message })
            },
        )
        .await
    }

    async fn failover(&self, request: Request<FailoverRequest>) -> Result<Response<WorkflowResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.failover(r).await,
            async |r| {
                info!(candidate = %r.candidate, "failover requested");
                let outcome = workflow::failover(&self.cluster, &r.candidate).await;
                self.report("failover", &outcome);
                outcome
            },
        )
        .await
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe())
            .filter_map(|event| event.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_active(&self, _request: Request<GetActiveRequest>) -> Result<Response<GetActiveResponse>, Status> {
        let active = self.active.borrow().clone();
        Ok(Response::new(GetActiveResponse {
            member: active.member,
            url: active.url,
            this_one: active.this_one,
            scope: self.cluster.scope.clone(),
        }))
    }

    async fn get_config(&self, _request: Request<GetConfigRequest>) -> Result<Response<ConfigResponse>, Status> {
        Ok(Response::new(operations::get_config(&self.cluster).await?))
    }

    async fn patch_config(&self, request: Request<PatchConfigRequest>) -> Result<Response<ConfigResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.patch_config(r).await,
            async |r| {
                let outcome = operations::change_config(&self.cluster, &r.patch_json, false, r.expected_revision).await;
                self.report_config(&outcome);
                outcome
            },
        )
        .await
    }

    async fn put_config(&self, request: Request<PutConfigRequest>) -> Result<Response<ConfigResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.put_config(r).await,
            async |r| {
                let outcome = operations::change_config(&self.cluster, &r.config_json, true, r.expected_revision).await;
                self.report_config(&outcome);
                outcome
            },
        )
        .await
    }

    async fn restart(&self, request: Request<RestartMembersRequest>) -> Result<Response<MembersResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.restart(r).await,
            async |r| operations::restart_members(&self.cluster, &r, &self.progress()).await,
        )
        .await
    }

    async fn cancel_restart(
        &self,
        request: Request<ha_proto::v1::CancelRestartMembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.cancel_restart(r).await,
            async |r| operations::cancel_restart(&self.cluster, &r.members).await,
        )
        .await
    }

    async fn reinitialize(
        &self,
        request: Request<ReinitializeMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.reinitialize(r).await,
            async |r| operations::reinitialize(&self.cluster, &r, &self.progress()).await,
        )
        .await
    }

    async fn reload(&self, request: Request<ReloadMembersRequest>) -> Result<Response<MembersResponse>, Status> {
        self.forward_or(
            request,
            async |mut active, r| active.reload(r).await,
            async |r| operations::reload(&self.cluster, &r.members, &self.progress()).await,
        )
        .await
    }
}

impl ControllerService {
    /// Progress of an operation, into the event stream.
    fn progress(&self) -> impl Fn(ClusterEvent) + Sync + use<> {
        let events = self.events.clone();
        move |event| {
            let _ = events.send(event);
        }
    }

    fn report_config(&self, outcome: &Result<ConfigResponse, WorkflowError>) {
        let message = match outcome {
            Ok(response) if response.need_restart.is_empty() => "configuration changed".to_string(),
            Ok(response) => format!("configuration changed; needs a restart: {}", response.need_restart.join(", ")),
            Err(error) => format!("configuration change refused ({:?}): {error}", error.code()),
        };
        info!("{message}");
        let _ = self.events.send(workflows::event(EventKind::Config, "", message));
    }

    /// One event and one log line per workflow outcome.
    fn report(&self, what: &str, outcome: &Result<WorkflowResponse, WorkflowError>) {
        let message = match outcome {
            Ok(response) => format!("{what}: {} ({} ms)", response.message, response.duration_ms),
            Err(error) => format!("{what} refused or failed ({:?}): {error}", error.code()),
        };
        info!("{message}");
        let _ = self.events.send(workflows::event(EventKind::Workflow, "", message));
    }
}

/// The `Controller` calls anyone may make; the others change state and need
/// `restapi.authentication`'s credentials when it is set.
const OPEN_METHODS: &[&str] = &[
    "/pgwarden.v1.Controller/ListMembers",
    "/pgwarden.v1.Controller/WatchEvents",
    "/pgwarden.v1.Controller/GetActive",
    "/pgwarden.v1.Controller/GetConfig",
];

/// Serves the `Controller` API on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let etcd = dcs::connect(&EtcdSettings::from_config(&config.etcd, timeout)).await?;
    if let Err(e) = etcd.probe().await {
        // Not fatal: etcd may come up after the controller; requests report it.
        tracing::warn!("{e}");
    }
    // A Patroni cluster in etcd's v2 keyspace is not ours to operate on.
    dcs::v2::check_scope(&config, &etcd, timeout, None).await?;
    let keys = Keys::new(&config.namespace, &config.scope);
    let cluster = Cluster { etcd: etcd.clone(), keys: keys.clone(), scope: config.scope.clone() };
    let url = config.pgwarden.controller_grpc_url();
    let (active_tx, active_rx) = watch::channel(ActiveState::default());
    let ttl = Duration::from_secs(u64::from(config.bootstrap.dcs.ttl));
    let own_url = url.clone();
    let election =
        tokio::spawn(active::run(etcd.clone(), keys.controller(), config.name.clone(), url.clone(), ttl, active_tx));
    let (events_tx, _) = broadcast::channel(1024);
    let observer = tokio::spawn(events::run(cluster.clone(), events_tx.clone(), active_rx.clone()));
    let service = ControllerService::new(cluster, url, active_rx, events_tx);
    info!(address = %listener.local_addr()?, "serving the Controller gRPC API");
    pgwarden_runtime::ignore_sighup("pgwarden-controller");
    pgwarden_runtime::notify::ready("serving the Controller gRPC API");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    pgwarden_runtime::grpc::server(config.pgwarden.grpc_tls.as_ref())?
        .layer(pgwarden_runtime::grpc::RequireAuth::new(config.restapi.authentication.as_ref(), OPEN_METHODS))
        .add_service(ControllerServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    election.abort();
    observer.abort();
    // Hand the active role over at once rather than after a ttl.
    let key = keys.controller();
    let ours = active::ControllerKey::new(&config.name, &own_url).encode();
    if let Ok(true) = etcd.delete_if_value(&key, &ours).await {
        info!("released the active controller key");
    }
    info!("controller stopped");
    Ok(())
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_runtime::start(&args.config, Purpose::Service)?;
    pgwarden_runtime::grpc::init_service_client(&config)?;
    let listener = pgwarden_runtime::bind(
        &config.pgwarden.controller_grpc_listen,
        "the controller's gRPC API",
        "pgwarden.controller_grpc_listen (default: restapi.listen port + 2000)",
    )
    .await?;
    pgwarden_runtime::warn_if_writes_are_open(&listener, &config, "the controller's gRPC API");
    run(config, listener, pgwarden_runtime::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members projection reads a member's scheduled restart and
    /// pending-restart reason through the member key's accessors.
    #[test]
    fn a_members_scheduled_restart_and_pending_reason_reach_the_projection() {
        let raw = br#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni",
            "state":"running","role":"replica","pending_restart":true,
            "pending_restart_reason":{"max_connections":{"old_value":"100","new_value":"120"}},
            "scheduled_restart":{"schedule":"2026-12-08T01:00:00+00:00","postgres_version":"15.18"}}"#;
        let data = dcs::MemberData::parse(raw).expect("a member key");
        let view = ClusterView {
            members: vec![dcs::MemberEntry { name: "pg1".into(), data, lease: 0 }],
            ..ClusterView::default()
        };
        let member = &members_response("s", &view).members[0];
        assert_eq!(member.scheduled_restart, "2026-12-08T01:00:00+00:00");
        assert_eq!(member.scheduled_restart_postgres_version, "15.18");
        let reason: serde_json::Value = serde_json::from_str(&member.pending_restart_reason_json).expect("json");
        assert_eq!(reason["max_connections"]["new_value"], "120");
        let plain =
            dcs::MemberData::parse(br#"{"conn_url":"postgres://h:1/postgres","state":"running"}"#).expect("key");
        let view = ClusterView {
            members: vec![dcs::MemberEntry { name: "pg2".into(), data: plain, lease: 0 }],
            ..ClusterView::default()
        };
        let member = &members_response("s", &view).members[0];
        assert!(member.scheduled_restart.is_empty() && member.pending_restart_reason_json.is_empty());
    }
}
