//! Cluster events for `WatchEvents`: every controller watches the cluster's
//! keys and reports what changed (leader key, roles, requests, the active
//! controller), each stamped with the time it was seen. The active one also
//! supervises requests: it reports a request it picked up, and clears one
//! that outlived its deadline without a leader change (abandoned).

use std::time::{Duration, Instant};

use dcs::ClusterView;
use ha_proto::v1::{ClusterEvent, EventKind};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::active::ActiveState;
use workflows::{Cluster, event, workflow};

fn describe(request: &dcs::Failover) -> String {
    let to = request.member.as_deref().unwrap_or("the best candidate");
    let what = match request.leader.as_deref() {
        Some(leader) => format!("switchover from {leader} to {to}"),
        None => format!("failover to {to}"),
    };
    match request.scheduled_at.as_deref() {
        Some(at) => format!("{what}, scheduled at {at}"),
        None => what,
    }
}

/// What changed between two views, as events.
pub fn diff(before: &ClusterView, after: &ClusterView) -> Vec<ClusterEvent> {
    let mut events = Vec::new();
    let leader = |v: &ClusterView| v.leader.as_ref().map(|l| l.name.clone());
    match (leader(before), leader(after)) {
        (Some(old), None) => {
            events.push(event(EventKind::Leader, &old, format!("{old} no longer holds the leader key")))
        }
        (None, Some(new)) => events.push(event(EventKind::Leader, &new, format!("{new} took the leader key"))),
        (Some(old), Some(new)) if old != new => {
            events.push(event(EventKind::Leader, &new, format!("the leader key went from {old} to {new}")))
        }
        _ => {}
    }
    match (&before.failover, &after.failover) {
        (None, Some(request)) => {
            events.push(event(EventKind::Request, "", format!("requested: {}", describe(request))))
        }
        (Some(request), None) => {
            events.push(event(EventKind::Request, "", format!("request done or cleared: {}", describe(request))))
        }
        _ => {}
    }
    for member in &after.members {
        match before.member(&member.name) {
            None => events.push(event(
                EventKind::Role,
                &member.name,
                format!("{} joined as {}", member.name, member.data.role),
            )),
            Some(old) if old.data.role != member.data.role || old.data.state != member.data.state => {
                events.push(event(
                    EventKind::Role,
                    &member.name,
                    format!(
                        "{}: {} ({}) -> {} ({})",
                        member.name, old.data.role, old.data.state, member.data.role, member.data.state
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    for member in before.members.iter().filter(|m| after.member(&m.name).is_none()) {
        events.push(event(EventKind::Role, &member.name, format!("{}'s member key is gone", member.name)));
    }
    events
}

/// Watches the cluster and publishes its events until the process ends.
pub async fn run(cluster: Cluster, events: broadcast::Sender<ClusterEvent>, mut active: watch::Receiver<ActiveState>) {
    let mut previous: Option<ClusterView> = None;
    // The pending request this controller follows: its revision and since when.
    let mut following: Option<(i64, Instant)> = None;
    let mut was_active = ActiveState::default();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    tokio::spawn(watch_prefix(cluster.clone(), wake.clone()));
    loop {
        let now_active = active.borrow_and_update().clone();
        if now_active != was_active && !now_active.member.is_empty() {
            let message = format!("the active controller is {} ({})", now_active.member, now_active.url);
            let _ = events.send(event(EventKind::Controller, &now_active.member, message));
        }
        was_active = now_active.clone();
        if let Ok(view) = cluster.read().await {
            if let Some(before) = &previous {
                for e in diff(before, &view) {
                    let _ = events.send(e);
                }
            }
            if now_active.this_one {
                supervise(&cluster, &view, &mut following, &events).await;
            } else {
                following = None;
            }
            previous = Some(view);
        }
        // The watch wakes every controller on each change; the active one
        // also looks every 5 s while a request is pending (a scheduled one
        // falls due, a stale one outlives its deadline, without any change);
        // otherwise every 30 s (a safety net for a watch that went quiet).
        let pending = previous.as_ref().is_some_and(|view| view.failover.is_some());
        let pace = if was_active.this_one && pending { Duration::from_secs(5) } else { Duration::from_secs(30) };
        tokio::select! {
            () = wake.notified() => {}
            _ = active.changed() => {}
            () = tokio::time::sleep(pace) => {}
        }
    }
}

async fn watch_prefix(cluster: Cluster, wake: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        match election::watch(&cluster.etcd, cluster.keys.prefix(), true, None).await {
            Ok(mut watcher) => {
                while let Ok(Some(_)) = watcher.next().await {
                    wake.notify_one();
                }
            }
            Err(e) => tracing::debug!("cannot watch the cluster: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The active controller's part: report a request it picks up, and clear
/// one that outlived its deadline (due, and no leader change since).
async fn supervise(
    cluster: &Cluster,
    view: &ClusterView,
    following: &mut Option<(i64, Instant)>,
    events: &broadcast::Sender<ClusterEvent>,
) {
    let Some(request) = &view.failover else {
        *following = None;
        return;
    };
    // As the agents read it: no time (or an empty one) is now, an
    // unreadable one never.
    let due = match request.scheduled() {
        dcs::Scheduled::Now => true,
        dcs::Scheduled::At(when) => when <= time::OffsetDateTime::now_utc(),
        dcs::Scheduled::Unreadable(_) => false,
    };
    let (revision, since) = match following {
        Some((revision, since)) if *revision == view.failover_revision => {
            // The deadline counts from when the request is due.
            if !due {
                *since = Instant::now();
            }
            (*revision, *since)
        }
        _ => {
            let message = format!("following: {}", describe(request));
            info!("{message}");
            let _ = events.send(event(EventKind::Workflow, request.member.as_deref().unwrap_or(""), message));
            *following = Some((view.failover_revision, Instant::now()));
            return;
        }
    };
    // The agents need at most the workflow deadline plus a ttl to act.
    let limit = workflow::deadline(view) + Duration::from_secs(u64::from(workflow::dynamic(view).ttl));
    if since.elapsed() < limit {
        return;
    }
    let key = cluster.keys.failover();
    match cluster.etcd.delete_if_revision(&key, revision).await {
        Ok(true) => {
            let message = format!(
                "abandoned after {} s without a leader change: cleared the request ({})",
                since.elapsed().as_secs(),
                describe(request)
            );
            info!("{message}");
            let _ = events.send(event(EventKind::Workflow, "", message));
            *following = None;
        }
        Ok(_) => {}
        Err(e) => warn!("failed to clear a stale request: {}", dcs::describe_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcs::{LeaderView, MemberData, MemberEntry};

    fn view(leader: Option<&str>, roles: &[(&str, &str)], failover: Option<dcs::Failover>) -> ClusterView {
        ClusterView {
            leader: leader.map(|name| LeaderView { name: name.into(), lease: 1, mod_revision: 1 }),
            members: roles
                .iter()
                .map(|(name, role)| MemberEntry {
                    name: (*name).into(),
                    lease: 1,
                    data: MemberData { role: (*role).into(), state: "running".into(), ..MemberData::default() },
                })
                .collect(),
            failover,
            ..ClusterView::default()
        }
    }

    #[test]
    fn a_switchover_reads_as_a_sequence_of_events() {
        let request = dcs::Failover { leader: Some("a".into()), member: Some("b".into()), scheduled_at: None };
        let steps = [
            view(Some("a"), &[("a", "primary"), ("b", "replica")], None),
            view(Some("a"), &[("a", "primary"), ("b", "replica")], Some(request.clone())),
            view(None, &[("a", "primary"), ("b", "replica")], Some(request)),
            view(Some("b"), &[("a", "replica"), ("b", "primary")], None),
        ];
        let messages: Vec<String> =
            steps.windows(2).flat_map(|pair| diff(&pair[0], &pair[1])).map(|e| e.message).collect();
        assert_eq!(
            messages,
            vec![
                "requested: switchover from a to b",
                "a no longer holds the leader key",
                "b took the leader key",
                "request done or cleared: switchover from a to b",
                "a: primary (running) -> replica (running)",
                "b: replica (running) -> primary (running)",
            ]
        );
    }
}
