//! `pgwardenctl`: the operator's command line, compatible with `patronictl`'s
//! config lookup (`-c`, `PATRONICTL_CONFIG_FILE`, `~/.config/patroni/patronictl.yaml`)
//! and output. It reads the cluster from the active controller over gRPC and
//! falls back to etcd directly when no controller answers; it changes nothing
//! without a command that says so.

mod actions;
mod args;
mod dcs_url;
pub mod generate;
mod migrate;
mod operations;
mod query;
mod source;
mod table;

use std::path::PathBuf;
use std::time::Duration;

pub use args::{Cli, Command, Format};
use pgwarden_config::{Config, Purpose};

/// The parser `main` runs: [`Cli`] and the hidden [`generate`] subcommand.
pub fn command_line() -> clap::Command {
    use clap::CommandFactory as _;
    Cli::command().subcommand(generate::command())
}

/// `[CLUSTER] [MEMBER...]` as patronictl takes them: the first name is the
/// cluster when it is the config's scope (or when two names are given to
/// `reinit`), otherwise every name is a member of the config's cluster.
fn cluster_and_members(config: &Config, mut names: Vec<String>) -> (Option<String>, Vec<String>) {
    if names.first().is_some_and(|first| *first == config.scope) {
        let cluster = names.remove(0);
        return (Some(cluster), names);
    }
    (None, names)
}

fn default_config_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".config/patroni/patronictl.yaml"))
}

async fn read(config: &Config, cluster: Option<String>, verbose: bool) -> anyhow::Result<source::Snapshot> {
    let scope = cluster.unwrap_or_else(|| config.scope.clone());
    let snapshot = source::read(config, &scope).await?;
    if verbose {
        eprintln!("read cluster {scope} from {}", snapshot.from);
    }
    Ok(snapshot)
}

/// The cluster a command names on its command line, if any.
fn named_cluster(command: &Command) -> Option<&str> {
    match command {
        Command::List { clusters, .. } => clusters.first().map(String::as_str),
        Command::Topology { cluster, .. }
        | Command::History { cluster, .. }
        | Command::ShowConfig { cluster, .. }
        | Command::Switchover { cluster, .. }
        | Command::Failover { cluster, .. }
        | Command::EditConfig { cluster, .. }
        | Command::DemoteCluster { cluster, .. }
        | Command::PromoteCluster { cluster, .. }
        | Command::Pause { cluster, .. }
        | Command::Resume { cluster, .. }
        | Command::MigrateV2 { cluster, .. }
        | Command::Dsn { cluster, .. }
        | Command::Query { cluster, .. }
        | Command::Version { cluster, .. } => cluster.as_deref(),
        Command::Remove { cluster, .. } => Some(cluster),
        Command::Restart { names, .. } | Command::Reload { names, .. } | Command::Reinit { names, .. } => {
            names.first().map(String::as_str)
        }
        Command::Flush { args, .. } => (args.len() == 2).then(|| args[0].as_str()),
    }
}

/// The config file's settings, with `--dcs-url`'s etcd in place of its
/// own. With `--dcs-url` a config file is optional, as for patronictl: the
/// cluster is then the one the command names.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = cli.config_file.clone().or_else(default_config_file);
    let Some(url) = &cli.dcs_url else {
        // Without `-c` (or PATRONICTL_CONFIG_FILE) and without the default
        // file, patronictl runs on the environment (PATRONI_ETCD3_HOSTS,
        // PATRONI_NAMESPACE, ...) for the cluster the command names.
        if cli.config_file.is_none()
            && !path.as_ref().is_some_and(|p| p.exists())
            && std::env::var_os("PATRONI_CONFIGURATION").is_none()
        {
            let scope = named_cluster(&cli.command).map(str::to_string).or_else(|| std::env::var("PATRONI_SCOPE").ok());
            let Some(scope) = scope else {
                anyhow::bail!(
                    "no config file: {} does not exist; pass -c FILE (or set PATRONICTL_CONFIG_FILE), or name the \
                     cluster on the command line with its etcd in PATRONI_ETCD3_HOSTS (or --dcs-url)",
                    path.map_or_else(|| "~/.config/patroni/patronictl.yaml".into(), |p| p.display().to_string())
                );
            };
            let source = pgwarden_config::Source {
                origin: "the environment (no config file)".into(),
                yaml: serde_json::json!({ "scope": scope }).to_string(),
            };
            return Ok(pgwarden_config::load_from(&source, std::env::vars(), Purpose::Ctl)?.config);
        }
        return Ok(pgwarden_config::load(path.as_deref(), Purpose::Ctl)?.config);
    };
    let url = dcs_url::parse(url)?;
    let mut config = match path.filter(|p| p.exists() || cli.config_file.is_some()) {
        Some(path) => pgwarden_config::load(Some(&path), Purpose::Ctl)?.config,
        None => {
            let scope = named_cluster(&cli.command).ok_or_else(|| {
                anyhow::anyhow!("no config file names the cluster: name it on the command line (as for patronictl -d)")
            })?;
            let source = pgwarden_config::Source {
                origin: "--dcs-url".into(),
                yaml: serde_json::json!({"scope": scope, "etcd3": {"hosts": "localhost:2379"}}).to_string(),
            };
            pgwarden_config::load_from(&source, std::iter::empty(), Purpose::Ctl)?.config
        }
    };
    url.apply(&mut config);
    Ok(config)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(&cli)?;
    // `-k` as patronictl's: the controller's certificate is not verified.
    config.ctl.insecure |= cli.insecure;
    // Another etcd than the config's: the config's controller is not its.
    if cli.dcs_url.is_some() {
        source::skip_controller();
    }
    pgwarden_runtime::grpc::init_ctl_client(&config)?;
    match cli.command {
        Command::List { clusters, format, extended, timestamp, watch_default, watch } => {
            let interval = watch.or(watch_default.then_some(2.0)).map(Duration::from_secs_f64);
            let clusters = if clusters.is_empty() { vec![config.scope.clone()] } else { clusters };
            loop {
                if interval.is_some() {
                    // Clear the screen and home the cursor, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                if timestamp {
                    println!("{}", query::now());
                }
                for cluster in &clusters {
                    let snapshot = read(&config, Some(cluster.clone()), cli.verbose).await?;
                    print!("{}", table::render_list(&snapshot, format, extended)?);
                }
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => return Ok(()),
                }
            }
        }
        Command::Topology { cluster, watch_default, watch } => {
            let interval = watch.or(watch_default.then_some(2.0)).map(Duration::from_secs_f64);
            loop {
                let snapshot = read(&config, cluster.clone(), cli.verbose).await?;
                if interval.is_some() {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", table::members_table(&snapshot.scope, &snapshot.view, true, false));
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => return Ok(()),
                }
            }
        }
        Command::History { cluster, format } => {
            let snapshot = read(&config, cluster, cli.verbose).await?;
            print!("{}", table::render_history(&snapshot, format)?);
            Ok(())
        }
        Command::ShowConfig { cluster, format } => {
            let snapshot = read(&config, cluster, cli.verbose).await?;
            let value = snapshot.view.config.map(|(json, _)| json).unwrap_or(serde_json::Value::Null);
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_saphyr::to_string(&value)?);
            }
            Ok(())
        }
        Command::Switchover { cluster, leader, candidate, scheduled, force } => {
            let target = actions::target(&config, cluster).await?;
            actions::switchover(&config, &target, leader, candidate, scheduled, force).await
        }
        Command::Failover { cluster, candidate, force } => {
            let target = actions::target(&config, cluster).await?;
            actions::failover(&config, &target, candidate, force).await
        }
        Command::Flush { args, force } => {
            let (cluster, what) = match args.as_slice() {
                [cluster, what] => (Some(cluster.clone()), what.clone()),
                [what] => (None, what.clone()),
                _ => anyhow::bail!("flush takes [CLUSTER] switchover|restart"),
            };
            let target = actions::target(&config, cluster).await?;
            match what.as_str() {
                "restart" => operations::flush_restart(&config, &target, force).await,
                "switchover" => {
                    actions::confirm(&format!("Delete the pending switchover of cluster {}?", target.scope), force)?;
                    actions::run_workflow(&config, &target, actions::Workflow::Cancel).await
                }
                other => anyhow::bail!("flush {other:?}: expected switchover or restart"),
            }
        }
        Command::EditConfig { cluster, sets, pgs, apply, replace, quiet, force } => {
            let target = actions::target(&config, cluster).await?;
            let edit = operations::EditConfig { sets, pgs, apply, replace, quiet, force, patch: None };
            operations::edit_config(&config, &target, edit).await
        }
        Command::DemoteCluster { cluster, host, port, restore_command, primary_slot_name, force } => {
            if host.is_none() && restore_command.is_none() {
                anyhow::bail!("demote-cluster needs --host (the remote primary) or --restore-command (its archive)");
            }
            let target = actions::target(&config, cluster).await?;
            let mut standby = serde_json::Map::new();
            for (key, value) in [
                ("host", host.map(serde_json::Value::from)),
                ("port", port.map(serde_json::Value::from)),
                ("restore_command", restore_command.map(serde_json::Value::from)),
                ("primary_slot_name", primary_slot_name.map(serde_json::Value::from)),
            ] {
                if let Some(value) = value {
                    standby.insert(key.into(), value);
                }
            }
            let patch = serde_json::json!({ "standby_cluster": standby });
            operations::edit_config(&config, &target, operations::EditConfig::patch(patch, force)).await
        }
        Command::PromoteCluster { cluster, force } => {
            let target = actions::target(&config, cluster).await?;
            let patch = serde_json::json!({ "standby_cluster": null });
            operations::edit_config(&config, &target, operations::EditConfig::patch(patch, force)).await
        }
        Command::Restart { names, role, pending, any, pg_version, timeout, switchover, scheduled, force } => {
            let (cluster, members) = cluster_and_members(&config, names);
            if let Some(version) = &pg_version {
                ha_core::parse_postgres_version(version).map_err(|why| anyhow::anyhow!("--pg-version: {why}"))?;
            }
            if timeout == Some(0) {
                anyhow::bail!("--timeout: a positive number of seconds");
            }
            let target = actions::target(&config, cluster).await?;
            let restart = operations::Restart {
                members,
                role,
                pending,
                any,
                pg_version,
                timeout: timeout.unwrap_or(0),
                switchover,
                scheduled,
                force,
            };
            operations::restart(&config, &target, restart).await
        }
        Command::Reinit { names, from_leader, wait, force } => {
            // patronictl's `CLUSTER MEMBER...`; one name alone is a member
            // of the config's cluster.
            let (cluster, members) = match names.split_first() {
                Some((cluster, members)) if !members.is_empty() => (Some(cluster.clone()), members.to_vec()),
                _ => (None, names),
            };
            let target = actions::target(&config, cluster).await?;
            operations::reinit(&config, &target, operations::Reinit { members, from_leader, wait, force }).await
        }
        Command::Reload { names, role, force } => {
            let (cluster, mut members) = cluster_and_members(&config, names);
            let target = actions::target(&config, cluster).await?;
            if let Some(role) = &role {
                let snapshot = read(&config, Some(target.scope.clone()), cli.verbose).await?;
                let with_role: Vec<String> =
                    query::with_role(&snapshot.view, role)?.into_iter().map(|m| m.name.clone()).collect();
                members = if members.is_empty() {
                    with_role
                } else {
                    members.into_iter().filter(|m| with_role.contains(m)).collect()
                };
                if members.is_empty() {
                    anyhow::bail!("no member of cluster {} has the role {role}", target.scope);
                }
            }
            operations::reload(&config, &target, members, force).await
        }
        Command::Remove { cluster, force } => {
            operations::remove(&actions::target(&config, Some(cluster)).await?, force).await
        }
        Command::Pause { cluster, wait } => {
            actions::set_pause(&actions::target(&config, cluster).await?, true, wait).await
        }
        Command::Resume { cluster, wait } => {
            actions::set_pause(&actions::target(&config, cluster).await?, false, wait).await
        }
        Command::MigrateV2 { cluster, remove_v2, force } => {
            let target = actions::target(&config, cluster).await?;
            migrate::migrate_v2(&config, &target, migrate::MigrateV2 { remove_v2, force }).await
        }
        Command::Dsn { cluster, member, role } => {
            let snapshot = read(&config, cluster, cli.verbose).await?;
            let by_role = match &role {
                Some(role) => match query::with_role(&snapshot.view, role)?.first() {
                    Some(m) => Some(m.name.clone()),
                    None => anyhow::bail!("no member of cluster {} has the role {role}", snapshot.scope),
                },
                None => None,
            };
            let name = match member.or(by_role).or_else(|| snapshot.view.leader.as_ref().map(|l| l.name.clone())) {
                Some(name) => name,
                None => anyhow::bail!("the cluster has no leader: name a member with -m"),
            };
            let entry = snapshot
                .view
                .member(&name)
                .ok_or_else(|| anyhow::anyhow!("{name} is not a member of cluster {}", snapshot.scope))?;
            let (host, port) =
                entry.data.host_port().ok_or_else(|| anyhow::anyhow!("{name} advertises no PostgreSQL address"))?;
            println!("host={host} port={port}");
            Ok(())
        }
        Command::Query {
            cluster,
            role,
            member,
            command,
            file,
            username,
            password,
            dbname,
            format,
            delimiter,
            watch_default,
            watch,
        } => {
            let interval = watch.or(watch_default.then_some(2.0)).map(Duration::from_secs_f64);
            let query = query::Query { role, member, command, file, username, password, dbname, format, delimiter };
            let snapshot = read(&config, cluster, cli.verbose).await?;
            loop {
                print!("{}", query::run(&snapshot.view, &query).await?);
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => return Ok(()),
                }
            }
        }
        Command::Version { cluster, members } => {
            println!("pgwardenctl version {}", env!("CARGO_PKG_VERSION"));
            let Some(cluster) = cluster else { return Ok(()) };
            let snapshot = read(&config, Some(cluster), cli.verbose).await?;
            println!();
            for member in &snapshot.view.members {
                if members.is_empty() || members.contains(&member.name) {
                    println!("{}: {}", member.name, actions::member_version(&snapshot.view, member).await);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every subcommand's arguments are consistent (clap checks this only
    /// when a command is used, and then panics).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
