//! Connecting to etcd: endpoints, timeouts, TLS and authentication from the
//! config's `etcd3:` section.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

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
    /// Look etcd's members up and add their client URLs to the endpoints
    /// (`etcd3.use_proxies` off, Patroni's default).
    pub discover_members: bool,
    /// `etcd3.srv`: the endpoints come from DNS SRV records, asked at
    /// [`connect`]; `endpoints` only when none answers.
    pub srv: Option<pgwarden_config::SrvDiscovery>,
}

/// How often the members are looked up again while requests succeed.
const DISCOVER_EVERY: Duration = Duration::from_secs(300);

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
            discover_members: !etcd.use_proxies,
            srv: etcd.srv.clone(),
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
    #[error(
        "etcd srv {domain}: {cause}; add the records to DNS (and check that /etc/resolv.conf names that server), \
         or list etcd in etcd3.hosts"
    )]
    NoSrvRecords { domain: String, cause: String },
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
        _ => {
            return Err(ConnectError::Invalid("etcd cert and key must be set together".into()));
        }
    }
    Ok(Some(tls))
}

/// A handle on etcd that rotates over the configured endpoints: each endpoint
/// has its own client, calls go to the current one, and a call that fails
/// because that endpoint is unreachable or silent moves on to the next.
/// (etcd-client's own balancing keeps routing requests to a dead endpoint.)
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EtcdSettings,
    options: ConnectOptions,
    /// The configured endpoints, then the members' client URLs found since
    /// (`EtcdSettings::discover_members`); never shorter than `clients`.
    endpoints: std::sync::RwLock<Vec<String>>,
    /// One client per endpoint, made on first use.
    clients: Mutex<Vec<Option<Client>>>,
    /// When the members were last looked up (`None`: not yet).
    discovered: std::sync::Mutex<Option<std::time::Instant>>,
    current: AtomicUsize,
    /// When a request last got an answer (`Etcd::last_answer`).
    answered: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.inner.settings.endpoints).finish()
    }
}

/// Whether an error says the endpoint could not serve the request at all, so
/// another endpoint should be tried.
pub fn is_unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) && !status.message().contains("lease not found")
        }
        _ => false,
    }
}

/// Connects to etcd. Connections are made lazily, so this succeeds while etcd
/// is down (an agent must start and wait for etcd); [`Etcd::probe`] checks
/// reachability. Every request requires an etcd leader.
///
/// With `srv`, the endpoints are looked up in DNS first (the configured
/// ones are used only when no record answers); no answer and no configured
/// endpoint is an error naming the records asked.
pub async fn connect(settings: &EtcdSettings) -> Result<Etcd, ConnectError> {
    let mut settings = settings.clone();
    if let Some(srv) = &settings.srv {
        match crate::srv::lookup(srv, &settings).await {
            Ok(urls) => settings.endpoints = urls,
            Err(why) if !settings.endpoints.is_empty() => {
                tracing::warn!("etcd srv {}: {why}; using the configured endpoints", srv.domain);
            }
            Err(why) => {
                return Err(ConnectError::NoSrvRecords { domain: srv.domain.clone(), cause: why });
            }
        }
    }
    let settings = &settings;
    if settings.endpoints.is_empty() {
        return Err(ConnectError::Invalid("no etcd endpoints".into()));
    }
    // No per-request transport timeout: it would also cut watch and
    // keep-alive streams. Each call is bounded by `Etcd::call` instead.
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.request_timeout)
        // etcd closes connections that ping more often than every 5 s
        // (--grpc-keepalive-min-time); dead peers are caught by request timeouts.
        .with_keep_alive(Duration::from_secs(10), settings.request_timeout.max(Duration::from_secs(1)))
        .with_require_leader(true);
    if let Some(tls) = tls_options(settings)? {
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        options = options.with_user(user.clone(), password.clone());
    }
    Ok(Etcd {
        inner: Arc::new(Inner {
            settings: settings.clone(),
            options,
            endpoints: std::sync::RwLock::new(settings.endpoints.clone()),
            clients: Mutex::new(vec![None; settings.endpoints.len()]),
            discovered: std::sync::Mutex::new(None),
            // The first endpoint as the user listed it; later ones on failure.
            current: AtomicUsize::new(0),
            answered: std::sync::Mutex::new(None),
        }),
    })
}

impl Etcd {
    pub fn settings(&self) -> &EtcdSettings {
        &self.inner.settings
    }

    /// The endpoint calls go to now.
    pub fn current_endpoint(&self) -> String {
        self.endpoint(self.inner.current.load(Ordering::Relaxed))
    }

    /// Every endpoint tried: the configured ones, then the members found.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.read().expect("endpoints").clone()
    }

    fn endpoint(&self, idx: usize) -> String {
        self.inner.endpoints.read().expect("endpoints")[idx].clone()
    }

    fn endpoint_count(&self) -> usize {
        self.inner.endpoints.read().expect("endpoints").len()
    }

    async fn client_at(&self, idx: usize) -> Result<Client, etcd_client::Error> {
        if let Some(client) = self.inner.clients.lock().await[idx].clone() {
            return Ok(client);
        }
        let endpoint = self.endpoint(idx);
        let client = Client::connect([endpoint], Some(self.inner.options.clone())).await?;
        self.inner.clients.lock().await[idx] = Some(client.clone());
        Ok(client)
    }

    fn rotate_from(&self, idx: usize) {
        let next = (idx + 1) % self.endpoint_count();
        if self.inner.current.compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::info!(
                from = %self.endpoint(idx),
                to = %self.endpoint(next),
                "etcd endpoint unreachable, moving to the next"
            );
        }
    }

    /// Looks etcd's members up and adds the client URLs not yet among the
    /// endpoints (the configured ones stay first); returns those added.
    pub async fn discover_members(&self) -> Result<Vec<String>, etcd_client::Error> {
        let response = self.call(|mut client| async move { client.member_list().await }).await?;
        let cluster_id = response.header().map(|h| h.cluster_id());
        let known = self.endpoints();
        let mut urls: Vec<String> = response
            .members()
            .iter()
            .flat_map(|member| member.client_urls())
            .map(|url| url.trim_end_matches('/').to_string())
            .filter(|url| (url.starts_with("http://") || url.starts_with("https://")) && !known.contains(url))
            .collect();
        urls.dedup();
        // An advertised URL may reach another etcd than the one that listed
        // it (a loopback address, seen from another host): used only once it
        // answers with the same cluster ID, never to write a key elsewhere.
        let mut verified = Vec::new();
        for url in urls {
            match self.cluster_id_of(&url).await {
                Ok(id) if Some(id) == cluster_id => verified.push(url),
                Ok(id) => tracing::warn!(
                    %url,
                    "an etcd member advertises {url}, which answers for another etcd cluster (id {id:x}, not {:x}): \
                     not used; check the members' --advertise-client-urls",
                    cluster_id.unwrap_or_default()
                ),
                Err(e) => {
                    tracing::debug!(%url, "an advertised etcd URL does not answer; looked up again later: {}", describe_error(&e))
                }
            }
        }
        // Clients first, so that an endpoint's index always has a slot.
        let mut clients = self.inner.clients.lock().await;
        let mut endpoints = self.inner.endpoints.write().expect("endpoints");
        let mut added = Vec::new();
        for url in verified {
            if !endpoints.contains(&url) {
                clients.push(None);
                endpoints.push(url.clone());
                added.push(url);
            }
        }
        if !added.is_empty() {
            tracing::info!(added = ?added, "etcd members discovered (etcd3.use_proxies is off): tried after the hosts");
        }
        Ok(added)
    }

    /// The cluster ID `url` answers with, asked without credentials (a
    /// member's status needs none, and a password goes only where the
    /// cluster is known to be this one).
    async fn cluster_id_of(&self, url: &str) -> Result<u64, etcd_client::Error> {
        let settings = &self.inner.settings;
        let mut options = ConnectOptions::new().with_connect_timeout(settings.request_timeout);
        if let Ok(Some(tls)) = tls_options(settings) {
            options = options.with_tls(tls);
        }
        let ask = async {
            let mut client = Client::connect([url], Some(options)).await?;
            client.status().await
        };
        let status = tokio::time::timeout(settings.request_timeout, ask)
            .await
            .map_err(|_| timeout_error(settings.request_timeout))??;
        status
            .header()
            .map(|h| h.cluster_id())
            .ok_or_else(|| etcd_client::Error::InvalidArgs("no response header".into()))
    }

    /// Starts a look-up of the members when one is due (first, then every
    /// [`DISCOVER_EVERY`]), in the background.
    fn discover_when_due(&self) {
        if !self.inner.settings.discover_members {
            return;
        }
        {
            let mut last = self.inner.discovered.lock().expect("discovered");
            if last.is_some_and(|at| at.elapsed() < DISCOVER_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let etcd = self.clone();
        tokio::spawn(async move {
            if let Err(e) = etcd.discover_members().await {
                tracing::debug!("looking up etcd's members failed: {}", describe_error(&e));
            }
        });
    }

    /// The client of the current endpoint, for long-lived streams (watch,
    /// lease keep-alive); call [`Etcd::report_failure`] when such a stream breaks.
    pub async fn client(&self) -> Result<(usize, Client), etcd_client::Error> {
        let idx = self.inner.current.load(Ordering::Relaxed);
        Ok((idx, self.client_at(idx).await?))
    }

    /// Moves off endpoint `idx` if it is still the current one.
    pub fn report_failure(&self, idx: usize) {
        self.rotate_from(idx);
    }

    /// How long ago etcd last answered a request of this handle (a read, a
    /// write, a lease renewal; `None`: never). A view kept from the cache
    /// says nothing about etcd now; this does.
    pub fn last_answer(&self) -> Option<Duration> {
        self.inner.answered.lock().expect("answered").map(|at| at.elapsed())
    }

    /// Runs one request, bounded by the request timeout in total, trying the
    /// endpoints in turn while they are unreachable.
    pub async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let budget = self.inner.settings.request_timeout;
        let started = tokio::time::Instant::now();
        let n = self.endpoint_count();
        let mut last = None;
        let mut retried_auth = false;
        for _ in 0..n + 1 {
            let remaining = budget.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            let idx = self.inner.current.load(Ordering::Relaxed);
            let attempt = async { request(self.client_at(idx).await?).await };
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(value)) => {
                    *self.inner.answered.lock().expect("answered") = Some(std::time::Instant::now());
                    self.discover_when_due();
                    return Ok(value);
                }
                Ok(Err(e)) if is_unreachable(&e) => {
                    self.rotate_from(idx);
                    last = Some(e);
                }
                // etcd forgets an auth token after --auth-token-ttl of
                // disuse: a new client authenticates again.
                Ok(Err(e)) if is_expired_token(&e) && !retried_auth => {
                    retried_auth = true;
                    tracing::debug!("etcd auth token expired; authenticating again");
                    self.inner.clients.lock().await[idx] = None;
                    last = Some(e);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.rotate_from(idx);
                    last = Some(timeout_error(budget));
                }
            }
        }
        Err(last.unwrap_or_else(|| timeout_error(budget)))
    }

    /// Runs one transaction (see [`Etcd::call`]).
    pub async fn txn(&self, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.call(|mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    /// Checks that etcd answers (with a leader) within the request timeout.
    pub async fn probe(&self) -> Result<(), ConnectError> {
        let settings = &self.inner.settings;
        self.call(|mut client| async move { client.get("/", Some(GetOptions::new().with_count_only())).await })
            .await
            .map(|_| ())
            .map_err(|e| ConnectError::Unreachable {
                endpoints: settings.endpoints.join(","),
                cause: describe_error(&e),
            })
    }
}

fn timeout_error(budget: Duration) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!("no answer from etcd within {budget:?}")))
}

/// An error saying the auth token is no longer valid.
fn is_expired_token(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status) if status.message().contains("invalid auth token"))
}

/// A one-line description of an etcd error for a person.
pub fn describe_error(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            let text = if message.is_empty() { format!("{:?}", status.code()) } else { message.to_string() };
            let auth = matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                || message.contains("authentication failed")
                || message.contains("permission denied")
                || message.contains("user name is empty");
            if auth {
                format!(
                    "{text} (check etcd3.username and etcd3.password, or etcd.* for an `etcd:` section; \
                     the user needs read-write access to the cluster's prefix)"
                )
            } else {
                text
            }
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
