//! A pgBackRest (Debian's package) repository on local disk for tests: a
//! stanza, its config file, and the command lines a node's config uses
//! (`archive_command`, a replica method, `restore_command`).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::cluster::SUPERUSER_PASSWORD;
use crate::process::{TestDir, give_to_postgres, run_as_postgres};

/// The stanza every test repository holds.
pub const STANZA: &str = "itest";

/// A pgBackRest repository and its config file in a test directory.
pub struct Backrest {
    dir: TestDir,
}

impl Backrest {
    pub fn new() -> Self {
        let dir = TestDir::new("pgbackrest");
        for sub in ["repo", "log", "lock", "spool"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path).expect("pgbackrest directory");
            give_to_postgres(&path);
        }
        let config = format!(
            "[global]\nrepo1-path={d}/repo\nlog-path={d}/log\nlock-path={d}/lock\nspool-path={d}/spool\n\
             log-level-console=warn\nlog-level-file=detail\nstart-fast=y\narchive-timeout=30\n",
            d = dir.path().display()
        );
        let path = dir.path().join("pgbackrest.conf");
        std::fs::write(&path, config).expect("pgbackrest.conf");
        give_to_postgres(&path);
        // The backup connects as the superuser over the socket, which asks
        // for its password.
        let pgpass = dir.path().join("pgpass");
        std::fs::write(&pgpass, format!("*:*:*:postgres:{SUPERUSER_PASSWORD}\n")).expect("pgpass");
        std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        give_to_postgres(&pgpass);
        Self { dir }
    }

    /// `pgbackrest` with the config, stanza and a data directory, as a
    /// command line for a config (archive_command, a method's command).
    pub fn command(&self, data_dir: &Path, rest: &str) -> String {
        format!(
            "pgbackrest --config={} --stanza={STANZA} --pg1-path={} {rest}",
            self.dir.path().join("pgbackrest.conf").display(),
            data_dir.display()
        )
    }

    /// Runs pgBackRest as `postgres` against the PostgreSQL of `data_dir`.
    pub fn run(&self, data_dir: &Path, socket_dir: &Path, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new("pgbackrest");
        cmd.arg(format!("--config={}", self.dir.path().join("pgbackrest.conf").display()))
            .arg(format!("--stanza={STANZA}"))
            .arg(format!("--pg1-path={}", data_dir.display()))
            .arg(format!("--pg1-socket-path={}", socket_dir.display()))
            .arg(format!("--pg1-port={port}"))
            .args(args)
            .env("PGPASSFILE", self.dir.path().join("pgpass"));
        let output = run_as_postgres(&mut cmd).output().expect("run pgbackrest (apt-get install pgbackrest)");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "pgbackrest {args:?} failed: {text}");
        text
    }

    /// The archive settings of a node whose data directory is `data_dir`.
    pub fn archiving(&self, data_dir: &Path) -> serde_json::Value {
        json!({"postgresql": {"parameters": {
            "archive_mode": "on",
            "archive_command": self.command(data_dir, "archive-push %p"),
        }}})
    }

    pub fn restore_command(&self, data_dir: &Path) -> String {
        self.command(data_dir, "archive-get %f \"%p\"")
    }
}

impl Default for Backrest {
    fn default() -> Self {
        Self::new()
    }
}
