//! What an update is asked to do ([`UpdateOptions`], made by the CLI from its arguments) and
//! what a test sees when a mock jump returns ([`Staged`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use overboot_handover::RollbackRecipe;

use crate::host::store::Handover;
use crate::host::target::{Target, TreeInfo};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// The new kernel.
    pub kernel: PathBuf,
    /// Its initrd (the map is appended to a copy).
    pub initrd: Option<PathBuf>,
    /// The new kernel's command line (without overboot's own parameters).
    pub cmdline: String,
    /// Trees to carry across.
    pub preserve: Vec<Target>,
    /// Where the map is built: a RAM file system (default `/run/overboot`).
    pub work_dir: PathBuf,
    /// Persistent state directory (reports, pending).
    pub state_dir: PathBuf,
    /// How to go back: the running kernel's image, initrd and command line.
    pub rollback: RollbackRecipe,
    /// Hold peers off with the network lock (off only in tests that prove it matters).
    pub network_lock: bool,
    /// How the map reaches the new kernel.
    pub handover: Handover,
    /// Who chose that store and why (`--handover`, the config file, or the default's reason):
    /// `plan` prints it.
    pub store_why: String,
    /// Nobody named the store: a directory store without room for the map falls back to the
    /// initrd (on a host without systemd) instead of refusing.
    pub store_default: bool,
    /// Pre-copy rounds at most before the freeze (0: none; see [`super::precopy`]); only
    /// with a directory store.
    pub pre_copy_rounds: u32,
    /// CRIU's log level (0–4) for the pre-dumps, dumps and restores of this update (the
    /// restores in the new kernel read it from the map).
    pub criu_log_level: u8,
    /// Go ahead although a shutdown inhibitor blocks (see `host::systemd::inhibit`).
    pub ignore_inhibitors: bool,
    /// Restore the trees' memory lazily in the new kernel (see [`crate::new::lazy`]).
    pub lazy_restore: bool,
}

/// What an update returns when a (mock) jump returns: only in tests.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Update id.
    pub id: String,
    /// The map directory.
    pub map_dir: PathBuf,
    /// The initrd loaded: with the map appended (initrd store) or as given (directory store).
    pub initrd: Option<PathBuf>,
    /// The command line given to the new kernel.
    pub cmdline: String,
    /// Bytes handed over.
    pub handover_bytes: u64,
    /// Phase timings so far.
    pub phases: BTreeMap<String, u64>,
    /// The trees carried.
    pub trees: Vec<TreeInfo>,
    /// Pre-copy rounds done before the freeze.
    pub pre_copy: Vec<crate::model::rounds::Round>,
}
