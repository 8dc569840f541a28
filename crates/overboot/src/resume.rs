//! `overboot resume`: the agent the new kernel's early userspace runs. It finds the Save State
//! Map through the kernel command line, verifies it before restoring anything, puts carried
//! files back, checks the preserved PIDs are free, restores every tree inside a time namespace
//! that keeps their clocks moving forward, checks every restored process is alive, and writes
//! the report (phases, blackout) to the state directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use overboot_checkpoint::NetworkLockMode;
use overboot_handover::{DeferredFiles, HandoverError, SaveStateMap};

use crate::fault::{self, Fault};
use crate::network::NetworkState;
use crate::report::{self, Outcome, Pending, Report, ReportError, TreeReport};
use crate::restore::{TreeFailure, TreeJob};
use crate::timens;
use crate::update::read_clocks;

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
    Network(#[from] crate::network::NetworkError),
    /// The map's network section is unreadable.
    #[error("the map's network section is not valid")]
    NetworkState(#[source] serde_json::Error),
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

/// File in the work dir listing the trees restored so far (`name pid pid ...` per line), so
/// that a rollback can stop exactly what this update restored.
pub const RESTORED_LIST: &str = "restored";

/// A directory CRIU restores from: symlinks to the map's images, except the clock record and
/// the TCP stream records, which are copied so they can be edited (clocks advanced, windows of
/// unscaled connections pinned). The map itself stays byte-identical (rollback
/// verifies it again) and CRIU's restore log lands here, not in the map. Pre-copy rounds
/// (`pre-1`, `pre-2`, ... beside the images: [`crate::precopy`]) become directories of links
/// too, chained by the `parent` links CRIU follows.
pub fn restore_dir(images: &Path, scratch: &Path) -> std::io::Result<PathBuf> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch)?;
    }
    std::fs::create_dir_all(scratch)?;
    let rounds = link_images(images, scratch)?;
    for k in &rounds {
        let name = crate::precopy::round_dir(*k);
        std::fs::create_dir(scratch.join(&name))?;
        link_images(&images.join(&name), &scratch.join(&name))?;
    }
    crate::precopy::link_rounds(scratch, &rounds)?;
    Ok(scratch.to_path_buf())
}

/// Links (or copies, for the records a restore edits) the files of `images` into `scratch`;
/// returns the pre-copy rounds found there, which it leaves to the caller.
fn link_images(images: &Path, scratch: &Path) -> std::io::Result<Vec<u32>> {
    let mut rounds = Vec::new();
    for entry in std::fs::read_dir(images)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = scratch.join(&name);
        let round = name.to_str().and_then(crate::precopy::round_of);
        if let Some(k) = round.filter(|_| entry.path().is_dir()) {
            rounds.push(k);
        } else if name == crate::precopy::PARENT_LINK {
            // Not in a map (dropped after the dump); the chain is rebuilt from the rounds.
        } else if name == "timens-0.img" || name.to_string_lossy().starts_with("tcp-stream-") {
            std::fs::copy(entry.path(), &target)?;
        } else {
            std::os::unix::fs::symlink(entry.path(), &target)?;
        }
    }
    Ok(rounds)
}

/// Whether a map file holds raw memory pages (CRIU's `pages-<n>.img`, in a tree's images or a
/// pre-copy round): bytes copied into the restored processes, never interpreted, so their
/// check can run beside the restore.
pub fn is_memory_pages(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.strip_prefix("pages-")
        .and_then(|rest| rest.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Starts the page server of `job` (the map at `map`); `None` (an ordinary restore) when it
/// cannot serve.
fn start_page_server(job: &TreeJob, map: &Path) -> Option<crate::lazy::Daemon> {
    std::env::current_exe()
        .map_err(|source| crate::lazy::LazyError::Spawn {
            shell: PathBuf::from("/proc/self/exe"),
            source,
        })
        .and_then(|program| crate::lazy::start(&program, &job.images, map))
        .map_err(|e| {
            let error = overboot_checkpoint::error_chain(&e);
            tracing::warn!(tree = %job.name, %error, "no lazy restore: restoring every page now");
        })
        .ok()
}

/// The directory a tree is restored from (see [`restore_dir`]), made in `scratch`: its clock
/// record advanced by the time since the tree's clocks were read at the freeze (see
/// [`timens`]), the windows of its unscaled TCP connections pinned. Returns it with that time.
fn prepare_images(
    map: &SaveStateMap,
    manifest: &overboot_handover::Manifest,
    tree: &overboot_handover::PreservedTree,
    scratch: &Path,
) -> Result<(PathBuf, u64), ResumeError> {
    let images = restore_dir(&map.path_of(&tree.images), scratch).map_err(|source| {
        ResumeError::Scratch {
            path: scratch.to_path_buf(),
            source,
        }
    })?;
    let recorded = if tree.clocks_realtime_ns > 0 {
        tree.clocks_realtime_ns
    } else {
        manifest.clocks.realtime_ns
    };
    let elapsed = timens::elapsed_since(recorded, read_clocks().realtime_ns);
    let images_error = |source| ResumeError::Images {
        tree: tree.name.clone(),
        source,
    };
    overboot_checkpoint::images::advance_clocks(&images, elapsed).map_err(images_error)?;
    let pinned =
        overboot_checkpoint::images::pin_unscaled_windows(&images).map_err(images_error)?;
    if !pinned.is_empty() {
        tracing::info!(tree = %tree.name, connections = pinned.len(), "pinned unscaled TCP windows");
    }
    Ok((images, elapsed))
}

/// Puts back the byte an injected `flip-byte` fault flipped, when dropped.
struct Unflip(Option<(PathBuf, u8)>);

impl Drop for Unflip {
    fn drop(&mut self) {
        if let Some((path, original)) = &self.0 {
            let _ = fault::unflip_byte(path, *original);
        }
    }
}

/// Appends a restored tree to the work dir's list (best effort: the list only helps a rollback
/// stop what was restored).
fn note_restored(work_dir: &Path, name: &str, pids: &[i32]) {
    use std::io::Write;
    let line = pids
        .iter()
        .fold(name.to_string(), |l, p| format!("{l} {p}"));
    let _ = std::fs::create_dir_all(work_dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work_dir.join(RESTORED_LIST))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn comm_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether process `pid` exists (0 and negative pids name groups, never one process).
pub(crate) fn alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the agent. `Ok(None)` when the command line names no map (a normal boot).
pub fn run(options: &ResumeOptions) -> Result<Option<Report>, ResumeError> {
    let started = Instant::now();
    let at_start = read_clocks();
    let Some(location) =
        overboot_handover::locate_from_cmdline(&options.cmdline).map_err(ResumeError::Locate)?
    else {
        return Ok(None);
    };
    let pending: Option<Pending> = report::read_json(&options.state_dir.join("pending.json")).ok();

    let mut phases: BTreeMap<String, u64> = BTreeMap::new();
    let verify_start = Instant::now();
    // Everything CRIU interprets is checked now; the memory pages (raw bytes copied into the
    // restored processes, the bulk of the map) while the restore reads them: no restored task
    // runs before they passed too (see `restore::restore_all`).
    let verify = |path: &Path| -> Result<(SaveStateMap, DeferredFiles), HandoverError> {
        let map = SaveStateMap::open(path)?;
        let (_, pages) = map.verify_split(is_memory_pages)?;
        Ok((map, pages))
    };
    // The injected corruption stands for one in transit: the data at rest is good again once
    // this agent is done with it (the guard puts the byte back when dropped).
    let _flipped = Unflip(match &options.fault {
        Some(Fault::FlipByte(tree)) => {
            let dir = SaveStateMap::open(&location)
                .ok()
                .and_then(|m| m.manifest().tree(tree).map(|t| m.path_of(&t.images)));
            dir.and_then(|d| fault::flip_byte(&d).ok())
        }
        _ => None,
    });
    let (map, pages) = verify(&location).map_err(|source| ResumeError::Verify {
        path: location.clone(),
        source,
    })?;
    phases.insert("verify_map".into(), ms(verify_start.elapsed()));
    let manifest = map.manifest().clone();
    let pending = pending.filter(|p| p.freeze_realtime_ns == manifest.clocks.realtime_ns);
    let id = pending
        .as_ref()
        .map(|p| p.id.clone())
        .unwrap_or_else(|| format!("{}-resumed", manifest.created_unix_ms / 1000));
    for (name, value) in &manifest.phases {
        phases.insert(name.clone(), *value);
    }
    if let Some(p) = &pending {
        for (name, value) in &p.phases {
            phases.insert(name.clone(), *value);
        }
        let jump_to_agent = at_start.realtime_ns.saturating_sub(p.jump_realtime_ns) / 1_000_000;
        phases.insert("jump_to_agent".into(), jump_to_agent);
    }
    phases.insert("new_kernel_boot".into(), at_start.boottime_ns / 1_000_000);

    // Carried files first: restored processes reopen them by path.
    for carried in &manifest.carried_files {
        let put_back = || -> std::io::Result<()> {
            if let Some(parent) = carried.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(map.path_of(&carried.stored_as), &carried.path)?;
            std::fs::set_permissions(&carried.path, std::fs::Permissions::from_mode(carried.mode))?;
            std::os::unix::fs::chown(&carried.path, Some(carried.uid), Some(carried.gid))
        };
        put_back().map_err(|source| ResumeError::CarriedFile {
            path: carried.path.clone(),
            source,
        })?;
    }

    // Every preserved pid must be free before anything is restored.
    for tree in &manifest.trees {
        for pid in &tree.pids {
            if let Some(comm) = comm_of(*pid) {
                return Err(ResumeError::PidTaken {
                    tree: tree.name.clone(),
                    pid: *pid,
                    comm,
                });
            }
        }
    }

    // Locks first, then the interfaces: peers get no RST until the sockets are back.
    let network: NetworkState = match &manifest.network {
        Some(value) => serde_json::from_value(value.clone()).map_err(ResumeError::NetworkState)?,
        None => NetworkState::default(),
    };
    let network_start = Instant::now();
    crate::network::apply(&network)?;
    phases.insert("network".into(), ms(network_start.elapsed()));
    // CRIU deletes its lock table when the tasks resume (none is there when the lock was off).
    let lock_mode = NetworkLockMode::Nftables;

    let report_dir = Report::dir(&options.state_dir, &id);
    let restore_start = Instant::now();
    let mut logs = Vec::new();
    let mut clock_advance_ns = BTreeMap::new();
    let mut jobs = Vec::new();
    for tree in &manifest.trees {
        let scratch = options.work_dir.join(&id).join(&tree.name);
        let (restore_images, elapsed) = prepare_images(&map, &manifest, tree, &scratch)?;
        clock_advance_ns.insert(
            tree.name.clone(),
            i64::try_from(elapsed).unwrap_or(i64::MAX),
        );
        // A rollback brings every page back before the tasks run: it is the safe way home. A
        // tree with little memory is restored whole too: its server would cost more than it
        // saves (see `lazy::MIN_SERVED_BYTES`).
        let mut lazy = manifest.lazy_restore && !options.rollback;
        if lazy {
            let bytes = crate::lazy::page_bytes(&restore_images);
            if bytes < crate::lazy::MIN_SERVED_BYTES {
                tracing::info!(tree = %tree.name, bytes, "little memory: restoring every page now");
                lazy = false;
            }
        }
        // With `lazy`, the page server flags the pre-copied holes lazy in these copies of the
        // pagemaps before it listens (see `pageserver`).
        jobs.push(TreeJob {
            name: tree.name.clone(),
            images: restore_images,
            lock: lock_mode,
            inject_failure: options.fault == Some(Fault::RestoreFail(tree.name.clone())),
            log_level: manifest
                .criu_log_level
                .map_or(overboot_checkpoint::DEFAULT_LOG_LEVEL, i32::from),
            lazy,
        });
    }
    let kill_agent = options.fault == Some(Fault::KillAgent);
    // The page servers of the lazy trees listen before their restores start; the pieces of
    // the memory pages they put in whole they check themselves, piece by piece before first
    // use, so the gate leaves those (a tree whose server cannot start is restored, and
    // checked, in full).
    let servers_start = Instant::now();
    let daemons: Vec<Option<crate::lazy::Daemon>> = jobs
        .iter()
        .map(|job| {
            job.lazy
                .then(|| start_page_server(job, map.dir()))
                .flatten()
        })
        .collect();
    // A server that did not start may have left its directory half rewritten for a lazy
    // restore (see `pagemap::flatten`): the eager restore gets a fresh one (its log stays).
    for ((job, daemon), tree) in jobs.iter_mut().zip(&daemons).zip(&manifest.trees) {
        if job.lazy && daemon.is_none() {
            let scratch = options
                .work_dir
                .join(&id)
                .join(format!("{}-eager", tree.name));
            job.images = prepare_images(&map, &manifest, tree, &scratch)?.0;
        }
    }
    let served_dirs: Vec<PathBuf> = jobs
        .iter()
        .zip(&daemons)
        .filter(|(_, d)| d.is_some())
        .map(|(job, _)| job.images.clone())
        .collect();
    let served = crate::lazy::served_pieces(&served_dirs);
    if !served_dirs.is_empty() {
        // Part of `restore` (before the trees' own restores), for the benchmark.
        phases.insert("lazy_servers".into(), ms(servers_start.elapsed()));
    }
    let pages_ms = std::sync::atomic::AtomicU64::new(0);
    let check_pages = || {
        let start = Instant::now();
        let result = pages
            .verify_except(|rel, piece| served.get(rel).is_some_and(|s| s.contains(&piece)))
            .map(drop);
        pages_ms.store(ms(start.elapsed()), std::sync::atomic::Ordering::Relaxed);
        result
    };
    let (results, checked) =
        crate::restore::restore_all(&jobs, daemons, Some(&check_pages), &|| {
            if kill_agent {
                tracing::warn!("injected fault: killing the agent in the middle of the restore");
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        });
    // Beside the restore, not after it: not part of the blackout's sum of phases.
    phases.insert(
        "verify_pages".into(),
        pages_ms.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(Err(source)) = checked {
        // Every tree was aborted at post-restore: none of their tasks ran.
        return Err(ResumeError::Verify {
            path: location.clone(),
            source,
        });
    }
    let mut trees = Vec::new();
    let mut first_failure = None;
    for ((tree, job), result) in manifest.trees.iter().zip(&jobs).zip(results) {
        for (dir, log) in [
            (&map.path_of(&tree.images), "dump.log"),
            (&job.images, "restore.log"),
        ] {
            let to = report_dir.join(format!("{}-{log}", tree.name));
            if std::fs::create_dir_all(&report_dir).is_ok()
                && std::fs::copy(dir.join(log), &to).is_ok()
            {
                logs.push(to);
            }
        }
        match result.outcome {
            Ok(outcome) => {
                note_restored(&options.work_dir, &tree.name, &tree.pids);
                let lazy_pages = result.lazy.map(|daemon| {
                    let log = daemon.log.clone();
                    let pid = daemon.detach();
                    crate::lazy::record(&options.work_dir, &tree.name, pid);
                    logs.push(log.clone());
                    crate::report::LazyPages { pid, log }
                });
                trees.push(TreeReport {
                    name: tree.name.clone(),
                    root_pid: tree.root_pid,
                    pids: tree.pids.clone(),
                    restored_pid: Some(outcome.pid),
                    alive: false,
                    restore_ms: result.ms,
                    time_namespace: std::fs::read_link(format!("/proc/{}/ns/time", outcome.pid))
                        .ok()
                        .map(|l| l.to_string_lossy().into_owned()),
                    lazy_pages,
                    nudged_connections: 0,
                });
            }
            Err(failure) => {
                // The first tree that failed on its own, not one aborted because of it.
                let aborted = matches!(
                    &failure,
                    TreeFailure::Criu(overboot_checkpoint::CheckpointError::HookFailed { .. })
                );
                if first_failure.is_none()
                    || (!aborted && first_failure.as_ref().is_some_and(|(_, a)| *a))
                {
                    first_failure = Some((
                        ResumeError::Restore {
                            tree: tree.name.clone(),
                            source: Box::new(failure),
                        },
                        aborted,
                    ));
                }
            }
        }
    }
    if let Some((error, _)) = first_failure {
        return Err(error);
    }
    phases.insert("restore".into(), ms(restore_start.elapsed()));
    // The peers resend what the blackout swallowed now, not at their next timeout.
    let nudge_start = Instant::now();
    let mut nudged = Vec::new();
    for (tree, report) in manifest.trees.iter().zip(trees.iter_mut()) {
        match crate::nudge::nudge_tree(&tree.pids) {
            Ok(n) => {
                report.nudged_connections = n.connections();
                if n.connections() > 0 {
                    tracing::info!(
                        tree = %tree.name,
                        connections = n.connections(),
                        probes = n.probes,
                        "nudged the peers of the restored connections"
                    );
                }
                nudged.push((tree.pids.as_slice(), n));
            }
            Err(e) => tracing::warn!(
                tree = %tree.name,
                error = %overboot_checkpoint::criu::error_chain(&e),
                "cannot nudge the peers: they resend at their own timeout"
            ),
        }
    }
    phases.insert("nudge".into(), ms(nudge_start.elapsed()));
    // The new kernel's peak: the map and every restored tree are both in memory now.
    let peak_here = crate::phases::mem_used_now().unwrap_or(0);
    // Every socket is back: let new connections in.
    crate::network::release(&network);
    for (tree, report) in manifest.trees.iter().zip(trees.iter_mut()) {
        report.alive = tree.pids.iter().all(|pid| alive(*pid));
        if !report.alive {
            let pid = tree.pids.iter().copied().find(|p| !alive(*p)).unwrap_or(0);
            return Err(ResumeError::NotAlive {
                tree: tree.name.clone(),
                pid,
            });
        }
    }
    // Preserved systemd services adopt their processes when systemd starts them.
    if let Err(e) = crate::systemd::write_records(&options.work_dir, &manifest.trees) {
        tracing::error!(error = %e, "cannot record the restored units: they will not adopt their processes");
    }
    let end = read_clocks();
    let blackout_ms = end.realtime_ns.saturating_sub(manifest.clocks.realtime_ns) / 1_000_000;
    phases.insert("agent_total".into(), ms(started.elapsed()));
    phases.insert("blackout".into(), blackout_ms);
    let (outcome, detail) = if options.rollback {
        let reason: Option<crate::rollback::RollbackRecord> =
            report::read_json(&options.state_dir.join(crate::rollback::RECORD)).ok();
        (
            Outcome::RolledBack,
            Some(reason.map_or_else(
                || "rolled back to the old kernel".to_string(),
                |r| format!("rolled back from {}: {}", r.failed_on, r.reason),
            )),
        )
    } else {
        (Outcome::Resumed, None)
    };
    let report = Report {
        id,
        outcome,
        detail,
        from: manifest.from.release.clone(),
        to: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        trees,
        phases,
        handover_bytes: pending.as_ref().map_or(0, |p| p.handover_bytes),
        blackout_ms,
        peak_mem_bytes: pending
            .as_ref()
            .map_or(0, |p| p.peak_mem_bytes)
            .max(peak_here),
        clock_offsets_ns: clock_advance_ns,
        logs,
        pre_copy: pending
            .as_ref()
            .map(|p| p.pre_copy.clone())
            .unwrap_or_default(),
        frozen_dump_bytes: pending.as_ref().map_or(0, |p| p.frozen_dump_bytes),
    };
    report.save(&options.state_dir)?;
    let _ = std::fs::remove_file(options.state_dir.join("pending.json"));
    let _ = std::fs::remove_file(options.state_dir.join(crate::rollback::RECORD));
    // Last, with the update done: the peers still silent get their other rounds.
    crate::nudge::follow_up(&nudged);
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_criu_page_files_are_memory_pages() {
        for rel in [
            "trees/pid-1/pages-1.img",
            "trees/pid-1/pre-2/pages-13.img",
            "pages-7.img",
        ] {
            assert!(is_memory_pages(rel), "{rel}");
        }
        for rel in [
            "trees/pid-1/pagemap-1.img",
            "trees/pid-1/pages-.img",
            "trees/pid-1/pages-1.img.bak",
            "trees/pages-1.img/core-1.img",
            "trees/pid-1/pages-x.img",
            "files/0",
        ] {
            assert!(!is_memory_pages(rel), "{rel}");
        }
    }
}
