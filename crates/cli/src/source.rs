//! Where the CLI reads the cluster: the active controller over gRPC, or etcd
//! directly when no controller answers (as `patronictl` always does).

use std::time::Duration;

use dcs::{ClusterView, EtcdSettings, Keys, LeaderView, MemberData, MemberEntry, Status, SyncState};
use ha_proto::v1::ListMembersRequest;
use ha_proto::v1::controller_client::ControllerClient;
use pgwarden_config::Config;

/// The cluster as read, and from where.
pub struct Snapshot {
    pub scope: String,
    pub view: ClusterView,
    /// `controller <url>` or `etcd`.
    pub from: String,
}

static SKIP_CONTROLLER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on the cluster is read from etcd and changed there, never
/// through the config's controller (`--dcs-url` names another etcd).
pub fn skip_controller() {
    SKIP_CONTROLLER.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The config's controller serves `scope`: the config's own cluster, on
/// the config's etcd.
pub fn controller_serves(config: &Config, scope: &str) -> bool {
    scope == config.scope && !SKIP_CONTROLLER.load(std::sync::atomic::Ordering::Relaxed)
}

async fn from_controller(config: &Config, scope: &str) -> Option<Snapshot> {
    if !controller_serves(config, scope) {
        return None;
    }
    let url = config.pgwarden.controller_grpc_url();
    let ask = async {
        let mut client =
            ControllerClient::new(pgwarden_runtime::grpc::connect(&url, Duration::from_secs(2)).await.ok()?);
        // Another cluster's controller (its member at the address the
        // config names) does not answer for this one: etcd does.
        let serves = client.get_active(ha_proto::v1::GetActiveRequest {}).await.ok()?.into_inner().scope;
        if !serves.is_empty() && serves != scope {
            return None;
        }
        client.list_members(ListMembersRequest {}).await.ok().map(tonic::Response::into_inner)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()?;
    let members = response
        .members
        .iter()
        .map(|m| MemberEntry {
            name: m.name.clone(),
            lease: 0,
            data: MemberData {
                conn_url: m.conn_url.clone(),
                api_url: m.api_url.clone(),
                state: m.state.clone(),
                role: m.role.clone(),
                xlog_location: m.xlog_location,
                timeline: (m.timeline > 0).then_some(m.timeline),
                receive_lsn: m.receive_lsn,
                replay_lsn: m.replay_lsn,
                replication_state: (!m.replication_state.is_empty()).then(|| m.replication_state.clone()),
                tags: serde_json::from_str(&m.tags_json).unwrap_or_default(),
                grpc_url: (!m.grpc_url.is_empty()).then(|| m.grpc_url.clone()),
                extra: {
                    let mut extra = serde_json::Map::new();
                    if m.pending_restart {
                        extra.insert("pending_restart".into(), serde_json::Value::Bool(true));
                    }
                    if !m.scheduled_restart.is_empty() {
                        let mut restart = serde_json::json!({"schedule": m.scheduled_restart});
                        if !m.scheduled_restart_postgres_version.is_empty() {
                            restart["postgres_version"] = m.scheduled_restart_postgres_version.clone().into();
                        }
                        extra.insert("scheduled_restart".into(), restart);
                    }
                    if let Ok(reason) = serde_json::from_str::<serde_json::Value>(&m.pending_restart_reason_json) {
                        extra.insert("pending_restart_reason".into(), reason);
                    }
                    if let Some(p) = &m.clone_progress {
                        let progress = dcs::CloneProgress {
                            done_bytes: p.done_bytes,
                            total_bytes: p.total_bytes,
                            bytes_per_second: p.bytes_per_second,
                            seconds_left: p.seconds_left,
                        };
                        extra.insert("clone_progress".into(), serde_json::to_value(progress).unwrap_or_default());
                    }
                    extra
                },
                ..MemberData::default()
            },
        })
        .collect();
    let config_json: Option<serde_json::Value> = serde_json::from_str(&response.config_json).ok();
    let view = ClusterView {
        initialize: (!response.system_identifier.is_empty()).then(|| response.system_identifier.clone()),
        leader: (!response.leader.is_empty()).then(|| LeaderView {
            name: response.leader.clone(),
            lease: 0,
            mod_revision: 0,
        }),
        members,
        status: (response.optime > 0).then(|| Status { optime: response.optime, ..Status::default() }),
        sync: (!response.sync_standbys.is_empty()).then(|| SyncState {
            leader: None,
            sync_standby: Some(response.sync_standbys.join(",")),
            quorum: None,
        }),
        history: serde_json::from_str(&response.history_json).unwrap_or_default(),
        config: config_json.map(|json| (json, 0)),
        ..ClusterView::default()
    };
    Some(Snapshot { scope: response.scope, view, from: format!("controller {url}") })
}

/// Reads the cluster: the controller first, then etcd.
pub async fn read(config: &Config, scope: &str) -> anyhow::Result<Snapshot> {
    if let Some(snapshot) = from_controller(config, scope).await {
        return Ok(snapshot);
    }
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let etcd = dcs::connect(&EtcdSettings::from_config(&config.etcd, timeout)).await?;
    let keys = Keys::new(&config.namespace, scope);
    let view = dcs::read_cluster(&etcd, &keys).await.map_err(|e| {
        let tls = config.etcd.endpoints.iter().any(|e| e.starts_with("https://"));
        let hint = if tls {
            "check that etcd runs, that etcd3.hosts lists it, and that etcd3.cacert signs etcd's certificate \
             and etcd trusts the CA of etcd3.cert (a refused client certificate shows as a transport error)"
        } else {
            "check that etcd runs and that the config's etcd3.hosts lists it"
        };
        anyhow::anyhow!(
            "cannot read cluster {scope} from etcd at {}: {}; {hint}",
            config.etcd.endpoints.join(","),
            dcs::describe_error(&e)
        )
    })?;
    Ok(Snapshot { scope: scope.to_string(), view, from: "etcd".into() })
}
