//! A real PostgreSQL instance run as `postgres`, started with `pg_ctl` (which
//! detaches the postmaster into its own session) and therefore stopped by data
//! directory, never by process group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pgwarden_config::PostgresBinaries;

use crate::port::free_port;
use crate::process::{TestDir, give_to_postgres, run_as_postgres};
use crate::wait::wait_until;

/// An initialised data directory and, while started, its postmaster.
pub struct PgInstance {
    dir: TestDir,
    bins: PostgresBinaries,
    port: u16,
}

fn check(output: Output, what: &str) -> anyhow::Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        anyhow::bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

/// The installed PostgreSQL binaries (one installation).
pub fn binaries() -> PostgresBinaries {
    PostgresBinaries::discover(&BTreeMap::new(), std::env::var("PATH").ok().as_deref())
        .expect("PostgreSQL is installed (apt-get install postgresql-15)")
}

/// The major version of [`binaries`], from `postgres --version`
/// (`postgres (PostgreSQL) 15.18 (Debian ...)`, `... 20devel`).
pub fn binaries_major() -> u32 {
    let out = Command::new(binaries().path("postgres")).arg("--version").output().expect("postgres --version");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let number = text.split(')').nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or_default();
    let digits: String = number.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("a version in {text:?}"))
}

impl PgInstance {
    /// Runs `initdb` (trust authentication on loopback, as a test needs) in a
    /// fresh directory and picks a free port; does not start it.
    pub fn init(label: &str) -> anyhow::Result<Self> {
        let dir = TestDir::new(label);
        let bins = binaries();
        let port = free_port();
        let data = dir.path().join("data");
        let mut cmd = Command::new(bins.path("initdb"));
        cmd.arg("-D").arg(&data).args(["--auth=trust", "--username=postgres", "--no-sync", "--encoding=UTF8"]);
        cmd.current_dir(dir.path()).stdin(Stdio::null());
        check(run_as_postgres(&mut cmd).output()?, "initdb")?;
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir)?;
        give_to_postgres(&socket_dir);
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             wal_level = replica\nmax_wal_senders = 5\nshared_buffers = 16MB\n",
            socket_dir.display()
        );
        let mut file = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())?;
        Ok(Self { dir, bins, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bins.path("pg_ctl"));
        cmd.arg("-D").arg(self.data_dir()).args(args).current_dir(self.dir.path()).stdin(Stdio::null());
        check(run_as_postgres(&mut cmd).output()?, &format!("pg_ctl {}", args.join(" ")))
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        let log = self.dir.path().join("postgres.log");
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", log.to_str().expect("utf-8 path")])?;
        wait_until("PostgreSQL to accept queries", Duration::from_secs(30), || async {
            self.psql("select 1").map(|_| Some(())).map_err(|e| e.to_string())
        })
        .await
    }

    /// The postmaster's PID, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops by data directory with an immediate shutdown; a postmaster that
    /// does not go away is killed by its PID from `postmaster.pid`.
    pub fn stop(&self) {
        if self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]).is_err()
            && let Some(pid) = self.postmaster_pid()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Runs SQL through `psql` over TCP and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        psql_at("127.0.0.1", self.port, sql)
    }
}

/// Runs SQL through `psql` against `host:port` as `postgres`.
pub fn psql_at(host: &str, port: u16, sql: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new(binaries().bin_dir.join("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .current_dir("/")
        .stdin(Stdio::null());
    Ok(check(run_as_postgres(&mut cmd).output()?, "psql")?.trim().to_string())
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The postmaster's pid from `data_dir/postmaster.pid`, while the file exists.
pub fn postmaster_pid_in(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Stops the PostgreSQL of `data_dir` (immediate), as a harness must after a
/// manager (pgwarden or Patroni) detached the postmaster from itself.
pub fn stop_immediate(data_dir: &Path) {
    if !data_dir.join("postmaster.pid").exists() {
        return;
    }
    let mut cmd = Command::new(binaries().path("pg_ctl"));
    cmd.arg("-D").arg(data_dir).args(["stop", "-m", "immediate", "-w", "-t", "10"]);
    cmd.current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = crate::process::run_as_postgres(&mut cmd).status();
}
