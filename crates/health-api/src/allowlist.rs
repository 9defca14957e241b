//! `restapi.allowlist` and `restapi.allowlist_include_members` (Patroni's):
//! who may call the write endpoints at all, by the client's address. Checked
//! before the credentials; a client outside gets 403 "Access is denied".

use std::net::IpAddr;

use tracing::warn;

/// An address or a CIDR network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn host(address: IpAddr) -> Self {
        Self { address: address.to_canonical(), prefix: if address.is_ipv4() { 32 } else { 128 } }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An entry as written: a network (`10.0.0.0/8`, `::1/128`), an address,
/// or a host name to resolve (`Ok(None)`).
pub fn parse(entry: &str) -> Result<Option<Network>, String> {
    let entry = entry.trim();
    match entry.split_once('/') {
        Some((address, prefix)) => {
            let address: IpAddr = address.parse().map_err(|_| format!("{entry:?}: not an address/prefix"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{entry:?}: the prefix length must be a number from 0 to {max}"))?;
            Ok(Some(Network { address: address.to_canonical(), prefix }))
        }
        None => Ok(entry.parse::<IpAddr>().ok().map(Network::host)),
    }
}

/// The networks of `entries`, host names resolved now (a name that does not
/// resolve is logged and allows nothing).
pub async fn resolve(entries: &[String]) -> Vec<Network> {
    let mut networks = Vec::new();
    for entry in entries {
        match parse(entry) {
            Ok(Some(network)) => networks.push(network),
            Ok(None) => networks.extend(resolve_host(entry.trim()).await),
            Err(e) => warn!("restapi.allowlist: {e}: ignored"),
        }
    }
    networks
}

/// The addresses of a host name (empty when it does not resolve).
pub async fn resolve_host(host: &str) -> Vec<Network> {
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addresses) => addresses.map(|a| Network::host(a.ip())).collect(),
        Err(e) => {
            warn!(host, "restapi.allowlist: cannot resolve {host}: {e}");
            Vec::new()
        }
    }
}

/// Who may call the write endpoints.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub networks: Vec<Network>,
    pub include_members: bool,
}

impl Allowlist {
    /// No allowlist: every address may (the other checks still apply).
    pub fn is_open(&self) -> bool {
        self.networks.is_empty() && !self.include_members
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }
}

/// The host of a URL such as `http://10.0.0.11:8008/patroni` or
/// `postgres://[::1]:5432/postgres`.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(host, _)| host);
    }
    Some(authority.rsplit_once(':').map_or(authority, |(host, _)| host)).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn networks_match_by_prefix() {
        let net = parse("10.1.0.0/16").expect("valid").expect("a network");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "an IPv4-mapped client counts as IPv4");
        let host = parse("127.0.0.1").expect("valid").expect("a host");
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        let all = parse("0.0.0.0/0").expect("valid").expect("a network");
        assert!(all.contains(ip("192.0.2.1")));
        assert!(!all.contains(ip("::1")));
        let v6 = parse("fd00::/8").expect("valid").expect("a network");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert_eq!(parse("db1.example.com"), Ok(None), "a name is resolved later");
        assert!(parse("10.0.0.0/33").is_err());
        assert!(parse("nonsense/8").is_err());
    }

    #[test]
    fn hosts_come_out_of_member_urls() {
        assert_eq!(url_host("http://10.0.0.11:8008/patroni"), Some("10.0.0.11"));
        assert_eq!(url_host("postgres://db1:5432/postgres"), Some("db1"));
        assert_eq!(url_host("https://[::1]:8008/patroni"), Some("::1"));
        assert_eq!(url_host("postgres://user@10.0.0.12:5432/postgres"), Some("10.0.0.12"));
        assert_eq!(url_host(""), None);
    }

    #[tokio::test]
    async fn names_resolve_and_bad_entries_allow_nothing() {
        let list = Allowlist {
            networks: resolve(&["localhost".to_string(), "10.0.0.0/8".into(), "bad/99".into()]).await,
            include_members: false,
        };
        assert!(list.allows(ip("127.0.0.1")), "{list:?}");
        assert!(list.allows(ip("10.9.9.9")));
        assert!(!list.allows(ip("192.0.2.1")));
        assert!(!list.is_open());
        assert!(Allowlist::default().is_open());
    }
}
