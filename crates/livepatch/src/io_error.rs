//! The filesystem error the steps of a patch's build and the runtime share: an i/o error and
//! the path it happened at. Each step's error carries it as its `Io` variant.

use std::path::{Path, PathBuf};

/// An i/o error at `path`.
#[derive(Debug, thiserror::Error)]
#[error("i/o at {path}")]
pub struct IoError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed there.
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: an i/o error at `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError {
        path: path.to_path_buf(),
        source,
    }
}
