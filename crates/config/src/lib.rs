//! Patroni-compatible configuration for every pgwarden binary.
//!
//! This crate owns reading the config: the YAML file (or `PATRONI_CONFIGURATION`),
//! the `PATRONI_*` environment overrides, the `pgwarden:` section, validation
//! against the key table in `keys.tsv`, and the corrections Patroni makes with a
//! warning. It is the only crate that reads the environment for settings. It
//! does no network I/O and starts nothing.

mod address;
mod dynamic;
mod env;
pub mod hba;
pub mod keys;
pub mod logformat;
mod methods;
mod postgres_bin;
mod problem;
mod read;
pub use read::{parse_bool, parse_int};

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
    pub cafile: Option<PathBuf>,
    /// `none`, `optional` or `required`.
    pub verify_client: String,
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
    pub authentication: Option<BasicAuth>,
}

/// How to reach etcd (v3 API), from the `etcd:` or `etcd3:` section.
#[derive(Debug, Clone)]
pub struct Etcd {
    /// `etcd` or `etcd3`: which section the user wrote.
    pub section: &'static str,
    /// Endpoint URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
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
    /// libpq's `sslcrl`, `sslcrldir`, `gssencmode` and `channel_binding`:
    /// read for the replication and rewind users, whose connections are
    /// libpq's (primary_conninfo, pg_basebackup, pg_rewind); the
    /// superuser's own connection is not libpq's, so not for it.
    pub sslcrl: Option<PathBuf>,
    pub sslcrldir: Option<PathBuf>,
    pub gssencmode: Option<String>,
    pub channel_binding: Option<String>,
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
    /// `create_replica_methods` with their sections, in order.
    pub create_replica_methods: Vec<ReplicaMethod>,
    pub basebackup: Vec<ToolOption>,
    /// `recovery_conf`: recovery settings written for every standby
    /// (`restore_command`, `archive_cleanup_command`, ...).
    pub recovery_conf: BTreeMap<String, String>,
    /// Local override of the dynamic `postgresql.use_pg_rewind`.
    pub use_pg_rewind: Option<bool>,
    pub pg_ctl_timeout: Duration,
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags {
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub clonefrom: bool,
    pub nosync: bool,
    /// `replicatefrom`: the member to stream from (cascading replication);
    /// the leader while that member cannot serve.
    pub replicatefrom: Option<String>,
    /// `nostream`: never stream WAL (recover from the archive only).
    pub nostream: bool,
    pub failover_priority: Option<u32>,
    /// `sync_priority`: the others read it from the member key's tags.
    pub sync_priority: Option<u32>,
    /// The effective tags, as published in the member key and `/patroni`
    /// ([`effective_tags`]).
    pub json: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    Off,
    Automatic,
    Required,
}

#[derive(Debug, Clone)]
pub struct Watchdog {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    pub safety_margin: i64,
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

/// Where the YAML text came from, for messages.
#[derive(Debug, Clone)]
pub struct Source {
    pub origin: String,
    pub yaml: String,
}

impl Source {
    pub fn file(path: &Path) -> Result<Self, LoadError> {
        let yaml = std::fs::read_to_string(path).map_err(|e| LoadError {
            origin: path.display().to_string(),
            problems: vec![Problem {
                severity: Severity::Error,
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }],
        })?;
        Ok(Self { origin: path.display().to_string(), yaml })
    }
}

/// A config that loaded, with the warnings to print once.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub origin: String,
    pub warnings: Vec<Problem>,
}

/// A config that did not load: one problem per line, errors and warnings.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.problems.iter().filter(|p| p.severity == Severity::Error).count();
        writeln!(f, "invalid configuration {} ({errors} error(s)):", self.origin)?;
        for (idx, problem) in self.problems.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Loads the config as a pgwarden service does: `PATRONI_CONFIGURATION` if it
/// is set (then no other variable applies, as in Patroni), else the file at
/// `path` with the `PATRONI_*` overrides from the process environment.
pub fn load(path: Option<&Path>, purpose: Purpose) -> Result<Loaded, LoadError> {
    if let Ok(yaml) = std::env::var("PATRONI_CONFIGURATION") {
        let source = Source { origin: "PATRONI_CONFIGURATION".into(), yaml };
        return load_from(&source, std::iter::empty(), purpose);
    }
    let Some(path) = path else {
        return Err(LoadError {
            origin: "(none)".into(),
            problems: vec![Problem {
                severity: Severity::Error,
                path: String::new(),
                message: "no config file given: pass its path (as for `patroni /etc/patroni.yml`), --config FILE, \
                          or set PATRONI_CONFIGURATION"
                    .into(),
            }],
        });
    };
    let source = Source::file(path)?;
    load_from(&source, std::env::vars(), purpose)
}

/// Loads from YAML text and an explicit environment (tests pass their own).
pub fn load_from<I>(source: &Source, vars: I, purpose: Purpose) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let fail = |problems: Vec<Problem>| LoadError { origin: source.origin.clone(), problems };
    let mut problems = Problems::default();
    let root = match merge_layers(source, vars, &mut problems) {
        Ok(root) => root,
        Err(problem) => return Err(fail(vec![problem])),
    };
    keys::check_tree(&root, &mut problems);
    let config = build(&root, purpose, &mut problems);
    if problems.has_errors() {
        return Err(fail(problems.into_vec()));
    }
    let config = config.expect("a config without errors is complete");
    if purpose == Purpose::Agent
        && let Err(why) = config.postgres_binaries()
    {
        problems.error(if config.postgresql.bin_dir.is_some() { "postgresql.bin_dir" } else { "" }, why);
        return Err(fail(problems.into_vec()));
    }
    // The agent must be able to log in to its own PostgreSQL with the rules
    // it will run with: refused before anything is written.
    if purpose == Purpose::Agent
        && let Some((rules, source)) = hba::effective_rules(&config)
        && let Err(why) = hba::check_agent_access(&config, &rules, &hba::local_connection(&config), &source)
    {
        let has_data = config.postgresql.data_dir.join("PG_VERSION").exists();
        let path =
            if config.postgresql.pg_hba.is_empty() && !has_data { "bootstrap.pg_hba" } else { "postgresql.pg_hba" };
        problems.error(path, why);
        return Err(fail(problems.into_vec()));
    }
    Ok(Loaded { config, origin: source.origin.clone(), warnings: problems.into_vec() })
}

/// Layers: the YAML text, then the `PATRONI_*` overrides, merged by figment.
fn merge_layers<I>(source: &Source, vars: I, problems: &mut Problems) -> Result<Value, Problem>
where
    I: IntoIterator<Item = (String, String)>,
{
    if let Err(e) = serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(&source.yaml, yaml_options()) {
        return Err(yaml_syntax_problem(&e.to_string()));
    }
    let mut figment = Figment::new().merge(PatroniYaml::string(&source.yaml));
    let (overrides, ignored) = env::overrides(vars);
    for (path, value, _name) in overrides {
        figment = figment.merge(Serialized::default(&path, value));
    }
    for name in ignored {
        problems.warn("", format!("{name} belongs to a Patroni DCS pgwarden does not support; it is ignored"));
    }
    let root: Value = figment.extract().map_err(|e| yaml_syntax_problem(&e.to_string()))?;
    match root {
        Value::Object(_) => Ok(root),
        Value::Null => Ok(Value::Object(Map::new())),
        other => Err(Problem {
            severity: Severity::Error,
            path: String::new(),
            message: format!("the config must be a YAML mapping of keys, found {}", read::describe(&other)),
        }),
    }
}

/// YAML as PyYAML (and so Patroni) reads it where it matters: `y` and `n`
/// are strings (`name: n` is a member named "n"), not booleans. The readers
/// accept `yes`/`no`/`on`/`off` wherever a boolean is expected, as PyYAML does.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true, with_snippet: false }
}

/// figment's YAML format, backed by serde-saphyr with [`yaml_options`].
struct PatroniYaml;

impl figment::providers::Format for PatroniYaml {
    type Error = serde_saphyr::Error;

    const NAME: &'static str = "YAML";

    fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        serde_saphyr::from_str_with_options(text, yaml_options())
    }
}

fn yaml_syntax_problem(message: &str) -> Problem {
    // serde-saphyr says "what at line L, column C" (or "line L column C: what");
    // lead with the line so the user finds it at a glance.
    let first_line = message.lines().next().unwrap_or(message).trim().trim_start_matches("error:").trim();
    let number_after = |word: &str| -> Option<u32> {
        let rest = &first_line[first_line.find(word)? + word.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let line =
        number_after(" at line ").or_else(|| first_line.starts_with("line ").then(|| number_after("line ")).flatten());
    let column = number_after("column ");
    let what = match first_line.find(" at line ") {
        Some(idx) => &first_line[..idx],
        None => first_line.rsplit_once(": ").map_or(first_line, |(_, what)| what),
    };
    let path = line.map(|l| format!("line {l}")).unwrap_or_default();
    let at = column.map(|c| format!(" at column {c}")).unwrap_or_default();
    Problem { severity: Severity::Error, path, message: format!("YAML syntax error{at}: {what}") }
}

pub fn normalise_namespace(namespace: &str) -> String {
    let trimmed = namespace.trim().trim_matches('/');
    if trimmed.is_empty() { "/".into() } else { format!("/{trimmed}/") }
}

fn path_of(r: &mut Reader<'_>, key: &str) -> Option<PathBuf> {
    r.string(key).map(PathBuf::from)
}

fn secret_of(r: &mut Reader<'_>, key: &str) -> Option<Secret> {
    r.string(key).map(Secret)
}

fn basic_auth(r: &mut Reader<'_>, base: &str) -> Option<BasicAuth> {
    r.section(base)?;
    let username = r.string(&format!("{base}.username"));
    let password = secret_of(r, &format!("{base}.password"));
    match (username, password) {
        (Some(username), Some(password)) => Some(BasicAuth { username, password }),
        (None, None) => None,
        (Some(_), None) => {
            r.problems.error(format!("{base}.password"), "is required when username is set");
            None
        }
        (None, Some(_)) => {
            r.problems.error(format!("{base}.username"), "is required when password is set");
            None
        }
    }
}

fn tool_options(r: &mut Reader<'_>, path: &str) -> Vec<ToolOption> {
    let Some(value) = r.get(path) else {
        return Vec::new();
    };
    let describe = read::describe;
    match value {
        Value::Array(items) => {
            let mut out = Vec::new();
            for (idx, item) in items.iter().enumerate() {
                match item {
                    Value::String(flag) => out.push(ToolOption::Flag(flag.clone())),
                    Value::Object(map) if map.len() == 1 => {
                        let (key, value) = map.iter().next().expect("one entry");
                        match read::scalar_text(value) {
                            Some(text) => out.push(ToolOption::Value(key.clone(), text)),
                            None => r.problems.error(
                                format!("{path}[{idx}].{key}"),
                                format!("expected a string or number, found {}", describe(value)),
                            ),
                        }
                    }
                    other => r.problems.error(
                        format!("{path}[{idx}]"),
                        format!("expected an option (`- name` or `- name: value`), found {}", describe(other)),
                    ),
                }
            }
            out
        }
        // Patroni also accepts a map for `basebackup`: {checkpoint: fast, max-rate: 100M}.
        Value::Object(map) => map
            .iter()
            .filter_map(|(key, value)| read::scalar_text(value).map(|text| ToolOption::Value(key.clone(), text)))
            .collect(),
        other => {
            r.problems.error(path, format!("expected a list of options, found {}", describe(other)));
            Vec::new()
        }
    }
}

fn credentials(r: &mut Reader<'_>, base: &str, default_user: &str) -> Credentials {
    r.section(base);
    let libpq = !base.ends_with(".superuser");
    let choice = |r: &mut Reader<'_>, key: &str| {
        libpq.then(|| r.choice(&format!("{base}.{key}"), &["disable", "prefer", "require"])).flatten()
    };
    Credentials {
        sslcrl: libpq.then(|| path_of(r, &format!("{base}.sslcrl"))).flatten(),
        sslcrldir: libpq.then(|| path_of(r, &format!("{base}.sslcrldir"))).flatten(),
        gssencmode: choice(r, "gssencmode"),
        channel_binding: choice(r, "channel_binding"),
        username: r.string(&format!("{base}.username")).unwrap_or_else(|| default_user.to_string()),
        password: secret_of(r, &format!("{base}.password")),
        sslmode: r
            .choice(&format!("{base}.sslmode"), &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
        sslkey: path_of(r, &format!("{base}.sslkey")),
        sslcert: path_of(r, &format!("{base}.sslcert")),
        sslrootcert: path_of(r, &format!("{base}.sslrootcert")),
    }
}

fn etcd_section(r: &mut Reader<'_>, purpose: Purpose) -> Option<Etcd> {
    let others = ["consul", "zookeeper", "exhibitor", "kubernetes", "raft"];
    let present: Vec<&str> = ["etcd", "etcd3"].into_iter().chain(others).filter(|k| r.get(k).is_some()).collect();
    let section = match present.as_slice() {
        [one] if *one == "etcd" || *one == "etcd3" => {
            if *one == "etcd" {
                "etcd"
            } else {
                "etcd3"
            }
        }
        [] => {
            r.problems.error("etcd3", "no DCS section: add `etcd3:` with `hosts:` listing your etcd endpoints");
            return None;
        }
        [one] => {
            r.problems.error(*one, "pgwarden stores cluster state in etcd only: replace this section with `etcd3:`");
            return None;
        }
        many => {
            r.problems.error(
                many[1],
                format!("exactly one DCS section is allowed, found {}: keep one `etcd3:` section", many.join(", ")),
            );
            return None;
        }
    };
    let _ = purpose;
    let protocol = r.choice(&format!("{section}.protocol"), &["http", "https"]).unwrap_or_else(|| "http".into());
    let mut hosts: Vec<HostPort> = Vec::new();
    if let Some(host) = r.host_port(&format!("{section}.host")) {
        hosts.push(host);
    }
    let hosts_path = format!("{section}.hosts");
    match r.get(&hosts_path) {
        None => {}
        Some(Value::String(text)) => {
            for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match HostPort::parse(item) {
                    Ok(hp) => hosts.push(hp),
                    Err(why) => r.problems.error(hosts_path.clone(), why),
                }
            }
        }
        Some(Value::Array(items)) => {
            for (idx, item) in items.iter().enumerate() {
                match item.as_str().map(HostPort::parse) {
                    Some(Ok(hp)) => hosts.push(hp),
                    Some(Err(why)) => r.problems.error(format!("{hosts_path}[{idx}]"), why),
                    None => r.problems.error(
                        format!("{hosts_path}[{idx}]"),
                        format!("expected host:port, found {}", read::describe(item)),
                    ),
                }
            }
        }
        Some(other) => r.problems.error(
            hosts_path.clone(),
            format!("expected a list of host:port or one comma-separated string, found {}", read::describe(other)),
        ),
    }
    let mut endpoints: Vec<String> = hosts.iter().map(|hp| format!("{protocol}://{hp}")).collect();
    if let Some(url) = r.string(&format!("{section}.url")) {
        let ok = url.starts_with("http://") || url.starts_with("https://");
        if ok {
            endpoints.push(url.trim_end_matches('/').to_string());
        } else {
            r.problems.error(
                format!("{section}.url"),
                format!("expected http://host:port or https://host:port, found {url:?}"),
            );
        }
    }
    if endpoints.is_empty() && !r.problems.has_errors() {
        r.problems
            .error(format!("{section}.hosts"), "no etcd endpoint: set `hosts: [host:port, ...]` or `host: host:port`");
    }
    Some(Etcd {
        section,
        endpoints,
        username: r.string(&format!("{section}.username")),
        password: secret_of(r, &format!("{section}.password")),
        cacert: path_of(r, &format!("{section}.cacert")),
        cert: path_of(r, &format!("{section}.cert")),
        key: path_of(r, &format!("{section}.key")),
    })
}

/// The tags Patroni treats as booleans (and leaves out of a member's
/// published tags when false).
pub const BOOLEAN_TAGS: &[&str] = &["clonefrom", "nofailover", "noloadbalance", "nosync", "nostream"];

/// The tags a member publishes, as Patroni's: a boolean tag only when it is
/// true (and `nofailover` also when `failover_priority` is set, so the two
/// can be reconciled), every other tag as written.
pub fn effective_tags(tags: &Map<String, Value>) -> Map<String, Value> {
    tags.iter()
        .filter(|(name, value)| {
            !BOOLEAN_TAGS.contains(&name.as_str())
                || parse_bool(value) == Some(true)
                || (name.as_str() == "nofailover" && tags.contains_key("failover_priority"))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn tags(r: &mut Reader<'_>) -> Tags {
    let json = effective_tags(&r.section("tags").cloned().unwrap_or_default());
    let priority = |r: &mut Reader<'_>, key: &str| r.int(key, 0, i64::from(u32::MAX)).map(|n| n as u32);
    Tags {
        nofailover: r.bool("tags.nofailover", false),
        noloadbalance: r.bool("tags.noloadbalance", false),
        clonefrom: r.bool("tags.clonefrom", false),
        nosync: r.bool("tags.nosync", false),
        replicatefrom: r.string("tags.replicatefrom").filter(|name| !name.is_empty()),
        nostream: r.bool("tags.nostream", false),
        failover_priority: priority(r, "tags.failover_priority"),
        sync_priority: priority(r, "tags.sync_priority"),
        json,
    }
}

/// `log.mode` as Patroni users write it: `0640`. A YAML 1.1 reader (Python,
/// Patroni) reads that as octal; this YAML 1.2 reader gives the number 640.
/// Permissions are always written in octal, so a number whose digits are
/// all octal digits is read as octal (640 is 0640); one with an 8 or 9 is
/// taken as already converted to decimal (384 is 0600). A string (`"0640"`)
/// is octal. (A decimal mode whose digits are all octal, such as 420 for
/// 0644, is misread: write modes in octal.)
fn log_mode(value: &Value) -> Option<u32> {
    let text = match value {
        Value::Number(n) => n.as_u64()?.to_string(),
        Value::String(s) => s.trim().trim_start_matches("0o").to_string(),
        _ => return None,
    };
    let mode = if text.chars().all(|c| ('0'..='7').contains(&c)) {
        u32::from_str_radix(&text, 8).ok()?
    } else {
        text.parse().ok()?
    };
    (mode <= 0o777).then_some(mode)
}

fn log_section(r: &mut Reader<'_>) -> Log {
    r.section("log");
    let level = r
        .choice("log.level", &["debug", "info", "warning", "warn", "error", "critical", "fatal", "notset"])
        .map(|level| match level.as_str() {
            "warning" | "warn" => "warn".to_string(),
            "critical" | "fatal" => "error".to_string(),
            "notset" => "trace".to_string(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "info".into());
    let json = r.choice("log.type", &["plain", "json"]).is_some_and(|t| t == "json");
    let format = match r.get("log.format") {
        // With type json Patroni takes a list of field names; pgwarden's json
        // lines always carry timestamp, level, target and fields.
        Some(_) if json => {
            r.problems.warn(
                "log.format",
                "is ignored with log.type json: each json line carries timestamp, level, target and the fields",
            );
            None
        }
        Some(_) => r
            .string("log.format")
            .and_then(|text| logformat::parse_format(&text).map_err(|why| r.problems.error("log.format", why)).ok()),
        None => None,
    };
    let dateformat = r.string("log.dateformat").and_then(|text| {
        logformat::parse_dateformat(&text).map_err(|why| r.problems.error("log.dateformat", why)).ok()
    });
    // Patroni's `log.mode`: the log files' permissions (an integer, 0-511;
    // YAML's 0640 reads as octal). pgwarden's default is 0600, not the umask:
    // logs name members, addresses and refused clients.
    let mode = match r.get("log.mode") {
        None | Some(Value::Null) => 0o600,
        Some(value) => match log_mode(value) {
            Some(mode) => mode,
            None => {
                r.problems
                    .error("log.mode", format!("expected file permissions in octal, such as 0640; found {value}"));
                0o600
            }
        },
    };
    let file_size = r.int("log.file_size", 0, i64::MAX).map_or(25_000_000, |n| n as u64);
    let file_num = r.int("log.file_num", 0, 1000).map_or(4, |n| n as u32);
    let static_fields = match r.get("log.static_fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(fields)) => fields.clone(),
        Some(other) => {
            r.problems.error(
                "log.static_fields",
                format!("expected a mapping of field names to values, found {}", read::describe(other)),
            );
            Map::new()
        }
    };
    if !static_fields.is_empty() && !json {
        r.problems.warn("log.static_fields", "applies to log.type json only (as in Patroni): ignored with plain logs");
    }
    let deduplicate_heartbeat_logs = r.bool("log.deduplicate_heartbeat_logs", false);
    Log {
        level,
        json,
        format,
        dir: path_of(r, "log.dir"),
        dateformat,
        mode,
        file_size,
        file_num,
        static_fields,
        deduplicate_heartbeat_logs,
    }
}

fn pgwarden_section(r: &mut Reader<'_>, restapi: &RestApi) -> Option<Pgwarden> {
    r.section("pgwarden");
    let derived = |r: &mut Reader<'_>, key: &str, base: &HostPort, offset: u16| -> Option<HostPort> {
        match r.host_port(key) {
            Some(hp) => Some(hp),
            None if r.get(key).is_some() => None,
            None => {
                base.with_port_offset(offset).map_err(|why| r.problems.error(key, format!("cannot derive: {why}"))).ok()
            }
        }
    };
    // A connect address defaults to restapi.connect_address's host with the
    // listener's port (so an explicit listener port is advertised as is).
    let advertised = |r: &mut Reader<'_>, key: &str, listen: &Option<HostPort>| -> Option<HostPort> {
        match r.host_port(key) {
            Some(hp) => Some(hp),
            None if r.get(key).is_some() => None,
            None => listen.as_ref().map(|l| HostPort::new(restapi.connect_address.host.clone(), l.port)),
        }
    };
    let agent_grpc_listen = derived(r, "pgwarden.agent_grpc_listen", &restapi.listen, AGENT_GRPC_PORT_OFFSET);
    let agent_grpc_connect_address = advertised(r, "pgwarden.agent_grpc_connect_address", &agent_grpc_listen);
    let controller_grpc_listen =
        derived(r, "pgwarden.controller_grpc_listen", &restapi.listen, CONTROLLER_GRPC_PORT_OFFSET);
    let controller_grpc_connect_address =
        advertised(r, "pgwarden.controller_grpc_connect_address", &controller_grpc_listen);
    // Durations in seconds: any bound past a day is a typo (and 1e308 would
    // not fit a Duration; found by `make fuzz`).
    const SECONDS_IN_A_DAY: f64 = 86_400.0;
    let fence_margin = r.number("pgwarden.fence_margin", 0.0, SECONDS_IN_A_DAY).unwrap_or(2.0);
    if fence_margin < FENCE_WORST_CASE.as_secs_f64() {
        r.problems.error(
            "pgwarden.fence_margin",
            format!(
                "{fence_margin} s is shorter than the fencer's worst case to stop PostgreSQL ({} s: `pg_ctl stop -m \
                 immediate`, then a kill and its check): the lease could expire, and a replica be promoted, before \
                 the old primary is stopped; set at least {}",
                FENCE_WORST_CASE.as_secs_f64(),
                FENCE_WORST_CASE.as_secs_f64()
            ),
        );
    }
    let etcd_request_timeout =
        r.number("pgwarden.etcd_request_timeout", 0.1, SECONDS_IN_A_DAY).map(Duration::from_secs_f64);
    let require_fencer = r.bool("pgwarden.require_fencer", true);
    let grpc_tls = grpc_tls(r);
    Some(Pgwarden {
        agent_grpc_listen: agent_grpc_listen?,
        agent_grpc_connect_address: agent_grpc_connect_address?,
        controller_grpc_listen: controller_grpc_listen?,
        controller_grpc_connect_address: controller_grpc_connect_address?,
        fence_margin: Duration::from_secs_f64(fence_margin),
        etcd_request_timeout,
        require_fencer,
        grpc_tls,
    })
}

fn grpc_tls(r: &mut Reader<'_>) -> Option<GrpcTls> {
    let certfile = path_of(r, "pgwarden.grpc_certfile");
    let keyfile = path_of(r, "pgwarden.grpc_keyfile");
    let cafile = path_of(r, "pgwarden.grpc_cafile");
    let verify_client = r.choice("pgwarden.grpc_verify_client", &["none", "required"]);
    let Some(certfile) = certfile else {
        for key in ["pgwarden.grpc_keyfile", "pgwarden.grpc_cafile", "pgwarden.grpc_verify_client"] {
            if r.get(key).is_some() {
                r.problems
                    .error(key, "is set but pgwarden.grpc_certfile is not: gRPC TLS needs this node's certificate");
            }
        }
        return None;
    };
    let Some(cafile) = cafile else {
        r.problems.error(
            "pgwarden.grpc_certfile",
            "is set but pgwarden.grpc_cafile is not: set it to the CA that signed the members' gRPC certificates",
        );
        return None;
    };
    Some(GrpcTls {
        keyfile: keyfile.unwrap_or_else(|| certfile.clone()),
        certfile,
        cafile,
        verify_client: verify_client.is_none_or(|v| v == "required"),
    })
}

/// Reads every section; `None` when a required piece is missing (the problem
/// is recorded).
fn build(root: &Value, purpose: Purpose, problems: &mut Problems) -> Option<Config> {
    let mut r = Reader::new(root, problems);
    let node = purpose != Purpose::Ctl;
    let scope = r.required_string("scope", "the cluster name, the same on every member");
    let name = if node {
        r.required_string("name", "this member's name, unique in the cluster")
    } else {
        Some(r.string("name").unwrap_or_default())
    };
    let namespace = normalise_namespace(&r.string("namespace").unwrap_or_else(|| "/service/".into()));
    // Each names one level of the etcd layout: a `/` or `..` would land in
    // (and collide with) another cluster's or member's keys.
    for (key, value) in [("scope", scope.as_deref()), ("name", name.as_deref())] {
        if let Some(value) = value
            && (value.contains('/') || value == "." || value == "..")
        {
            r.problems.error(key, format!("{value:?} cannot name an etcd key level: no `/`, `.` or `..`"));
        }
    }
    if namespace.split('/').any(|level| level == ".." || level == ".") {
        r.problems.error("namespace", format!("{namespace:?}: `.` and `..` are not allowed in the etcd path"));
    }

    r.section("restapi");
    let listen = if node {
        match r.host_port("restapi.listen") {
            Some(listen) => Some(listen),
            None if r.get("restapi.listen").is_some() => None,
            None => {
                r.problems
                    .error("restapi.listen", "is required (host:port of this member's REST API, e.g. 0.0.0.0:8008)");
                None
            }
        }
    } else {
        r.host_port("restapi.listen").or_else(|| Some(HostPort::new("127.0.0.1", 8008)))
    };
    let connect_address = r.host_port("restapi.connect_address");
    let restapi = listen.map(|listen| RestApi {
        connect_address: connect_address.unwrap_or_else(|| HostPort::new(listen.connectable_host(), listen.port)),
        listen,
        certfile: path_of(&mut r, "restapi.certfile"),
        keyfile: path_of(&mut r, "restapi.keyfile"),
        keyfile_password: secret_of(&mut r, "restapi.keyfile_password"),
        cafile: path_of(&mut r, "restapi.cafile"),
        verify_client: r
            .choice("restapi.verify_client", &["none", "optional", "required"])
            .unwrap_or_else(|| "none".into()),
        authentication: basic_auth(&mut r, "restapi.authentication"),
        allowlist: allowlist(&mut r),
        allowlist_include_members: r.bool("restapi.allowlist_include_members", false),
        extra_headers: {
            let mut headers = header_map(&mut r, "restapi.http_extra_headers");
            let https = header_map(&mut r, "restapi.https_extra_headers");
            if r.get("restapi.certfile").is_some() {
                headers.extend(https);
            }
            headers
        },
        server_tokens: server_tokens(&mut r),
    });

    r.section("ctl");
    let ctl = Ctl {
        cacert: path_of(&mut r, "ctl.cacert"),
        certfile: path_of(&mut r, "ctl.certfile"),
        keyfile: path_of(&mut r, "ctl.keyfile"),
        authentication: basic_auth(&mut r, "ctl.authentication"),
    };
    let etcd = etcd_section(&mut r, purpose);

    r.section("bootstrap");
    r.section("bootstrap.dcs");
    let (dcs, dcs_json) = DynamicConfig::read(root, "bootstrap.dcs", r.problems);
    let mut users = BTreeMap::new();
    if let Some(section) = r.section("bootstrap.users") {
        for name in section.keys() {
            let base = format!("bootstrap.users.{name}");
            r.section(&base);
            users.insert(
                name.clone(),
                BootstrapUser {
                    password: secret_of(&mut r, &format!("{base}.password")),
                    options: r.string_list(&format!("{base}.options")),
                },
            );
        }
    }
    let bootstrap = Bootstrap {
        dcs,
        dcs_json,
        initdb: tool_options(&mut r, "bootstrap.initdb"),
        pg_hba: r.string_list("bootstrap.pg_hba"),
        users,
        method: methods::bootstrap_method(&mut r),
        post_bootstrap: r.string("bootstrap.post_bootstrap").or_else(|| r.string("bootstrap.post_init")),
    };
    let named: Vec<&str> = bootstrap.method.iter().map(|m| m.name.as_str()).collect();
    methods::warn_unnamed_sections(&mut r, "bootstrap", &named, "bootstrap.method");

    r.section("postgresql");
    let data_dir = if node {
        r.required_string("postgresql.data_dir", "the PostgreSQL data directory of this member")
    } else {
        Some(r.string("postgresql.data_dir").unwrap_or_default())
    };
    let listen = r.listen("postgresql.listen");
    if node && listen.is_none() && r.get("postgresql.listen").is_none() {
        r.problems.error("postgresql.listen", "is required (addresses PostgreSQL listens on, e.g. 0.0.0.0:5432)");
    }
    let connect_address = r.host_port("postgresql.connect_address");
    let mut bin_name = BTreeMap::new();
    if let Some(section) = r.section("postgresql.bin_name") {
        for key in section.keys() {
            if let Some(file) = r.string(&format!("postgresql.bin_name.{key}")) {
                bin_name.insert(key.clone(), file);
            }
        }
    }
    r.section("postgresql.authentication");
    let authentication = Authentication {
        superuser: credentials(&mut r, "postgresql.authentication.superuser", "postgres"),
        replication: credentials(&mut r, "postgresql.authentication.replication", "replicator"),
        rewind: r
            .get("postgresql.authentication.rewind")
            .is_some()
            .then(|| credentials(&mut r, "postgresql.authentication.rewind", "rewind_user")),
    };
    let mut parameters = dynamic::parameter_map(&mut r, "postgresql.parameters");
    dynamic::translate_renamed_parameters(&mut parameters, "postgresql.parameters", r.problems);
    let mut callbacks = BTreeMap::new();
    if let Some(section) = r.section("postgresql.callbacks") {
        for key in section.keys() {
            if let Some(command) = r.string(&format!("postgresql.callbacks.{key}")) {
                callbacks.insert(key.clone(), command);
            }
        }
    }
    let create_replica_methods = methods::replica_methods(&mut r);
    let named: Vec<&str> = create_replica_methods.iter().map(ReplicaMethod::name).collect();
    methods::warn_unnamed_sections(&mut r, "postgresql", &named, "postgresql.create_replica_methods");
    let postgresql = Postgresql {
        listen,
        connect_address,
        data_dir: PathBuf::from(data_dir.clone().unwrap_or_default()),
        config_dir: path_of(&mut r, "postgresql.config_dir").filter(|d| !d.as_os_str().is_empty()),
        custom_conf: path_of(&mut r, "postgresql.custom_conf").filter(|f| !f.as_os_str().is_empty()),
        bin_dir: path_of(&mut r, "postgresql.bin_dir"),
        bin_name,
        pgpass: path_of(&mut r, "postgresql.pgpass"),
        authentication,
        parameters,
        pg_hba: r.string_list("postgresql.pg_hba"),
        pg_ident: r.string_list("postgresql.pg_ident"),
        create_replica_methods,
        basebackup: tool_options(&mut r, "postgresql.basebackup"),
        recovery_conf: methods::standby_recovery_conf(&mut r),
        use_pg_rewind: r.get("postgresql.use_pg_rewind").is_some().then(|| r.bool("postgresql.use_pg_rewind", false)),
        pg_ctl_timeout: Duration::from_secs(r.int("postgresql.pg_ctl_timeout", 1, 86_400).unwrap_or(60) as u64),
        callbacks,
        pre_promote: r.string("postgresql.pre_promote"),
        before_stop: r.string("postgresql.before_stop"),
        remove_data_directory_on_rewind_failure: r.bool("postgresql.remove_data_directory_on_rewind_failure", false),
        remove_data_directory_on_diverged_timelines: r
            .bool("postgresql.remove_data_directory_on_diverged_timelines", false),
        use_unix_socket: r.bool("postgresql.use_unix_socket", false),
        use_unix_socket_repl: r.bool("postgresql.use_unix_socket_repl", false),
    };

    let tags = tags(&mut r);
    r.section("watchdog");
    let watchdog = Watchdog {
        mode: match r.choice("watchdog.mode", &["off", "automatic", "required"]).as_deref() {
            Some("automatic") => WatchdogMode::Automatic,
            Some("required") => WatchdogMode::Required,
            Some(_) => WatchdogMode::Off,
            // Patroni's default is `automatic`; with no watchdog device that is off.
            None => WatchdogMode::Automatic,
        },
        device: path_of(&mut r, "watchdog.device").unwrap_or_else(|| PathBuf::from("/dev/watchdog")),
        safety_margin: r.int("watchdog.safety_margin", -1, 3600).unwrap_or(5),
    };
    // Patroni's `watchdog.driver`: `default` (the Linux device) is the one
    // pgwarden has; Patroni's `testing` driver (its test suite's fake) is
    // not, and the device is used instead.
    if let Some(driver) = r.string("watchdog.driver")
        && driver != "default"
    {
        r.problems.warn(
            "watchdog.driver",
            format!("only the default driver (the Linux watchdog device) exists in pgwarden; {driver:?} is ignored"),
        );
    }
    let log = log_section(&mut r);
    let pgwarden = restapi.as_ref().and_then(|restapi| pgwarden_section(&mut r, restapi));
    // The fence must be complete before the lease can expire: a margin of a
    // whole ttl or more leaves no time to lead at all.
    if let Some(section) = &pgwarden
        && section.fence_margin >= Duration::from_secs(u64::from(bootstrap.dcs.ttl))
    {
        r.problems.error(
            "pgwarden.fence_margin",
            format!(
                "{:?} must be below bootstrap.dcs.ttl ({} s): the leader is fenced that long before its lease expires",
                section.fence_margin, bootstrap.dcs.ttl
            ),
        );
    }
    // A data directory that is a system directory: never managed (the
    // ownership check would otherwise advise `chown -R postgres /`).
    if node && let Some(dir) = data_dir.as_deref() {
        let trimmed = dir.trim_end_matches('/');
        if ["", "/etc", "/usr", "/var", "/var/lib", "/home", "/root", "/tmp", "/bin", "/boot", "/opt", "/srv"]
            .contains(&trimmed)
        {
            r.problems.error(
                "postgresql.data_dir",
                format!("{dir:?} is a system directory: give PostgreSQL a directory of its own, such as /var/lib/postgresql/15/main"),
            );
        }
    }

    // A relative config_dir would depend on the directory the agent starts
    // in (Patroni's): refused rather than guessed.
    if let Some(dir) = postgresql.config_dir.as_ref().filter(|d| d.is_relative()) {
        r.problems.error(
            "postgresql.config_dir",
            format!("{} is a relative path: give the absolute one (e.g. /etc/postgresql/15/main)", dir.display()),
        );
    }

    if let Some(etcd) = &etcd
        && etcd.section == "etcd"
    {
        r.problems.notice(
            "etcd",
            "read as etcd's v3 API, like `etcd3:`; Patroni drives this section through etcd's v2 API, so at start the \
             agent looks for the scope in etcd's v2 keyspace and refuses, touching nothing, while a cluster lives \
             there (docs/migrating-from-patroni.md: `pgwardenctl migrate-v2` moves it)",
        );
    }
    Some(Config {
        scope: scope?,
        namespace,
        name: name?,
        restapi: restapi?,
        ctl,
        etcd: etcd?,
        bootstrap,
        postgresql: Postgresql { data_dir: PathBuf::from(data_dir?), ..postgresql },
        tags,
        watchdog,
        log,
        pgwarden: pgwarden?,
    })
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
            serde_json::from_str(r#"{"clonefrom":"true","nostream":true,"sync_priority":"0","dc":"east"}"#)
                .expect("json");
        assert_eq!(effective_tags(&tags), published);
        // nofailover stays beside failover_priority, false or not, as in Patroni.
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
