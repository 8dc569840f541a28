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
    /// Boot a throwaway guest on kernel A and move it onto B (or C) with overboot.
    Demo {
        /// Kernel to switch to: B (6.1 stable update) or C (6.12).
        #[arg(long, default_value = "B")]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare => overboot_lab::Lab::prepare(&["A", "B", "C"]).map(|lab| {
            for label in ["A", "B", "C"] {
                if let Ok(k) = lab.kernel(label) {
                    println!("{label}: {} ({})", k.release, k.package);
                }
            }
        }),
        Command::Demo { to } => overboot_lab::demo::run(&to).map(|result| {
            println!(
                "{}",
                serde_json::to_string(&result).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("overboot-lab: error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
