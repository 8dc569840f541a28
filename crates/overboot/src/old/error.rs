//! Why an update stopped, with the exit class of each reason: before the freeze nothing was
//! frozen; after it, the error says what became of the dumped trees (`recovery`).

use std::path::PathBuf;

use overboot_checkpoint::CheckpointError;
use overboot_handover::HandoverError;
use overboot_kexec::KexecError;

use crate::host::network::NetworkError;
use crate::host::store::StoreError;
use crate::host::target::TargetError;
use crate::model::report::ReportError;

/// Why an update stopped. When a tree had been dumped, `restored_locally` says it was brought
/// back on the running kernel.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A target cannot be preserved (nothing was frozen).
    #[error("target refused before anything was frozen")]
    Target(#[from] TargetError),
    /// The new kernel cannot be loaded (nothing was frozen).
    #[error("the new kernel {path} was refused before anything was frozen")]
    Kernel {
        path: PathBuf,
        #[source]
        source: KexecError,
    },
    /// The directory store cannot be used (nothing was frozen).
    #[error(transparent)]
    HandoverDir(#[from] StoreError),
    /// An initrd given does not exist.
    #[error("initrd {0} does not exist (nothing was frozen)")]
    MissingInitrd(PathBuf),
    /// No tree to preserve.
    #[error("nothing to preserve: give at least one --preserve")]
    NoTargets,
    /// CRIU is missing or does not work on this kernel (nothing was frozen).
    #[error("the checkpoint engine cannot run here (nothing was frozen)")]
    Engine(#[source] Box<CheckpointError>),
    /// A shutdown inhibitor blocks (nothing was frozen).
    #[error(
        "a shutdown is blocked by {}; an update ends every service it does not carry as a \
         shutdown does (nothing was frozen): wait until it is released, or pass \
         --ignore-inhibitors",
        inhibitors.join("; ")
    )]
    Inhibited { inhibitors: Vec<String> },
    /// The engine is known to fail on one of the two kernels (nothing was frozen).
    #[error("the checkpoint engine is too old for this update (nothing was frozen): {0}")]
    EngineTooOld(Box<super::compat::Refusal>),
    /// Dumping a tree failed; CRIU resumed it, and every tree dumped before was restored.
    #[error("checkpoint of {tree} failed; {recovery}")]
    Dump {
        tree: String,
        recovery: String,
        #[source]
        source: Box<CheckpointError>,
    },
    /// Building or publishing the map failed; the dumped trees were restored here.
    #[error("writing the Save State Map failed; {recovery}")]
    Handover {
        recovery: String,
        #[source]
        source: HandoverError,
    },
    /// Loading or jumping failed after the dump; the dumped trees were restored here.
    #[error("the kernel switch failed; {recovery}")]
    Switch {
        recovery: String,
        #[source]
        source: KexecError,
    },
    /// The network lock cannot be set up (before the freeze: nothing was frozen).
    #[error("the network lock cannot be set up (nothing was frozen)")]
    NetworkCheck(#[source] NetworkError),
    /// Capturing the network state after the dump failed; the trees were restored here.
    #[error("capturing the network state failed; {recovery}")]
    Network {
        recovery: String,
        #[source]
        source: NetworkError,
    },
    /// `--lazy-restore` was asked and CRIU cannot restore lazily here (nothing was frozen).
    #[error(
        "--lazy-restore: CRIU cannot restore memory lazily on this kernel (userfaultfd); \
         nothing was frozen; update without it"
    )]
    LazyUnsupported,
    /// `--lazy-restore` with a CRIU the page server is not verified with (nothing was frozen).
    #[error(
        "--lazy-restore: overboot's page server is verified with CRIU 3.x only; with CRIU 4.2.1 \
         the lazily restored tree's restore failed in CRIU's restorer (\"vdso: Invalid ELF \
         magic\") and the update rolled back; this CRIU is {engine}: nothing was frozen; update \
         without --lazy-restore"
    )]
    LazyEngine { engine: String },
    /// The previous update's lazy restore is still copying pages (nothing was frozen).
    #[error(
        "{tree} is still being restored lazily by a page server (pid {pid}) from the last \
         update: nothing was frozen; wait until that process exits (every page is back), then \
         update again"
    )]
    LazyStillServing { tree: String, pid: i32 },
    /// The initrd store would run the machine out of memory (nothing was frozen).
    #[error(
        "not enough memory to hand the map over through the initrd: about {} MiB needed (the map, \
         its copy in the initrd and kexec_file_load's two copies of that initrd), {} MiB \
         available (nothing was frozen); hand it over with --handover dir:PATH on reserved RAM or \
         a disk (see `overboot plan`)",
        needed >> 20,
        available >> 20
    )]
    Memory { needed: u64, available: u64 },
    /// systemd is PID 1 and the map was to ride in the initrd, which is gone after switch_root.
    #[error(
        "systemd is PID 1 here: the new kernel's initramfs hands over to systemd and the map \
         appended to the initrd is gone by then (nothing was frozen); use --handover dir:PATH on \
         a file system the new boot mounts (the default on systemd hosts: {default})"
    )]
    SystemdInitrd { default: String },
    /// systemd is PID 1 and nothing in the new boot would run the agent.
    #[error(
        "systemd is PID 1 here but overboot's generator is not installed, so the new boot would \
         not restore anything (nothing was frozen); run `overboot systemd install` first"
    )]
    NoGenerator,
    /// The preserved units could not be kept from restarting (nothing was frozen).
    #[error("cannot keep systemd from restarting the preserved units (nothing was frozen)")]
    Hold(#[source] crate::host::systemd::SystemdError),
    /// The kernel loaded before the freeze has another command line than the map needs.
    #[error("the kernel was loaded with {loaded:?} but the map needs {needed:?}; {recovery}")]
    EarlyLoadMismatch {
        loaded: String,
        needed: String,
        recovery: String,
    },
    /// A signal stopped the update at a phase boundary; what was frozen was restored here.
    #[error("interrupted by {signal} at {phase}; {recovery}")]
    Interrupted {
        signal: String,
        phase: &'static str,
        recovery: String,
    },
    /// State directory or work directory error.
    #[error("state")]
    State(#[from] ReportError),
    /// Work directory error.
    #[error("work directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    /// Whether the update got as far as the freeze (the trees were held or dumped, and the
    /// error says what became of them); otherwise nothing was frozen.
    pub fn froze(&self) -> bool {
        matches!(
            self,
            UpdateError::Dump { .. }
                | UpdateError::Handover { .. }
                | UpdateError::Switch { .. }
                | UpdateError::Network { .. }
                | UpdateError::EarlyLoadMismatch { .. }
        )
    }

    /// The exit class.
    pub fn class(&self) -> crate::ExitClass {
        use crate::ExitClass as E;
        match self {
            UpdateError::Target(_)
            | UpdateError::MissingInitrd(_)
            | UpdateError::NoTargets
            | UpdateError::HandoverDir(_)
            | UpdateError::Memory { .. }
            | UpdateError::SystemdInitrd { .. }
            | UpdateError::NoGenerator
            | UpdateError::LazyStillServing { .. }
            | UpdateError::EngineTooOld(_)
            | UpdateError::Inhibited { .. } => E::BadInput,
            UpdateError::LazyUnsupported | UpdateError::LazyEngine { .. } => E::Checkpoint,
            UpdateError::Hold(_) => E::Internal,
            UpdateError::Kernel { source, .. } | UpdateError::Switch { source, .. } => {
                source.class().into()
            }
            UpdateError::Engine(_) | UpdateError::Dump { .. } => E::Checkpoint,
            UpdateError::NetworkCheck(_) => E::BadInput,
            UpdateError::Network { .. } => E::Checkpoint,
            UpdateError::Handover { .. } | UpdateError::EarlyLoadMismatch { .. } => E::Handover,
            UpdateError::State(_) | UpdateError::Io { .. } => E::Internal,
            UpdateError::Interrupted { .. } => E::Interrupted,
        }
    }
}
