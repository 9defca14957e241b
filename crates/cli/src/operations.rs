//! Day-two commands: `edit-config`, `restart`, `reinit`, `reload` (through
//! the controller, printing its events as they happen, or in-process when
//! none answers) and `remove` (etcd directly, as `patronictl remove`).

use std::io::{BufRead as _, Read as _, Write as _};

use anyhow::{Context as _, bail};
use ha_proto::v1::{
    ClusterEvent, GetConfigRequest, MembersResponse, PatchConfigRequest, PutConfigRequest, ReinitializeMemberRequest,
    ReloadMembersRequest, RestartMembersRequest, WatchEventsRequest,
};
use pgwarden_config::Config;
use serde_json::Value;

use crate::actions::{Target, confirm, controller_client, failed, time_of};

fn cluster(target: &Target) -> workflows::workflow::Cluster {
    workflows::workflow::Cluster { etcd: target.etcd.clone(), keys: target.keys.clone(), scope: target.scope.clone() }
}

fn print_event(event: &ClusterEvent) {
    println!("{}  {}", time_of(event.at_unix_ms), event.message);
}

/// Runs a members operation through the controller (events printed live)
/// or in-process; prints each member's outcome and returns the members it
/// failed on (not done, not skipped by a condition).
async fn members_operation(config: &Config, target: &Target, operation: Operation) -> anyhow::Result<Vec<String>> {
    let restarting = matches!(operation, Operation::Restart(_));
    let response = match controller_client(config, &target.scope).await {
        Some(mut client) => {
            let mut events = client.watch_events(WatchEventsRequest {}).await.map_err(failed)?.into_inner();
            let printer = tokio::spawn(async move {
                while let Ok(Some(event)) = events.message().await {
                    print_event(&event);
                }
            });
            let result = match operation {
                Operation::Restart(request) => client.restart(request).await,
                Operation::CancelRestart(request) => client.cancel_restart(request).await,
                Operation::Reinit(request) => client.reinitialize(request).await,
                Operation::Reload(request) => client.reload(request).await,
            };
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            printer.abort();
            result.map(tonic::Response::into_inner).map_err(failed)?
        }
        None => {
            eprintln!("no controller answers: running the operation here");
            let cluster = cluster(target);
            let progress = |event: ClusterEvent| print_event(&event);
            let result: Result<MembersResponse, workflows::WorkflowError> = match operation {
                Operation::CancelRestart(r) => workflows::operations::cancel_restart(&cluster, &r.members).await,
                Operation::Restart(r) => workflows::operations::restart_members(&cluster, &r, &progress).await,
                Operation::Reinit(r) => workflows::operations::reinitialize(&cluster, &r, &progress).await,
                Operation::Reload(r) => workflows::operations::reload(&cluster, &r.members, &progress).await,
            };
            result.map_err(failed)?
        }
    };
    let mut failed = Vec::new();
    for outcome in response.outcomes {
        println!("{}: {}", outcome.member, outcome.message);
        let skipped = outcome.message.starts_with("skipped");
        if restarting && outcome.done && !skipped {
            // The line patronictl's users (and their scripts) look for.
            println!("Success: restart on member {}", outcome.member);
        }
        if !outcome.done && !skipped {
            failed.push(outcome.member);
        }
    }
    Ok(failed)
}

enum Operation {
    Restart(RestartMembersRequest),
    CancelRestart(ha_proto::v1::CancelRestartMembersRequest),
    Reinit(ReinitializeMemberRequest),
    Reload(ReloadMembersRequest),
}

/// What `restart` was asked.
pub struct Restart {
    pub members: Vec<String>,
    pub role: Option<String>,
    pub pending: bool,
    pub any: bool,
    pub pg_version: Option<String>,
    /// Seconds; 0: the config's timeouts.
    pub timeout: u32,
    pub switchover: bool,
    pub scheduled: Option<String>,
    pub force: bool,
}

pub async fn restart(config: &Config, target: &Target, restart: Restart) -> anyhow::Result<()> {
    let Restart { members, role, pending, any, pg_version, timeout, switchover, scheduled, force } = restart;
    let which = match (any, members.is_empty()) {
        (true, true) => "one member".to_string(),
        (true, false) => format!("one of {}", members.join(", ")),
        (false, true) => "every member".to_string(),
        (false, false) => members.join(", "),
    };
    let when = scheduled.as_deref().map_or_else(|| "now".to_string(), |at| format!("at {at}"));
    confirm(&format!("Restart PostgreSQL on {which} of cluster {}, {when}?", target.scope), force)?;
    let request = RestartMembersRequest {
        members,
        role: role.unwrap_or_default(),
        pending_only: pending,
        switchover_leader: switchover,
        schedule: scheduled.unwrap_or_default(),
        postgres_version: pg_version.unwrap_or_default(),
        timeout_seconds: timeout,
        any,
    };
    let failed = members_operation(config, target, Operation::Restart(request)).await?;
    if !failed.is_empty() {
        bail!("not restarted in time: {}", failed.join(", "));
    }
    Ok(())
}

/// `flush restart`: drops scheduled restarts.
pub async fn flush_restart(config: &Config, target: &Target, force: bool) -> anyhow::Result<()> {
    confirm(&format!("Delete the scheduled restarts of cluster {}?", target.scope), force)?;
    let request = ha_proto::v1::CancelRestartMembersRequest { members: Vec::new() };
    members_operation(config, target, Operation::CancelRestart(request)).await.map(|_| ())
}

/// What `reinit` was asked.
pub struct Reinit {
    pub members: Vec<String>,
    pub from_leader: bool,
    pub wait: bool,
    pub force: bool,
}

/// Re-clones each member in turn (with `wait`, each streams again before
/// the next starts).
pub async fn reinit(config: &Config, target: &Target, reinit: Reinit) -> anyhow::Result<()> {
    let Reinit { members, from_leader, wait, force } = reinit;
    let source = if from_leader { "the leader" } else { "the leader (or a clonefrom member)" };
    confirm(
        &format!("Re-clone {} of cluster {} from {source} (data moved aside)?", members.join(", "), target.scope),
        force,
    )?;
    for member in members {
        let request = ReinitializeMemberRequest { member: member.clone(), from_leader, wait };
        members_operation(config, target, Operation::Reinit(request)).await?;
        // With --wait, once the member streams again.
        println!("Success: reinitialize for member {member}");
    }
    Ok(())
}

pub async fn reload(config: &Config, target: &Target, members: Vec<String>, force: bool) -> anyhow::Result<()> {
    let which = if members.is_empty() { "every member".to_string() } else { members.join(", ") };
    confirm(&format!("Reload the config of {which} of cluster {}?", target.scope), force)?;
    members_operation(config, target, Operation::Reload(ReloadMembersRequest { members })).await.map(|_| ())
}

/// `key.path=value`: the value read as a YAML scalar (`null` deletes).
fn set_path(patch: &mut Value, path: &str, value: Value) {
    let mut node = patch;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !node.get(*part).is_some_and(Value::is_object) {
            node[*part] = Value::Object(Default::default());
        }
        node = node.get_mut(*part).expect("just made");
    }
    node[parts[parts.len() - 1]] = value;
}

fn scalar(text: &str) -> anyhow::Result<Value> {
    serde_saphyr::from_str::<Value>(text).with_context(|| format!("read {text:?} as a YAML value"))
}

fn yaml(value: &Value) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(value)?)
}

/// The lines that differ, `-` before and `+` after (a line-set diff: enough
/// to review a configuration change).
fn diff(before: &str, after: &str) -> String {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for line in old.iter().filter(|l| !new.contains(l)) {
        out.push_str(&format!("-{line}\n"));
    }
    for line in new.iter().filter(|l| !old.contains(l)) {
        out.push_str(&format!("+{line}\n"));
    }
    out
}

/// A file's text, or stdin's for `-`.
pub(crate) fn read_source(path: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    }
    Ok(text)
}

fn edit_in_editor(current: &str) -> anyhow::Result<String> {
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let file = std::env::temp_dir().join(format!("pgwardenctl-config-{}.yaml", std::process::id()));
    std::fs::write(&file, current)?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()
        .with_context(|| format!("run the editor {editor:?} (set EDITOR)"))?;
    let edited = std::fs::read_to_string(&file);
    let _ = std::fs::remove_file(&file);
    if !status.success() {
        bail!("the editor {editor:?} failed: nothing changed");
    }
    Ok(edited?)
}

pub struct EditConfig {
    pub sets: Vec<String>,
    pub pgs: Vec<String>,
    pub apply: Option<String>,
    /// The whole configuration from this file (`-`: stdin).
    pub replace: Option<String>,
    /// Do not print the changes.
    pub quiet: bool,
    pub force: bool,
    /// A JSON merge patch made by another command (demote-cluster).
    pub patch: Option<Value>,
}

impl EditConfig {
    /// An edit by a prepared merge patch (`null` removes a key).
    pub fn patch(patch: Value, force: bool) -> Self {
        Self { sets: Vec::new(), pgs: Vec::new(), apply: None, replace: None, quiet: false, force, patch: Some(patch) }
    }
}

pub async fn edit_config(config: &Config, target: &Target, edit: EditConfig) -> anyhow::Result<()> {
    let mut client = controller_client(config, &target.scope).await;
    let current = match client.as_mut() {
        Some(client) => client.get_config(GetConfigRequest {}).await.map_err(failed)?.into_inner(),
        None => workflows::operations::get_config(&cluster(target)).await.map_err(failed)?,
    };
    let before: Value = serde_json::from_str(&current.config_json).context("the config key is not JSON")?;
    let by_patch = !edit.sets.is_empty() || !edit.pgs.is_empty() || edit.apply.is_some() || edit.patch.is_some();
    let (after, patch) = if let Some(source) = &edit.replace {
        let text = read_source(source)?;
        let replacement = serde_saphyr::from_str::<Value>(&text)
            .with_context(|| format!("read {source} as YAML or JSON: nothing changed"))?;
        if !replacement.is_object() {
            bail!("{source} does not hold a configuration (a mapping of keys): nothing changed");
        }
        (replacement, None)
    } else if by_patch {
        let mut patch = edit.patch.clone().unwrap_or_else(|| Value::Object(Default::default()));
        if let Some(source) = &edit.apply {
            let text = read_source(source)?;
            patch = serde_saphyr::from_str::<Value>(&text).with_context(|| format!("read {source} as YAML or JSON"))?;
        }
        for set in &edit.sets {
            let (path, value) = set.split_once('=').with_context(|| format!("--set {set}: expected key=value"))?;
            set_path(&mut patch, path, scalar(value)?);
        }
        for pg in &edit.pgs {
            let (name, value) = pg.split_once('=').with_context(|| format!("--pg {pg}: expected name=value"))?;
            // As Patroni reads `-p`: a YAML scalar (`6` a number, `on` true,
            // written to postgresql.conf as `on` again, `8MB` a string).
            set_path(&mut patch, &format!("postgresql.parameters.{name}"), scalar(value)?);
        }
        let mut after = before.clone();
        workflows::operations::merge_patch(&mut after, &patch);
        (after, Some(patch))
    } else {
        let edited = edit_in_editor(&yaml(&before)?)?;
        (
            serde_saphyr::from_str::<Value>(&edited).context("the edited config is not valid YAML: nothing changed")?,
            None,
        )
    };
    let changes = diff(&yaml(&before)?, &yaml(&after)?);
    if changes.is_empty() {
        println!("Not changed");
        return Ok(());
    }
    if !edit.quiet {
        print!("---\n+++\n{changes}");
    }
    confirm("Apply these changes?", edit.force)?;
    let revision = current.revision;
    let response = match (client.as_mut(), &patch) {
        (Some(client), Some(patch)) => client
            .patch_config(PatchConfigRequest { patch_json: patch.to_string(), expected_revision: revision })
            .await
            .map(tonic::Response::into_inner),
        (Some(client), None) => client
            .put_config(PutConfigRequest { config_json: after.to_string(), expected_revision: revision })
            .await
            .map(tonic::Response::into_inner),
        (None, Some(patch)) => {
            workflows::operations::change_config(&cluster(target), &patch.to_string(), false, revision)
                .await
                .map_err(tonic::Status::from)
        }
        (None, None) => workflows::operations::change_config(&cluster(target), &after.to_string(), true, revision)
            .await
            .map_err(tonic::Status::from),
    }
    .map_err(failed)?;
    println!("Configuration changed");
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    if !response.need_restart.is_empty() {
        println!(
            "These take effect after a restart (see `Pending restart` in `list`; `pgwardenctl restart --pending`): {}",
            response.need_restart.join(", ")
        );
    }
    Ok(())
}

/// `remove <cluster>`: deletes every key of the cluster once the user typed
/// its name; refused while members run, unless `--force`.
pub async fn remove(target: &Target, force: bool) -> anyhow::Result<()> {
    let view = dcs::read_cluster(&target.etcd, &target.keys)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read cluster {}: {}", target.scope, dcs::describe_error(&e)))?;
    let running: Vec<&str> = view.members.iter().filter(|m| m.data.is_running()).map(|m| m.name.as_str()).collect();
    if !running.is_empty() && !force {
        bail!(
            "members of {} are running ({}): stop them first, or add --force to remove the keys under them",
            target.scope,
            running.join(", ")
        );
    }
    print!("Please confirm the cluster name to remove: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != target.scope {
        bail!("aborted: {:?} is not the cluster name {:?}; nothing removed", answer.trim(), target.scope);
    }
    let prefix = target.keys.prefix().to_string();
    let deleted = target
        .etcd
        .call(|mut client| {
            let prefix = prefix.clone();
            async move { client.delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix())).await }
        })
        .await
        .map_err(|e| anyhow::anyhow!("remove the keys: {}", dcs::describe_error(&e)))?
        .deleted();
    println!("Removed cluster {} ({deleted} keys under {})", target.scope, target.keys.prefix());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_paths_and_values() {
        let mut patch = Value::Object(Default::default());
        set_path(&mut patch, "ttl", scalar("20").expect("yaml"));
        set_path(&mut patch, "postgresql.parameters.work_mem", scalar("8MB").expect("yaml"));
        set_path(&mut patch, "postgresql.parameters.superuser_reserved_connections", scalar("6").expect("yaml"));
        set_path(&mut patch, "postgresql.parameters.fsync", scalar("on").expect("yaml"));
        set_path(&mut patch, "loop_wait", scalar("null").expect("yaml"));
        assert_eq!(
            patch,
            serde_json::json!({"ttl": 20, "postgresql": {"parameters": {
                "work_mem": "8MB", "superuser_reserved_connections": 6, "fsync": true
            }}, "loop_wait": null})
        );
        // The diff Patroni's users read: nested as the config key nests.
        let text = yaml(&serde_json::json!({"postgresql": {"parameters": {"superuser_reserved_connections": 6}}}))
            .expect("yaml");
        assert!(diff("", &text).contains("+    superuser_reserved_connections: 6\n"), "{text}");
    }

    #[test]
    fn diff_shows_changed_lines() {
        assert_eq!(diff("a: 1\nb: 2\n", "a: 1\nb: 3\n"), "-b: 2\n+b: 3\n");
        assert_eq!(diff("a: 1\n", "a: 1\n"), "");
    }
}
