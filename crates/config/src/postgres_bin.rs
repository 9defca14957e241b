//! Finding the PostgreSQL binaries: `postgresql.bin_dir`, or one installation
//! found on `PATH` or in the usual places. Every binary comes from the same
//! installation; Debian's `/usr/bin` wrappers are never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The binaries pgwarden runs, by their Patroni `bin_name` key.
pub const BINARIES: &[&str] =
    &["pg_ctl", "initdb", "pg_controldata", "pg_basebackup", "postgres", "pg_isready", "pg_rewind"];

/// Absolute paths of the PostgreSQL binaries of one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresBinaries {
    pub bin_dir: PathBuf,
    paths: BTreeMap<String, PathBuf>,
}

impl PostgresBinaries {
    /// The path of one binary by its Patroni name (`pg_ctl`, `initdb`, ...).
    pub fn path(&self, binary: &str) -> PathBuf {
        self.paths.get(binary).cloned().unwrap_or_else(|| self.bin_dir.join(binary))
    }

    /// Resolves the binaries in `bin_dir` with `bin_name` overrides, or says
    /// which are missing.
    pub fn in_dir(bin_dir: &Path, bin_name: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut paths = BTreeMap::new();
        let mut missing = Vec::new();
        for binary in BINARIES {
            let file = bin_name.get(*binary).map_or(*binary, String::as_str);
            let path = bin_dir.join(file);
            if is_executable(&path) {
                paths.insert((*binary).to_string(), path);
            } else {
                missing.push(file.to_string());
            }
        }
        if missing.is_empty() {
            Ok(Self { bin_dir: bin_dir.to_path_buf(), paths })
        } else {
            Err(format!(
                "{} has no executable {} (point bin_dir at the directory holding pg_ctl, e.g. /usr/lib/postgresql/15/bin)",
                bin_dir.display(),
                missing.join(", ")
            ))
        }
    }

    /// Finds one complete installation: `PATH` first (skipping directories that
    /// hold only wrappers), then `/usr/lib/postgresql/<N>/bin` and
    /// `/usr/pgsql-<N>/bin`, newest major version first.
    pub fn discover(bin_name: &BTreeMap<String, String>, path_var: Option<&str>) -> Result<Self, String> {
        let mut candidates: Vec<PathBuf> = path_var
            .map(|p| std::env::split_paths(p).filter(|dir| !is_debian_wrapper_dir(dir)).collect())
            .unwrap_or_default();
        candidates.extend(versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin"));
        candidates.extend(versioned_dirs(Path::new("/usr"), "pgsql-", "bin"));
        for dir in &candidates {
            if let Ok(found) = Self::in_dir(dir, bin_name) {
                return Ok(found);
            }
        }
        Err("no PostgreSQL installation found on PATH, in /usr/lib/postgresql/<N>/bin or in /usr/pgsql-<N>/bin; \
             install PostgreSQL (e.g. apt-get install postgresql-15) or set postgresql.bin_dir"
            .into())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Debian's `/usr/bin` holds `pg_ctlcluster`-style wrappers that pick a
/// version per cluster; pgwarden must run one installation's real binaries.
fn is_debian_wrapper_dir(dir: &Path) -> bool {
    dir.join("pg_wrapper").exists() || std::fs::read_link(dir.join("psql")).is_ok_and(|t| t.ends_with("pg_wrapper"))
}

/// `<parent>/<prefix><N>/<bin>` for every numeric N, highest first.
fn versioned_dirs(parent: &Path, prefix: &str, bin: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?.parse::<u32>().ok()?;
            Some((version, entry.path().join(bin)))
        })
        .collect();
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_install(dir: &Path, skip: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("create bin dir");
        for binary in BINARIES.iter().filter(|b| **b != skip) {
            let path = dir.join(binary);
            std::fs::write(&path, "#!/bin/sh\n").expect("write fake binary");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    #[test]
    fn accepts_a_complete_dir_and_names_missing_binaries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let full = tmp.path().join("full");
        fake_install(&full, "");
        assert!(PostgresBinaries::in_dir(&full, &BTreeMap::new()).is_ok());
        let partial = tmp.path().join("partial");
        fake_install(&partial, "pg_rewind");
        let err = PostgresBinaries::in_dir(&partial, &BTreeMap::new()).expect_err("pg_rewind is missing");
        assert!(err.contains("pg_rewind"), "{err}");
    }

    #[test]
    fn discovery_takes_every_binary_from_one_installation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let incomplete = tmp.path().join("a");
        let complete = tmp.path().join("b");
        fake_install(&incomplete, "initdb");
        fake_install(&complete, "");
        let path_var = std::env::join_paths([&incomplete, &complete]).expect("join paths");
        let found = PostgresBinaries::discover(&BTreeMap::new(), path_var.to_str())
            .expect("the complete installation is found");
        assert_eq!(found.bin_dir, complete);
        assert_eq!(found.path("initdb"), complete.join("initdb"));
    }
}
