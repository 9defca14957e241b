//! The independent fencer (DESIGN.md invariant 1): the agent streams the
//! deadline up to which its leader key is proven; if no later deadline has
//! arrived when it passes, and PostgreSQL still runs as a primary here, the
//! fencer stops PostgreSQL itself (immediate shutdown, which ends every
//! session). It covers a frozen or hung agent, whose renewals stop while its
//! PostgreSQL would keep accepting writes.
//!
//! It stays armed while the cluster is paused: a pause stops automatic
//! actions, not the one-writer guarantee (to run PostgreSQL with no agent,
//! stop pgwarden-health too).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pg_local::{DataRole, PostmasterState};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::feed::Latest;

/// What the fencer is doing, for `/metrics` and `/patroni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FencerState {
    /// Nothing to guard: this node does not lead.
    #[default]
    Disarmed,
    /// Guarding a primary until this deadline (CLOCK_BOOTTIME ns).
    Armed { deadline_ns: u64 },
    /// PostgreSQL was stopped because the deadline passed.
    Fenced,
}

impl FencerState {
    pub fn gauge(self) -> u8 {
        match self {
            Self::Disarmed => 0,
            Self::Armed { .. } => 1,
            Self::Fenced => 2,
        }
    }

    pub fn armed_deadline_ns(self) -> u64 {
        match self {
            Self::Armed { deadline_ns } => deadline_ns,
            _ => 0,
        }
    }
}

/// How the fencer reaches PostgreSQL and etcd.
pub struct FencerSettings {
    pub member: String,
    pub data_dir: PathBuf,
    pub pg_ctl: PathBuf,
    /// When the agent has not spoken for this long after start, a running
    /// primary is judged from etcd.
    pub agent_grace: Duration,
    /// For the start-up check: the etcd handle, the leader key and the margin.
    pub etcd: Option<(dcs::Etcd, dcs::Keys)>,
    pub fence_margin: Duration,
    /// With an `etcd:` section: where to look for a Patroni cluster in etcd's
    /// v2 keyspace (settings, namespace, scope).
    pub v2: Option<(dcs::EtcdSettings, String, String)>,
}

/// What the start-up check decides for a primary running with no agent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judgement {
    /// Our leader key's lease bounds it: guard until this deadline.
    Guard(u64),
    /// Not pgwarden's primary (etcd holds no cluster under the scope, or a
    /// Patroni cluster lives in the v2 keyspace): never stop it.
    Leave(String),
    /// pgwarden's cluster, and the key is not ours (or etcd cannot say).
    Fence,
}

fn now_ns() -> u64 {
    bootclock::BootInstant::now().as_nanos()
}

/// The deadline a previous run of the fencer guarded, if any.
fn remembered_deadline(data_dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(pg_local::fencer_deadline_path(data_dir)).ok()?;
    text.trim().parse().ok().filter(|ns| *ns > 0)
}

/// Remembers the guarded deadline (written whole, 0600; a failure is logged:
/// it costs only the restart case).
fn remember_deadline(data_dir: &std::path::Path, deadline: Option<u64>) {
    let path = pg_local::fencer_deadline_path(data_dir);
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        std::io::Write::write_all(&mut file, deadline.unwrap_or(0).to_string().as_bytes())?;
        std::fs::rename(&temporary, &path)
    };
    if let Err(e) = write() {
        warn!(path = %path.display(), "failed to remember the fencer's deadline: {e}");
    }
}

/// A primary runs here (by its files: no connection needed).
fn primary_running(settings: &FencerSettings) -> Option<u32> {
    let local = pg_local::observe(&settings.data_dir);
    let alive = matches!(local.state, PostmasterState::Running | PostmasterState::Starting | PostmasterState::Stopping);
    (alive && local.role == DataRole::Primary && local.postmaster_pid != 0).then_some(local.postmaster_pid)
}

/// Stops PostgreSQL at once: `pg_ctl stop -m immediate`; if the postmaster
/// is still there after 1 s, SIGKILL to its children (a backend outlives a
/// killed postmaster and could still acknowledge a commit) and to it; then
/// checks that every one of them is gone. Returns whether it is (a failure
/// is logged and the caller tries again at its next turn, 10 ms later).
/// How many primaries this fencer has stopped since it started
/// (`pgwarden_fencer_fences_total`).
static FENCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn fences() -> u64 {
    FENCES.load(std::sync::atomic::Ordering::Relaxed)
}

async fn fence(settings: &FencerSettings, why: &str) -> bool {
    let Some(pid) = primary_running(settings) else { return true };
    error!(pid, reason = why, "fencing: stopping PostgreSQL immediately");
    FENCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stop = tokio::process::Command::new(&settings.pg_ctl)
        .arg("-D")
        .arg(&settings.data_dir)
        .args(["stop", "-m", "immediate", "-w", "-t", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    let stopped = tokio::time::timeout(pgwarden_config::FENCE_STOP_TIMEOUT, stop)
        .await
        .is_ok_and(|s| s.is_ok_and(|s| s.success()));
    let mut left = vec![pid];
    if !stopped && pg_local::is_running(pid) {
        warn!(pid, "pg_ctl did not stop PostgreSQL: killing its processes and the postmaster");
        left = pg_local::kill_with_children(pid);
    }
    let deadline = Instant::now() + pgwarden_config::FENCE_KILL_CHECK;
    loop {
        let alive: Vec<u32> = left.iter().copied().filter(|&p| pg_local::is_running(p)).collect();
        if alive.is_empty() {
            info!("fenced: the postmaster is gone");
            return true;
        }
        if Instant::now() >= deadline {
            error!(?alive, "fencing failed: these processes are still running; trying again");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Judges a primary found running with no agent at start-up: guarded by
/// our leader key's remaining lease, left alone when it is not pgwarden's
/// (no `initialize` key under the scope, or a live Patroni cluster in v2),
/// else fenced. Any doubt about etcd fences.
async fn judge_from_etcd(settings: &FencerSettings) -> Judgement {
    if let Some((v2, namespace, scope)) = &settings.v2
        && let Ok(dcs::v2::V2Scope::Present(cluster)) = dcs::v2::probe(v2, namespace, scope).await
        && cluster.is_live()
    {
        return Judgement::Leave("a live Patroni cluster holds this scope in etcd's v2 keyspace".into());
    }
    let Some((etcd, keys)) = settings.etcd.as_ref() else { return Judgement::Fence };
    let sent = now_ns();
    let prefix = keys.prefix().to_string();
    let Ok(view) = dcs::read_cluster(etcd, keys).await else { return Judgement::Fence };
    if view.initialize.is_none() && view.leader.is_none() {
        return Judgement::Leave(format!("etcd holds no cluster under {prefix}: this primary is not pgwarden's"));
    }
    let Some(leader) = view.leader.as_ref().filter(|l| l.name == settings.member && l.lease != 0) else {
        return Judgement::Fence;
    };
    let lease = leader.lease;
    let Ok(answer) = etcd.call(|mut client| async move { client.lease_time_to_live(lease, None).await }).await else {
        return Judgement::Fence;
    };
    let ttl = answer.ttl();
    if ttl <= 0 {
        return Judgement::Fence;
    }
    Judgement::Guard(sent + (ttl as u64) * 1_000_000_000 - settings.fence_margin.as_nanos() as u64)
}

/// Runs the fencer until the process ends.
pub async fn run(settings: FencerSettings, mut latest: watch::Receiver<Latest>, state: watch::Sender<FencerState>) {
    let started = Instant::now();
    let mut heard_agent = false;
    // A fencer restarted beside a silent agent (frozen, or blocked on etcd)
    // takes up the deadline its previous run guarded while it has not passed
    // (CLOCK_BOOTTIME survives the restart). A passed one proves nothing
    // either way: the agent's word, or etcd's after `agent_grace`, decides.
    let remembered = remembered_deadline(&settings.data_dir);
    let mut armed: Option<u64> = remembered.filter(|deadline| *deadline > now_ns());
    // A deadline passed with no later one: until the agent proves a new
    // one, any primary that runs here is fenced, also one that appears
    // later (an agent frozen in pre_promote that promotes when it thaws).
    let mut lapsed = false;
    if let Some(deadline) = armed {
        info!(deadline_ns = deadline, "took up the deadline guarded before this restart");
    }
    let mut written = remembered;
    let mut last_arrival: Option<Instant> = None;
    let alarm = match BootAlarm::new() {
        Ok(alarm) => Some(alarm),
        Err(e) => {
            warn!("cannot create a CLOCK_BOOTTIME timer ({e}): the armed fencer polls every 100 ms instead");
            None
        }
    };
    loop {
        // Every status is read by its arrival time, not by the channel's
        // changed flag (the wait below consumes that flag).
        // Only the two fields it needs, not a copy of the whole status.
        let fresh_status = latest
            .borrow_and_update()
            .as_ref()
            .filter(|(_, arrived)| Some(*arrived) != last_arrival)
            .map(|(status, arrived)| (status.holds_leader, status.leader_deadline_boot_ns, *arrived));
        if let Some((holds_leader, deadline_ns, arrived)) = fresh_status {
            last_arrival = Some(arrived);
            heard_agent = true;
            if holds_leader && deadline_ns > now_ns() {
                armed = Some(deadline_ns);
                lapsed = false;
            } else if holds_leader && deadline_ns > 0 {
                armed = Some(deadline_ns);
            } else if armed.is_some() && primary_running(&settings).is_none() {
                // The agent holds no key and no primary runs: nothing to guard.
                armed = None;
            }
        }
        if !heard_agent
            && started.elapsed() >= settings.agent_grace
            && armed.is_none()
            && primary_running(&settings).is_some()
        {
            match judge_from_etcd(&settings).await {
                Judgement::Guard(deadline) => {
                    info!("no agent; the leader key's lease in etcd bounds this primary");
                    armed = Some(deadline);
                }
                Judgement::Leave(why) => {
                    warn!("a primary runs here with no agent, and {why}: leaving it running");
                    heard_agent = true;
                }
                Judgement::Fence => {
                    if fence(&settings, "a primary runs with no agent and no leader key of ours in etcd").await {
                        state.send_replace(FencerState::Fenced);
                    } else {
                        // Not done: from now on any primary here is fenced.
                        lapsed = true;
                    }
                    heard_agent = true;
                }
            }
        }
        if let Some(deadline) = armed
            && now_ns() >= deadline
        {
            if primary_running(&settings).is_some()
                && fence(&settings, "the leader deadline passed without a renewal from the agent").await
            {
                state.send_replace(FencerState::Fenced);
            }
            // Also when the fence failed: the lapsed rule below tries again.
            armed = None;
            lapsed = true;
        }
        if lapsed
            && armed.is_none()
            && primary_running(&settings).is_some()
            && fence(&settings, "a primary runs after the leader deadline lapsed, with no new deadline from the agent")
                .await
        {
            state.send_replace(FencerState::Fenced);
        }
        // Remembered for a restart: the deadline guarded (a passed one stays,
        // so that a restart finds it lapsed), 0 once nothing is guarded.
        let remember = if armed.is_some() || lapsed { armed.or(written) } else { None };
        if remember != written {
            remember_deadline(&settings.data_dir, remember);
            written = remember;
        }
        if let Some(deadline_ns) = armed {
            publish(&state, FencerState::Armed { deadline_ns });
        } else if *state.borrow() != FencerState::Fenced {
            publish(&state, FencerState::Disarmed);
        }
        let waiting_for_agent = !heard_agent && armed.is_none();
        let alarm_set = match (armed, &alarm) {
            (Some(deadline), Some(alarm)) => alarm.set(deadline),
            _ => false,
        };
        let wait = next_wake(armed, alarm_set, lapsed, waiting_for_agent, now_ns());
        match (&alarm, alarm_set) {
            (Some(alarm), true) => {
                tokio::select! {
                    _ = latest.changed() => {}
                    _ = alarm.wait() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            _ => {
                let _ = tokio::time::timeout(wait, latest.changed()).await;
            }
        }
    }
}

/// Wakes the fencer at a CLOCK_BOOTTIME instant: a timerfd, because tokio's
/// timers run on CLOCK_MONOTONIC, which stops while the machine is suspended,
/// and a deadline that passed during a suspend must be acted on at once on
/// resume, not a suspend's length later.
struct BootAlarm(tokio::io::unix::AsyncFd<AlarmFd>);

struct AlarmFd(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for AlarmFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

impl BootAlarm {
    // `with_interest` is deprecated because a borrowed raw descriptor could
    // be closed under the reactor; the timerfd is owned by the `AsyncFd` and
    // stays open as long as it is registered, so the use here is sound.
    #[allow(deprecated)]
    fn new() -> std::io::Result<BootAlarm> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(ClockId::CLOCK_BOOTTIME, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        Ok(BootAlarm(tokio::io::unix::AsyncFd::with_interest(AlarmFd(fd), tokio::io::Interest::READABLE)?))
    }

    /// Sets the alarm at `deadline_ns` (CLOCK_BOOTTIME; one in the past
    /// fires at once). False when the kernel refuses (the caller polls).
    fn set(&self, deadline_ns: u64) -> bool {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let at = TimeSpec::from_duration(Duration::from_nanos(deadline_ns.max(1)));
        match self.0.get_ref().0.set(Expiration::OneShot(at), TimerSetTimeFlags::TFD_TIMER_ABSTIME) {
            Ok(()) => true,
            Err(e) => {
                warn!("failed to set the fencer's CLOCK_BOOTTIME alarm ({e}): polling every 100 ms instead");
                false
            }
        }
    }

    /// Returns once the alarm has fired.
    async fn wait(&self) {
        use std::os::fd::AsFd as _;
        loop {
            let Ok(mut ready) = self.0.readable().await else {
                return std::future::pending().await;
            };
            let mut expirations = [0u8; 8];
            let read = ready
                .try_io(|fd| nix::unistd::read(fd.get_ref().0.as_fd(), &mut expirations).map_err(std::io::Error::from));
            match read {
                Ok(Ok(_)) => return,
                Ok(Err(_)) => return std::future::pending().await,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Tells the state's readers only of a change (each send wakes them).
fn publish(state: &watch::Sender<FencerState>, new: FencerState) {
    state.send_if_modified(|current| {
        let changed = *current != new;
        *current = new;
        changed
    });
}

/// How long the fencer may wait for the agent's next status before it must
/// look again by itself. At an armed deadline: the CLOCK_BOOTTIME alarm wakes
/// it there (`alarm_set`), so only `IDLE_POLL`; without the alarm, within
/// `ARMED_POLL`, so that a clock that jumps (a suspend, which CLOCK_MONOTONIC
/// does not count but the deadline's CLOCK_BOOTTIME does) is caught soon.
/// Every `LAPSED_POLL` while any primary that appears must be fenced at once,
/// every `NO_AGENT_POLL` while no agent was heard, else `IDLE_POLL`.
fn next_wake(armed: Option<u64>, alarm_set: bool, lapsed: bool, waiting_for_agent: bool, now_ns: u64) -> Duration {
    const ARMED_POLL: Duration = Duration::from_millis(100);
    const LAPSED_POLL: Duration = Duration::from_millis(10);
    const NO_AGENT_POLL: Duration = Duration::from_millis(100);
    const IDLE_POLL: Duration = Duration::from_secs(1);
    match armed {
        Some(deadline) => {
            let poll = if alarm_set { IDLE_POLL } else { ARMED_POLL };
            Duration::from_nanos(deadline.saturating_sub(now_ns)).min(poll)
        }
        None if lapsed => LAPSED_POLL,
        None if waiting_for_agent => NO_AGENT_POLL,
        None => IDLE_POLL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_proto::v1::NodeStatus;

    /// The guarded deadline survives a restart of the fencer: written whole
    /// with mode 0600, read back, and 0 (nothing guarded) reads as none.
    #[test]
    fn the_guarded_deadline_is_remembered_across_a_restart() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        assert_eq!(remembered_deadline(&data_dir), None, "nothing remembered yet");
        remember_deadline(&data_dir, Some(123_456_789));
        assert_eq!(remembered_deadline(&data_dir), Some(123_456_789));
        let path = pg_local::fencer_deadline_path(&data_dir);
        let mode = std::fs::metadata(&path).expect("the file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        remember_deadline(&data_dir, None);
        assert_eq!(remembered_deadline(&data_dir), None, "0 means nothing guarded");
    }

    /// A fencer of a member whose data directory does not exist.
    fn settings_without_postgres() -> FencerSettings {
        FencerSettings {
            member: "node1".into(),
            data_dir: PathBuf::from("/nonexistent/pgwarden-fencer-test"),
            pg_ctl: PathBuf::from("/bin/false"),
            agent_grace: Duration::from_secs(60),
            etcd: None,
            fence_margin: Duration::from_secs(2),
            v2: None,
        }
    }

    /// The fencer wakes by itself at an armed deadline (no later than every
    /// 100 ms), every 10 ms while lapsed, and rarely when nothing is guarded.
    #[test]
    fn wakes_at_the_deadline_and_polls_only_while_something_is_at_stake() {
        let now = 1_000_000_000_000;
        assert_eq!(next_wake(Some(now + 30_000_000), false, false, false, now), Duration::from_millis(30));
        assert_eq!(next_wake(Some(now + 9_000_000_000), false, false, false, now), Duration::from_millis(100));
        assert_eq!(next_wake(Some(now + 9_000_000_000), true, false, false, now), Duration::from_secs(1), "the alarm");
        assert_eq!(next_wake(Some(now - 1), false, false, false, now), Duration::ZERO, "a passed deadline at once");
        assert_eq!(next_wake(None, false, true, false, now), Duration::from_millis(10));
        assert_eq!(next_wake(None, false, false, true, now), Duration::from_millis(100));
        assert_eq!(next_wake(None, false, false, false, now), Duration::from_secs(1));
    }

    /// An agent that stops streaming (frozen) leaves the fencer to fence at
    /// the deadline by itself, without a status to wake it.
    #[tokio::test]
    async fn a_deadline_passes_without_a_status_and_the_fencer_acts_at_once() {
        let settings = settings_without_postgres();
        let (tx, rx) = watch::channel(None);
        let (state_tx, mut state_rx) = watch::channel(FencerState::Disarmed);
        let fencer = tokio::spawn(run(settings, rx, state_tx));
        let deadline_ns = now_ns() + 300_000_000;
        let status = NodeStatus { holds_leader: true, leader_deadline_boot_ns: deadline_ns, ..Default::default() };
        tx.send_replace(Some((status, Instant::now())));
        tokio::time::timeout(Duration::from_secs(2), state_rx.wait_for(|s| *s == FencerState::Armed { deadline_ns }))
            .await
            .expect("armed")
            .expect("fencer running");
        // No PostgreSQL runs: at the deadline the fencer disarms (lapsed).
        tokio::time::timeout(Duration::from_secs(2), state_rx.wait_for(|s| *s == FencerState::Disarmed))
            .await
            .expect("the fencer looked again at the deadline without a status")
            .expect("fencer running");
        assert!(now_ns() >= deadline_ns, "not before the deadline");
        assert!(now_ns() < deadline_ns + 150_000_000, "within 150 ms of the deadline");
        fencer.abort();
    }

    /// The CLOCK_BOOTTIME alarm fires at its deadline, not before; one set
    /// in the past fires at once; setting it again moves it.
    #[tokio::test]
    async fn the_boot_alarm_fires_at_its_deadline() {
        let alarm = BootAlarm::new().expect("a timerfd");
        let deadline = now_ns() + 80_000_000;
        assert!(alarm.set(now_ns() + 60_000_000_000));
        assert!(alarm.set(deadline), "moved to 80 ms from now");
        tokio::time::timeout(Duration::from_secs(2), alarm.wait()).await.expect("fired");
        let fired = now_ns();
        assert!(fired >= deadline, "not before the deadline");
        assert!(fired < deadline + 50_000_000, "within 50 ms of it");
        assert!(alarm.set(now_ns() - 1_000_000_000));
        tokio::time::timeout(Duration::from_millis(20), alarm.wait()).await.expect("a passed deadline fires at once");
    }

    /// Every status the agent streams reaches the fencer, also those that
    /// arrive while it waits (a regression: the wait consumed them).
    #[tokio::test]
    async fn arms_from_each_streamed_deadline() {
        let settings = settings_without_postgres();
        let (tx, rx) = watch::channel(None);
        let (state_tx, mut state_rx) = watch::channel(FencerState::Disarmed);
        let fencer = tokio::spawn(run(settings, rx, state_tx));
        for step in 1..=20u64 {
            let deadline_ns = now_ns() + 60_000_000_000 + step;
            let status = NodeStatus { holds_leader: true, leader_deadline_boot_ns: deadline_ns, ..Default::default() };
            tx.send_replace(Some((status, Instant::now())));
            tokio::time::timeout(
                Duration::from_secs(2),
                state_rx.wait_for(|s| *s == FencerState::Armed { deadline_ns }),
            )
            .await
            .unwrap_or_else(|_| panic!("step {step}: not armed with the streamed deadline"))
            .expect("fencer running");
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        fencer.abort();
    }
}
