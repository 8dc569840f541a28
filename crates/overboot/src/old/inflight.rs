//! An update between its freeze and its jump, on record: from the freeze on, `update` keeps
//! `<state dir>/inflight.json` up to date (the trees held, each tree dumped or being dumped,
//! the phase), and removes it when it returns. Should `update` die in that window (SIGKILL,
//! a crash), the record is how its trees come back: its guardian — a small process started
//! before the freeze that waits for `update` to exit ([`recover_after`]) — or else the next
//! `overboot update` or `overboot status` ([`recover_stale`]) restores every dumped tree on the
//! running kernel, lifts the network block and the unit holds, unloads a loaded kernel, and
//! writes a report saying what happened.
//!
//! ```text
//!  update: checks ─► record, guardian ─► [load] ─► pre-copy ─► dump 1 ─► record ─► ... ─► jump
//!                         │ update dies anywhere here
//!                                          ▼
//!  guardian (or the next overboot): tree being dumped settles → end stopped tasks → restore
//!  each dumped tree → unblock, release units, unload → report "interrupted" → record removed
//! ```
//!
//! A record from another boot is stale (the jump happened): it is removed, nothing restored.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::back::{restore_here, Dumped};
use super::effects::Effects;
use crate::host::target::TreeInfo;
use crate::model::files;
use crate::model::phases::Phase;
use crate::model::report::{self, Outcome, Report};

/// How long a tree that CRIU was dumping when `update` died may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The record of an update between its freeze and its jump.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InFlight {
    /// The update's pid.
    pub pid: i32,
    /// The boot it runs in.
    pub boot_id: String,
    /// The phase it entered last.
    pub phase: String,
    /// The trees whose units are held from restarting (all the update's trees).
    pub held: Vec<TreeInfo>,
    /// Every tree dumped so far.
    pub dumped: Vec<Dumped>,
    /// The tree CRIU is dumping now, if any.
    pub dumping: Option<Dumped>,
    /// A new kernel is loaded (to unload).
    pub loaded: bool,
}

impl InFlight {
    /// The record of this process's update, right after its checks passed.
    pub fn start() -> InFlight {
        InFlight {
            pid: i32::try_from(std::process::id()).unwrap_or(0),
            boot_id: crate::host::proc::boot_id(),
            phase: Phase::Check.name().into(),
            held: Vec::new(),
            dumped: Vec::new(),
            dumping: None,
            loaded: false,
        }
    }

    /// The record's file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(files::INFLIGHT)
    }

    /// Writes it (best effort: a failure is logged; the update goes on). Renamed into place,
    /// not synced: it serves this boot only (after a power loss there is nothing to bring
    /// back from RAM), and a sync per step would lengthen the blackout.
    pub fn save(&self, state_dir: &Path) {
        let path = InFlight::path(state_dir);
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::from)
            .and_then(|bytes| {
                std::fs::create_dir_all(state_dir)?;
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot record the update in flight: if it dies, run `overboot status` to bring its trees back");
        }
    }

    /// Notes, in the record on file, that the update entered `phase` (and whether a kernel is
    /// loaded now).
    pub fn enter(state_dir: &Path, phase: Phase, loaded: bool) {
        if let Some(mut record) = InFlight::load(state_dir) {
            record.phase = phase.name().into();
            record.loaded |= loaded;
            record.save(state_dir);
        }
    }

    /// The record in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Option<InFlight> {
        report::read_json(&InFlight::path(state_dir)).ok()
    }

    /// Removes the record.
    pub fn clear(state_dir: &Path) {
        let _ = std::fs::remove_file(InFlight::path(state_dir));
    }
}

/// After `pid` (an update) exited: when it left its record, brings its trees back and returns
/// the report written. What its guardian runs.
pub fn recover_after(
    effects: &mut dyn Effects,
    state_dir: &Path,
    pid: i32,
    how: &str,
) -> Option<Report> {
    // Whoever recovers holds the lock: the guardian and an `overboot status` meanwhile
    // never restore the same trees twice.
    let _lock = lock(state_dir, true)?;
    let record = InFlight::load(state_dir).filter(|r| r.pid == pid)?;
    Some(recover(effects, state_dir, record, how))
}

/// The recovery lock of `state_dir` (`inflight.lock`), waiting for it or not.
fn lock(state_dir: &Path, wait: bool) -> Option<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    std::fs::create_dir_all(state_dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state_dir.join("inflight.lock"))
        .ok()?;
    let how = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    Flock::lock(file, how).ok()
}

/// A record left by an update that no longer runs: brings its trees back (same boot) or drops
/// it (another boot: the jump happened). What `overboot update` and `status` run first.
pub fn recover_stale(effects: &mut dyn Effects, state_dir: &Path) -> Option<Report> {
    if !InFlight::path(state_dir).exists() {
        return None;
    }
    // Its guardian may be at it: then the guardian reports.
    let _lock = lock(state_dir, false)?;
    let record = InFlight::load(state_dir)?;
    if record.boot_id != crate::host::proc::boot_id() {
        InFlight::clear(state_dir);
        return None;
    }
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    if crate::host::proc::alive(record.pid) && record.pid != me {
        return None;
    }
    let how = format!("overboot update (pid {}) is gone", record.pid);
    Some(recover(effects, state_dir, record, &how))
}

/// Restores what the record lists and writes the report.
fn recover(effects: &mut dyn Effects, state_dir: &Path, record: InFlight, how: &str) -> Report {
    tracing::warn!(pid = record.pid, phase = %record.phase, "bringing back the trees of an update that died");
    let mut dumped = record.dumped.clone();
    if let Some(tree) = &record.dumping {
        if settle(tree) {
            dumped.push(tree.clone());
        }
    }
    // Re-arm the holds, so that releasing them adopts what comes back.
    if let Err(e) = effects.hold_units(&record.held) {
        tracing::warn!(error = %e, "cannot hold the units again");
    }
    let sentence = restore_here(effects, &dumped);
    if record.loaded {
        effects.unload();
    }
    InFlight::clear(state_dir);
    let detail = format!(
        "{how} during {}; {sentence}",
        record.phase.replace('_', " ")
    );
    let report = Report::of_attempt(
        format!("{}-interrupted", crate::model::report::new_id()),
        Outcome::Interrupted,
        detail,
        effects.running_release(),
        String::new(),
    );
    if let Err(e) = report.save(state_dir) {
        tracing::error!(error = %e, "cannot write the report of the recovery");
    }
    report
}

/// Waits until CRIU let go of the tree it was dumping (no task of it traced any more); whether
/// the tree needs restoring: false when its tasks run on (CRIU gave up and resumed them).
fn settle(tree: &Dumped) -> bool {
    let pids = tree.stopped.clone().unwrap_or_default();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let states: Vec<Option<char>> = pids.iter().map(|p| task_state(*p)).collect();
        let traced = states.contains(&Some('t'));
        if !traced || Instant::now() >= deadline {
            let running = !states.is_empty()
                && states
                    .iter()
                    .all(|s| matches!(s, Some(c) if *c != 'T' && *c != 't' && *c != 'Z'));
            return !running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `t`, ...), if the task exists.
fn task_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
