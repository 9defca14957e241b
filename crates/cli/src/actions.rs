//! Commands that change the cluster, written to etcd as `patronictl` does
//! when it cannot reach the REST API: a switchover or failover request in the
//! `failover` key (the agents carry it out), and `pause` in the `config` key.
//! Every write is a compare-and-swap; nothing is written before the request
//! is checked.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dcs::{ClusterView, Etcd, EtcdSettings, Failover, Keys};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use pgwarden_config::Config;

pub struct Target {
    pub etcd: Etcd,
    pub keys: Keys,
    pub scope: String,
}

pub async fn target(config: &Config, cluster: Option<String>) -> anyhow::Result<Target> {
    let scope = cluster.unwrap_or_else(|| config.scope.clone());
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let etcd = dcs::connect(&EtcdSettings::from_config(&config.etcd, timeout)).await?;
    Ok(Target { etcd, keys: Keys::new(&config.namespace, &scope), scope })
}

async fn read(target: &Target) -> anyhow::Result<ClusterView> {
    dcs::read_cluster(&target.etcd, &target.keys)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read cluster {} from etcd: {}", target.scope, dcs::describe_error(&e)))
}

/// Asks for confirmation on a terminal; without one, `--force` is required.
fn confirm(question: &str, force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} needs confirmation: run it on a terminal, or add --force");
    }
    print!("{question} [y/N]: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") { Ok(()) } else { bail!("aborted") }
}

fn tag_is_true(view: &ClusterView, member: &str, tag: &str) -> bool {
    view.member(member).and_then(|m| m.data.tags.get(tag)).and_then(serde_json::Value::as_bool) == Some(true)
}

/// Writes the request iff no other is pending, then (unless scheduled)
/// follows it until the leader changes.
async fn request(target: &Target, view: &ClusterView, failover: Failover, wait_for: Duration) -> anyhow::Result<()> {
    if let Some(pending) = &view.failover {
        bail!(
            "a switchover or failover is already requested ({}); wait for it, or delete the key {} to drop it",
            serde_json::to_string(pending)?,
            target.keys.failover()
        );
    }
    let key = target.keys.failover();
    let txn = Txn::new().when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key.as_str(),
        serde_json::to_string(&failover)?,
        None,
    )]);
    if !target.etcd.txn(txn).await.context("write the request")?.succeeded() {
        bail!("another request was written at the same moment; run `pgwardenctl list` and try again");
    }
    if let Some(at) = &failover.scheduled_at {
        println!("Switchover scheduled at {at}");
        return Ok(());
    }
    let old_leader = view.leader.as_ref().map(|l| l.name.clone());
    let started = Instant::now();
    while started.elapsed() < wait_for {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read(target).await?;
        let leader = now.leader.as_ref().map(|l| l.name.clone());
        // Done when the leader changed and the new one cleared the request.
        if leader.is_some() && leader != old_leader && now.failover.is_none() {
            let leader = leader.unwrap_or_default();
            match failover.member.as_deref() {
                Some(wanted) if wanted != leader => println!("Switched over to \"{leader}\" instead of \"{wanted}\""),
                _ => println!("Successfully switched over to \"{leader}\""),
            }
            return Ok(());
        }
        if now.failover.is_none() && leader == old_leader {
            bail!("Switchover failed: the leader cleared the request (see its agent's log for why)");
        }
    }
    bail!("Switchover status unknown after {} seconds: check `pgwardenctl list`", wait_for.as_secs())
}

fn wait_budget(view: &ClusterView) -> Duration {
    let loop_wait =
        view.config.as_ref().and_then(|(c, _)| c.get("loop_wait")).and_then(serde_json::Value::as_u64).unwrap_or(10);
    Duration::from_secs(2 * loop_wait.max(10))
}

pub async fn switchover(
    target: &Target,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let view = read(target).await?;
    let Some(current) = view.leader.as_ref().map(|l| l.name.clone()) else {
        bail!(
            "cluster {} has no leader: a switchover needs one (use `pgwardenctl failover --candidate NAME`)",
            target.scope
        );
    };
    if let Some(leader) = &leader
        && *leader != current
    {
        bail!("leader name does not match: {current} leads, not {leader}");
    }
    if let Some(candidate) = &candidate {
        if *candidate == current {
            bail!("Switchover target and source are the same");
        }
        if view.member(candidate).is_none() {
            bail!("candidate {candidate} does not exist in cluster {}", target.scope);
        }
        if tag_is_true(&view, candidate, "nofailover") {
            bail!("candidate {candidate} is tagged nofailover");
        }
    }
    let scheduled_at = match scheduled.as_deref() {
        None | Some("now") => None,
        Some(at) => {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_err(|_| {
                anyhow::anyhow!(
                    "--scheduled {at:?}: expected `now` or an ISO 8601 time with a time zone, e.g. 2026-12-01T03:00:00+00:00"
                )
            })?;
            Some(at.to_string())
        }
    };
    confirm(&format!("Switch over cluster {} from {current}?", target.scope), force)?;
    let failover = Failover { leader: Some(current), member: candidate, scheduled_at };
    request(target, &view, failover, wait_budget(&view)).await
}

pub async fn failover(target: &Target, candidate: String, force: bool) -> anyhow::Result<()> {
    let view = read(target).await?;
    if view.member(&candidate).is_none() {
        bail!("candidate {candidate} does not exist in cluster {}", target.scope);
    }
    if tag_is_true(&view, &candidate, "nofailover") {
        bail!("candidate {candidate} is tagged nofailover");
    }
    if view.leader.as_ref().is_some_and(|l| l.name == candidate) {
        bail!("{candidate} is already the leader");
    }
    confirm(&format!("Fail cluster {} over to {candidate}?", target.scope), force)?;
    let failover = Failover { leader: None, member: Some(candidate), scheduled_at: None };
    request(target, &view, failover, wait_budget(&view)).await
}

/// Sets or clears `pause` in the `config` key (compare-and-swap); with
/// `wait`, until every member's key reports it.
pub async fn set_pause(target: &Target, pause: bool, wait: bool) -> anyhow::Result<()> {
    let view = read(target).await?;
    let Some((mut config, revision)) = view.config.clone() else {
        bail!("cluster {} has no config key yet (is it bootstrapped?)", target.scope);
    };
    let paused = config.get("pause").and_then(serde_json::Value::as_bool) == Some(true);
    if paused == pause {
        bail!("cluster {} is already {}", target.scope, if pause { "paused" } else { "resumed" });
    }
    let map = config.as_object_mut().context("the config key is not a JSON object")?;
    if pause {
        map.insert("pause".into(), serde_json::Value::Bool(true));
    } else {
        map.remove("pause");
    }
    let key = target.keys.config();
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)])
        .and_then([TxnOp::put(key.as_str(), config.to_string(), None)]);
    if !target.etcd.txn(txn).await.context("write the config")?.succeeded() {
        bail!("the config changed at the same moment; try again");
    }
    println!(
        "{}",
        if pause { "Success: cluster management is paused" } else { "Success: cluster management is resumed" }
    );
    if wait {
        let started = Instant::now();
        loop {
            let now = read(target).await?;
            let pending: Vec<&str> = now
                .members
                .iter()
                .filter(|m| (m.data.extra.get("pause") == Some(&serde_json::Value::Bool(true))) != pause)
                .map(|m| m.name.as_str())
                .collect();
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > wait_budget(&now) {
                bail!("members not yet reporting it: {}", pending.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
