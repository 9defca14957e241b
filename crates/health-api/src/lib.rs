//! `pgwarden-health`: the Patroni-compatible REST API HAProxy, load balancers,
//! probes and Prometheus call (port 8008 by default). It gets the node's state
//! from the agent's gRPC status stream and answers 200 only from fresh state.
//!
//! It changes neither PostgreSQL nor etcd itself, except through its fencer
//! (`fencer.rs`), which stops a primary whose leader key is no longer proven.

pub mod allowlist;
pub mod checks;
pub mod cluster;
pub mod feed;
pub mod fencer;
pub mod metrics;
pub mod tls;
pub mod ui;
pub mod write;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use pgwarden_config::{Config, Purpose};
use pgwarden_runtime::ConfigArgs;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::checks::Identity;

#[derive(Debug, Parser)]
#[command(name = "pgwarden-health", version, about = "pgwarden health API: Patroni-compatible REST checks")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

struct Shared {
    identity: Identity,
    /// The agent's status (`confirmed` before an answer uses it).
    feed: Arc<feed::Feed>,
    etcd: Option<(dcs::Etcd, dcs::Keys)>,
    fencer: watch::Receiver<fencer::FencerState>,
    writes: WriteSettings,
    /// The controller's events for the status page.
    events: Arc<ui::Events>,
    /// The last `/ui/state` answer (one etcd read per second at most; the
    /// lock also makes concurrent requests wait for one read).
    ui_state: tokio::sync::Mutex<ui::StateCache>,
}

/// Where the write endpoints go, and who may call them.
#[derive(Default)]
pub struct WriteSettings {
    /// The controller's gRPC URL on this node.
    pub controller_url: String,
    /// `restapi.authentication`: required on every write endpoint when set.
    pub authentication: Option<pgwarden_config::BasicAuth>,
    /// HTTPS, and whether write endpoints need a client certificate.
    pub tls: Option<(tokio_rustls::TlsAcceptor, tls::ClientCerts)>,
    /// `restapi.allowlist` (names resolved at start) and `allowlist_include_members`.
    pub allowlist: allowlist::Allowlist,
    /// The agent's gRPC URL on this node (`POST /failsafe` goes to it).
    pub agent_url: String,
    /// Sent with every response: `restapi.http_extra_headers` (and
    /// `https_extra_headers` with TLS), and the `Server` header
    /// `restapi.server_tokens` asks for.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// The headers `restapi` asks to send with every response (checked when the
/// config was read; one that still does not parse is an error at start).
pub fn response_headers(
    restapi: &pgwarden_config::RestApi,
) -> anyhow::Result<Vec<(http::HeaderName, http::HeaderValue)>> {
    let server = match restapi.server_tokens {
        pgwarden_config::ServerTokens::Original => None,
        pgwarden_config::ServerTokens::ProductOnly => Some("pgwarden".to_string()),
        pgwarden_config::ServerTokens::Minimal => Some(format!("pgwarden/{}", env!("CARGO_PKG_VERSION"))),
    };
    server
        .map(|value| ("Server".to_string(), value))
        .into_iter()
        .chain(restapi.extra_headers.iter().cloned())
        .map(|(name, value)| {
            let header = http::HeaderName::try_from(name.as_str())
                .map_err(|e| anyhow::anyhow!("restapi extra header {name:?}: {e}"))?;
            let value = http::HeaderValue::try_from(value.as_str())
                .map_err(|e| anyhow::anyhow!("restapi extra header {name:?} value: {e}"))?;
            Ok((header, value))
        })
        .collect()
}

/// Whether `peer` may call the write endpoints: in the allowlist, or (with
/// `allowlist_include_members`) the host of a registered member's REST or
/// PostgreSQL address, as etcd lists them now.
async fn allowed(shared: &Shared, peer: std::net::IpAddr) -> bool {
    let list = &shared.writes.allowlist;
    if list.is_open() || list.allows(peer) {
        return true;
    }
    if !list.include_members {
        return false;
    }
    let Some((etcd, keys)) = &shared.etcd else { return false };
    let Ok(view) = dcs::read_cluster(etcd, keys).await else { return false };
    for member in &view.members {
        let urls = [member.data.api_url.as_str(), member.data.conn_url.as_str()];
        for host in urls.into_iter().filter_map(allowlist::url_host) {
            if allowlist::resolve_host(host).await.iter().any(|n| n.contains(peer)) {
                return true;
            }
        }
    }
    false
}

/// `/cluster`, `/history` and `/config` read etcd; the checks do not.
async fn from_etcd(path: &str, shared: &Shared) -> Option<checks::Answer> {
    if !matches!(path, "/cluster" | "/history" | "/config") {
        return None;
    }
    let Some((etcd, keys)) = &shared.etcd else {
        return Some(checks::Answer { status: StatusCode::SERVICE_UNAVAILABLE, body: None });
    };
    let view = match dcs::read_cluster(etcd, keys).await {
        Ok(view) => view,
        Err(e) => {
            let body = serde_json::json!({"error": format!("etcd unavailable: {}", dcs::describe_error(&e))});
            return Some(checks::Answer { status: StatusCode::SERVICE_UNAVAILABLE, body: Some(body) });
        }
    };
    Some(match path {
        "/cluster" => {
            checks::Answer { status: StatusCode::OK, body: Some(cluster::cluster_json(&shared.identity.scope, &view)) }
        }
        "/history" => checks::Answer { status: StatusCode::OK, body: Some(cluster::history_json(&view)) },
        _ => match view.config {
            Some((config, _)) => checks::Answer { status: StatusCode::OK, body: Some(config) },
            // Patroni answers 502 when the cluster has no config yet.
            None => checks::Answer { status: StatusCode::BAD_GATEWAY, body: None },
        },
    })
}

/// The status page (`/ui`, its script and style, `/ui/state`,
/// `/ui/events`), read-only; `None` for any other path.
async fn status_page(
    request: &Request<Incoming>,
    path: &str,
    shared: &Shared,
    peer: std::net::SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    if !(path == "/ui" || path.starts_with("/ui/")) {
        return None;
    }
    // Read-only: nothing is read or computed for another method.
    if request.method() != Method::GET {
        return Some(
            Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(http::header::ALLOW, "GET")
                .body(Full::new(Bytes::from_static(b"method not allowed: the status page is read-only\n")))
                .expect("static response is valid"),
        );
    }
    // With restapi.authentication set, the page asks for it (once: the
    // browser then sends it with the page's own requests), since its event
    // stream says more than `/cluster` does; `/ui/state` says no more than
    // `/cluster` and `/history`, and stays open like them.
    if path != "/ui/state" {
        let credentials = request.headers().get(http::header::AUTHORIZATION);
        if !write::authorized(credentials, shared.writes.authentication.as_ref()) {
            info!(client = %peer, path, "refused the status page: authentication failed");
            let text = "the status page needs the restapi.authentication user and password (HTTP basic auth)\n";
            return Some(text_response(StatusCode::UNAUTHORIZED, text.into(), true));
        }
    }
    let (content_type, body) = match path {
        "/ui" | "/ui/" => ("text/html; charset=utf-8", Bytes::from_static(ui::PAGE.as_bytes())),
        "/ui/app.js" => ("text/javascript; charset=utf-8", Bytes::from_static(ui::SCRIPT.as_bytes())),
        "/ui/style.css" => ("text/css; charset=utf-8", Bytes::from_static(ui::STYLE.as_bytes())),
        "/ui/state" => {
            let Some((etcd, keys)) = &shared.etcd else {
                let text = "the status page needs etcd: this node's config has no etcd section\n";
                return Some(text_response(StatusCode::SERVICE_UNAVAILABLE, text.into(), false));
            };
            let mut cache = shared.ui_state.lock().await;
            let body = match cache.fresh(Instant::now()) {
                Some(body) => body,
                None => {
                    let view = match dcs::read_cluster(etcd, keys).await {
                        Ok(view) => view,
                        Err(e) => {
                            let text = format!(
                                "etcd does not answer this node: {}; check etcd and the etcd3 section of its config\n",
                                dcs::describe_error(&e)
                            );
                            return Some(text_response(StatusCode::SERVICE_UNAVAILABLE, text, false));
                        }
                    };
                    let body = Bytes::from(ui::state_json(&shared.identity.scope, etcd, &view).await.to_string());
                    cache.store(Instant::now(), body.clone());
                    body
                }
            };
            ("application/json", body)
        }
        "/ui/events" => {
            let after = ui::after(request.uri().query());
            ("application/json", Bytes::from(shared.events.json(after).to_string()))
        }
        _ => {
            let text = "not found: the status page is /ui\n";
            return Some(text_response(StatusCode::NOT_FOUND, text.into(), false));
        }
    };
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CACHE_CONTROL, "no-store")
            .header("content-security-policy", ui::CONTENT_SECURITY_POLICY)
            .header("x-content-type-options", "nosniff")
            .header("referrer-policy", "no-referrer")
            .body(Full::new(body))
            .expect("response parts are valid"),
    )
}

fn text_response(status: StatusCode, text: String, challenge: bool) -> Response<Full<Bytes>> {
    let mut builder =
        Response::builder().status(status).header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if challenge {
        builder = builder.header(http::header::WWW_AUTHENTICATE, "Basic realm=\"pgwarden\"");
    }
    builder.body(Full::new(Bytes::from(text))).expect("response parts are valid")
}

async fn respond(
    request: Request<Incoming>,
    shared: &Shared,
    client_verified: bool,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    if write::handles(request.method(), &path) {
        let method = request.method().clone();
        let needs_cert = shared.writes.tls.as_ref().is_some_and(|(_, mode)| *mode != tls::ClientCerts::None);
        if !allowed(shared, peer.ip()).await {
            warn!(client = %peer, %method, path, "refused a write request: the client is not in restapi.allowlist");
            return text_response(StatusCode::FORBIDDEN, "Access is denied\n".into(), false);
        }
        if needs_cert && !client_verified {
            warn!(client = %peer, %method, path, "refused a write request: no verified client certificate");
            let text = "this endpoint needs a client certificate signed by restapi.cafile\n";
            return text_response(StatusCode::FORBIDDEN, text.into(), false);
        }
        if !write::authorized(request.headers().get(http::header::AUTHORIZATION), shared.writes.authentication.as_ref())
        {
            let sent = request.headers().contains_key(http::header::AUTHORIZATION);
            warn!(
                client = %peer,
                %method,
                path,
                credentials = if sent { "wrong" } else { "none" },
                "refused a write request: authentication failed"
            );
            let text = "authentication required: send the restapi.authentication user and password (HTTP basic auth)\n";
            return text_response(StatusCode::UNAUTHORIZED, text.into(), true);
        }
        let reply = if path == "/failsafe" {
            write::failsafe(request.into_body(), &shared.writes.agent_url).await
        } else {
            write::answer(&method, &path, request.into_body(), &shared.writes.controller_url, &shared.identity.name)
                .await
        };
        info!(client = %peer, %method, path, status = reply.status.as_u16(), answer = %reply.text, "write request");
        return text_response(reply.status, reply.text, reply.challenge);
    }
    if let Some(response) = status_page(&request, &path, shared, peer).await {
        return response;
    }
    let query = checks::parse_query(request.uri().query());
    if path == "/metrics" && matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let now = Instant::now();
        shared.feed.confirm_fresh(now).await;
        let mut text = metrics::render(&shared.identity, &shared.feed.latest(), now);
        let state = *shared.fencer.borrow();
        text.push_str(&metrics::render_fencer(&shared.identity, state.gauge(), fencer::fences()));
        let body = if request.method() == Method::GET { Bytes::from(text) } else { Bytes::new() };
        return Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(body))
            .expect("response parts are valid");
    }
    let answer = match from_etcd(&path, shared).await {
        Some(answer) => answer,
        None => {
            let now = Instant::now();
            shared.feed.confirm_fresh(now).await;
            let with_body = request.method() == Method::GET;
            checks::answer(&path, &query, &shared.identity, &shared.feed.latest(), now, with_body)
        }
    };
    let method = request.method();
    let mut builder = Response::builder().status(answer.status);
    let body = match (method, answer.body) {
        (&Method::GET, Some(body)) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        (&Method::GET | &Method::HEAD | &Method::OPTIONS, _) => Bytes::new(),
        _ => {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(http::header::ALLOW, "GET, HEAD, OPTIONS")
                .body(Full::new(Bytes::from_static(b"method not allowed\n")))
                .expect("static response is valid");
        }
    };
    builder.body(Full::new(body)).expect("response parts are valid")
}

/// How many connections the REST server keeps open at most. Health checks
/// open short connections; a new one past the limit closes the oldest
/// connection that has no request in flight, so idle or slow clients can
/// never keep HAProxy's checks out.
const MAX_CONNECTIONS: usize = 256;
/// A client must send a whole request header within this.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A connection with no request in flight for this long is closed.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One open connection, as the accept loop sees it.
struct OpenConnection {
    /// Close it now (evicted to make room).
    close: tokio::sync::Notify,
    /// A request is being answered.
    busy: std::sync::atomic::AtomicBool,
}

/// The open connections by their order of arrival.
#[derive(Default)]
struct Connections {
    next_id: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<OpenConnection>>>,
}

impl Connections {
    /// Registers a new connection, evicting the oldest one without a request
    /// in flight when full; `None` when every open connection is busy.
    fn admit(&self) -> Option<(u64, Arc<OpenConnection>)> {
        let mut open = self.open.lock().expect("connection registry");
        if open.len() >= MAX_CONNECTIONS {
            let oldest_idle =
                open.iter().find(|(_, c)| !c.busy.load(std::sync::atomic::Ordering::SeqCst)).map(|(id, _)| *id)?;
            if let Some(evicted) = open.remove(&oldest_idle) {
                evicted.close.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let connection = Arc::new(OpenConnection {
            close: tokio::sync::Notify::new(),
            busy: std::sync::atomic::AtomicBool::new(false),
        });
        open.insert(id, connection.clone());
        Some((id, connection))
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("connection registry").remove(&id);
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS), closing it when a
/// header is not read within `HEADER_READ_TIMEOUT`, when it idles past
/// `IDLE_TIMEOUT`, or when it is evicted.
async fn serve<S>(
    stream: S,
    shared: Arc<Shared>,
    client_verified: bool,
    peer: std::net::SocketAddr,
    connection: Arc<OpenConnection>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let last_activity = Arc::new(std::sync::Mutex::new(Instant::now()));
    let service = {
        let (connection, last_activity) = (connection.clone(), last_activity.clone());
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let (shared, connection, last_activity) = (shared.clone(), connection.clone(), last_activity.clone());
            async move {
                connection.busy.store(true, Ordering::SeqCst);
                let mut response = respond(request, &shared, client_verified, peer).await;
                for (name, value) in &shared.writes.response_headers {
                    response.headers_mut().append(name.clone(), value.clone());
                }
                *last_activity.lock().expect("activity") = Instant::now();
                connection.busy.store(false, Ordering::SeqCst);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            () = connection.close.notified() => {
                debug!(%peer, "connection closed to make room for a new one");
                return;
            }
            () = tokio::time::sleep(std::time::Duration::from_secs(1)), if !closing => {
                let idle = last_activity.lock().expect("activity").elapsed();
                if !connection.busy.load(Ordering::SeqCst) && idle >= IDLE_TIMEOUT {
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Serves the REST API on `listener` until `shutdown` resolves, following the
/// agent's status stream at `agent_url`.
pub async fn run(
    identity: Identity,
    agent_url: String,
    etcd: Option<(dcs::Etcd, dcs::Keys)>,
    fencer_settings: Option<fencer::FencerSettings>,
    writes: WriteSettings,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (feed, rx) = feed::Feed::new();
    let (fencer_tx, fencer_rx) = watch::channel(fencer::FencerState::Disarmed);
    let fencer_token = fencer_settings.as_ref().map(|settings| pg_local::fencer_token_path(&settings.data_dir));
    let fencer_task = fencer_settings.map(|settings| tokio::spawn(fencer::run(settings, rx.clone(), fencer_tx)));
    let follower = tokio::spawn(feed::follow_agent(
        agent_url.clone(),
        feed.clone(),
        identity.name.clone(),
        fencer_rx.clone(),
        fencer_token,
    ));
    let events = Arc::new(ui::Events::default());
    let events_task = (!writes.controller_url.is_empty())
        .then(|| tokio::spawn(ui::follow_controller(writes.controller_url.clone(), events.clone())));
    let shared = Arc::new(Shared {
        identity,
        feed,
        etcd,
        fencer: fencer_rx,
        writes,
        events,
        ui_state: tokio::sync::Mutex::new(ui::StateCache::default()),
    });
    let connections = Arc::new(Connections::default());
    info!(address = %listener.local_addr().context("read the REST listener's address")?, agent = %agent_url, "serving the REST API");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!("failed to accept a connection: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some((id, connection)) = connections.admit() else {
            debug!(%peer, "every connection is answering a request: closing the new one");
            continue;
        };
        let (shared, connections) = (shared.clone(), connections.clone());
        tokio::spawn(async move {
            match shared.writes.tls.clone() {
                None => serve(stream, shared, false, peer, connection).await,
                Some((acceptor, _)) => match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let verified = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        serve(stream, shared, verified, peer, connection).await;
                    }
                    Ok(Err(e)) => info!(%peer, "refused a TLS connection: {e}"),
                    Err(_) => info!(%peer, "refused a TLS connection: no handshake within 5 s"),
                },
            }
            connections.remove(id);
        });
    }
    follower.abort();
    for task in [fencer_task, events_task].into_iter().flatten() {
        task.abort();
    }
    info!("health API stopped");
    Ok(())
}

/// The agent's gRPC URL as this node reaches it.
pub fn agent_url(config: &Config) -> String {
    let address = &config.pgwarden.agent_grpc_listen;
    format!("{}://{}:{}", config.pgwarden.grpc_scheme(), address.connectable_host(), address.port)
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_runtime::start(&args.config, Purpose::Service)?;
    pgwarden_runtime::grpc::init_service_client(&config)?;
    let listener = pgwarden_runtime::bind_with_backlog(
        &config.restapi.listen,
        "the REST API",
        "restapi.listen",
        config.restapi.request_queue_size,
    )
    .await?;
    pgwarden_runtime::warn_if_writes_are_open(&listener, &config, "the REST API");
    let identity = Identity { scope: config.scope.clone(), name: config.name.clone() };
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let etcd = dcs::connect(&dcs::EtcdSettings::from_config(&config.etcd, timeout)).await?;
    let keys = dcs::Keys::new(&config.namespace, &config.scope);
    let fencer_settings = match config.postgres_binaries() {
        Ok(bins) => Some(fencer::FencerSettings {
            member: config.name.clone(),
            data_dir: config.postgresql.data_dir.clone(),
            pg_ctl: bins.path("pg_ctl"),
            // The agent streams its status within a few hundred ms of
            // connecting; a fencer restarted beside a silent one must judge
            // well within fence_margin of a deadline it no longer knows.
            agent_grace: std::time::Duration::from_secs(1),
            etcd: Some((etcd.clone(), keys.clone())),
            fence_margin: config.pgwarden.fence_margin,
            // Patroni keeps an `etcd:` section's cluster in v2: a primary it
            // runs there is not pgwarden's to fence.
            v2: (config.etcd.section == "etcd").then(|| {
                let mut settings = dcs::EtcdSettings::from_config(&config.etcd, timeout);
                // Those `connect` found (DNS SRV records give them with `srv`).
                settings.endpoints = etcd.endpoints();
                (settings, config.namespace.clone(), config.scope.clone())
            }),
        }),
        Err(why) => {
            tracing::error!("the fencer cannot run without PostgreSQL's binaries: {why}");
            None
        }
    };
    pgwarden_runtime::ignore_sighup("pgwarden-health");
    pgwarden_runtime::notify::ready("serving the REST API; the fencer runs");
    run(
        identity,
        agent_url(&config),
        Some((etcd, keys)),
        fencer_settings,
        WriteSettings {
            controller_url: config.pgwarden.controller_grpc_url(),
            agent_url: agent_url(&config),
            authentication: config.restapi.authentication.clone(),
            tls: tls::acceptor(&config.restapi)?,
            allowlist: allowlist::Allowlist {
                networks: allowlist::resolve(&config.restapi.allowlist).await,
                include_members: config.restapi.allowlist_include_members,
            },
            response_headers: response_headers(&config.restapi)?,
        },
        listener,
        pgwarden_runtime::shutdown_signal(),
    )
    .await
}
