//! Role-based settings, as Patroni has them: `parameters_primary`,
//! `parameters_replica` and `parameters_standby_leader` merged over
//! `parameters` while the member runs in that role; `pg_hba_<role>` and
//! `pg_ident_<role>` and `pg_hosts_<role>` replacing `pg_hba`, `pg_ident` and
//! `pg_hosts`. Read from the local
//! `postgresql` section and from the dynamic config's; the local one wins,
//! key by key, as every other `postgresql` setting does.

use std::collections::BTreeMap;

use crate::dynamic::parameter_map;
use crate::read::Reader;

/// The role PostgreSQL runs in, as far as role-based settings go (Patroni's
/// `ROLE_CONFIG_SUFFIX_MAP`: a promoted member is a primary, a demoted one
/// a replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRole {
    Primary,
    Replica,
    StandbyLeader,
}

impl PgRole {
    pub const ALL: [PgRole; 3] = [PgRole::Primary, PgRole::Replica, PgRole::StandbyLeader];

    /// The suffix of its keys: `parameters_primary`, `pg_hba_standby_leader`.
    pub fn suffix(self) -> &'static str {
        match self {
            PgRole::Primary => "primary",
            PgRole::Replica => "replica",
            PgRole::StandbyLeader => "standby_leader",
        }
    }
}

/// The settings of one role; `None`: not set for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleSettings {
    pub parameters: Option<BTreeMap<String, String>>,
    pub pg_hba: Option<Vec<String>>,
    pub pg_ident: Option<Vec<String>>,
    pub pg_hosts: Option<Vec<String>>,
}

/// The role-based settings of one section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleConfig {
    pub primary: RoleSettings,
    pub replica: RoleSettings,
    pub standby_leader: RoleSettings,
}

impl RoleConfig {
    pub fn of(&self, role: PgRole) -> &RoleSettings {
        match role {
            PgRole::Primary => &self.primary,
            PgRole::Replica => &self.replica,
            PgRole::StandbyLeader => &self.standby_leader,
        }
    }

    fn of_mut(&mut self, role: PgRole) -> &mut RoleSettings {
        match role {
            PgRole::Primary => &mut self.primary,
            PgRole::Replica => &mut self.replica,
            PgRole::StandbyLeader => &mut self.standby_leader,
        }
    }
}

/// The parameters Patroni passes on PostgreSQL's command line, which a role
/// may not change: a replica needs the primary's values of most of them
/// (PostgreSQL refuses to run a hot standby with fewer connections, locks
/// or workers than its primary), and pgwarden sets the others itself.
pub const PROTECTED: &[&str] = &[
    "listen_addresses",
    "port",
    "cluster_name",
    "wal_level",
    "hot_standby",
    "max_connections",
    "max_wal_senders",
    "wal_keep_segments",
    "wal_keep_size",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "track_commit_timestamp",
    "max_replication_slots",
    "max_worker_processes",
    "wal_log_hints",
];

/// Reads `<section>.parameters_<role>`, `pg_hba_<role>`, `pg_ident_<role>`
/// and `pg_hosts_<role>`.
/// A protected parameter is dropped with Patroni's warning.
pub(crate) fn read(r: &mut Reader<'_>, section: &str) -> RoleConfig {
    let mut config = RoleConfig::default();
    for role in PgRole::ALL {
        let suffix = role.suffix();
        let path = format!("{section}.parameters_{suffix}");
        let parameters = r.get(&path).is_some().then(|| {
            let mut map = parameter_map(r, &path);
            map.retain(|name, _| {
                let protected = PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name));
                if protected {
                    r.problems.warn(
                        format!("{path}.{name}"),
                        format!("Role-based config attempted to override protected parameter '{name}', ignoring"),
                    );
                }
                !protected
            });
            map
        });
        let list = |r: &mut Reader<'_>, key: &str| {
            let path = format!("{section}.{key}_{suffix}");
            r.get(&path).is_some().then(|| r.string_list(&path))
        };
        let settings = config.of_mut(role);
        settings.parameters = parameters;
        settings.pg_hba = list(r, "pg_hba");
        settings.pg_ident = list(r, "pg_ident");
        settings.pg_hosts = list(r, "pg_hosts");
    }
    config
}
