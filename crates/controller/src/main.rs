use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = controller::Args::parse();
    match controller::main(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<dcs::v2::StartRefused>().is_some() => {
            eprintln!("pgwarden-controller: refusing to start: {e}");
            std::process::ExitCode::from(dcs::v2::REFUSED_EXIT_CODE)
        }
        Err(e) => {
            eprintln!("pgwarden-controller: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
