//! Before any tree is restored: the map opened and checked (all but the memory pages, which
//! are checked beside the restore), the carried files put back, and for each tree the
//! directory CRIU restores from — its clock record advanced by the time since the freeze, the
//! windows of its unscaled TCP connections pinned — with the decision to restore it lazily.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use overboot_checkpoint::NetworkLockMode;
use overboot_handover::{DeferredFiles, HandoverError, Manifest, PreservedTree, SaveStateMap};

use super::error::ResumeError;
use super::options::ResumeOptions;
use super::restore::TreeJob;
use super::timens;
use crate::model::fault::{self, Fault};
use crate::model::images::{is_memory_pages, restore_dir};

/// Puts back the byte an injected `flip-byte` fault flipped, when dropped.
#[derive(Debug)]
pub struct Unflip(Option<(PathBuf, u8)>);

impl Drop for Unflip {
    fn drop(&mut self) {
        if let Some((path, original)) = &self.0 {
            let _ = fault::unflip_byte(path, *original);
        }
    }
}

/// The injected corruption stands for one in transit: the data at rest is good again once
/// the agent is done with it (the guard puts the byte back when dropped).
pub fn inject_flip(fault: Option<&Fault>, location: &Path) -> Unflip {
    Unflip(match fault {
        Some(Fault::FlipByte(tree)) => {
            let dir = SaveStateMap::open(location)
                .ok()
                .and_then(|m| m.manifest().tree(tree).map(|t| m.path_of(&t.images)));
            dir.and_then(|d| fault::flip_byte(&d).ok())
        }
        _ => None,
    })
}

/// Opens the map and checks everything CRIU interprets; the memory pages (raw bytes copied
/// into the restored processes, the bulk of the map) come back to be checked while the
/// restore reads them: no restored task runs before they passed too.
pub fn open_verified(location: &Path) -> Result<(SaveStateMap, DeferredFiles), ResumeError> {
    let verify = || -> Result<(SaveStateMap, DeferredFiles), HandoverError> {
        let map = SaveStateMap::open(location)?;
        let (_, pages) = map.verify_split(is_memory_pages)?;
        Ok((map, pages))
    };
    verify().map_err(|source| ResumeError::Verify {
        path: location.to_path_buf(),
        source,
    })
}

/// Puts the carried files back first: restored processes reopen them by path.
pub fn put_back_files(map: &SaveStateMap, manifest: &Manifest) -> Result<(), ResumeError> {
    for carried in &manifest.carried_files {
        let put_back = || -> std::io::Result<()> {
            if let Some(parent) = carried.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(map.path_of(&carried.stored_as), &carried.path)?;
            std::fs::set_permissions(&carried.path, std::fs::Permissions::from_mode(carried.mode))?;
            std::os::unix::fs::chown(&carried.path, Some(carried.uid), Some(carried.gid))
        };
        put_back().map_err(|source| ResumeError::CarriedFile {
            path: carried.path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The directory a tree is restored from (see [`restore_dir`]), made in `scratch`: its clock
/// record advanced by the time since the tree's clocks were read at the freeze (see
/// [`timens`]) to `now_realtime_ns`, the windows of its unscaled TCP connections pinned.
/// Returns it with that time.
pub fn prepare_images(
    map: &SaveStateMap,
    manifest: &Manifest,
    tree: &PreservedTree,
    scratch: &Path,
    now_realtime_ns: u64,
) -> Result<(PathBuf, u64), ResumeError> {
    let images = restore_dir(&map.path_of(&tree.images), scratch).map_err(|source| {
        ResumeError::Scratch {
            path: scratch.to_path_buf(),
            source,
        }
    })?;
    let recorded = if tree.clocks_realtime_ns > 0 {
        tree.clocks_realtime_ns
    } else {
        manifest.clocks.realtime_ns
    };
    let elapsed = timens::elapsed_since(recorded, now_realtime_ns);
    let images_error = |source| ResumeError::Images {
        tree: tree.name.clone(),
        source,
    };
    overboot_checkpoint::images::advance_clocks(&images, elapsed).map_err(images_error)?;
    let pinned =
        overboot_checkpoint::images::pin_unscaled_windows(&images).map_err(images_error)?;
    if !pinned.is_empty() {
        tracing::info!(tree = %tree.name, connections = pinned.len(), "pinned unscaled TCP windows");
    }
    Ok((images, elapsed))
}

/// The restore jobs of every tree, each with its own scratch directory under the update's, and
/// how far each tree's clocks were advanced. A rollback brings every page back before the
/// tasks run: it is the safe way home. A tree with little memory is restored whole too: its
/// server would cost more than it saves (see [`super::lazy::MIN_SERVED_BYTES`]).
pub fn jobs(
    map: &SaveStateMap,
    manifest: &Manifest,
    options: &ResumeOptions,
    id: &str,
    now_realtime_ns: &mut dyn FnMut() -> u64,
) -> Result<(Vec<TreeJob>, BTreeMap<String, i64>), ResumeError> {
    let mut clock_advance_ns = BTreeMap::new();
    let mut jobs = Vec::new();
    for tree in &manifest.trees {
        let scratch = options.work_dir.join(id).join(&tree.name);
        let now = now_realtime_ns();
        let (images, elapsed) = prepare_images(map, manifest, tree, &scratch, now)?;
        clock_advance_ns.insert(
            tree.name.clone(),
            i64::try_from(elapsed).unwrap_or(i64::MAX),
        );
        let mut lazy = manifest.lazy_restore && !options.rollback;
        if lazy {
            let bytes = super::lazy::page_bytes(&images);
            if bytes < super::lazy::MIN_SERVED_BYTES {
                tracing::info!(tree = %tree.name, bytes, "little memory: restoring every page now");
                lazy = false;
            }
        }
        // With `lazy`, the page server flags the pre-copied holes lazy in these copies of the
        // pagemaps before it listens (see `overboot_pageserver`).
        jobs.push(TreeJob {
            name: tree.name.clone(),
            images,
            // CRIU deletes its lock table when the tasks resume (none is there when the lock
            // was off).
            lock: NetworkLockMode::Nftables,
            inject_failure: options.fault == Some(Fault::RestoreFail(tree.name.clone())),
            log_level: manifest
                .criu_log_level
                .map_or(overboot_checkpoint::DEFAULT_LOG_LEVEL, i32::from),
            lazy,
            journal_streams: tree.journal_streams.clone(),
        });
    }
    Ok((jobs, clock_advance_ns))
}
