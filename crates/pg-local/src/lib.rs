//! What the local PostgreSQL is doing, read from its data directory without
//! connecting: `PG_VERSION`, `postmaster.pid` (PID and the postmaster's own
//! status line) and the standby signal files. Shared by the agent's observer
//! and the health API's fencer; it never changes anything.

use std::path::Path;

/// What the postmaster is doing, as its data directory shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostmasterState {
    /// No data directory (no `PG_VERSION`).
    #[default]
    Uninitialized,
    Stopped,
    /// Running, not (yet) accepting connections.
    Starting,
    /// Accepting connections (`ready`, or `standby` for a hot standby).
    Running,
    Stopping,
}

/// The role the data directory is set up for: a standby or recovery
/// signal file makes it a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataRole {
    #[default]
    Uninitialized,
    Primary,
    Replica,
}

/// One observation of the local PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalPostgres {
    pub state: PostmasterState,
    pub role: DataRole,
    /// 0 when no postmaster runs.
    pub postmaster_pid: u32,
}

/// Whether `pid` is a running process; a zombie (exited but not reaped, as a
/// detached postmaster can be when PID 1 does not reap) is not.
/// Where the agent keeps the secret only the `pgwarden-health` beside it
/// can read (both run as the data directory's owner; the file is 0600):
/// `<data_dir>.pgwarden.fencer-token`. A fencer acknowledgement must carry
/// it, so no other process that reaches the agent's port can pose as the
/// fencer.
pub fn fencer_token_path(data_dir: &Path) -> std::path::PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(".pgwarden.fencer-token");
    data_dir.with_file_name(name)
}

/// Where the fencer remembers the deadline it guards (CLOCK_BOOTTIME ns,
/// 0 for none), so that a fencer restarted beside a silent agent is armed at
/// once: `<data_dir>.pgwarden.fencer-deadline`.
pub fn fencer_deadline_path(data_dir: &Path) -> std::path::PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(".pgwarden.fencer-deadline");
    data_dir.with_file_name(name)
}

/// The gRPC metadata key that carries the fencer token.
pub const FENCER_TOKEN_METADATA: &str = "x-pgwarden-fencer-token";

pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// SIGKILL to a postmaster's children (a backend outlives a killed
/// postmaster and could still acknowledge a commit) and to it; returns them
/// all, for the caller to check that each is gone.
pub fn kill_with_children(postmaster: u32) -> Vec<u32> {
    let mut processes = children_of(postmaster);
    processes.push(postmaster);
    for &process in &processes {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(process as i32), nix::sys::signal::Signal::SIGKILL);
    }
    processes
}

/// The processes whose parent is `pid` (a postmaster's backends and workers).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

pub fn observe(data_dir: &Path) -> LocalPostgres {
    let stopped = |role| LocalPostgres { state: PostmasterState::Stopped, role, postmaster_pid: 0 };
    if !data_dir.join("PG_VERSION").exists() {
        return LocalPostgres {
            state: PostmasterState::Uninitialized,
            role: DataRole::Uninitialized,
            postmaster_pid: 0,
        };
    }
    let standby = data_dir.join("standby.signal").exists() || data_dir.join("recovery.signal").exists();
    let role = if standby { DataRole::Replica } else { DataRole::Primary };
    let Ok(pidfile) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return stopped(role);
    };
    let lines: Vec<&str> = pidfile.lines().collect();
    let Some(pid) = lines.first().and_then(|l| l.trim().parse::<u32>().ok()) else {
        return stopped(role);
    };
    if !is_running(pid) {
        return stopped(role);
    }
    // Line 8 is the postmaster's status: starting, stopping, ready or standby.
    let state = match lines.get(7).map(|l| l.trim()) {
        Some("ready") => PostmasterState::Running,
        Some("standby") => {
            return LocalPostgres { state: PostmasterState::Running, role: DataRole::Replica, postmaster_pid: pid };
        }
        Some("stopping") => PostmasterState::Stopping,
        _ => PostmasterState::Starting,
    };
    LocalPostgres { state, role, postmaster_pid: pid }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pidfile(pid: u32, status: &str) -> String {
        format!("{pid}\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  5432001         0\n{status}\n")
    }

    #[test]
    fn reads_state_and_role_from_the_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(observe(dir.path()).state, PostmasterState::Uninitialized);
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").expect("write");
        assert_eq!(
            observe(dir.path()),
            LocalPostgres { state: PostmasterState::Stopped, role: DataRole::Primary, postmaster_pid: 0 }
        );
        let me = std::process::id();
        std::fs::write(dir.path().join("postmaster.pid"), pidfile(me, "ready   ")).expect("write");
        assert_eq!(
            observe(dir.path()),
            LocalPostgres { state: PostmasterState::Running, role: DataRole::Primary, postmaster_pid: me }
        );
        std::fs::write(dir.path().join("postmaster.pid"), pidfile(me, "standby ")).expect("write");
        assert_eq!(observe(dir.path()).role, DataRole::Replica);
        std::fs::write(dir.path().join("postmaster.pid"), pidfile(me, "starting")).expect("write");
        assert_eq!(observe(dir.path()).state, PostmasterState::Starting);
        std::fs::write(dir.path().join("standby.signal"), "").expect("write");
        std::fs::write(dir.path().join("postmaster.pid"), pidfile(me, "ready   ")).expect("write");
        assert_eq!(observe(dir.path()).role, DataRole::Replica);
    }

    #[test]
    fn a_stale_pid_file_means_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").expect("write");
        // PID 0 never names a user process; a PID past pid_max cannot exist.
        std::fs::write(dir.path().join("postmaster.pid"), pidfile(4_194_304 + 7, "ready   ")).expect("write");
        assert_eq!(observe(dir.path()).state, PostmasterState::Stopped);
    }
}
