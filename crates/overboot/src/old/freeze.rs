//! The freeze: new connections to the preserved listeners held off, the preserved units kept
//! from restarting, then every tree frozen and dumped into the map, one after the other. And
//! the way back from any failure after it: [`restore_here`] brings every dumped tree back on
//! the running kernel.

use std::collections::BTreeSet;
use std::path::PathBuf;

use overboot_handover::{ClockReadings, HandoverError, MapWriter, PreservedTree};

use super::effects::{AfterDump, Effects};
use super::error::UpdateError;
use super::inflight::InFlight;
use super::options::UpdateOptions;
use super::precopy::PreCopy;
use crate::host::store::Handover;
use crate::host::target::TreeInfo;
use crate::model::phases::{Phase, Phases};

/// A tree dumped after the freeze.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dumped {
    /// The tree's name in the map.
    pub name: String,
    /// Its images directory.
    pub images: PathBuf,
    /// Its tasks, when the dump left them stopped ([`AfterDump::Stop`]).
    pub stopped: Option<Vec<i32>>,
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
        match effects.restore(images) {
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

/// What the freeze leaves for the map.
#[derive(Debug)]
pub struct Frozen {
    /// The clocks when the freeze began.
    pub clocks: ClockReadings,
    /// The dumped trees as the manifest lists them.
    pub preserved: Vec<PreservedTree>,
}

/// From the network block to the last dump. Every tree dumped is pushed onto `dumped`; a
/// failure restores those here before it returns.
#[allow(clippy::too_many_arguments)]
pub fn freeze_all(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    trees: &[TreeInfo],
    writer: &mut MapWriter,
    pre_copy: &PreCopy,
    phases: &mut Phases,
    dumped: &mut Vec<Dumped>,
    progress: &mut dyn FnMut(&str),
) -> Result<Frozen, UpdateError> {
    // New connections to preserved listeners wait (their SYNs are dropped, clients retry)
    // from here until the trees run again; then freeze and dump, tree by tree. From here on,
    // failures restore what was dumped and lift the block.
    if options.network_lock {
        let ports: BTreeSet<u16> = trees.iter().flat_map(|t| t.listen_ports.clone()).collect();
        effects
            .block_new_connections(&ports)
            .map_err(UpdateError::NetworkCheck)?;
    }
    // On record since the checks passed (see `inflight`): now with the trees it holds.
    let mut record = InFlight::load(&options.state_dir).unwrap_or_else(InFlight::start);
    record.phase = Phase::FreezeDump.name().into();
    record.held = trees.to_vec();
    record.save(&options.state_dir);
    // A service manager must not answer the dump's kill with a fresh copy of the service.
    if let Err(e) = effects.hold_units(trees) {
        effects.unblock_new_connections();
        effects.release_units(&[]);
        return Err(UpdateError::Hold(e));
    }
    let clocks = effects.clocks();
    // Nothing after the freeze needs the trees' memory but the initrd store's copies of the map.
    let after = match options.handover {
        Handover::Initrd => AfterDump::Kill,
        Handover::Dir(_) => AfterDump::Stop,
    };
    let mut preserved = Vec::new();
    for tree in trees {
        progress(&format!(
            "freezing and dumping {} ({} processes, {} MiB resident)",
            tree.target,
            tree.processes.len(),
            tree.rss_bytes() >> 20
        ));
        record.dumping = Some(Dumped {
            name: tree.name.clone(),
            images: writer.dir().join("trees").join(&tree.name),
            stopped: Some(tree.pids()),
        });
        record.save(&options.state_dir);
        preserved.push(dump_one(
            effects, tree, writer, pre_copy, after, phases, dumped,
        )?);
        record.dumping = None;
        record.dumped.clone_from(dumped);
        record.save(&options.state_dir);
        honour_interrupt(effects, Phase::FreezeDump, dumped)?;
    }
    Ok(Frozen { clocks, preserved })
}

/// Freezes and dumps one tree into `trees/<name>` of the map.
fn dump_one(
    effects: &mut dyn Effects,
    tree: &TreeInfo,
    writer: &mut MapWriter,
    pre_copy: &PreCopy,
    after: AfterDump,
    phases: &mut Phases,
    dumped: &mut Vec<Dumped>,
) -> Result<PreservedTree, UpdateError> {
    let rel = format!("trees/{}", tree.name);
    let images = writer
        .create_dir(&rel)
        .map_err(|source| UpdateError::Handover {
            recovery: restore_here(effects, dumped),
            source,
        })?;
    let parent = pre_copy.parent_of(&tree.name);
    if let Err(source) = phases.run(Phase::FreezeDump, || {
        effects.dump(tree, &images, parent.as_deref(), after)
    }) {
        return Err(UpdateError::Dump {
            tree: tree.target.to_string(),
            recovery: format!(
                "{} was resumed by CRIU; {}",
                tree.target,
                restore_here(effects, dumped)
            ),
            source: Box::new(source),
        });
    }
    // CRIU records the tree's clocks at the end of its dump.
    let clocks_realtime_ns = effects.clocks().realtime_ns;
    dumped.push(Dumped {
        name: tree.name.clone(),
        images: images.clone(),
        stopped: (after == AfterDump::Stop).then(|| tree.pids()),
    });
    // The map holds regular files only: the restore directory links the rounds again.
    if let Err(source) = crate::model::rounds::drop_parent_link(&images) {
        return Err(UpdateError::Handover {
            recovery: restore_here(effects, dumped),
            source: HandoverError::Io {
                action: "remove CRIU's parent link in",
                path: images,
                source,
            },
        });
    }
    Ok(PreservedTree {
        name: tree.name.clone(),
        root_pid: tree.root,
        pids: tree.pids(),
        images: rel,
        cmdline: tree.cmdline.clone(),
        clocks_realtime_ns,
        unit: tree.unit.clone(),
    })
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
