//! Patroni's `etcd.srv`/`srv_suffix`: etcd's client URLs from DNS SRV
//! records, asked through the system's resolver configuration
//! (`/etc/resolv.conf`), in Patroni's order: the client records first
//! (`_etcd-client-ssl`, `_etcd-client`, `_etcd-ssl`, `_etcd`), then the
//! peer records (`_etcd-server-ssl`, `_etcd-server`), whose hosts are asked
//! for the members' client URLs (`GET /members` on etcd's peer port). The
//! first name that gives any URL wins.

use pgwarden_config::SrvDiscovery;

use crate::EtcdSettings;

/// etcd's client URLs from `srv`'s records; the error names every record
/// asked when none gave one.
pub async fn lookup(srv: &SrvDiscovery, settings: &EtcdSettings) -> Result<Vec<String>, String> {
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .map_err(|e| format!("cannot read the system's DNS configuration (/etc/resolv.conf): {e}"))?
        .build()
        .map_err(|e| format!("cannot set up a DNS resolver: {e}"))?;
    let mut asked = Vec::new();
    for (name, scheme, peers) in srv.record_names() {
        // Fully qualified: no search domain is appended.
        let records: Vec<(String, u16)> = match resolver.srv_lookup(format!("{name}.")).await {
            Ok(found) => found
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => {
                        Some((srv.target.to_utf8().trim_end_matches('.').to_string(), srv.port))
                    }
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!("SRV {name}: {e}");
                Vec::new()
            }
        };
        asked.push(name.clone());
        let mut urls = Vec::new();
        for (host, port) in records {
            let url = format!("{scheme}://{host}:{port}");
            if !peers {
                urls.push(url);
                continue;
            }
            match crate::v2::peer_client_urls(settings, &url).await {
                Ok(clients) => {
                    urls.extend(clients);
                    break;
                }
                Err(why) => tracing::warn!("SRV {name}: GET {url}/members: {why}"),
            }
        }
        if !urls.is_empty() {
            urls.sort();
            urls.dedup();
            tracing::info!("etcd endpoints from DNS SRV {name}: {}", urls.join(", "));
            return Ok(urls);
        }
    }
    Err(format!("no SRV record gave an etcd URL (asked {})", asked.join(", ")))
}
