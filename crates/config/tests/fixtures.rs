//! The checked-in suite of configs written as the common Patroni guides write
//! them (valid) and broken ones (invalid); see `tests/fixtures/README.md`.

use std::path::{Path, PathBuf};

use pgwarden_config::{Purpose, Severity, Source, load_from};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture directory exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml" || ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected a real suite in {}", dir.display());
    files
}

fn expectations(path: &Path, ext: &str) -> Vec<String> {
    std::fs::read_to_string(path.with_extension(ext))
        .map(|text| text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn source(path: &Path) -> Source {
    Source::file(path).expect("fixture is readable")
}

#[test]
fn valid_configs_load_with_exactly_their_warnings() {
    for path in fixtures("valid") {
        let loaded = load_from(&source(&path), std::iter::empty(), Purpose::Agent)
            .unwrap_or_else(|e| panic!("{} should load:\n{e}", path.display()));
        let warnings: Vec<String> =
            loaded.warnings.iter().filter(|p| p.severity == Severity::Warning).map(ToString::to_string).collect();
        let expected = expectations(&path, "warn");
        for needle in &expected {
            assert!(
                warnings.iter().any(|w| w.contains(needle.as_str())),
                "{}: no warning mentions {needle:?}; warnings: {warnings:#?}",
                path.display()
            );
        }
        if expected.is_empty() {
            assert!(warnings.is_empty(), "{}: unexpected warnings {warnings:#?}", path.display());
        }
        assert!(!loaded.config.scope.is_empty() && !loaded.config.name.is_empty());
        assert!(!loaded.config.etcd.endpoints.is_empty(), "{}: no etcd endpoint", path.display());
    }
}

#[test]
fn invalid_configs_are_refused_naming_the_key() {
    for path in fixtures("invalid") {
        let err = load_from(&source(&path), std::iter::empty(), Purpose::Agent)
            .err()
            .unwrap_or_else(|| panic!("{} should be refused", path.display()));
        let text = err.to_string();
        let expected = expectations(&path, "expect");
        assert!(!expected.is_empty(), "{} has no .expect file", path.display());
        for needle in &expected {
            assert!(text.contains(needle.as_str()), "{}: output lacks {needle:?}:\n{text}", path.display());
        }
        let first_error =
            err.problems.iter().find(|p| p.severity == Severity::Error).expect("a refused config has an error");
        assert!(
            err.problems.iter().any(|p| p.severity == Severity::Error && p.path.contains(expected[0].as_str())),
            "{}: no error is located at {:?}; first error: {first_error}",
            path.display(),
            expected[0]
        );
    }
}

#[test]
fn the_shipped_sample_config_is_valid_without_warnings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pgwarden.yml");
    let loaded = load_from(&source(&path), std::iter::empty(), Purpose::Service)
        .unwrap_or_else(|e| panic!("deploy/pgwarden.yml must load:\n{e}"));
    let warnings: Vec<_> = loaded.warnings.iter().filter(|p| p.severity == Severity::Warning).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(loaded.config.pgwarden.agent_grpc_listen.port, 9008, "agent gRPC = restapi port + 1000");
    assert_eq!(loaded.config.pgwarden.controller_grpc_listen.port, 10008, "controller gRPC = restapi port + 2000");
    assert_eq!(loaded.config.key_prefix(), "/service/main/");
}

#[test]
fn advertised_grpc_addresses_follow_the_listeners() {
    let yaml = "scope: s\nname: n\nrestapi:\n  listen: 0.0.0.0:8008\n  connect_address: 10.0.0.5:8008\n\
                etcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  listen: 0.0.0.0:5432\n  data_dir: /d\n\
                pgwarden:\n  agent_grpc_listen: 0.0.0.0:7001\n";
    let source = Source { origin: "inline".into(), yaml: yaml.into() };
    let config = load_from(&source, std::iter::empty(), Purpose::Service).expect("valid").config;
    assert_eq!(config.pgwarden.agent_grpc_connect_address.to_string(), "10.0.0.5:7001");
    assert_eq!(config.pgwarden.controller_grpc_connect_address.to_string(), "10.0.0.5:10008");
}

#[test]
fn restapi_request_queue_size_is_read_and_bounded_as_patroni_bounds_it() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/unsupported_extras.yml");
    let config = load_from(&source(&path), std::iter::empty(), Purpose::Service).expect("valid").config;
    assert_eq!(config.restapi.request_queue_size, Some(10));
    let yaml = |size: &str| Source {
        origin: "inline".into(),
        yaml: format!(
            "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\n  request_queue_size: {size}\n\
             etcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /d\n"
        ),
    };
    let refused = load_from(&yaml("5000"), std::iter::empty(), Purpose::Service).expect_err("above 4096");
    assert!(refused.to_string().contains("restapi.request_queue_size"), "{refused}");
    let unset = load_from(&minimal(), std::iter::empty(), Purpose::Service).expect("valid").config;
    assert_eq!(unset.restapi.request_queue_size, None, "unset: the system's default");
}

fn minimal() -> Source {
    source(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/minimal.yml"))
}

#[test]
fn a_written_boolean_tag_wins_over_the_priority_beside_it() {
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid").join(name);
        load_from(&source(&path), std::iter::empty(), Purpose::Agent).expect("loads").config.tags
    };
    let strict = load("tags_conflicting.yml");
    assert!(strict.nofailover && strict.nosync, "{strict:?}");
    assert_eq!((strict.failover_priority, strict.sync_priority), (0, 0));
    // Patroni lets `nofailover: false` win over `failover_priority: 0`:
    // the member takes part, ranked below every priority of 1 or more.
    let loose = load("tags_conflicting_false.yml");
    assert!(!loose.nofailover && !loose.nosync, "{loose:?}");
    assert_eq!((loose.failover_priority, loose.sync_priority), (0, 0));
    assert_eq!(loose.json.get("nosync"), Some(&serde_json::Value::Bool(false)), "published beside sync_priority");
}

#[test]
fn log_loggers_become_filter_directives_for_the_targets_doing_that_work() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/unsupported_extras.yml");
    let loaded = load_from(&source(&path), std::iter::empty(), Purpose::Agent).expect("valid");
    assert_eq!(
        loaded.config.log.loggers,
        ["node_agent::postgres=warn", "pg_local=warn"],
        "patroni.postmaster: WARNING"
    );
    let notes: Vec<String> =
        loaded.warnings.iter().filter(|p| p.severity == Severity::Notice).map(ToString::to_string).collect();
    assert!(notes.iter().any(|n| n.contains("thread_pool_size: has no counterpart in pgwarden")), "{notes:#?}");
    let yaml = |loggers: &str| Source {
        origin: "inline".into(),
        yaml: format!(
            "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\nlog:\n  loggers:\n{loggers}\
             etcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /d\n"
        ),
    };
    let own = load_from(&yaml("    node_agent::ha::sync: DEBUG\n    boto: INFO\n"), std::iter::empty(), Purpose::Agent)
        .expect("valid");
    assert_eq!(own.config.log.loggers, ["node_agent::ha::sync=debug"]);
    assert!(own.warnings.iter().any(|w| w.path == "log.loggers.boto"), "{:?}", own.warnings);
    let refused =
        load_from(&yaml("    patroni.ha: LOUD\n"), std::iter::empty(), Purpose::Agent).expect_err("a bad level");
    assert!(refused.to_string().contains("log.loggers.patroni.ha"), "{refused}");
}

/// A minimal config whose `etcd3:` section is `etcd` (indented lines).
fn with_etcd3(etcd: &str) -> Source {
    Source {
        origin: "inline".into(),
        yaml: format!(
            "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\netcd3:\n{etcd}\
             postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /d\n"
        ),
    }
}

#[test]
fn an_etcd_proxy_replaces_the_other_addresses_and_turns_discovery_off() {
    let yaml = with_etcd3;
    let loaded = load_from(
        &yaml("  hosts: 10.0.0.1:2379,10.0.0.2:2379\n  proxy: http://10.0.0.9:23790/\n"),
        std::iter::empty(),
        Purpose::Agent,
    )
    .expect("valid");
    assert_eq!(loaded.config.etcd.endpoints, ["http://10.0.0.9:23790"]);
    assert!(loaded.config.etcd.use_proxies);
    assert!(loaded.warnings.iter().any(|w| w.path == "etcd3.proxy"), "{:?}", loaded.warnings);
    let refused =
        load_from(&yaml("  proxy: 10.0.0.9:23790\n"), std::iter::empty(), Purpose::Agent).expect_err("no scheme");
    assert!(refused.to_string().contains("etcd3.proxy"), "{refused}");
}

#[test]
fn etcd_srv_names_the_records_in_patronis_order_and_needs_no_address() {
    let yaml = with_etcd3;
    let loaded = load_from(&yaml("  srv: example.com.\n  srv_suffix: dc1\n"), std::iter::empty(), Purpose::Agent)
        .expect("srv alone is enough");
    let srv = loaded.config.etcd.srv.expect("srv read");
    assert!(loaded.config.etcd.endpoints.is_empty());
    let names: Vec<(String, &str, bool)> = srv.record_names();
    assert_eq!(
        names,
        [
            ("_etcd-client-ssl-dc1._tcp.example.com".to_string(), "https", false),
            ("_etcd-client-dc1._tcp.example.com".to_string(), "http", false),
            ("_etcd-ssl-dc1._tcp.example.com".to_string(), "https", false),
            ("_etcd-dc1._tcp.example.com".to_string(), "http", false),
            ("_etcd-server-ssl-dc1._tcp.example.com".to_string(), "https", true),
            ("_etcd-server-dc1._tcp.example.com".to_string(), "http", true),
        ]
    );
    let plain = load_from(&yaml("  srv: example.com\n  hosts: 10.0.0.1:2379\n"), std::iter::empty(), Purpose::Agent)
        .expect("srv with a fallback");
    assert_eq!(plain.config.etcd.srv.expect("srv").record_names()[1].0, "_etcd-client._tcp.example.com");
    assert_eq!(plain.config.etcd.endpoints, ["http://10.0.0.1:2379"]);
    let proxied =
        load_from(&yaml("  srv: example.com\n  proxy: http://10.0.0.9:23790\n"), std::iter::empty(), Purpose::Agent)
            .expect("proxy wins");
    assert!(proxied.config.etcd.srv.is_none());
    assert!(proxied.warnings.iter().any(|w| w.path == "etcd3.srv"), "{:?}", proxied.warnings);
    let refused = load_from(&yaml("  srv_suffix: dc1\n"), std::iter::empty(), Purpose::Agent).expect_err("nothing");
    assert!(refused.to_string().contains("srv: <DNS domain>"), "{refused}");
}
