//! The systems under test behind one interface: pgwarden (its own tight
//! timings, or Patroni's) and Patroni from PyPI, each as etcd + 3 nodes on
//! loopback.

use std::time::Duration;

use ha_proto::v1::SwitchoverRequest;
use pgwarden_integration_tests::haproxy::Backend;
use pgwarden_integration_tests::patroni::{PatroniCluster, Timings};
use pgwarden_integration_tests::service::http_with;
use pgwarden_integration_tests::{ClusterSpec, EtcdCluster, FaultTarget, PgwardenCluster};

/// One system and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// pgwarden with its tight profile: ttl 10, loop_wait 1, retry_timeout 3.
    Pgwarden,
    /// pgwarden with Patroni's tightest accepted timings: ttl 20, loop_wait 1, retry_timeout 3.
    PgwardenTtl20,
    /// Patroni from PyPI: ttl 20, loop_wait 1, retry_timeout 3.
    Patroni,
    /// pgwarden at its minimum timings: ttl 6, loop_wait 1, retry_timeout 2
    /// (run on request: `--systems pgwarden-ttl6`).
    PgwardenTtl6,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pgwarden => "pgwarden (ttl 10)",
            Self::PgwardenTtl20 => "pgwarden (ttl 20)",
            Self::Patroni => "Patroni (ttl 20)",
            Self::PgwardenTtl6 => "pgwarden (ttl 6)",
        }
    }

    pub fn timings(self) -> Timings {
        match self {
            Self::Pgwarden => Timings { ttl: 10, loop_wait: 1, retry_timeout: 3 },
            Self::PgwardenTtl6 => Timings { ttl: 6, loop_wait: 1, retry_timeout: 2 },
            Self::PgwardenTtl20 | Self::Patroni => pgwarden_integration_tests::patroni::PATRONI_MIN,
        }
    }

    /// Brings the system up (not yet healthy), each node's path to etcd
    /// through a proxy the etcd-cut scenario can cut.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        Ok(match self {
            Self::Pgwarden | Self::PgwardenTtl20 | Self::PgwardenTtl6 => {
                let spec = ClusterSpec::nodes(3).ttl(self.timings().ttl).behind_proxies();
                Cluster::Pgwarden(spec.start().await?)
            }
            Self::Patroni => Cluster::Patroni(PatroniCluster::start(3, self.timings(), true).await?),
        })
    }
}

/// A running system.
pub enum Cluster {
    Pgwarden(PgwardenCluster),
    Patroni(PatroniCluster),
}

impl Cluster {
    pub fn backends(&self) -> Vec<Backend> {
        match self {
            Self::Pgwarden(c) => c.backends(),
            Self::Patroni(c) => c.backends(),
        }
    }

    pub fn etcd(&self) -> &EtcdCluster {
        match self {
            Self::Pgwarden(c) => &c.etcd,
            Self::Patroni(c) => &c.etcd,
        }
    }

    /// `GET path` on node `i`'s REST API with a short timeout (a frozen
    /// Patroni must not stall the poll): the status, or 0.
    pub fn check(&self, i: usize, path: &str) -> u16 {
        let port = self.backends()[i].rest_port;
        http_with("GET", port, path, &[], "", Duration::from_millis(300)).map_or(0, |(status, _)| status)
    }

    /// The nodes answering 200 on `path`, polled concurrently.
    pub fn answering(&self, path: &str) -> Vec<usize> {
        let ports: Vec<u16> = self.backends().iter().map(|b| b.rest_port).collect();
        std::thread::scope(|scope| {
            let polls: Vec<_> = ports
                .iter()
                .map(|&port| {
                    scope.spawn(move || {
                        http_with("GET", port, path, &[], "", Duration::from_millis(300)).map_or(0, |(s, _)| s)
                    })
                })
                .collect();
            polls
                .into_iter()
                .enumerate()
                .filter_map(|(i, poll)| (poll.join().unwrap_or(0) == 200).then_some(i))
                .collect()
        })
    }

    /// One primary and two streaming replicas; the leader's index.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<usize> {
        match self {
            Self::Pgwarden(c) => c.wait_healthy(timeout).await,
            Self::Patroni(c) => c.wait_healthy(timeout).await,
        }
    }

    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        self.target_ref().postmaster_pid(i)
    }

    /// What the harness's faults act on.
    pub fn target(&mut self) -> &mut dyn FaultTarget {
        match self {
            Self::Pgwarden(c) => c,
            Self::Patroni(c) => c,
        }
    }

    fn target_ref(&self) -> &dyn FaultTarget {
        match self {
            Self::Pgwarden(c) => c,
            Self::Patroni(c) => c,
        }
    }

    /// A planned switchover away from `leader`, as an operator asks for it:
    /// pgwarden's controller over gRPC, Patroni's `POST /switchover`. Runs in
    /// the background (both answer when done).
    pub async fn switchover(&self, leader: usize) -> anyhow::Result<()> {
        match self {
            Self::Pgwarden(c) => {
                let mut controller =
                    pgwarden_integration_tests::grpc::controller(c.nodes[leader].controller_url()).await?;
                tokio::spawn(async move { controller.switchover(SwitchoverRequest::default()).await });
            }
            Self::Patroni(c) => {
                let (port, name) = (c.nodes[leader].rest_port, c.nodes[leader].name.clone());
                tokio::task::spawn_blocking(move || {
                    let body = format!(r#"{{"leader":"{name}"}}"#);
                    http_with("POST", port, "/switchover", &[], &body, Duration::from_secs(30))
                });
            }
        }
        Ok(())
    }

    /// Pids of the HA processes of node `i`, named (for the footprint).
    pub fn ha_processes(&self, i: usize) -> Vec<(&'static str, u32)> {
        match self {
            Self::Pgwarden(c) => c.nodes[i].service_pids(),
            Self::Patroni(c) => c.nodes[i].pid().map(|pid| vec![("patroni", pid)]).unwrap_or_default(),
        }
    }

    /// The process serving node `i`'s REST API (for the health-check benchmark).
    pub fn rest_server(&self, i: usize) -> Option<u32> {
        self.ha_processes(i)
            .into_iter()
            .find(|(name, _)| *name == "pgwarden-health" || *name == "patroni")
            .map(|(_, p)| p)
    }

    pub fn rest_port(&self, i: usize) -> u16 {
        self.backends()[i].rest_port
    }
}
