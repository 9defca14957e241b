//! Typed reads from the merged YAML tree, collecting one problem per bad key.
//!
//! Values may come from YAML (typed) or from `PATRONI_*` variables (always
//! strings), so every reader accepts the string form of its type too. YAML 1.1
//! booleans (`on`, `yes`, ...) are accepted because PyYAML, and so Patroni,
//! reads them as booleans.

use serde_json::{Map, Value};

use crate::address::{HostPort, ListenAddresses};
use crate::problem::Problems;

/// A cursor over the merged config tree that records problems as it reads.
pub struct Reader<'a> {
    root: &'a Value,
    pub problems: &'a mut Problems,
}

/// A short description of a value for error messages, never echoing long or
/// secret-looking text in full.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => "a long string".into(),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a section (map)".into(),
    }
}

pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let mut node = root;
    for segment in path.split('.') {
        node = node.as_object()?.get(segment)?;
    }
    if node.is_null() { None } else { Some(node) }
}

/// A boolean as Patroni reads one: `true`/`false`, or a string or number
/// `on`, `true`, `yes`, `y`, `1` / `off`, `false`, `no`, `n`, `0` (any case).
pub fn parse_bool(value: &Value) -> Option<bool> {
    let text = match value {
        Value::Bool(b) => return Some(*b),
        Value::String(s) => s.trim().to_ascii_lowercase(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    match text.as_str() {
        "true" | "yes" | "on" | "y" | "1" => Some(true),
        "false" | "no" | "off" | "n" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Renders a scalar the way PostgreSQL and Patroni expect to see it in text.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Bool(true) => Some("on".into()),
        Value::Bool(false) => Some("off".into()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

impl<'a> Reader<'a> {
    pub fn new(root: &'a Value, problems: &'a mut Problems) -> Self {
        Self { root, problems }
    }

    pub fn get(&self, path: &str) -> Option<&'a Value> {
        lookup(self.root, path)
    }

    fn expected(&mut self, path: &str, what: &str, found: &Value) {
        self.problems.error(path, format!("expected {what}, found {}", describe(found)));
    }

    /// A string; numbers are accepted and rendered (`scope: 1` is the name "1").
    pub fn string(&mut self, path: &str) -> Option<String> {
        let value = self.get(path)?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.expected(path, "a string", other);
                None
            }
        }
    }

    pub fn required_string(&mut self, path: &str, hint: &str) -> Option<String> {
        match self.string(path) {
            Some(s) if !s.trim().is_empty() => Some(s),
            Some(_) => {
                self.problems.error(path, format!("must not be empty ({hint})"));
                None
            }
            None => {
                if self.get(path).is_none() {
                    self.problems.error(path, format!("is required ({hint})"));
                }
                None
            }
        }
    }

    pub fn bool(&mut self, path: &str, default: bool) -> bool {
        let Some(value) = self.get(path) else {
            return default;
        };
        parse_bool(value).unwrap_or_else(|| {
            self.expected(path, "a boolean (true/false)", value);
            default
        })
    }

    pub fn int(&mut self, path: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.get(path)?;
        match parse_int(value) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problems.error(path, format!("expected an integer from {min} to {max}, found {n}"));
                None
            }
            None => {
                self.expected(path, "an integer", value);
                None
            }
        }
    }

    pub fn number(&mut self, path: &str, min: f64, max: f64) -> Option<f64> {
        let value = self.get(path)?;
        let parsed = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if n >= min && n <= max => Some(n),
            Some(_) => {
                self.problems.error(path, format!("expected a number from {min} to {max}, found {}", describe(value)));
                None
            }
            None => {
                self.expected(path, "a number", value);
                None
            }
        }
    }

    pub fn host_port(&mut self, path: &str) -> Option<HostPort> {
        let text = self.string(path)?;
        HostPort::parse(&text).map_err(|why| self.problems.error(path, why)).ok()
    }

    pub fn listen(&mut self, path: &str) -> Option<ListenAddresses> {
        let text = self.string(path)?;
        ListenAddresses::parse(&text).map_err(|why| self.problems.error(path, why)).ok()
    }

    /// One of a fixed set of words, compared case-insensitively.
    pub fn choice(&mut self, path: &str, choices: &[&str]) -> Option<String> {
        let value = self.get(path)?;
        let text = match value {
            Value::String(s) => s.trim().to_ascii_lowercase(),
            // YAML 1.1 reads a bare `off` as false; Patroni sees the boolean.
            Value::Bool(false) if choices.contains(&"off") => "off".into(),
            Value::Bool(true) if choices.contains(&"on") => "on".into(),
            _ => String::new(),
        };
        if choices.contains(&text.as_str()) {
            Some(text)
        } else {
            self.expected(path, &format!("one of {}", choices.join(", ")), value);
            None
        }
    }

    /// A section (map); absent or empty (`tags:` with nothing below) is an empty map.
    pub fn section(&mut self, path: &str) -> Option<&'a Map<String, Value>> {
        let value = self.get(path)?;
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.expected(path, "a section of keys", other);
                None
            }
        }
    }

    /// A list of strings; a single string is read as a one-element list.
    pub fn string_list(&mut self, path: &str) -> Vec<String> {
        let Some(value) = self.get(path) else {
            return Vec::new();
        };
        match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (idx, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.expected(&format!("{path}[{idx}]"), "a string", other),
                    }
                }
                out
            }
            other => {
                self.expected(path, "a list of strings", other);
                Vec::new()
            }
        }
    }
}
