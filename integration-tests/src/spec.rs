//! What a test cluster is made of, said in one expression and started:
//!
//! ```ignore
//! let cluster = ClusterSpec::nodes(3).etcd_members(3).ttl(6).behind_proxies().start().await?;
//! ```

use crate::cluster::PgwardenCluster;
use crate::etcd::EtcdCluster;
use crate::proxy::TcpProxy;

/// Nodes, etcd, timings and per-node YAML of a test cluster.
pub struct ClusterSpec<'a> {
    nodes: usize,
    etcd_members: usize,
    ttl: u32,
    synchronous: bool,
    behind_proxies: bool,
    node_yaml: Box<dyn Fn(usize) -> String + 'a>,
}

impl<'a> ClusterSpec<'a> {
    /// `n` nodes (`node1`..), one etcd member, ttl 10 (loop_wait 1,
    /// retry_timeout 3), asynchronous replication, etcd reached directly.
    pub fn nodes(n: usize) -> Self {
        Self {
            nodes: n,
            etcd_members: 1,
            ttl: 10,
            synchronous: false,
            behind_proxies: false,
            node_yaml: Box::new(|_| String::new()),
        }
    }

    /// An etcd cluster of `n` members.
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = n;
        self
    }

    /// `bootstrap.dcs.ttl`.
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// `bootstrap.dcs.synchronous_mode: true`.
    pub fn synchronous(mut self) -> Self {
        self.synchronous = true;
        self
    }

    /// Each node reaches etcd only through its own proxy, which the test
    /// can cut (`cluster.proxies[i]` serves `cluster.nodes[i]`; one etcd
    /// member).
    pub fn behind_proxies(mut self) -> Self {
        self.behind_proxies = true;
        self
    }

    /// Extra YAML for node `i` (1-based), e.g. a `tags:` section, merged
    /// into the harness's as values: a node's own `etcd3:` or `watchdog:`
    /// keys replace the harness's, the others stay (behind proxies, the
    /// node's `etcd3.proxy` names its proxy, which wins over any `hosts`).
    pub fn node_yaml(mut self, yaml: impl Fn(usize) -> String + 'a) -> Self {
        self.node_yaml = Box::new(yaml);
        self
    }

    /// Starts etcd, writes every node's config and starts each node's agent,
    /// health API and controller (without waiting for a leader).
    pub async fn start(self) -> anyhow::Result<PgwardenCluster> {
        anyhow::ensure!(!self.behind_proxies || self.etcd_members == 1, "etcd proxies front a single etcd member");
        let etcd = EtcdCluster::start(self.etcd_members).await?;
        let mut cluster = PgwardenCluster::empty(etcd, "itest", self.ttl);
        cluster.synchronous = self.synchronous;
        for i in 1..=self.nodes {
            let mut yaml = (self.node_yaml)(i);
            if self.behind_proxies {
                let proxy = TcpProxy::start(cluster.etcd.client_port(0)).await?;
                yaml = through_proxy(proxy.port, &yaml)?;
                cluster.proxies.push(proxy);
            }
            cluster.add_node(&format!("node{i}"), &yaml)?;
        }
        cluster.start_all()?;
        Ok(cluster)
    }
}

/// A node's YAML with its etcd reached through the proxy on `port`, as
/// Patroni's `etcd3.proxy` (the one address used, no member discovery:
/// the node must not go round the proxy), merged as values (a node's
/// `etcd3:` section joins it rather than repeating the key). The harness's
/// own `hosts` stay in the file, so a node that ignored `proxy` would reach
/// etcd directly and the cut tests would fail.
fn through_proxy(port: u16, node_yaml: &str) -> anyhow::Result<String> {
    crate::yaml::merged(&format!("etcd3:\n  proxy: http://127.0.0.1:{port}\n"), node_yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_etcd3_section_joins_the_proxys_address() {
        let text = through_proxy(4001, "etcd3:\n  protocol: http\ntags:\n  nosync: true\n").expect("merged");
        let back: serde_json::Value = serde_saphyr::from_str(&text).expect("reads back");
        let expected = serde_json::json!({
            "etcd3": {"proxy": "http://127.0.0.1:4001", "protocol": "http"},
            "tags": {"nosync": true},
        });
        assert_eq!(back, expected, "{text}");
        assert_eq!(text.matches("etcd3:").count(), 1, "{text}");
        let plain = through_proxy(4001, "").expect("merged");
        assert_eq!(
            serde_saphyr::from_str::<serde_json::Value>(&plain).expect("reads"),
            serde_json::json!({"etcd3": {"proxy": "http://127.0.0.1:4001"}})
        );
    }
}
