//! The switch: the map handed to its store, the new kernel loaded with `kexec_file_load` (with
//! a directory store before the freeze, outside the blackout: [`load_early`]), `pending.json`
//! written for the agent, and the jump. A failure restores the dumped trees here.

use std::path::{Path, PathBuf};

use overboot_handover::{DirectoryStore, InitrdStore, SaveStateMap, Store};
use overboot_kexec::{KernelImage, LoadRequest};

use super::back::{honour_interrupt, restore_here, Dumped};
use super::effects::Effects;
use super::error::UpdateError;
use super::inflight::InFlight;
use super::options::{Staged, UpdateOptions};
use super::precopy::PreCopy;
use crate::host::store::Handover;
use crate::host::target::TreeInfo;
use crate::model::phases::{Phase, Phases};
use crate::model::report::{self, Pending};

/// With a directory store the new kernel's command line is known before anything stops: load
/// the kernel now, outside the blackout (`kexec_file_load` copies and digests the segments,
/// seconds for a large initrd). Returns what was loaded; `None` with the initrd store.
pub fn load_early(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    map_dir: &Path,
    image: &KernelImage,
    phases: &mut Phases,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<LoadRequest>, UpdateError> {
    if options.handover == Handover::Initrd {
        return Ok(None);
    }
    let param = DirectoryStore {
        path: map_dir.to_path_buf(),
    }
    .cmdline_param()
    .map_err(|source| UpdateError::Handover {
        recovery: "no tree had been stopped".into(),
        source,
    })?;
    let request = LoadRequest {
        kernel: options.kernel.clone(),
        initrd: options.initrd.clone(),
        cmdline: format!("{} {param}", options.cmdline.trim())
            .trim()
            .to_string(),
    };
    progress(&format!(
        "loading {} with kexec_file_load (before the freeze)",
        image.release
    ));
    phases
        .run(Phase::KexecLoadEarly, || effects.load(&request))
        .map_err(|source| UpdateError::Kernel {
            path: options.kernel.clone(),
            source,
        })?;
    InFlight::enter(&options.state_dir, Phase::PreCopy, true);
    Ok(Some(request))
}

/// Everything the switch needs once the map is written.
#[derive(Debug)]
pub struct Ready {
    /// Update id.
    pub id: String,
    /// The map's directory.
    pub map_dir: PathBuf,
    /// The map.
    pub map: SaveStateMap,
    /// The new kernel.
    pub image: KernelImage,
    /// The trees carried.
    pub trees: Vec<TreeInfo>,
    /// The kernel already loaded (directory store), with its command line.
    pub early: Option<LoadRequest>,
    /// Pre-copy rounds done.
    pub pre_copy: PreCopy,
}

/// Publishes the map, loads the kernel (unless loaded early), writes `pending.json` and jumps.
/// Returns only if it failed, or when a mock jump returns.
pub fn publish_load_jump(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    ready: Ready,
    dumped: &[Dumped],
    phases: &mut Phases,
    progress: &mut dyn FnMut(&str),
) -> Result<Staged, UpdateError> {
    let Ready {
        id,
        map_dir,
        map,
        image,
        trees,
        early,
        pre_copy,
    } = ready;
    let out = options.work_dir.join(&id).join("initrd-with-map.img");
    let store: Box<dyn Store> = match &options.handover {
        Handover::Initrd => {
            progress("appending the map to the new kernel's initrd");
            Box::new(InitrdStore::new(options.initrd.clone(), &out))
        }
        Handover::Dir(_) => {
            progress("flushing the map to disk");
            Box::new(DirectoryStore {
                path: map_dir.clone(),
            })
        }
    };
    InFlight::enter(&options.state_dir, Phase::Publish, false);
    honour_interrupt(effects, Phase::Publish, dumped)?;
    let published = phases
        .run(Phase::Publish, || store.publish(&map))
        .map_err(|source| UpdateError::Handover {
            recovery: restore_here(effects, dumped),
            source,
        })?;
    let cmdline = format!("{} {}", options.cmdline.trim(), published.cmdline_param)
        .trim()
        .to_string();
    let initrd = match (&published.initrd, &options.initrd) {
        (Some(made), _) => Some(made.clone()),
        (None, given) => given.clone(),
    };
    load(
        effects,
        options,
        &image,
        early.as_ref(),
        &cmdline,
        initrd.as_ref(),
        dumped,
        phases,
        progress,
    )?;
    // The kernel holds its own copy of the segments now.
    if let Some(made) = &published.initrd {
        if let Err(e) = std::fs::remove_file(made) {
            tracing::warn!(file = %made.display(), error = %e, "cannot remove the initrd copy");
        }
    }
    let frozen_at = map.manifest().clocks.realtime_ns;
    let staged = Staged {
        id: id.clone(),
        map_dir,
        initrd,
        cmdline,
        handover_bytes: published.bytes,
        phases: phases.map().clone(),
        trees,
        pre_copy: pre_copy.rounds.clone(),
    };
    let pending = Pending {
        id,
        phases: phases.map().clone(),
        freeze_realtime_ns: frozen_at,
        jump_realtime_ns: effects.clocks().realtime_ns,
        handover_bytes: published.bytes,
        peak_mem_bytes: phases.peak_mem_bytes(),
        pre_copy: pre_copy.rounds.clone(),
        // A directory store survives a reset: a boot that comes back without the new kernel's
        // agent having run restores from it (see `host::systemd::recovery_map`).
        recover: matches!(options.handover, Handover::Dir(_))
            .then(|| published.cmdline_param.clone()),
        to_release: image.release.clone(),
        frozen_dump_bytes: published
            .bytes
            .saturating_sub(pre_copy.rounds.iter().map(|r| r.bytes).sum()),
    };
    let pending_file = crate::model::files::pending(&options.state_dir);
    report::write_json(&pending_file, &pending)?;
    InFlight::enter(&options.state_dir, Phase::Jump, true);
    if let Err(e) = honour_interrupt(effects, Phase::Jump, dumped) {
        let _ = std::fs::remove_file(&pending_file);
        return Err(e);
    }
    progress(&format!("jumping into {}", image.release));
    match effects.jump() {
        Ok(()) => Ok(staged),
        Err(source) => {
            let _ = std::fs::remove_file(&pending_file);
            Err(UpdateError::Switch {
                recovery: restore_here(effects, dumped),
                source,
            })
        }
    }
}

/// Loads the new kernel with the map's command line, or checks the early load used it.
#[allow(clippy::too_many_arguments)]
fn load(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    image: &KernelImage,
    early: Option<&LoadRequest>,
    cmdline: &str,
    initrd: Option<&PathBuf>,
    dumped: &[Dumped],
    phases: &mut Phases,
    progress: &mut dyn FnMut(&str),
) -> Result<(), UpdateError> {
    match early {
        Some(loaded) if loaded.cmdline == cmdline => Ok(()),
        // Cannot happen: the store's parameter is the one the early load used.
        Some(loaded) => Err(UpdateError::EarlyLoadMismatch {
            loaded: loaded.cmdline.clone(),
            needed: cmdline.to_string(),
            recovery: restore_here(effects, dumped),
        }),
        None => {
            InFlight::enter(&options.state_dir, Phase::KexecLoad, false);
            honour_interrupt(effects, Phase::KexecLoad, dumped)?;
            progress(&format!("loading {} with kexec_file_load", image.release));
            let request = LoadRequest {
                kernel: options.kernel.clone(),
                initrd: initrd.cloned(),
                cmdline: cmdline.to_string(),
            };
            if let Err(source) = phases.run(Phase::KexecLoad, || effects.load(&request)) {
                return Err(UpdateError::Switch {
                    recovery: restore_here(effects, dumped),
                    source,
                });
            }
            // Loaded from here: should the update die before its jump, the guardian unloads.
            InFlight::enter(&options.state_dir, Phase::KexecLoad, true);
            Ok(())
        }
    }
}
