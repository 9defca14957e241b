//! The checked-in key table (`keys.tsv`) against the loader: every key the
//! table calls implemented is read and type-checked, and every unsupported
//! key is accepted with a warning, never refused as unknown.

use pgwarden_config::keys::{Status, table};
use pgwarden_config::{Purpose, Severity, Source, load_from};
use serde_json::{Value, json};

fn base(dcs_section: &str) -> Value {
    json!({
        "scope": "t",
        "name": "n1",
        "restapi": {"listen": "127.0.0.1:8008"},
        dcs_section: {"hosts": "127.0.0.1:2379"},
        "postgresql": {"listen": "127.0.0.1:5432", "data_dir": "/tmp/t"},
    })
}

fn set(root: &mut Value, path: &str, value: Value) {
    let segments: Vec<&str> = path.split('.').collect();
    let mut node = root;
    for segment in &segments[..segments.len() - 1] {
        if !node.get(*segment).is_some_and(Value::is_object) {
            node[*segment] = json!({});
        }
        node = node.get_mut(*segment).expect("just inserted");
    }
    node[segments[segments.len() - 1]] = value;
}

fn load(root: &Value) -> Result<Vec<pgwarden_config::Problem>, Vec<pgwarden_config::Problem>> {
    // JSON is YAML, so the tree goes through the real YAML path.
    let source = Source { origin: "generated".into(), yaml: root.to_string() };
    load_from(&source, std::iter::empty(), Purpose::Service).map(|l| l.warnings).map_err(|e| e.problems)
}

const SCALARS: &[&str] = &["string", "int", "number", "bool", "host_port", "listen", "duration", "host_port_list"];

#[test]
fn the_base_config_loads() {
    assert!(load(&base("etcd3")).is_ok());
    assert!(load(&base("etcd")).is_ok());
}

#[test]
fn every_implemented_scalar_key_is_read_and_type_checked() {
    let mut checked = 0;
    for row in table() {
        if row.status != Status::Implemented || row.path.contains('*') || !SCALARS.contains(&row.kind.as_str()) {
            continue;
        }
        let section = if row.path.starts_with("etcd.") { "etcd" } else { "etcd3" };
        let mut root = base(section);
        set(&mut root, &row.path, json!({"not": "a scalar"}));
        let problems = match load(&root) {
            Ok(warnings) => panic!("{}: a section where a {} belongs was accepted ({warnings:?})", row.path, row.kind),
            Err(problems) => problems,
        };
        assert!(
            problems.iter().any(|p| p.severity == Severity::Error && p.path.starts_with(&row.path)),
            "{}: no error names the key; got {problems:#?}",
            row.path
        );
        checked += 1;
    }
    assert!(checked > 60, "only {checked} keys checked");
}

#[test]
fn every_unsupported_key_warns_and_is_never_unknown() {
    let mut checked = 0;
    for row in table() {
        if row.status != Status::Unsupported {
            continue;
        }
        let path = row.path.replace(".**", "").replace('*', "custom_method");
        // Other DCS sections conflict with etcd by design; they are checked elsewhere.
        if ["consul", "zookeeper", "exhibitor", "kubernetes", "raft"].contains(&path.split('.').next().unwrap_or("")) {
            continue;
        }
        let section = if path.starts_with("etcd.") { "etcd" } else { "etcd3" };
        let mut root = base(section);
        set(&mut root, &path, json!("x"));
        match load(&root) {
            Ok(warnings) => assert!(
                warnings.iter().any(|w| w.severity == Severity::Warning
                    && path.starts_with(&w.path)
                    && w.message.contains("does not support")),
                "{path}: no unsupported warning; got {warnings:#?}"
            ),
            Err(problems) => panic!("{path}: an unsupported Patroni key must not be refused: {problems:#?}"),
        }
        checked += 1;
    }
    // Citus and its section are all that is left besides the other DCS back-ends.
    assert!(checked >= 2, "only {checked} keys checked");
}

/// Keys whose absence would give a second writer are refused at start, with
/// an error naming the key or its section. (None is left since standby
/// clusters and custom bootstrap methods are implemented; a key marked
/// `refused` again is checked here.)
#[test]
fn every_refused_key_is_refused_naming_it() {
    for row in table() {
        if row.status != Status::Refused {
            continue;
        }
        let path = row.path.replace(".**", "");
        let mut root = base("etcd3");
        set(&mut root, &path, json!("x"));
        match load(&root) {
            Ok(warnings) => panic!("{path}: a refused key was accepted: {warnings:#?}"),
            Err(problems) => assert!(
                problems.iter().any(|p| p.severity == Severity::Error && path.starts_with(&p.path)),
                "{path}: no error names the key or its section: {problems:#?}"
            ),
        }
    }
}

/// A setting that only tunes Patroni's Python process is accepted with a
/// note that says so, never a warning or an error.
#[test]
fn every_inapplicable_key_is_accepted_with_a_note() {
    let mut checked = 0;
    for row in table() {
        if row.status != Status::Inapplicable {
            continue;
        }
        let mut root = base("etcd3");
        set(&mut root, &row.path, json!(10));
        let warnings = load(&root).unwrap_or_else(|problems| panic!("{}: refused: {problems:#?}", row.path));
        assert!(
            warnings.iter().any(|w| w.severity == Severity::Notice && w.path == row.path),
            "{}: no note; got {warnings:#?}",
            row.path
        );
        assert!(!warnings.iter().any(|w| w.severity == Severity::Warning && w.path == row.path), "{}", row.path);
        checked += 1;
    }
    assert_eq!(checked, 5, "thread_pool_size, thread_stack_size, restapi.thread_pool_size and two of log");
}
