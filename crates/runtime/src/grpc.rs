//! The gRPC transport every pgwarden service and the CLI share: TLS and
//! mutual TLS from `pgwarden.grpc_*` (`ctl.*` for the CLI), and the basic-auth
//! credentials of `restapi.authentication` (`ctl.authentication` for the CLI)
//! on every call that changes state.
//!
//! A process sets its client side once at start-up ([`init_client`]); every
//! gRPC call it makes then goes through [`connect`], which applies TLS to
//! `https://` URLs and adds the `authorization` header. Servers are built
//! with [`server`] and wrapped in [`RequireAuth`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use http::HeaderValue;
use pgwarden_config::{BasicAuth, Config, GrpcTls};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// How this process calls gRPC servers.
#[derive(Debug, Clone, Default)]
struct ClientSettings {
    tls: Option<ClientTlsConfig>,
    /// `ctl.insecure`: TLS without verifying the server's certificate.
    unverified: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<HeaderValue>,
}

static CLIENT: OnceLock<ClientSettings> = OnceLock::new();

fn read(path: &std::path::Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {key} {}", path.display()))
}

/// The PEM text of `path`, which must hold at least one `what` block.
fn read_pem(path: &std::path::Path, key: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem = read(path, key)?;
    if !String::from_utf8_lossy(&pem).contains(&format!("-----BEGIN {what}")) {
        bail!("{key} {} holds no PEM {what}", path.display());
    }
    Ok(pem)
}

/// A PEM private key, decrypted with `password` (its setting named
/// `password_setting`) when it is encrypted.
fn read_key(
    path: &std::path::Path,
    key: &str,
    password: Option<&pgwarden_config::Secret>,
    password_setting: &str,
) -> anyhow::Result<Vec<u8>> {
    crate::keyfile::read_private_key_pem(path, password, key, password_setting).map(String::into_bytes)
}

/// The `authorization` header value for `auth`.
pub fn basic_header(auth: &BasicAuth) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.username, auth.password.expose()));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Basic ...` against `auth` (no `auth`: allowed).
pub fn authorized(header: Option<&HeaderValue>, auth: Option<&BasicAuth>) -> bool {
    let Some(auth) = auth else { return true };
    let Some(encoded) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", auth.username, auth.password.expose());
    same(&decoded, expected.as_bytes())
}

/// Sets how a service calls the others: the node's gRPC TLS files and
/// `restapi.authentication`. Reads the files now, so a missing or bad one
/// stops the service at start-up with the file named.
pub fn init_service_client(config: &Config) -> anyhow::Result<()> {
    let tls = match &config.pgwarden.grpc_tls {
        Some(tls) => Some(client_tls(&tls.cafile, Some((&tls.certfile, &tls.keyfile)), "pgwarden.grpc", None)?),
        None => None,
    };
    init_client(tls, config.restapi.authentication.as_ref());
    Ok(())
}

/// Sets how the CLI calls the controller: `ctl.cacert`/`certfile`/`keyfile`,
/// each falling back to the node's `pgwarden.grpc_*` file, and
/// `ctl.authentication`, falling back to `restapi.authentication`.
///
/// With `ctl.insecure` the controller's certificate is not verified (no CA
/// is read); the client certificate is still presented.
pub fn init_ctl_client(config: &Config) -> anyhow::Result<()> {
    let ctl = &config.ctl;
    let node = config.pgwarden.grpc_tls.as_ref();
    let cafile = ctl.cacert.clone().or_else(|| node.map(|t| t.cafile.clone()));
    let certfile = ctl.certfile.clone().or_else(|| node.map(|t| t.certfile.clone()));
    let keyfile = ctl.keyfile.clone().or_else(|| ctl.certfile.clone()).or_else(|| node.map(|t| t.keyfile.clone()));
    let authorization = ctl.authentication.as_ref().or(config.restapi.authentication.as_ref()).map(basic_header);
    if ctl.insecure {
        let identity = certfile.zip(keyfile);
        let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let unverified = unverified_tls(identity, ctl.keyfile_password.as_ref())?;
        let _ = CLIENT.set(ClientSettings { tls: None, unverified: Some(Arc::new(unverified)), authorization });
        return Ok(());
    }
    let tls = match (cafile, certfile.zip(keyfile)) {
        (Some(ca), identity) => {
            let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            Some(client_tls(&ca, identity, "ctl", ctl.keyfile_password.as_ref())?)
        }
        // A client certificate without a CA to verify the controller with:
        // a plain (http://) controller is reached without it, as patronictl
        // does; an https:// one is refused at connect, naming ctl.cacert.
        (None, _) => None,
    };
    let _ = CLIENT.set(ClientSettings { tls, unverified: None, authorization });
    Ok(())
}

fn init_client(tls: Option<ClientTlsConfig>, auth: Option<&BasicAuth>) {
    let _ = CLIENT.set(ClientSettings { tls, unverified: None, authorization: auth.map(basic_header) });
}

fn client_tls(
    cafile: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    section: &str,
    key_password: Option<&pgwarden_config::Secret>,
) -> anyhow::Result<ClientTlsConfig> {
    let ca = read_pem(cafile, &format!("{section} CA file"), "CERTIFICATE")?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((certfile, keyfile)) = identity {
        let cert = read_pem(certfile, &format!("{section} certificate"), "CERTIFICATE")?;
        let key = read_key(keyfile, &format!("{section} key"), key_password, &format!("{section}.keyfile_password"))?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// A gRPC server builder with TLS from `pgwarden.grpc_*` when configured.
pub fn server(tls: Option<&GrpcTls>) -> anyhow::Result<Server> {
    let builder = Server::builder();
    let Some(tls) = tls else { return Ok(builder) };
    let cert = read_pem(&tls.certfile, "pgwarden.grpc_certfile", "CERTIFICATE")?;
    let key = read_key(&tls.keyfile, "pgwarden.grpc_keyfile", None, "a passphrase (none exists for it)")?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if tls.verify_client {
        let ca = read_pem(&tls.cafile, "pgwarden.grpc_cafile", "CERTIFICATE")?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    builder
        .tls_config(config)
        .context("pgwarden.grpc_certfile/grpc_keyfile: the certificate and key do not form a TLS identity")
}

/// Why [`connect`] found no channel. The first three are this process's
/// own configuration (retrying does not help: the message names the
/// setting); the last two are the server's side or the network's.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url} is not a gRPC URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url} uses TLS, but this node has no pgwarden.grpc_cafile (ctl.cacert for pgwardenctl) to verify it")]
    NoTrustAnchor { url: String },
    #[error("{url}: the gRPC TLS settings are not usable: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url} did not answer within {timeout:?}")]
    TimedOut { url: String, timeout: Duration },
    #[error("{url}: {reason}")]
    Refused { url: String, reason: String },
}

impl ConnectError {
    /// The cause is this process's own settings (a URL or TLS), not the
    /// server: say what to fix rather than "is it running?".
    pub fn is_local_configuration(&self) -> bool {
        matches!(self, Self::BadUrl { .. } | Self::NoTrustAnchor { .. } | Self::Tls { .. })
    }
}

/// A channel to `url` (`http://` or `https://`), connected within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<AuthChannel, ConnectError> {
    let settings = CLIENT.get().cloned().unwrap_or_default();
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ConnectError::BadUrl { url: url.to_string(), reason: error_chain(&e) })?
        .connect_timeout(timeout);
    if let (Some(rest), Some(config)) = (url.strip_prefix("https://"), settings.unverified.clone()) {
        return connect_unverified(url, rest, config, timeout)
            .await
            .map(|inner| AuthChannel { inner, authorization: settings.authorization });
    }
    if url.starts_with("https://") {
        let Some(tls) = settings.tls.clone() else {
            return Err(ConnectError::NoTrustAnchor { url: url.to_string() });
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ConnectError::Tls { url: url.to_string(), reason: error_chain(&e) })?;
    }
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| ConnectError::TimedOut { url: url.to_string(), timeout })?
        .map_err(|e| ConnectError::Refused { url: url.to_string(), reason: error_chain(&e) })?;
    Ok(AuthChannel { inner: channel, authorization: settings.authorization })
}

/// The TLS client settings of `ctl.insecure`: any server certificate is
/// taken (the handshake's signatures are still checked against it), and
/// `identity` is presented when given.
fn unverified_tls(
    identity: Option<(&std::path::Path, &std::path::Path)>,
    key_password: Option<&pgwarden_config::Secret>,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)));
    let mut config = match identity {
        Some((certfile, keyfile)) => {
            let pem = read_pem(certfile, "ctl certificate", "CERTIFICATE")?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parse ctl certificate {}", certfile.display()))?;
            let key = read_key(keyfile, "ctl key", key_password, "ctl.keyfile_password")?;
            let key =
                PrivateKeyDer::from_pem_slice(&key).with_context(|| format!("parse ctl key {}", keyfile.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .context("ctl.certfile/ctl.keyfile: the certificate and key do not form a TLS identity")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `ctl.insecure`'s verifier: accepts whatever certificate the server shows.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A channel to `url` (`https://` + `rest`) over TLS that does not verify
/// the server. tonic's own TLS always verifies, so the TLS stream is made
/// here and handed to tonic as a plain connection.
async fn connect_unverified(
    url: &str,
    rest: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let bad = |reason: String| ConnectError::BadUrl { url: url.to_string(), reason };
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad("no host".to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| bad(e.to_string()))?;
    let endpoint =
        Endpoint::from_shared(format!("http://{rest}")).map_err(|e| bad(error_chain(&e)))?.connect_timeout(timeout);
    let connector = UnverifiedConnector { host, port, server_name, tls: tokio_rustls::TlsConnector::from(config) };
    tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| ConnectError::TimedOut { url: url.to_string(), timeout })?
        .map_err(|e| ConnectError::Refused { url: url.to_string(), reason: error_chain(&e) })
}

/// Opens TCP to one address and TLS over it (for [`connect_unverified`]).
#[derive(Clone)]
struct UnverifiedConnector {
    host: String,
    port: u16,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for UnverifiedConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// The causes of a transport error, which tonic keeps in its source chain
/// (a TLS refusal is only named there).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A gRPC channel that adds this process's credentials to every call.
#[derive(Debug, Clone)]
pub struct AuthChannel {
    inner: Channel,
    authorization: Option<HeaderValue>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for AuthChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tower_service::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        tower_service::Service::call(&mut self.inner, request)
    }
}

/// Refuses calls to the methods not listed as open unless they carry the
/// credentials of `restapi.authentication` (when it is set).
#[derive(Debug, Clone)]
pub struct RequireAuth {
    auth: Option<Arc<BasicAuth>>,
    /// The full paths (`/pgwarden.v1.NodeAgent/GetStatus`) anyone may call.
    open: &'static [&'static str],
}

impl RequireAuth {
    pub fn new(auth: Option<&BasicAuth>, open: &'static [&'static str]) -> Self {
        Self { auth: auth.cloned().map(Arc::new), open }
    }
}

impl<S> tower_layer::Layer<S> for RequireAuth {
    type Service = RequireAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuthService { inner, policy: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RequireAuthService<S> {
    inner: S,
    policy: RequireAuth,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for RequireAuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let open = self.policy.open.contains(&path);
        if open || authorized(request.headers().get(http::header::AUTHORIZATION), self.policy.auth.as_deref()) {
            return Box::pin(self.inner.call(request));
        }
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let extensions = request.extensions();
        let client = extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|tls| tls.get_ref().remote_addr()))
            .map_or_else(|| "unknown".to_string(), |addr| addr.to_string());
        let sent = request.headers().contains_key(http::header::AUTHORIZATION);
        tracing::warn!(
            client,
            method = path,
            credentials = if sent { "wrong" } else { "none" },
            "refused a gRPC call: authentication failed"
        );
        let status = tonic::Status::unauthenticated(format!(
            "{path} changes state and needs the credentials of restapi.authentication \
             (pgwardenctl: ctl.authentication or restapi.authentication in its config)"
        ));
        Box::pin(async move { Ok(status.into_http()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> BasicAuth {
        BasicAuth { username: "admin".into(), password: pgwarden_config::Secret::new("s3cret") }
    }

    #[test]
    fn basic_credentials_round_trip_and_near_misses_fail() {
        let auth = auth();
        assert!(authorized(Some(&basic_header(&auth)), Some(&auth)));
        let wrong = BasicAuth { username: "admin".into(), password: pgwarden_config::Secret::new("s3cre") };
        assert!(!authorized(Some(&basic_header(&wrong)), Some(&auth)));
        assert!(!authorized(None, Some(&auth)));
        assert!(!authorized(Some(&HeaderValue::from_static("Bearer x")), Some(&auth)));
        assert!(!authorized(Some(&HeaderValue::from_static("Basic !!!")), Some(&auth)));
        assert!(authorized(None, None));
    }

    /// What a caller branches on: its own settings (fix them) against a
    /// server that does not answer (start it, or wait).
    #[tokio::test]
    async fn a_connect_failure_says_whether_this_processs_settings_are_the_cause() {
        let timeout = Duration::from_secs(2);
        // No client settings here: an https URL has nothing to verify it.
        let no_ca = connect("https://127.0.0.1:1", timeout).await.expect_err("no CA");
        assert!(matches!(no_ca, ConnectError::NoTrustAnchor { .. }) && no_ca.is_local_configuration(), "{no_ca}");
        assert!(no_ca.to_string().contains("pgwarden.grpc_cafile"), "{no_ca}");
        let bad = connect("not a url\n", timeout).await.expect_err("bad URL");
        assert!(matches!(bad, ConnectError::BadUrl { .. }) && bad.is_local_configuration(), "{bad}");
        // A port nobody listens on: the server's side.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let refused = connect(&format!("http://127.0.0.1:{port}"), timeout).await.expect_err("nobody listens");
        assert!(!refused.is_local_configuration(), "{refused}");
        assert!(refused.to_string().starts_with(&format!("http://127.0.0.1:{port}")), "{refused}");
    }
}
