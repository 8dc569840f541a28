//! What the agent is told: the command line naming the map, where state and scratch go, an
//! injected fault, whether this boot is a rollback.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::fault::Fault;

/// Options of the agent.
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// The kernel command line to read the map location from (`/proc/cmdline`).
    pub cmdline: String,
    /// Persistent state directory.
    pub state_dir: PathBuf,
    /// Scratch space in RAM for the restore (`/run/overboot`).
    pub work_dir: PathBuf,
    /// A fault to inject (tests only; from the kernel command line).
    pub fault: Option<Fault>,
    /// This boot is a rollback onto the old kernel.
    pub rollback: bool,
    /// This boot came back on the old kernel through the firmware after the new kernel never
    /// reached the agent (`overboot resume --recover`, whose command line says so; `rollback`
    /// is set too).
    pub recovered: bool,
    /// How long a directory store's map may take to appear: its file system mounted by a boot
    /// step that runs beside the agent ([`DEFAULT_STORE_WAIT`]).
    pub store_wait: Duration,
}

/// [`ResumeOptions::store_wait`] of `overboot resume`.
pub const DEFAULT_STORE_WAIT: Duration = Duration::from_secs(30);
