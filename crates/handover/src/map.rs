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

use std::fs;
use std::path::{Path, PathBuf};

use crate::digest::sha256_bytes;
use crate::error::HandoverError;
use crate::header::{MapHeader, HEADER_LEN};
use crate::layout::check_references;
use crate::manifest::{Manifest, PreservedTree};

pub use crate::layout::{DIR_MODE, FILE_MODE, HEADER_FILE, MANIFEST_FILE};

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
