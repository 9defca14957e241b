//! The `NodeAgent` gRPC service.

use std::pin::Pin;

use ha_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use ha_proto::v1::{GetStatusRequest, NodeStatus, WatchStatusRequest};
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// Serves the latest status published by the observer.
pub struct AgentService {
    status: watch::Receiver<NodeStatus>,
}

impl AgentService {
    pub fn new(status: watch::Receiver<NodeStatus>) -> Self {
        Self { status }
    }

    pub fn into_server(self) -> NodeAgentServer<Self> {
        NodeAgentServer::new(self)
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<NodeStatus, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for AgentService {
    async fn get_status(&self, _request: Request<GetStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(self.status.borrow().clone()))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        _request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let stream = tokio_stream::wrappers::WatchStream::new(self.status.clone()).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}
