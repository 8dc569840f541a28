//! The small trait the orchestration drives, and the plain values it exchanges.
//!
//! `update` calls [`Engine::pre_dump`] while services run, [`Engine::dump`] after the freeze,
//! and the resume agent calls [`Engine::restore`] in the new kernel. Behind the trait is CRIU
//! ([`crate::Criu`]); unit tests of the orchestration put a mock there.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;
use crate::request::{DumpRequest, RestoreRequest};
use crate::rpc::{CriuFeatures, CriuVersionMsg};

/// A CRIU action-script hook reached during a request: `network-lock`, `network-unlock`,
/// `post-dump`, `pre-restore`, `setup-namespaces`, `post-restore`, `pre-resume`, `post-resume`...
///
/// CRIU stops and waits until the handler returns; an `Err` makes CRIU abort the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The hook's name, as CRIU's `--action-script` would see it in `CRTOOLS_SCRIPT_ACTION`.
    pub script: String,
    /// The restored root's pid (`setup-namespaces`, `post-restore`).
    pub pid: Option<i32>,
}

/// The handler called for each [`Notification`]: `Err(reason)` makes CRIU abort.
pub type NotifyHandler<'a> = dyn FnMut(&Notification) -> Result<(), String> + 'a;

/// A handler that accepts every notification.
pub fn accept_all(_: &Notification) -> Result<(), String> {
    Ok(())
}

/// What a dump or pre-dump produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DumpOutcome {
    /// CRIU's `dump.restored` (set when a self-dump was restored; false for our dumps).
    pub restored: bool,
    /// The notifications seen, in order.
    pub notifications: Vec<String>,
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// The restored tree's root pid (in CRIU's pid namespace: ours).
    pub pid: i32,
    /// The notifications seen, in order.
    pub notifications: Vec<String>,
}

/// CRIU's version, from a VERSION request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuVersion {
    /// e.g. 3
    pub major: i32,
    /// e.g. 17
    pub minor: i32,
    /// e.g. 1
    pub sublevel: Option<i32>,
    /// Extra number of development builds.
    pub extra: Option<i32>,
    /// Git id of development builds.
    pub gitid: Option<String>,
    /// Release name.
    pub name: Option<String>,
}

impl CriuVersion {
    /// `(major, minor, sublevel)` for comparisons.
    pub fn triple(&self) -> (i32, i32, i32) {
        (self.major, self.minor, self.sublevel.unwrap_or(0))
    }
}

impl From<CriuVersionMsg> for CriuVersion {
    fn from(v: CriuVersionMsg) -> Self {
        Self {
            major: v.major_number,
            minor: v.minor_number,
            sublevel: v.sublevel,
            extra: v.extra,
            gitid: v.gitid,
            name: v.name,
        }
    }
}

impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(s) = self.sublevel {
            write!(f, ".{s}")?;
        }
        if let Some(g) = &self.gitid {
            write!(f, " ({g})")?;
        }
        Ok(())
    }
}

/// Optional features that work with this CRIU on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Features {
    /// Soft-dirty memory tracking: iterative pre-dump works.
    pub mem_track: bool,
    /// userfaultfd lazy pages.
    pub lazy_pages: bool,
    /// pidfd store (pid reuse detection across pre-dumps).
    pub pidfd_store: bool,
}

impl From<CriuFeatures> for Features {
    fn from(f: CriuFeatures) -> Self {
        Self {
            mem_track: f.mem_track.unwrap_or(false),
            lazy_pages: f.lazy_pages.unwrap_or(false),
            pidfd_store: f.pidfd_store.unwrap_or(false),
        }
    }
}

/// What `plan` wants to know about the engine before promising anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// CRIU's version.
    pub version: CriuVersion,
    /// Optional features.
    pub features: Features,
    /// Why `criu check` failed, when it did (with the log's error lines).
    pub check_error: Option<String>,
}

/// The checkpoint/restore engine as the orchestration sees it.
pub trait Engine {
    /// The engine's version.
    fn version(&mut self) -> Result<CriuVersion, CheckpointError>;
    /// Whether the kernel has what the engine needs (`criu check`).
    fn check(&mut self) -> Result<(), CheckpointError>;
    /// Checkpoint a tree; `notify` is called at each hook (e.g. `network-lock`).
    fn dump(
        &mut self,
        req: &DumpRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError>;
    /// Copy a running tree's memory and start tracking changes, so a later [`Engine::dump`]
    /// with `parent_images` pointing here and `track_mem` only writes what changed.
    fn pre_dump(
        &mut self,
        req: &DumpRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError>;
    /// Restore a tree; returns its root pid.
    fn restore(
        &mut self,
        req: &RestoreRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<RestoreOutcome, CheckpointError>;
}
