//! Verifying the image files of an opened Save State Map, in the new kernel before anything is
//! restored (all of it), or for one tree (rollback restores trees one at a time).
//!
//! Checks run cheapest first, so a broken map is refused quickly: special files, missing files,
//! sizes, unlisted files, then the digest of every file (in parallel). The error names the first
//! bad file in path order. [`SaveStateMap::verify_split`] leaves the digests of some files (the
//! raw memory pages, which nothing interprets) for later, so that their check can run while
//! the restore reads them; the caller must not let a restored task run before
//! [`DeferredFiles::verify`] succeeded.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::digest::{hash_file, parallel_map};
use crate::error::HandoverError;
use crate::layout::{is_under, walk, Found};
use crate::manifest::{FileEntry, RESERVED_NAMES};
use crate::map::SaveStateMap;

/// What a successful verification covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files whose size and SHA-256 matched.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Files whose digests [`SaveStateMap::verify_split`] left unchecked (their presence and
/// sizes were checked).
#[derive(Debug, Clone)]
pub struct DeferredFiles {
    dir: PathBuf,
    algorithm: crate::manifest::DigestAlgorithm,
    files: Vec<(String, FileEntry)>,
}

impl DeferredFiles {
    /// Their total size.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, e)| e.size).sum()
    }

    /// Checks their digests now.
    pub fn verify(&self) -> Result<VerifyReport, HandoverError> {
        let span = tracing::info_span!("handover_verify_deferred", dir = %self.dir.display());
        let _entered = span.enter();
        let files: Vec<(&String, &FileEntry)> = self.files.iter().map(|(r, e)| (r, e)).collect();
        hash_and_compare(&self.dir, self.algorithm, &files)
    }

    /// Checks their digests now, except the [`crate::CHUNK_BYTES`] pieces for which
    /// `skip(file, piece)` holds: pieces someone checks before using them (the lazy restore's
    /// page server, against the same piece digests). A file without piece digests (a map
    /// before format 3.1, a small file), or with none to skip, is checked whole.
    pub fn verify_except(
        &self,
        skip: impl Fn(&str, usize) -> bool + Sync,
    ) -> Result<VerifyReport, HandoverError> {
        let span = tracing::info_span!("handover_verify_deferred", dir = %self.dir.display());
        let _entered = span.enter();
        let (pieces, whole): (Vec<_>, Vec<_>) = self.files.iter().partition(|(rel, e)| {
            e.chunks.len() as u64 == e.size.div_ceil(crate::CHUNK_BYTES)
                && (0..e.chunks.len()).any(|i| skip(rel, i))
        });
        let whole: Vec<(&String, &FileEntry)> = whole.into_iter().map(|(r, e)| (r, e)).collect();
        let mut report = hash_and_compare(&self.dir, self.algorithm, &whole)?;
        let checked = parallel_map(&pieces, |(rel, entry)| {
            check_pieces(&self.dir, rel, entry, |i| skip(rel, i))
        });
        for result in checked {
            report.files += 1;
            report.bytes += result?;
        }
        Ok(report)
    }
}

/// Checks the pieces of `rel` that `skip` leaves; returns the bytes checked.
fn check_pieces(
    dir: &std::path::Path,
    rel: &str,
    entry: &FileEntry,
    skip: impl Fn(usize) -> bool,
) -> Result<u64, HandoverError> {
    let path = dir.join(rel);
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => HandoverError::ImageMissing { path: rel.into() },
        _ => HandoverError::io("open", &path)(e),
    })?;
    let bytes = crate::mapped::map_read_only(&file).map_err(HandoverError::io("map", &path))?;
    let mut checked = 0;
    for (i, (piece, expected)) in bytes
        .chunks(crate::digest::CHUNK_LEN)
        .zip(&entry.chunks)
        .enumerate()
    {
        if skip(i) {
            continue;
        }
        let actual = crate::chunk_digest(piece);
        if actual != *expected {
            let start = i as u64 * crate::CHUNK_BYTES;
            return Err(HandoverError::ImageCorrupt {
                path: format!("{rel} (bytes {start}..{})", start + piece.len() as u64),
                algorithm: crate::DigestAlgorithm::Xxh64,
                expected: expected.clone(),
                actual,
            });
        }
        checked += piece.len() as u64;
    }
    Ok(checked)
}

impl SaveStateMap {
    /// As [`Self::verify_files`], except that the digests of the files for which `defer`
    /// holds are left to the returned [`DeferredFiles`] (their presence and sizes are checked
    /// now).
    pub fn verify_split(
        &self,
        defer: impl Fn(&str) -> bool,
    ) -> Result<(VerifyReport, DeferredFiles), HandoverError> {
        let span = tracing::info_span!("handover_verify_split", dir = %self.dir.display());
        let _entered = span.enter();
        let expected = self.check_structure(None)?;
        let (later, now): (Vec<_>, Vec<_>) = expected.into_iter().partition(|(rel, _)| defer(rel));
        let report = hash_and_compare(&self.dir, self.manifest.file_digest, &now)?;
        let deferred = DeferredFiles {
            dir: self.dir.clone(),
            algorithm: self.manifest.file_digest,
            files: later
                .into_iter()
                .map(|(rel, entry)| (rel.clone(), entry.clone()))
                .collect(),
        };
        Ok((report, deferred))
    }

    /// Verifies every file of the map: each listed file is present with its size and SHA-256,
    /// and nothing unlisted is in the directory.
    pub fn verify_files(&self) -> Result<VerifyReport, HandoverError> {
        let span = tracing::info_span!("handover_verify", dir = %self.dir.display());
        let _entered = span.enter();
        self.verify_below(None)
    }

    /// Verifies only the files under the image directory of the tree called `tree_name`.
    pub fn verify_tree(&self, tree_name: &str) -> Result<VerifyReport, HandoverError> {
        let images = self.tree(tree_name)?.images.clone();
        let span = tracing::info_span!("handover_verify_tree", tree = tree_name);
        let _entered = span.enter();
        self.verify_below(Some(&images))
    }

    fn verify_below(&self, dir: Option<&str>) -> Result<VerifyReport, HandoverError> {
        let expected = self.check_structure(dir)?;
        hash_and_compare(&self.dir, self.manifest.file_digest, &expected)
    }

    /// Everything but the digests: no special file, every listed file present with its size,
    /// nothing unlisted. Returns the listed files below `dir` (all when `None`).
    fn check_structure(
        &self,
        dir: Option<&str>,
    ) -> Result<Vec<(&String, &FileEntry)>, HandoverError> {
        let found: BTreeMap<String, Found> = walk(&self.dir, dir.unwrap_or(""))?
            .into_iter()
            .filter(|(rel, _)| dir.is_some() || !RESERVED_NAMES.contains(&rel.as_str()))
            .collect();
        let expected: Vec<(&String, &FileEntry)> = self
            .manifest
            .files
            .iter()
            .filter(|(rel, _)| !matches!(dir, Some(d) if !is_under(rel, d)))
            .collect();

        if let Some((rel, _)) = found.iter().find(|(_, f)| **f == Found::Other) {
            return Err(HandoverError::NotRegular { path: rel.clone() });
        }
        for (rel, entry) in &expected {
            match found.get(rel.as_str()) {
                Some(Found::File { size }) if *size == entry.size => {}
                Some(Found::File { size }) => {
                    return Err(HandoverError::ImageSize {
                        path: (*rel).clone(),
                        expected: entry.size,
                        actual: *size,
                    })
                }
                _ => {
                    return Err(HandoverError::ImageMissing {
                        path: (*rel).clone(),
                    })
                }
            }
        }
        for (rel, f) in &found {
            if matches!(f, Found::File { .. }) && !self.manifest.files.contains_key(rel) {
                return Err(HandoverError::Unlisted { path: rel.clone() });
            }
        }
        Ok(expected)
    }
}

/// Hashes `files` (relative to `dir`, in parallel) and compares each with its entry; the error
/// names the first bad file in the order given.
fn hash_and_compare(
    dir: &std::path::Path,
    algorithm: crate::manifest::DigestAlgorithm,
    files: &[(&String, &FileEntry)],
) -> Result<VerifyReport, HandoverError> {
    let digests = parallel_map(files, |(rel, _)| {
        hash_file(&dir.join(rel.as_str()), algorithm, false)
    });
    let mut report = VerifyReport::default();
    for ((rel, entry), digest) in files.iter().zip(digests) {
        let digest = digest.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HandoverError::ImageMissing {
                path: (*rel).clone(),
            },
            _ => HandoverError::io("hash", dir.join(rel.as_str()))(e),
        })?;
        if digest.hex != entry.digest || digest.size != entry.size {
            return Err(HandoverError::ImageCorrupt {
                path: (*rel).clone(),
                algorithm,
                expected: entry.digest.clone(),
                actual: digest.hex,
            });
        }
        report.files += 1;
        report.bytes += digest.size;
    }
    tracing::info!(
        files = report.files,
        bytes = report.bytes,
        "save state map files verified"
    );
    Ok(report)
}
