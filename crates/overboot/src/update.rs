//! `overboot update`: check everything, then freeze and dump the preserved trees into a Save
//! State Map in RAM, hand it to the new kernel appended to its initrd (or, with
//! `--handover dir:PATH`, written to a disk directory and flushed), load, and jump.
//!
//! ```text
//!  checks ──► freeze+dump (per tree) ──► write map ──► publish (initrd+cpio | flush) ──► kexec load ──► jump
//!  (nothing      │ failure: restore the        │ failure after a dump: restore every dumped
//!   frozen)      ▼ trees dumped so far         ▼ tree on this kernel, then report the error
//! ```
//!
//! Nothing is frozen until every check has passed. Once a tree is dumped (and so stopped), any
//! later failure restores it on the running kernel before the error is returned: a failed
//! update leaves every preserved process running.
//!
//! With a directory store a dumped tree is left stopped rather than killed ([`AfterDump`]):
//! the kernel would otherwise free its memory inside the blackout, about 0.8 s for 2.6 GiB
//! under TCG, while a kexec abandons that memory for nothing. A failure after such a dump ends
//! the stopped tasks first, then restores the tree from its images as after a kill. The
//! initrd store keeps the kill: the map's copies after the freeze need the memory it frees.
//!
//! The side effects sit behind [`Effects`] so
//! that these decisions are unit-tested without root; [`HostEffects`] is the real system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use overboot_checkpoint::{CheckpointError, DumpRequest, Engine, NetworkLockMode, RestoreRequest};
use overboot_handover::{
    ClockReadings, DirectoryStore, HandoverError, InitrdStore, KernelInfo, Manifest, MapWriter,
    PreservedTree, RollbackRecipe, SaveStateMap, Store, TargetKernel,
};
use overboot_kexec::{KernelImage, KexecError, LoadRequest};

use crate::network::{NetworkError, NetworkState};
use crate::phases::Phases;
use crate::report::{self, Pending, ReportError};
pub use crate::store::Handover;
use crate::store::StoreError;
use crate::target::{Target, TargetError, TreeInfo};

/// What becomes of a tree's tasks once their dump succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDump {
    /// Killed: their memory is freed before the update goes on.
    Kill,
    /// Left stopped, their TCP connections locked: their memory stays where it is until the
    /// kexec abandons it (or a failure ends them with [`Effects::end_stopped`]).
    Stop,
}

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
    /// Pre-copy rounds at most before the freeze (0: none; see [`crate::precopy`]); only
    /// with a directory store.
    pub pre_copy_rounds: u32,
    /// CRIU's log level (0–4) for the pre-dumps, dumps and restores of this update (the
    /// restores in the new kernel read it from the map).
    pub criu_log_level: u8,
    /// Restore the trees' memory lazily in the new kernel (see [`crate::lazy`]).
    pub lazy_restore: bool,
}

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
    Hold(#[source] crate::systemd::SystemdError),
    /// The kernel loaded before the freeze has another command line than the map needs.
    #[error("the kernel was loaded with {loaded:?} but the map needs {needed:?}; {recovery}")]
    EarlyLoadMismatch {
        loaded: String,
        needed: String,
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
            | UpdateError::LazyStillServing { .. } => E::BadInput,
            UpdateError::LazyUnsupported => E::Checkpoint,
            UpdateError::Hold(_) => E::Internal,
            UpdateError::Kernel { source, .. } | UpdateError::Switch { source, .. } => {
                source.class().into()
            }
            UpdateError::Engine(_) | UpdateError::Dump { .. } => E::Checkpoint,
            UpdateError::NetworkCheck(_) => E::BadInput,
            UpdateError::Network { .. } => E::Checkpoint,
            UpdateError::Handover { .. } | UpdateError::EarlyLoadMismatch { .. } => E::Handover,
            UpdateError::State(_) | UpdateError::Io { .. } => E::Internal,
        }
    }
}

/// The side effects of an update.
pub trait Effects {
    /// Checks the host allows kexec (root, sysctl).
    fn kexec_preflight(&mut self) -> Result<(), KexecError>;
    /// Inspects the new kernel image.
    fn inspect_kernel(&mut self, path: &Path) -> Result<KernelImage, KexecError>;
    /// Inspects the targets (read-only).
    fn inspect_targets(&mut self, targets: &[Target]) -> Result<Vec<TreeInfo>, TargetError>;
    /// Checks that the engine runs; returns its version.
    fn probe_engine(&mut self) -> Result<String, CheckpointError>;
    /// `MemAvailable` now, bytes.
    fn memory_available(&mut self) -> u64 {
        crate::plan::meminfo("MemAvailable")
    }
    /// Checks the network lock can be carried for these trees (nft present when they hold
    /// TCP sockets).
    fn check_network(&mut self, trees: &[TreeInfo]) -> Result<(), NetworkError>;
    /// Holds off new connections to these ports.
    fn block_new_connections(&mut self, ports: &BTreeSet<u16>) -> Result<(), NetworkError>;
    /// Lets new connections in again.
    fn unblock_new_connections(&mut self);
    /// Addresses, routes and lock tables after the dump.
    fn capture_network(&mut self) -> Result<NetworkState, NetworkError>;
    /// Clock readings now.
    fn clocks(&mut self) -> ClockReadings;
    /// Whether the engine can track memory changes (soft-dirty), which pre-copy needs.
    fn memory_tracking(&mut self) -> bool {
        false
    }
    /// Whether the engine can restore memory lazily (userfaultfd), which `--lazy-restore`
    /// needs. This kernel answers for the new one: both are the operator's.
    fn lazy_pages(&mut self) -> bool {
        false
    }
    /// Copies a running tree's memory into `images` and tracks changes from here on;
    /// `parent` (relative to `images`) is the previous round's directory.
    fn pre_dump(
        &mut self,
        tree: &TreeInfo,
        images: &Path,
        parent: Option<&str>,
    ) -> Result<(), CheckpointError>;
    /// Bytes the running tree wrote since its last pre-copy round (soft-dirty pages, see
    /// [`crate::dirty`]): what the next round would copy. `None` when they cannot be counted.
    fn dirty_bytes(&mut self, _tree: &TreeInfo) -> Option<u64> {
        None
    }
    /// Freezes and dumps a tree into `images`; with `parent` (relative to `images`: the last
    /// pre-copy round) only the pages changed since. `after` says whether its tasks are then
    /// killed or left stopped.
    fn dump(
        &mut self,
        tree: &TreeInfo,
        images: &Path,
        parent: Option<&str>,
        after: AfterDump,
    ) -> Result<(), CheckpointError>;
    /// Ends the tasks a dump left stopped (`SIGKILL`) and waits until their pids are free, so
    /// that their tree can be restored from its images.
    fn end_stopped(&mut self, pids: &[i32]) -> std::io::Result<()>;
    /// Restores a tree on this kernel from `images`; returns its root pid.
    fn restore(&mut self, images: &Path) -> Result<i32, CheckpointError>;
    /// Loads the new kernel.
    fn load(&mut self, request: &LoadRequest) -> Result<KernelImage, KexecError>;
    /// Unloads it again (best effort: an update that failed after loading early).
    fn unload(&mut self);
    /// Jumps into the loaded kernel. Returns only on failure in reality; `Ok` in tests.
    fn jump(&mut self) -> Result<(), KexecError>;
    /// The host's init system (systemd or not, overboot's generator installed or not).
    fn systemd_host(&mut self) -> crate::systemd::Host {
        crate::systemd::Host::default()
    }
    /// Keeps the service manager from restarting the services of `trees` while they are
    /// dumped (systemd: a runtime `Restart=no`).
    fn hold_units(&mut self, _trees: &[TreeInfo]) -> Result<(), crate::systemd::SystemdError> {
        Ok(())
    }
    /// Lifts [`Effects::hold_units`] after a failed update; the services of the trees named in
    /// `restored` (restored on this kernel) adopt their processes again.
    fn release_units(&mut self, _restored: &[String]) {}
}

/// The real system: `overboot-kexec`, CRIU, `/proc`, `nft`.
#[derive(Debug)]
pub struct HostEffects {
    /// The CRIU client.
    pub criu: overboot_checkpoint::Criu,
    /// Whether the network lock is carried to the new kernel (off only in tests proving it
    /// matters: CRIU's lock is then lifted right after the dump).
    pub network_lock: bool,
    /// The units held from restarting, with their trees (see [`Effects::hold_units`]).
    held: Vec<TreeInfo>,
    /// The agent's work directory, where records for a local adoption go.
    work_dir: PathBuf,
    /// CRIU's log level for every request.
    criu_log_level: i32,
}

impl HostEffects {
    /// The real system, with or without the network lock; `work_dir` as the update's; CRIU
    /// logging at `criu_log_level`.
    pub fn new(network_lock: bool, work_dir: &Path, criu_log_level: u8) -> HostEffects {
        HostEffects {
            criu: overboot_checkpoint::Criu::default(),
            network_lock,
            held: Vec::new(),
            work_dir: work_dir.to_path_buf(),
            criu_log_level: i32::from(criu_log_level),
        }
    }

    fn held_units(&self) -> Vec<String> {
        crate::systemd::unit_names(self.held.iter().filter_map(|t| t.unit.as_ref()))
    }
}

fn ns(ts: nix::sys::time::TimeSpec) -> u64 {
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// Reads a clock in nanoseconds (0 if unavailable).
pub fn clock_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock).map(ns).unwrap_or(0)
}

/// CLOCK_REALTIME, CLOCK_MONOTONIC and CLOCK_BOOTTIME now.
pub fn read_clocks() -> ClockReadings {
    use nix::time::ClockId;
    ClockReadings {
        realtime_ns: clock_ns(ClockId::CLOCK_REALTIME),
        monotonic_ns: clock_ns(ClockId::CLOCK_MONOTONIC),
        boottime_ns: clock_ns(ClockId::CLOCK_BOOTTIME),
    }
}

impl Effects for HostEffects {
    fn kexec_preflight(&mut self) -> Result<(), KexecError> {
        overboot_kexec::preflight()
    }

    fn inspect_kernel(&mut self, path: &Path) -> Result<KernelImage, KexecError> {
        overboot_kexec::inspect(path)
    }

    fn inspect_targets(&mut self, targets: &[Target]) -> Result<Vec<TreeInfo>, TargetError> {
        let me = nix::unistd::getpid().as_raw();
        crate::target::inspect_all(targets, me)
    }

    fn probe_engine(&mut self) -> Result<String, CheckpointError> {
        let version = self.criu.version()?;
        self.criu.check()?;
        Ok(version.to_string())
    }

    fn check_network(&mut self, trees: &[TreeInfo]) -> Result<(), NetworkError> {
        let tcp = trees
            .iter()
            .any(|t| t.fds.keys().any(|k| k.starts_with("socket:tcp")));
        if self.network_lock && tcp {
            crate::network::lock_tables().map(drop)?;
        }
        Ok(())
    }

    fn block_new_connections(&mut self, ports: &BTreeSet<u16>) -> Result<(), NetworkError> {
        crate::network::block_new_connections(ports)
    }

    fn unblock_new_connections(&mut self) {
        crate::network::unblock_new_connections();
    }

    fn capture_network(&mut self) -> Result<NetworkState, NetworkError> {
        let (interfaces, routes) = crate::network::capture_addresses();
        let tables = crate::network::lock_tables()?;
        if !self.network_lock {
            // Test mode: the connections are left unguarded from here on, as they would be
            // without a lock; peers get RSTs from this kernel and from the next.
            tracing::warn!("network lock off: lifting CRIU's lock after the dump");
            crate::network::release(&NetworkState {
                tables,
                ..NetworkState::default()
            });
            return Ok(NetworkState {
                locked: false,
                interfaces,
                routes,
                tables: Vec::new(),
            });
        }
        Ok(NetworkState {
            locked: true,
            interfaces,
            routes,
            tables,
        })
    }

    fn clocks(&mut self) -> ClockReadings {
        read_clocks()
    }

    fn memory_tracking(&mut self) -> bool {
        match self.criu.features() {
            Ok(features) => features.mem_track,
            Err(e) => {
                tracing::warn!(error = %overboot_checkpoint::error_chain(&e), "cannot ask CRIU for memory tracking: no pre-copy");
                false
            }
        }
    }

    fn lazy_pages(&mut self) -> bool {
        match self.criu.features() {
            Ok(features) => features.lazy_pages,
            Err(e) => {
                tracing::warn!(error = %overboot_checkpoint::error_chain(&e), "cannot ask CRIU for lazy pages");
                false
            }
        }
    }

    fn pre_dump(
        &mut self,
        tree: &TreeInfo,
        images: &Path,
        parent: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let mut request = DumpRequest::new(tree.root, images);
        request.log_file = "pre-dump.log".into();
        request.log_level = self.criu_log_level;
        request.parent_images = parent.map(PathBuf::from);
        request.track_mem = true;
        self.criu
            .pre_dump(&request, &mut overboot_checkpoint::accept_all)
            .map(|_| ())
    }

    fn dirty_bytes(&mut self, tree: &TreeInfo) -> Option<u64> {
        crate::dirty::dirty_bytes(&tree.pids())
            .map_err(|e| tracing::warn!(error = %overboot_checkpoint::error_chain(&e), "cannot count the pages written since the last pre-copy round"))
            .ok()
    }

    fn dump(
        &mut self,
        tree: &TreeInfo,
        images: &Path,
        parent: Option<&str>,
        after: AfterDump,
    ) -> Result<(), CheckpointError> {
        let mut request = DumpRequest::new(tree.root, images);
        request.leave_stopped = after == AfterDump::Stop;
        request.log_level = self.criu_log_level;
        request.parent_images = parent.map(PathBuf::from);
        request.track_mem = parent.is_some();
        // CRIU 3.17 cannot dump TCP without its lock; "no lock" (tests only) lifts it
        // after the dump instead (see `capture_network`).
        request.network_lock = NetworkLockMode::Nftables;
        request.file_locks = true;
        self.criu
            .dump(&request, &mut overboot_checkpoint::accept_all)
            .map(|_| ())
    }

    fn end_stopped(&mut self, pids: &[i32]) -> std::io::Result<()> {
        crate::target::end_tasks(pids, END_STOPPED_TIMEOUT)
    }

    fn restore(&mut self, images: &Path) -> Result<i32, CheckpointError> {
        // As in the new kernel (see `resume`): from a scratch directory, the map untouched, with
        // the windows of connections whose peer does not scale pinned (else they crawl).
        let scratch = self
            .work_dir
            .join("local-restore")
            .join(images.file_name().unwrap_or_default());
        let images = crate::resume::restore_dir(images, &scratch).map_err(|source| {
            CheckpointError::OpenDir {
                path: scratch.clone(),
                source,
            }
        })?;
        if let Err(e) = overboot_checkpoint::images::pin_unscaled_windows(&images) {
            tracing::warn!(error = %e, "cannot pin the windows of unscaled connections");
        }
        let mut request = RestoreRequest::new(&images);
        request.log_file = "rollback-restore.log".into();
        request.log_level = self.criu_log_level;
        request.network_lock = NetworkLockMode::Nftables;
        request.file_locks = true;
        self.criu
            .restore(&request, &mut overboot_checkpoint::accept_all)
            .map(|o| o.pid)
    }

    fn load(&mut self, request: &LoadRequest) -> Result<KernelImage, KexecError> {
        overboot_kexec::load(request)
    }

    fn unload(&mut self) {
        if let Err(e) = overboot_kexec::unload() {
            tracing::warn!(error = %e, "could not unload the new kernel");
        }
    }

    fn jump(&mut self) -> Result<(), KexecError> {
        overboot_kexec::jump().map(|never| match never {})
    }

    fn systemd_host(&mut self) -> crate::systemd::Host {
        crate::systemd::Host::detect()
    }

    fn hold_units(&mut self, trees: &[TreeInfo]) -> Result<(), crate::systemd::SystemdError> {
        self.held = trees.iter().filter(|t| t.unit.is_some()).cloned().collect();
        crate::systemd::hold_restarts(&self.held_units())
    }

    fn release_units(&mut self, restored: &[String]) {
        let units = self.held_units();
        if units.is_empty() {
            return;
        }
        let restored: Vec<PreservedTree> = self
            .held
            .iter()
            .filter(|t| restored.contains(&t.name))
            .map(|t| PreservedTree {
                name: t.name.clone(),
                root_pid: t.root,
                pids: t.pids(),
                images: String::new(),
                cmdline: t.cmdline.clone(),
                clocks_realtime_ns: 0,
                unit: t.unit.clone(),
            })
            .collect();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/sbin/overboot"));
        crate::systemd::release_restarts(&units, &restored, &exe, &self.work_dir);
        self.held.clear();
    }
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
    pub pre_copy: Vec<crate::precopy::Round>,
}

/// A new update id: UTC seconds and the pid, sortable.
pub fn new_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}-{}", std::process::id())
}

/// Everything `update` checks before freezing anything. Shared with `plan`.
pub fn check(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
) -> Result<(KernelImage, Vec<TreeInfo>, String), UpdateError> {
    if options.preserve.is_empty() {
        return Err(UpdateError::NoTargets);
    }
    // CRIU cannot dump a task whose memory a lazy restore still fills.
    if let Some((tree, pid)) = crate::lazy::still_serving(&options.work_dir) {
        return Err(UpdateError::LazyStillServing { tree, pid });
    }
    let kernel_err = |source| UpdateError::Kernel {
        path: options.kernel.clone(),
        source,
    };
    effects.kexec_preflight().map_err(kernel_err)?;
    let image = effects
        .inspect_kernel(&options.kernel)
        .map_err(kernel_err)?;
    if let Some(initrd) = &options.initrd {
        if !initrd.is_file() {
            return Err(UpdateError::MissingInitrd(initrd.clone()));
        }
    }
    let trees = effects.inspect_targets(&options.preserve)?;
    let systemd = effects.systemd_host();
    if systemd.booted {
        if options.handover == Handover::Initrd {
            return Err(UpdateError::SystemdInitrd {
                default: format!(
                    "dir:{}",
                    crate::systemd::default_store(&options.state_dir).display()
                ),
            });
        }
        if systemd.generator.is_none() {
            return Err(UpdateError::NoGenerator);
        }
    }
    let estimate: u64 = trees.iter().map(crate::plan::estimate_handover).sum();
    match &options.handover {
        // The estimate plus a tenth for file system overhead and growth until the freeze.
        Handover::Dir(dir) => crate::store::check_dir(dir, estimate + estimate / 10)?,
        Handover::Initrd => {
            let initrd = options
                .initrd
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len());
            let needed = crate::plan::initrd_handover_memory(estimate, initrd, image.size);
            let available = effects.memory_available();
            if needed > available {
                return Err(UpdateError::Memory { needed, available });
            }
        }
    }
    if options.network_lock {
        effects
            .check_network(&trees)
            .map_err(UpdateError::NetworkCheck)?;
    }
    let engine = effects
        .probe_engine()
        .map_err(|e| UpdateError::Engine(Box::new(e)))?;
    if options.lazy_restore && !effects.lazy_pages() {
        return Err(UpdateError::LazyUnsupported);
    }
    Ok((image, trees, engine))
}

/// How long the tasks of a stopped tree may take to be gone once killed (a large tree's
/// memory is freed first; its parent, outside the tree, reaps it).
const END_STOPPED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A tree dumped after the freeze.
#[derive(Debug)]
struct Dumped {
    name: String,
    images: PathBuf,
    /// Its tasks, when the dump left them stopped ([`AfterDump::Stop`]).
    stopped: Option<Vec<i32>>,
}

/// Restores every dumped tree on the running kernel and lets new connections in again;
/// returns a sentence for the error.
fn restore_here(effects: &mut dyn Effects, dumped: &[Dumped]) -> String {
    let mut restored = Vec::new();
    let sentence = restore_trees_here(effects, dumped, &mut restored);
    effects.unblock_new_connections();
    effects.release_units(&restored);
    sentence
}

fn restore_trees_here(
    effects: &mut dyn Effects,
    dumped: &[Dumped],
    restored: &mut Vec<String>,
) -> String {
    if dumped.is_empty() {
        return "no tree had been stopped".into();
    }
    let mut back = Vec::new();
    let mut lost = Vec::new();
    for Dumped {
        name,
        images,
        stopped,
    } in dumped
    {
        // A stopped tree holds its pids, which its restore needs.
        if let Some(pids) = stopped {
            if let Err(e) = effects.end_stopped(pids) {
                tracing::error!(tree = %name, error = %e, "cannot end the stopped tasks");
                lost.push(format!(
                    "{name}: its stopped tasks could not be ended ({e}), so it was not restored \
                     (images kept in {})",
                    images.display()
                ));
                continue;
            }
        }
        match effects.restore(images) {
            Ok(pid) => {
                restored.push(name.clone());
                back.push(format!("{name} (pid {pid})"));
            }
            Err(e) => {
                tracing::error!(tree = %name, error = %overboot_checkpoint::error_chain(&e), "local restore failed");
                lost.push(format!("{name}: {e} (images kept in {})", images.display()));
            }
        }
    }
    let mut text = String::new();
    if !back.is_empty() {
        text.push_str(&format!("restored on this kernel: {}", back.join(", ")));
    }
    if !lost.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!("NOT restored: {}", lost.join("; ")));
    }
    text
}

/// Runs an update. Returns only if it failed, or when a mock jump returns.
pub fn run(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Staged, UpdateError> {
    let mut phases = Phases::default();
    progress("checking the new kernel, the targets and CRIU");
    let (image, trees, engine) = phases.run("check", || check(effects, options))?;
    tracing::info!(release = %image.release, engine = %engine, trees = trees.len(), "checks passed");

    let id = new_id();
    let map_dir = match &options.handover {
        Handover::Initrd => options.work_dir.join(&id).join("map"),
        Handover::Dir(dir) => dir.join(&id),
    };
    let mut writer = SaveStateMap::create(&map_dir).map_err(|source| UpdateError::Handover {
        recovery: "no tree had been stopped".into(),
        source,
    })?;

    // With a directory store the new kernel's command line is known before anything stops:
    // load the kernel now, outside the blackout (kexec_file_load copies and digests the
    // segments, seconds for a large initrd).
    let early = match &options.handover {
        Handover::Initrd => None,
        Handover::Dir(_) => {
            let param = DirectoryStore {
                path: map_dir.clone(),
            }
            .cmdline_param()
            .map_err(|source| UpdateError::Handover {
                recovery: "no tree had been stopped".into(),
                source,
            })?;
            let request = LoadRequest {
                kernel: options.kernel.clone(),
                initrd: options.initrd.clone(),
                cmdline: format!("{} {param}", options.cmdline.trim())
                    .trim()
                    .to_string(),
            };
            progress(&format!(
                "loading {} with kexec_file_load (before the freeze)",
                image.release
            ));
            phases
                .run("kexec_load_early", || effects.load(&request))
                .map_err(|source| UpdateError::Kernel {
                    path: options.kernel.clone(),
                    source,
                })?;
            Some(request)
        }
    };
    // Most of the memory is copied (and hashed) while the services still run. Only into a
    // directory store: the initrd store's RAM was checked for one dump's worth of map (and
    // its copies are made after the freeze anyway), and pre-copy rounds plus a final dump of
    // a service that rewrites its memory could need up to twice that.
    let pre_copy = if options.pre_copy_rounds == 0 || options.handover == Handover::Initrd {
        PreCopy::default()
    } else if effects.memory_tracking() {
        phases.run("pre_copy", || {
            pre_copy(
                effects,
                &mut writer,
                &trees,
                crate::precopy::Policy::new(options.pre_copy_rounds),
                progress,
            )
        })
    } else {
        tracing::info!("CRIU cannot track memory changes on this kernel: no pre-copy");
        PreCopy::default()
    };
    let mut any_dumped = false;
    let result = freeze_and_switch(
        effects,
        options,
        progress,
        &mut any_dumped,
        Staging {
            phases,
            image,
            trees,
            id,
            map_dir: map_dir.clone(),
            writer,
            early: early.clone(),
            pre_copy,
        },
    );
    if result.is_err() && !any_dumped {
        // Only pre-copy rounds there (or a dump CRIU gave up): no process depends on them.
        if let Err(e) = std::fs::remove_dir_all(&map_dir) {
            tracing::warn!(dir = %map_dir.display(), error = %e, "cannot remove the unused map");
        }
    }
    if result.is_err() && early.is_some() {
        effects.unload();
    }
    result
}

/// What pre-copy left for the dump after the freeze.
#[derive(Debug, Default)]
struct PreCopy {
    /// Every round, in order.
    rounds: Vec<crate::precopy::Round>,
}

impl PreCopy {
    /// The last round's directory of tree `name`, relative to its images directory: the
    /// parent of its dump after the freeze.
    fn parent_of(&self, name: &str) -> Option<String> {
        self.rounds
            .iter()
            .rev()
            .find(|r| r.tree == name)
            .map(|r| crate::precopy::round_dir(r.round))
    }
}

/// Pre-copy rounds for every tree, each into `trees/<name>/pre-<k>` of the map and sealed
/// (hashed) right away. A round that fails ends that tree's pre-copy (its half-written
/// directory is removed; the rounds before it still serve). Never fails the update: without
/// pre-copy the dump writes everything, as it always did.
fn pre_copy(
    effects: &mut dyn Effects,
    writer: &mut MapWriter,
    trees: &[TreeInfo],
    policy: crate::precopy::Policy,
    progress: &mut dyn FnMut(&str),
) -> PreCopy {
    use crate::precopy::{drop_parent_link, round_dir, round_parent, Round};
    let mut out = PreCopy::default();
    for tree in trees {
        let mut bytes: Vec<u64> = Vec::new();
        let mut k = 0;
        while policy.go_on(&bytes) {
            if let Some(last) = out.rounds.last_mut().filter(|_| k > 0) {
                let start = std::time::Instant::now();
                let dirty = effects.dirty_bytes(tree);
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                last.dirty_after = dirty;
                tracing::info!(tree = %tree.name, after_round = k, dirty, ms, "written since the last pre-copy round");
                if !policy.worth_next(dirty) {
                    tracing::info!(tree = %tree.name, rounds = k, "pre-copy stops: the next round would copy little");
                    break;
                }
            }
            k += 1;
            progress(&format!(
                "pre-copy round {k} of {} ({} MiB resident), service running",
                tree.target,
                tree.rss_bytes() >> 20
            ));
            let rel = format!("trees/{}/{}", tree.name, round_dir(k));
            let start = std::time::Instant::now();
            let parent = round_parent(k);
            let round = writer
                .create_dir(&rel)
                .map_err(|e| e.to_string())
                .and_then(|dir| {
                    effects
                        .pre_dump(tree, &dir, parent.as_deref())
                        .map_err(|e| overboot_checkpoint::error_chain(&e))?;
                    drop_parent_link(&dir).map_err(|e| e.to_string())
                })
                .and_then(|()| writer.seal_dir(&rel).map_err(|e| e.to_string()));
            match round {
                Ok(written) => {
                    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(tree = %tree.name, round = k, bytes = written, ms, "pre-copy round");
                    bytes.push(written);
                    out.rounds.push(Round {
                        tree: tree.name.clone(),
                        round: k,
                        bytes: written,
                        ms,
                        dirty_after: None,
                    });
                }
                Err(error) => {
                    tracing::warn!(tree = %tree.name, round = k, %error, "pre-copy round failed: the dump after the freeze writes what it lacks");
                    if let Err(e) = writer.discard_dir(&rel) {
                        tracing::warn!(error = %e, "cannot remove the failed round");
                    }
                    break;
                }
            }
        }
    }
    out
}

/// What [`run`] prepared before anything was frozen.
struct Staging {
    phases: Phases,
    image: KernelImage,
    trees: Vec<TreeInfo>,
    id: String,
    map_dir: PathBuf,
    writer: MapWriter,
    /// The kernel already loaded (directory store), with its command line.
    early: Option<LoadRequest>,
    /// Pre-copy rounds done.
    pre_copy: PreCopy,
}

/// From the network block to the jump: every failure restores the dumped trees here.
fn freeze_and_switch(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    progress: &mut dyn FnMut(&str),
    any_dumped: &mut bool,
    staging: Staging,
) -> Result<Staged, UpdateError> {
    let Staging {
        mut phases,
        image,
        trees,
        id,
        map_dir,
        mut writer,
        early,
        pre_copy,
    } = staging;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { path, source }
    };
    // New connections to preserved listeners wait (their SYNs are dropped, clients retry)
    // from here until the trees run again; then freeze and dump, tree by tree. From here on,
    // failures restore what was dumped and lift the block.
    if options.network_lock {
        let ports: BTreeSet<u16> = trees.iter().flat_map(|t| t.listen_ports.clone()).collect();
        effects
            .block_new_connections(&ports)
            .map_err(UpdateError::NetworkCheck)?;
    }
    // A service manager must not answer the dump's kill with a fresh copy of the service.
    if let Err(e) = effects.hold_units(&trees) {
        effects.unblock_new_connections();
        effects.release_units(&[]);
        return Err(UpdateError::Hold(e));
    }
    let clocks = effects.clocks();
    let mut dumped: Vec<Dumped> = Vec::new();
    // Nothing after the freeze needs the trees' memory but the initrd store's copies of the map.
    let after = match options.handover {
        Handover::Initrd => AfterDump::Kill,
        Handover::Dir(_) => AfterDump::Stop,
    };
    let mut preserved = Vec::new();
    for tree in &trees {
        progress(&format!(
            "freezing and dumping {} ({} processes, {} MiB resident)",
            tree.target,
            tree.processes.len(),
            tree.rss_bytes() >> 20
        ));
        let rel = format!("trees/{}", tree.name);
        let images = writer
            .create_dir(&rel)
            .map_err(|source| UpdateError::Handover {
                recovery: restore_here(effects, &dumped),
                source,
            })?;
        let parent = pre_copy.parent_of(&tree.name);
        if let Err(source) = phases.run("freeze_dump", || {
            effects.dump(tree, &images, parent.as_deref(), after)
        }) {
            return Err(UpdateError::Dump {
                tree: tree.target.to_string(),
                recovery: format!(
                    "{} was resumed by CRIU; {}",
                    tree.target,
                    restore_here(effects, &dumped)
                ),
                source: Box::new(source),
            });
        }
        // CRIU records the tree's clocks at the end of its dump.
        let clocks_realtime_ns = effects.clocks().realtime_ns;
        dumped.push(Dumped {
            name: tree.name.clone(),
            images: images.clone(),
            stopped: (after == AfterDump::Stop).then(|| tree.pids()),
        });
        *any_dumped = true;
        // The map holds regular files only: the restore directory links the rounds again.
        if let Err(source) = crate::precopy::drop_parent_link(&images) {
            return Err(UpdateError::Handover {
                recovery: restore_here(effects, &dumped),
                source: HandoverError::Io {
                    action: "remove CRIU's parent link in",
                    path: images,
                    source,
                },
            });
        }
        preserved.push(PreservedTree {
            name: tree.name.clone(),
            root_pid: tree.root,
            pids: tree.pids(),
            images: rel,
            cmdline: tree.cmdline.clone(),
            clocks_realtime_ns,
            unit: tree.unit.clone(),
        });
    }

    let network = match effects.capture_network() {
        Ok(n) => n,
        Err(source) => {
            return Err(UpdateError::Network {
                recovery: restore_here(effects, &dumped),
                source,
            })
        }
    };

    // The map: images hashed, tmpfs files carried, manifest and header written.
    progress("writing the Save State Map");
    let old_phases = phases.map().clone();
    let map = phases.run("write_map", || -> Result<SaveStateMap, HandoverError> {
        let mut carried = Vec::new();
        for (i, path) in trees.iter().flat_map(|t| t.tmpfs_files.iter()).enumerate() {
            carried.push(writer.carry_file(path, &format!("files/{i}"))?);
        }
        for Dumped { images, .. } in &dumped {
            let rel = images
                .strip_prefix(writer.dir())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            writer.adopt_tree(&rel)?;
        }
        let manifest = Manifest {
            created_unix_ms: clocks.realtime_ns / 1_000_000,
            from: KernelInfo {
                release: nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
                boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            },
            to: TargetKernel {
                release: image.release.clone(),
                boot_id: None,
            },
            clocks,
            trees: preserved.clone(),
            carried_files: carried,
            rollback: options.rollback.clone(),
            network: serde_json::to_value(&network).ok(),
            phases: old_phases,
            criu_log_level: Some(options.criu_log_level),
            lazy_restore: options.lazy_restore,
            ..Manifest::default()
        };
        writer.finish(manifest)
    });
    let map = match map {
        Ok(map) => map,
        Err(source) => {
            return Err(UpdateError::Handover {
                recovery: restore_here(effects, &dumped),
                source,
            })
        }
    };

    let out = options.work_dir.join(&id).join("initrd-with-map.img");
    let store: Box<dyn Store> = match &options.handover {
        Handover::Initrd => {
            progress("appending the map to the new kernel's initrd");
            Box::new(InitrdStore::new(options.initrd.clone(), &out))
        }
        Handover::Dir(_) => {
            progress("flushing the map to disk");
            Box::new(DirectoryStore {
                path: map_dir.clone(),
            })
        }
    };
    let published = match phases.run("publish", || store.publish(&map)) {
        Ok(p) => p,
        Err(source) => {
            return Err(UpdateError::Handover {
                recovery: restore_here(effects, &dumped),
                source,
            })
        }
    };
    let cmdline = format!("{} {}", options.cmdline.trim(), published.cmdline_param)
        .trim()
        .to_string();
    let initrd = match (&published.initrd, &options.initrd) {
        (Some(made), _) => Some(made.clone()),
        (None, given) => given.clone(),
    };

    match &early {
        Some(loaded) if loaded.cmdline == cmdline => {}
        Some(loaded) => {
            // Cannot happen: the store's parameter is the one the early load used.
            return Err(UpdateError::EarlyLoadMismatch {
                loaded: loaded.cmdline.clone(),
                needed: cmdline,
                recovery: restore_here(effects, &dumped),
            });
        }
        None => {
            progress(&format!("loading {} with kexec_file_load", image.release));
            let request = LoadRequest {
                kernel: options.kernel.clone(),
                initrd: initrd.clone(),
                cmdline: cmdline.clone(),
            };
            if let Err(source) = phases.run("kexec_load", || effects.load(&request)) {
                return Err(UpdateError::Switch {
                    recovery: restore_here(effects, &dumped),
                    source,
                });
            }
        }
    }
    // The kernel holds its own copy of the segments now.
    if let Some(made) = &published.initrd {
        let _ = std::fs::remove_file(made).map_err(io(made));
    }

    let staged = Staged {
        id: id.clone(),
        map_dir: map_dir.clone(),
        initrd,
        cmdline,
        handover_bytes: published.bytes,
        phases: phases.map().clone(),
        trees,
        pre_copy: pre_copy.rounds.clone(),
    };
    let pending = Pending {
        id,
        phases: phases.map().clone(),
        freeze_realtime_ns: clocks.realtime_ns,
        jump_realtime_ns: effects.clocks().realtime_ns,
        handover_bytes: published.bytes,
        peak_mem_bytes: phases.peak_mem_bytes(),
        pre_copy: pre_copy.rounds.clone(),
        frozen_dump_bytes: published
            .bytes
            .saturating_sub(pre_copy.rounds.iter().map(|r| r.bytes).sum()),
    };
    report::write_json(&options.state_dir.join("pending.json"), &pending)?;
    progress(&format!("jumping into {}", image.release));
    match effects.jump() {
        Ok(()) => Ok(staged),
        Err(source) => {
            let _ = std::fs::remove_file(options.state_dir.join("pending.json"));
            Err(UpdateError::Switch {
                recovery: restore_here(effects, &dumped),
                source,
            })
        }
    }
}
