//! The side effects of an update on the running kernel, behind one trait so that the
//! update's decisions are unit-tested without root (`tests/update_decisions.rs`):
//! [`HostEffects`] is the real system — `overboot-kexec`, CRIU, `/proc`, `nft`, systemd.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use overboot_checkpoint::{CheckpointError, DumpRequest, Engine, NetworkLockMode, RestoreRequest};
use overboot_handover::{ClockReadings, JournalStream, PreservedTree};
use overboot_kexec::{KernelImage, KexecError, LoadRequest};

use crate::host::network::{NetworkError, NetworkState};
use crate::host::systemd::{Host, SystemdError};
use crate::host::target::{Target, TargetError, TreeInfo};
use crate::model::phases::Phase;

/// What becomes of a tree's tasks once their dump succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDump {
    /// Killed: their memory is freed before the update goes on.
    Kill,
    /// Left stopped, their TCP connections locked: their memory stays where it is until the
    /// kexec abandons it (or a failure ends them with [`Effects::end_stopped`]).
    Stop,
}

/// The side effects of an update.
pub trait Effects {
    /// The tree (and pid) of a page server still filling a lazily restored tree's memory.
    fn lazy_still_serving(&mut self, work_dir: &Path) -> Option<(String, i32)> {
        crate::host::served::still_serving(work_dir)
    }
    /// The running kernel's release.
    fn running_release(&mut self) -> String;
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
        crate::host::proc::meminfo("MemAvailable")
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
    /// [`crate::host::dirty`]): what the next round would copy. `None` when they cannot be counted.
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
    /// Restores a tree on this kernel from `images`, with new streams to journald in place of
    /// `journal_streams`; returns its root pid.
    fn restore(
        &mut self,
        images: &Path,
        journal_streams: &[JournalStream],
    ) -> Result<i32, CheckpointError>;
    /// Loads the new kernel.
    fn load(&mut self, request: &LoadRequest) -> Result<KernelImage, KexecError>;
    /// Unloads it again (best effort: an update that failed after loading early).
    fn unload(&mut self);
    /// Jumps into the loaded kernel. Returns only on failure in reality; `Ok` in tests.
    fn jump(&mut self) -> Result<(), KexecError>;
    /// The host's init system (systemd or not, overboot's generator installed or not).
    fn systemd_host(&mut self) -> Host {
        Host::default()
    }
    /// Keeps the service manager from restarting the services of `trees` while they are
    /// dumped (systemd: a runtime `Restart=no`).
    fn hold_units(&mut self, _trees: &[TreeInfo]) -> Result<(), SystemdError> {
        Ok(())
    }
    /// Lifts [`Effects::hold_units`] after a failed update; the services of the trees named in
    /// `restored` (restored on this kernel) adopt their processes again.
    fn release_units(&mut self, _restored: &[String]) {}
    /// The signal (SIGINT, SIGTERM, SIGHUP) that asked the update to stop, if one did; asked
    /// at `at`'s boundary, where the update can stop cleanly.
    fn interrupted(&mut self, _at: Phase) -> Option<i32> {
        None
    }
    /// The block-mode shutdown inhibitors held now (systemd hosts), as one line each.
    fn shutdown_inhibitors(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Starts the guardian that brings the frozen trees back should this process die before
    /// the jump (see [`super::inflight`]).
    fn guard(&mut self, _state_dir: &Path) {}
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
    /// The last of SIGINT, SIGTERM, SIGHUP received (0: none), once [`HostEffects::for_update`]
    /// registered them.
    signal: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// `OVERBOOT_TEST_SIGNAL=<SIGNAL>@<phase>` (tests only): this process signals itself when
    /// the update reaches that phase's boundary.
    test_signal: Option<(nix::sys::signal::Signal, String)>,
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
            signal: std::sync::Arc::default(),
            test_signal: None,
        }
    }

    /// The real system for the update `options` ask for, stopping at the next phase boundary
    /// on SIGINT, SIGTERM or SIGHUP (see [`Effects::interrupted`]).
    pub fn for_update(options: &super::options::UpdateOptions) -> HostEffects {
        let mut effects = HostEffects::new(
            options.network_lock,
            &options.work_dir,
            options.criu_log_level,
        );
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            let registered = signal_hook::flag::register_usize(
                signal,
                std::sync::Arc::clone(&effects.signal),
                usize::try_from(signal).unwrap_or(0),
            );
            if let Err(e) = registered {
                tracing::warn!(signal, error = %e, "cannot catch the signal: it ends the update at once");
            }
        }
        effects.test_signal = std::env::var("OVERBOOT_TEST_SIGNAL")
            .ok()
            .and_then(|v| parse_test_signal(&v));
        effects
    }

    /// A feature CRIU reports (`false`, logged, when it cannot be asked).
    fn feature(&mut self, pick: fn(&overboot_checkpoint::Features) -> bool, what: &str) -> bool {
        match self.criu.features() {
            Ok(features) => pick(&features),
            Err(e) => {
                tracing::warn!(error = %overboot_checkpoint::error_chain(&e), "cannot ask CRIU for {what}");
                false
            }
        }
    }

    fn held_units(&self) -> Vec<String> {
        crate::host::systemd::unit_names(self.held.iter().filter_map(|t| t.unit.as_ref()))
    }
}

/// How long the tasks of a stopped tree may take to be gone once killed (a large tree's
/// memory is freed first; its parent, outside the tree, reaps it).
const END_STOPPED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `SIGKILL@write_map` → (SIGKILL, `write_map`).
fn parse_test_signal(value: &str) -> Option<(nix::sys::signal::Signal, String)> {
    let (signal, phase) = value.split_once('@')?;
    Some((signal.parse().ok()?, phase.to_string()))
}

impl Effects for HostEffects {
    fn interrupted(&mut self, at: Phase) -> Option<i32> {
        if let Some((signal, _)) = self.test_signal.take_if(|(_, p)| p == at.name()) {
            tracing::warn!(%signal, phase = at.name(), "test hook: signalling this update");
            let _ = nix::sys::signal::raise(signal);
        }
        match self.signal.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            signal => i32::try_from(signal).ok(),
        }
    }

    fn shutdown_inhibitors(&mut self) -> Vec<String> {
        if !Host::detect().booted {
            return Vec::new();
        }
        match crate::host::systemd::inhibit::shutdown_blockers() {
            Ok(found) => found.iter().map(ToString::to_string).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the shutdown inhibitors");
                Vec::new()
            }
        }
    }

    fn guard(&mut self, state_dir: &Path) {
        let pid = std::process::id().to_string();
        let log = self.work_dir.join("guardian.log");
        let _ = std::fs::create_dir_all(&self.work_dir);
        let stderr = std::fs::File::create(&log).map_or_else(|_| Stdio::null(), Stdio::from);
        // Its own process group: the terminal's Ctrl-C and a kill of this group spare it.
        let spawned = std::env::current_exe().and_then(|exe| {
            Command::new(exe)
                .args(["guard", "--pid", &pid, "--state-dir"])
                .arg(state_dir)
                .arg("--work-dir")
                .arg(&self.work_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .process_group(0)
                .spawn()
        });
        match spawned {
            Ok(child) => tracing::info!(pid = child.id(), "guardian started"),
            Err(e) => {
                tracing::warn!(error = %e, "no guardian: should this update die, the next `overboot status` brings its trees back")
            }
        }
    }

    fn running_release(&mut self) -> String {
        crate::host::proc::release()
    }

    fn kexec_preflight(&mut self) -> Result<(), KexecError> {
        overboot_kexec::preflight()
    }

    fn inspect_kernel(&mut self, path: &Path) -> Result<KernelImage, KexecError> {
        overboot_kexec::inspect(path)
    }

    fn inspect_targets(&mut self, targets: &[Target]) -> Result<Vec<TreeInfo>, TargetError> {
        let me = nix::unistd::getpid().as_raw();
        crate::host::target::inspect_all(targets, me)
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
            crate::host::network::lock_tables().map(drop)?;
        }
        Ok(())
    }

    fn block_new_connections(&mut self, ports: &BTreeSet<u16>) -> Result<(), NetworkError> {
        crate::host::network::block_new_connections(ports)
    }

    fn unblock_new_connections(&mut self) {
        crate::host::network::unblock_new_connections();
    }

    fn capture_network(&mut self) -> Result<NetworkState, NetworkError> {
        let (interfaces, routes) = crate::host::network::capture_addresses();
        let tables = crate::host::network::lock_tables()?;
        if !self.network_lock {
            // Test mode: the connections are left unguarded from here on, as they would be
            // without a lock; peers get RSTs from this kernel and from the next.
            tracing::warn!("network lock off: lifting CRIU's lock after the dump");
            crate::host::network::release(&NetworkState {
                tables,
                ..NetworkState::default()
            });
            return Ok(NetworkState {
                locked: false,
                interfaces,
                routes,
                ..NetworkState::default()
            });
        }
        Ok(NetworkState {
            locked: true,
            interfaces,
            routes,
            tables,
            ..NetworkState::default()
        })
    }

    fn clocks(&mut self) -> ClockReadings {
        crate::host::proc::read_clocks()
    }

    fn memory_tracking(&mut self) -> bool {
        self.feature(|f| f.mem_track, "memory tracking: no pre-copy")
    }

    fn lazy_pages(&mut self) -> bool {
        self.feature(|f| f.lazy_pages, "lazy pages")
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
        crate::host::dirty::dirty_bytes(&tree.pids())
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
        request.external = journal_externals(&tree.journal_streams);
        self.criu
            .dump(&request, &mut overboot_checkpoint::accept_all)
            .map(|_| ())
    }

    fn end_stopped(&mut self, pids: &[i32]) -> std::io::Result<()> {
        crate::host::target::end_tasks(pids, END_STOPPED_TIMEOUT)
    }

    fn restore(
        &mut self,
        images: &Path,
        journal_streams: &[JournalStream],
    ) -> Result<i32, CheckpointError> {
        // As in the new kernel (see `resume`): from a scratch directory, the map untouched, with
        // the windows of connections whose peer does not scale pinned (else they crawl).
        let scratch = self
            .work_dir
            .join("local-restore")
            .join(images.file_name().unwrap_or_default());
        let images = crate::model::images::restore_dir(images, &scratch).map_err(|source| {
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
        let streams = crate::host::journal::replacement_fds(journal_streams);
        request.inherit_fds = crate::host::journal::inherited(&streams);
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

    fn systemd_host(&mut self) -> Host {
        Host::detect()
    }

    fn hold_units(&mut self, trees: &[TreeInfo]) -> Result<(), SystemdError> {
        self.held = trees.iter().filter(|t| t.unit.is_some()).cloned().collect();
        crate::host::systemd::hold_restarts(&self.held_units())
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
                threads: Vec::new(),
                images: String::new(),
                cmdline: t.cmdline.clone(),
                clocks_realtime_ns: 0,
                unit: t.unit.clone(),
                journal_streams: Vec::new(),
            })
            .collect();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/sbin/overboot"));
        crate::host::systemd::release_restarts(&units, &restored, &exe, &self.work_dir);
        self.held.clear();
    }
}

/// CRIU's `--external` names for a tree's streams to journald: only the tree's end is dumped.
fn journal_externals(streams: &[JournalStream]) -> Vec<String> {
    streams
        .iter()
        .map(|s| format!("unix[{}]", s.inode))
        .collect()
}
