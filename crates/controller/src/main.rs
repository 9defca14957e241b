use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = controller::Args::parse();
    match controller::main(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden-controller: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
