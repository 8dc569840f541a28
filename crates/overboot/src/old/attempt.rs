//! The report of an update that did not jump: refused by the checks before anything was
//! frozen, or failed after the freeze (the error says what became of the trees). `overboot
//! status` shows it like an agent's report; every attempt leaves one.

use super::effects::Effects;
use super::error::UpdateError;
use super::options::UpdateOptions;
use crate::model::phases::Phases;
use crate::model::report::{Outcome, Report};

/// The report of an attempt that ended in `error`.
pub fn failed(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    error: &UpdateError,
    phases: &Phases,
) -> Report {
    let outcome = if matches!(error, UpdateError::Interrupted { .. }) {
        Outcome::Interrupted
    } else if error.froze() {
        Outcome::Failed
    } else {
        Outcome::Refused
    };
    let mut report = Report::of_attempt(
        format!("{}-{}", crate::model::report::new_id(), outcome.name()),
        outcome,
        overboot_checkpoint::error_chain(error),
        effects.running_release(),
        options.kernel.display().to_string(),
    );
    report.phases = phases.map().clone();
    report.peak_mem_bytes = phases.peak_mem_bytes();
    report
}
