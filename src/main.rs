//! The `atedm` binary: the command line over the library.

mod cli;

use clap::Parser;

/// Gives Mesa's Vulkan loader an `XDG_RUNTIME_DIR` on headless machines, where it is often
/// unset and the loader prints an error about it (twice) before working.
fn runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() || !cfg!(target_os = "linux") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("atedm-xdg-{}", whoami()));
    #[cfg(unix)]
    let made = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
    };
    #[cfg(not(unix))]
    let made = std::fs::create_dir_all(&dir);
    if made.is_ok() {
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

/// The user's name for a per-user folder name (falls back to "user").
fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "user".into())
}

fn main() -> std::process::ExitCode {
    runtime_dir();
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
