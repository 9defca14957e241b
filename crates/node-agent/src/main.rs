use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = node_agent::Args::parse();
    if args.validate_config {
        return node_agent::validate_config(&args.config, args.strict);
    }
    // One thread: the agent waits on PostgreSQL, etcd and its peers, and
    // does little work in between; a second worker only added wake-ups.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pgwarden-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.fence_if_watchdog {
        return match runtime.block_on(node_agent::fence_if_watchdog(&args.config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgwarden-agent: failed to fence: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(node_agent::main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<node_agent::StartRefused>().is_some() => {
            eprintln!("pgwarden-agent: refusing to start: {e}");
            ExitCode::from(dcs::v2::REFUSED_EXIT_CODE)
        }
        Err(e) => {
            eprintln!("pgwarden-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
