//! Patroni's method sections: the replica-creation methods that
//! `postgresql.create_replica_methods` names (a backup tool's restore, a
//! script) and the custom bootstrap method `bootstrap.method` names (a
//! restore, point-in-time recovery), read into what the agent runs.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::read::{self, Reader};

/// One entry of `postgresql.create_replica_methods`, tried in order until one
/// succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaMethod {
    /// pg_basebackup from the clone source, with `postgresql.basebackup`'s options.
    Basebackup,
    /// A command from the method's section `postgresql.<name>`.
    Command(MethodCommand),
}

impl ReplicaMethod {
    pub fn name(&self) -> &str {
        match self {
            Self::Basebackup => "basebackup",
            Self::Command(command) => &command.name,
        }
    }

    /// Whether it can create a replica with no member to copy from (Patroni's
    /// `no_leader`: a restore from a backup repository).
    pub fn works_without_leader(&self) -> bool {
        matches!(self, Self::Command(command) if command.no_leader)
    }
}

/// A replica-creation method run as a command, as Patroni runs one: through
/// `sh`, with `--scope`, `--role=replica`, `--datadir` and `--connstring`
/// unless `no_params`, then the section's other keys as `--key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodCommand {
    pub name: String,
    /// The command line (`command`, else the method's name).
    pub command: String,
    /// Leave what is in the data directory for the command (a delta restore);
    /// otherwise the directory is emptied before it runs and after it fails.
    pub keep_data: bool,
    pub no_params: bool,
    pub no_leader: bool,
    /// The section's keys but `command`, in order, as `--key=value`.
    pub options: Vec<(String, String)>,
}

impl MethodCommand {
    /// The arguments after the command: Patroni's parameters (unless
    /// `no_params`), then the section's own options. `connstring` names the
    /// member copied from, without a password (empty when there is none).
    pub fn arguments(&self, scope: &str, data_dir: &str, connstring: &str) -> Vec<String> {
        const OURS: [&str; 4] = ["scope", "role", "datadir", "connstring"];
        const CONTROL: [&str; 3] = ["no_params", "no_leader", "keep_data"];
        // As Patroni: every key of the section is passed on (its own control
        // keys too) unless `no_params`, which drops those and adds nothing.
        let mut args: Vec<String> = self
            .options
            .iter()
            .filter(|(k, _)| if self.no_params { !CONTROL.contains(&k.as_str()) } else { !OURS.contains(&k.as_str()) })
            .map(|(k, v)| format!("--{k}={v}"))
            .collect();
        if !self.no_params {
            args.extend([
                format!("--scope={scope}"),
                "--role=replica".to_string(),
                format!("--datadir={data_dir}"),
                format!("--connstring={connstring}"),
            ]);
        }
        args
    }
}

/// `bootstrap.method` when it names a section with a `command`: the cluster
/// is created by that command (a restore) instead of initdb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapMethod {
    pub name: String,
    pub command: String,
    pub no_params: bool,
    /// Keep the recovery settings and signal files the command wrote (a
    /// backup tool's own restore settings).
    pub keep_existing_recovery_conf: bool,
    /// Recovery settings written for the first start (`restore_command`,
    /// `recovery_target_*`); `None`: none written.
    pub recovery_conf: Option<BTreeMap<String, String>>,
    /// The section's other keys in order, as `--key=value`.
    pub options: Vec<(String, String)>,
}

impl BootstrapMethod {
    /// `--scope` and `--datadir` (unless `no_params`), then the section's options.
    pub fn arguments(&self, scope: &str, data_dir: &str) -> Vec<String> {
        let mut args = Vec::new();
        if !self.no_params {
            args.extend([format!("--scope={scope}"), format!("--datadir={data_dir}")]);
        }
        args.extend(self.options.iter().map(|(k, v)| format!("--{k}={v}")));
        args
    }
}

/// A value as Patroni passes it on a command line (`str()` of the YAML value:
/// booleans as `True`/`False`).
fn option_text(value: &Value) -> Option<String> {
    match value {
        Value::Bool(true) => Some("True".into()),
        Value::Bool(false) => Some("False".into()),
        other => read::scalar_text(other),
    }
}

/// A map of recovery settings (`recovery_conf`): names to their text.
pub(crate) fn settings_map(r: &mut Reader<'_>, path: &str) -> Option<BTreeMap<String, String>> {
    let value = r.get(path)?;
    let Value::Object(map) = value else {
        r.problems.error(path, format!("expected a map of recovery settings, found {}", read::describe(value)));
        return None;
    };
    let mut settings = BTreeMap::new();
    for (name, value) in map {
        match read::scalar_text(value) {
            Some(text) => {
                settings.insert(name.clone(), text);
            }
            None => r.problems.error(
                format!("{path}.{name}"),
                format!("expected a string or number, found {}", read::describe(value)),
            ),
        }
    }
    Some(settings)
}

/// `postgresql.recovery_conf`: recovery settings for every standby. The
/// connection settings are pgwarden's own (it points a standby at its
/// upstream); a recovery target is refused, since a standby that reaches one
/// stops following or, with `recovery_target_action: promote`, promotes
/// itself behind the leader key.
pub(crate) fn standby_recovery_conf(r: &mut Reader<'_>, path: &str) -> BTreeMap<String, String> {
    let mut settings = settings_map(r, path).unwrap_or_default();
    for name in ["primary_conninfo", "primary_slot_name", "standby_mode"] {
        if settings.remove(name).is_some() {
            r.problems.warn(
                format!("{path}.{name}"),
                "pgwarden sets this itself from the member a standby follows; the value here is ignored",
            );
        }
    }
    for name in settings.keys().filter(|n| n.starts_with("recovery_target") && *n != "recovery_target_timeline") {
        r.problems.error(
            format!("{path}.{name}"),
            "a standby that reaches a recovery target stops following its upstream, or promotes itself without the \
             leader key (recovery_target_action: promote): remove it (a point-in-time restore belongs in a \
             bootstrap method's recovery_conf)",
        );
    }
    settings
}

/// Warns about each method section under `parent` (a key only the catch-all
/// row `parent.*` matches) that `list` does not name: it is ignored.
pub(crate) fn warn_unnamed_sections(r: &mut Reader<'_>, parent: &str, named: &[&str], list: &str) {
    let Some(section) = r.get(parent).and_then(Value::as_object) else { return };
    for key in section.keys() {
        let catch_all = crate::keys::find(&[parent, key]).is_some_and(|spec| spec.path.ends_with('*'));
        if catch_all && !named.contains(&key.as_str()) {
            r.problems.warn(
                format!("{parent}.{key}"),
                format!("no method of {list} is named {key:?}: this section is ignored"),
            );
        }
    }
}

/// The options of a method section: every key but the reserved ones.
fn section_options(r: &mut Reader<'_>, path: &str, reserved: &[&str]) -> Vec<(String, String)> {
    let Some(section) = r.get(path).and_then(Value::as_object) else { return Vec::new() };
    let mut options = Vec::new();
    for (key, value) in section {
        if reserved.contains(&key.as_str()) {
            continue;
        }
        match option_text(value) {
            Some(text) => options.push((key.clone(), text)),
            None => r.problems.error(
                format!("{path}.{key}"),
                format!("a method's option must be a string, number or boolean, found {}", read::describe(value)),
            ),
        }
    }
    options
}

/// `postgresql.create_replica_methods` with each method's section; a method
/// other than `basebackup` without a section runs its own name as the command.
pub(crate) fn replica_methods(r: &mut Reader<'_>) -> Vec<ReplicaMethod> {
    let names = match r.string_list("postgresql.create_replica_methods") {
        names if names.is_empty() => vec!["basebackup".to_string()],
        names => names,
    };
    let mut methods = Vec::new();
    for name in names {
        if name == "basebackup" {
            methods.push(ReplicaMethod::Basebackup);
            continue;
        }
        let path = format!("postgresql.{name}");
        if name.is_empty() || name.contains('.') {
            r.problems.error("postgresql.create_replica_methods", format!("{name:?} is not a method name"));
            continue;
        }
        let section = r.get(&path);
        if let Some(other) = section.filter(|v| !v.is_object()) {
            r.problems.error(
                &path,
                format!(
                    "the section of replica method {name:?} must be a map (command, keep_data, no_params, no_leader, \
                     options), found {}",
                    read::describe(other)
                ),
            );
            continue;
        }
        let flag = |r: &mut Reader<'_>, key: &str| r.bool(&format!("{path}.{key}"), false);
        methods.push(ReplicaMethod::Command(MethodCommand {
            command: r.string(&format!("{path}.command")).unwrap_or_else(|| name.clone()),
            keep_data: flag(r, "keep_data"),
            no_params: flag(r, "no_params"),
            no_leader: flag(r, "no_leader"),
            options: section_options(r, &path, &["command"]),
            name,
        }));
    }
    methods
}

/// `bootstrap.method` and its section. `Ok(None)`: initdb. A method that
/// names no section with a `command` is an error: running initdb instead
/// would create an empty cluster where a restore was meant.
pub(crate) fn bootstrap_method(r: &mut Reader<'_>) -> Option<BootstrapMethod> {
    let name = r.string("bootstrap.method").filter(|m| m != "initdb")?;
    let path = format!("bootstrap.{name}");
    let command = match r.get(&path) {
        Some(Value::Object(_)) => r.string(&format!("{path}.command")),
        _ => None,
    };
    let Some(command) = command else {
        r.problems.error(
            "bootstrap.method",
            format!(
                "{name:?} names no section `bootstrap.{name}` with a `command`: running initdb instead would create \
                 an empty cluster where a restore was meant. Add the section (command: the restore script), or \
                 remove bootstrap.method to bootstrap with initdb"
            ),
        );
        return None;
    };
    let recovery_conf = settings_map(r, &format!("{path}.recovery_conf"));
    Some(BootstrapMethod {
        command,
        no_params: r.bool(&format!("{path}.no_params"), false),
        keep_existing_recovery_conf: r.bool(&format!("{path}.keep_existing_recovery_conf"), false),
        recovery_conf,
        options: section_options(
            r,
            &path,
            &["command", "no_params", "keep_existing_recovery_conf", "recovery_conf", "scope", "datadir"],
        ),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Problems;

    fn read<T>(yaml: &str, f: impl FnOnce(&mut Reader<'_>) -> T) -> (T, Problems) {
        let root: Value = serde_saphyr::from_str(yaml).expect("yaml");
        let mut problems = Problems::default();
        let out = f(&mut Reader::new(&root, &mut problems));
        (out, problems)
    }

    #[test]
    fn replica_methods_read_patronis_sections_in_order() {
        let yaml = "postgresql:\n  create_replica_methods: [pgbackrest, wal_e, basebackup]\n  pgbackrest:\n    \
                    command: /usr/bin/pgbackrest --stanza=main --delta restore\n    keep_data: true\n    \
                    no_params: 'yes'\n  wal_e:\n    command: restore-wal-e\n    no_leader: 1\n    threshold_megabytes: 10240\n    \
                    use_iam: true\n";
        let (methods, problems) = read(yaml, replica_methods);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = methods.iter().map(ReplicaMethod::name).collect();
        assert_eq!(names, ["pgbackrest", "wal_e", "basebackup"]);
        let ReplicaMethod::Command(backrest) = &methods[0] else { panic!("a command") };
        assert!(backrest.keep_data && backrest.no_params && !backrest.no_leader);
        assert_eq!(backrest.arguments("main", "/d", "host=a"), Vec::<String>::new(), "no_params: nothing added");
        let ReplicaMethod::Command(wal_e) = &methods[1] else { panic!("a command") };
        assert!(methods[1].works_without_leader() && !methods[0].works_without_leader());
        assert_eq!(
            wal_e.arguments("main", "/data", "host=10.0.0.1 port=5432 user=replicator"),
            [
                "--no_leader=1",
                "--threshold_megabytes=10240",
                "--use_iam=True",
                "--scope=main",
                "--role=replica",
                "--datadir=/data",
                "--connstring=host=10.0.0.1 port=5432 user=replicator",
            ]
        );
    }

    #[test]
    fn a_method_without_a_section_runs_its_own_name_and_the_default_is_basebackup() {
        let (methods, problems) = read("postgresql:\n  create_replica_methods: [my-restore]\n", replica_methods);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(matches!(&methods[0], ReplicaMethod::Command(c) if c.command == "my-restore" && c.options.is_empty()));
        let (methods, _) = read("postgresql: {}\n", replica_methods);
        assert_eq!(methods, [ReplicaMethod::Basebackup]);
        let (_, problems) = read("postgresql:\n  create_replica_methods: [x]\n  x: restore.sh\n", replica_methods);
        assert!(problems.has_errors(), "a section that is not a map is refused");
    }

    #[test]
    fn standby_recovery_settings_refuse_a_target_and_leave_the_connection_to_pgwarden() {
        let yaml = "postgresql:\n  recovery_conf:\n    restore_command: cp /a/%f %p\n    recovery_min_apply_delay: 5min\n    \
                    primary_conninfo: host=x\n";
        let (settings, problems) = read(yaml, |r| standby_recovery_conf(r, "postgresql.recovery_conf"));
        assert!(!problems.has_errors(), "{problems:?}");
        assert_eq!(settings.keys().collect::<Vec<_>>(), ["recovery_min_apply_delay", "restore_command"]);
        let (_, problems) = read("postgresql:\n  recovery_conf:\n    recovery_target_action: promote\n", |r| {
            standby_recovery_conf(r, "postgresql.recovery_conf")
        });
        assert!(problems.has_errors(), "a standby must never promote itself");
    }

    #[test]
    fn a_bootstrap_method_needs_a_section_with_a_command() {
        let yaml = "bootstrap:\n  method: pitr\n  pitr:\n    command: restore.sh --stanza=x\n    \
                    keep_existing_recovery_conf: false\n    target: '2026-12-06'\n    recovery_conf:\n      \
                    restore_command: cp /archive/%f %p\n      recovery_target_action: promote\n      \
                    recovery_target_time: '2026-12-06 01:00:00+00'\n";
        let (method, problems) = read(yaml, bootstrap_method);
        assert!(problems.is_empty(), "{problems:?}");
        let method = method.expect("a custom method");
        assert_eq!(method.arguments("main", "/data"), ["--scope=main", "--datadir=/data", "--target=2026-12-06"]);
        let recovery = method.recovery_conf.expect("recovery settings");
        assert_eq!(recovery["restore_command"], "cp /archive/%f %p");
        assert_eq!(recovery.len(), 3);
        for yaml in ["bootstrap:\n  method: pitr\n", "bootstrap:\n  method: pitr\n  pitr:\n    no_params: true\n"] {
            let (method, problems) = read(yaml, bootstrap_method);
            assert!(method.is_none() && problems.has_errors(), "{yaml}");
        }
        let (method, problems) = read("bootstrap:\n  method: initdb\n", bootstrap_method);
        assert!(method.is_none() && problems.is_empty());
    }
}
