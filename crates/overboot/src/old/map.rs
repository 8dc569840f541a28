//! The Save State Map of an update, written after the last dump: the network state captured
//! under the lock, the images hashed, tmpfs files carried, the manifest and header written.

use overboot_handover::{
    HandoverError, KernelInfo, Manifest, MapWriter, SaveStateMap, TargetKernel,
};
use overboot_kexec::KernelImage;

use super::back::{restore_here, Dumped};
use super::effects::Effects;
use super::error::UpdateError;
use super::freeze::Frozen;
use super::options::UpdateOptions;
use crate::host::target::TreeInfo;
use crate::model::phases::{Phase, Phases};

/// What the map says besides the dumped trees.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// The new kernel.
    pub image: &'a KernelImage,
    /// The trees carried (their tmpfs files go into the map).
    pub trees: &'a [TreeInfo],
    /// What the checks could not vouch for, for the report.
    pub warnings: &'a [String],
}

/// Captures the network state and writes the map. A failure restores the dumped trees here.
#[allow(clippy::too_many_arguments)]
pub fn write(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    content: Content<'_>,
    mut writer: MapWriter,
    frozen: Frozen,
    dumped: &[Dumped],
    phases: &mut Phases,
    progress: &mut dyn FnMut(&str),
) -> Result<SaveStateMap, UpdateError> {
    super::inflight::InFlight::enter(&options.state_dir, Phase::WriteMap, false);
    super::back::honour_interrupt(effects, Phase::WriteMap, dumped)?;
    let network = match effects.capture_network() {
        Ok(n) => n,
        Err(source) => {
            return Err(UpdateError::Network {
                recovery: restore_here(effects, dumped),
                source,
            })
        }
    };
    progress("writing the Save State Map");
    let old_phases = phases.map().clone();
    let map = phases.run(
        Phase::WriteMap,
        || -> Result<SaveStateMap, HandoverError> {
            let mut carried = Vec::new();
            for (i, path) in content
                .trees
                .iter()
                .flat_map(|t| t.tmpfs_files.iter())
                .enumerate()
            {
                carried.push(writer.carry_file(path, &format!("files/{i}"))?);
            }
            for Dumped { images, .. } in dumped {
                let rel = images
                    .strip_prefix(writer.dir())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                writer.adopt_tree(&rel)?;
            }
            let manifest = Manifest {
                created_unix_ms: frozen.clocks.realtime_ns / 1_000_000,
                from: KernelInfo {
                    release: crate::host::proc::release(),
                    boot_id: crate::host::proc::boot_id(),
                },
                to: TargetKernel {
                    release: content.image.release.clone(),
                    boot_id: None,
                },
                clocks: frozen.clocks,
                trees: frozen.preserved,
                carried_files: carried,
                rollback: options.rollback.clone(),
                network: Some(network),
                phases: old_phases,
                criu_log_level: Some(options.criu_log_level),
                lazy_restore: options.lazy_restore,
                ..Manifest::default()
            };
            writer.finish(manifest)
        },
    );
    map.map_err(|source| UpdateError::Handover {
        recovery: restore_here(effects, dumped),
        source,
    })
}
