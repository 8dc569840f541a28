//! The error of the handover crate: what can go wrong writing, checking, publishing or finding a
//! Save State Map. Verification errors name the exact file, since the resume agent decides from
//! them whether to restore, roll back one tree, or roll back everything.

use std::io;
use std::path::PathBuf;

use crate::cmdline::StoreError;
use crate::cpio::CpioError;
use crate::header::HeaderError;
use crate::manifest::{FormatVersion, ManifestError};

/// Errors of the Save State Map.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A file system operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done (`read`, `create`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `HEADER` is missing its magic, has the wrong size or an unknown major.
    #[error("invalid map header")]
    Header(#[from] HeaderError),
    /// `manifest.json` cannot be parsed or is inconsistent.
    #[error("invalid manifest")]
    Manifest(#[from] ManifestError),
    /// `manifest.json` does not have the length the header records (e.g. truncated).
    #[error("manifest.json is {actual} bytes, the header says {expected}")]
    ManifestLength {
        /// Length recorded in the header.
        expected: u64,
        /// Length on disk.
        actual: u64,
    },
    /// `manifest.json` is larger than any manifest this build writes.
    #[error("manifest.json is {len} bytes, larger than a manifest can be")]
    ManifestTooLarge {
        /// Its length.
        len: u64,
    },
    /// `manifest.json` does not have the digest the header records.
    #[error("manifest.json has sha256 {actual}, the header says {expected}")]
    ManifestDigest {
        /// Digest recorded in the header.
        expected: String,
        /// Digest of the bytes on disk.
        actual: String,
    },
    /// The header and the manifest disagree on the format version.
    #[error("header says format {header}, manifest says {manifest}")]
    VersionMismatch {
        /// Version in `HEADER`.
        header: FormatVersion,
        /// Version in `manifest.json`.
        manifest: FormatVersion,
    },
    /// A file listed in the manifest is not in the map.
    #[error("image {path} is missing")]
    ImageMissing {
        /// Relative path in the map.
        path: String,
    },
    /// A file has the wrong length.
    #[error("image {path} is {actual} bytes, expected {expected}")]
    ImageSize {
        /// Relative path in the map.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A file has the wrong content.
    #[error("image {path} is corrupt: {algorithm} {actual}, expected {expected}")]
    ImageCorrupt {
        /// Relative path in the map.
        path: String,
        /// The manifest's digest algorithm.
        algorithm: crate::manifest::DigestAlgorithm,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the content found.
        actual: String,
    },
    /// A file is in the map directory but not in the manifest.
    #[error("{path} is in the map directory but not in the manifest")]
    Unlisted {
        /// Relative path in the map.
        path: String,
    },
    /// Something other than a regular file or directory (symlink, fifo, ...) is in the map.
    #[error("{path} in the map is neither a regular file nor a directory")]
    NotRegular {
        /// Relative path in the map.
        path: String,
    },
    /// A name in the map directory is not UTF-8 and cannot be listed in the manifest.
    #[error("{path:?} in the map has a name that is not UTF-8")]
    NonUtf8Name {
        /// The path as found.
        path: PathBuf,
    },
    /// The manifest refers to a file or image directory the map does not hold.
    #[error("the manifest refers to {path}, which the map does not hold")]
    Dangling {
        /// Relative path in the map.
        path: String,
    },
    /// No preserved tree has this name.
    #[error("no preserved tree named {name:?} in the map")]
    UnknownTree {
        /// The name asked for.
        name: String,
    },
    /// A file was added to a map twice, or over a file already there.
    #[error("{path} is already in the map")]
    Duplicate {
        /// Relative path in the map.
        path: String,
    },
    /// The directory already holds a finished map (it has a HEADER or manifest.json).
    #[error("{path} already holds a Save State Map")]
    AlreadyFinished {
        /// The map directory.
        path: PathBuf,
    },
    /// Writing or reading a cpio archive failed.
    #[error("cpio archive")]
    Cpio(#[from] CpioError),
    /// A store refused its configuration or the kernel command line is wrong.
    #[error("handover store")]
    Store(#[from] StoreError),
}

impl HandoverError {
    /// Shorthand for [`HandoverError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
