//! Writing a Save State Map in the old kernel, after the dump: the caller adds files (copies, or
//! images the engine wrote into the map directory itself), then [`MapWriter::finish`] hashes
//! them all into the manifest and commits `manifest.json` and `HEADER` (layout: [`crate::map`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{hash_file, parallel_map, sha256_bytes};
use crate::error::HandoverError;
use crate::header::MapHeader;
use crate::layout::{
    check_references, create_file, is_under, make_dir_all, sync_dir, walk, write_file_synced,
    Found, FILE_MODE, HEADER_FILE, MANIFEST_FILE,
};
use crate::manifest::CURRENT_DIGEST;
use crate::manifest::{
    check_map_path, CarriedFile, FileEntry, Manifest, CURRENT_FORMAT, RESERVED_NAMES,
};
use crate::map::SaveStateMap;

// `SaveStateMap::create` lives beside the writer it returns, so that the map module, whose
// finished map the writer builds, needs nothing of the writer.
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
}

/// A map being written; obtained from [`SaveStateMap::create`].
#[derive(Debug)]
pub struct MapWriter {
    dir: PathBuf,
    listed: BTreeSet<String>,
    /// Files hashed ahead of [`Self::finish`] by [`Self::seal_dir`] (pre-copy images written
    /// while the services still ran), with their entries.
    sealed: BTreeMap<String, FileEntry>,
}

impl MapWriter {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            listed: BTreeSet::new(),
            sealed: BTreeMap::new(),
        }
    }

    /// The map directory (the engine may write images below it, then [`Self::adopt_tree`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the subdirectory `rel` (and parents) with mode 0700; returns its absolute path.
    pub fn create_dir(&self, rel: &str) -> Result<PathBuf, HandoverError> {
        check_map_path(rel)?;
        let path = self.dir.join(rel);
        make_dir_all(&path)?;
        Ok(path)
    }

    /// Copies `src` into the map as `rel` (mode 0600); returns the bytes copied.
    pub fn add_file_from(&mut self, src: &Path, rel: &str) -> Result<u64, HandoverError> {
        let dst = self.prepare(rel)?;
        let mut input = File::open(src).map_err(HandoverError::io("open", src))?;
        let mut output = create_file(&dst).map_err(|e| self.duplicate_or(rel, e))?;
        let copied =
            io::copy(&mut input, &mut output).map_err(HandoverError::io("copy to", &dst))?;
        self.listed.insert(rel.to_owned());
        Ok(copied)
    }

    /// Writes `bytes` into the map as `rel` (mode 0600): logs, nftables tables, ...
    pub fn add_bytes(&mut self, rel: &str, bytes: &[u8]) -> Result<(), HandoverError> {
        let dst = self.prepare(rel)?;
        let mut output = create_file(&dst).map_err(|e| self.duplicate_or(rel, e))?;
        output
            .write_all(bytes)
            .map_err(HandoverError::io("write", &dst))?;
        self.listed.insert(rel.to_owned());
        Ok(())
    }

    /// Copies the file at absolute path `src` into the map as `rel` and returns the manifest
    /// entry that puts it back with the same mode and owner.
    pub fn carry_file(&mut self, src: &Path, rel: &str) -> Result<CarriedFile, HandoverError> {
        let meta = fs::metadata(src).map_err(HandoverError::io("stat", src))?;
        self.add_file_from(src, rel)?;
        Ok(CarriedFile {
            path: src.to_path_buf(),
            stored_as: rel.to_owned(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// Lists every regular file already written below `rel_dir` of the map (e.g. the CRIU
    /// images of one tree) and sets them to mode 0600, their directories to 0700. Symlinks and
    /// special files are refused. Returns the number of files adopted.
    pub fn adopt_tree(&mut self, rel_dir: &str) -> Result<usize, HandoverError> {
        check_map_path(rel_dir)?;
        let root = self.dir.join(rel_dir);
        let meta = root
            .symlink_metadata()
            .map_err(HandoverError::io("stat", &root))?;
        if !meta.is_dir() {
            return Err(HandoverError::NotRegular {
                path: rel_dir.to_owned(),
            });
        }
        make_dir_all(&root)?;
        let mut adopted = 0;
        for (rel, found) in walk(&self.dir, rel_dir)? {
            let path = self.dir.join(&rel);
            match found {
                Found::Dir => make_dir_all(&path)?,
                Found::File { .. } => {
                    check_map_path(&rel)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE))
                        .map_err(HandoverError::io("set mode of", &path))?;
                    if self.listed.insert(rel) {
                        adopted += 1;
                    }
                }
                Found::Other => return Err(HandoverError::NotRegular { path: rel }),
            }
        }
        Ok(adopted)
    }

    /// Adopts every file below `rel_dir` (as [`Self::adopt_tree`]) and hashes them now, so that
    /// [`Self::finish`] does not: for images written ahead of the freeze (pre-copy), whose
    /// hashing then stays out of the blackout. `finish` still checks that each sealed file has
    /// the size it had when sealed and hashes it again if not. Returns the files' total bytes.
    pub fn seal_dir(&mut self, rel_dir: &str) -> Result<u64, HandoverError> {
        self.adopt_tree(rel_dir)?;
        let files: Vec<String> = self
            .listed
            .iter()
            .filter(|rel| is_under(rel, rel_dir) && !self.sealed.contains_key(*rel))
            .cloned()
            .collect();
        let digests = parallel_map(&files, |rel| {
            hash_file(&self.dir.join(rel.as_str()), CURRENT_DIGEST, true)
        });
        let mut bytes = 0;
        for (rel, digest) in files.into_iter().zip(digests) {
            let digest = digest.map_err(HandoverError::io("hash", self.dir.join(&rel)))?;
            bytes += digest.size;
            self.sealed.insert(
                rel,
                FileEntry {
                    size: digest.size,
                    digest: digest.hex,
                    chunks: digest.chunks,
                },
            );
        }
        Ok(bytes)
    }

    /// Forgets every file below `rel_dir` and removes the directory (a pre-copy round that
    /// failed half-way).
    pub fn discard_dir(&mut self, rel_dir: &str) -> Result<(), HandoverError> {
        check_map_path(rel_dir)?;
        self.listed.retain(|rel| !is_under(rel, rel_dir));
        self.sealed.retain(|rel, _| !is_under(rel, rel_dir));
        let path = self.dir.join(rel_dir);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(HandoverError::io("remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Hashes every listed file into `manifest.files` (replacing what was there), sets the
    /// format to [`CURRENT_FORMAT`], checks the manifest against the directory (nothing
    /// unlisted, nothing dangling), then writes `manifest.json` and, last, `HEADER`.
    pub fn finish(self, mut manifest: Manifest) -> Result<SaveStateMap, HandoverError> {
        let span = tracing::info_span!("handover_finish", dir = %self.dir.display());
        let _entered = span.enter();
        for (rel, found) in walk(&self.dir, "")? {
            match found {
                Found::Dir => {}
                Found::Other => return Err(HandoverError::NotRegular { path: rel }),
                Found::File { .. } if self.listed.contains(&rel) => {}
                Found::File { .. } => return Err(HandoverError::Unlisted { path: rel }),
            }
        }
        manifest.files.clear();
        let mut listed: Vec<&String> = Vec::new();
        for rel in &self.listed {
            let still = self.sealed.get(rel).filter(|entry| {
                fs::metadata(self.dir.join(rel.as_str())).is_ok_and(|m| m.len() == entry.size)
            });
            match still {
                Some(entry) => {
                    manifest.files.insert(rel.clone(), entry.clone());
                }
                None => listed.push(rel),
            }
        }
        let digests = parallel_map(&listed, |rel| {
            hash_file(&self.dir.join(rel.as_str()), CURRENT_DIGEST, true)
        });
        for (rel, digest) in listed.into_iter().zip(digests) {
            let digest = digest.map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HandoverError::ImageMissing { path: rel.clone() },
                _ => HandoverError::io("hash", self.dir.join(rel.as_str()))(e),
            })?;
            let entry = FileEntry {
                size: digest.size,
                digest: digest.hex,
                chunks: digest.chunks,
            };
            manifest.files.insert(rel.clone(), entry);
        }
        manifest.format = CURRENT_FORMAT;
        manifest.file_digest = CURRENT_DIGEST;
        manifest.validate()?;
        check_references(&manifest)?;

        let manifest_json = manifest.to_json()?;
        let header = MapHeader::for_manifest(&manifest_json, sha256_bytes(&manifest_json)).encode();
        write_file_synced(&self.dir.join(MANIFEST_FILE), &manifest_json)?;
        write_file_synced(&self.dir.join(HEADER_FILE), &header)?;
        sync_dir(&self.dir)?;
        let bytes: u64 = manifest.files.values().map(|f| f.size).sum();
        tracing::info!(
            files = manifest.files.len(),
            bytes,
            "save state map written"
        );
        Ok(SaveStateMap {
            dir: self.dir,
            manifest,
            manifest_json,
            header,
        })
    }

    /// Checks `rel`, refuses it if already listed, creates its parent directories.
    fn prepare(&self, rel: &str) -> Result<PathBuf, HandoverError> {
        check_map_path(rel)?;
        if self.listed.contains(rel) {
            return Err(HandoverError::Duplicate {
                path: rel.to_owned(),
            });
        }
        let dst = self.dir.join(rel);
        if let Some(parent) = rel.rsplit_once('/').map(|(parent, _)| parent) {
            make_dir_all(&self.dir.join(parent))?;
        }
        Ok(dst)
    }

    /// Turns "file exists" into [`HandoverError::Duplicate`].
    fn duplicate_or(&self, rel: &str, error: HandoverError) -> HandoverError {
        match error {
            HandoverError::Io { ref source, .. }
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                HandoverError::Duplicate {
                    path: rel.to_owned(),
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DIR_MODE;

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
