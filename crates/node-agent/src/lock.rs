//! Guards against two agents on one data directory: an exclusive lock on a
//! file beside it (DESIGN.md invariant 3), and a check that the data directory
//! belongs to the user the agent runs as.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Uid, User, geteuid};

/// Held for the agent's lifetime; released by the kernel when the process
/// exits, however it exits.
pub struct DataDirLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

/// `/var/lib/postgresql/15/main` → `/var/lib/postgresql/15/main.pgwarden.lock`.
pub fn lock_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(".pgwarden.lock");
    data_dir.with_file_name(name)
}

fn user_name(uid: Uid) -> String {
    User::from_uid(uid).ok().flatten().map_or_else(|| format!("uid {uid}"), |u| u.name)
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        let path = lock_path(data_dir);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "create the lock file {} beside postgresql.data_dir (its directory must exist and be writable by {})",
                    path.display(),
                    user_name(geteuid())
                )
            })?;
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, errno)) => bail!(
                "another pgwarden-agent already supervises {} (lock {} held by pid {}; {errno}): stop it first",
                data_dir.display(),
                path.display(),
                holder.trim()
            ),
        };
        lock.set_len(0).context("truncate the lock file")?;
        lock.rewind().context("rewind the lock file")?;
        writeln!(lock, "{}", std::process::id()).context("write the lock file")?;
        Ok(Self { _lock: lock, path })
    }
}

/// Creates the directory that holds `data_dir` (and the lock file beside it)
/// when it does not exist yet, mode 0700, as Patroni creates what it needs;
/// returns whether it did.
pub fn ensure_parent(data_dir: &Path) -> anyhow::Result<bool> {
    let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) else { return Ok(false) };
    if parent.exists() {
        return Ok(false);
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(parent)
        .with_context(|| {
            format!(
                "create {}, the directory postgresql.data_dir goes in: create it writable by {}, or point \
                 postgresql.data_dir elsewhere",
                parent.display(),
                user_name(geteuid())
            )
        })?;
    Ok(true)
}

/// Refuses to run as root (PostgreSQL refuses it too) or on a data directory
/// that belongs to another user; touches nothing either way.
pub fn check_ownership(data_dir: &Path) -> anyhow::Result<()> {
    let me = geteuid();
    if me.is_root() {
        bail!(
            "pgwarden-agent must not run as root: PostgreSQL refuses to; run it as the user owning the data directory (systemd: User=postgres)"
        );
    }
    match std::fs::metadata(data_dir) {
        Ok(meta) if Uid::from_raw(meta.uid()) != me => {
            let owner = Uid::from_raw(meta.uid());
            let fix = if owner.is_root() {
                format!("chown -R {} {} (or point postgresql.data_dir elsewhere)", user_name(me), data_dir.display())
            } else {
                format!("run the agent as {} (or fix the path)", user_name(owner))
            };
            bail!(
                "postgresql.data_dir {} belongs to {}, but pgwarden-agent runs as {}: {fix}; nothing was changed",
                data_dir.display(),
                user_name(owner),
                user_name(me)
            )
        }
        Ok(meta) if !meta.is_dir() => bail!("postgresql.data_dir {} is not a directory", data_dir.display()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_parent_of_the_data_directory_is_created_0700() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("a/b/main");
        assert!(ensure_parent(&data).expect("created"));
        let mode = std::fs::metadata(dir.path().join("a/b")).expect("exists").mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!data.exists(), "the data directory itself is initdb's or pg_basebackup's to make");
        assert!(!ensure_parent(&data).expect("nothing to do"));
        DataDirLock::acquire(&data).expect("the lock file can go beside it");
    }

    #[test]
    fn a_second_lock_on_the_same_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("main");
        let first = DataDirLock::acquire(&data).expect("first lock");
        assert_eq!(first.path, dir.path().join("main.pgwarden.lock"));
        let err = DataDirLock::acquire(&data).err().expect("second lock refused").to_string();
        assert!(err.contains("another pgwarden-agent"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "names the holder: {err}");
        drop(first);
        DataDirLock::acquire(&data).expect("lock again after release");
    }
}
