//! Patroni's callbacks: `postgresql.callbacks.on_start`, `on_stop`,
//! `on_restart`, `on_reload`, `on_role_change`, run asynchronously as
//! `<command> <action> <role> <scope>` (through `sh`, so the command may
//! carry its own arguments), each killed after `CALLBACK_TIMEOUT`; and the
//! synchronous hooks `pre_promote` (a non-zero exit vetoes the promotion)
//! and `before_stop`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{info, warn};

/// An asynchronous callback still running after this is killed.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `pre_promote` and `before_stop` may take.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a callback is run for: the config's `on_<event>` key, and the first
/// argument the command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop,
    Restart,
    Reload,
    RoleChange,
}

impl Event {
    pub fn key(self) -> &'static str {
        match self {
            Event::Start => "on_start",
            Event::Stop => "on_stop",
            Event::Restart => "on_restart",
            Event::Reload => "on_reload",
            Event::RoleChange => "on_role_change",
        }
    }
}

/// The role a callback is told, in Patroni's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// A standby cluster's leader.
    StandbyLeader,
    /// A primary that gave the leader key up with its PostgreSQL down.
    Demoted,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
        }
    }

    /// Primary and standby leader: the roles that hold the leader key.
    pub fn leads(self) -> bool {
        matches!(self, Role::Primary | Role::StandbyLeader)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    commands: BTreeMap<String, String>,
    pre_promote: Option<String>,
    before_stop: Option<String>,
    scope: String,
}

fn command(line: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(format!("{line} \"$@\"")).arg("sh").args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

async fn run(line: &str, args: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let child = command(line, args).spawn().with_context(|| format!("start {line:?}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{line:?} did not finish within {timeout:?} (killed)"))?
        .with_context(|| format!("wait for {line:?}"))?;
    if !output.status.success() {
        bail!("{line:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

impl Callbacks {
    pub fn new(config: &pgwarden_config::Config) -> Self {
        Self {
            commands: config.postgresql.callbacks.clone(),
            pre_promote: config.postgresql.pre_promote.clone(),
            before_stop: config.postgresql.before_stop.clone(),
            scope: config.scope.clone(),
        }
    }

    /// Runs the `event`'s callback in the background, if configured.
    pub fn fire(&self, event: Event, role: Role) {
        let action = event.key();
        let Some(line) = self.commands.get(action).cloned() else { return };
        let args = [action.to_string(), role.to_string(), self.scope.clone()];
        info!(callback = %line, action, %role, "running a callback");
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = run(&line, &args, CALLBACK_TIMEOUT).await {
                warn!("callback: {e:#}");
            }
        });
    }

    /// `pre_promote`: the promotion goes ahead only if it succeeds.
    pub async fn pre_promote(&self) -> anyhow::Result<()> {
        let Some(line) = &self.pre_promote else { return Ok(()) };
        info!(hook = %line, "running pre_promote");
        run(line, &["pre_promote", "primary", &self.scope], HOOK_TIMEOUT).await
    }

    /// `before_stop`: run (and waited for) before PostgreSQL is stopped; a
    /// failure is logged, the stop goes ahead.
    pub async fn before_stop(&self, role: Role) {
        let Some(line) = &self.before_stop else { return };
        info!(hook = %line, "running before_stop");
        if let Err(e) = run(line, &["before_stop", role.as_str(), &self.scope], HOOK_TIMEOUT).await {
            warn!("before_stop: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_get_the_action_role_and_scope_and_a_failure_is_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let out = dir.path().join("out");
        let line = format!("echo >>{} pre:", out.display());
        run(&line, &["pre_promote", "primary", "batman"], HOOK_TIMEOUT).await.expect("runs");
        assert_eq!(std::fs::read_to_string(&out).expect("written"), "pre: pre_promote primary batman\n");
        let err = run("exit 3;", &[], HOOK_TIMEOUT).await.expect_err("fails");
        assert!(format!("{err:#}").contains("exit status: 3"), "{err:#}");
        let err = run("sleep 5;", &[], Duration::from_millis(100)).await.expect_err("times out");
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
    }
}
