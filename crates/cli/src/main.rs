use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = pgwarden_cli::Cli::parse();
    match pgwarden_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwardenctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
