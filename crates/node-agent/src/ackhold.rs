//! The first step of an ordered fence: a leader whose
//! lease keeper has not renewed for so long that its deadline is near stops
//! acknowledging commits before anything stops PostgreSQL, so that what it
//! acknowledged reaches the replicas while they still stream.
//!
//! At `deadline - lead` with no renewal since, it sets
//! `synchronous_standby_names` to a standby that never connects
//! (`ALTER SYSTEM`, then a reload): every later commit waits, in
//! asynchronous mode too, and is never acknowledged. The immediate stop at
//! the deadline (the agent's tick, or the fencer) then cuts off only commits
//! no client was told about; the replicas have had `lead` to receive the
//! rest. A renewal that comes back in time releases the hold
//! (`ALTER SYSTEM RESET`); a hold left behind by a crash is removed from
//! `postgresql.auto.conf` before PostgreSQL is configured or adopted again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use election::{BootInstant, LeaseState};
use pgwarden_config::Config;
use pgwarden_config::hba::LocalConnection;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ha::PublishedStatus;
use crate::sql;

/// The standby name that holds every commit: no member is called this.
pub const MARKER: &str = "pgwarden_fence_hold";
/// The statement that sets it (a literal: `ALTER SYSTEM` takes no parameters).
const HOLD: &str = "alter system set synchronous_standby_names to '\"pgwarden_fence_hold\"'";

/// How long before its deadline a leader that has not renewed stops
/// acknowledging: a second, or half of the time a renewal has to happen in
/// (`ttl - fence_margin`), whichever is shorter.
pub fn lead(ttl: u32, fence_margin: Duration) -> Duration {
    let window = Duration::from_secs(u64::from(ttl)).saturating_sub(fence_margin);
    Duration::from_secs(1).min(window / 2)
}

fn auto_conf(data_dir: &Path) -> PathBuf {
    data_dir.join("postgresql.auto.conf")
}

/// Whether `postgresql.auto.conf` holds the hold.
pub fn is_held(data_dir: &Path) -> bool {
    std::fs::read_to_string(auto_conf(data_dir)).is_ok_and(|text| held_lines(&text).next().is_some())
}

fn held_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|line| line.trim_start().starts_with("synchronous_standby_names") && line.contains(MARKER))
}

/// Removes a hold left in `postgresql.auto.conf` (an agent that died while
/// holding); returns whether there was one. Only the hold's line goes.
pub fn clear_residue(data_dir: &Path) -> anyhow::Result<bool> {
    let path = auto_conf(data_dir);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(false) };
    if held_lines(&text).next().is_none() {
        return Ok(false);
    }
    let kept: String = text
        .lines()
        .filter(|line| !(line.trim_start().starts_with("synchronous_standby_names") && line.contains(MARKER)))
        .map(|line| format!("{line}\n"))
        .collect();
    crate::postgres::write_private(&path, &kept)?;
    warn!(path = %path.display(), "removed a hold on commit acknowledgements left by an earlier run");
    Ok(true)
}

/// What the hold needs to reach the local PostgreSQL.
#[derive(Clone)]
pub struct AckHold {
    pub config: Config,
    pub local: LocalConnection,
    pub port: u16,
    pub data_dir: PathBuf,
    pub lead: Duration,
}

impl AckHold {
    async fn connect(&self) -> anyhow::Result<sqlx::postgres::PgConnection> {
        sql::connect(&self.config, &self.local, self.port, Duration::from_millis(500)).await
    }

    /// Stops acknowledgements, then waits (until `deadline`) for the
    /// streaming replicas to flush everything written so far; logs how far
    /// they got. Returns the WAL position at the hold.
    async fn hold(&self, deadline: BootInstant) -> anyhow::Result<u64> {
        let mut conn = self.connect().await?;
        sql::hold_acknowledgements(&mut conn, HOLD).await?;
        let at = sql::current_wal_lsn(&mut conn).await?;
        warn!(
            lsn = %ha_core::Lsn(at),
            left = ?deadline.remaining(),
            "no lease renewal and the leader deadline is near: holding commit acknowledgements at this LSN \
             before the fence"
        );
        loop {
            let (streaming, flushed) = sql::replicas_flushed_to(&mut conn, at).await?;
            if streaming > 0 && flushed == streaming {
                info!(replicas = streaming, lsn = %ha_core::Lsn(at), "every streaming replica flushed what was acknowledged");
                break;
            }
            if deadline.has_passed() {
                warn!(streaming, flushed, lsn = %ha_core::Lsn(at), "the deadline came before every replica flushed");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sql::close(conn).await;
        Ok(at)
    }

    /// Lets acknowledgements go again, if held.
    async fn release(&self) -> anyhow::Result<()> {
        if !is_held(&self.data_dir) {
            return Ok(());
        }
        let mut conn = self.connect().await?;
        sql::release_acknowledgements(&mut conn).await?;
        sql::close(conn).await;
        info!("the lease was renewed: commit acknowledgements released");
        Ok(())
    }
}

/// Follows a leader's lease: holds acknowledgements `lead` before a
/// deadline no renewal moved, and releases them when a renewal comes back.
/// Only while the HA loop has published the key as held (`view`).
pub async fn hold_acks_near_deadline(
    mut lease_rx: watch::Receiver<LeaseState>,
    view: watch::Receiver<PublishedStatus>,
    hold: AckHold,
) {
    // The deadline a hold was tried for (once per deadline).
    let mut tried: Option<BootInstant> = None;
    loop {
        let deadline = match &*lease_rx.borrow_and_update() {
            LeaseState::Held { deadline, .. } => *deadline,
            LeaseState::Lost { .. } => return,
        };
        let leading = view.borrow().leader_deadline.is_some();
        if leading
            && deadline.remaining() > hold.lead
            && is_held(&hold.data_dir)
            && let Err(e) = hold.release().await
        {
            warn!("failed to release the hold on commit acknowledgements: {e:#}");
        }
        let wake = deadline.remaining().saturating_sub(hold.lead);
        tokio::select! {
            changed = lease_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(wake), if tried != Some(deadline) => {
                tried = Some(deadline);
                let leading = view.borrow().leader_deadline.is_some();
                if leading
                    && !deadline.has_passed()
                    && let Err(e) = hold.hold(deadline).await
                {
                    warn!("could not hold commit acknowledgements before the fence: {e:#}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_names_the_marker() {
        assert!(HOLD.contains(&format!("'\"{MARKER}\"'")));
    }

    #[test]
    fn the_lead_is_a_second_or_half_the_renewal_window() {
        assert_eq!(lead(10, Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(lead(6, Duration::from_millis(4500)), Duration::from_millis(750));
    }

    #[test]
    fn a_hold_left_behind_is_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("postgresql.auto.conf");
        std::fs::write(
            &path,
            "# Do not edit this file manually!\nwork_mem = '8MB'\nsynchronous_standby_names = '\"pgwarden_fence_hold\"'\n",
        )
        .expect("write");
        assert!(is_held(dir.path()));
        assert!(clear_residue(dir.path()).expect("clear"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n"
        );
        assert!(!is_held(dir.path()));
        assert!(!clear_residue(dir.path()).expect("nothing to clear"));
    }
}
