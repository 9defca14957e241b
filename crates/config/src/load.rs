//! Loading: the YAML file or `PATRONI_CONFIGURATION`, the `PATRONI_*`
//! overrides merged over it, and the result read into a [`Config`] with
//! every problem found.

use super::build::build;
use super::*;

/// Where the YAML text came from, for messages.
#[derive(Debug, Clone)]
pub struct Source {
    pub origin: String,
    pub yaml: String,
}

impl Source {
    pub fn file(path: &Path) -> Result<Self, LoadError> {
        let yaml = std::fs::read_to_string(path).map_err(|e| LoadError {
            origin: path.display().to_string(),
            problems: vec![Problem {
                severity: Severity::Error,
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }],
        })?;
        Ok(Self { origin: path.display().to_string(), yaml })
    }
}

/// A config that loaded, with the warnings to print once.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub origin: String,
    pub warnings: Vec<Problem>,
}

/// A config that did not load: one problem per line, errors and warnings.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.problems.iter().filter(|p| p.severity == Severity::Error).count();
        writeln!(f, "invalid configuration {} ({errors} error(s)):", self.origin)?;
        for (idx, problem) in self.problems.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Loads the config as a pgwarden service does: `PATRONI_CONFIGURATION` if it
/// is set (then no other variable applies, as in Patroni), else the file at
/// `path` with the `PATRONI_*` overrides from the process environment.
pub fn load(path: Option<&Path>, purpose: Purpose) -> Result<Loaded, LoadError> {
    if let Ok(yaml) = std::env::var("PATRONI_CONFIGURATION") {
        let source = Source { origin: "PATRONI_CONFIGURATION".into(), yaml };
        return load_from(&source, std::iter::empty(), purpose);
    }
    let Some(path) = path else {
        return Err(LoadError {
            origin: "(none)".into(),
            problems: vec![Problem {
                severity: Severity::Error,
                path: String::new(),
                message: "no config file given: pass its path (as for `patroni /etc/patroni.yml`), --config FILE, \
                          or set PATRONI_CONFIGURATION"
                    .into(),
            }],
        });
    };
    let source = Source::file(path)?;
    load_from(&source, std::env::vars(), purpose)
}

/// Loads from YAML text and an explicit environment (tests pass their own).
pub fn load_from<I>(source: &Source, vars: I, purpose: Purpose) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let fail = |problems: Vec<Problem>| LoadError { origin: source.origin.clone(), problems };
    let mut problems = Problems::default();
    let root = match merge_layers(source, vars, &mut problems) {
        Ok(root) => root,
        Err(problem) => return Err(fail(vec![problem])),
    };
    keys::check_tree(&root, &mut problems);
    let config = build(&root, purpose, &mut problems);
    if problems.has_errors() {
        return Err(fail(problems.into_vec()));
    }
    let config = config.expect("a config without errors is complete");
    if purpose == Purpose::Agent
        && let Err(why) = config.postgres_binaries()
    {
        problems.error(if config.postgresql.bin_dir.is_some() { "postgresql.bin_dir" } else { "" }, why);
        return Err(fail(problems.into_vec()));
    }
    // The agent must be able to log in to its own PostgreSQL with the rules
    // it will run with: refused before anything is written.
    if purpose == Purpose::Agent
        && let Some((rules, source)) = hba::effective_rules(&config)
        && let Err(why) = hba::check_agent_access(&config, &rules, &hba::local_connection(&config), &source)
    {
        let has_data = config.postgresql.data_dir.join("PG_VERSION").exists();
        let path =
            if config.postgresql.pg_hba.is_empty() && !has_data { "bootstrap.pg_hba" } else { "postgresql.pg_hba" };
        problems.error(path, why);
        return Err(fail(problems.into_vec()));
    }
    Ok(Loaded { config, origin: source.origin.clone(), warnings: problems.into_vec() })
}

/// Layers: the YAML text, then the `PATRONI_*` overrides, merged by figment.
pub(crate) fn merge_layers<I>(source: &Source, vars: I, problems: &mut Problems) -> Result<Value, Problem>
where
    I: IntoIterator<Item = (String, String)>,
{
    if let Err(e) = serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(&source.yaml, yaml_options()) {
        return Err(yaml_syntax_problem(&e.to_string()));
    }
    let mut figment = Figment::new().merge(PatroniYaml::string(&source.yaml));
    let (overrides, ignored) = env::overrides(vars);
    for (path, value, _name) in overrides {
        figment = figment.merge(Serialized::default(&path, value));
    }
    for name in ignored {
        problems.warn("", format!("{name} belongs to a Patroni DCS pgwarden does not support; it is ignored"));
    }
    let root: Value = figment.extract().map_err(|e| yaml_syntax_problem(&e.to_string()))?;
    match root {
        Value::Object(_) => Ok(root),
        Value::Null => Ok(Value::Object(Map::new())),
        other => Err(Problem {
            severity: Severity::Error,
            path: String::new(),
            message: format!("the config must be a YAML mapping of keys, found {}", read::describe(&other)),
        }),
    }
}

/// YAML as PyYAML (and so Patroni) reads it where it matters: `y` and `n`
/// are strings (`name: n` is a member named "n"), not booleans. The readers
/// accept `yes`/`no`/`on`/`off` wherever a boolean is expected, as PyYAML does.
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true, with_snippet: false }
}

/// figment's YAML format, backed by serde-saphyr with [`yaml_options`].
struct PatroniYaml;

impl figment::providers::Format for PatroniYaml {
    type Error = serde_saphyr::Error;

    const NAME: &'static str = "YAML";

    fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        serde_saphyr::from_str_with_options(text, yaml_options())
    }
}

pub(crate) fn yaml_syntax_problem(message: &str) -> Problem {
    // serde-saphyr says "what at line L, column C" (or "line L column C: what");
    // lead with the line so the user finds it at a glance.
    let first_line = message.lines().next().unwrap_or(message).trim().trim_start_matches("error:").trim();
    let number_after = |word: &str| -> Option<u32> {
        let rest = &first_line[first_line.find(word)? + word.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let line =
        number_after(" at line ").or_else(|| first_line.starts_with("line ").then(|| number_after("line ")).flatten());
    let column = number_after("column ");
    let what = match first_line.find(" at line ") {
        Some(idx) => &first_line[..idx],
        None => first_line.rsplit_once(": ").map_or(first_line, |(_, what)| what),
    };
    let path = line.map(|l| format!("line {l}")).unwrap_or_default();
    let at = column.map(|c| format!(" at column {c}")).unwrap_or_default();
    Problem { severity: Severity::Error, path, message: format!("YAML syntax error{at}: {what}") }
}

pub fn normalise_namespace(namespace: &str) -> String {
    let trimmed = namespace.trim().trim_matches('/');
    if trimmed.is_empty() { "/".into() } else { format!("/{trimmed}/") }
}
