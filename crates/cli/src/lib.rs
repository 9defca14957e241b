//! `pgwardenctl`: the operator's command line, compatible with `patronictl`'s
//! config lookup (`-c`, `PATRONICTL_CONFIG_FILE`, `~/.config/patroni/patronictl.yaml`)
//! and output. Reads go straight to etcd, as `patronictl` does; it changes
//! nothing without a command that says so.

mod table;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dcs::{ClusterView, EtcdSettings, Keys};
use pgwarden_config::Purpose;

#[derive(Debug, Parser)]
#[command(name = "pgwardenctl", version, about = "Operate a pgwarden (or Patroni) cluster")]
pub struct Cli {
    /// Config file (Patroni format); default: $PATRONICTL_CONFIG_FILE, then ~/.config/patroni/patronictl.yaml.
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE", global = true)]
    pub config_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The members table: Member | Host | Role | State | TL | Lag in MB.
    List {
        /// Cluster name; default: the config's scope.
        cluster: Option<String>,
    },
}

fn default_config_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".config/patroni/patronictl.yaml"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.config_file.clone().or_else(default_config_file);
    let loaded = pgwarden_config::load(path.as_deref(), Purpose::Ctl)?;
    let config = loaded.config;
    match cli.command {
        Command::List { cluster } => {
            let scope = cluster.unwrap_or_else(|| config.scope.clone());
            let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
            let etcd = dcs::connect(&EtcdSettings::from_config(&config.etcd, timeout)).await?;
            let keys = Keys::new(&config.namespace, &scope);
            let view: ClusterView = dcs::read_cluster(&etcd, &keys).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot read cluster {scope} from etcd at {}: {}; check that etcd runs and that the config's etcd3.hosts lists it",
                    config.etcd.endpoints.join(","),
                    dcs::describe_error(&e)
                )
            })?;
            print!("{}", table::members_table(&scope, &view));
            Ok(())
        }
    }
}
