use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = health_api::Args::parse();
    match health_api::main(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden-health: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
