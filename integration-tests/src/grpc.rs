//! gRPC clients as a user's automation makes them: the controller's and
//! agents' state-changing calls carry `restapi.authentication`'s credentials
//! in the `authorization` metadata.

use base64::Engine as _;
use ha_proto::v1::controller_client::ControllerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cluster::{REST_PASSWORD, REST_USER};

type Credentials = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// A controller client that authenticates as the test cluster's REST user.
pub type Controller = ControllerClient<InterceptedService<Channel, Credentials>>;

/// Adds the test cluster's credentials to a call.
fn credentials(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{REST_USER}:{REST_PASSWORD}"));
    let value = format!("Basic {encoded}").parse().map_err(|_| tonic::Status::internal("bad header"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Connects to the controller at `url` with the test cluster's credentials.
pub async fn controller(url: String) -> Result<Controller, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    Ok(ControllerClient::with_interceptor(channel, credentials as Credentials))
}
