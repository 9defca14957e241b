//! `postgresql.config_dir` (Debian's `/etc/postgresql/<v>/main` layout):
//! pgwarden's `postgresql.conf`, the user's `postgresql.base.conf`,
//! `pg_hba.conf`, `pg_ident.conf` (and `pg_hosts.conf`) live there instead of in the data
//! directory, as with Patroni. PostgreSQL is started with `-c config_file=`;
//! copies kept in the data directory (`*.backup`, Patroni's names) let a
//! clone of this member find its configuration.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tracing::info;

use crate::postgres::{INITDB_CONF, Postgres, write_private};

/// The first line of every `postgresql.conf` pgwarden writes.
pub const WRITTEN_BY: &str = "# Written by pgwarden-agent";

fn written_by_pgwarden(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.starts_with(WRITTEN_BY))
}

fn backup_of(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(format!("{name}.backup"))
}

impl Postgres {
    /// Where `postgresql.conf` and `pg_hba.conf` live.
    pub fn config_dir(&self) -> &Path {
        self.config().postgresql.config_dir()
    }

    fn separate_config_dir(&self) -> bool {
        self.config_dir() != self.data_dir
    }

    /// The file pgwarden writes its parameters to: `<config_base_name>.conf`
    /// (Patroni's `postgresql.config_base_name`, default `postgresql`).
    pub(crate) fn managed_conf(&self) -> String {
        format!("{}.conf", self.config().postgresql.config_base_name)
    }

    /// Where the original configuration is kept and included first:
    /// `<config_base_name>.base.conf`.
    pub(crate) fn base_conf(&self) -> String {
        format!("{}.base.conf", self.config().postgresql.config_base_name)
    }

    /// PostgreSQL must be told where its configuration file is: outside the
    /// data directory, or named other than `postgresql.conf`.
    pub(crate) fn config_file_needed(&self) -> bool {
        self.separate_config_dir() || self.managed_conf() != INITDB_CONF
    }

    /// The path of the file pgwarden writes.
    pub(crate) fn managed_conf_path(&self) -> PathBuf {
        self.config_dir().join(self.managed_conf())
    }

    /// `-c config_file=...` for the postmaster when the configuration is
    /// outside the data directory or named otherwise (quoted for the shell
    /// pg_ctl runs it in).
    pub fn config_file_option(&self) -> Option<String> {
        self.config_file_needed().then(|| {
            let path = self.managed_conf_path().display().to_string();
            format!("-c config_file='{}'", path.replace('\'', r"'\''"))
        })
    }

    /// Makes sure `config_dir` holds the files pgwarden's `postgresql.conf`
    /// includes and names, taking them from where they are: the user's own
    /// `postgresql.conf` there (Debian's, or initdb's in the data
    /// directory) becomes `postgresql.base.conf`; a clone's copies
    /// (`*.backup`, or the files themselves from a member without
    /// `config_dir`) are copied in; with none, an empty base file is
    /// written. Nothing that exists is replaced.
    pub fn adopt_config_files(&self) -> anyhow::Result<()> {
        self.adopt().with_context(|| {
            format!(
                "prepare the configuration files in {} (config_dir must be writable by the user pgwarden runs as)",
                self.config_dir().display()
            )
        })
    }

    fn adopt(&self) -> anyhow::Result<()> {
        let dir = self.config_dir().to_path_buf();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("create config_dir {}", dir.display()))?;
        }
        let base = dir.join(self.base_conf());
        if self.config().postgresql.custom_conf.is_none() && !base.exists() {
            // The user's own file: ours in name, or initdb's.
            let own = [
                dir.join(self.managed_conf()),
                self.data_dir.join(self.managed_conf()),
                self.data_dir.join(INITDB_CONF),
            ];
            if let Some(found) = own.iter().find(|p| p.exists() && !written_by_pgwarden(p)) {
                std::fs::rename(found, &base)
                    .with_context(|| format!("keep {} as {}", found.display(), base.display()))?;
                info!(from = %found.display(), to = %base.display(), "kept the existing postgresql.conf as the base file");
            } else if let Some(copy) =
                [backup_of(&self.data_dir, &self.base_conf()), self.data_dir.join(self.base_conf())]
                    .into_iter()
                    .find(|p| p.exists())
            {
                std::fs::copy(&copy, &base)
                    .with_context(|| format!("copy {} to {}", copy.display(), base.display()))?;
            } else {
                write_private(&base, "# The base configuration pgwarden's postgresql.conf includes.\n")?;
            }
        }
        // `pg_hosts.conf` (PostgreSQL 19+) moves only where there is one.
        for name in ["pg_hba.conf", "pg_ident.conf", "pg_hosts.conf"] {
            let target = dir.join(name);
            if target.exists() {
                continue;
            }
            let in_data_dir = self.data_dir.join(name);
            let backup = backup_of(&self.data_dir, name);
            if self.separate_config_dir() && in_data_dir.exists() {
                std::fs::rename(&in_data_dir, &target).with_context(|| format!("move {name} to {}", dir.display()))?;
            } else if backup.exists() {
                std::fs::copy(&backup, &target).with_context(|| format!("copy {name} to {}", dir.display()))?;
            } else if name == "pg_ident.conf" {
                write_private(&target, "")?;
            }
        }
        Ok(())
    }

    /// Right after initdb with a separate `config_dir`: initdb's own
    /// `postgresql.conf`, `pg_hba.conf`, `pg_ident.conf` (and 19's `pg_hosts.conf`) go there where
    /// the directory has none (initdb's `postgresql.conf` as the base file),
    /// and are removed from the data directory where it has them (Debian's).
    pub fn settle_initdb_files(&self) -> anyhow::Result<()> {
        if !self.separate_config_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(self.config_dir())
            .with_context(|| format!("create config_dir {}", self.config_dir().display()))?;
        let custom = self.config().postgresql.custom_conf.is_some();
        let base = self.base_conf();
        for (name, target) in [
            (INITDB_CONF, base.as_str()),
            ("pg_hba.conf", "pg_hba.conf"),
            ("pg_ident.conf", "pg_ident.conf"),
            ("pg_hosts.conf", "pg_hosts.conf"),
        ] {
            let made = self.data_dir.join(name);
            if name == "pg_hosts.conf" && !made.exists() {
                // initdb writes it from PostgreSQL 19 on.
                continue;
            }
            let target = self.config_dir().join(target);
            let taken = target.exists() || (name == INITDB_CONF && (custom || self.managed_conf_path().exists()));
            if taken {
                std::fs::remove_file(&made).with_context(|| format!("remove initdb's {}", made.display()))?;
            } else {
                std::fs::rename(&made, &target)
                    .with_context(|| format!("move initdb's {name} to {}", target.display()))?;
            }
        }
        Ok(())
    }

    /// Copies of `config_dir`'s files in the data directory, which a clone
    /// of this member receives (Patroni's `*.backup` names and use).
    pub fn back_up_config_files(&self) -> anyhow::Result<()> {
        if !self.separate_config_dir() {
            return Ok(());
        }
        // The files that live in `config_dir`, with their copies in the data directory.
        for name in [self.base_conf().as_str(), "pg_hba.conf", "pg_ident.conf", "pg_hosts.conf"] {
            let from = self.config_dir().join(name);
            if let Ok(text) = std::fs::read_to_string(&from) {
                let to = backup_of(&self.data_dir, name);
                if std::fs::read_to_string(&to).ok().as_deref() != Some(text.as_str()) {
                    write_private(&to, &text)?;
                }
            }
        }
        Ok(())
    }

    /// The file pgwarden's `postgresql.conf` includes first: `custom_conf`,
    /// else `postgresql.base.conf` (beside it, so named relatively).
    pub fn base_include(&self) -> String {
        match &self.config().postgresql.custom_conf {
            Some(custom) => custom.display().to_string(),
            None => self.base_conf(),
        }
    }
}
