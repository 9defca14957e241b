//! What is fuzzed, and what each run must hold besides not panicking.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ha_proto::v1::{NodeStatus, PostgresState, Role};
use pgwarden_config::{DynamicConfig, Problems, Purpose, Severity, Source};
use prost::Message as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub trait Target {
    fn name(&self) -> &'static str;
    /// Inputs to start from.
    fn seeds(&self) -> Vec<Vec<u8>>;
    /// Tokens the mutator inserts.
    fn dictionary(&self) -> &'static [&'static [u8]];
    fn max_len(&self) -> usize;
    /// Runs one input. `Err` names a property that failed; panics are caught
    /// by the caller.
    fn run(&mut self, input: &[u8]) -> Result<(), String>;
}

pub const NAMES: &[&str] = &["config", "dynamic", "settings", "checks", "etcd", "rest"];

pub fn by_name(name: &str) -> anyhow::Result<Box<dyn Target>> {
    Ok(match name {
        "config" => Box::new(ConfigFile),
        "dynamic" => Box::new(DynamicEdit),
        "settings" => Box::new(SettingTexts),
        "checks" => Box::new(HealthChecks),
        "etcd" => Box::new(EtcdValues),
        "rest" => Box::new(RestServer::start()?),
        other => anyhow::bail!("no fuzz target {other:?}: the targets are {}", NAMES.join(", ")),
    })
}

/// A failed load must name at least one error; one that loads must only hold
/// parameters PostgreSQL's config file can carry.
struct ConfigFile;

const CONFIG_SEEDS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tests/fixtures");

impl Target for ConfigFile {
    fn name(&self) -> &'static str {
        "config"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds = vec![
            b"scope: s\nname: n\netcd3:\n  hosts: 127.0.0.1:2379\nrestapi:\n  listen: 0.0.0.0:8008\n  connect_address: 10.0.0.1:8008\npostgresql:\n  listen: 0.0.0.0:5432\n  connect_address: 10.0.0.1:5432\n  data_dir: /var/lib/pg\n  parameters:\n    work_mem: 4MB\n#ENV\nPATRONI_NAME=other\nPATRONI_REPLICATION_PASSWORD=x\n".to_vec(),
        ];
        for sub in ["valid", "invalid"] {
            if let Ok(entries) = std::fs::read_dir(format!("{CONFIG_SEEDS_DIR}/{sub}")) {
                let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                seeds.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
            }
        }
        seeds
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\n  ",
            b": ",
            b"- ",
            b"&a ",
            b"*a",
            b"<<: *a\n",
            b"!!binary ",
            b"{",
            b"}",
            b"[",
            b"]",
            b"~",
            b"null",
            b"true",
            b"'",
            b"\"",
            b"\\u0000",
            b"ttl: ",
            b"loop_wait: ",
            b"fence_margin: ",
            b"synchronous_mode: ",
            b"parameters:\n    ",
            b"tags:\n  nofailover: ",
            b"authentication:\n    superuser:\n      username: ",
            b"listen: ",
            b"hosts: ",
            b"[::1]:",
            b"data_dir: ",
            b"bootstrap:\n  dcs:\n    ",
            b"pg_hba:\n  - ",
            b"\n#ENV\nPATRONI_",
            b"PATRONI_RESTAPI_LISTEN=",
            b"PATRONI_POSTGRESQL_DATA_DIR=",
            b"PATRONI_SCOPE=",
        ]
    }

    fn max_len(&self) -> usize {
        8192
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(input);
        let (yaml, env) = text.split_once("\n#ENV\n").unwrap_or((&text, ""));
        let vars: Vec<(String, String)> =
            env.lines().filter_map(|line| line.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
        let purpose = [Purpose::Service, Purpose::Ctl, Purpose::Agent][input.len() % 3];
        let source = Source { origin: "fuzz".into(), yaml: yaml.to_string() };
        match pgwarden_config::load_from(&source, vars, purpose) {
            Ok(loaded) => {
                for (name, value) in &loaded.config.postgresql.parameters {
                    pgwarden_config::check_parameter_text(name, value)
                        .map_err(|why| format!("loaded a parameter the config file cannot hold: {name}: {why}"))?;
                }
                Ok(())
            }
            Err(e) if e.problems.iter().any(|p| p.severity == Severity::Error) => Ok(()),
            Err(e) => Err(format!("refused with no error named: {e}")),
        }
    }
}

/// `PATCH /config` bodies as the controller applies them: merged into a
/// valid config, then read; an edit with no refusal must hold only
/// parameters PostgreSQL's config file can carry.
struct DynamicEdit;

const BASE_DYNAMIC: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100,"work_mem":"4MB","wal_level":"replica"}}}"#;

impl Target for DynamicEdit {
    fn name(&self) -> &'static str {
        "dynamic"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            BASE_DYNAMIC,
            r#"{"postgresql":{"parameters":{"work_mem":"1MB'\narchive_command = 'touch /x"}}}"#,
            r#"{"postgresql":{"parameters":{"shared_buffers":"64MBgarbage","max_wal_senders":"10 ; x"}}}"#,
            r#"{"synchronous_mode":true,"synchronous_node_count":2,"synchronous_mode_strict":false}"#,
            r#"{"synchronous_mode":"quorum","failsafe_mode":true,"check_timeline":true}"#,
            r#"{"pause":true,"ttl":null,"loop_wait":"5s","retry_timeout":1.5}"#,
            r#"{"standby_cluster":{"host":"10.0.0.1","port":5432,"primary_slot_name":"s"}}"#,
            r#"{"slots":{"a":{"type":"physical"},"b":{"type":"logical","database":"d","plugin":"p"}},"ignore_slots":[{"name":"x"}]}"#,
            r#"{"postgresql":{"pg_hba":["host all all 0.0.0.0/0 md5"],"parameters":{"hot_standby":"on","x.y":"z\\"}}}"#,
            r#"{"maximum_lag_on_failover":"1GB","member_slots_ttl":"30min","primary_start_timeout":0,"primary_stop_timeout":-1}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"ttl\":",
            b"\"loop_wait\":",
            b"\"parameters\":{",
            b"\"postgresql\":{",
            b"\"synchronous_mode\":",
            b"\"synchronous_node_count\":",
            b"\"pause\":",
            b"null",
            b"true",
            b"false",
            b"[]",
            b"{}",
            b"\\n",
            b"\\u0000",
            b"\\\\",
            b"'",
            b",",
            b"\"MB\"",
            b"1e400",
            b"-0.0",
        ]
    }

    fn max_len(&self) -> usize {
        4096
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Ok(edit) = serde_json::from_slice::<Value>(input) else { return Ok(()) };
        let mut config: Value = serde_json::from_str(BASE_DYNAMIC).map_err(|e| e.to_string())?;
        workflows::operations::merge_patch(&mut config, &edit);
        for root in [&edit, &config] {
            let mut problems = Problems::default();
            let (dynamic, _) = DynamicConfig::read(root, "", &mut problems);
            let refused = problems.into_vec().iter().any(|p| p.severity != Severity::Notice);
            if !refused {
                for (name, value) in &dynamic.parameters {
                    pgwarden_config::check_parameter_text(name, value)
                        .map_err(|why| format!("accepted a parameter the config file cannot hold: {name}: {why}"))?;
                }
            }
        }
        Ok(())
    }
}

/// The small texts parsed from outside: setting values against
/// `pg_settings` ranges, lag limits, `synchronous_standby_names`, query
/// strings, addresses and allowlist entries. Parts are separated by NUL.
struct SettingTexts;

impl Target for SettingTexts {
    fn name(&self) -> &'static str {
        "settings"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            "64MB\x008kB\x0016\x001073741823",
            "1e3\x00ms\x00-1\x002147483647",
            "0x10\x00\x000\x00100",
            "2min\x00s\x000\x002147483",
            "FIRST 2 (a, \"b c\", d)\x00\x00\x00",
            "ANY 1 (*)\x00\x00\x00",
            "lag=10MB&tag_x=y&mode=write\x00\x00\x00",
            "[::1]:5432\x00\x00\x00",
            "10.0.0.0/8\x00\x00\x00",
            "http://[fe80::1%eth0]:8008/patroni\x00\x00\x00",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[b"\0", b"kB", b"MB", b"GB", b"TB", b"min", b"us", b"e", b"-", b"+", b".", b"(", b")", b"\"", b",", b"*", b"/"]
    }

    fn max_len(&self) -> usize {
        512
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(input);
        let mut parts = text.split('\0');
        let value = parts.next().unwrap_or_default();
        let unit = parts.next().unwrap_or_default();
        let min = parts.next().unwrap_or_default();
        let max = parts.next().unwrap_or_default();
        let _ = pgwarden_config::check_numeric_setting(value, unit, min, max);
        let _ = ha_core::parse_lag(value);
        let _ = ha_core::sync::parse_standby_names(value);
        let _ = health_api::checks::parse_query(Some(value));
        let _ = pgwarden_config::HostPort::parse(value);
        let _ = pgwarden_config::ListenAddresses::parse(value);
        let _ = health_api::allowlist::parse(value);
        let _ = health_api::allowlist::url_host(value);
        Ok(())
    }
}

/// The health-check decisions on any status the agent could send: a path
/// no check knows never answers 200, and neither does a standby-leader check.
struct HealthChecks;

const KNOWN_CHECKS: &[&str] = &[
    "/patroni",
    "/",
    "/primary",
    "/read-write",
    "/master",
    "/leader",
    "/replica",
    "/read-only",
    "/sync",
    "/synchronous",
    "/async",
    "/asynchronous",
    "/read-only-sync",
    "/read-only-synchronous",
    "/health",
    "/liveness",
    "/readiness",
];

impl Target for HealthChecks {
    fn name(&self) -> &'static str {
        "checks"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let status = NodeStatus {
            postgres_state: PostgresState::Running as i32,
            role: Role::Replica as i32,
            ttl: 10,
            observed_at_unix_ms: 1_000_000,
            last_tick_unix_ms: 999_000,
            dcs_last_seen_unix_ms: 999_000,
            maximum_lag_on_failover: 1 << 20,
            replication_state: "streaming".into(),
            tags_json: r#"{"nofailover":false,"clonefrom":true}"#.into(),
            cluster_optime: 5 << 20,
            replay_lsn: 4 << 20,
            ..NodeStatus::default()
        };
        let primary = NodeStatus { role: Role::Primary as i32, holds_leader: true, ..status.clone() };
        let mut seeds = Vec::new();
        for (path, status) in [
            ("/replica?lag=1MB&tag_clonefrom=true", &status),
            ("/readiness?lag=16MB&mode=write", &status),
            ("/primary", &primary),
            ("/read-only-sync", &primary),
            ("/health?tag_nofailover=false", &status),
        ] {
            let mut seed = format!("{path}\n").into_bytes();
            seed.extend(status.encode_to_vec());
            seeds.push(seed);
        }
        seeds
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[b"?", b"&", b"=", b"lag=", b"mode=write", b"tag_", b"/replica", b"/primary", b"%00", b"\xff\xff\xff\xff\x0f"]
    }

    fn max_len(&self) -> usize {
        1024
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
        let line = String::from_utf8_lossy(&input[..split]);
        let status = NodeStatus::decode(input.get(split + 1..).unwrap_or_default()).unwrap_or_default();
        let (path, query) = match line.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (line.as_ref(), None),
        };
        let now = Instant::now();
        let identity = health_api::checks::Identity { scope: "s".into(), name: "n".into() };
        let latest = Some((status, now));
        let query: BTreeMap<String, String> = health_api::checks::parse_query(query);
        let answer = health_api::checks::answer(path, &query, &identity, &latest, now, true);
        let known = KNOWN_CHECKS.contains(&path);
        if answer.status.as_u16() == 200 && (!known || path == "/standby-leader") {
            return Err(format!("{path} answered 200"));
        }
        Ok(())
    }
}

/// Values under the cluster's prefix in etcd, as another program (Patroni,
/// `etcdctl`, anyone who can write there) may have left them: each parsed as
/// pgwarden parses it, then read as the agent, the controller and `/cluster`
/// read it. The first byte picks the key; the rest is the value.
struct EtcdValues;

impl Target for EtcdValues {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            (0u8, r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"replica","xlog_location":67108864,"timeline":3,"tags":{"nofailover":"true","sync_priority":"0"},"released_leader":true}"#),
            (0, "postgres://[fe80::1]:5432/postgres"),
            (1, r#"{"leader":"pg0","member":"pg1","scheduled_at":"2026-12-05T10:00:00+00:00"}"#),
            (1, "pg0:pg1"),
            (2, r#"{"leader":"pg0","sync_standby":"pg1,pg2","quorum":1}"#),
            (3, r#"[[1,25165984,"no recovery target specified","2026-12-05T10:00:00+00:00","pg1"],[2,33554432,"x"]]"#),
            (4, r#"{"optime":67108864,"slots":{"pg1":67108864},"retain_slots":["pg1"]}"#),
        ]
        .iter()
        .map(|(key, value)| {
            let mut seed = vec![*key];
            seed.extend_from_slice(value.as_bytes());
            seed
        })
        .collect()
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"conn_url\":",
            b"\"tags\":{",
            b"\"timeline\":",
            b"postgres://",
            b"[::1]",
            b":65536",
            b",",
            b"\"true\"",
            b"null",
            b"[]",
            b"{}",
        ]
    }

    fn max_len(&self) -> usize {
        2048
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Some((&key, value)) = input.split_first() else { return Ok(()) };
        let mut view = dcs::ClusterView::default();
        match key % 5 {
            0 => {
                if let Ok(data) = dcs::MemberData::parse(value) {
                    let _ = data.host_port();
                    let _ = data.known_tags();
                    view.members.push(dcs::MemberEntry { name: "pg1".into(), data, lease: 1 });
                }
            }
            1 => view.failover = dcs::Failover::parse(value),
            2 => {
                view.sync = serde_json::from_slice::<dcs::SyncState>(value).ok();
                let _ = view.sync.as_ref().map(dcs::SyncState::members);
            }
            3 => view.history = serde_json::from_slice(value).unwrap_or_default(),
            _ => view.status = serde_json::from_slice(value).ok(),
        }
        let _ = health_api::cluster::cluster_json("s", &view);
        let _ = health_api::cluster::history_json(&view);
        Ok(())
    }
}

/// Raw bytes sent to a running REST server (the real `health_api::run`, with
/// no agent behind it, and a write password set) over loopback TCP: each
/// connection is answered with HTTP or closed within 3 s of the client's
/// end of request, and the server keeps answering `/health`.
struct RestServer {
    runtime: tokio::runtime::Runtime,
    address: std::net::SocketAddr,
    runs: u64,
}

impl RestServer {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let address = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let writes = health_api::WriteSettings {
                controller_url: "http://127.0.0.1:9".into(),
                authentication: Some(pgwarden_config::BasicAuth {
                    username: "admin".into(),
                    password: pgwarden_config::Secret::new("s3cret"),
                }),
                ..Default::default()
            };
            let identity = health_api::checks::Identity { scope: "fuzz".into(), name: "pg0".into() };
            tokio::spawn(health_api::run(
                identity,
                "http://127.0.0.1:9".into(),
                None,
                None,
                writes,
                listener,
                std::future::pending(),
            ));
            anyhow::Ok(address)
        })?;
        Ok(Self { runtime, address, runs: 0 })
    }

    async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        // The server may close before reading it all (a bad request line).
        let _ = stream.write_all(request).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        match tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await {
            Ok(_) => Ok(answer),
            Err(_) => Err(format!("no answer and no close within 3 s ({} bytes so far)", answer.len())),
        }
    }
}

impl Target for RestServer {
    fn name(&self) -> &'static str {
        "rest"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            "GET /primary HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /replica?lag=10MB&tag_nofailover=false HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
            "OPTIONS /read-only HTTP/1.0\r\n\r\n",
            "HEAD /patroni HTTP/1.1\r\n\r\n",
            "POST /switchover HTTP/1.1\r\nAuthorization: Basic YWRtaW46czNjcmV0\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n{\"leader\":\"pg0\",\"candidate\":1}",
            "PATCH /config HTTP/1.1\r\nAuthorization: Basic YWRtaW46czNjcmV0\r\nContent-Length: 44\r\n\r\n{\"postgresql\":{\"parameters\":{\"a\":\"b\\n\"}}}",
            "POST /restart HTTP/1.1\r\nAuthorization: Basic YWRtaW46czNjcmV0\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\n{\"restart_pending\":\"yes\"}\r\n0\r\n\r\n",
            "DELETE /switchover HTTP/1.1\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n",
            "POST /reload HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 0\r\n\r\n",
            "GET /metrics HTTP/1.1\r\n\r\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\r\n",
            b"\r\n\r\n",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked\r\n",
            b"Authorization: Basic ",
            b"YWRtaW46czNjcmV0",
            b"Connection: close\r\n",
            b"Expect: 100-continue\r\n",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/2.0",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"%2F",
            b"%00",
            b"?",
            b"&",
            b"{\"",
            b"\":",
            b"}",
            b"/switchover",
            b"/failover",
            b"/config",
            b"/restart",
            b"/reinitialize",
            b"/cluster",
            b"/history",
        ]
    }

    fn max_len(&self) -> usize {
        4096
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        self.runs += 1;
        let address = self.address;
        let check_health = self.runs.is_multiple_of(500);
        self.runtime.block_on(async move {
            let answer = Self::exchange(address, input).await?;
            if !answer.is_empty() && !answer.starts_with(b"HTTP/1.") {
                return Err(format!(
                    "answered with something that is not HTTP: {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
            if check_health {
                let health = Self::exchange(address, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").await?;
                if !health.starts_with(b"HTTP/1.1 503") {
                    return Err(format!(
                        "GET /health (no agent: 503) answered {:?}",
                        String::from_utf8_lossy(&health[..health.len().min(40)])
                    ));
                }
            }
            Ok(())
        })
    }
}
