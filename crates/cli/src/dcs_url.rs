//! `-d/--dcs-url DCS://HOST:PORT/NAMESPACE`, as `patronictl` reads it: the
//! etcd to talk to (and the namespace) in place of the config file's.

use anyhow::bail;
use pgwarden_config::Config;

/// A parsed `--dcs-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcsUrl {
    pub host: String,
    pub port: u16,
    /// The path, when one is given (`/service`).
    pub namespace: Option<String>,
}

/// Reads `etcd3://host:port/namespace`; the scheme, host, port and path may
/// each be left out (etcd3, localhost, 2379, the config's namespace).
/// `etcd://` names etcd's v2 keyspace, which pgwarden does not serve; other
/// stores are not etcd.
pub fn parse(url: &str) -> anyhow::Result<DcsUrl> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("etcd3", url.trim_start_matches("//")),
    };
    match scheme {
        "etcd3" | "" => {}
        "etcd" => bail!(
            "--dcs-url {url}: etcd:// is etcd's v2 keyspace, which pgwarden does not serve; use etcd3://HOST:PORT \
             (a Patroni cluster on v2 moves with `pgwardenctl migrate-v2`)"
        ),
        other => {
            bail!("--dcs-url {url}: unknown or unsupported DCS {other:?}; pgwarden keeps its state in etcd (etcd3://)")
        }
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port =
                port.parse::<u16>().map_err(|_| anyhow::anyhow!("--dcs-url {url}: {port:?} is not a port number"))?;
            (host, port)
        }
        _ => (authority, 2379),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let namespace = Some(path.trim()).filter(|p| !p.is_empty() && *p != "/").map(String::from);
    Ok(DcsUrl { host: host.to_string(), port, namespace })
}

impl DcsUrl {
    /// The config with this etcd (and namespace) in place of its own; the
    /// scheme (TLS or not) and credentials stay the config's.
    pub fn apply(&self, config: &mut Config) {
        let tls = config.etcd.endpoints.iter().any(|e| e.starts_with("https://"));
        let scheme = if tls { "https" } else { "http" };
        config.etcd.endpoints = vec![format!("{scheme}://{}:{}", self.host, self.port)];
        if let Some(namespace) = &self.namespace {
            config.namespace = pgwarden_config::normalise_namespace(namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, namespace: Option<&str>) -> DcsUrl {
        DcsUrl { host: host.into(), port, namespace: namespace.map(String::from) }
    }

    #[test]
    fn reads_patronictl_forms() {
        assert_eq!(parse("etcd3://random.com:2399").expect("ok"), url("random.com", 2399, None));
        assert_eq!(parse("etcd3://random.com:2399/custom").expect("ok"), url("random.com", 2399, Some("/custom")));
        assert_eq!(parse("etcd3://:2399").expect("ok"), url("localhost", 2399, None));
        assert_eq!(parse("etcd3://test").expect("ok"), url("test", 2379, None));
        assert_eq!(parse("10.0.0.5:2379").expect("ok"), url("10.0.0.5", 2379, None));
        assert_eq!(parse("").expect("ok"), url("localhost", 2379, None));
        assert_eq!(parse("etcd3://[::1]:2399").expect("ok"), url("[::1]", 2399, None));
        for (wrong, says) in [
            ("etcd://host:2379", "v2 keyspace"),
            ("consul://host:8500", "unknown or unsupported DCS \"consul\""),
            ("etcd3://host:port", "\"port\" is not a port number"),
        ] {
            let error = parse(wrong).expect_err(wrong).to_string();
            assert!(error.contains(says), "{wrong}: {error}");
        }
    }
}
