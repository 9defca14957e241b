//! `pgwarden-controller`: operator workflows (switchover, failover, restart,
//! config edits, ...) behind the gRPC `Controller` service. It reads the
//! cluster from etcd and expresses intent there; it never writes the `leader`
//! key and never promotes or demotes PostgreSQL (DESIGN.md "Who may touch what").

use clap::Parser;
use dcs::{ClusterView, Etcd, EtcdSettings, Keys};
use ha_proto::v1::controller_server::{Controller, ControllerServer};
use ha_proto::v1::{ListMembersRequest, ListMembersResponse, Member};
use pgwarden_config::{Config, Purpose};
use pgwarden_runtime::ConfigArgs;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tracing::info;

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
    etcd: Etcd,
    keys: Keys,
    scope: String,
}

impl ControllerService {
    pub fn new(etcd: Etcd, keys: Keys, scope: String) -> Self {
        Self { etcd, keys, scope }
    }
}

fn unavailable(e: &dcs::EtcdError) -> Status {
    Status::unavailable(format!("cannot read the cluster from etcd: {}", dcs::describe_error(e)))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn list_members(
        &self,
        _request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let view = dcs::read_cluster(&self.etcd, &self.keys).await.map_err(|e| unavailable(&e))?;
        Ok(Response::new(members_response(&self.scope, &view)))
    }
}

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
    let keys = Keys::new(&config.namespace, &config.scope);
    let service = ControllerService::new(etcd, keys, config.scope.clone());
    info!(address = %listener.local_addr()?, "serving the Controller gRPC API");
    pgwarden_runtime::notify::ready("serving the Controller gRPC API");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(ControllerServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    info!("controller stopped");
    Ok(())
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_runtime::start(&args.config, Purpose::Service)?;
    let listener = pgwarden_runtime::bind(
        &config.pgwarden.controller_grpc_listen,
        "the controller's gRPC API",
        "pgwarden.controller_grpc_listen (default: restapi.listen port + 2000)",
    )
    .await?;
    run(config, listener, pgwarden_runtime::shutdown_signal()).await
}
