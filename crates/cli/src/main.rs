use clap::{CommandFactory as _, FromArgMatches as _};
use pgwarden_cli::{Cli, generate};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = pgwarden_cli::command_line().get_matches();
    let result = match matches.subcommand() {
        Some((generate::NAME, generate_matches)) => generate::run(generate_matches),
        _ => {
            // What `Cli::parse()` does, from the matches already taken.
            let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
            pgwarden_cli::run(cli).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // patronictl's form, which scripts written for it look for.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
