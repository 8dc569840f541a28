//! What a map directory is made of, below the map and the code that writes, checks and
//! publishes it: the names of its two fixed files, the modes of its files and directories, the
//! walk of its tree, the helpers that create and flush files the way the commit protocol needs,
//! and the check of the manifest's references against its listing. The layout itself is drawn
//! in [`crate::map`].

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::HandoverError;
use crate::manifest::Manifest;

/// File name of the binary header in a map directory.
pub const HEADER_FILE: &str = "HEADER";
/// File name of the manifest in a map directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Permission bits of map directories.
pub const DIR_MODE: u32 = 0o700;
/// Permission bits of map files.
pub const FILE_MODE: u32 = 0o600;

/// Checks that what the manifest refers to is listed: each carried file, and at least one file
/// under each tree's image directory.
pub(crate) fn check_references(manifest: &Manifest) -> Result<(), HandoverError> {
    for carried in &manifest.carried_files {
        if !manifest.files.contains_key(&carried.stored_as) {
            return Err(HandoverError::Dangling {
                path: carried.stored_as.clone(),
            });
        }
    }
    for tree in &manifest.trees {
        if !manifest.files.keys().any(|rel| is_under(rel, &tree.images)) {
            return Err(HandoverError::Dangling {
                path: tree.images.clone(),
            });
        }
    }
    Ok(())
}

/// Whether relative path `rel` lies below directory `dir` (both in map form, `a/b`).
pub(crate) fn is_under(rel: &str, dir: &str) -> bool {
    rel.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// What a walk of a map directory found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Dir,
    File { size: u64 },
    Other,
}

/// Lists everything below `root/start` (or `root` when `start` is empty), by path relative to
/// `root`, without following symlinks. A missing `start` directory yields nothing.
pub(crate) fn walk(root: &Path, start: &str) -> Result<Vec<(String, Found)>, HandoverError> {
    let mut out = Vec::new();
    let mut pending = vec![start.to_owned()];
    while let Some(rel_dir) = pending.pop() {
        let dir = if rel_dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel_dir)
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel_dir == start => {
                return Ok(out)
            }
            Err(e) => return Err(HandoverError::io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(HandoverError::io("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(HandoverError::NonUtf8Name { path: entry.path() });
            };
            let rel = if rel_dir.is_empty() {
                name.to_owned()
            } else {
                format!("{rel_dir}/{name}")
            };
            let meta = entry
                .metadata()
                .map_err(HandoverError::io("stat", entry.path()))?;
            let found = if meta.is_dir() {
                pending.push(rel.clone());
                Found::Dir
            } else if meta.is_file() {
                Found::File { size: meta.len() }
            } else {
                Found::Other
            };
            out.push((rel, found));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Creates `dir` and missing parents with mode 0700, and sets `dir` itself to 0700.
pub(crate) fn make_dir_all(dir: &Path) -> Result<(), HandoverError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(HandoverError::io("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(HandoverError::io("set mode of", dir))
}

/// Creates a new file with mode 0600 (refusing to overwrite).
pub(crate) fn create_file(path: &Path) -> Result<File, HandoverError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(HandoverError::io("create", path))?;
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(HandoverError::io("set mode of", path))?;
    Ok(file)
}

/// Writes a new 0600 file with `bytes` and flushes it to stable storage.
pub(crate) fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), HandoverError> {
    let mut file = create_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(HandoverError::io("write", path))
}

/// Flushes a directory's entries to stable storage.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), HandoverError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(HandoverError::io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_under_respects_component_boundaries() {
        assert!(is_under("trees/a/x.img", "trees/a"));
        assert!(!is_under("trees/ab/x.img", "trees/a"));
        assert!(!is_under("trees/a", "trees/a"));
    }
}
