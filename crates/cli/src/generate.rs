//! `pgwardenctl generate`: pgwardenctl's manual pages (`clap_mangen`) and
//! shell completions (`clap_complete`), written from the same definition
//! that parses the command line, so they cannot drift from it. `make deb`
//! runs it on the freshly built binary; a user can run it for a shell the
//! package does not cover. It reads no config and contacts nothing.
//!
//! The subcommand is added to the parser in `main` ([`crate::command_line`]),
//! not to [`Cli`], and it is hidden: the pages and completions describe the
//! operator's commands only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Subcommand};
use clap_complete::Shell;

use crate::Cli;

/// The subcommand's name on the command line.
pub const NAME: &str = "generate";

/// The binary the pages and completions are for.
const BIN: &str = "pgwardenctl";

#[derive(Debug, Args)]
struct Generate {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Write pgwardenctl.1 and a page per subcommand (pgwardenctl-list.1, ...) into DIR.
    Man {
        dir: PathBuf,
        /// The date in the pages' footer (default: today, UTC); a fixed one
        /// (`make deb` gives the last commit's) makes the pages reproducible.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<String>,
    },
    /// Print the completion script for SHELL on stdout.
    Completions { shell: Shell },
}

/// The hidden `generate` subcommand, as `main` adds it to [`Cli`]'s parser.
pub fn command() -> clap::Command {
    Generate::augment_args(clap::Command::new(NAME))
        .about("Write pgwardenctl's manual pages or a shell's completions")
        .subcommand_required(true)
        .hide(true)
}

/// Carry out `generate` as parsed by [`command`].
pub fn run(matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let generate = Generate::from_arg_matches(matches)?;
    match generate.what {
        What::Man { dir, date } => {
            let date = match date {
                Some(date) => date,
                None => time::OffsetDateTime::now_utc()
                    .format(time::macros::format_description!("[year]-[month]-[day]"))
                    .context("format today's date")?,
            };
            write_man_pages(&dir, &date)?;
        }
        What::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&completions(shell)).and_then(|()| stdout.flush()).context("write the completions")?;
        }
    }
    Ok(())
}

/// Writes `pgwardenctl.1` and one page per visible subcommand into `dir`
/// (created if missing), dated `date`; returns the files written, the main
/// page first.
pub fn write_man_pages(dir: &Path, date: &str) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // `build` gives every subcommand its display name (`pgwardenctl-list`),
    // which names its page and its title; clap's `help` subcommand is no
    // operator command, so it gets no page.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    let mut pending = vec![root];
    while let Some(command) = pending.pop() {
        pending.extend(command.get_subcommands().filter(|sub| !sub.is_hide_set()).cloned());
        // The date must not be empty: clap_mangen writes an empty `.TH`
        // argument as nothing at all, which shifts the ones after it.
        let page = clap_mangen::Man::new(command).date(date).manual("pgwarden manual");
        let path = page.generate_to(dir).with_context(|| format!("write a manual page into {}", dir.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The completion script for `shell` (completing `pgwardenctl`). Built in
/// memory: clap_complete panics when its writer fails (a closed pipe).
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_operator_command_and_not_generate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_man_pages(dir.path(), "2026-12-01").expect("write pages");
        assert_eq!(written[0], dir.path().join("pgwardenctl.1"));
        let main_page = std::fs::read_to_string(&written[0]).expect("read pgwardenctl.1");
        // clap_mangen opens with a string definition, then the title macro.
        let title = main_page.lines().find(|line| line.starts_with(".TH ")).expect("a .TH line");
        assert_eq!(
            title,
            r#".TH pgwardenctl 1 2026-12-01 "pgwardenctl 0.1.0" "pgwarden manual""#
                .replace("0.1.0", env!("CARGO_PKG_VERSION"))
        );
        assert!(main_page.contains("pgwardenctl\\-switchover(1)"), "the main page lists the subcommands' pages");
        assert!(main_page.contains("PATRONICTL_CONFIG_FILE"), "the config file's environment variable is documented");
        for sub in Cli::command().get_subcommands() {
            let page = dir.path().join(format!("pgwardenctl-{}.1", sub.get_name()));
            let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            let expected = format!("\n.TH pgwardenctl-{} 1 ", sub.get_name());
            assert!(text.contains(&expected), "{}", page.display());
        }
        assert_eq!(written.len(), 1 + Cli::command().get_subcommands().count());
        assert!(!dir.path().join("pgwardenctl-generate.1").exists());
        assert!(!main_page.contains("generate"));
    }

    #[test]
    fn completions_name_the_subcommands_and_not_generate() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).expect("utf-8 script");
            assert!(script.contains("switchover"), "{shell}: no switchover");
            assert!(script.contains("edit-config"), "{shell}: no edit-config");
            assert!(!script.contains("generate"), "{shell}: mentions generate");
        }
    }

    #[test]
    fn generate_parses_beside_the_operator_commands() {
        let matches = crate::command_line()
            .try_get_matches_from([BIN, "generate", "completions", "bash"])
            .expect("generate completions bash parses");
        let (name, generate) = matches.subcommand().expect("a subcommand");
        assert_eq!(name, NAME);
        let parsed = Generate::from_arg_matches(generate).expect("from matches");
        assert!(matches!(parsed.what, What::Completions { shell: Shell::Bash }));

        let matches = crate::command_line().try_get_matches_from([BIN, "list", "-f", "json"]).expect("list parses");
        let cli = Cli::from_arg_matches(&matches).expect("an operator command");
        assert!(matches!(cli.command, crate::Command::List { .. }));

        // Hidden: not in the help an operator reads.
        let help = crate::command_line().render_help().to_string();
        assert!(!help.contains("generate"), "{help}");
    }
}
