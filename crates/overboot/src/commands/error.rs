//! How a verb fails and what it prints: [`CommandError`] carries the failure class that decides
//! the exit code ([`exit_code`]); [`print`] writes a verb's answer for people or machines.

use std::io::Write;

use overboot::ExitClass;

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
    /// `pending`: no installed kernel is newer than the running one (already printed).
    #[error("no kernel newer than the running one is installed")]
    NothingPending,
    /// `--to` names no installed kernel.
    #[error("{0}")]
    NoSuchKernel(String),
    /// `plan` found reasons `update` would fail (already printed).
    #[error("update would fail: {0} problem(s), listed above")]
    PlanRefused(usize),
    /// Arguments that clap accepts but that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The agent already ran in this boot (a unit that restarts pulls it in again).
    #[error(
        "overboot resume already ran in this boot ({}): it does not restore twice; \
         its report: overboot status",
        .0.display()
    )]
    AgentRan(std::path::PathBuf),
    /// The config file is missing (when named), unreadable or invalid.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
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
            CommandError::Rollback(_) | CommandError::AgentRan(_) => ExitClass::Restore,
            CommandError::Report(overboot::model::report::ReportError::NoReport(_)) => {
                ExitClass::Nothing
            }
            CommandError::Report(_) => ExitClass::Internal,
            CommandError::PatchBuild(e) => build_class(e),
            CommandError::Patch(e) => runtime_class(e),
            CommandError::Usage(_) | CommandError::Config(_) => ExitClass::Usage,
            CommandError::PlanRefused(_) => ExitClass::BadInput,
            CommandError::NothingPending => ExitClass::Nothing,
            CommandError::NoSuchKernel(_) => ExitClass::BadInput,
            CommandError::Systemd(e) => e.class(),
            CommandError::Output(_) => ExitClass::Internal,
            CommandError::Pages(_) => ExitClass::Restore,
        }
    }
}

/// Exit class of a failed build: refusals of the patch are bad input.
pub fn build_class(e: &overboot_livepatch::BuildError) -> ExitClass {
    if e.is_refusal() {
        ExitClass::BadInput
    } else {
        ExitClass::Internal
    }
}

/// Exit class of a failed apply, list, revert or replace.
pub fn runtime_class(e: &overboot_livepatch::RuntimeError) -> ExitClass {
    use overboot_livepatch::runtime::RuntimeErrorClass as R;
    use ExitClass as X;
    match e.class() {
        R::Permission => X::Permission,
        R::BadInput => X::BadInput,
        R::Nothing => X::Nothing,
        R::Busy => X::Resources,
        R::Other => X::Internal,
    }
}

/// A verb's exit code: 0, or its failure's class after printing the failure's whole chain.
pub fn exit_code(result: Result<(), CommandError>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            // A sentinel's answer, already printed: not an error to report.
            if !matches!(err, CommandError::NothingPending) {
                overboot::model::exit::print_failure(&err, std::error::Error::source(&err));
            }
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
