//! Readers of the config's sections (REST API, etcd, tags, log, the
//! `pgwarden:` section, ...), each turning its keys into typed settings and
//! reporting what it cannot use.

use super::*;

pub(crate) fn path_of(r: &mut Reader<'_>, key: &str) -> Option<PathBuf> {
    r.string(key).map(PathBuf::from)
}

pub(crate) fn secret_of(r: &mut Reader<'_>, key: &str) -> Option<Secret> {
    r.string(key).map(Secret)
}

pub(crate) fn basic_auth(r: &mut Reader<'_>, base: &str) -> Option<BasicAuth> {
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

pub(crate) fn tool_options(r: &mut Reader<'_>, path: &str) -> Vec<ToolOption> {
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

/// `pg_ctl_timeout` in seconds (1 s to a day); `None`: unset.
pub(crate) fn pg_ctl_timeout(r: &mut Reader<'_>, path: &str) -> Option<std::time::Duration> {
    r.int(path, 1, 86_400).map(|n| std::time::Duration::from_secs(n as u64))
}

/// pg_rewind's options pgwarden sets itself (or that would change what it
/// does), which `rewind` may not give: Patroni's list.
const REWIND_OPTIONS_NOT_ALLOWED: &[&str] = &[
    "target-pgdata",
    "source-pgdata",
    "source-server",
    "write-recovery-conf",
    "dry-run",
    "restore-target-wal",
    "config-file",
    "no-ensure-shutdown",
    "version",
    "help",
];

/// `rewind`: extra pg_rewind options; one of those pgwarden sets itself is
/// dropped with a warning (Patroni logs an error and drops it).
pub(crate) fn rewind_options(r: &mut Reader<'_>, path: &str) -> Vec<ToolOption> {
    let mut options = tool_options(r, path);
    options.retain(|option| {
        let name = match option {
            ToolOption::Flag(name) | ToolOption::Value(name, _) => name,
        };
        let allowed = !REWIND_OPTIONS_NOT_ALLOWED.contains(&name.trim_start_matches('-'));
        if !allowed {
            r.problems.warn(path, format!("`{name}` is pgwarden's to set for pg_rewind: dropped"));
        }
        allowed
    });
    options
}

pub(crate) fn credentials(r: &mut Reader<'_>, base: &str, default_user: &str) -> Credentials {
    r.section(base);
    let choice = |r: &mut Reader<'_>, key: &str| r.choice(&format!("{base}.{key}"), &["disable", "prefer", "require"]);
    Credentials {
        sslcrl: path_of(r, &format!("{base}.sslcrl")),
        sslcrldir: path_of(r, &format!("{base}.sslcrldir")),
        gssencmode: choice(r, "gssencmode"),
        channel_binding: choice(r, "channel_binding"),
        sslpassword: secret_of(r, &format!("{base}.sslpassword")).filter(|password| {
            // It goes on a line of libpq's service file.
            let one_line = !password.expose().contains(['\n', '\r']);
            if !one_line {
                r.problems.error(format!("{base}.sslpassword"), "must be one line (it has a line break)");
            }
            one_line
        }),
        sslnegotiation: r.choice(&format!("{base}.sslnegotiation"), &["postgres", "direct"]),
        username: r.string(&format!("{base}.username")).unwrap_or_else(|| default_user.to_string()),
        password: secret_of(r, &format!("{base}.password")),
        sslmode: r
            .choice(&format!("{base}.sslmode"), &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
        sslkey: path_of(r, &format!("{base}.sslkey")),
        sslcert: path_of(r, &format!("{base}.sslcert")),
        sslrootcert: path_of(r, &format!("{base}.sslrootcert")),
    }
}

pub(crate) fn etcd_section(r: &mut Reader<'_>, purpose: Purpose) -> Option<Etcd> {
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
    // Patroni's `proxy`: the one URL to use, instead of every other, and
    // no member discovery (as `use_proxies`).
    let mut use_proxies = r.bool(&format!("{section}.use_proxies"), false);
    if let Some(proxy) = r.string(&format!("{section}.proxy")) {
        if proxy.starts_with("http://") || proxy.starts_with("https://") {
            if !endpoints.is_empty() {
                r.problems.warn(
                    format!("{section}.proxy"),
                    "is set: the other etcd addresses (host, hosts, url) are not used, as in Patroni",
                );
            }
            endpoints = vec![proxy.trim_end_matches('/').to_string()];
            use_proxies = true;
        } else {
            r.problems.error(
                format!("{section}.proxy"),
                format!("expected http://host:port or https://host:port, found {proxy:?}"),
            );
        }
    }
    // Patroni's `srv`: etcd's client URLs from DNS SRV records under this
    // domain, looked up at each connect; `host(s)`/`url` only when none
    // answer (`proxy` wins over it, as in Patroni).
    let srv = r.string(&format!("{section}.srv")).filter(|domain| !domain.trim().is_empty());
    let srv_suffix = r.string(&format!("{section}.srv_suffix")).filter(|suffix| !suffix.trim().is_empty());
    let srv = match (srv, use_proxies && r.get(&format!("{section}.proxy")).is_some()) {
        (Some(_), true) => {
            r.problems.warn(format!("{section}.srv"), "is set beside proxy: proxy is used, as in Patroni");
            None
        }
        (Some(domain), false) => {
            Some(SrvDiscovery { domain: domain.trim().trim_end_matches('.').to_string(), suffix: srv_suffix })
        }
        (None, _) => {
            if srv_suffix.is_some() {
                r.problems.warn(format!("{section}.srv_suffix"), "has no effect without srv");
            }
            None
        }
    };
    if endpoints.is_empty() && srv.is_none() && !r.problems.has_errors() {
        r.problems.error(
            format!("{section}.hosts"),
            "no etcd endpoint: set `hosts: [host:port, ...]`, `host: host:port` or `srv: <DNS domain>`",
        );
    }
    Some(Etcd {
        section,
        endpoints,
        srv,
        use_proxies,
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
/// true (and `nofailover` also when `failover_priority` is set, `nosync`
/// when `sync_priority` is, so the two can be reconciled), every other tag
/// as written.
pub fn effective_tags(tags: &Map<String, Value>) -> Map<String, Value> {
    tags.iter()
        .filter(|(name, value)| {
            !BOOLEAN_TAGS.contains(&name.as_str())
                || parse_bool(value) == Some(true)
                || (name.as_str() == "nofailover" && tags.contains_key("failover_priority"))
                || (name.as_str() == "nosync" && tags.contains_key("sync_priority"))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// A boolean tag and its priority tag (`nofailover` and
/// `failover_priority`, `nosync` and `sync_priority`) reconciled as Patroni
/// does: the boolean, when written, wins; without it a priority of 0 or
/// less means "never"; a member that never takes part has priority 0. An
/// explicit `nofailover: false` with `failover_priority: 0` (or less) takes
/// part with priority 0, below every member of priority 1 or more, as in
/// Patroni (a negative priority counts as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagPair {
    pub never: bool,
    pub priority: u32,
}

impl TagPair {
    pub fn reconcile(flag: Option<bool>, priority: Option<i64>) -> Self {
        let never = flag.unwrap_or_else(|| priority.is_some_and(|p| p <= 0));
        let priority = match priority {
            _ if never => 0,
            Some(p) => u32::try_from(p.max(0)).unwrap_or(u32::MAX),
            None => 1,
        };
        TagPair { never, priority }
    }

    /// Reads the pair from a tags map as Patroni reads any member's tags
    /// (booleans and numbers also as strings).
    pub fn from_tags(tags: &Map<String, Value>, flag: &str, priority: &str) -> Self {
        Self::reconcile(tags.get(flag).and_then(parse_bool), tags.get(priority).and_then(parse_int))
    }
}

/// Patroni's warning for a boolean tag and a priority tag that disagree
/// (`nofailover: true` with `failover_priority: 1`, or `nofailover: false`
/// with `failover_priority: 0`), in Patroni's words, which operators grep for.
fn conflicting_tags(tags: &Map<String, Value>, flag: &str, priority: &str) -> Option<String> {
    let written = tags.get(flag)?;
    let number = tags.get(priority).and_then(parse_int)?;
    let truthy = python_truth(written);
    if truthy == (number > 0) {
        let shown = python_repr(written);
        return Some(format!(
            "Conflicting configuration between {flag}: {shown} and {priority}: {number}. Defaulting to {flag}: {shown}"
        ));
    }
    None
}

/// Python's `bool(value)` for a YAML value, as Patroni applies it to a tag.
fn python_truth(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A scalar as Python's `str()` prints it (`True`, `False`, `None`).
fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn tags(r: &mut Reader<'_>) -> Tags {
    let written = r.section("tags").cloned().unwrap_or_default();
    let json = effective_tags(&written);
    // Any integer is taken, as Patroni takes it (0 or less: never).
    let priority = |r: &mut Reader<'_>, key: &str| r.int(key, i64::MIN, i64::from(u32::MAX));
    let flag = |r: &mut Reader<'_>, key: &str| r.get(key).is_some().then(|| r.bool(key, false));
    let failover = TagPair::reconcile(flag(r, "tags.nofailover"), priority(r, "tags.failover_priority"));
    let sync = TagPair::reconcile(flag(r, "tags.nosync"), priority(r, "tags.sync_priority"));
    for (flag, priority) in [("nofailover", "failover_priority"), ("nosync", "sync_priority")] {
        if let Some(warning) = conflicting_tags(&written, flag, priority) {
            r.problems.warn(format!("tags.{priority}"), warning);
        }
    }
    Tags {
        nofailover: failover.never,
        noloadbalance: r.bool("tags.noloadbalance", false),
        clonefrom: r.bool("tags.clonefrom", false),
        nosync: sync.never,
        replicatefrom: r.string("tags.replicatefrom").filter(|name| !name.is_empty()),
        nostream: r.bool("tags.nostream", false),
        failover_priority: failover.priority,
        sync_priority: sync.priority,
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
pub(crate) fn log_mode(value: &Value) -> Option<u32> {
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

pub(crate) fn log_section(r: &mut Reader<'_>) -> Log {
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
    let loggers = loggers(r);
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
        loggers,
    }
}

/// Patroni's logger names and the pgwarden log targets that do their work.
const LOGGER_TARGETS: &[(&str, &[&str])] = &[
    ("patroni.ha", &["node_agent::ha"]),
    ("patroni.postmaster", &["node_agent::postgres", "pg_local"]),
    ("patroni.postgresql", &["node_agent::postgres", "node_agent::sql", "node_agent::confdir"]),
    ("patroni.postgresql.slots", &["node_agent::ha::slots"]),
    ("patroni.postgresql.sync", &["node_agent::ha::sync"]),
    ("patroni.postgresql.callback_executor", &["node_agent::callbacks"]),
    ("patroni.dcs", &["dcs", "election"]),
    ("patroni.dcs.etcd", &["dcs", "election"]),
    ("patroni.dcs.etcd3", &["dcs", "election"]),
    ("patroni.api", &["health_api"]),
    ("patroni.request", &["node_agent::peers", "pgwarden_workflows"]),
    ("patroni.watchdog", &["node_agent::watchdog"]),
    ("patroni.ctl", &["pgwarden_cli"]),
    ("patroni", &["node_agent", "health_api", "controller", "dcs", "election", "pgwarden_workflows"]),
    ("urllib3", &["hyper", "hyper_util", "h2", "tonic"]),
    ("etcd.client", &["etcd_client"]),
];

/// pgwarden's own log targets, which `log.loggers` may also name.
const OWN_TARGETS: &[&str] = &[
    "node_agent",
    "health_api",
    "controller",
    "dcs",
    "election",
    "pgwarden_workflows",
    "pgwarden_cli",
    "pgwarden_runtime",
    "pg_local",
    "ha_core",
];

/// `log.loggers`: a level per Patroni logger (`patroni.postmaster:
/// WARNING`), as `tracing` filter directives for the pgwarden targets that
/// do that logger's work, or for a pgwarden target named as such
/// (`node_agent::ha::sync: DEBUG`). A name with no counterpart is ignored
/// with a warning.
fn loggers(r: &mut Reader<'_>) -> Vec<String> {
    let Some(section) = r.section("log.loggers") else { return Vec::new() };
    let mut directives = Vec::new();
    for (name, value) in section {
        let path = format!("log.loggers.{name}");
        let level = match value.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("debug") => "debug",
            Some("info") => "info",
            Some("warning" | "warn") => "warn",
            Some("error" | "critical" | "fatal") => "error",
            Some("notset") => "trace",
            _ => {
                r.problems.error(&path, "expected a level: DEBUG, INFO, WARNING, ERROR or CRITICAL");
                continue;
            }
        };
        let targets: Vec<&str> = match LOGGER_TARGETS.iter().find(|(patroni, _)| patroni == name) {
            Some((_, targets)) => targets.to_vec(),
            None if OWN_TARGETS.iter().any(|t| name == t || name.starts_with(&format!("{t}::")))
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') =>
            {
                vec![name.as_str()]
            }
            None => {
                r.problems.warn(
                    &path,
                    "names no Patroni logger pgwarden has a counterpart for, nor a pgwarden target: ignored",
                );
                continue;
            }
        };
        directives.extend(targets.into_iter().map(|target| format!("{target}={level}")));
    }
    directives
}

pub(crate) fn pgwarden_section(r: &mut Reader<'_>, restapi: &RestApi) -> Option<Pgwarden> {
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

pub(crate) fn grpc_tls(r: &mut Reader<'_>) -> Option<GrpcTls> {
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
