//! The decisions of the new kernel's agent, tested without root through a mock [`Agent`] over
//! real Save State Maps written in temporary directories: a preserved pid taken in the new
//! kernel stops everything before the network or any restore; the tree that failed on its own
//! is the one reported; a rollback boot reports why it rolled back; a lazy tree whose page
//! server cannot start is restored whole.

use std::path::{Path, PathBuf};

use overboot::host::network::{NetworkError, NetworkState};
use overboot::model::files;
use overboot::model::records::RollbackRecord;
use overboot::model::report::{self, Outcome};
use overboot::new::agent::Agent;
use overboot::new::lazy::Daemon;
use overboot::new::nudge::{NudgeError, Nudged};
use overboot::new::restore::{Gate, TreeFailure, TreeJob, TreeResult};
use overboot::new::resume::{self, ResumeError, ResumeOptions};
use overboot_checkpoint::{CheckpointError, RestoreOutcome};
use overboot_handover::{
    ClockReadings, DirectoryStore, HandoverError, Manifest, PreservedTree, SaveStateMap,
};

/// How each tree's restore ends, by name (absent: restored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// Fails on its own.
    Fails,
    /// Aborted at post-restore because another failed.
    Aborted,
}

#[derive(Debug, Default)]
struct MockAgent {
    /// Pids taken in the new kernel, with their process names.
    taken: Vec<(i32, String)>,
    /// How trees end (by name).
    ends: Vec<(String, Ends)>,
    /// What happened, in order.
    log: Vec<String>,
    /// The jobs given to the restore.
    jobs: Vec<TreeJob>,
    /// Pids that are not alive after the restore.
    dead: Vec<i32>,
    /// The highest pid new processes were told to stay above.
    reserved: Option<i32>,
}

impl Agent for MockAgent {
    fn clocks(&mut self) -> ClockReadings {
        ClockReadings {
            realtime_ns: 2_000_000_000_000,
            monotonic_ns: 5_000_000_000,
            boottime_ns: 5_000_000_000,
        }
    }

    fn process_name(&mut self, pid: i32) -> Option<String> {
        self.taken
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, c)| c.clone())
    }

    fn reserve_pids(&mut self, highest: i32) {
        self.reserved = Some(highest);
    }

    fn alive(&mut self, pid: i32) -> bool {
        !self.dead.contains(&pid)
    }

    fn release(&mut self) -> String {
        "6.1.0-56-cloud-amd64".into()
    }

    fn apply_network(&mut self, _state: &NetworkState) -> Result<(), NetworkError> {
        self.log.push("network".into());
        Ok(())
    }

    fn release_network(&mut self, _state: &NetworkState) {
        self.log.push("unlock".into());
    }

    fn start_page_server(&mut self, job: &TreeJob, _map: &Path) -> Option<Daemon> {
        self.log.push(format!("page server for {}", job.name));
        None
    }

    fn restore_all(
        &mut self,
        jobs: &[TreeJob],
        daemons: Vec<Option<Daemon>>,
        _gate: Option<Gate<'_>>,
        _on_first_arrival: &(dyn Fn() + Sync),
    ) -> (Vec<TreeResult>, Option<Result<(), HandoverError>>) {
        self.log.push("restore".into());
        self.jobs = jobs.to_vec();
        assert!(daemons.iter().all(Option::is_none));
        let results = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let ends = self.ends.iter().find(|(n, _)| *n == job.name).map(|e| e.1);
                let outcome = match ends {
                    None => Ok(RestoreOutcome {
                        pid: 100 + i32::try_from(i).unwrap(),
                        notifications: Vec::new(),
                    }),
                    Some(Ends::Fails) => Err(TreeFailure::Injected),
                    Some(Ends::Aborted) => Err(TreeFailure::Criu(CheckpointError::HookFailed {
                        script: "post-restore".into(),
                        reason: "another tree failed".into(),
                        message: None,
                        log: overboot_checkpoint::CriuLog {
                            path: PathBuf::from("restore.log"),
                            errors: Vec::new(),
                        },
                    })),
                };
                TreeResult {
                    name: job.name.clone(),
                    outcome,
                    ms: 1,
                    lazy: None,
                }
            })
            .collect();
        (results, Some(Ok(())))
    }

    fn nudge(&mut self, _pids: &[i32]) -> Result<Nudged, NudgeError> {
        Ok(Nudged::default())
    }

    fn follow_up(&mut self, _nudged: &[(&[i32], Nudged)]) {}

    fn time_namespace(&mut self, _pid: i32) -> Option<String> {
        Some("time:[4026531834]".into())
    }

    fn record_units(&mut self, _work_dir: &Path, _trees: &[PreservedTree]) {
        self.log.push("units".into());
    }

    fn mark_reboot_required(&mut self) {
        self.log.push("reboot required".into());
    }
}

/// A machine's directories and a map of trees named `names`, each with the given bytes of
/// memory pages (a sparse file) and pids from 4242 on.
struct Setup {
    _dir: tempfile::TempDir,
    options: ResumeOptions,
}

fn setup(names: &[(&str, u64)], lazy: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let map_dir = dir.path().join("ssm").join("1-1");
    let mut writer = SaveStateMap::create(&map_dir).unwrap();
    let mut trees = Vec::new();
    for (i, (name, page_bytes)) in names.iter().enumerate() {
        let rel = format!("trees/{name}");
        let images = writer.create_dir(&rel).unwrap();
        std::fs::write(images.join("core-1.img"), b"core").unwrap();
        let pages = std::fs::File::create(images.join("pages-1.img")).unwrap();
        pages.set_len(*page_bytes).unwrap();
        writer.adopt_tree(&rel).unwrap();
        let pid = 4242 + i32::try_from(i).unwrap();
        trees.push(PreservedTree {
            name: (*name).into(),
            root_pid: pid,
            // The root and a child.
            pids: vec![pid, pid + 100],
            threads: Vec::new(),
            images: rel,
            cmdline: "worker".into(),
            clocks_realtime_ns: 1_000_000_000_000,
            unit: None,
            journal_streams: Vec::new(),
        });
    }
    writer
        .finish(Manifest {
            trees,
            lazy_restore: lazy,
            ..Manifest::default()
        })
        .unwrap();
    let param = DirectoryStore {
        path: map_dir.clone(),
    }
    .cmdline_param()
    .unwrap();
    let options = ResumeOptions {
        cmdline: format!("console=ttyS0 {param}"),
        state_dir: dir.path().join("state"),
        work_dir: dir.path().join("run"),
        fault: None,
        rollback: false,
        recovered: false,
        store_wait: std::time::Duration::ZERO,
    };
    Setup { _dir: dir, options }
}

#[test]
fn a_taken_pid_stops_everything_before_the_network_or_any_restore() {
    let s = setup(&[("pid-4242", 4096), ("pid-4243", 4096)], false);
    let mut agent = MockAgent {
        taken: vec![(4243, "sshd".into())],
        ..MockAgent::default()
    };
    let err = resume::run(&mut agent, &s.options).unwrap_err();
    let ResumeError::PidTaken { tree, pid, comm } = &err else {
        panic!("expected PidTaken, got {err:?}");
    };
    assert_eq!(
        (tree.as_str(), *pid, comm.as_str()),
        ("pid-4243", 4243, "sshd")
    );
    assert!(agent.log.is_empty(), "it went on: {:?}", agent.log);
    assert!(err.to_string().contains("nothing was restored"), "{err}");
}

#[test]
fn every_tree_restored_gives_a_report_and_the_units_their_records() {
    let s = setup(&[("pid-4242", 4096), ("pid-4243", 4096)], false);
    let mut agent = MockAgent::default();
    let report = resume::run(&mut agent, &s.options).unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Resumed);
    assert_eq!(agent.log, ["network", "restore", "unlock", "units"]);
    // New processes of the boot stay above every preserved pid (the trees' children included).
    assert_eq!(agent.reserved, Some(4343));
    let restored: Vec<_> = report.trees.iter().map(|t| t.restored_pid).collect();
    assert_eq!(restored, [Some(100), Some(101)]);
    assert!(report.trees.iter().all(|t| t.alive));
    // The clocks moved on by the time since the freeze (1000 s in the mock).
    assert_eq!(report.clock_offsets_ns["pid-4242"], 1_000_000_000_000);
    assert!(report.phases.contains_key("verify_map") && report.phases.contains_key("restore"));
    // No pending.json from `update` here: what was handed over is the map's own size (the two
    // trees' pages and cores at least).
    assert!(
        report.handover_bytes >= 2 * (4096 + 4),
        "{}",
        report.handover_bytes
    );
    // What a rollback would stop: the restored trees, listed in the work dir.
    let list = std::fs::read_to_string(s.options.work_dir.join(files::RESTORED_LIST)).unwrap();
    assert_eq!(list, "pid-4242 4242 4342\npid-4243 4243 4343\n");
}

#[test]
fn a_boot_that_came_back_after_a_failed_new_kernel_reports_the_recovery() {
    let mut s = setup(&[("pid-4242", 4096)], false);
    let pending = overboot::model::report::Pending {
        id: "1-1".into(),
        phases: Default::default(),
        freeze_realtime_ns: 0,
        jump_realtime_ns: 1_000_000_000_000,
        handover_bytes: 1,
        peak_mem_bytes: 0,
        pre_copy: Vec::new(),
        recover: Some("overboot.handover=dir:/x".into()),
        to_release: "7.3.4+deb13-cloud-amd64".into(),
        frozen_dump_bytes: 0,
    };
    report::write_json(&files::pending(&s.options.state_dir), &pending).unwrap();
    s.options.rollback = true;
    s.options.recovered = true;
    let mut agent = MockAgent::default();
    let report = resume::run(&mut agent, &s.options).unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::RecoveredAfterFailedBoot);
    let detail = report.detail.unwrap_or_default();
    assert!(
        detail.starts_with("7.3.4+deb13-cloud-amd64 never reached the agent")
            && detail.contains("1000 s after the jump"),
        "{detail}"
    );
    assert_eq!(report.id, "1-1");
    // Nothing is left to recover from a second time.
    assert!(!files::pending(&s.options.state_dir).exists());
}

#[test]
fn a_child_that_ended_after_the_resume_is_the_service_going_on_a_dead_root_a_failure() {
    let s = setup(&[("pid-4242", 4096)], false);
    let mut agent = MockAgent {
        dead: vec![4342],
        ..MockAgent::default()
    };
    let report = resume::run(&mut agent, &s.options).unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Resumed);
    assert!(report.trees[0].alive);

    let s = setup(&[("pid-4242", 4096)], false);
    let mut agent = MockAgent {
        dead: vec![4242],
        ..MockAgent::default()
    };
    let err = resume::run(&mut agent, &s.options).unwrap_err();
    assert!(
        matches!(err, ResumeError::NotAlive { pid: 4242, .. }),
        "{err:?}"
    );
}

#[test]
fn the_tree_that_failed_on_its_own_is_reported_not_one_aborted_for_it() {
    let s = setup(
        &[("pid-4242", 4096), ("pid-4243", 4096), ("pid-4244", 4096)],
        false,
    );
    let mut agent = MockAgent {
        ends: vec![
            ("pid-4242".into(), Ends::Aborted),
            ("pid-4243".into(), Ends::Fails),
            ("pid-4244".into(), Ends::Aborted),
        ],
        ..MockAgent::default()
    };
    let err = resume::run(&mut agent, &s.options).unwrap_err();
    let ResumeError::Restore { tree, .. } = &err else {
        panic!("expected Restore, got {err:?}");
    };
    assert_eq!(tree, "pid-4243");
    // Nothing was unlocked or handed to the units: the supervisor rolls back.
    assert_eq!(agent.log, ["network", "restore"]);
    assert!(!s.options.work_dir.join(files::RESTORED_LIST).exists());
}

#[test]
fn a_rollback_boot_reports_why_it_rolled_back_and_clears_the_record() {
    let mut s = setup(&[("pid-4242", 4096)], false);
    s.options.rollback = true;
    let record = RollbackRecord {
        failed_on: "6.12.111-cloud-amd64".into(),
        reason: "restore of pid-4242 failed".into(),
    };
    let record_file = files::rollback_record(&s.options.state_dir);
    report::write_json(&record_file, &record).unwrap();
    let mut agent = MockAgent::default();
    let report = resume::run(&mut agent, &s.options).unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    // The new kernel is still to be had: the machine says so as Debian's packages do.
    assert!(
        agent.log.iter().any(|l| l == "reboot required"),
        "{:?}",
        agent.log
    );
    assert_eq!(
        report.detail.as_deref(),
        Some("rolled back from 6.12.111-cloud-amd64: restore of pid-4242 failed")
    );
    assert!(!record_file.exists(), "the record outlived its rollback");
    // The report is the last one `status` shows.
    let last = report::Report::last(&s.options.state_dir).unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
}

#[test]
fn a_lazy_tree_whose_server_cannot_start_is_restored_whole_from_a_fresh_directory() {
    let big = overboot::new::lazy::MIN_SERVED_BYTES;
    let s = setup(&[("pid-4242", big), ("pid-4243", 4096)], true);
    let mut agent = MockAgent::default();
    let report = resume::run(&mut agent, &s.options).unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Resumed);
    // Only the tree with enough memory asked for a server; the small one is restored whole.
    assert_eq!(
        agent.log,
        [
            "network",
            "page server for pid-4242",
            "restore",
            "unlock",
            "units"
        ]
    );
    let job = &agent.jobs[0];
    assert!(!job.lazy, "restored lazily without a server");
    assert!(
        job.images.ends_with(PathBuf::from("pid-4242-eager")),
        "not a fresh directory: {}",
        job.images.display()
    );
    assert!(!agent.jobs[1].lazy);
    assert!(report.trees.iter().all(|t| t.lazy_pages.is_none()));
}

#[test]
fn a_rollback_never_restores_lazily() {
    let big = overboot::new::lazy::MIN_SERVED_BYTES;
    let mut s = setup(&[("pid-4242", big)], true);
    s.options.rollback = true;
    let mut agent = MockAgent::default();
    resume::run(&mut agent, &s.options).unwrap().unwrap();
    assert!(!agent.log.iter().any(|l| l.starts_with("page server")));
    assert!(!agent.jobs[0].lazy);
}

#[test]
fn no_map_on_the_command_line_is_a_normal_boot() {
    let mut s = setup(&[("pid-4242", 4096)], false);
    s.options.cmdline = "console=ttyS0".into();
    let mut agent = MockAgent::default();
    assert!(resume::run(&mut agent, &s.options).unwrap().is_none());
    assert!(agent.log.is_empty());
}
