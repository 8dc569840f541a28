//! Why the agent could not bring the trees back, with the exit class of each reason (its
//! supervisor rolls back on any of them).

use std::path::PathBuf;

use overboot_handover::HandoverError;

use super::restore::TreeFailure;
use crate::model::report::ReportError;

/// Why the agent could not bring the trees back.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The map could not be located from the command line.
    #[error("cannot locate the Save State Map from the kernel command line")]
    Locate(#[source] HandoverError),
    /// The map is corrupt, incomplete or of an unknown version: no restored task ran (a bad
    /// memory page file is found while the trees are restored, and aborts them all).
    #[error("the Save State Map at {path} failed verification; no restored task ran")]
    Verify {
        path: PathBuf,
        #[source]
        source: HandoverError,
    },
    /// A preserved pid is in use in this kernel.
    #[error("pid {pid} of {tree} is taken in this kernel by {comm:?}; nothing was restored")]
    PidTaken {
        tree: String,
        pid: i32,
        comm: String,
    },
    /// A carried file could not be put back.
    #[error("cannot put back carried file {path}")]
    CarriedFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Restoring a tree failed (every tree was then aborted before running).
    #[error("restore of {tree} failed; no restored task ran")]
    Restore {
        tree: String,
        #[source]
        source: Box<TreeFailure>,
    },
    /// The restore directory could not be prepared.
    #[error("preparing {path} for the restore")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image of a tree could not be prepared (clock record, TCP stream record).
    #[error("preparing the images of {tree}")]
    Images {
        tree: String,
        #[source]
        source: overboot_checkpoint::images::ImageError,
    },
    /// The network configuration could not be re-applied.
    #[error("re-applying the network configuration under the lock")]
    Network(#[from] crate::host::network::NetworkError),
    /// A restored process is not alive.
    #[error("{tree}: restored pid {pid} is not alive")]
    NotAlive { tree: String, pid: i32 },
    /// Writing the report failed.
    #[error("report")]
    Report(#[from] ReportError),
}

impl ResumeError {
    /// The exit class.
    pub fn class(&self) -> crate::ExitClass {
        use crate::ExitClass as E;
        match self {
            ResumeError::Locate(_) | ResumeError::Verify { .. } => E::Handover,
            ResumeError::Report(_) => E::Internal,
            _ => E::Restore,
        }
    }
}
