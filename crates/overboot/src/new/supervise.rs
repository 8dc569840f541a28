//! Rollback: the resume agent runs the restore in a worker process and supervises it. If the
//! worker fails — a tree cannot be restored, a restored tree is not alive, the map does not
//! verify, or the worker dies — the supervisor stops what the worker restored, hands the same
//! Save State Map back to the old kernel (its image, initrd and command line are in the map's
//! rollback recipe) and jumps there; the old kernel's agent restores every tree.
//!
//! ```text
//!  new kernel: supervisor ─► worker (verify, restore) ─ ok ─► report "resumed"
//!                               │ fails / dies
//!                               ▼
//!              kill what was restored, record why, map → old initrd, kexec old kernel
//!  old kernel: supervisor ─► worker ─ ok ─► report "rolled_back" (with the reason)
//!                               │ fails too
//!                               ▼
//!              stop: copy the map to the state dir, report "failed" loudly, exit 9
//! ```
//!
//! A rollback boot carries `overboot.rollback=1` and never rolls back again.

use std::path::{Path, PathBuf};

use overboot_handover::{DirectoryStore, InitrdStore, SaveStateMap, Store};
use overboot_kexec::LoadRequest;

use super::options::ResumeOptions;
use crate::model::files::{self, RESTORED_LIST};
pub use crate::model::records::RollbackRecord;
use crate::model::records::WorkerFailure;
use crate::model::report::{self, Outcome, Report};

/// The command-line marker of a rollback boot.
pub const ROLLBACK_PARAM: &str = "overboot.rollback=1";
/// Marks the command line `overboot resume --recover` makes for itself and its worker: this
/// boot came back through the firmware after a new kernel that never ran its agent.
pub const RECOVERED_PARAM: &str = "overboot.recovered=1";

/// Why the supervisor stopped without the trees running anywhere.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The restore failed on the old kernel too: the map was kept.
    #[error(
        "restore failed on the old kernel too; the Save State Map is kept at {kept}: {reason}"
    )]
    AlsoFailed { kept: String, reason: String },
    /// Going back failed: the map was kept.
    #[error("cannot roll back ({step}); the Save State Map is kept at {kept}: {reason}")]
    CannotRollBack {
        step: String,
        kept: String,
        reason: String,
    },
    /// The worker could not be started.
    #[error("cannot start the resume worker")]
    Worker(#[source] std::io::Error),
    /// A directory store's map never appeared: nothing was restored, nothing rolled back.
    #[error(
        "the Save State Map's directory {} is not there after {} s (is its file system \
         mounted?): nothing was restored and nothing rolled back; the preserved services wait \
         in the map on that disk: mount it at the same path and run `overboot resume` again",
        path.display(),
        waited.as_secs()
    )]
    MapNotMounted {
        path: std::path::PathBuf,
        waited: std::time::Duration,
    },
}

/// Waits up to `wait` for `path` to exist (polling every 100 ms), saying once that it waits.
fn appears(path: &std::path::Path, wait: std::time::Duration, say: &mut dyn FnMut(&str)) -> bool {
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        if !said {
            say(&format!(
                "waiting up to {} s for {} (a directory store) to be mounted",
                wait.as_secs(),
                path.display()
            ));
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

/// What the supervisor achieved (when it returns at all: a rollback jumps away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervised {
    /// No map on the command line: a normal boot.
    NoMap,
    /// The worker restored every tree.
    Resumed,
}

fn release() -> String {
    crate::host::proc::release()
}

/// The worker's failure as one line: the error chain it recorded ([`WorkerFailure`]), or the
/// signal that killed it, or its exit status.
fn failure_reason(status: std::process::ExitStatus, record: Option<&WorkerFailure>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), record) {
        (Some(sig), _) => format!("the resume worker was killed by signal {sig}"),
        (None, Some(record)) if !record.chain.is_empty() => record.reason(),
        (None, _) => format!("the resume worker exited with {status}"),
    }
}

/// Copies the map to the persistent state directory so nothing is lost; returns where.
fn keep_map(location: &Path, state_dir: &Path) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dest = state_dir.join(files::KEPT_MAPS).join(secs.to_string());
    let kept = SaveStateMap::open(location)
        .and_then(|map| DirectoryStore { path: dest.clone() }.publish(&map));
    match kept {
        Ok(_) => dest.display().to_string(),
        Err(e) => format!(
            "{} (copying it to {} failed: {e})",
            location.display(),
            dest.display()
        ),
    }
}

/// Stops every process of the trees the worker listed as restored.
/// After a successful resume the map is no longer needed: it holds process memory, and in the
/// initrd store it occupies RAM, in a directory store disk space. Removing it is best effort.
fn forget_map(location: &Path) {
    match std::fs::remove_dir_all(location) {
        Ok(()) => tracing::info!(map = %location.display(), "map removed after the resume"),
        Err(e) => {
            tracing::warn!(map = %location.display(), error = %e, "could not remove the map")
        }
    }
}

fn stop_restored(work_dir: &Path) {
    let list = std::fs::read_to_string(work_dir.join(RESTORED_LIST)).unwrap_or_default();
    for pid in list
        .lines()
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn save_failed(options: &ResumeOptions, from: &str, detail: String) {
    let report = Report::of_attempt(
        format!("{}-failed", std::process::id()),
        Outcome::Failed,
        detail,
        from.to_string(),
        release(),
    );
    if let Err(e) = report.save(&options.state_dir) {
        tracing::error!(error = %e, "cannot write the failure report");
    }
}

/// Runs the worker and, when it fails, rolls back (or, on a rollback boot, stops loudly).
pub fn supervise(
    options: &ResumeOptions,
    worker: &mut dyn FnMut() -> std::io::Result<std::process::ExitStatus>,
    say: &mut dyn FnMut(&str),
) -> Result<Supervised, RollbackError> {
    let Ok(Some((store, location))) =
        overboot_handover::locate_store_from_cmdline(&options.cmdline)
    else {
        // No map, or a malformed parameter: the worker reports the latter.
        WorkerFailure::clear(&options.work_dir);
        let status = worker().map_err(RollbackError::Worker)?;
        return match status.success() {
            true => Ok(Supervised::NoMap),
            false => Err(RollbackError::CannotRollBack {
                step: "locating the map".into(),
                kept: "(no map)".into(),
                reason: failure_reason(status, WorkerFailure::load(&options.work_dir).as_ref()),
            }),
        };
    };
    // A map on a disk the new boot has not mounted yet: neither a restore nor a rollback can
    // read it, and a rollback would only meet the same absence. The map stays where it is.
    if store == overboot_handover::StoreKind::Dir && !appears(&location, options.store_wait, say) {
        let err = RollbackError::MapNotMounted {
            path: location,
            waited: options.store_wait,
        };
        save_failed(options, "", err.to_string());
        return Err(err);
    }
    let _ = std::fs::remove_file(options.work_dir.join(RESTORED_LIST));
    WorkerFailure::clear(&options.work_dir);
    let status = worker().map_err(RollbackError::Worker)?;
    if status.success() {
        forget_map(&location);
        return Ok(Supervised::Resumed);
    }
    let reason = failure_reason(status, WorkerFailure::load(&options.work_dir).as_ref());
    stop_restored(&options.work_dir);
    let from = SaveStateMap::open(&location)
        .map(|m| m.manifest().from.release.clone())
        .unwrap_or_default();
    if options.rollback {
        let kept = keep_map(&location, &options.state_dir);
        save_failed(
            options,
            &from,
            format!("RESTORE FAILED ON THE OLD KERNEL TOO; the Save State Map is kept at {kept}; nothing runs: {reason}"),
        );
        return Err(RollbackError::AlsoFailed { kept, reason });
    }
    say(&format!("restore failed on {}: {reason}", release()));
    let fail = |step: &str, why: String| {
        let kept = keep_map(&location, &options.state_dir);
        save_failed(
            options,
            &from,
            format!("rollback failed at {step}: {why}; the Save State Map is kept at {kept}; first failure: {reason}"),
        );
        RollbackError::CannotRollBack {
            step: step.into(),
            kept,
            reason: why,
        }
    };
    let map = SaveStateMap::open(&location).map_err(|e| fail("opening the map", e.to_string()))?;
    let recipe = map.manifest().rollback.clone();
    let record = RollbackRecord {
        failed_on: release(),
        reason: reason.clone(),
    };
    report::write_json(&files::rollback_record(&options.state_dir), &record)
        .map_err(|e| fail("recording why", e.to_string()))?;
    save_failed(
        options,
        &from,
        format!(
            "restore failed on {}: {reason}; rolling back to {from}",
            release()
        ),
    );
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|e| fail("creating the work directory", e.to_string()))?;
    // The map goes back the way it came: a directory store stays where it is (on a systemd
    // host the initrd's files are gone after switch_root), RAM goes back in the old initrd.
    let out = options.work_dir.join("rollback-initrd.img");
    let (published, initrd) = if store == overboot_handover::StoreKind::Dir {
        let published = DirectoryStore {
            path: location.clone(),
        }
        .publish(&map)
        .map_err(|e| fail("handing the map's directory back", e.to_string()))?;
        (published, recipe.initrd.clone())
    } else {
        let published = InitrdStore::new(recipe.initrd.clone(), &out)
            .publish(&map)
            .map_err(|e| fail("appending the map to the old initrd", e.to_string()))?;
        let initrd = published.initrd.clone().unwrap_or(out);
        (published, Some(initrd))
    };
    let cmdline = format!(
        "{} {} {ROLLBACK_PARAM}",
        recipe.cmdline, published.cmdline_param
    );
    say(&format!(
        "rolling back to {from} ({})",
        recipe.kernel.display()
    ));
    overboot_kexec::load(&LoadRequest {
        kernel: recipe.kernel.clone(),
        initrd,
        cmdline: cmdline.trim().to_string(),
    })
    .map_err(|e| fail("loading the old kernel", e.to_string()))?;
    say(&format!("jumping back into {from}"));
    match overboot_kexec::jump() {
        Ok(never) => match never {},
        Err(e) => Err(fail("jumping into the old kernel", e.to_string())),
    }
}

/// Whether a command line is a rollback boot's.
pub fn is_rollback(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == ROLLBACK_PARAM)
}

/// Whether `cmdline` is a recovery's ([`RECOVERED_PARAM`]).
pub fn is_recovered(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == RECOVERED_PARAM)
}

/// The current executable, to run the worker.
pub fn worker_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("overboot"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(code: i32) -> std::process::ExitStatus {
        std::process::ExitStatus::from_raw(code << 8)
    }

    fn failure(chain: &[&str]) -> WorkerFailure {
        WorkerFailure {
            class: 7,
            chain: chain.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_reason_is_the_workers_error_chain() {
        let record = failure(&["resume failed", "restore of pid-7 failed"]);
        assert_eq!(
            failure_reason(exited(7), Some(&record)),
            "resume failed / restore of pid-7 failed"
        );
        let killed = std::process::ExitStatus::from_raw(9);
        assert!(failure_reason(killed, Some(&record)).contains("signal 9"));
        assert!(failure_reason(exited(101), None).contains("exited with"));
        assert!(is_rollback("console=ttyS0 overboot.rollback=1"));
        assert!(!is_rollback("console=ttyS0"));
        assert!(is_recovered(
            "console=ttyS0 overboot.rollback=1 overboot.recovered=1"
        ));
        assert!(!is_recovered("console=ttyS0 overboot.rollback=1"));
    }

    #[test]
    fn a_failed_restore_on_the_old_kernel_keeps_the_map_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let map_dir = dir.path().join("ssm");
        let mut writer = SaveStateMap::create(&map_dir).unwrap();
        writer
            .add_bytes("trees/pid-7/core-7.img", b"image")
            .unwrap();
        writer
            .finish(overboot_handover::Manifest::default())
            .unwrap();
        let state = dir.path().join("state");
        let options = ResumeOptions {
            cmdline: format!(
                "console=ttyS0 overboot.handover=dir:{} {ROLLBACK_PARAM}",
                map_dir.display()
            ),
            state_dir: state.clone(),
            work_dir: dir.path().join("run"),
            fault: None,
            rollback: true,
            recovered: false,
            store_wait: std::time::Duration::ZERO,
        };
        let mut calls = 0;
        let work = dir.path().join("run");
        let mut worker = || {
            calls += 1;
            failure(&["resume failed", "criu said no"])
                .save(&work)
                .unwrap();
            Ok(exited(7))
        };
        let err = supervise(&options, &mut worker, &mut |_| {}).unwrap_err();
        assert_eq!(calls, 1, "a rollback boot must not retry");
        let RollbackError::AlsoFailed { kept, reason } = err else {
            panic!("expected AlsoFailed");
        };
        assert!(reason.contains("criu said no"));
        SaveStateMap::open(&kept).unwrap().verify_files().unwrap();
        let report = Report::last(&state).unwrap();
        assert_eq!(report.outcome, Outcome::Failed);
        assert!(report.detail.unwrap().contains("OLD KERNEL TOO"));
    }

    #[test]
    fn a_directory_store_that_never_appears_is_waited_for_then_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let missing = dir.path().join("not-mounted/ssm/1-1");
        let options = ResumeOptions {
            cmdline: format!("console=ttyS0 overboot.handover=dir:{}", missing.display()),
            state_dir: state.clone(),
            work_dir: dir.path().join("run"),
            fault: None,
            rollback: false,
            recovered: false,
            store_wait: std::time::Duration::from_millis(300),
        };
        let mut calls = 0;
        let mut worker = || {
            calls += 1;
            Ok(exited(0))
        };
        let mut said = Vec::new();
        let err = supervise(&options, &mut worker, &mut |l| said.push(l.to_string())).unwrap_err();
        assert_eq!(calls, 0, "no restore without the map");
        assert!(matches!(err, RollbackError::MapNotMounted { .. }), "{err}");
        assert!(
            err.to_string().contains("run `overboot resume` again"),
            "{err}"
        );
        assert!(said.iter().any(|l| l.contains("waiting up to")), "{said:?}");
        let report = Report::last(&state).unwrap();
        assert_eq!(report.outcome, Outcome::Failed);
        assert!(report.detail.unwrap().contains("is not there"));
    }

    #[test]
    fn no_map_means_a_normal_boot() {
        let dir = tempfile::tempdir().unwrap();
        let options = ResumeOptions {
            cmdline: "console=ttyS0".into(),
            state_dir: dir.path().join("state"),
            work_dir: dir.path().join("run"),
            fault: None,
            rollback: false,
            recovered: false,
            store_wait: std::time::Duration::ZERO,
        };
        let mut worker = || Ok(exited(0));
        assert_eq!(
            supervise(&options, &mut worker, &mut |_| {}).unwrap(),
            Supervised::NoMap
        );
    }
}
