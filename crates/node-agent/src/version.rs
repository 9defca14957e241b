//! Which PostgreSQL major versions the agent runs: 13 and newer (it writes
//! `standby.signal` and `wal_keep_size`, which 12 and older lack or name
//! differently), with binaries of the data directory's own major.

use pgwarden_config::PostgresBinaries;

use crate::StartRefused;

/// The oldest major version pgwarden runs.
pub const OLDEST_MAJOR: u32 = 13;

/// The major version in `postgres --version`'s output
/// (`postgres (PostgreSQL) 18.6`, `... 15.18 (Debian 15.18-0+deb12u1)`,
/// `... 9.6.24`: 9).
pub fn major_of(version_output: &str) -> Option<u32> {
    let number = version_output.split(')').nth(1)?.split_whitespace().next()?;
    number.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

/// Refuses a start the agent could not carry through: binaries older than
/// [`OLDEST_MAJOR`], or a data directory of another major than the
/// binaries (PostgreSQL would refuse to start it at every attempt).
/// Returns the binaries' major version.
pub fn check(bins: &PostgresBinaries, data_dir: &std::path::Path) -> Result<u32, StartRefused> {
    let postgres = bins.path("postgres");
    let output = std::process::Command::new(&postgres)
        .arg("--version")
        .output()
        .map_err(|e| StartRefused(format!("cannot run {} --version: {e}", postgres.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let major = major_of(&text).ok_or_else(|| {
        StartRefused(format!("{} --version printed {:?}: not a PostgreSQL version", postgres.display(), text.trim()))
    })?;
    refuse(major, std::fs::read_to_string(data_dir.join("PG_VERSION")).ok().as_deref(), &bins.bin_dir, data_dir)?;
    Ok(major)
}

fn refuse(
    major: u32,
    data_version: Option<&str>,
    bin_dir: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<(), StartRefused> {
    if major < OLDEST_MAJOR {
        return Err(StartRefused(format!(
            "the PostgreSQL binaries in {} are version {major}; pgwarden runs PostgreSQL {OLDEST_MAJOR} or newer \
             (it writes standby.signal and wal_keep_size). Upgrade the cluster first, or keep Patroni for it",
            bin_dir.display()
        )));
    }
    if let Some(data) = data_version.map(str::trim).and_then(|v| v.parse::<u32>().ok())
        && data != major
    {
        return Err(StartRefused(format!(
            "{} holds PostgreSQL {data} data but the binaries in {} are version {major}: point \
             postgresql.bin_dir at PostgreSQL {data}'s binaries (or upgrade the data with pg_upgrade first); \
             nothing was changed",
            data_dir.display(),
            bin_dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_from_every_build_seen() {
        assert_eq!(major_of("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some(15));
        assert_eq!(major_of("postgres (PostgreSQL) 18.6\n"), Some(18));
        assert_eq!(major_of("postgres (PostgreSQL) 13.4"), Some(13));
        assert_eq!(major_of("postgres (PostgreSQL) 19devel"), Some(19));
        assert_eq!(major_of("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(major_of("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(major_of("bash: postgres: command not found"), None);
    }

    #[test]
    fn refuses_old_binaries_and_data_of_another_major() {
        let fake = std::path::Path::new("/usr/lib/postgresql/12/bin");
        let data = std::path::Path::new("/var/lib/postgresql/data");
        let old = refuse(12, None, fake, data).expect_err("12 is refused");
        assert!(old.0.contains("PostgreSQL 13 or newer") && old.0.contains("/usr/lib/postgresql/12/bin"), "{}", old.0);
        let mismatch = refuse(18, Some("15\n"), fake, data).expect_err("15 data with 18 binaries");
        assert!(mismatch.0.contains("PostgreSQL 15 data") && mismatch.0.contains("pg_upgrade"), "{}", mismatch.0);
        assert!(refuse(13, Some("13\n"), fake, data).is_ok());
        assert!(refuse(18, None, fake, data).is_ok(), "no data yet");
    }
}
