//! Patroni-compatible configuration for every pgwarden binary.
//!
//! This crate owns reading the config: the YAML file (or `PATRONI_CONFIGURATION`),
//! the `PATRONI_*` environment overrides, the `pgwarden:` section, validation
//! against the key table in `keys.tsv`, and the corrections Patroni makes with a
//! warning. It is the only crate that reads the environment for settings. It
//! does no network I/O and starts nothing.

mod address;
mod build;
pub mod ciphers;
mod dynamic;
mod env;
pub mod hba;
pub mod keys;
mod load;
pub mod logformat;
mod methods;
mod postgres_bin;
mod problem;
mod read;
mod roles;
mod sections;
pub use load::{LoadError, Loaded, Source, load, load_from, normalise_namespace};
pub use read::{parse_bool, parse_int};
pub use roles::{PROTECTED as ROLE_PROTECTED_PARAMETERS, PgRole, RoleConfig, RoleSettings};
pub use sections::{BOOLEAN_TAGS, TagPair, effective_tags};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized};
use serde_json::{Map, Value};

pub use address::{HostPort, ListenAddresses};
pub use dynamic::{
    DynamicConfig, MIN_LOOP_WAIT, MIN_RETRY_TIMEOUT, MIN_TTL, PermanentSlot, SlotMatcher, StandbyCluster, SyncMode,
    check_numeric_setting, check_parameter_text, parse_duration, valid_slot_name,
};
pub use methods::{BootstrapMethod, MethodCommand, ReplicaMethod};
pub use postgres_bin::{BINARIES, PostgresBinaries};
pub use problem::{Problem, Problems, Severity};
use read::Reader;

/// Which program loads the config: each needs a different part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `pgwarden-agent`: everything, and the PostgreSQL binaries must exist.
    Agent,
    /// `pgwarden-health` and `pgwarden-controller`: the node's identity and addresses.
    Service,
    /// `pgwardenctl`: the cluster (`scope`) and how to reach etcd.
    Ctl,
}

/// A secret (password): never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must hand it on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub scope: String,
    /// Normalised as Patroni does: `percona_lab` becomes `/percona_lab/`.
    pub namespace: String,
    /// Member name; empty only for [`Purpose::Ctl`].
    pub name: String,
    pub restapi: RestApi,
    pub ctl: Ctl,
    pub etcd: Etcd,
    pub bootstrap: Bootstrap,
    pub postgresql: Postgresql,
    pub tags: Tags,
    pub watchdog: Watchdog,
    pub log: Log,
    pub pgwarden: Pgwarden,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct RestApi {
    pub listen: HostPort,
    /// What other members and tools use to reach this node's REST API.
    pub connect_address: HostPort,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<Secret>,
    /// `ciphers`: the TLS 1.2 suites it allows, by OpenSSL name, in order
    /// (`None`: all; TLS 1.3's are always on, as in OpenSSL).
    pub ciphers: Option<Vec<&'static str>>,
    pub cafile: Option<PathBuf>,
    pub verify_client: VerifyClient,
    pub authentication: Option<BasicAuth>,
    /// `restapi.allowlist`: hosts and CIDR networks allowed to call the
    /// write endpoints (empty: no restriction by address).
    pub allowlist: Vec<String>,
    /// `restapi.allowlist_include_members`: the members' hosts too.
    pub allowlist_include_members: bool,
    /// `restapi.http_extra_headers`, and `https_extra_headers` when TLS is
    /// on: sent with every response, as Patroni sends them.
    pub extra_headers: Vec<(String, String)>,
    /// `restapi.server_tokens`: the `Server` header pgwarden sends.
    pub server_tokens: ServerTokens,
    /// `restapi.request_queue_size`: the REST socket's listen backlog
    /// (`None`: the standard library's default, 128 on Linux).
    pub request_queue_size: Option<u32>,
}

/// `restapi.server_tokens`, as Patroni reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerTokens {
    /// No `Server` header of pgwarden's (Patroni: the HTTP library's own).
    #[default]
    Original,
    /// `Server: pgwarden`.
    ProductOnly,
    /// `Server: pgwarden/<version>`.
    Minimal,
}

impl RestApi {
    /// `http(s)://connect_address/patroni`, as Patroni advertises it.
    pub fn api_url(&self) -> String {
        let scheme = if self.certfile.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/patroni", self.connect_address)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Ctl {
    pub cacert: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// `keyfile_password`: the passphrase of an encrypted `keyfile`.
    pub keyfile_password: Option<Secret>,
    pub authentication: Option<BasicAuth>,
    /// `insecure`: pgwardenctl does not verify the controller's TLS
    /// certificate (patronictl's REST calls; `cacert` is not read). The
    /// client certificate is still presented and the credentials sent.
    pub insecure: bool,
}

/// Patroni's `etcd.srv`: the DNS domain whose SRV records name etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvDiscovery {
    /// The domain (`example.com`): `_etcd-client._tcp.example.com` and the
    /// others of [`SrvDiscovery::record_names`] are asked.
    pub domain: String,
    /// `srv_suffix`: appended to each service name (`_etcd-client-<suffix>`).
    pub suffix: Option<String>,
}

impl SrvDiscovery {
    /// The SRV names asked, in Patroni's order, each with the scheme of the
    /// URLs it gives and whether it names peers (whose `/members` lists
    /// the client URLs) rather than clients.
    pub fn record_names(&self) -> Vec<(String, &'static str, bool)> {
        ["-client-ssl", "-client", "-ssl", "", "-server-ssl", "-server"]
            .into_iter()
            .map(|kind| {
                let service = match &self.suffix {
                    Some(suffix) => format!("{kind}-{suffix}"),
                    None => kind.to_string(),
                };
                let scheme = if kind.contains("-ssl") { "https" } else { "http" };
                (format!("_etcd{service}._tcp.{}", self.domain), scheme, kind.contains("-server"))
            })
            .collect()
    }
}

/// How to reach etcd (v3 API), from the `etcd:` or `etcd3:` section.
#[derive(Debug, Clone)]
pub struct Etcd {
    /// `etcd` or `etcd3`: which section the user wrote.
    pub section: &'static str,
    /// Endpoint URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// `srv`/`srv_suffix`: etcd's client URLs from DNS SRV records, looked
    /// up at each connect before `endpoints` (which are used only when no
    /// record answers).
    pub srv: Option<SrvDiscovery>,
    /// `use_proxies`: the endpoints are proxies; do not look up etcd's
    /// members (off, Patroni's default: their client URLs are added to the
    /// endpoints).
    pub use_proxies: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// One `initdb` or `basebackup` option: `- data-checksums` or `- encoding: UTF8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOption {
    Flag(String),
    Value(String, String),
}

impl ToolOption {
    /// The command-line argument: `--data-checksums`, `--encoding=UTF8`.
    pub fn to_arg(&self) -> String {
        match self {
            Self::Flag(flag) => format!("--{flag}"),
            Self::Value(key, value) => format!("--{key}={value}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BootstrapUser {
    pub password: Option<Secret>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub dcs: DynamicConfig,
    /// `bootstrap.dcs` as JSON with Patroni's corrections applied: what the
    /// first leader writes to the `config` key.
    pub dcs_json: Value,
    pub initdb: Vec<ToolOption>,
    pub pg_hba: Vec<String>,
    pub users: BTreeMap<String, BootstrapUser>,
    /// `bootstrap.method` naming a section with a `command` (a restore);
    /// `None`: initdb.
    pub method: Option<BootstrapMethod>,
    /// `post_bootstrap` (or its alias `post_init`): run once after the new
    /// cluster's first primary is up, given a connection string.
    pub post_bootstrap: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: Option<Secret>,
    pub sslmode: Option<String>,
    pub sslkey: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslrootcert: Option<PathBuf>,
    /// libpq's `sslcrl`, `sslcrldir`, `gssencmode`, `channel_binding`,
    /// `sslpassword` and `sslnegotiation`: applied where libpq connects
    /// (primary_conninfo, pg_basebackup, pg_rewind, psql and replica
    /// methods; the superuser's where pg_rewind and psql connect as it),
    /// each only where the PostgreSQL major has it, as Patroni does. The
    /// agent's own connection to its PostgreSQL is not libpq's.
    pub sslcrl: Option<PathBuf>,
    pub sslcrldir: Option<PathBuf>,
    pub gssencmode: Option<String>,
    pub channel_binding: Option<String>,
    /// The passphrase of an encrypted `sslkey`: in `primary_conninfo`
    /// (PostgreSQL's own 0600 file), and for the tools through a 0600
    /// service file, never on a command line.
    pub sslpassword: Option<Secret>,
    pub sslnegotiation: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Authentication {
    pub superuser: Credentials,
    pub replication: Credentials,
    /// Only when configured; pg_rewind otherwise runs as the superuser.
    pub rewind: Option<Credentials>,
}

#[derive(Debug, Clone)]
pub struct Postgresql {
    pub listen: Option<ListenAddresses>,
    pub connect_address: Option<HostPort>,
    /// `proxy_address`: a connection pooler next to PostgreSQL, published
    /// in the member key as Patroni's `proxy_url`.
    pub proxy_address: Option<HostPort>,
    pub data_dir: PathBuf,
    /// `config_dir`: where `postgresql.conf`, `postgresql.base.conf`,
    /// `pg_hba.conf` and `pg_ident.conf` live (Debian's
    /// `/etc/postgresql/<v>/main`); `None`: the data directory.
    pub config_dir: Option<PathBuf>,
    /// `custom_conf`: the user's own configuration file, included by
    /// pgwarden's `postgresql.conf` instead of `postgresql.base.conf`.
    pub custom_conf: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    pub bin_name: BTreeMap<String, String>,
    pub pgpass: Option<PathBuf>,
    pub authentication: Authentication,
    pub parameters: BTreeMap<String, String>,
    pub pg_hba: Vec<String>,
    /// `pg_ident`: the lines of `pg_ident.conf` (over the dynamic config's).
    pub pg_ident: Vec<String>,
    /// `pg_hosts`: the lines of `pg_hosts.conf`, PostgreSQL 19's server
    /// name to certificate map (over the dynamic config's).
    pub pg_hosts: Vec<String>,
    /// `parameters_<role>`, `pg_hba_<role>`, `pg_ident_<role>`,
    /// `pg_hosts_<role>` (over the dynamic config's).
    pub roles: RoleConfig,
    /// `create_replica_methods` with their sections, in order.
    pub create_replica_methods: Vec<ReplicaMethod>,
    pub basebackup: Vec<ToolOption>,
    /// `rewind`: extra pg_rewind options (those pgwarden sets itself are
    /// dropped with a warning, as Patroni drops them).
    pub rewind: Vec<ToolOption>,
    /// `recovery_conf`: recovery settings written for every standby
    /// (`restore_command`, `archive_cleanup_command`, ...).
    pub recovery_conf: BTreeMap<String, String>,
    /// `krbsrvname`: the Kerberos service name of GSS connections, in every
    /// libpq connection string (Patroni sets `PGKRBSRVNAME`).
    pub krbsrvname: Option<String>,
    /// Local override of the dynamic `postgresql.use_pg_rewind`.
    pub use_pg_rewind: Option<bool>,
    /// `None`: the dynamic config's, else 60 s.
    pub pg_ctl_timeout: Option<Duration>,
    /// Local override of the dynamic `postgresql.use_slots`.
    pub use_slots: Option<bool>,
    /// `database`: the database the agent connects to (default `postgres`).
    pub database: String,
    /// `config_base_name`: pgwarden writes `<name>.conf` and keeps the
    /// original as `<name>.base.conf` (default `postgresql`).
    pub config_base_name: String,
    /// `on_start`, `on_stop`, `on_restart`, `on_reload`, `on_role_change`.
    pub callbacks: BTreeMap<String, String>,
    pub pre_promote: Option<String>,
    pub before_stop: Option<String>,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// Patroni's `use_unix_socket`: the agent reaches its PostgreSQL over the
    /// Unix socket instead of TCP (default false, as in Patroni).
    pub use_unix_socket: bool,
    /// Patroni's `use_unix_socket_repl`: local replication connections
    /// (pg_rewind's source checks) over the socket.
    pub use_unix_socket_repl: bool,
}

impl Postgresql {
    /// The directory of `postgresql.conf` and `pg_hba.conf`: `config_dir`,
    /// else the data directory.
    pub fn config_dir(&self) -> &Path {
        self.config_dir.as_deref().unwrap_or(&self.data_dir)
    }
}

/// Member tags (`tags:`), typed where pgwarden acts on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tags {
    /// Never takes the leader key: `nofailover`, or without it a
    /// `failover_priority` of 0 or less ([`TagPair`]).
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub clonefrom: bool,
    /// Never a synchronous standby: `nosync`, or without it a
    /// `sync_priority` of 0 or less.
    pub nosync: bool,
    /// `replicatefrom`: the member to stream from (cascading replication);
    /// the leader while that member cannot serve.
    pub replicatefrom: Option<String>,
    /// `nostream`: never stream WAL (recover from the archive only).
    pub nostream: bool,
    /// `failover_priority` reconciled with `nofailover`: 0 when this
    /// member never leads, else at least 1 (default 1).
    pub failover_priority: u32,
    /// `sync_priority` reconciled with `nosync` (the others read it from
    /// the member key's tags).
    pub sync_priority: u32,
    /// The effective tags, as published in the member key and `/patroni`
    /// ([`effective_tags`]).
    pub json: Map<String, Value>,
}

impl Default for Tags {
    /// No tags: may lead and be synchronous, priority 1 for both.
    fn default() -> Self {
        Tags {
            nofailover: false,
            noloadbalance: false,
            clonefrom: false,
            nosync: false,
            replicatefrom: None,
            nostream: false,
            failover_priority: 1,
            sync_priority: 1,
            json: Map::new(),
        }
    }
}

/// `restapi.verify_client`: whether the REST API asks for client
/// certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyClient {
    #[default]
    None,
    /// Asked for; checked when given (pgwarden: required for writes).
    Optional,
    Required,
}

impl VerifyClient {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyClient::None => "none",
            VerifyClient::Optional => "optional",
            VerifyClient::Required => "required",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    Off,
    Automatic,
    Required,
}

/// `watchdog.driver`: how the device is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogDriver {
    /// The Linux watchdog API: ioctls for the timeout and the keep-alive.
    #[default]
    Linux,
    /// Patroni's `testing` driver: the device is a named pipe a test reads,
    /// and every call is a write (`Ctimeout=N\n` sets the timeout, `1` is a
    /// keep-alive, `V` the magic close). It resets nothing.
    Testing,
}

#[derive(Debug, Clone)]
pub struct Watchdog {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    pub safety_margin: i64,
    pub driver: WatchdogDriver,
}

#[derive(Debug, Clone)]
pub struct Log {
    /// A tracing filter directive: `debug`, `info`, `warn`, `error`.
    pub level: String,
    pub json: bool,
    /// `log.format` parsed (plain lines only); `None`: pgwarden's own layout.
    pub format: Option<Vec<logformat::LogPart>>,
    pub dir: Option<PathBuf>,
    /// `log.dateformat` parsed; `None`: Python's `2024-05-01 12:00:00,123`.
    pub dateformat: Option<Vec<logformat::DatePart>>,
    /// `log.mode`: permissions of the files in `log.dir` (default 0600).
    pub mode: u32,
    /// `log.file_size`: bytes after which a file in `log.dir` rotates (0:
    /// never), as Patroni's (default 25,000,000).
    pub file_size: u64,
    /// `log.file_num`: rotated files kept (`<name>.log.1` ... `.N`; default 4).
    pub file_num: u32,
    /// `log.static_fields`: constant fields added to every json record.
    pub static_fields: Map<String, Value>,
    /// `log.deduplicate_heartbeat_logs`: log an unchanged HA decision only
    /// when it changes (default false: also once per `loop_wait`, as
    /// Patroni's heartbeat line).
    pub deduplicate_heartbeat_logs: bool,
    /// `log.loggers` as `tracing` filter directives (`node_agent::ha=warn`),
    /// added to `log.level`'s.
    pub loggers: Vec<String>,
}

/// `restapi.http_extra_headers` / `https_extra_headers`: header names and
/// values HTTP allows (no line breaks), in the order written.
fn header_map(r: &mut Reader<'_>, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(section) = r.section(path) else { return out };
    for (name, value) in section {
        let key = format!("{path}.{name}");
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                r.problems.error(key, "expected a header value (a string)");
                continue;
            }
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            r.problems.error(key, "not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)");
        } else if text.chars().any(|c| c.is_control() && c != '\t') {
            r.problems.error(key, "an HTTP header value cannot hold line breaks or control characters");
        } else {
            out.push((name.clone(), text));
        }
    }
    out
}

/// `restapi.server_tokens`: an unknown value is a warning and the header is
/// left alone, as in Patroni.
fn server_tokens(r: &mut Reader<'_>) -> ServerTokens {
    let Some(text) = r.string("restapi.server_tokens") else { return ServerTokens::Original };
    match text.trim().to_ascii_lowercase().as_str() {
        "original" => ServerTokens::Original,
        "productonly" => ServerTokens::ProductOnly,
        "minimal" => ServerTokens::Minimal,
        _ => {
            r.problems.warn(
                "restapi.server_tokens",
                format!("{text:?} is not one of original, productonly, minimal: the Server header is left as it is"),
            );
            ServerTokens::Original
        }
    }
}

/// `restapi.allowlist`: each entry an address, a host name, or a CIDR
/// network whose prefix fits the address family.
fn allowlist(r: &mut Reader) -> Vec<String> {
    let entries = r.string_list("restapi.allowlist");
    for entry in &entries {
        if let Some((address, prefix)) = entry.trim().split_once('/') {
            let max = match address.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => {
                    r.problems.error("restapi.allowlist", format!("{entry:?}: a network is address/prefix"));
                    continue;
                }
            };
            if prefix.parse::<u8>().ok().is_none_or(|p| p > max) {
                r.problems.error("restapi.allowlist", format!("{entry:?}: the prefix length must be 0 to {max}"));
            }
        }
    }
    entries
}

/// How long the fencer gives `pg_ctl stop -m immediate` to stop a primary.
pub const FENCE_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the fencer then gives the SIGKILLed processes to be gone.
pub const FENCE_KILL_CHECK: Duration = Duration::from_millis(500);
/// The fencer's worst case to stop a primary: `pgwarden.fence_margin` may not
/// be shorter (finding 12 of the safety review).
pub const FENCE_WORST_CASE: Duration = FENCE_STOP_TIMEOUT.saturating_add(FENCE_KILL_CHECK);

/// Settings Patroni lacks; every key optional (see `keys.tsv`).
#[derive(Debug, Clone)]
pub struct Pgwarden {
    /// The agent's gRPC listener; default: `restapi.listen` port + 1000.
    pub agent_grpc_listen: HostPort,
    pub agent_grpc_connect_address: HostPort,
    /// The controller's gRPC listener; default: `restapi.listen` port + 2000.
    pub controller_grpc_listen: HostPort,
    pub controller_grpc_connect_address: HostPort,
    /// How long before the lease's expiry the local deadline falls: at least
    /// the worst-case time to fence PostgreSQL.
    pub fence_margin: Duration,
    /// Timeout of one etcd request; default: a third of `retry_timeout`.
    pub etcd_request_timeout: Option<Duration>,
    /// The agent takes the leader key only while the fencer in
    /// pgwarden-health acknowledges (default true).
    pub require_fencer: bool,
    /// TLS on the gRPC APIs (`pgwarden.grpc_certfile` and friends); `None`: plain HTTP/2.
    pub grpc_tls: Option<GrpcTls>,
}

/// TLS for the agent's and controller's gRPC APIs and every gRPC call a
/// pgwarden service makes: one node certificate, used as server and as
/// client certificate, and the CA that signed every member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cafile: PathBuf,
    /// Servers refuse a client without a certificate signed by `cafile`.
    pub verify_client: bool,
}

impl Pgwarden {
    /// `https` when the gRPC APIs use TLS, else `http`.
    pub fn grpc_scheme(&self) -> &'static str {
        if self.grpc_tls.is_some() { "https" } else { "http" }
    }

    /// The URL peers and tools use for this node's agent.
    pub fn agent_grpc_url(&self) -> String {
        let address = &self.agent_grpc_connect_address;
        format!("{}://{}:{}", self.grpc_scheme(), address.connectable_host(), address.port)
    }

    /// The URL peers and tools use for this node's controller.
    pub fn controller_grpc_url(&self) -> String {
        let address = &self.controller_grpc_connect_address;
        format!("{}://{}:{}", self.grpc_scheme(), address.connectable_host(), address.port)
    }
}

pub const AGENT_GRPC_PORT_OFFSET: u16 = 1000;
pub const CONTROLLER_GRPC_PORT_OFFSET: u16 = 2000;

impl Config {
    /// `/<namespace>/<scope>/`: the prefix of every etcd key of this cluster.
    pub fn key_prefix(&self) -> String {
        format!("{}{}/", self.namespace, self.scope)
    }

    /// The PostgreSQL binaries: from `bin_dir`, or one discovered installation.
    pub fn postgres_binaries(&self) -> Result<PostgresBinaries, String> {
        match &self.postgresql.bin_dir {
            Some(dir) => PostgresBinaries::in_dir(dir, &self.postgresql.bin_name),
            None => PostgresBinaries::discover(&self.postgresql.bin_name, std::env::var("PATH").ok().as_deref()),
        }
    }

    /// The etcd request timeout: configured, or a third of `retry_timeout`
    /// (so that a retry fits inside `retry_timeout`), at least one second.
    pub fn etcd_request_timeout(&self, retry_timeout: u32) -> Duration {
        self.pgwarden
            .etcd_request_timeout
            .unwrap_or_else(|| Duration::from_millis(u64::from(retry_timeout) * 1000 / 3).max(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_are_normalised_like_patroni() {
        assert_eq!(normalise_namespace("percona_lab"), "/percona_lab/");
        assert_eq!(normalise_namespace("/service/"), "/service/");
        assert_eq!(normalise_namespace("/db"), "/db/");
        assert_eq!(normalise_namespace("a/b"), "/a/b/");
    }

    #[test]
    fn false_boolean_tags_are_not_published_and_others_are_kept_as_written() {
        let tags: Map<String, Value> = serde_json::from_str(
            r#"{"nofailover":false,"noloadbalance":"off","clonefrom":"true","nosync":0,"nostream":true,
                "sync_priority":"0","dc":"east"}"#,
        )
        .expect("json");
        let published: Map<String, Value> =
            serde_json::from_str(r#"{"clonefrom":"true","nosync":0,"nostream":true,"sync_priority":"0","dc":"east"}"#)
                .expect("json");
        assert_eq!(effective_tags(&tags), published);
        // nofailover stays beside failover_priority (nosync beside sync_priority), false or not, as in Patroni.
        let both: Map<String, Value> =
            serde_json::from_str(r#"{"nofailover":false,"failover_priority":2}"#).expect("json");
        assert_eq!(effective_tags(&both), both);
    }

    #[test]
    fn booleans_read_as_patroni_reads_them() {
        for yes in [json!(true), json!("on"), json!("TRUE"), json!("yes"), json!("1"), json!(1)] {
            assert_eq!(parse_bool(&yes), Some(true), "{yes}");
        }
        for no in [json!(false), json!("off"), json!("False"), json!("no"), json!("0"), json!(0)] {
            assert_eq!(parse_bool(&no), Some(false), "{no}");
        }
        assert_eq!(parse_bool(&json!("maybe")), None);
        assert_eq!(parse_bool(&json!(2)), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod log_mode_tests {
    use super::*;
    use crate::sections::log_mode;

    #[test]
    fn log_mode_reads_as_patroni_users_write_it() {
        assert_eq!(log_mode(&Value::from(640)), Some(0o640), "0640 in YAML 1.2 is the number 640");
        assert_eq!(log_mode(&Value::from(600)), Some(0o600));
        assert_eq!(log_mode(&Value::from(384)), Some(0o600), "already converted to decimal (it has an 8)");
        assert_eq!(log_mode(&Value::from("0640")), Some(0o640));
        assert_eq!(log_mode(&Value::from(1777)), None, "beyond 0777");
        assert_eq!(log_mode(&Value::from("rw-r-----")), None);
    }
}
