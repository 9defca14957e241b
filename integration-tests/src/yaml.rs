//! Node configs as values: a test's per-node YAML is merged into the
//! harness's (a map's keys into the map, anything else replacing), and the
//! result written back as block YAML that reads as a person would write it
//! (tests still edit a few lines of it as text).

use serde_json::Value;

/// `extra` (YAML) merged into `base` (YAML), as YAML.
pub fn merged(base: &str, extra: &str) -> anyhow::Result<String> {
    let mut config: Value = serde_saphyr::from_str(base)?;
    if !extra.trim().is_empty() {
        let patch: Value = serde_saphyr::from_str(extra)?;
        merge(&mut config, patch);
    }
    let mut out = String::new();
    emit(&config, 0, &mut out);
    Ok(out)
}

/// Merges `patch` into `into`: a map's keys into the map, anything else
/// replacing.
pub fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, patch) => *into = patch,
    }
}

/// Block YAML for a map; lists of scalars as block lists, anything nested
/// in a list in JSON's flow style (which YAML reads).
fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let Value::Object(map) = value else {
        out.push_str(&format!("{pad}{}\n", scalar(value)));
        return;
    };
    for (key, value) in map {
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                emit(value, indent + 2, out);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                for item in items {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
            _ => out.push_str(&format!("{pad}{key}: {}\n", scalar(value))),
        }
    }
}

/// A value on one line: a plain string when nothing could read it as
/// another type (YAML 1.1's booleans included: `off` stays a string), else
/// JSON.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) if plain(text) => text.clone(),
        other => other.to_string(),
    }
}

fn plain(text: &str) -> bool {
    const WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    text.chars().any(|c| c.is_ascii_alphabetic() || c == '/' || c == ':')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "_./:@-".contains(c))
        && !text.starts_with(['-', ':', '.'])
        && !text.ends_with(':')
        && !WORDS.contains(&text.to_ascii_lowercase().as_str())
        && text.parse::<f64>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_yaml_merges_as_values_and_reads_back_the_same() {
        let base = "name: n1\netcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  parameters:\n    fsync: 'off'\n    \
                    shared_buffers: 16MB\nbootstrap:\n  initdb:\n  - encoding: UTF8\n  - data-checksums\nwatchdog:\n  mode: off\n";
        let extra =
            "etcd3:\n  hosts: 127.0.0.1:9\n  username: u\nwatchdog:\n  mode: required\ntags:\n  nofailover: true\n";
        let text = merged(base, extra).expect("merged");
        let back: Value = serde_saphyr::from_str(&text).expect("reads back");
        let expected = serde_json::json!({
            "name": "n1",
            "etcd3": {"hosts": "127.0.0.1:9", "username": "u"},
            "postgresql": {"parameters": {"fsync": "off", "shared_buffers": "16MB"}},
            "bootstrap": {"initdb": [{"encoding": "UTF8"}, "data-checksums"]},
            "watchdog": {"mode": "required"},
            "tags": {"nofailover": true},
        });
        assert_eq!(back, expected, "{text}");
        assert!(text.contains("\n  hosts: 127.0.0.1:9\n") && text.contains("fsync: \"off\""), "{text}");
    }
}
