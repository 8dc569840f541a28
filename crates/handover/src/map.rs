//! The Save State Map on disk: a directory the old kernel writes after the dump and the resume
//! agent opens in the new kernel, wherever a store put it (`/overboot/ssm` from an initrd, or a
//! persistent directory).
//!
//! ```text
//! MAP_DIR/                         0700, root only
//! ├── HEADER                       0600  52 bytes, see crate::header:
//! │                                      "OVBTSSM\0" | major u16 | minor u16 | len u64 | sha256
//! ├── manifest.json                0600  crate::manifest::Manifest; its length and
//! │                                      SHA-256 are pinned by HEADER
//! ├── trees/<name>/...             0600  CRIU images of one preserved tree
//! │                                      (PreservedTree::images; written by the engine)
//! ├── files/<system path>          0600  carried files (CarriedFile::stored_as)
//! └── ...                                anything else listed in manifest.files
//! ```
//!
//! The `trees/` and `files/` names are conventions of the caller: the map only requires that
//! every regular file except `HEADER` and `manifest.json` is listed in `manifest.files` with its
//! size and digest (the manifest's `file_digest`), and that nothing else (unlisted file, symlink, fifo) is in the directory.
//!
//! Write order is the commit protocol: images first, then `manifest.json`, then `HEADER`. A map
//! without `HEADER` is unfinished and [`SaveStateMap::open`] refuses it.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::sha256_bytes;
use crate::error::HandoverError;
use crate::header::{MapHeader, HEADER_LEN};
use crate::manifest::{Manifest, PreservedTree, RESERVED_NAMES};
use crate::writer::MapWriter;

/// File name of the binary header in a map directory.
pub const HEADER_FILE: &str = "HEADER";
/// File name of the manifest in a map directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Permission bits of map directories.
pub const DIR_MODE: u32 = 0o700;
/// Permission bits of map files.
pub const FILE_MODE: u32 = 0o600;
/// Largest manifest accepted when opening (guards the allocation).
const MAX_MANIFEST_LEN: u64 = 64 << 20;

/// A finished, opened Save State Map.
#[derive(Debug, Clone)]
pub struct SaveStateMap {
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Manifest,
    /// The exact bytes of `manifest.json` that `header` pins.
    pub(crate) manifest_json: Vec<u8>,
    pub(crate) header: [u8; HEADER_LEN],
}

impl SaveStateMap {
    /// Starts a new map in `dir`, created with mode 0700 (parents too, if missing). An existing
    /// directory is accepted (and set to 0700) unless it already holds a map.
    pub fn create(dir: impl AsRef<Path>) -> Result<MapWriter, HandoverError> {
        let dir = dir.as_ref().to_path_buf();
        make_dir_all(&dir)?;
        for name in RESERVED_NAMES {
            if dir.join(name).symlink_metadata().is_ok() {
                return Err(HandoverError::AlreadyFinished { path: dir });
            }
        }
        Ok(MapWriter::new(dir))
    }

    /// Opens a finished map: checks the header (magic, major), that `manifest.json` has the
    /// length and SHA-256 the header pins, parses and validates the manifest. Image files are
    /// not read; see [`SaveStateMap::verify_files`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, HandoverError> {
        let dir = dir.as_ref().to_path_buf();
        let header_path = dir.join(HEADER_FILE);
        let header_bytes =
            fs::read(&header_path).map_err(HandoverError::io("read", &header_path))?;
        let header = MapHeader::decode(&header_bytes)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let actual_len = fs::metadata(&manifest_path)
            .map_err(HandoverError::io("stat", &manifest_path))?
            .len();
        if actual_len != header.manifest_len {
            return Err(HandoverError::ManifestLength {
                expected: header.manifest_len,
                actual: actual_len,
            });
        }
        if actual_len > MAX_MANIFEST_LEN {
            return Err(HandoverError::ManifestTooLarge { len: actual_len });
        }
        let manifest_json =
            fs::read(&manifest_path).map_err(HandoverError::io("read", &manifest_path))?;
        if manifest_json.len() as u64 != header.manifest_len {
            return Err(HandoverError::ManifestLength {
                expected: header.manifest_len,
                actual: manifest_json.len() as u64,
            });
        }
        let digest = sha256_bytes(&manifest_json);
        if digest != header.manifest_sha256 {
            return Err(HandoverError::ManifestDigest {
                expected: hex::encode(header.manifest_sha256),
                actual: hex::encode(digest),
            });
        }
        let manifest = Manifest::from_json(&manifest_json)?;
        if manifest.format != header.version {
            return Err(HandoverError::VersionMismatch {
                header: header.version,
                manifest: manifest.format,
            });
        }
        manifest.validate()?;
        check_references(&manifest)?;
        let mut encoded = [0u8; HEADER_LEN];
        encoded.copy_from_slice(&header_bytes);
        tracing::debug!(dir = %dir.display(), files = manifest.files.len(), "opened save state map");
        Ok(Self {
            dir,
            manifest,
            manifest_json,
            header: encoded,
        })
    }

    /// The map directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Absolute path of a file of the map, by its relative path.
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The preserved tree called `name`.
    pub fn tree(&self, name: &str) -> Result<&PreservedTree, HandoverError> {
        self.manifest
            .tree(name)
            .ok_or_else(|| HandoverError::UnknownTree {
                name: name.to_owned(),
            })
    }

    /// The exact bytes of `manifest.json`.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_json
    }

    /// The exact bytes of `HEADER`.
    pub fn header_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }
}

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

    #[test]
    fn create_makes_a_root_only_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/ssm");
        let writer = SaveStateMap::create(&dir).unwrap();
        assert_eq!(writer.dir(), dir);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, DIR_MODE);
    }
}
