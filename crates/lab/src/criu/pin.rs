//! What the lab pins of CRIU (the release, where its source comes from, what building it
//! needs) and the errors of fetching and building it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{self, HostError};
use crate::trixie::apt::AptError;

/// The environment variable that chooses the guests' CRIU: `pinned` (the default) or `distro`.
pub const ENGINE_VAR: &str = "OVERBOOT_LAB_CRIU";

/// The pinned release: the version of Debian's source package `criu` (in sid).
pub const VERSION: &str = "4.2.1-1";

/// The suite whose source packages the lab's list names.
pub const SOURCE_SUITE: &str = "sid";

/// What `make criu` needs, as Debian 12 and 13 name it (installed on the host for the Debian 12
/// build, in the build's copy of the tree for the Debian 13 one).
pub const BUILD_PACKAGES: &[&str] = &[
    "build-essential",
    "dpkg-dev",
    "libprotobuf-c-dev",
    "protobuf-c-compiler",
    "libprotobuf-dev",
    "protobuf-compiler",
    "libnl-3-dev",
    "libnl-route-3-dev",
    "libnet1-dev",
    "libbsd-dev",
    "libcap-dev",
    "libgnutls28-dev",
    "libnftables-dev",
    "uuid-dev",
    "pkg-config",
    "python3-protobuf",
];

/// Errors while fetching, building or choosing the lab's CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// `OVERBOOT_LAB_CRIU` names no engine.
    #[error("{ENGINE_VAR}={0:?}: expected `pinned` or `distro`")]
    UnknownEngine(String),
    /// The source package could not be fetched.
    #[error("fetching Debian's source package criu {VERSION}")]
    Source(#[source] AptError),
    /// A build step failed.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: HostError,
    },
    /// The binary built says another version than the one pinned.
    #[error("the CRIU built from {VERSION} says {said:?}")]
    Version { said: String },
    /// Filesystem error.
    #[error("CRIU build i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CriuError + '_ {
    move |source| CriuError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn step(what: &str, cmd: &mut Command) -> Result<String, CriuError> {
    host::run(cmd).map_err(|source| CriuError::Step {
        step: what.into(),
        source,
    })
}

/// The upstream release of [`VERSION`] (`4.2.1`), which the binary's `--version` names.
pub fn upstream_version() -> &'static str {
    VERSION
        .rsplit_once('-')
        .map_or(VERSION, |(upstream, _)| upstream)
}
