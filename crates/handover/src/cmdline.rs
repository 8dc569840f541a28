//! The kernel command-line parameter that tells the new kernel where its map is,
//! `overboot.handover=<scheme>:<absolute path>` (the stores and the parsing: [`crate::store`]):
//! its name, the stores it can name, and what is wrong when a store refuses its configuration
//! or the parameter does not parse. It sits below the crate's error, which wraps
//! [`StoreError`], and below the stores, which return both.

use std::path::PathBuf;

/// Name of the kernel command-line parameter.
pub const CMDLINE_KEY: &str = "overboot.handover";

/// Which store a map came through, as its command-line parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `initrd:` — unpacked from the new kernel's initrd (RAM).
    Initrd,
    /// `dir:` — a directory on a file system both kernels mount.
    Dir,
}

/// Errors of store configuration and of the command-line parameter.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The parameter names a store this build does not know.
    #[error("unknown handover scheme {scheme:?} (known: initrd, dir)")]
    UnknownScheme {
        /// The scheme found.
        scheme: String,
    },
    /// The parameter is not `<scheme>:<absolute path>`.
    #[error("malformed {CMDLINE_KEY} value {value:?}: {reason}")]
    MalformedParam {
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path cannot be passed on a kernel command line (relative, spaces, quotes, non-UTF-8).
    #[error("{path:?} cannot be passed on the kernel command line: {reason}")]
    NotCmdlineSafe {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory store's destination already exists.
    #[error("{path} already exists; remove it or choose another directory")]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
}
