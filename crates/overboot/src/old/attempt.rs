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
    Report {
        id: format!(
            "{}-{}",
            crate::model::report::new_id(),
            outcome_word(&outcome)
        ),
        outcome,
        detail: Some(overboot_checkpoint::error_chain(error)),
        from: effects.running_release(),
        to: options.kernel.display().to_string(),
        trees: Vec::new(),
        phases: phases.map().clone(),
        handover_bytes: 0,
        blackout_ms: 0,
        peak_mem_bytes: phases.peak_mem_bytes(),
        clock_offsets_ns: Default::default(),
        logs: Vec::new(),
        pre_copy: Vec::new(),
        frozen_dump_bytes: 0,
        warnings: Vec::new(),
    }
}

fn outcome_word(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Refused => "refused",
        Outcome::Interrupted => "interrupted",
        _ => "failed",
    }
}
