//! All-or-nothing restore: every tree is restored by its own CRIU at the same time, and each
//! CRIU waits in its `post-restore` hook — tasks rebuilt, not yet run, network still locked —
//! until every other tree got there too. Only then do they all resume. If any tree fails
//! before that point, every CRIU is told to abort at `post-restore`, which kills its tasks
//! before they ran a single instruction and before the network lock was lifted: nothing wrote
//! to a file or a socket on the new kernel, so a rollback finds the world as it was dumped.
//!
//! ```text
//!  tree a: criu restore ───────────► post-restore ─┐ wait ┌─► unlock, resume
//!  tree b: criu restore ──► post-restore ──────────┤      │
//!  tree c: criu restore ──────► post-restore ──────┘ all  └─► (or: abort, tasks killed)
//!  gate:   check of the memory pages ──────────────┘
//! ```
//!
//! The gate is one more participant: the check of the map's memory pages, which runs while
//! the trees are restored from them. Its failure aborts every tree like a tree's failure.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use overboot_checkpoint::{
    CheckpointError, Engine, NetworkLockMode, Notification, RestoreOutcome, RestoreRequest,
};

/// One tree to restore.
#[derive(Debug, Clone)]
pub struct TreeJob {
    /// Name in the map.
    pub name: String,
    /// Directory CRIU restores from.
    pub images: PathBuf,
    /// Network lock mode.
    pub lock: NetworkLockMode,
    /// Test fault: fail this tree without calling CRIU.
    pub inject_failure: bool,
    /// CRIU's log level.
    pub log_level: i32,
    /// Restore the memory lazily, from overboot's page server (see [`super::lazy`]), started
    /// by the caller of [`restore_all`]; a server that cannot start makes it an ordinary
    /// restore.
    pub lazy: bool,
    /// The tree's streams to journald, opened anew for it.
    pub journal_streams: Vec<overboot_handover::JournalStream>,
}

/// Why a tree was not restored.
#[derive(Debug, thiserror::Error)]
pub enum TreeFailure {
    /// CRIU failed.
    #[error(transparent)]
    Criu(#[from] CheckpointError),
    /// An injected fault.
    #[error("injected fault: the restore of this tree fails (overboot.fault)")]
    Injected,
}

/// What became of one tree.
#[derive(Debug)]
pub struct TreeResult {
    /// Name in the map.
    pub name: String,
    /// The restored root, or why not.
    pub outcome: Result<RestoreOutcome, TreeFailure>,
    /// Time from the start of the restore to its end.
    pub ms: u64,
    /// The page server left serving the restored tree.
    pub lazy: Option<super::lazy::Daemon>,
}

/// A barrier that also counts failures: everybody waits until each participant arrived or
/// failed, and learns whether all arrived.
#[derive(Debug)]
pub struct AllOrNothing {
    state: Mutex<(usize, usize)>,
    all: Condvar,
    participants: usize,
}

impl AllOrNothing {
    /// A barrier for `participants`.
    pub fn new(participants: usize) -> AllOrNothing {
        AllOrNothing {
            state: Mutex::new((0, 0)),
            all: Condvar::new(),
            participants,
        }
    }

    /// Arrives and waits for everybody; true when nobody failed.
    pub fn arrive(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += 1;
        self.all.notify_all();
        while state.0 + state.1 < self.participants {
            state = self.all.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.1 == 0
    }

    /// Reports a participant that will never arrive.
    pub fn fail(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        self.all.notify_all();
    }
}

fn ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A check that must pass before any restored task runs, run beside the restores.
pub type Gate<'a> = &'a (dyn Fn() -> Result<(), overboot_handover::HandoverError> + Sync);

/// Restores every job at once, all or nothing, with `gate` as one more participant (its
/// result comes back with the trees'). `daemons[i]`, when there, is the page server already
/// listening for `jobs[i]`, which is then restored lazily (stopped if the restore fails).
/// `on_first_arrival` runs when the first tree reaches `post-restore` (the kill-agent fault
/// uses it).
pub fn restore_all(
    jobs: &[TreeJob],
    mut daemons: Vec<Option<super::lazy::Daemon>>,
    gate: Option<Gate<'_>>,
    on_first_arrival: &(dyn Fn() + Sync),
) -> (
    Vec<TreeResult>,
    Option<Result<(), overboot_handover::HandoverError>>,
) {
    let barrier = AllOrNothing::new(jobs.len() + usize::from(gate.is_some()));
    let first = std::sync::Once::new();
    std::thread::scope(|scope| {
        let gate = gate.map(|check| {
            let barrier = &barrier;
            scope.spawn(move || {
                let result = check();
                match &result {
                    Ok(()) => {
                        barrier.arrive();
                    }
                    Err(_) => barrier.fail(),
                }
                result
            })
        });
        daemons.resize_with(jobs.len(), || None);
        let handles: Vec<_> = jobs
            .iter()
            .zip(daemons)
            .map(|(job, daemon)| {
                let barrier = &barrier;
                let first = &first;
                scope.spawn(move || {
                    let start = Instant::now();
                    if job.inject_failure {
                        if let Some(daemon) = daemon {
                            daemon.stop();
                        }
                        barrier.fail();
                        return TreeResult {
                            name: job.name.clone(),
                            outcome: Err(TreeFailure::Injected),
                            ms: ms(start),
                            lazy: None,
                        };
                    }
                    let mut criu = overboot_checkpoint::Criu::default();
                    let mut request = RestoreRequest::new(&job.images);
                    request.lazy_pages = daemon.is_some();
                    request.network_lock = job.lock;
                    request.log_level = job.log_level;
                    request.file_locks = true;
                    // Kept open until CRIU has handed them to the tree.
                    let streams = crate::host::journal::replacement_fds(&job.journal_streams);
                    request.inherit_fds = crate::host::journal::inherited(&streams);
                    let mut arrived = false;
                    let mut hook = |n: &Notification| -> Result<(), String> {
                        if n.script != "post-restore" {
                            return Ok(());
                        }
                        arrived = true;
                        first.call_once(on_first_arrival);
                        if barrier.arrive() {
                            Ok(())
                        } else {
                            Err(
                                "another tree failed to restore: aborting before any task runs"
                                    .into(),
                            )
                        }
                    };
                    let outcome = criu.restore(&request, &mut hook);
                    if outcome.is_err() && !arrived {
                        barrier.fail();
                    }
                    // Without restored tasks the daemon has nothing to serve.
                    let lazy = if outcome.is_ok() {
                        daemon
                    } else {
                        if let Some(daemon) = daemon {
                            daemon.stop();
                        }
                        None
                    };
                    TreeResult {
                        name: job.name.clone(),
                        outcome: outcome.map_err(TreeFailure::from),
                        ms: ms(start),
                        lazy,
                    }
                })
            })
            .collect();
        let trees = handles
            .into_iter()
            .zip(jobs)
            .map(|(h, job)| {
                h.join().unwrap_or_else(|_| TreeResult {
                    name: job.name.clone(),
                    outcome: Err(TreeFailure::Injected),
                    ms: 0,
                    lazy: None,
                })
            })
            .collect();
        let gate = gate.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(overboot_handover::HandoverError::Io {
                    action: "check (the checking thread panicked)",
                    path: PathBuf::new(),
                    source: std::io::Error::other("panic"),
                })
            })
        });
        (trees, gate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// `n` threads arriving at `barrier`.
    fn arriving(barrier: &Arc<AllOrNothing>, n: usize) -> Vec<std::thread::JoinHandle<bool>> {
        (0..n)
            .map(|_| {
                let b = Arc::clone(barrier);
                std::thread::spawn(move || b.arrive())
            })
            .collect()
    }

    #[test]
    fn everybody_passes_when_all_arrive() {
        let barrier = Arc::new(AllOrNothing::new(3));
        let results: Vec<bool> = arriving(&barrier, 3)
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(results, [true, true, true]);
    }

    #[test]
    fn one_failure_aborts_everybody() {
        let barrier = Arc::new(AllOrNothing::new(3));
        let waiting = arriving(&barrier, 2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        barrier.fail();
        for h in waiting {
            assert!(!h.join().unwrap());
        }
    }

    #[test]
    fn an_injected_failure_needs_no_criu() {
        let jobs = [TreeJob {
            name: "pid-1".into(),
            images: PathBuf::from("/nonexistent"),
            lock: NetworkLockMode::Nftables,
            inject_failure: true,
            log_level: 2,
            lazy: false,
            journal_streams: Vec::new(),
        }];
        let (results, gate) = restore_all(&jobs, Vec::new(), None, &|| {});
        assert!(matches!(results[0].outcome, Err(TreeFailure::Injected)));
        assert!(gate.is_none());
    }

    #[test]
    fn a_failed_gate_is_reported_and_a_passed_one_waits_for_the_trees() {
        let failing = || {
            Err(overboot_handover::HandoverError::ImageMissing {
                path: "trees/a/pages-1.img".into(),
            })
        };
        let (_, gate) = restore_all(&[], Vec::new(), Some(&failing), &|| {});
        assert!(matches!(
            gate,
            Some(Err(overboot_handover::HandoverError::ImageMissing { .. }))
        ));
        // With a tree that fails, a passing gate still returns (nobody waits forever).
        let jobs = [TreeJob {
            name: "pid-1".into(),
            images: PathBuf::from("/nonexistent"),
            lock: NetworkLockMode::Nftables,
            inject_failure: true,
            log_level: 2,
            lazy: false,
            journal_streams: Vec::new(),
        }];
        let (results, gate) = restore_all(&jobs, Vec::new(), Some(&|| Ok(())), &|| {});
        assert!(matches!(results[0].outcome, Err(TreeFailure::Injected)));
        assert!(matches!(gate, Some(Ok(()))));
    }
}
