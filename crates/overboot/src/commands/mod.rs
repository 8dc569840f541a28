//! The verbs of the CLI. Each module turns its arguments into plain options and calls the
//! library; [`CommandError`] carries the failure class that decides the exit code.

mod kexec;

use clap::{Parser, Subcommand};
use overboot::ExitClass;

/// Move a running Linux server onto a new kernel without stopping its services.
#[derive(Debug, Parser)]
#[command(name = "overboot", version, about)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); OVERBOOT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Machine-readable output: one JSON document on stdout, logs as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Boot a new kernel over the running one (no services preserved).
    Kexec(kexec::Args),
}

/// A failed verb: the error chain to print and the class deciding the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// kexec failed.
    #[error(transparent)]
    Kexec(#[from] overboot_kexec::KexecError),
    /// Arguments that clap accepts but that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("writing output")]
    Output(#[source] std::io::Error),
}

impl CommandError {
    /// The failure class.
    pub fn class(&self) -> ExitClass {
        match self {
            CommandError::Kexec(e) => e.class().into(),
            CommandError::Usage(_) => ExitClass::Usage,
            CommandError::Output(_) => ExitClass::Internal,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Verb::Kexec(args) => kexec::run(args, cli.json),
    }
}
