//! The command line: `pgwardenctl`'s options and commands, as clap parses
//! them (patronictl's names and options).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "pgwardenctl", version, about = "Operate a pgwarden (or Patroni) cluster")]
pub struct Cli {
    /// Config file (Patroni format); default: $PATRONICTL_CONFIG_FILE, then ~/.config/patroni/patronictl.yaml.
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Say on stderr where the cluster was read from (the controller or etcd).
    #[arg(short = 'v', long = "verbose", global = true)]
    pub verbose: bool,
    /// The etcd to use instead of the config's, as `etcd3://HOST:PORT/NAMESPACE`
    /// (each part optional); the cluster is then read from etcd, not the controller.
    #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs", env = "DCS_URL")]
    pub dcs_url: Option<String>,
    /// Do not verify the controller's TLS certificate (`ctl.insecure`;
    /// patronictl's flag for its REST calls). etcd is verified as before.
    #[arg(short = 'k', long = "insecure")]
    pub insecure: bool,
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
        /// Cluster names; default: the config's scope.
        clusters: Vec<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
        /// Always show the optional columns (Pending restart, Scheduled
        /// restart, Tags), not only when a member has something in them.
        #[arg(short = 'e', long = "extended")]
        extended: bool,
        /// Print the time before each table.
        #[arg(short = 't', long = "timestamp")]
        timestamp: bool,
        /// Refresh every 2 seconds until interrupted.
        #[arg(short = 'W')]
        watch_default: bool,
        /// Refresh every N seconds until interrupted.
        #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// The members table with replicas indented under the member they stream from.
    Topology {
        cluster: Option<String>,
        /// Refresh every 2 seconds until interrupted.
        #[arg(short = 'W')]
        watch_default: bool,
        /// Refresh every N seconds until interrupted.
        #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
        watch: Option<f64>,
    },
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
        /// Replace the whole configuration with FILE (YAML or JSON, `-` for stdin).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["apply", "sets", "pgs"])]
        replace: Option<String>,
        /// Do not show the changes.
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(long)]
        force: bool,
    },
    /// Make this cluster a standby cluster of a remote primary (Patroni's
    /// `demote-cluster`): sets `standby_cluster` in the config key; the
    /// leader stops and follows the remote as the standby leader.
    DemoteCluster {
        cluster: Option<String>,
        /// The remote primary's host (this or --restore-command is required).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// Fetch WAL from the remote cluster's archive with this command.
        #[arg(long = "restore-command")]
        restore_command: Option<String>,
        /// The slot to stream from on the remote primary.
        #[arg(long = "primary-slot-name")]
        primary_slot_name: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Make a standby cluster independent (Patroni's `promote-cluster`):
    /// removes `standby_cluster` from the config key; the standby leader
    /// promotes and the cluster takes writes.
    PromoteCluster {
        cluster: Option<String>,
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
        #[arg(short = 'r', long, value_parser = ["primary", "replica"])]
        role: Option<String>,
        /// Only members with a parameter change pending a restart.
        #[arg(long)]
        pending: bool,
        /// Restart one member only: the first of the order (replicas first)
        /// that the conditions let restart.
        #[arg(long)]
        any: bool,
        /// Only members whose PostgreSQL is older than this version (`15.4`, `9.6.24`).
        #[arg(long = "pg-version", value_name = "VERSION")]
        pg_version: Option<String>,
        /// Seconds a restart may take: a member not back by then fails the
        /// command (and the rest wait); the leader hands over.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u32>,
        /// Switch the leader over to a replica before restarting it.
        #[arg(long)]
        switchover: bool,
        /// When: an ISO 8601 time with a time zone (each member restarts then).
        #[arg(long, conflicts_with = "switchover")]
        scheduled: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Re-clone replicas (their old data directories are moved aside).
    Reinit {
        /// `[CLUSTER] MEMBER...`: a first name equal to the config's scope is the cluster.
        #[arg(value_name = "CLUSTER_OR_MEMBER", required = true)]
        names: Vec<String>,
        /// Clone from the leader, whatever the `clonefrom` tags say.
        #[arg(long = "from-leader")]
        from_leader: bool,
        /// Return once each member streams again (otherwise once its re-clone started).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        force: bool,
    },
    /// Make members re-read their config files (all when none is named).
    Reload {
        /// `[CLUSTER] [MEMBER...]`: a first name equal to the config's scope is the cluster.
        #[arg(value_name = "CLUSTER_OR_MEMBER")]
        names: Vec<String>,
        /// Only members with this role (leader, primary, replica, standby, any).
        #[arg(short = 'r', long)]
        role: Option<String>,
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
        #[arg(short = 'm', long = "member", conflicts_with = "role")]
        member: Option<String>,
        /// The first member with this role (leader, primary, replica, standby, any).
        #[arg(short = 'r', long)]
        role: Option<String>,
    },
    /// Run SQL on a member: the leader, one with `--role`, or one named with
    /// `--member`; the last statement's rows are printed.
    Query {
        cluster: Option<String>,
        /// The role of the member to run on (leader, primary, replica, standby, any).
        #[arg(short = 'r', long, conflicts_with = "member")]
        role: Option<String>,
        #[arg(short = 'm', long)]
        member: Option<String>,
        /// The SQL to run.
        #[arg(short = 'c', long, conflicts_with = "file")]
        command: Option<String>,
        /// A file of SQL to run (`-`: stdin).
        #[arg(short = 'f', long)]
        file: Option<String>,
        #[arg(short = 'U', long)]
        username: Option<String>,
        /// Ask for the password (otherwise PGPASSWORD or ~/.pgpass).
        #[arg(long)]
        password: bool,
        #[arg(short = 'd', long)]
        dbname: Option<String>,
        #[arg(long = "format", value_enum, default_value = "tsv")]
        format: Format,
        #[arg(long, default_value = "\t")]
        delimiter: String,
        /// Run again every 2 seconds until interrupted.
        #[arg(short = 'W')]
        watch_default: bool,
        /// Run again every N seconds until interrupted.
        #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// pgwardenctl's version, and with a cluster each member's pgwarden and PostgreSQL.
    Version {
        cluster: Option<String>,
        /// Only these members.
        members: Vec<String>,
    },
}
