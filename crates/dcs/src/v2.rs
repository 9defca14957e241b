//! etcd's v2 keyspace, read over its HTTP API (`/v2/keys/...`).
//!
//! Patroni drives an `etcd:` section through etcd's v2 API, so a cluster
//! built from the common guides keeps its keys there, invisible to the v3
//! API pgwarden speaks. Before an agent with an `etcd:` section acts, it
//! looks there for its scope: a cluster found in v2 that has not been moved
//! to v3 makes it refuse, touching nothing. `pgwardenctl migrate-v2` reads
//! the same keys to copy them to v3.
//!
//! etcd 3.4 serves the v2 API only with `--enable-v2`; without it the path
//! answers a plain-text 404, which reads as "v2 disabled": no v2 cluster can
//! exist then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::EtcdSettings;

/// What etcd's v2 keyspace holds for one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Scope {
    /// The v2 API is not served (etcd without `--enable-v2`).
    Disabled,
    /// Served, and nothing is stored under the scope.
    Absent,
    /// Keys under the scope: the key name below the scope's directory
    /// (`initialize`, `config`, `leader`, `members/node1`, ...) and its value.
    Present(V2Cluster),
}

/// The keys of a cluster in the v2 keyspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Cluster {
    pub keys: BTreeMap<String, String>,
}

impl V2Cluster {
    pub fn initialize(&self) -> Option<&str> {
        self.keys.get("initialize").map(String::as_str)
    }

    pub fn leader(&self) -> Option<&str> {
        self.keys.get("leader").map(String::as_str)
    }

    /// Members whose key has not expired: Patroni keeps them alive every loop.
    pub fn members(&self) -> Vec<&str> {
        self.keys.keys().filter_map(|k| k.strip_prefix("members/")).collect()
    }

    /// A Patroni still runs on v2: a leader key or a member key is alive.
    pub fn is_live(&self) -> bool {
        self.leader().is_some() || !self.members().is_empty()
    }

    pub fn paused(&self) -> bool {
        self.keys
            .get("config")
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .is_some_and(|c| c.get("pause").and_then(Value::as_bool) == Some(true))
    }
}

/// Whether an agent may start beside what v2 holds for its scope:
/// `Ok(None)` go on, `Ok(Some(warning))` go on and say it, `Err(refusal)`
/// stop and touch nothing. `v3_initialize` is the v3 `initialize` key.
pub fn verdict(
    v2: &V2Scope,
    v3_initialize: Option<&str>,
    dir: &str,
    config_path: &str,
) -> Result<Option<String>, String> {
    let V2Scope::Present(cluster) = v2 else { return Ok(None) };
    let sysid = cluster.initialize().unwrap_or("unknown");
    let migrated = v3_initialize.is_some_and(|v3| !v3.is_empty() && Some(v3) == cluster.initialize());
    if cluster.is_live() {
        let leader = cluster.leader().map_or_else(|| "no leader".to_string(), |l| format!("leader {l}"));
        return Err(format!(
            "etcd's v2 keyspace holds a live cluster under {dir} ({leader}; members {}; system identifier {sysid}), \
             run by Patroni through an `etcd:` section. pgwarden speaks etcd's v3 API, where that cluster is \
             invisible: starting here could initialise a second primary or stop the running one. Nothing was \
             changed. Move the cluster to etcd's v3 keyspace first (docs/migrating-from-patroni.md, \
             \"A cluster on etcd's v2 API\"): 1. patronictl pause --wait; 2. pgwardenctl -c {config_path} \
             migrate-v2; 3. on every node, replicas first, rename `etcd:` to `etcd3:` in patroni.yml and restart \
             Patroni; 4. patronictl resume --wait. Start pgwarden once no Patroni member is left on v2.",
            if cluster.members().is_empty() { "none".to_string() } else { cluster.members().join(", ") }
        ));
    }
    if migrated {
        return Ok(Some(format!(
            "etcd's v2 keyspace still holds stale keys of this cluster under {dir} (copied to v3, no live member): \
             remove them with `pgwardenctl -c {config_path} migrate-v2 --remove-v2`"
        )));
    }
    Err(format!(
        "etcd's v2 keyspace holds the keys of a cluster under {dir} (system identifier {sysid}) with no live member, \
         and etcd's v3 keyspace {}. Nothing was changed. If that cluster is the one to run, copy its keys to v3 \
         with `pgwardenctl -c {config_path} migrate-v2`; if it is gone for good, remove them with \
         `pgwardenctl -c {config_path} migrate-v2 --remove-v2 --force`.",
        match v3_initialize {
            Some(v3) if !v3.is_empty() => format!("holds another one (system identifier {v3})"),
            _ => "holds none".to_string(),
        }
    ))
}

/// Collects every leaf below `dir` (v2's recursive listing) into `keys`.
fn collect(node: &Value, dir: &str, keys: &mut BTreeMap<String, String>) {
    if let Some(children) = node.get("nodes").and_then(Value::as_array) {
        for child in children {
            collect(child, dir, keys);
        }
    } else if node.get("dir").and_then(Value::as_bool) != Some(true)
        && let (Some(key), Some(value)) =
            (node.get("key").and_then(Value::as_str), node.get("value").and_then(Value::as_str))
        && let Some(name) = key.strip_prefix(dir)
    {
        keys.insert(name.trim_start_matches('/').to_string(), value.to_string());
    }
}

/// Reads an answer of `GET /v2/keys/<scope dir>?recursive=true`.
pub fn parse_answer(status: u16, body: &str, dir: &str) -> Result<V2Scope, String> {
    let json: Option<Value> = serde_json::from_str(body).ok();
    match (status, json) {
        (200, Some(json)) => {
            let mut keys = BTreeMap::new();
            if let Some(node) = json.get("node") {
                collect(node, dir, &mut keys);
            }
            Ok(if keys.is_empty() { V2Scope::Absent } else { V2Scope::Present(V2Cluster { keys }) })
        }
        // "Key not found".
        (404, Some(json)) if json.get("errorCode").and_then(Value::as_i64) == Some(100) => Ok(V2Scope::Absent),
        // etcd 3.4+ without --enable-v2: Go's plain "404 page not found".
        (404, None) => Ok(V2Scope::Disabled),
        (401 | 403, _) => {
            Err(format!("etcd's v2 API refused the credentials ({status}): check etcd.username and etcd.password"))
        }
        (status, _) => Err(format!("etcd's v2 API answered {status}: {}", body.chars().take(200).collect::<String>())),
    }
}

/// The directory of a scope in the v2 keyspace: `/service/main`.
pub fn scope_dir(namespace: &str, scope: &str) -> String {
    format!("{}/{scope}", namespace.trim_end_matches('/'))
}

fn tls_connector(settings: &EtcdSettings) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let cacert = settings.cacert.as_ref().ok_or("an https etcd endpoint needs etcd.cacert to check v2's keyspace")?;
    for cert in
        CertificateDer::pem_file_iter(cacert).map_err(|e| format!("read etcd.cacert {}: {e}", cacert.display()))?
    {
        roots
            .add(cert.map_err(|e| format!("parse etcd.cacert {}: {e}", cacert.display()))?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&settings.cert, &settings.key) {
        (Some(cert), key) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("read etcd.cert {}: {e}", cert.display()))?;
            let key_path = key.as_ref().unwrap_or(cert);
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| format!("read etcd.key {}: {e}", key_path.display()))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("etcd.cert and etcd.key: {e}"))?
        }
        (None, _) => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> Result<(u16, String), String> {
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("etcd sent no HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("etcd sent no HTTP status")?;
    Ok((status, body.to_string()))
}

/// The client URLs of etcd's members, from `GET /members` on a member's
/// peer URL (etcd's peer API; `srv`'s `_etcd-server` records name peers).
pub(crate) async fn peer_client_urls(settings: &EtcdSettings, peer: &str) -> Result<Vec<String>, String> {
    let (status, body) = request(settings, peer, "GET", "/members").await?;
    if status >= 400 {
        return Err(format!("answered {status}"));
    }
    let members: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("not a member list: {e}"))?;
    Ok(members
        .iter()
        .filter_map(|m| m.get("clientURLs").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .map(|url| url.trim_end_matches('/').to_string())
        .collect())
}

/// One request against one endpoint (`http(s)://host:port`).
async fn request(settings: &EtcdSettings, endpoint: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    let (https, authority) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme == "https", rest.trim_end_matches('/')),
        None => (false, endpoint),
    };
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n");
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect to {authority}: {e}"))?;
    if https {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let tls = tls_connector(settings)?.connect(name, tcp).await.map_err(|e| format!("TLS to {authority}: {e}"))?;
        exchange(tls, &request).await
    } else {
        exchange(tcp, &request).await
    }
}

/// A service refused to start and touched nothing: its `main` exits with
/// EX_CONFIG (78), which the units' `RestartPreventExitStatus=` keeps
/// systemd from restarting in a loop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(pub String);

/// The exit code of a refused start (sysexits' EX_CONFIG).
pub const REFUSED_EXIT_CODE: u8 = 78;

/// With an `etcd:` section, Patroni keeps the cluster in etcd's v2 keyspace:
/// a service looks there before it acts (the guides' users' clusters live
/// there). Waits for etcd to answer; refuses with [`StartRefused`] when a
/// cluster lives there that has not been moved to v3. Does nothing for an
/// `etcd3:` section.
pub async fn check_scope(
    config: &pgwarden_config::Config,
    etcd: &crate::Etcd,
    timeout: Duration,
    config_path: Option<&std::path::Path>,
) -> Result<(), StartRefused> {
    if config.etcd.section != "etcd" {
        return Ok(());
    }
    let mut settings = EtcdSettings::from_config(&config.etcd, timeout);
    // Those `connect` found (DNS SRV records give them with `srv`).
    settings.endpoints = etcd.endpoints();
    let keys = crate::Keys::new(&config.namespace, &config.scope);
    let dir = scope_dir(&config.namespace, &config.scope);
    let path = config_path.map_or_else(|| "<config>".to_string(), |p| p.display().to_string());
    let mut logged = false;
    loop {
        let found = probe(&settings, &config.namespace, &config.scope).await;
        let v3 = crate::read_cluster(etcd, &keys).await;
        match (found, v3) {
            (Ok(v2), Ok(view)) => {
                return match verdict(&v2, view.initialize.as_deref(), &dir, &path) {
                    Ok(None) => {
                        tracing::info!("etcd's v2 keyspace holds no cluster under {dir}");
                        Ok(())
                    }
                    Ok(Some(warning)) => {
                        tracing::warn!("{warning}");
                        Ok(())
                    }
                    Err(refusal) => Err(StartRefused(refusal)),
                };
            }
            (Err(e), _) if !logged => {
                tracing::warn!(
                    "{e}; waiting for etcd before acting (an `etcd:` section may mean a Patroni cluster on v2)"
                );
                logged = true;
            }
            (_, Err(e)) if !logged => {
                tracing::warn!("failed to read the cluster from etcd: {}; waiting", crate::describe_error(&e));
                logged = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One request, trying each endpoint in turn until one answers.
async fn first_answer(settings: &EtcdSettings, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut errors = Vec::new();
    for endpoint in &settings.endpoints {
        let limit = settings.request_timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, request(settings, endpoint, method, path)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => errors.push(format!("{endpoint}: {e}")),
            Err(_) => errors.push(format!("{endpoint}: timed out")),
        }
    }
    Err(format!("cannot reach etcd's v2 API: {}", errors.join("; ")))
}

/// Looks for `scope` in etcd's v2 keyspace.
pub async fn probe(settings: &EtcdSettings, namespace: &str, scope: &str) -> Result<V2Scope, String> {
    let dir = scope_dir(namespace, scope);
    let (status, body) = first_answer(settings, "GET", &format!("/v2/keys{dir}?recursive=true&quorum=true")).await?;
    parse_answer(status, &body, &dir)
}

/// Deletes the scope's directory from etcd's v2 keyspace (every key below it).
pub async fn remove(settings: &EtcdSettings, namespace: &str, scope: &str) -> Result<(), String> {
    let dir = scope_dir(namespace, scope);
    match first_answer(settings, "DELETE", &format!("/v2/keys{dir}?recursive=true&dir=true")).await? {
        (200 | 202, _) => Ok(()),
        (404, body) if body.contains("\"errorCode\":100") => Ok(()),
        (status, body) => Err(format!("etcd's v2 API refused to delete {dir} ({status}): {}", body.trim())),
    }
}

/// The v3 keys a cluster moved from v2 gets: its lasting keys, with
/// Patroni's old `optime/leader` as `status`. Not copied: `leader` and
/// `members/*` (on leases; each Patroni writes its own on v3) and `failover`
/// (a request left over must not act in the new keyspace).
pub fn keys_to_copy(cluster: &V2Cluster) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for name in ["initialize", "config", "history", "sync"] {
        if let Some(value) = cluster.keys.get(name) {
            out.push((name, value.clone()));
        }
    }
    match (cluster.keys.get("status"), cluster.keys.get("optime/leader")) {
        (Some(status), _) => out.push(("status", status.clone())),
        (None, Some(optime)) => out.push(("status", format!("{{\"optime\":{}}}", optime.trim()))),
        (None, None) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_patroni_cluster_listing() {
        let body = r#"{"action":"get","node":{"key":"/service/main","dir":true,"nodes":[
            {"key":"/service/main/initialize","value":"7312"},
            {"key":"/service/main/config","value":"{\"pause\":true}"},
            {"key":"/service/main/leader","value":"node1","ttl":20},
            {"key":"/service/main/members","dir":true,"nodes":[
                {"key":"/service/main/members/node1","value":"{}"},
                {"key":"/service/main/members/node2","value":"{}"}]}]}}"#;
        let V2Scope::Present(cluster) = parse_answer(200, body, "/service/main").expect("parsed") else {
            panic!("a cluster")
        };
        assert_eq!(cluster.initialize(), Some("7312"));
        assert_eq!(cluster.leader(), Some("node1"));
        assert_eq!(cluster.members(), vec!["node1", "node2"]);
        assert!(cluster.is_live() && cluster.paused());
    }

    #[test]
    fn tells_absent_from_disabled() {
        let missing = r#"{"errorCode":100,"message":"Key not found","cause":"/service/main","index":4}"#;
        assert_eq!(parse_answer(404, missing, "/service/main"), Ok(V2Scope::Absent));
        assert_eq!(parse_answer(404, "404 page not found\n", "/service/main"), Ok(V2Scope::Disabled));
        assert!(parse_answer(500, "boom", "/service/main").is_err());
    }

    fn cluster(keys: &[(&str, &str)]) -> V2Scope {
        V2Scope::Present(V2Cluster { keys: keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() })
    }

    #[test]
    fn a_live_v2_cluster_is_refused_and_a_migrated_one_warns() {
        let live = cluster(&[("initialize", "7"), ("leader", "node1"), ("members/node1", "{}")]);
        let refusal = verdict(&live, None, "/service/main", "/etc/p.yml").expect_err("refused");
        assert!(refusal.contains("leader node1") && refusal.contains("migrate-v2"), "{refusal}");
        // Even when v3 holds the same cluster: Patroni still runs on v2.
        assert!(verdict(&live, Some("7"), "/service/main", "/etc/p.yml").is_err());
        let stale = cluster(&[("initialize", "7"), ("config", "{}")]);
        assert!(verdict(&stale, Some("7"), "/service/main", "/etc/p.yml").expect("goes on").is_some());
        assert!(verdict(&stale, None, "/service/main", "/etc/p.yml").is_err());
        assert!(verdict(&stale, Some("8"), "/service/main", "/etc/p.yml").is_err());
        assert_eq!(verdict(&V2Scope::Absent, None, "/service/main", "/etc/p.yml"), Ok(None));
        assert_eq!(verdict(&V2Scope::Disabled, None, "/service/main", "/etc/p.yml"), Ok(None));
    }

    #[test]
    fn scope_dirs_follow_the_namespace() {
        assert_eq!(scope_dir("/service/", "main"), "/service/main");
        assert_eq!(scope_dir("/percona_lab/", "pg"), "/percona_lab/pg");
    }
}
