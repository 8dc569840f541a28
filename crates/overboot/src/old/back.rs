//! The way back: every tree dumped so far restored on the running kernel, new connections let
//! in again, the units released ([`restore_here`]) — after any failure past the freeze, at a
//! signal ([`honour_interrupt`]), or by the guardian of an update that died
//! (`super::inflight`).

use std::path::PathBuf;

use super::effects::Effects;
use super::error::UpdateError;
use crate::model::phases::Phase;

/// A tree dumped after the freeze.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dumped {
    /// The tree's name in the map.
    pub name: String,
    /// Its images directory.
    pub images: PathBuf,
    /// Its tasks, when the dump left them stopped ([`AfterDump::Stop`]).
    pub stopped: Option<Vec<i32>>,
    /// Its streams to journald, opened anew for its restore.
    #[serde(default)]
    pub journal_streams: Vec<overboot_handover::JournalStream>,
}

/// Restores every dumped tree on the running kernel and lets new connections in again;
/// returns a sentence for the error.
pub fn restore_here(effects: &mut dyn Effects, dumped: &[Dumped]) -> String {
    let mut restored = Vec::new();
    let sentence = restore_trees_here(effects, dumped, &mut restored);
    effects.unblock_new_connections();
    effects.release_units(&restored);
    sentence
}

fn restore_trees_here(
    effects: &mut dyn Effects,
    dumped: &[Dumped],
    restored: &mut Vec<String>,
) -> String {
    if dumped.is_empty() {
        return "no tree had been stopped".into();
    }
    let mut back = Vec::new();
    let mut lost = Vec::new();
    for Dumped {
        name,
        images,
        stopped,
        journal_streams,
    } in dumped
    {
        // A stopped tree holds its pids, which its restore needs.
        if let Some(pids) = stopped {
            if let Err(e) = effects.end_stopped(pids) {
                tracing::error!(tree = %name, error = %e, "cannot end the stopped tasks");
                lost.push(format!(
                    "{name}: its stopped tasks could not be ended ({e}), so it was not restored \
                     (images kept in {})",
                    images.display()
                ));
                continue;
            }
        }
        match effects.restore(images, journal_streams) {
            Ok(pid) => {
                restored.push(name.clone());
                back.push(format!("{name} (pid {pid})"));
            }
            Err(e) => {
                tracing::error!(tree = %name, error = %overboot_checkpoint::error_chain(&e), "local restore failed");
                lost.push(format!("{name}: {e} (images kept in {})", images.display()));
            }
        }
    }
    let mut text = String::new();
    if !back.is_empty() {
        text.push_str(&format!("restored on this kernel: {}", back.join(", ")));
    }
    if !lost.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!("NOT restored: {}", lost.join("; ")));
    }
    text
}

/// Stops the update when a signal asked it to (SIGINT, SIGTERM, SIGHUP: see
/// `Effects::interrupted`): every tree dumped so far is restored on this kernel first.
pub fn honour_interrupt(
    effects: &mut dyn Effects,
    at: Phase,
    dumped: &[Dumped],
) -> Result<(), UpdateError> {
    let Some(signal) = effects.interrupted(at) else {
        return Ok(());
    };
    Err(UpdateError::Interrupted {
        signal: signal_name(signal),
        phase: at.name(),
        recovery: restore_here(effects, dumped),
    })
}

/// Stops the update before anything was frozen when a signal asked it to.
pub fn honour_interrupt_unfrozen(effects: &mut dyn Effects, at: Phase) -> Result<(), UpdateError> {
    match effects.interrupted(at) {
        None => Ok(()),
        Some(signal) => Err(UpdateError::Interrupted {
            signal: signal_name(signal),
            phase: at.name(),
            recovery: "nothing was frozen".into(),
        }),
    }
}

/// `SIGINT`, `SIGTERM`, ... for a signal number.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string())
}
