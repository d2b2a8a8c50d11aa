use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = atedm::cli::Cli::parse();
    match atedm::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
