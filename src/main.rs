//! Thin entry point: parse the command line, start logging, run the command.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sessiond::config::Cli::parse_args();
    sessiond::telemetry::init();
    match sessiond::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiond: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
