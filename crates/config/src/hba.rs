//! How the agent reaches its own PostgreSQL, and whether a `pg_hba.conf`
//! lets it in.
//!
//! Patroni connects to its PostgreSQL over TCP by default
//! (`postgresql.use_unix_socket: false`): to `localhost` when PostgreSQL
//! listens on a wildcard or loopback address, else to the first listen
//! address, as the superuser with its password. The guides' configs rely on
//! that: their `pg_hba` has `host ... md5` lines and no `local` line.
//! pgwarden does the same, and checks the rules it is about to use before
//! anything is written, so that a config that would lock the agent out is
//! refused with the line to add instead of looping on failed logins.
//!
//! The check follows PostgreSQL's first-match rule. Where a line's match
//! cannot be decided here (a host name, a `+group`, an `@file`, a regular
//! expression, `hostssl`), the verdict is "unknown" and nothing is refused.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::Config;

/// How the agent connects to the local PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalConnection {
    /// Over the Unix socket in this directory.
    Socket(PathBuf),
    /// Over TCP to this host (an address or `localhost`).
    Tcp(String),
}

impl LocalConnection {
    /// The client address PostgreSQL sees for a TCP connection, for the
    /// `pg_hba` check (`localhost` is checked as 127.0.0.1).
    fn client_address(&self) -> Option<IpAddr> {
        match self {
            Self::Socket(_) => None,
            Self::Tcp(host) if host == "localhost" => Some(IpAddr::from([127, 0, 0, 1])),
            Self::Tcp(host) => host.parse().ok(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Socket(dir) => format!("the Unix socket in {}", dir.display()),
            Self::Tcp(host) => format!("TCP to {host}"),
        }
    }
}

/// The socket directories PostgreSQL will use: `unix_socket_directories`
/// from `postgresql.parameters` (then `bootstrap.dcs`), relative entries
/// resolved against the data directory as PostgreSQL does (it runs there),
/// or the platform default.
pub fn socket_directories(config: &Config) -> Vec<PathBuf> {
    match configured_socket_directories(config) {
        Some(dirs) => dirs
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                let dir = Path::new(d);
                if dir.is_absolute() { dir.to_path_buf() } else { config.postgresql.data_dir.join(dir) }
            })
            .collect(),
        None => {
            let debian = PathBuf::from("/var/run/postgresql");
            vec![if debian.is_dir() { debian } else { PathBuf::from("/tmp") }]
        }
    }
}

/// The TCP host Patroni would use: `localhost` when PostgreSQL listens on a
/// wildcard or loopback address, else the first listen address. pgwarden
/// uses 127.0.0.1 (or ::1) rather than `localhost`, so the address the
/// `pg_hba` check assumes is the one PostgreSQL sees.
pub fn tcp_local_host(config: &Config) -> String {
    let hosts = config.postgresql.listen.as_ref().map(|l| l.hosts.clone()).unwrap_or_default();
    for host in &hosts {
        match host.to_lowercase().as_str() {
            "*" | "0.0.0.0" | "127.0.0.1" | "localhost" => return "127.0.0.1".into(),
            "::" | "::1" => return "::1".into(),
            _ => {}
        }
    }
    hosts.first().cloned().unwrap_or_else(|| "127.0.0.1".into())
}

/// How the agent connects: the Unix socket when `use_unix_socket` is true
/// and an absolute socket directory is configured (Patroni falls back to TCP
/// otherwise), else TCP. One exception: a superuser without a password can
/// only get in by `peer` over the socket (pgwarden never runs initdb with
/// `trust`, which is how Patroni lets such a superuser in over TCP), so the
/// agent uses the socket then.
pub fn local_connection(config: &Config) -> LocalConnection {
    if config.postgresql.use_unix_socket
        && let Some(dir) = first_absolute_socket_dir(config)
    {
        return LocalConnection::Socket(dir);
    }
    if config.postgresql.authentication.superuser.password.is_none()
        && let Some(dir) = socket_directories(config).into_iter().next()
    {
        return LocalConnection::Socket(dir);
    }
    LocalConnection::Tcp(tcp_local_host(config))
}

/// `unix_socket_directories` as configured: locally, else in `bootstrap.dcs`.
fn configured_socket_directories(config: &Config) -> Option<&String> {
    config
        .postgresql
        .parameters
        .get("unix_socket_directories")
        .or_else(|| config.bootstrap.dcs.parameters.get("unix_socket_directories"))
}

fn first_absolute_socket_dir(config: &Config) -> Option<PathBuf> {
    match configured_socket_directories(config) {
        Some(dirs) => dirs.split(',').map(str::trim).find(|d| d.starts_with('/')).map(PathBuf::from),
        None => socket_directories(config).into_iter().next(),
    }
}

/// Who connects, for the first-match evaluation.
#[derive(Debug, Clone)]
pub struct Client<'a> {
    /// `None`: over the Unix socket.
    pub address: Option<IpAddr>,
    /// `replication` for a replication connection, else the database name.
    pub database: &'a str,
    pub user: &'a str,
    pub has_password: bool,
    /// The operating-system user, for `peer`.
    pub os_user: &'a str,
}

/// What the rules say of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The line (1-based among the rules) lets it in.
    Allowed(usize),
    /// Cannot be decided here.
    Unknown,
    /// Refused, and why.
    Refused(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    Maybe,
}

impl From<bool> for Match {
    fn from(yes: bool) -> Self {
        if yes { Match::Yes } else { Match::No }
    }
}

/// Splits a line into fields, honouring double quotes and `#` comments.
fn fields(line: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut was_quoted, mut in_field) = (false, false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
                in_field = true;
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if in_field {
                    out.push((std::mem::take(&mut current), was_quoted));
                    (was_quoted, in_field) = (false, false);
                }
            }
            c => {
                current.push(c);
                in_field = true;
            }
        }
    }
    if in_field {
        out.push((current, was_quoted));
    }
    out
}

fn match_list(list: &str, quoted: bool, one: impl Fn(&str, bool) -> Match) -> Match {
    let mut result = Match::No;
    for item in list.split(',') {
        match one(item, quoted) {
            Match::Yes => return Match::Yes,
            Match::Maybe => result = Match::Maybe,
            Match::No => {}
        }
    }
    result
}

fn match_address(address: IpAddr, spec: &str, mask: Option<&str>) -> Match {
    match spec {
        "all" | "samehost" | "samenet" => return Match::Yes,
        _ => {}
    }
    let (network, bits) = match spec.split_once('/') {
        Some((network, bits)) => match (network.parse::<IpAddr>(), bits.parse::<u32>()) {
            (Ok(network), Ok(bits)) => (network, bits),
            _ => return Match::Maybe,
        },
        None => match (spec.parse::<IpAddr>(), mask.map(str::parse::<IpAddr>)) {
            (Ok(network), Some(Ok(mask))) => (network, mask_bits(mask)),
            // A host name: PostgreSQL resolves it; not decided here.
            _ => return Match::Maybe,
        },
    };
    let in_network = match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits.min(32)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits.min(128)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    };
    Match::from(in_network)
}

fn mask_bits(mask: IpAddr) -> u32 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones(),
        IpAddr::V6(m) => u128::from(m).count_ones(),
    }
}

/// Evaluates `lines` (pg_hba.conf lines) for `client`, first match wins.
pub fn evaluate(lines: &[String], client: &Client<'_>) -> Verdict {
    let replication = client.database == "replication";
    let mut rule = 0;
    for line in lines {
        let f = fields(line);
        if f.is_empty() {
            continue;
        }
        rule += 1;
        let kind = f[0].0.as_str();
        if kind.starts_with("include") {
            return Verdict::Unknown;
        }
        let tcp = kind.starts_with("host");
        let type_match = match (kind, client.address) {
            ("local", None) => Match::Yes,
            ("host" | "hostnogssenc", Some(_)) => Match::Yes,
            // Whether the agent's connection uses TLS depends on the server.
            ("hostssl" | "hostnossl", Some(_)) => Match::Maybe,
            _ => Match::No,
        };
        if type_match == Match::No {
            continue;
        }
        let (Some((database, db_quoted)), Some((user, user_quoted))) = (f.get(1), f.get(2)) else {
            return Verdict::Unknown;
        };
        let database_match = match_list(database, *db_quoted, |d, quoted| match d {
            _ if quoted => Match::from(d == client.database),
            "all" if !replication => Match::Yes,
            "replication" if replication => Match::Yes,
            "all" | "replication" => Match::No,
            "sameuser" if !replication => Match::from(client.database == client.user),
            "samerole" | "samegroup" if !replication => Match::Maybe,
            d if d.starts_with('@') || d.starts_with('/') => Match::Maybe,
            d => Match::from(d == client.database && !replication),
        });
        let user_match = match_list(user, *user_quoted, |u, quoted| match u {
            _ if quoted => Match::from(u == client.user),
            "all" => Match::Yes,
            u if u.starts_with('+') || u.starts_with('@') || u.starts_with('/') => Match::Maybe,
            u => Match::from(u == client.user),
        });
        let (address_match, method_at) = match (tcp, client.address) {
            (true, Some(address)) => {
                let Some((spec, _)) = f.get(3) else { return Verdict::Unknown };
                let has_mask = !spec.contains('/') && spec.parse::<IpAddr>().is_ok();
                let mask = if has_mask { f.get(4).map(|(m, _)| m.as_str()) } else { None };
                (match_address(address, spec, mask), if has_mask { 5 } else { 4 })
            }
            _ => (Match::Yes, 3),
        };
        let matches = [&type_match, &database_match, &user_match, &address_match];
        if matches.contains(&&Match::No) {
            continue;
        }
        if matches.contains(&&Match::Maybe) {
            return Verdict::Unknown;
        }
        let Some((method, _)) = f.get(method_at) else { return Verdict::Unknown };
        let options = &f[method_at + 1..];
        return match method.as_str() {
            "trust" => Verdict::Allowed(rule),
            "reject" => Verdict::Refused(format!("line {rule} (`{}`) rejects it", line.trim())),
            "md5" | "scram-sha-256" | "password" | "ldap" | "radius" | "pam" | "bsd" if client.has_password => {
                Verdict::Allowed(rule)
            }
            "md5" | "scram-sha-256" | "password" | "ldap" | "radius" | "pam" | "bsd" => Verdict::Refused(format!(
                "line {rule} (`{}`) asks for a password and {} has none configured",
                line.trim(),
                client.user
            )),
            "peer" if options.iter().any(|(o, _)| o.starts_with("map=")) => Verdict::Unknown,
            "peer" if client.address.is_none() && client.user == client.os_user => Verdict::Allowed(rule),
            "peer" => Verdict::Refused(format!(
                "line {rule} (`{}`) uses peer authentication, which lets in only the operating-system user {}",
                line.trim(),
                client.os_user
            )),
            _ => Verdict::Unknown,
        };
    }
    Verdict::Refused("no line matches it".into())
}

/// The `--auth-local` and `--auth-host` initdb runs with: the config's
/// `auth`, `auth-local` and `auth-host` options, else pgwarden's defaults,
/// `peer` over the socket (`sudo -u postgres psql` keeps working) and
/// `scram-sha-256` over TCP (`trust` without a superuser password, which
/// initdb requires for a password method), instead of initdb's own `trust` for both, which
/// Patroni keeps (secure by default; a documented difference).
pub fn initdb_auth(config: &Config) -> (String, String) {
    let option = |name: &str| {
        config.bootstrap.initdb.iter().find_map(|o| match o {
            crate::ToolOption::Value(k, v) if k == name => Some(v.clone()),
            _ => None,
        })
    };
    let both = option("auth");
    let local = option("auth-local").or_else(|| both.clone()).unwrap_or_else(|| "peer".into());
    // initdb refuses a password method without a superuser password.
    let host_default =
        if config.postgresql.authentication.superuser.password.is_some() { "scram-sha-256" } else { "trust" };
    let host = option("auth-host").or(both).unwrap_or_else(|| host_default.into());
    (local, host)
}

/// initdb's own pg_hba.conf (PostgreSQL 13-17), with the methods
/// [`initdb_auth`] gives it.
pub fn initdb_default(config: &Config) -> Vec<String> {
    let (local, host) = initdb_auth(config);
    vec![
        format!("local all all {local}"),
        format!("host all all 127.0.0.1/32 {host}"),
        format!("host all all ::1/128 {host}"),
        format!("local replication all {local}"),
        format!("host replication all 127.0.0.1/32 {host}"),
        format!("host replication all ::1/128 {host}"),
    ]
}

/// pgwarden's own rules for a new cluster whose config has no `pg_hba` at
/// all: password logins on loopback (peer over the socket without a
/// password), and the superuser on the address the agent connects to when
/// that is not loopback.
pub fn pgwarden_default(config: &Config) -> Vec<String> {
    let local_method =
        if config.postgresql.authentication.superuser.password.is_some() { "scram-sha-256" } else { "peer" };
    let mut lines = vec![
        format!("local all all {local_method}"),
        "host all all 127.0.0.1/32 scram-sha-256".into(),
        "host all all ::1/128 scram-sha-256".into(),
        "host replication all 127.0.0.1/32 scram-sha-256".into(),
        "host replication all ::1/128 scram-sha-256".into(),
    ];
    if let Some(address) = local_connection(config).client_address().filter(|a| !a.is_loopback()) {
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let user = &config.postgresql.authentication.superuser.username;
        lines.push(format!("host all {user} {address}/{bits} scram-sha-256"));
    }
    lines
}

/// The operating-system user the agent runs as (`postgres` when checked by root).
pub fn os_user() -> String {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return "postgres".into();
    }
    nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| "postgres".into(), |u| u.name)
}

/// Checks that `lines` let the agent in over `connection` and let
/// replication connections in at all. `source` names where the lines come
/// from, for the message. The error names the line to add.
pub fn check_agent_access(
    config: &Config,
    lines: &[String],
    connection: &LocalConnection,
    source: &str,
) -> Result<(), String> {
    let superuser = &config.postgresql.authentication.superuser;
    let os_user = os_user();
    let client = Client {
        address: connection.client_address(),
        database: "postgres",
        user: &superuser.username,
        has_password: superuser.password.is_some(),
        os_user: &os_user,
    };
    if let Verdict::Refused(why) = evaluate(lines, &client) {
        let method = if superuser.password.is_some() { "scram-sha-256" } else { "trust" };
        let add = match connection {
            LocalConnection::Tcp(_) => {
                let address = client.address.map_or_else(
                    || "127.0.0.1/32".to_string(),
                    |a| if a.is_ipv4() { format!("{a}/32") } else { format!("{a}/128") },
                );
                format!("host all {} {address} {method}", superuser.username)
            }
            LocalConnection::Socket(_) if superuser.username == os_user => {
                format!("local all {} peer", superuser.username)
            }
            LocalConnection::Socket(_) => format!("local all {} {method}", superuser.username),
        };
        return Err(format!(
            "the pg_hba rules in {source} would lock pgwarden out of its own PostgreSQL: it connects as {} over {} \
             (postgresql.use_unix_socket: {}), and {why}. Add `{add}` before the other lines{}",
            superuser.username,
            connection.describe(),
            config.postgresql.use_unix_socket,
            if superuser.password.is_none() && matches!(connection, LocalConnection::Tcp(_)) {
                ", or set postgresql.authentication.superuser.password"
            } else {
                ""
            }
        ));
    }
    let replication_user = &config.postgresql.authentication.replication.username;
    let lets_replication_in = lines.iter().any(|line| {
        let f = fields(line);
        f.len() >= 4
            && f[0].0.starts_with("host")
            && f[1].0.split(',').any(|d| d == "replication" || d.starts_with('@'))
            && f[2].0.split(',').any(|u| u == "all" || u == replication_user || u.starts_with(['+', '@', '/']))
            && !f.iter().skip(3).any(|(m, _)| m == "reject")
    });
    if !lets_replication_in {
        return Err(format!(
            "the pg_hba rules in {source} let no replication connection in: replicas connect as {replication_user} to the \
             database `replication` (which `all` does not cover). Add `host replication {replication_user} <your network, \
             e.g. 10.0.0.0/24> scram-sha-256`"
        ));
    }
    Ok(())
}

/// The rules the agent will run with, and where they come from: the local
/// `postgresql.pg_hba`; else the `pg_hba.conf` of `config_dir` (the data
/// directory by default) when the data directory exists; else what a bootstrap writes (initdb's file with `bootstrap.pg_hba`
/// appended, as Patroni does; pgwarden's defaults when neither is set).
/// `None` when that file cannot be read.
pub fn effective_rules(config: &Config) -> Option<(Vec<String>, String)> {
    if !config.postgresql.pg_hba.is_empty() {
        return Some((config.postgresql.pg_hba.clone(), "postgresql.pg_hba".into()));
    }
    let file = config.postgresql.config_dir().join("pg_hba.conf");
    if config.postgresql.data_dir.join("PG_VERSION").exists() {
        let text = std::fs::read_to_string(&file).ok()?;
        return Some((text.lines().map(str::to_string).collect(), file.display().to_string()));
    }
    Some(bootstrap_rules(config))
}

/// What a bootstrap writes when `postgresql.pg_hba` is not set.
pub fn bootstrap_rules(config: &Config) -> (Vec<String>, String) {
    if !config.bootstrap.dcs.pg_hba.is_empty() {
        return (config.bootstrap.dcs.pg_hba.clone(), "bootstrap.dcs.postgresql.pg_hba".into());
    }
    if config.bootstrap.pg_hba.is_empty() {
        return (pgwarden_default(config), "pgwarden's defaults (no pg_hba configured)".into());
    }
    let mut lines = initdb_default(config);
    lines.extend(config.bootstrap.pg_hba.iter().cloned());
    (lines, "initdb's pg_hba.conf with bootstrap.pg_hba appended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: Option<&str>, database: &'static str, user: &'static str) -> Client<'static> {
        Client {
            address: address.map(|a| a.parse().expect("address")),
            database,
            user,
            has_password: true,
            os_user: "postgres",
        }
    }

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn guide_rules_let_tcp_in_but_not_the_socket() {
        let rules = lines(&["host replication replicator 127.0.0.1/32 md5", "host all all 0.0.0.0/0 md5"]);
        assert_eq!(evaluate(&rules, &client(Some("127.0.0.1"), "postgres", "postgres")), Verdict::Allowed(2));
        assert!(matches!(evaluate(&rules, &client(None, "postgres", "postgres")), Verdict::Refused(_)));
        assert_eq!(evaluate(&rules, &client(Some("127.0.0.1"), "replication", "replicator")), Verdict::Allowed(1));
        // `all` does not cover replication connections.
        assert!(matches!(
            evaluate(&lines(&["host all all 0.0.0.0/0 md5"]), &client(Some("10.0.0.2"), "replication", "replicator")),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn first_match_wins_and_reject_refuses() {
        let rules = lines(&["host all postgres 127.0.0.1/32 reject", "host all all 0.0.0.0/0 md5"]);
        assert!(matches!(evaluate(&rules, &client(Some("127.0.0.1"), "postgres", "postgres")), Verdict::Refused(_)));
        assert_eq!(evaluate(&rules, &client(Some("127.0.0.1"), "postgres", "app")), Verdict::Allowed(2));
    }

    #[test]
    fn addresses_masks_and_comments() {
        let rules = lines(&["# a comment", "", "host all all 10.0.0.0 255.255.255.0 md5 # trailing"]);
        assert_eq!(evaluate(&rules, &client(Some("10.0.0.7"), "postgres", "postgres")), Verdict::Allowed(1));
        assert!(matches!(evaluate(&rules, &client(Some("10.0.1.7"), "postgres", "postgres")), Verdict::Refused(_)));
        let v6 = lines(&["host all all ::1/128 scram-sha-256"]);
        assert_eq!(evaluate(&v6, &client(Some("::1"), "postgres", "postgres")), Verdict::Allowed(1));
        assert!(matches!(evaluate(&v6, &client(Some("127.0.0.1"), "postgres", "postgres")), Verdict::Refused(_)));
    }

    #[test]
    fn undecidable_lines_refuse_nothing() {
        for rule in
            ["host all all db.example.com md5", "host all +admins 127.0.0.1/32 md5", "hostssl all all 0.0.0.0/0 md5"]
        {
            assert_eq!(evaluate(&lines(&[rule]), &client(Some("127.0.0.1"), "postgres", "postgres")), Verdict::Unknown);
        }
    }

    #[test]
    fn peer_and_passwords() {
        let peer = lines(&["local all all peer"]);
        assert_eq!(evaluate(&peer, &client(None, "postgres", "postgres")), Verdict::Allowed(1));
        assert!(matches!(evaluate(&peer, &client(None, "postgres", "admin")), Verdict::Refused(_)));
        let md5 = lines(&["local all all md5"]);
        let no_password = Client { has_password: false, ..client(None, "postgres", "postgres") };
        assert!(matches!(evaluate(&md5, &no_password), Verdict::Refused(_)));
    }

    #[test]
    fn quoted_names_are_literal() {
        let rules = lines(&["host \"all\" all 127.0.0.1/32 trust", "host all all 127.0.0.1/32 reject"]);
        assert!(matches!(evaluate(&rules, &client(Some("127.0.0.1"), "postgres", "postgres")), Verdict::Refused(_)));
        assert_eq!(evaluate(&rules, &client(Some("127.0.0.1"), "all", "postgres")), Verdict::Allowed(1));
    }
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    fn config(postgresql: &str) -> Config {
        let yaml = format!(
            "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\netcd3:\n  hosts: 127.0.0.1:2379\n\
             postgresql:\n  data_dir: /nonexistent/pgwarden-hba-test/data\n{postgresql}"
        );
        let source = crate::Source { origin: "test".into(), yaml };
        crate::load_from(&source, std::iter::empty(), crate::Purpose::Service).expect("a valid config").config
    }

    const PASSWORDS: &str =
        "  authentication:\n    superuser:\n      password: s\n    replication:\n      password: r\n";

    #[test]
    fn connects_as_patroni_does() {
        let tcp = config(&format!("  listen: 0.0.0.0:5432\n{PASSWORDS}"));
        assert_eq!(local_connection(&tcp), LocalConnection::Tcp("127.0.0.1".into()));
        let first = config(&format!("  listen: 10.0.0.5,10.0.0.6:5432\n{PASSWORDS}"));
        assert_eq!(local_connection(&first), LocalConnection::Tcp("10.0.0.5".into()));
        let socket = config(&format!(
            "  listen: 0.0.0.0:5432\n  use_unix_socket: true\n{PASSWORDS}  parameters:\n    unix_socket_directories: '.,/run/pg'\n"
        ));
        // Patroni takes the first absolute directory.
        assert_eq!(local_connection(&socket), LocalConnection::Socket("/run/pg".into()));
        // A relative directory is the data directory's, as PostgreSQL resolves it.
        assert_eq!(socket_directories(&socket)[0], PathBuf::from("/nonexistent/pgwarden-hba-test/data/."));
        // Without a superuser password only peer over the socket can let the agent in.
        let no_password = config("  listen: 0.0.0.0:5432\n  parameters:\n    unix_socket_directories: /run/pg\n");
        assert_eq!(local_connection(&no_password), LocalConnection::Socket("/run/pg".into()));
    }

    #[test]
    fn pgwardens_defaults_let_the_agent_in_on_a_non_loopback_address() {
        let config = config(&format!("  listen: 10.0.3.1:5432\n{PASSWORDS}"));
        let (rules, source) = bootstrap_rules(&config);
        assert!(source.contains("pgwarden's defaults"), "{source}");
        assert_eq!(check_agent_access(&config, &rules, &local_connection(&config), &source), Ok(()));
    }

    #[test]
    fn initdb_never_trusts_by_default() {
        let config = config(&format!("  listen: 127.0.0.1:5432\n{PASSWORDS}"));
        assert_eq!(initdb_auth(&config), ("peer".to_string(), "scram-sha-256".to_string()));
    }
}
