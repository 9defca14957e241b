//! The table of every configuration key (`keys.tsv`, checked in beside this
//! crate): Patroni's keys and pgwarden's own, with type, default and whether
//! pgwarden implements them. The loader walks the user's tree against it, so a
//! Patroni key pgwarden lacks is "unsupported" (a warning), while a key nobody
//! knows is an error that suggests the closest known key.

use std::sync::OnceLock;

use serde_json::Value;

use crate::problem::Problems;

const TABLE: &str = include_str!("../keys.tsv");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Implemented,
    Unsupported,
    /// A Patroni setting that only tunes Patroni's own Python process
    /// (thread pools, the log writer's queue, tracebacks): pgwarden has
    /// nothing it could apply to, so it is accepted with a note, not a
    /// warning.
    Inapplicable,
    /// Not implemented, and ignoring it could lose data or give a second
    /// writer: the loader refuses the config (the error is raised where the
    /// section is read), never just warns.
    Refused,
}

/// One row of `keys.tsv`.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub path: String,
    pub kind: String,
    pub default: String,
    pub status: Status,
    pub description: String,
}

impl KeySpec {
    fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('.')
    }

    /// Whether the walk looks below this key: only plain sections are walked;
    /// maps, lists and `**` subtrees hold free-form content.
    fn is_section(&self) -> bool {
        self.kind == "section"
    }

    pub fn matches(&self, path: &[&str]) -> bool {
        let mut pattern = self.segments();
        for segment in path {
            match pattern.next() {
                Some("**") => return true,
                Some("*") => {}
                Some(p) if p == *segment => {}
                _ => return false,
            }
        }
        pattern.next().is_none()
    }
}

/// Every row of the checked-in key table.
pub fn table() -> &'static [KeySpec] {
    static ROWS: OnceLock<Vec<KeySpec>> = OnceLock::new();
    ROWS.get_or_init(|| parse_table(TABLE).expect("keys.tsv is checked by the crate's tests"))
}

pub fn parse_table(text: &str) -> Result<Vec<KeySpec>, String> {
    let mut rows = Vec::new();
    for (idx, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 5 {
            return Err(format!("keys.tsv line {}: expected 5 tab-separated columns, found {}", idx + 1, cols.len()));
        }
        let status = match cols[3] {
            "implemented" => Status::Implemented,
            "unsupported" => Status::Unsupported,
            "inapplicable" => Status::Inapplicable,
            "refused" => Status::Refused,
            other => {
                return Err(format!("keys.tsv line {}: unknown status {other:?}", idx + 1));
            }
        };
        rows.push(KeySpec {
            path: cols[0].to_string(),
            kind: cols[1].to_string(),
            default: cols[2].to_string(),
            status,
            description: cols[4].to_string(),
        });
    }
    Ok(rows)
}

/// The most specific row matching `path`: exact segments beat `*`, which beats `**`.
pub fn find(path: &[&str]) -> Option<&'static KeySpec> {
    table().iter().filter(|row| row.matches(path)).max_by_key(|row| {
        row.segments()
            .map(|s| match s {
                "**" => 0,
                "*" => 1,
                _ => 2,
            })
            .sum::<usize>()
    })
}

/// The start of the warning for a key nobody knows (`--validate-config
/// --strict` refuses those).
pub const UNKNOWN_KEY: &str = "unknown key";

/// Walks the user's tree: a key that looks like a real one misspelled or put
/// at the wrong level is an error (a safety setting must never fall back to
/// its default without a word); any other unknown key is a warning and
/// ignored, as Patroni ignores it; unsupported ones are warnings.
pub fn check_tree(root: &Value, problems: &mut Problems) {
    let mut path = Vec::new();
    walk(root, &mut path, problems);
}

fn walk<'v>(node: &'v Value, path: &mut Vec<&'v str>, problems: &mut Problems) {
    let Value::Object(map) = node else { return };
    for (key, value) in map {
        path.push(key.as_str());
        let dotted = path.join(".");
        match find(path) {
            None => match unknown_key_message(path) {
                Some(mistake) => problems.error(&dotted, mistake),
                None => problems.warn(
                    &dotted,
                    format!(
                        "{UNKNOWN_KEY} (not a Patroni or pgwarden setting, nor near one): ignored, as Patroni ignores \
                         it; `pgwarden-agent --validate-config --strict` refuses it"
                    ),
                ),
            },
            // A catch-all row (method sections under `postgresql` and
            // `bootstrap`) must not hide a typo of a real key; the loader
            // warns about a section no method names.
            Some(spec)
                if spec.path.ends_with('*')
                    && let Some(name) = near_miss(path) =>
            {
                problems.error(&dotted, format!("unknown key; did you mean `{name}`?"))
            }
            Some(spec) if spec.status == Status::Unsupported => {
                problems.warn(&dotted, "is a Patroni setting pgwarden does not support yet; it is ignored")
            }
            Some(spec) if spec.status == Status::Inapplicable => {
                problems.notice(&dotted, format!("has no counterpart in pgwarden, ignored: {}", spec.description))
            }
            // Refused keys get their error where the section is read.
            Some(spec) if spec.status == Status::Refused => {}
            Some(spec) if spec.is_section() => walk(value, path, problems),
            Some(_) => {}
        }
        path.pop();
    }
}

/// What is wrong with an unknown key that looks like a mistake: a real key
/// at the wrong level, or one misspelled. `None`: it looks like nothing.
fn unknown_key_message(path: &[&str]) -> Option<String> {
    // A real key at the wrong level (`loop_wait` at the top instead of under
    // `bootstrap.dcs`) is the likelier mistake than a typo.
    let elsewhere = known_elsewhere(path);
    if !elsewhere.is_empty() {
        let places: Vec<String> = elsewhere
            .iter()
            .map(|p| if p.contains('.') { format!("`{p}`") } else { format!("`{p}` at the top level") })
            .collect();
        return Some(format!("unknown key here; it is a setting at {} (check the indentation)", places.join(" or ")));
    }
    near_miss(path).map(|name| format!("unknown key; did you mean `{name}`?"))
}

/// The full paths of implemented keys named like the last segment of `path`
/// (at most three), for a key put at the wrong level.
fn known_elsewhere(path: &[&str]) -> Vec<&'static str> {
    let last = path.last().expect("a key path has at least one segment");
    table()
        .iter()
        .filter(|row| row.status == Status::Implemented && row.segments().last() == Some(*last))
        .map(|row| row.path.as_str())
        .take(3)
        .collect()
}

/// The known sibling key closest to the last segment of `path`, if it is close
/// enough to be a typo.
fn near_miss(path: &[&str]) -> Option<&'static str> {
    let (last, parent) = path.split_last().expect("a key path has at least one segment");
    let siblings: Vec<&'static str> = table()
        .iter()
        .filter_map(|row| {
            let segments: Vec<&str> = row.segments().collect();
            let (name, row_parent) = segments.split_last()?;
            let same_parent = row_parent.len() == parent.len()
                && row_parent.iter().zip(parent.iter()).all(|(p, s)| *p == "*" || p == s);
            (same_parent && !name.starts_with('*')).then_some(*name)
        })
        .collect();
    siblings
        .iter()
        .map(|name| (edit_distance(last, name), *name))
        .filter(|(d, name)| *d > 0 && *d <= 2.max(name.len() / 4))
        .min()
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            row.push((prev[j] + cost).min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_at_the_wrong_level_names_where_it_belongs() {
        let message = unknown_key_message(&["loop_wait"]).expect("a mistake");
        assert!(message.contains("`bootstrap.dcs.loop_wait`"), "{message}");
        assert!(message.contains("indentation"), "{message}");
        let message = unknown_key_message(&["etcd3", "scope"]).expect("a mistake");
        assert!(message.contains("`scope` at the top level"), "{message}");
        // A plain typo still gets the closest sibling.
        assert_eq!(unknown_key_message(&["restapi", "lisen"]).as_deref(), Some("unknown key; did you mean `listen`?"));
        // A safety setting misspelled is a mistake too, never ignored.
        let strict = unknown_key_message(&["bootstrap", "dcs", "synchronous_mode_strcit"]).expect("a mistake");
        assert!(strict.contains("synchronous_mode_strict"), "{strict}");
        // A key like nothing known is ignored (a warning), as Patroni ignores it.
        assert_eq!(unknown_key_message(&["my_tool_settings"]), None);
    }

    #[test]
    fn an_unknown_key_like_nothing_is_a_warning_and_a_typo_an_error() {
        let mut problems = Problems::default();
        let tree = serde_json::json!({"my_tool_settings": {"a": 1}, "restapi": {"lisen": "x"}});
        check_tree(&tree, &mut problems);
        let problems = problems.into_vec();
        let of = |path: &str| problems.iter().find(|p| p.path == path).map(|p| p.severity);
        assert_eq!(of("my_tool_settings"), Some(crate::Severity::Warning), "{problems:?}");
        assert_eq!(of("restapi.lisen"), Some(crate::Severity::Error), "{problems:?}");
    }

    #[test]
    fn table_parses_and_paths_are_unique() {
        let rows = parse_table(TABLE).expect("keys.tsv parses");
        let mut seen = std::collections::HashSet::new();
        for row in &rows {
            assert!(seen.insert(row.path.clone()), "duplicate row {}", row.path);
        }
    }

    #[test]
    fn every_row_has_a_known_type() {
        let kinds = [
            "section",
            "string",
            "int",
            "number",
            "bool",
            "host_port",
            "listen",
            "host_port_list",
            "string_list",
            "map",
            "list",
            "initdb_list",
            "duration",
            "any",
        ];
        for row in table() {
            assert!(kinds.contains(&row.kind.as_str()), "{} has unknown type {}", row.path, row.kind);
        }
    }

    #[test]
    fn every_parent_of_a_row_is_a_section() {
        for row in table() {
            let segments: Vec<&str> = row.path.split('.').collect();
            for len in 1..segments.len() {
                let parent = &segments[..len];
                if parent.iter().any(|s| s.starts_with('*')) {
                    continue;
                }
                let spec = find(parent).unwrap_or_else(|| panic!("{} has no row for its parent", row.path));
                assert!(
                    spec.is_section() || spec.status == Status::Unsupported,
                    "{} sits below {}, which is not a section",
                    row.path,
                    spec.path
                );
            }
        }
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(unknown_key_message(&["postgresq"]).as_deref(), Some("unknown key; did you mean `postgresql`?"));
        assert_eq!(unknown_key_message(&["restapi", "lisen"]).as_deref(), Some("unknown key; did you mean `listen`?"));
        assert_eq!(unknown_key_message(&["zzzzzzzz"]), None);
    }
}
