//! `overboot-lab`: prepare the lab and run the demo (tests use the library directly).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The overboot lab: real Debian kernels in QEMU.
#[derive(Debug, Parser)]
#[command(name = "overboot-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install host packages, fetch kernels A, B and C, build our binaries.
    Prepare,
    /// Redis on kernel A in a throwaway guest, a host client on one connection, `overboot
    /// update` to B (or C); the last stdout line is a JSON summary. Exits 1 when the client's
    /// connection broke or a key was lost.
    Demo {
        /// Kernel to switch to: B (6.1 stable update) or C (6.12).
        #[arg(long, default_value = "B")]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<bool, Box<dyn std::error::Error>> = match cli.command {
        Command::Prepare => overboot_lab::Lab::prepare(&["A", "B", "C"])
            .map(|lab| {
                for label in ["A", "B", "C"] {
                    if let Ok(k) = lab.kernel(label) {
                        println!("{label}: {} ({})", k.release, k.package);
                    }
                }
                true
            })
            .map_err(Into::into),
        Command::Demo { to } => overboot_lab::demo::run(&to)
            .map(|result| {
                println!(
                    "{}",
                    serde_json::to_string(&result)
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                );
                result.connection_survived && result.keys_missing == 0 && result.keys_wrong == 0
            })
            .map_err(Into::into),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("overboot-lab: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
