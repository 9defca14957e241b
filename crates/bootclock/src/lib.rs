//! A clock that keeps counting while the machine is suspended: the one clock
//! of lease deadlines, used by the election (the agent's proven deadline)
//! and the fencer (the deadline it guards), which compare each other's
//! instants as nanoseconds since boot.
//!
//! Lease deadlines must not move when a VM or laptop sleeps: `CLOCK_MONOTONIC`
//! (what `std::time::Instant` and tokio use on Linux) stops during suspend, so
//! a deadline measured with it would fire late by the length of the pause.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// A point on `CLOCK_BOOTTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(Duration);

impl BootInstant {
    pub fn now() -> Self {
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is available on Linux");
        Self(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
    }

    /// Nanoseconds since boot: the wire form sent to the fencer.
    pub fn as_nanos(self) -> u64 {
        self.0.as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after boot (as `as_nanos` gives it).
    pub fn from_nanos(ns: u64) -> Self {
        Self(Duration::from_nanos(ns))
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Time left until `self`, zero if it has passed.
    pub fn remaining(self) -> Duration {
        self.saturating_duration_since(Self::now())
    }

    pub fn has_passed(self) -> bool {
        Self::now() >= self
    }
}

impl std::ops::Add<Duration> for BootInstant {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        Self(self.0 + d)
    }
}
