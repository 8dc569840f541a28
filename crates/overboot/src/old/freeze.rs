//! The freeze: new connections to the preserved listeners held off, the preserved units kept
//! from restarting, then every tree frozen and dumped into the map, one after the other (the
//! way back from any failure after it is [`super::back`]).

use std::collections::BTreeSet;

use overboot_handover::{ClockReadings, HandoverError, MapWriter, PreservedTree};

use super::back::{honour_interrupt, restore_here, Dumped};
use super::effects::{AfterDump, Effects};
use super::error::UpdateError;
use super::inflight::InFlight;
use super::options::UpdateOptions;
use super::precopy::PreCopy;
use crate::host::store::Handover;
use crate::host::target::TreeInfo;
use crate::model::phases::{Phase, Phases};

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
            journal_streams: tree.journal_streams.clone(),
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
    // The tasks as dumped: a tree that forked since the inspection has pids it did not see.
    let ids = overboot_checkpoint::pstree::dumped_ids(&images).unwrap_or_else(|e| {
        tracing::warn!(tree = %tree.name, error = %e, "cannot read the dumped tasks: the inspection's pids stand in");
        overboot_checkpoint::pstree::DumpedIds {
            pids: tree.pids(),
            threads: Vec::new(),
        }
    });
    dumped.push(Dumped {
        name: tree.name.clone(),
        images: images.clone(),
        stopped: (after == AfterDump::Stop).then(|| ids.pids.clone()),
        journal_streams: tree.journal_streams.clone(),
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
        pids: ids.pids,
        threads: ids.threads,
        images: rel,
        cmdline: tree.cmdline.clone(),
        clocks_realtime_ns,
        unit: tree.unit.clone(),
        journal_streams: tree.journal_streams.clone(),
    })
}
