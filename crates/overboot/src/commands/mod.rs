//! The verbs of the CLI. Each module turns its arguments into plain options and calls the
//! library; [`CommandError`] carries the failure class that decides the exit code.

mod args;
mod kexec;
mod pages;
mod patch;
mod plan;
mod resume;
mod status;
pub mod systemd;
mod update;

use std::io::Write;

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
    /// Live patches: build, apply, list, revert, replace (no kernel switch).
    Patch(patch::Args),
    /// What `update` would do, changing nothing; exits non-zero when it would fail.
    Plan(plan::Args),
    /// Carry process trees onto a new kernel: check, freeze, dump, hand over, kexec.
    Update(update::Args),
    /// The agent of the new kernel: verify the Save State Map and restore its trees.
    Resume(resume::Args),
    /// The last update's report.
    Status(status::Args),
    /// systemd hosts: install the generator, make a service preservable, adopt restored units.
    Systemd(systemd::Args),
    /// The lazy restore's page server (started by the agent).
    #[command(hide = true)]
    ServePages(pages::Args),
}

/// A failed verb: the error chain to print and the class deciding the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// kexec failed.
    #[error(transparent)]
    Kexec(#[from] overboot_kexec::KexecError),
    /// The update stopped (see the chain for what became of the processes).
    #[error("update failed")]
    Update(#[from] overboot::old::update::UpdateError),
    /// The resume agent failed.
    #[error("resume failed")]
    Resume(#[from] overboot::new::resume::ResumeError),
    /// The agent could neither restore nor roll back.
    #[error("resume failed and could not roll back")]
    Rollback(#[from] overboot::new::supervise::RollbackError),
    /// No report to show.
    #[error(transparent)]
    Report(#[from] overboot::model::report::ReportError),
    /// Building a live patch failed or the patch was refused.
    #[error(transparent)]
    PatchBuild(#[from] overboot_livepatch::BuildError),
    /// Applying, listing or removing a live patch failed.
    #[error(transparent)]
    Patch(#[from] overboot_livepatch::RuntimeError),
    /// `plan` found reasons `update` would fail (already printed).
    #[error("update would fail: {0} problem(s), listed above")]
    PlanRefused(usize),
    /// Arguments that clap accepts but that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The systemd integration failed.
    #[error("systemd")]
    Systemd(#[source] overboot::host::systemd::SystemdError),
    /// The lazy restore's page server stopped before every page was back.
    #[error("{}", overboot_pageserver::FAILED)]
    Pages(#[from] overboot_pageserver::PageServerError),
    /// Writing the output failed.
    #[error("writing output")]
    Output(#[source] std::io::Error),
}

impl CommandError {
    /// The failure class.
    pub fn class(&self) -> ExitClass {
        match self {
            CommandError::Kexec(e) => e.class().into(),
            CommandError::Update(e) => e.class(),
            CommandError::Resume(e) => e.class(),
            CommandError::Rollback(_) => ExitClass::Restore,
            CommandError::Report(overboot::model::report::ReportError::NoReport(_)) => {
                ExitClass::Nothing
            }
            CommandError::Report(_) => ExitClass::Internal,
            CommandError::PatchBuild(e) => patch::build_class(e),
            CommandError::Patch(e) => patch::runtime_class(e),
            CommandError::Usage(_) => ExitClass::Usage,
            CommandError::PlanRefused(_) => ExitClass::BadInput,
            CommandError::Systemd(e) => e.class(),
            CommandError::Output(_) => ExitClass::Internal,
            CommandError::Pages(_) => ExitClass::Restore,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Verb::Kexec(args) => kexec::run(args, cli.json),
        Verb::Patch(args) => patch::run(args, cli.json),
        Verb::Plan(args) => plan::run(args, cli.json),
        Verb::Update(args) => update::run(args, cli.json),
        Verb::Resume(args) => resume::run(args, cli.json),
        Verb::Status(args) => status::run(args, cli.json),
        Verb::Systemd(args) => systemd::run(args, cli.json),
        Verb::ServePages(args) => pages::run(args),
    }
}

/// A verb's exit code: 0, or its failure's class after printing the failure's whole chain.
pub fn exit_code(result: Result<(), CommandError>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            overboot::model::exit::print_failure(&err, std::error::Error::source(&err));
            err.class() as u8
        }
    }
}

/// Prints a text for people, or one JSON document for machines, and flushes.
pub fn print(json: bool, human: &str, machine: &impl serde::Serialize) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    let text = if json {
        serde_json::to_string(machine).map_err(|e| CommandError::Output(e.into()))?
    } else {
        human.to_string()
    };
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(CommandError::Output)
}
