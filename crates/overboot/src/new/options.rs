//! What the agent is told: the command line naming the map, where state and scratch go, an
//! injected fault, whether this boot is a rollback.

use std::path::PathBuf;

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
}
