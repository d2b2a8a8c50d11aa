//! The `atedm` binary: the command line over the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(atedm::Error::Cancelled) => {
            eprintln!("cancelled; nothing was written");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
