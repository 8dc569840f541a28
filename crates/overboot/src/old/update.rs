//! `overboot update`: check everything, then freeze and dump the preserved trees into a Save
//! State Map in RAM, hand it to the new kernel appended to its initrd (or, with
//! `--handover dir:PATH`, written to a disk directory and flushed), load, and jump.
//!
//! ```text
//!  check ──► [load early] ──► pre-copy ──► freeze+dump (per tree) ──► write map ──► publish ──► load ──► jump
//!  (nothing frozen: check.rs)              │ failure: restore the       │ failure after a dump: restore every
//!                                          ▼ trees dumped so far        ▼ dumped tree here (freeze::restore_here)
//! ```
//!
//! Nothing is frozen until every check has passed ([`super::check`]). Once a tree is dumped
//! (and so stopped), any later failure restores it on the running kernel before the error is
//! returned: a failed update leaves every preserved process running.
//!
//! With a directory store a dumped tree is left stopped rather than killed
//! ([`AfterDump`](super::effects::AfterDump)): the kernel would otherwise free its memory
//! inside the blackout, about 0.8 s for 2.6 GiB under TCG, while a kexec abandons that memory
//! for nothing. A failure after such a dump ends the stopped tasks first, then restores the
//! tree from its images as after a kill. The initrd store keeps the kill: the map's copies
//! after the freeze need the memory it frees.
//!
//! The side effects sit behind [`Effects`] so that these decisions are unit-tested without
//! root; [`super::effects::HostEffects`] is the real system.

use overboot_handover::SaveStateMap;

use super::back::Dumped;
use super::effects::Effects;
pub use super::error::UpdateError;
pub use super::options::{Staged, UpdateOptions};
use crate::host::store::Handover;
use crate::model::phases::{Phase, Phases};
pub use crate::model::report::new_id;

/// Runs an update. Returns only if it failed, or when a mock jump returns. A failed attempt
/// leaves its report in the state directory (`overboot status`): refused by the checks, or
/// failed after the freeze with what became of the trees.
pub fn run(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Staged, UpdateError> {
    let mut phases = Phases::default();
    let result = attempt(effects, options, &mut phases, progress);
    // Returned: nothing is left for a guardian to bring back (a real jump never returns).
    super::inflight::InFlight::clear(&options.state_dir);
    if let Err(error) = &result {
        let report = super::attempt::failed(effects, options, error, &phases);
        if let Err(e) = report.save(&options.state_dir) {
            tracing::error!(error = %e, "cannot write the report of the failed update");
        }
    }
    result
}

fn attempt(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    phases: &mut Phases,
    progress: &mut dyn FnMut(&str),
) -> Result<Staged, UpdateError> {
    progress("checking the new kernel, the targets and CRIU");
    let passed = phases.run(Phase::Check, || {
        super::check::first_refusal(effects, options)
    })?;
    let super::check::Passed {
        image,
        trees,
        engine,
        warnings,
        store,
    } = passed;
    // The store the checks settled on (a default directory without room: the initrd).
    let resolved = UpdateOptions {
        handover: store,
        ..options.clone()
    };
    let options = &resolved;
    tracing::info!(release = %image.release, engine = %engine, trees = trees.len(), "checks passed");
    for warning in &warnings {
        tracing::warn!(%warning, "not known to work");
        progress(&format!("warning: {warning}"));
    }

    super::back::honour_interrupt_unfrozen(effects, Phase::Check)?;
    // From here until the jump the update is on record, watched by its guardian: should it
    // die, the guardian brings back what it froze and unloads what it loaded (`inflight`).
    super::inflight::InFlight::start().save(&options.state_dir);
    effects.guard(&options.state_dir);
    let id = new_id();
    let map_dir = match &options.handover {
        Handover::Initrd => options.work_dir.join(&id).join("map"),
        Handover::Dir(dir) => dir.join(&id),
    };
    let mut writer = SaveStateMap::create(&map_dir).map_err(|source| UpdateError::Handover {
        recovery: "no tree had been stopped".into(),
        source,
    })?;
    let staged = super::switch::load_early(effects, options, &map_dir, &image, phases, progress)
        .and_then(|early| {
            let pre_copy =
                super::precopy::run(effects, options, &mut writer, &trees, phases, progress);
            // A signal during the checks or the pre-copy stops the update here: nothing
            // frozen; the kernel loaded early is unloaded.
            let stop = super::back::honour_interrupt_unfrozen(effects, Phase::PreCopy);
            if stop.is_err() && early.is_some() {
                effects.unload();
            }
            stop.map(|()| (early, pre_copy))
        });
    let (early, pre_copy) = match staged {
        Ok(both) => both,
        Err(error) => {
            if let Err(e) = std::fs::remove_dir_all(&map_dir) {
                tracing::warn!(dir = %map_dir.display(), error = %e, "cannot remove the unused map");
            }
            return Err(error);
        }
    };
    // What is out of the running kernel from here on: every failure restores it here.
    let mut dumped: Vec<Dumped> = Vec::new();
    let result = super::freeze::freeze_all(
        effects,
        options,
        &trees,
        &mut writer,
        &pre_copy,
        phases,
        &mut dumped,
        progress,
    )
    .and_then(|frozen| {
        let map = super::map::write(
            effects,
            options,
            super::map::Content {
                image: &image,
                trees: &trees,
                warnings: &warnings,
            },
            writer,
            frozen,
            &dumped,
            phases,
            progress,
        )?;
        super::switch::publish_load_jump(
            effects,
            options,
            super::switch::Ready {
                id,
                map_dir: map_dir.clone(),
                map,
                image,
                trees,
                early: early.clone(),
                pre_copy,
            },
            &dumped,
            phases,
            progress,
        )
    });
    if result.is_err() && dumped.is_empty() {
        // Only pre-copy rounds there (or a dump CRIU gave up): no process depends on them.
        if let Err(e) = std::fs::remove_dir_all(&map_dir) {
            tracing::warn!(dir = %map_dir.display(), error = %e, "cannot remove the unused map");
        }
    }
    if result.is_err() && early.is_some() {
        effects.unload();
    }
    result
}
