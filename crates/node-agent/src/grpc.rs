//! The `NodeAgent` gRPC service.

use std::pin::Pin;

use ha_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use ha_proto::v1::{FencerAck, FencerAckReply, GetStatusRequest, NodeStatus, WatchStatusRequest};
use tokio::sync::watch;
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
}

impl AgentService {
    pub fn new(status: watch::Receiver<NodeStatus>, member: String, fencer: FencerAcks) -> Self {
        Self { status, member, fencer }
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

    async fn acknowledge_fencer(&self, request: Request<FencerAck>) -> Result<Response<FencerAckReply>, Status> {
        let ack = request.into_inner();
        if ack.member != self.member {
            return Err(Status::invalid_argument(format!(
                "this is the agent of member {}, not {}: check the fencer's pgwarden.agent_grpc_listen",
                self.member, ack.member
            )));
        }
        *self.fencer.lock().map_err(|_| Status::internal("fencer state poisoned"))? = Some(std::time::Instant::now());
        Ok(Response::new(FencerAckReply {}))
    }
}
