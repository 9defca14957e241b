//! `/cluster` and `/history`: the cluster as etcd holds it, in Patroni's JSON.

use dcs::ClusterView;
use serde_json::{Value, json};

/// Patroni's `/cluster` document: members sorted by name with their role
/// (`leader`, `sync_standby`, `quorum_standby`, `replica`), state (`streaming` for a replica
/// that receives WAL), address, timeline, lag in bytes and tags.
pub fn cluster_json(scope: &str, view: &ClusterView) -> Value {
    let members: Vec<Value> = view
        .summaries()
        .into_iter()
        .map(|summary| {
            let (entry, data) = (summary.entry, &summary.entry.data);
            let (host, port) = data.host_port().unwrap_or_default();
            let mut member = json!({
                "name": entry.name,
                "role": summary.role.as_str(),
                "state": summary.state,
                "api_url": data.api_url,
                "host": host,
                "port": port,
            });
            let map = member.as_object_mut().expect("built as an object");
            if let Some(timeline) = data.timeline {
                map.insert("timeline".into(), json!(timeline));
            }
            if !data.tags.is_empty() {
                map.insert("tags".into(), Value::Object(data.tags.clone()));
            }
            if data.pending_restart() {
                map.insert("pending_restart".into(), json!(true));
            }
            if !summary.role.leads() {
                map.insert("lag".into(), summary.lag.map_or_else(|| json!("unknown"), |lag| json!(lag)));
                if let Some(lsn) = data.receive_lsn {
                    map.insert("receive_lsn".into(), json!(ha_core::Lsn(lsn).to_string()));
                }
                if let Some(lsn) = data.replay_lsn {
                    map.insert("replay_lsn".into(), json!(ha_core::Lsn(lsn).to_string()));
                }
            }
            member
        })
        .collect();
    let mut body = json!({"scope": scope, "members": members});
    if view.config.as_ref().is_some_and(|(c, _)| c.get("pause").and_then(Value::as_bool) == Some(true)) {
        body["pause"] = json!(true);
    }
    // Patroni's: a switchover scheduled in the `failover` key.
    if let Some(failover) = &view.failover
        && let Some(at) = &failover.scheduled_at
    {
        let mut scheduled = json!({"at": at});
        if let Some(from) = &failover.leader {
            scheduled["from"] = json!(from);
        }
        if let Some(to) = &failover.member {
            scheduled["to"] = json!(to);
        }
        body["scheduled_switchover"] = scheduled;
    }
    body
}

/// Patroni's `/history`: `[[timeline, lsn, reason, timestamp, new_leader], ...]`.
pub fn history_json(view: &ClusterView) -> Value {
    serde_json::to_value(&view.history).unwrap_or_else(|_| json!([]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcs::{LeaderView, MemberData, MemberEntry, Status};

    #[test]
    fn members_carry_patronis_fields() {
        let member = |name: &str, role: &str, state: &str, replication: Option<&str>, lsn| MemberEntry {
            name: name.into(),
            lease: 1,
            data: MemberData {
                conn_url: format!("postgres://127.0.0.1:5432/{name}"),
                api_url: "http://127.0.0.1:8008/patroni".into(),
                role: role.into(),
                state: state.into(),
                replication_state: replication.map(String::from),
                timeline: Some(2),
                replay_lsn: lsn,
                ..MemberData::default()
            },
        };
        let view = ClusterView {
            leader: Some(LeaderView { name: "a".into(), lease: 1, mod_revision: 1 }),
            members: vec![
                member("a", "primary", "running", None, None),
                member("b", "replica", "running", Some("streaming"), Some(90)),
            ],
            status: Some(Status { optime: 100, ..Status::default() }),
            ..ClusterView::default()
        };
        let body = cluster_json("s", &view);
        assert_eq!(body["members"][0]["role"], "leader");
        assert_eq!(body["members"][0]["state"], "running");
        assert!(body["members"][0].get("lag").is_none());
        assert_eq!(body["members"][1]["role"], "replica");
        assert_eq!(body["members"][1]["state"], "streaming");
        assert_eq!(body["members"][1]["lag"], 10);
        assert_eq!(body["members"][1]["port"], 5432);
        assert!(body.get("scheduled_switchover").is_none());
        assert!(body["members"][1].get("pending_restart").is_none());
    }

    #[test]
    fn a_scheduled_switchover_and_a_pending_restart_show_as_in_patroni() {
        let mut pending = MemberData { conn_url: "postgres://h:5432/postgres".into(), ..MemberData::default() };
        pending.extra.insert("pending_restart".into(), json!(true));
        let view = ClusterView {
            members: vec![MemberEntry { name: "b".into(), lease: 1, data: pending }],
            failover: Some(dcs::Failover {
                leader: Some("a".into()),
                member: Some("b".into()),
                scheduled_at: Some("2026-12-05T10:00:00+00:00".into()),
            }),
            ..ClusterView::default()
        };
        let body = cluster_json("s", &view);
        assert_eq!(body["scheduled_switchover"], json!({"at": "2026-12-05T10:00:00+00:00", "from": "a", "to": "b"}));
        assert_eq!(body["members"][0]["pending_restart"], true);
    }
}
