//! Connecting to etcd: endpoints, timeouts, TLS and authentication from the
//! config's `etcd3:` section.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `http(s)://host:port` URLs; requests are balanced over the reachable ones.
    pub endpoints: Vec<String>,
    /// Timeout of one request, and of establishing one connection.
    pub request_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cacert: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl EtcdSettings {
    /// Settings from the loaded config, with the given request timeout.
    pub fn from_config(etcd: &pgwarden_config::Etcd, request_timeout: Duration) -> Self {
        Self {
            endpoints: etcd.endpoints.clone(),
            request_timeout,
            username: etcd.username.clone(),
            password: etcd.password.as_ref().map(|p| p.expose().to_string()),
            cacert: etcd.cacert.clone(),
            cert: etcd.cert.clone(),
            key: etcd.key.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read etcd TLS file {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid etcd settings: {0}")]
    Invalid(String),
    #[error(
        "cannot reach etcd at {endpoints}: {cause}; check that etcd is running and that etcd3.hosts lists its client URLs"
    )]
    Unreachable { endpoints: String, cause: String },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::TlsFile { path: path.display().to_string(), source })
}

fn tls_options(settings: &EtcdSettings) -> Result<Option<TlsOptions>, ConnectError> {
    let https = settings.endpoints.iter().any(|e| e.starts_with("https://"));
    if !https {
        if settings.cacert.is_some() || settings.cert.is_some() {
            return Err(ConnectError::Invalid(
                "cacert/cert are set but the endpoints are http://; set `protocol: https`".into(),
            ));
        }
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(cacert) = &settings.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read(cacert)?));
    }
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err(ConnectError::Invalid("etcd cert and key must be set together".into())),
    }
    Ok(Some(tls))
}

/// Connects to etcd. Connections are made lazily, so this succeeds while etcd
/// is down (the agent must start and wait for etcd); [`probe`] checks reachability.
/// Every request requires an etcd leader and times out after `request_timeout`.
pub async fn connect(settings: &EtcdSettings) -> Result<Client, ConnectError> {
    if settings.endpoints.is_empty() {
        return Err(ConnectError::Invalid("no etcd endpoints".into()));
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.request_timeout)
        .with_timeout(settings.request_timeout)
        .with_keep_alive(settings.request_timeout, settings.request_timeout)
        .with_require_leader(true);
    if let Some(tls) = tls_options(settings)? {
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        options = options.with_user(user.clone(), password.clone());
    }
    let unreachable = |e: etcd_client::Error| ConnectError::Unreachable {
        endpoints: settings.endpoints.join(","),
        cause: describe_error(&e),
    };
    Client::connect(&settings.endpoints, Some(options)).await.map_err(unreachable)
}

/// Checks that etcd answers (with a leader) within the request timeout.
pub async fn probe(client: &mut Client, settings: &EtcdSettings) -> Result<(), ConnectError> {
    let request = client.get("/", Some(GetOptions::new().with_count_only()));
    match tokio::time::timeout(settings.request_timeout, request).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ConnectError::Unreachable { endpoints: settings.endpoints.join(","), cause: describe_error(&e) }),
        Err(_) => Err(ConnectError::Unreachable {
            endpoints: settings.endpoints.join(","),
            cause: format!("no answer within {:?}", settings.request_timeout),
        }),
    }
}

/// A one-line description of an etcd error for a person.
pub fn describe_error(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.is_empty() { format!("{:?}", status.code()) } else { message.to_string() }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}
