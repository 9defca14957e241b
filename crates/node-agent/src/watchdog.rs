//! The watchdog layers of fencing (below the fencer in `pgwarden-health`):
//!
//! - the systemd watchdog: `WATCHDOG=1` while the HA loop ticks, with the
//!   unit's timeout set at run time from the live ttl (`WATCHDOG_USEC`); on
//!   expiry systemd kills the agent and the unit's `ExecStopPost=
//!   pgwarden-agent --fence-if-watchdog` stops PostgreSQL (the unit uses
//!   `KillMode=process`, so PostgreSQL would otherwise survive); while this
//!   node leads, it is sent only while the lease keeper renews;
//! - Patroni's `watchdog:` section driving a Linux watchdog device: armed
//!   before this node takes the leader key, kept alive by each renewal of
//!   the lease (not by the HA tick, which a long promotion or checkpoint can
//!   hold for longer than the timeout), disarmed (magic close) when it stops
//!   leading. If the agent hangs, the machine resets before the leader key
//!   can expire.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use election::BootInstant;

use anyhow::Context as _;
use pgwarden_config::{Watchdog, WatchdogDriver, WatchdogMode};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ha::PublishedStatus;

nix::ioctl_read!(wdioc_keepalive, b'W', 5, nix::libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);

/// The watchdog timeout for a ttl: `ttl - safety_margin`, or half the ttl
/// when `safety_margin` is -1 (Patroni's rule); at least one second.
pub fn timeout_for(ttl: u32, safety_margin: i64) -> Duration {
    let ttl = i64::from(ttl);
    let seconds = if safety_margin < 0 { ttl / 2 } else { ttl - safety_margin };
    Duration::from_secs(seconds.max(1) as u64)
}

/// The device is fed on each renewal of the lease (every ttl/4): its
/// timeout must outlast a renewal interval by a second, or the machine of a
/// healthy leader would be reset.
pub fn timeout_outlasts_renewals(ttl: u32, safety_margin: i64) -> Result<(), String> {
    let timeout = timeout_for(ttl, safety_margin);
    let renewals = election::default_interval(Duration::from_secs(u64::from(ttl)));
    if timeout > renewals + Duration::from_secs(1) {
        return Ok(());
    }
    Err(format!(
        "the watchdog timeout ({} s: ttl {ttl} - watchdog.safety_margin {safety_margin}) does not outlast a lease \
         renewal interval ({:.1} s) by a second, so the machine of a healthy leader would be reset: lower \
         watchdog.safety_margin (-1 means ttl/2) or raise ttl",
        timeout.as_secs(),
        renewals.as_secs_f64()
    ))
}

/// A watchdog device (`/dev/watchdog`), armed only while leading.
pub struct DeviceWatchdog {
    config: Watchdog,
    armed: Option<File>,
    /// `automatic` mode found no usable device: warned once, then off.
    unusable: bool,
    /// Keep-alives sent to an armed device.
    keepalives: u64,
}

/// The device, shared by the HA loop (arm, disarm) and the lease keeper's
/// renewals (keep-alive).
pub type SharedWatchdog = Arc<Mutex<DeviceWatchdog>>;

impl DeviceWatchdog {
    pub fn new(config: Watchdog) -> Self {
        Self { config, armed: None, unusable: false, keepalives: 0 }
    }

    /// Armed on any open file (tests: the keep-alive ioctl then fails, and
    /// is counted all the same).
    #[cfg(test)]
    pub fn armed_on(config: Watchdog, file: File) -> Self {
        Self { config, armed: Some(file), unusable: false, keepalives: 0 }
    }

    pub fn shared(self) -> SharedWatchdog {
        Arc::new(Mutex::new(self))
    }

    #[cfg(test)]
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    #[cfg(test)]
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }

    /// Arms the device before this node takes the leader key, with the ttl
    /// of the lease the key will be bound to: that lease keeps its ttl until
    /// the key changes hands (a ttl edited meanwhile applies to the next
    /// leader's lease), so the timeout set here holds for the whole term.
    /// Fails only in `required` mode (the node must then not lead);
    /// `automatic` mode warns once and goes on without it.
    pub fn arm(&mut self, ttl: u32) -> anyhow::Result<()> {
        if self.config.mode == WatchdogMode::Off || self.armed.is_some() || self.unusable {
            return Ok(());
        }
        let timeout = timeout_for(ttl, self.config.safety_margin);
        if let Err(why) = timeout_outlasts_renewals(ttl, self.config.safety_margin) {
            if self.config.mode == WatchdogMode::Required {
                anyhow::bail!("watchdog.mode is required, so this node will not lead: {why}");
            }
            warn!("{why}; watchdog.mode is automatic: leading without a watchdog device");
            self.unusable = true;
            return Ok(());
        }
        match open_and_set(&self.config, timeout) {
            Ok(file) => {
                info!(device = %self.config.device.display(), ?timeout, "watchdog armed");
                self.armed = Some(file);
                Ok(())
            }
            Err(e) if self.config.mode == WatchdogMode::Required => Err(e.context(format!(
                "watchdog.mode is required, so this node will not lead: load a watchdog driver (e.g. \
                 `modprobe softdog`) and let the postgres user open {}, or set watchdog.mode: automatic",
                self.config.device.display()
            ))),
            Err(e) => {
                warn!("{e:#}; watchdog.mode is automatic: leading without a watchdog device");
                self.unusable = true;
                Ok(())
            }
        }
    }

    /// One keep-alive (each renewal of the lease while leading).
    #[allow(unsafe_code)] // the watchdog API is ioctl only
    pub fn keepalive(&mut self) {
        let driver = self.config.driver;
        if let Some(file) = &mut self.armed {
            self.keepalives += 1;
            let result = match driver {
                WatchdogDriver::Linux => {
                    let mut dummy: nix::libc::c_int = 0;
                    // SAFETY: WDIOC_KEEPALIVE on an open watchdog fd writes at most one int.
                    unsafe { wdioc_keepalive(file.as_raw_fd(), &mut dummy) }.map(drop).map_err(std::io::Error::from)
                }
                WatchdogDriver::Testing => file.write_all(b"1"),
            };
            if let Err(e) = result {
                warn!("watchdog keep-alive failed: {e}");
            }
        }
    }

    /// Disarms the device (magic close), when this node no longer leads.
    pub fn disarm(&mut self) {
        if let Some(mut file) = self.armed.take() {
            match file.write_all(b"V") {
                Ok(()) => info!("watchdog disarmed"),
                Err(e) => warn!("failed to disarm the watchdog (magic close): {e}"),
            }
        }
    }
}

impl Drop for DeviceWatchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Opens the device and sets its timeout. The test driver's pipe is opened
/// without blocking: with no reader it fails at once (ENXIO) instead of
/// holding the HA loop.
fn open_and_set(config: &Watchdog, timeout: Duration) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let device = &config.device;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if config.driver == WatchdogDriver::Testing {
        // Checked before opening: opening a real watchdog starts it, and the
        // test protocol never sets its timeout, so it would fire on the
        // driver's default (softdog: 60 s), long after the key expired.
        use std::os::unix::fs::FileTypeExt as _;
        let is_pipe = std::fs::metadata(device).is_ok_and(|m| m.file_type().is_fifo());
        anyhow::ensure!(
            is_pipe,
            "watchdog.driver: testing speaks to a named pipe (Patroni's test device) and {} is not one; set \
             watchdog.driver: default for a real watchdog",
            device.display()
        );
        options.custom_flags(nix::libc::O_NONBLOCK);
    }
    let mut file = options.open(device).with_context(|| format!("open the watchdog device {}", device.display()))?;
    if let Err(e) = set_timeout(config.driver, &mut file, timeout) {
        // Not a watchdog: close it without triggering anything.
        let _ = file.write_all(b"V");
        anyhow::bail!("{} is not a usable watchdog device ({e:#})", device.display());
    }
    Ok(file)
}

#[allow(unsafe_code)] // the watchdog API is ioctl only
fn set_timeout(driver: WatchdogDriver, file: &mut File, timeout: Duration) -> anyhow::Result<()> {
    let seconds = timeout.as_secs() as nix::libc::c_int;
    match driver {
        WatchdogDriver::Linux => {
            let mut seconds = seconds;
            // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer.
            unsafe { wdioc_settimeout(file.as_raw_fd(), &mut seconds) }.context("setting the timeout failed")?;
        }
        WatchdogDriver::Testing => {
            file.write_all(format!("Ctimeout={seconds}\n").as_bytes()).context("writing the timeout failed")?;
        }
    }
    Ok(())
}

/// Whether to send `WATCHDOG=1` now: always while this node does not lead
/// (a non-leader busy in a long action, e.g. a base backup, is not held to
/// it); while it leads, only while the lease keeper's renewals keep the
/// published deadline ahead (a leader busy in a long promotion or checkpoint
/// is not killed while its lease is renewed; a frozen agent renews nothing).
pub fn systemd_may_feed(leader_deadline: Option<BootInstant>) -> bool {
    leader_deadline.is_none_or(|deadline| !deadline.has_passed())
}

/// Sends `WATCHDOG=1` to systemd as [`systemd_may_feed`] says, and keeps the
/// unit's timeout at `ttl - safety_margin`. Runs only when systemd enabled a
/// watchdog for this process.
pub async fn systemd_watchdog(mut view: watch::Receiver<PublishedStatus>, safety_margin: i64) {
    if pgwarden_runtime::notify::watchdog_enabled().is_none() {
        return;
    }
    let mut timeout = Duration::ZERO;
    loop {
        let (ttl, deadline) = {
            let v = view.borrow_and_update();
            (v.ttl, v.leader_deadline)
        };
        if ttl > 0 {
            let wanted = timeout_for(ttl, safety_margin);
            if wanted != timeout {
                info!(?wanted, "systemd watchdog timeout set from the ttl");
                pgwarden_runtime::notify::watchdog_timeout(wanted);
                timeout = wanted;
            }
            if systemd_may_feed(deadline) {
                pgwarden_runtime::notify::watchdog();
            }
        }
        let period = if timeout.is_zero() { Duration::from_secs(1) } else { timeout / 4 };
        let _ = tokio::time::timeout(period, view.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_is_fed_while_not_leading_or_while_the_lease_is_renewed() {
        assert!(systemd_may_feed(None), "not leading");
        assert!(systemd_may_feed(Some(BootInstant::now() + Duration::from_secs(5))), "deadline ahead");
        let passed = BootInstant::now();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!systemd_may_feed(Some(passed)), "leading on a deadline that passed: the keeper is not renewing");
    }

    #[test]
    fn a_timeout_shorter_than_the_renewals_is_refused_in_required_mode_and_skipped_in_automatic() {
        assert!(timeout_outlasts_renewals(10, 5).is_ok(), "5 s against renewals every 2.5 s");
        assert!(timeout_outlasts_renewals(6, -1).is_ok(), "3 s against 1.5 s");
        let why = timeout_outlasts_renewals(6, 5).expect_err("1 s against 1.5 s");
        assert!(why.contains("safety_margin") && why.contains("reset"), "{why}");
        // Refused before the device is opened (it would start counting).
        let mut required = DeviceWatchdog::new(config(WatchdogMode::Required, std::path::Path::new("/nonexistent/wd")));
        let err = format!("{:#}", required.arm(6).expect_err("refused"));
        assert!(err.contains("will not lead") && err.contains("renewal"), "{err}");
        let mut automatic =
            DeviceWatchdog::new(config(WatchdogMode::Automatic, std::path::Path::new("/nonexistent/wd")));
        automatic.arm(6).expect("automatic goes on without it");
        assert!(!automatic.is_armed());
    }

    #[test]
    fn timeout_follows_patroni() {
        assert_eq!(timeout_for(30, 5), Duration::from_secs(25));
        assert_eq!(timeout_for(30, -1), Duration::from_secs(15));
        assert_eq!(timeout_for(6, 10), Duration::from_secs(1));
    }

    fn config(mode: WatchdogMode, device: &std::path::Path) -> Watchdog {
        Watchdog { mode, device: device.to_path_buf(), safety_margin: 5, driver: WatchdogDriver::Linux }
    }

    #[test]
    fn required_refuses_a_missing_device_with_the_fix() {
        let mut wd = DeviceWatchdog::new(config(WatchdogMode::Required, std::path::Path::new("/nonexistent/wd")));
        let err = format!("{:#}", wd.arm(30).expect_err("no device"));
        assert!(err.contains("/nonexistent/wd") && err.contains("modprobe softdog"), "{err}");
        assert!(!wd.is_armed());
    }

    #[test]
    fn required_refuses_a_file_that_is_not_a_watchdog() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let mut wd = DeviceWatchdog::new(config(WatchdogMode::Required, file.path()));
        let err = format!("{:#}", wd.arm(30).expect_err("not a watchdog"));
        assert!(err.contains("not a usable watchdog device"), "{err}");
    }

    #[test]
    fn automatic_goes_on_without_a_device_and_off_never_opens_it() {
        let mut wd = DeviceWatchdog::new(config(WatchdogMode::Automatic, std::path::Path::new("/nonexistent/wd")));
        wd.arm(30).expect("automatic never fails");
        assert!(!wd.is_armed());
        let mut off = DeviceWatchdog::new(config(WatchdogMode::Off, std::path::Path::new("/nonexistent/wd")));
        off.arm(30).expect("off never fails");
        assert!(!off.is_armed());
    }

    /// Patroni's `testing` driver: every call is a write on a named pipe.
    #[test]
    fn the_testing_driver_writes_each_call_to_its_pipe() {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("watchdog.fifo");
        let config = Watchdog { driver: WatchdogDriver::Testing, ..config(WatchdogMode::Required, &fifo) };
        let mut wd = DeviceWatchdog::new(config.clone());
        let err = format!("{:#}", wd.arm(20).expect_err("no pipe"));
        assert!(err.contains("will not lead"), "{err}");
        // A file that is not a pipe (as a real /dev/watchdog is not) is
        // refused before it is opened.
        let regular = dir.path().join("not-a-pipe");
        std::fs::write(&regular, "").expect("write");
        let refused = Watchdog { device: regular.clone(), ..config.clone() };
        let err = format!("{:#}", DeviceWatchdog::new(refused).arm(20).expect_err("not a pipe"));
        assert!(err.contains("is not one") && err.contains("driver: default"), "{err}");
        assert_eq!(std::fs::read_to_string(&regular).expect("read"), "", "nothing written to it");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let mut wd = DeviceWatchdog::new(config);
        assert!(wd.arm(20).is_err(), "a pipe nobody reads is no device (and the loop is not held)");
        let mut reader =
            std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).expect("reader");
        wd.arm(20).expect("armed");
        wd.keepalive();
        wd.arm(30).expect("already armed: nothing more");
        wd.keepalive();
        wd.disarm();
        let mut written = String::new();
        reader.read_to_string(&mut written).expect("read");
        assert_eq!(written, "Ctimeout=15\n11V");
    }
}
