//! `overboot resume`'s worker: the agent the new kernel's early userspace runs (under
//! [`super::supervise`], which rolls back when this fails). A short sequence of phases over
//! [`Agent`]:
//!
//! ```text
//!  locate the map ─► verify (all but the pages) ─► carried files ─► pids free? ─► network
//!    under the lock ─► restore every tree (pages checked beside it; lazy trees from their
//!    page servers) ─► nudge the peers ─► unlock ─► alive? ─► unit records ─► report
//! ```
//!
//! Every restored tree's clocks keep moving forward (its time namespace is advanced by the
//! time since the freeze), and the report carries the phases of both kernels and the blackout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use overboot_handover::{DeferredFiles, Manifest, PreservedTree, SaveStateMap};

use super::agent::Agent;
pub use super::error::ResumeError;
pub use super::options::ResumeOptions;
use super::prepare;
use super::restore::{TreeFailure, TreeJob};
use crate::model::fault::Fault;
use crate::model::files;
use crate::model::phases::{Phase, Phases};
use crate::model::records::RollbackRecord;
use crate::model::report::{self, LazyPages, Outcome, Pending, Report, TreeReport};

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        .open(work_dir.join(files::RESTORED_LIST))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The size of the map's files as its manifest lists them: what the report says was handed
/// over when `update`'s `pending.json` did not come across (a state directory the new boot does
/// not share with the old one).
fn map_bytes(manifest: &Manifest) -> u64 {
    manifest.files.values().map(|f| f.size).sum()
}

/// Runs the agent. `Ok(None)` when the command line names no map (a normal boot).
pub fn run(agent: &mut dyn Agent, options: &ResumeOptions) -> Result<Option<Report>, ResumeError> {
    let started = Instant::now();
    let at_start = agent.clocks();
    let Some(location) =
        overboot_handover::locate_from_cmdline(&options.cmdline).map_err(ResumeError::Locate)?
    else {
        return Ok(None);
    };
    let pending: Option<Pending> = report::read_json(&files::pending(&options.state_dir)).ok();
    let _flipped = prepare::inject_flip(options.fault.as_ref(), &location);
    let mut phases = Phases::default();
    let (map, pages) = phases.run(Phase::VerifyMap, || prepare::open_verified(&location))?;
    let manifest = map.manifest().clone();
    let pending = pending.filter(|p| p.freeze_realtime_ns == manifest.clocks.realtime_ns);
    let id = pending
        .as_ref()
        .map(|p| p.id.clone())
        .unwrap_or_else(|| format!("{}-resumed", manifest.created_unix_ms / 1000));
    carry_phases(&mut phases, &manifest, pending.as_ref(), &at_start);
    prepare::put_back_files(&map, &manifest)?;
    pids_free(agent, &manifest)?;
    // Locks first, then the interfaces: peers get no RST until the sockets are back.
    let network = manifest.network.clone().unwrap_or_default();
    phases.run(Phase::Network, || agent.apply_network(&network))?;

    let restore_start = Instant::now();
    let (jobs, clock_offsets_ns) = prepare::jobs(&map, &manifest, options, &id, &mut || {
        agent.clocks().realtime_ns
    })?;
    let restored = restore(
        agent,
        options,
        &map,
        &manifest,
        &id,
        jobs,
        &pages,
        &mut phases,
    )?;
    let Restored { mut trees, logs } = restored;
    phases.record(Phase::Restore, ms(restore_start.elapsed()));
    // The peers resend what the blackout swallowed now, not at their next timeout.
    let nudged = phases.run(Phase::Nudge, || nudge(agent, &manifest, &mut trees));
    // The new kernel's peak: the map and every restored tree are both in memory now.
    let peak_here = crate::model::phases::mem_used_now().unwrap_or(0);
    // Every socket is back: let new connections in.
    agent.release_network(&network);
    check_alive(agent, &manifest, &mut trees)?;
    // Preserved systemd services adopt their processes when systemd starts them.
    agent.record_units(&options.work_dir, &manifest.trees);
    let end = agent.clocks();
    let blackout_ms = end.realtime_ns.saturating_sub(manifest.clocks.realtime_ns) / 1_000_000;
    phases.record(Phase::AgentTotal, ms(started.elapsed()));
    phases.record(Phase::Blackout, blackout_ms);
    let (outcome, detail) = outcome(options, pending.as_ref(), end.realtime_ns);
    if outcome != Outcome::Resumed {
        agent.mark_reboot_required();
    }
    let report = Report {
        id,
        outcome,
        detail,
        from: manifest.from.release.clone(),
        to: agent.release(),
        trees,
        phases: phases.map().clone(),
        handover_bytes: pending
            .as_ref()
            .map_or_else(|| map_bytes(&manifest), |p| p.handover_bytes),
        blackout_ms,
        peak_mem_bytes: pending
            .as_ref()
            .map_or(0, |p| p.peak_mem_bytes)
            .max(peak_here),
        clock_offsets_ns,
        logs,
        pre_copy: pending
            .as_ref()
            .map(|p| p.pre_copy.clone())
            .unwrap_or_default(),
        frozen_dump_bytes: pending.as_ref().map_or(0, |p| p.frozen_dump_bytes),
        warnings: manifest.warnings.clone(),
    };
    report.save(&options.state_dir)?;
    let _ = std::fs::remove_file(files::pending(&options.state_dir));
    let _ = std::fs::remove_file(files::rollback_record(&options.state_dir));
    // Last, with the update done: the peers still silent get their other rounds.
    let nudged: Vec<(&[i32], super::nudge::Nudged)> = manifest
        .trees
        .iter()
        .zip(nudged)
        .filter_map(|(tree, n)| n.map(|n| (tree.pids.as_slice(), n)))
        .collect();
    agent.follow_up(&nudged);
    Ok(Some(report))
}

/// The old kernel's phases (from the manifest, then the fuller `pending.json`), the time from
/// the jump to this agent, and the new kernel's boot.
fn carry_phases(
    phases: &mut Phases,
    manifest: &Manifest,
    pending: Option<&Pending>,
    at_start: &overboot_handover::ClockReadings,
) {
    for (name, value) in &manifest.phases {
        phases.set_named(name, *value);
    }
    if let Some(p) = pending {
        for (name, value) in &p.phases {
            phases.set_named(name, *value);
        }
        let jump_to_agent = at_start.realtime_ns.saturating_sub(p.jump_realtime_ns) / 1_000_000;
        phases.record(Phase::JumpToAgent, jump_to_agent);
    }
    phases.record(Phase::NewKernelBoot, at_start.boottime_ns / 1_000_000);
}

/// Every preserved pid is free; from here on new processes of this boot get higher ones (the
/// boot goes on beside the restore: udev workers, units starting).
fn pids_free(agent: &mut dyn Agent, manifest: &Manifest) -> Result<(), ResumeError> {
    let highest = manifest
        .trees
        .iter()
        .flat_map(PreservedTree::ids)
        .max()
        .unwrap_or(0);
    agent.reserve_pids(highest);
    for tree in &manifest.trees {
        for pid in tree.ids() {
            if let Some(comm) = agent.process_name(pid) {
                return Err(ResumeError::PidTaken {
                    tree: tree.name.clone(),
                    pid,
                    comm,
                });
            }
        }
    }
    Ok(())
}

/// What the restore left for the report.
struct Restored {
    trees: Vec<TreeReport>,
    logs: Vec<PathBuf>,
}

/// Starts the page servers of the lazy trees, restores every tree with the memory pages
/// checked beside it, and reads the outcome: every tree's report, or the first failure.
#[allow(clippy::too_many_arguments)]
fn restore(
    agent: &mut dyn Agent,
    options: &ResumeOptions,
    map: &SaveStateMap,
    manifest: &Manifest,
    id: &str,
    mut jobs: Vec<TreeJob>,
    pages: &DeferredFiles,
    phases: &mut Phases,
) -> Result<Restored, ResumeError> {
    // The page servers of the lazy trees listen before their restores start; the pieces of
    // the memory pages they put in whole they check themselves, piece by piece before first
    // use, so the gate leaves those (a tree whose server cannot start is restored, and
    // checked, in full).
    let servers_start = Instant::now();
    let daemons: Vec<_> = jobs
        .iter()
        .map(|job| {
            job.lazy
                .then(|| agent.start_page_server(job, map.dir()))
                .flatten()
        })
        .collect();
    // A server that did not start may have left its directory half rewritten for a lazy
    // restore (see `pagemap::flatten`): the eager restore gets a fresh one (its log stays).
    for ((job, daemon), tree) in jobs.iter_mut().zip(&daemons).zip(&manifest.trees) {
        if job.lazy && daemon.is_none() {
            let scratch = options
                .work_dir
                .join(id)
                .join(format!("{}-eager", tree.name));
            let now = agent.clocks().realtime_ns;
            job.images = prepare::prepare_images(map, manifest, tree, &scratch, now)?.0;
            job.lazy = false;
        }
    }
    let served_dirs: Vec<PathBuf> = jobs
        .iter()
        .zip(&daemons)
        .filter(|(_, d)| d.is_some())
        .map(|(job, _)| job.images.clone())
        .collect();
    let served = super::lazy::served_pieces(&served_dirs);
    if !served_dirs.is_empty() {
        // Part of `restore` (before the trees' own restores), for the benchmark.
        phases.record(Phase::LazyServers, ms(servers_start.elapsed()));
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
    let kill_agent = options.fault == Some(Fault::KillAgent);
    let (results, checked) = agent.restore_all(&jobs, daemons, Some(&check_pages), &|| {
        if kill_agent {
            tracing::warn!("injected fault: killing the agent in the middle of the restore");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    });
    // Beside the restore, not after it: not part of the blackout's sum of phases.
    phases.record(
        Phase::VerifyPages,
        pages_ms.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(Err(source)) = checked {
        // Every tree was aborted at post-restore: none of their tasks ran.
        return Err(ResumeError::Verify {
            path: map.dir().to_path_buf(),
            source,
        });
    }
    outcomes(agent, options, map, manifest, id, &jobs, results)
}

/// Every tree's report from its restore's result, or the first tree that failed on its own
/// (not one aborted because another failed).
fn outcomes(
    agent: &mut dyn Agent,
    options: &ResumeOptions,
    map: &SaveStateMap,
    manifest: &Manifest,
    id: &str,
    jobs: &[TreeJob],
    results: Vec<super::restore::TreeResult>,
) -> Result<Restored, ResumeError> {
    let report_dir = Report::dir(&options.state_dir, id);
    let mut trees = Vec::new();
    let mut logs = Vec::new();
    let mut first_failure: Option<(ResumeError, bool)> = None;
    for ((tree, job), result) in manifest.trees.iter().zip(jobs).zip(results) {
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
                    crate::host::served::record(&options.work_dir, &tree.name, pid);
                    logs.push(log.clone());
                    LazyPages { pid, log }
                });
                trees.push(TreeReport {
                    name: tree.name.clone(),
                    root_pid: tree.root_pid,
                    pids: tree.pids.clone(),
                    restored_pid: Some(outcome.pid),
                    alive: false,
                    restore_ms: result.ms,
                    time_namespace: agent.time_namespace(outcome.pid),
                    lazy_pages,
                    nudged_connections: 0,
                });
            }
            Err(failure) => {
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
    match first_failure {
        Some((error, _)) => Err(error),
        None => Ok(Restored { trees, logs }),
    }
}

/// Nudges the peers of every tree's connections; returns what each nudge did (never fails).
fn nudge(
    agent: &mut dyn Agent,
    manifest: &Manifest,
    reports: &mut [TreeReport],
) -> Vec<Option<super::nudge::Nudged>> {
    let mut nudged = Vec::new();
    for (tree, report) in manifest.trees.iter().zip(reports.iter_mut()) {
        match agent.nudge(&tree.pids) {
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
                nudged.push(Some(n));
            }
            Err(e) => {
                tracing::warn!(
                    tree = %tree.name,
                    error = %overboot_checkpoint::error_chain(&e),
                    "cannot nudge the peers: they resend at their own timeout"
                );
                nudged.push(None);
            }
        }
    }
    nudged
}

/// Every restored tree runs: its root, and a unit's main process. Other processes of the tree
/// may have ended since they resumed (a shell's `sleep 1`, a worker a server retires): that is
/// the service going on, logged, not a failed restore.
fn check_alive(
    agent: &mut dyn Agent,
    manifest: &Manifest,
    reports: &mut [TreeReport],
) -> Result<(), ResumeError> {
    for (tree, report) in manifest.trees.iter().zip(reports.iter_mut()) {
        let main = tree.unit.as_ref().map(|u| u.main_pid);
        let needed = std::iter::once(tree.root_pid).chain(main.filter(|m| *m > 0));
        for pid in needed {
            if !agent.alive(pid) {
                report.alive = false;
                return Err(ResumeError::NotAlive {
                    tree: tree.name.clone(),
                    pid,
                });
            }
        }
        report.alive = true;
        let ended: Vec<i32> = tree
            .pids
            .iter()
            .copied()
            .filter(|p| !agent.alive(*p))
            .collect();
        if !ended.is_empty() {
            tracing::info!(tree = %tree.name, ?ended, "processes of the tree ended since they resumed");
        }
    }
    Ok(())
}

/// Resumed, or rolled back with the reason the supervisor recorded.
fn outcome(
    options: &ResumeOptions,
    pending: Option<&Pending>,
    now_realtime_ns: u64,
) -> (Outcome, Option<String>) {
    if options.recovered {
        let (to, since) = pending.map_or_else(
            || ("the new kernel".to_string(), String::new()),
            |p| {
                let secs = now_realtime_ns.saturating_sub(p.jump_realtime_ns) / 1_000_000_000;
                (p.to_release.clone(), format!(" {secs} s after the jump"))
            },
        );
        return (
            Outcome::RecoveredAfterFailedBoot,
            Some(format!(
                "{to} never reached the agent (a panic, a hang, a root or init it could not \
                 find: its own boot log says which); the machine came back through the \
                 firmware on this kernel{since}, and the trees were restored from the map"
            )),
        );
    }
    if !options.rollback {
        return (Outcome::Resumed, None);
    }
    let reason: Option<RollbackRecord> =
        report::read_json(&files::rollback_record(&options.state_dir)).ok();
    (
        Outcome::RolledBack,
        Some(reason.map_or_else(
            || "rolled back to the old kernel".to_string(),
            |r| format!("rolled back from {}: {}", r.failed_on, r.reason),
        )),
    )
}
