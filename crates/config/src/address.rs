//! `host:port` addresses as Patroni writes them.

use std::fmt;

/// A host (name, IPv4, or bracketed IPv6 in text) and a TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host without brackets (`::1`, not `[::1]`).
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port }
    }

    /// Parses `host:port`, `[v6]:port`. The host must not be empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) =
                rest.split_once(']').ok_or_else(|| format!("expected host:port, found {text:?} (unclosed '[')"))?;
            let port =
                after.strip_prefix(':').ok_or_else(|| format!("expected host:port, found {text:?} (no port)"))?;
            (host, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| format!("expected host:port, found {text:?} (no port)"))?
        };
        if host.is_empty() {
            return Err(format!("expected host:port, found {text:?} (no host)"));
        }
        if host.contains(char::is_whitespace) || (host.contains(':') && !text.starts_with('[')) {
            return Err(format!("expected host:port, found {text:?} (bad host)"));
        }
        let port = parse_port(port).map_err(|why| format!("expected host:port, found {text:?} ({why})"))?;
        Ok(Self { host: host.to_string(), port })
    }

    /// The address with the same host and another port: pgwarden derives its
    /// gRPC ports from the REST API's port.
    pub fn with_port_offset(&self, offset: u16) -> Result<Self, String> {
        let port =
            self.port.checked_add(offset).ok_or_else(|| format!("port {} + {offset} is above 65535", self.port))?;
        Ok(Self { host: self.host.clone(), port })
    }

    /// A host usable to connect to: wildcard listen addresses map to loopback.
    pub fn connectable_host(&self) -> &str {
        match self.host.as_str() {
            "0.0.0.0" | "*" => "127.0.0.1",
            "::" => "::1",
            host => host,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("port 0 is not allowed".into()),
        Ok(port) if port <= u32::from(u16::MAX) => Ok(port as u16),
        Ok(port) => Err(format!("port {port} is out of range 1-65535")),
        Err(_) if text.trim().is_empty() => Err("no port".into()),
        Err(_) => Err(format!("port {:?} is not a number", text.trim())),
    }
}

/// `postgresql.listen`: one or more comma-separated hosts sharing one port, as
/// `127.0.0.1,10.0.0.5:5432` or `*:5432`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddresses {
    pub hosts: Vec<String>,
    pub port: u16,
}

impl ListenAddresses {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (hosts, port) = text
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| format!("expected host[,host...]:port, found {text:?} (no port)"))?;
        let port = parse_port(port).map_err(|why| format!("expected host[,host...]:port, found {text:?} ({why})"))?;
        let hosts: Vec<String> =
            hosts.split(',').map(|h| h.trim().trim_start_matches('[').trim_end_matches(']').to_string()).collect();
        if hosts.iter().any(String::is_empty) {
            return Err(format!("expected host[,host...]:port, found {text:?} (empty host)"));
        }
        Ok(Self { hosts, port })
    }

    /// The value for PostgreSQL's `listen_addresses`.
    pub fn listen_addresses(&self) -> String {
        self.hosts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_forms() {
        assert_eq!(HostPort::parse("127.0.0.1:8008"), Ok(HostPort::new("127.0.0.1", 8008)));
        assert_eq!(HostPort::parse("[::1]:2379"), Ok(HostPort::new("::1", 2379)));
        assert_eq!(HostPort::parse(" db1.example:5432 "), Ok(HostPort::new("db1.example", 5432)));
        assert_eq!(HostPort::new("::1", 5).to_string(), "[::1]:5");
    }

    #[test]
    fn refuses_malformed_host_port() {
        for bad in ["localhost", ":5432", "h:", "h:99999", "h:0", "h:abc", "::1:5432", "a b:1"] {
            assert!(HostPort::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn parses_listen_lists() {
        let listen = ListenAddresses::parse("127.0.0.1,10.0.0.5:5432").expect("valid listen");
        assert_eq!(listen.hosts, ["127.0.0.1", "10.0.0.5"]);
        assert_eq!(listen.port, 5432);
        assert!(ListenAddresses::parse("*:5432").is_ok());
        assert!(ListenAddresses::parse("127.0.0.1").is_err());
        assert!(ListenAddresses::parse(",:5432").is_err());
    }
}
