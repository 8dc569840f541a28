//! Verifying the image files of an opened Save State Map, in the new kernel before anything is
//! restored (all of it), or for one tree (rollback restores trees one at a time).
//!
//! Checks run cheapest first, so a broken map is refused quickly: special files, missing files,
//! sizes, unlisted files, then SHA-256 of every file (in parallel). The error names the first
//! bad file in path order.

use std::collections::BTreeMap;
use std::io;

use crate::digest::{hash_file, parallel_map};
use crate::error::HandoverError;
use crate::manifest::{FileEntry, RESERVED_NAMES};
use crate::map::{is_under, walk, Found, SaveStateMap};

/// What a successful verification covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files whose size and SHA-256 matched.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

impl SaveStateMap {
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

        let algorithm = self.manifest.file_digest;
        let digests = parallel_map(&expected, |(rel, _)| {
            hash_file(&self.path_of(rel), algorithm)
        });
        let mut report = VerifyReport::default();
        for ((rel, entry), digest) in expected.iter().zip(digests) {
            let digest = digest.map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HandoverError::ImageMissing {
                    path: (*rel).clone(),
                },
                _ => HandoverError::io("hash", self.path_of(rel))(e),
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
            "save state map verified"
        );
        Ok(report)
    }
}
