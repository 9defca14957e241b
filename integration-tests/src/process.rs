//! Child processes that die with the test, directories `postgres` can use,
//! and reaping what a killed test process left behind.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown, geteuid};

const ROOT: &str = "/tmp/pgwarden-tests";

/// The `postgres` user, when this process runs as root and so must switch to
/// it for PostgreSQL (which refuses to run as root).
pub fn postgres_user() -> Option<User> {
    if !geteuid().is_root() {
        return None;
    }
    Some(User::from_name("postgres").ok().flatten().expect("a `postgres` user exists (apt-get install postgresql-15)"))
}

/// Makes `cmd` run as `postgres` when we are root.
pub fn run_as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some(user) = postgres_user() {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw()).env("HOME", &user.dir).env("USER", "postgres");
    }
    cmd
}

/// Hands `path` to `postgres` when we are root.
pub fn give_to_postgres(path: &Path) {
    if let Some(user) = postgres_user() {
        chown(path, Some(user.uid), Some(user.gid)).expect("chown to postgres");
    }
}

/// A temporary directory below `/tmp/pgwarden-tests`, reachable and writable
/// by `postgres`. Removed on drop unless the test is panicking (its logs are
/// then kept and the path printed).
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    pub fn new(label: &str) -> Self {
        static REAP: Once = Once::new();
        REAP.call_once(reap_orphans);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(ROOT).join(format!("{}-{seq}-{label}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create test dir");
        std::fs::set_permissions(ROOT, std::fs::Permissions::from_mode(0o1777)).expect("chmod test root");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        give_to_postgres(&path);
        Self { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory when dropped (a run that failed keeps its logs).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Records a started process so that a later run can reap it if this
    /// test process dies without cleaning up.
    pub fn record_pid(&self, pid: u32, name: &str) {
        let mut file =
            OpenOptions::new().create(true).append(true).open(self.path.join("pids")).expect("open pid record");
        writeln!(file, "{pid} {name}").expect("record pid");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep {
            eprintln!("test files kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, name: &str, dir: &TestDir) -> anyhow::Result<Self> {
        let child = retry_busy(|| cmd.spawn()).map_err(|e| anyhow::anyhow!("start {name}: {e}"))?;
        dir.record_pid(child.id(), name);
        Ok(Self { child: Some(child), name: name.to_string() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited.
    /// `Some(code)` once the process has exited (`None` inside: killed by a
    /// signal); `None` while it runs.
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        Some(status.code())
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to `timeout` for it
    /// to exit; kills it if it does not. Returns whether it exited by itself.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        self.signal(Signal::SIGTERM);
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if self.has_exited() {
                self.child = None;
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Kills the process at once and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn is_alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` is a running process (a zombie is not).
pub fn is_running(pid: i32) -> bool {
    pid > 0 && pg_local::is_running(pid as u32)
}

fn comm_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Kills what earlier test processes that died without cleaning up left in
/// `/tmp/pgwarden-tests`: recorded children (checked by name, against pid
/// reuse) and postmasters of data directories there. Then removes their dirs.
pub fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(ROOT) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if is_alive(owner) {
            continue;
        }
        let dir = entry.path();
        if let Ok(pids) = std::fs::read_to_string(dir.join("pids")) {
            for line in pids.lines() {
                let mut parts = line.split_whitespace();
                let (Some(pid), Some(expected)) = (parts.next().and_then(|p| p.parse().ok()), parts.next()) else {
                    continue;
                };
                if comm_of(pid).is_some_and(|comm| expected.starts_with(&comm) || comm.starts_with(expected)) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        for pidfile in find_postmaster_pids(&dir) {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|text| text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
                && comm_of(pid).is_some_and(|c| c == "postgres")
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn find_postmaster_pids(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            let pidfile = path.join("postmaster.pid");
            if pidfile.exists() {
                found.push(pidfile);
            }
            found.extend(find_postmaster_pids(&path));
        }
    }
    found
}

/// Runs `start` again while exec fails with ETXTBSY: a binary just copied
/// can still be open for writing in a child another thread forked during
/// the copy, until that child execs (a fork/exec race every multi-threaded
/// program has, not a file still being written).
pub fn retry_busy<T>(mut start: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match start() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
