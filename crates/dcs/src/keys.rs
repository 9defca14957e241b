//! The key layout under `/<namespace>/<scope>/`.

/// Builds every key of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `namespace` is normalised (`/service/`); `scope` is the cluster name.
    pub fn new(namespace: &str, scope: &str) -> Self {
        let namespace = namespace.trim_end_matches('/');
        Self { prefix: format!("{namespace}/{scope}/") }
    }

    /// `/<namespace>/<scope>/`: every key of the cluster starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The system identifier, created by the bootstrap race.
    pub fn initialize(&self) -> String {
        self.key("initialize")
    }

    /// The dynamic configuration (JSON).
    pub fn config(&self) -> String {
        self.key("config")
    }

    /// The leader's member name, on the leader's lease.
    pub fn leader(&self) -> String {
        self.key("leader")
    }

    /// pgwarden's own key: the active controller (`<member> <grpc url>`),
    /// bound to its lease. Patroni ignores it.
    pub fn controller(&self) -> String {
        self.key("pgwarden-controller")
    }

    /// `members/`: prefix of every member key.
    pub fn members_prefix(&self) -> String {
        self.key("members/")
    }

    /// One member's key, on that member's lease.
    pub fn member(&self, name: &str) -> String {
        self.key(&format!("members/{name}"))
    }

    /// `{"optime": <lsn>, ...}`, written by the leader.
    pub fn status(&self) -> String {
        self.key("status")
    }

    /// Patroni < 2.1's plain-integer optime, read as a fallback.
    pub fn legacy_optime(&self) -> String {
        self.key("optime/leader")
    }

    /// A requested switchover or failover.
    pub fn failover(&self) -> String {
        self.key("failover")
    }

    /// Synchronous replication state.
    pub fn sync(&self) -> String {
        self.key("sync")
    }

    /// Timeline history.
    pub fn history(&self) -> String {
        self.key("history")
    }

    /// `failsafe_mode`'s members: `{"name": "api_url", ...}`, written by the
    /// leader. A member must be listed to take part in a race.
    pub fn failsafe(&self) -> String {
        self.key("failsafe")
    }

    /// The member name a `members/<name>` key belongs to.
    pub fn member_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?.strip_prefix("members/").filter(|n| !n.is_empty() && !n.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_patroni() {
        let keys = Keys::new("/service/", "batman");
        assert_eq!(keys.leader(), "/service/batman/leader");
        assert_eq!(keys.member("pg1"), "/service/batman/members/pg1");
        assert_eq!(keys.initialize(), "/service/batman/initialize");
        assert_eq!(keys.config(), "/service/batman/config");
        assert_eq!(keys.status(), "/service/batman/status");
        assert_eq!(keys.failover(), "/service/batman/failover");
        assert_eq!(keys.sync(), "/service/batman/sync");
        assert_eq!(keys.history(), "/service/batman/history");
        assert_eq!(keys.legacy_optime(), "/service/batman/optime/leader");
        assert_eq!(Keys::new("/percona_lab/", "c1").prefix(), "/percona_lab/c1/");
        assert_eq!(keys.member_name("/service/batman/members/pg1"), Some("pg1"));
        assert_eq!(keys.member_name("/service/batman/leader"), None);
    }
}
