//! `PATRONI_*` environment overrides, mapped by an explicit table.
//!
//! Patroni's variable names cannot be split on `_` (`CONNECT_ADDRESS`,
//! `LOOP_WAIT`), and several do not mirror the YAML path at all
//! (`PATRONI_SUPERUSER_USERNAME` is `postgresql.authentication.superuser.username`),
//! so each name is listed. Values are kept verbatim as strings (a password
//! `0123456` keeps its leading zero); the typed readers accept strings.

use serde_json::Value;

/// How a variable's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    /// Patroni parses `HOSTS` and `ALLOWLIST` as a YAML list body:
    /// `'h1:2379','h2:2379'` or `h1:2379,h2:2379`.
    List,
}

/// `(variable suffix after PATRONI_, dotted path, shape)`.
const FIXED: &[(&str, &str, Shape)] = &[
    ("NAME", "name", Shape::Text),
    ("NAMESPACE", "namespace", Shape::Text),
    ("SCOPE", "scope", Shape::Text),
    ("LOG_TYPE", "log.type", Shape::Text),
    ("LOG_LEVEL", "log.level", Shape::Text),
    ("LOGLEVEL", "log.level", Shape::Text),
    ("LOG_TRACEBACK_LEVEL", "log.traceback_level", Shape::Text),
    ("LOG_FORMAT", "log.format", Shape::Text),
    ("LOGFORMAT", "log.format", Shape::Text),
    ("LOG_DATEFORMAT", "log.dateformat", Shape::Text),
    ("LOG_DATEFMT", "log.dateformat", Shape::Text),
    ("LOG_MAX_QUEUE_SIZE", "log.max_queue_size", Shape::Text),
    ("LOG_DIR", "log.dir", Shape::Text),
    ("LOG_MODE", "log.mode", Shape::Text),
    ("LOG_FILE_NUM", "log.file_num", Shape::Text),
    ("LOG_FILE_SIZE", "log.file_size", Shape::Text),
    ("RESTAPI_LISTEN", "restapi.listen", Shape::Text),
    ("RESTAPI_CONNECT_ADDRESS", "restapi.connect_address", Shape::Text),
    ("RESTAPI_USERNAME", "restapi.authentication.username", Shape::Text),
    ("RESTAPI_PASSWORD", "restapi.authentication.password", Shape::Text),
    ("RESTAPI_CERTFILE", "restapi.certfile", Shape::Text),
    ("RESTAPI_KEYFILE", "restapi.keyfile", Shape::Text),
    ("RESTAPI_KEYFILE_PASSWORD", "restapi.keyfile_password", Shape::Text),
    ("RESTAPI_CAFILE", "restapi.cafile", Shape::Text),
    ("RESTAPI_CIPHERS", "restapi.ciphers", Shape::Text),
    ("RESTAPI_VERIFY_CLIENT", "restapi.verify_client", Shape::Text),
    ("RESTAPI_ALLOWLIST", "restapi.allowlist", Shape::List),
    ("RESTAPI_ALLOWLIST_INCLUDE_MEMBERS", "restapi.allowlist_include_members", Shape::Text),
    ("RESTAPI_REQUEST_QUEUE_SIZE", "restapi.request_queue_size", Shape::Text),
    ("RESTAPI_SERVER_TOKENS", "restapi.server_tokens", Shape::Text),
    ("CTL_USERNAME", "ctl.authentication.username", Shape::Text),
    ("CTL_PASSWORD", "ctl.authentication.password", Shape::Text),
    ("CTL_INSECURE", "ctl.insecure", Shape::Text),
    ("CTL_CACERT", "ctl.cacert", Shape::Text),
    ("CTL_CERTFILE", "ctl.certfile", Shape::Text),
    ("CTL_KEYFILE", "ctl.keyfile", Shape::Text),
    ("CTL_KEYFILE_PASSWORD", "ctl.keyfile_password", Shape::Text),
    ("POSTGRESQL_LISTEN", "postgresql.listen", Shape::Text),
    ("POSTGRESQL_CONNECT_ADDRESS", "postgresql.connect_address", Shape::Text),
    ("POSTGRESQL_PROXY_ADDRESS", "postgresql.proxy_address", Shape::Text),
    ("POSTGRESQL_DATA_DIR", "postgresql.data_dir", Shape::Text),
    ("POSTGRESQL_CONFIG_DIR", "postgresql.config_dir", Shape::Text),
    ("POSTGRESQL_BIN_DIR", "postgresql.bin_dir", Shape::Text),
    ("POSTGRESQL_PGPASS", "postgresql.pgpass", Shape::Text),
];

const CREDENTIAL_USERS: &[&str] = &["SUPERUSER", "REPLICATION", "REWIND"];
const CREDENTIAL_FIELDS: &[&str] = &[
    "USERNAME",
    "PASSWORD",
    "SSLMODE",
    "SSLKEY",
    "SSLPASSWORD",
    "SSLCERT",
    "SSLROOTCERT",
    "SSLCRL",
    "SSLCRLDIR",
    "SSLNEGOTIATION",
    "GSSENCMODE",
    "CHANNEL_BINDING",
];
const ETCD_FIELDS: &[&str] = &[
    "HOST",
    "HOSTS",
    "URL",
    "PROXY",
    "SRV",
    "SRV_SUFFIX",
    "USE_PROXIES",
    "PROTOCOL",
    "USERNAME",
    "PASSWORD",
    "CACERT",
    "CERT",
    "KEY",
];
/// DCS back-ends Patroni has and pgwarden does not: their variables are
/// reported as unsupported, not applied.
const OTHER_DCS: &[&str] = &["CONSUL", "ZOOKEEPER", "EXHIBITOR", "KUBERNETES", "RAFT", "CITUS"];
const POSTGRES_BINARIES: &[&str] =
    &["PG_CTL", "INITDB", "PG_CONTROLDATA", "PG_BASEBACKUP", "POSTGRES", "PG_ISREADY", "PG_REWIND"];

/// The dotted path a `PATRONI_*` variable sets, if it is one pgwarden applies.
pub fn path_for(variable: &str) -> Option<(String, bool)> {
    let suffix = variable.strip_prefix("PATRONI_")?;
    if let Some((_, path, shape)) = FIXED.iter().find(|(name, _, _)| *name == suffix) {
        return Some((path.to_string(), *shape == Shape::List));
    }
    for user in CREDENTIAL_USERS {
        if let Some(field) = suffix.strip_prefix(user).and_then(|rest| rest.strip_prefix('_'))
            && CREDENTIAL_FIELDS.contains(&field)
        {
            let path = format!("postgresql.authentication.{}.{}", user.to_lowercase(), field.to_lowercase());
            return Some((path, false));
        }
    }
    for section in ["ETCD3", "ETCD"] {
        if let Some(field) = suffix.strip_prefix(section).and_then(|rest| rest.strip_prefix('_'))
            && ETCD_FIELDS.contains(&field)
        {
            let path = format!("{}.{}", section.to_lowercase(), field.to_lowercase());
            return Some((path, field == "HOSTS"));
        }
    }
    if let Some(binary) = suffix.strip_prefix("POSTGRESQL_BIN_")
        && POSTGRES_BINARIES.contains(&binary)
    {
        return Some((format!("postgresql.bin_name.{}", binary.to_lowercase()), false));
    }
    None
}

/// Whether the variable belongs to a Patroni feature pgwarden does not have.
pub fn is_unsupported(variable: &str) -> bool {
    variable
        .strip_prefix("PATRONI_")
        .is_some_and(|suffix| OTHER_DCS.iter().any(|dcs| suffix.starts_with(&format!("{dcs}_"))))
}

/// Parses a Patroni list variable: `'a:1','b:2'`, `[a:1, b:2]` or `a:1,b:2`.
pub fn parse_list(text: &str) -> Value {
    let body = text.trim().trim_start_matches('[').trim_end_matches(']');
    let items = body
        .split(',')
        .map(|item| item.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|item| !item.is_empty())
        .map(Value::String)
        .collect();
    Value::Array(items)
}

/// The overrides present in `vars`, in a stable order, plus the names of
/// variables that were ignored as unsupported.
pub fn overrides<I>(vars: I) -> (Vec<(String, Value, String)>, Vec<String>)
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut applied = Vec::new();
    let mut ignored = Vec::new();
    for (name, text) in vars {
        let upper = name.to_ascii_uppercase();
        if upper == "PATRONI_CONFIGURATION" {
            continue;
        }
        if let Some((path, is_list)) = path_for(&upper) {
            let value = if is_list { parse_list(&text) } else { Value::String(text) };
            applied.push((path, value, name));
        } else if is_unsupported(&upper) {
            ignored.push(name);
        }
    }
    applied.sort_by(|a, b| a.2.cmp(&b.2));
    ignored.sort();
    (applied, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names_with_underscores_by_table() {
        assert_eq!(path_for("PATRONI_RESTAPI_CONNECT_ADDRESS"), Some(("restapi.connect_address".into(), false)));
        assert_eq!(
            path_for("PATRONI_SUPERUSER_PASSWORD"),
            Some(("postgresql.authentication.superuser.password".into(), false))
        );
        assert_eq!(
            path_for("PATRONI_REPLICATION_CHANNEL_BINDING"),
            Some(("postgresql.authentication.replication.channel_binding".into(), false))
        );
        assert_eq!(path_for("PATRONI_ETCD3_HOSTS"), Some(("etcd3.hosts".into(), true)));
        assert_eq!(path_for("PATRONI_ETCD_SRV_SUFFIX"), Some(("etcd.srv_suffix".into(), false)));
        assert_eq!(path_for("PATRONI_POSTGRESQL_BIN_PG_CTL"), Some(("postgresql.bin_name.pg_ctl".into(), false)));
        assert_eq!(path_for("PATRONI_POSTGRESQL_DATA_DIR"), Some(("postgresql.data_dir".into(), false)));
        assert_eq!(path_for("PATRONI_LOGLEVEL"), Some(("log.level".into(), false)));
        assert_eq!(path_for("PATRONI_NOT_A_THING"), None);
        assert!(is_unsupported("PATRONI_CONSUL_HOST"));
    }

    #[test]
    fn parses_list_variables_like_patroni() {
        let expected = serde_json::json!(["h1:2379", "h2:2379"]);
        assert_eq!(parse_list("'h1:2379','h2:2379'"), expected);
        assert_eq!(parse_list("h1:2379, h2:2379"), expected);
        assert_eq!(parse_list("[h1:2379,h2:2379]"), expected);
    }

    #[test]
    fn keeps_values_verbatim() {
        let (applied, _) = overrides([("PATRONI_SUPERUSER_PASSWORD".to_string(), "0123456".to_string())]);
        assert_eq!(applied[0].1, Value::String("0123456".into()));
    }
}
