//! A watchdog device for tests, in Patroni's `testing` driver protocol: a
//! named pipe that the agent (`watchdog.driver: testing`) writes each call
//! to, read here by a thread that records them. `Ctimeout=N\n` sets the
//! timeout, `1` is a keep-alive, `V` the magic close. Nothing resets: the
//! test reads what a real device would have been told.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One call the device received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Timeout(u32),
    Keepalive,
    MagicClose,
}

/// The pipe and the calls read from it so far, with when each arrived.
pub struct TestWatchdog {
    path: PathBuf,
    calls: Arc<Mutex<Vec<(Instant, Call)>>>,
    /// The reader's own write end: the pipe always has a writer, so the
    /// reader never sees end-of-file between agents, and `X` stops it.
    stop: std::fs::File,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWatchdog {
    /// Makes the pipe at `path` (writable by the agent's `postgres` user)
    /// and starts reading it.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        // Read and write: opening does not wait for the agent.
        let mut reader = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let stop = reader.try_clone()?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let thread = std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let mut command = Vec::new();
            let mut in_command = false;
            while reader.read_exact(&mut byte).is_ok() {
                let call = match (in_command, byte[0]) {
                    (true, b'\n') => {
                        in_command = false;
                        let text = String::from_utf8_lossy(&command).to_string();
                        command.clear();
                        text.strip_prefix("timeout=").and_then(|n| n.parse().ok()).map(Call::Timeout)
                    }
                    (true, b) => {
                        command.push(b);
                        None
                    }
                    (false, b'C') => {
                        in_command = true;
                        None
                    }
                    (false, b'1') => Some(Call::Keepalive),
                    (false, b'V') => Some(Call::MagicClose),
                    (false, b'X') => return,
                    (false, _) => None,
                };
                if let Some(call) = call {
                    seen.lock().expect("calls").push((Instant::now(), call));
                }
            }
        });
        Ok(Self { path: path.to_path_buf(), calls, stop, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").iter().map(|(_, call)| *call).collect()
    }

    /// The timeouts set so far, in order.
    pub fn timeouts(&self) -> Vec<u32> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Timeout(seconds) => Some(seconds),
                _ => None,
            })
            .collect()
    }

    /// Keep-alives since the last call that armed the device (a timeout).
    pub fn keepalives_since_armed(&self) -> usize {
        let calls = self.calls();
        let armed = calls.iter().rposition(|c| matches!(c, Call::Timeout(_))).map_or(0, |i| i + 1);
        calls[armed..].iter().filter(|c| **c == Call::Keepalive).count()
    }

    /// Whether the last call was the magic close (the device disarmed).
    pub fn is_closed(&self) -> bool {
        self.calls().last() == Some(&Call::MagicClose)
    }

    /// Each time the armed device went unfed for longer than the timeout
    /// it had then: a real device would have reset the machine.
    pub fn overruns(&self) -> Vec<Duration> {
        let calls = self.calls.lock().expect("calls");
        let mut overruns = Vec::new();
        let mut timeout = Duration::ZERO;
        let mut fed_at: Option<Instant> = None;
        let mut overran = |since: Instant, at: Instant, timeout: Duration| {
            let silence = at.duration_since(since);
            if silence > timeout {
                overruns.push(silence);
            }
        };
        for (at, call) in calls.iter() {
            match call {
                Call::Timeout(seconds) => {
                    timeout = Duration::from_secs(u64::from(*seconds));
                    fed_at = Some(*at);
                }
                Call::Keepalive => {
                    if let Some(since) = fed_at {
                        overran(since, *at, timeout);
                    }
                    fed_at = Some(*at);
                }
                Call::MagicClose => fed_at = None,
            }
        }
        if let Some(since) = fed_at {
            overran(since, Instant::now(), timeout);
        }
        overruns
    }
}

impl Drop for TestWatchdog {
    fn drop(&mut self) {
        use std::io::Write as _;
        let _ = self.stop.write_all(b"X");
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
