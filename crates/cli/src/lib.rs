//! `pgwardenctl`: the operator's command line, compatible with `patronictl`'s
//! config lookup (`-c`, `PATRONICTL_CONFIG_FILE`, `~/.config/patroni/patronictl.yaml`)
//! and output. It reads the cluster from the active controller over gRPC and
//! falls back to etcd directly when no controller answers; it changes nothing
//! without a command that says so.

mod actions;
pub mod generate;
mod migrate;
mod operations;
mod source;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pgwarden_config::{Config, Purpose};

#[derive(Debug, Parser)]
#[command(name = "pgwardenctl", version, about = "Operate a pgwarden (or Patroni) cluster")]
pub struct Cli {
    /// Config file (Patroni format); default: $PATRONICTL_CONFIG_FILE, then ~/.config/patroni/patronictl.yaml.
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE", global = true)]
    pub config_file: Option<PathBuf>,
    /// Say on stderr where the cluster was read from (the controller or etcd).
    #[arg(short = 'v', long = "verbose", global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    Yaml,
    Tsv,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The members table: Member | Host | Role | State | TL | Lag in MB.
    List {
        /// Cluster name; default: the config's scope.
        cluster: Option<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
        /// Refresh every 2 seconds until interrupted.
        #[arg(short = 'W')]
        watch_default: bool,
        /// Refresh every N seconds until interrupted.
        #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// The members table with replicas indented under the member they stream from.
    Topology { cluster: Option<String> },
    /// Timeline history: TL | LSN | Reason | Timestamp | New Leader.
    History {
        cluster: Option<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// The dynamic configuration (the `config` key) as YAML.
    ShowConfig {
        cluster: Option<String>,
        /// `yaml` (default) or `json`.
        #[arg(short = 'f', long = "format", value_parser = ["yaml", "json"], default_value = "yaml")]
        format: String,
    },
    /// Request a planned switchover (the agents carry it out) and follow it.
    Switchover {
        cluster: Option<String>,
        /// The current leader (checked).
        #[arg(long, alias = "primary")]
        leader: Option<String>,
        /// The member to take over; default: the best replica.
        #[arg(long)]
        candidate: Option<String>,
        /// When: `now` or an ISO 8601 time with a time zone.
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Fail over to a named member (also without a leader).
    Failover {
        cluster: Option<String>,
        #[arg(long)]
        candidate: String,
        #[arg(long)]
        force: bool,
    },
    /// Change the dynamic configuration: `--set key=value`, `--pg name=value`,
    /// `--apply FILE` (YAML or JSON, `-` for stdin), or in $EDITOR; shows the
    /// diff and asks unless --force.
    EditConfig {
        cluster: Option<String>,
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
        pgs: Vec<String>,
        #[arg(long, value_name = "FILE")]
        apply: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL: the named members, or all (replicas first, one at
    /// a time, the leader last).
    Restart {
        /// `[CLUSTER] [MEMBER...]`: a first name equal to the config's scope is the cluster.
        #[arg(value_name = "CLUSTER_OR_MEMBER")]
        names: Vec<String>,
        /// Only members with this role.
        #[arg(long, value_parser = ["primary", "replica"])]
        role: Option<String>,
        /// Only members with a parameter change pending a restart.
        #[arg(long)]
        pending: bool,
        /// Switch the leader over to a replica before restarting it.
        #[arg(long)]
        switchover: bool,
        /// When: an ISO 8601 time with a time zone (each member restarts then).
        #[arg(long, conflicts_with = "switchover")]
        scheduled: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Re-clone a replica from the leader (its old data directory is moved aside).
    Reinit {
        /// `[CLUSTER] MEMBER`.
        #[arg(value_name = "CLUSTER_OR_MEMBER", num_args = 1..=2, required = true)]
        names: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Make members re-read their config files (all when none is named).
    Reload {
        /// `[CLUSTER] [MEMBER...]`: a first name equal to the config's scope is the cluster.
        #[arg(value_name = "CLUSTER_OR_MEMBER")]
        names: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Delete the cluster's keys from etcd, after you type its name.
    Remove {
        cluster: String,
        /// Remove even while members run.
        #[arg(long)]
        force: bool,
    },
    /// Discard a scheduled switchover or the scheduled restarts.
    Flush {
        /// `[CLUSTER] switchover|restart`.
        #[arg(value_name = "CLUSTER_OR_WHAT", num_args = 1..=2, required = true)]
        args: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Pause automatic failover and PostgreSQL management.
    Pause {
        cluster: Option<String>,
        /// Wait until every member reports the pause.
        #[arg(long)]
        wait: bool,
    },
    /// Resume automatic management.
    Resume {
        cluster: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Copy a Patroni cluster's keys from etcd's v2 keyspace (an `etcd:`
    /// section) to v3, with the cluster paused; `--remove-v2` deletes the v2
    /// copy once no member runs there (docs/migrating-from-patroni.md).
    MigrateV2 {
        cluster: Option<String>,
        /// Delete the scope from etcd's v2 keyspace instead (refused while a Patroni member runs there).
        #[arg(long = "remove-v2")]
        remove_v2: bool,
        /// With --remove-v2: remove keys that were never copied to v3 (a cluster gone for good).
        #[arg(long, requires = "remove_v2")]
        force: bool,
    },
    /// A libpq connection string for a member (default: the leader).
    Dsn {
        cluster: Option<String>,
        #[arg(short = 'm', long = "member")]
        member: Option<String>,
    },
}

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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.config_file.clone().or_else(default_config_file);
    let loaded = pgwarden_config::load(path.as_deref(), Purpose::Ctl)?;
    let config = loaded.config;
    pgwarden_runtime::grpc::init_ctl_client(&config)?;
    match cli.command {
        Command::List { cluster, format, watch_default, watch } => {
            let interval = watch.or(watch_default.then_some(2.0)).map(Duration::from_secs_f64);
            loop {
                let snapshot = read(&config, cluster.clone(), cli.verbose).await?;
                if interval.is_some() {
                    // Clear the screen and home the cursor, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", table::render_list(&snapshot, format)?);
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => return Ok(()),
                }
            }
        }
        Command::Topology { cluster } => {
            let snapshot = read(&config, cluster, cli.verbose).await?;
            print!("{}", table::members_table(&snapshot.scope, &snapshot.view, true));
            Ok(())
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
        Command::EditConfig { cluster, sets, pgs, apply, force } => {
            let target = actions::target(&config, cluster).await?;
            operations::edit_config(&config, &target, operations::EditConfig { sets, pgs, apply, force }).await
        }
        Command::Restart { names, role, pending, switchover, scheduled, force } => {
            let (cluster, members) = cluster_and_members(&config, names);
            let target = actions::target(&config, cluster).await?;
            let restart = operations::Restart { members, role, pending, switchover, scheduled, force };
            operations::restart(&config, &target, restart).await
        }
        Command::Reinit { names, force } => {
            // Two names: CLUSTER MEMBER, as patronictl.
            let (cluster, member) = match names.as_slice() {
                [cluster, member] => (Some(cluster.clone()), member.clone()),
                [member] => (None, member.clone()),
                _ => anyhow::bail!("reinit takes [CLUSTER] MEMBER"),
            };
            let target = actions::target(&config, cluster).await?;
            operations::reinit(&config, &target, member, force).await
        }
        Command::Reload { names, force } => {
            let (cluster, members) = cluster_and_members(&config, names);
            let target = actions::target(&config, cluster).await?;
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
        Command::Dsn { cluster, member } => {
            let snapshot = read(&config, cluster, cli.verbose).await?;
            let name = match member.or_else(|| snapshot.view.leader.as_ref().map(|l| l.name.clone())) {
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
