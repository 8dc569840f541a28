//! The decisions of `overboot update`, tested without root through a mock [`Effects`]: nothing
//! is frozen before every check passed, and once a tree is dumped every later failure brings it
//! back on the running kernel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use overboot::host::network::{NetworkError, NetworkState};
use overboot::host::store::Handover;
use overboot::host::target::{Target, TargetError, TreeInfo};
use overboot::old::effects::{AfterDump, Effects};
use overboot::old::update::{self, UpdateError, UpdateOptions};
use overboot_checkpoint::CheckpointError;
use overboot_handover::{ClockReadings, RollbackRecipe};
use overboot_kexec::{KernelImage, KexecError, LoadRequest};

/// Which effect fails, and what happened.
#[derive(Debug, Default)]
struct Mock {
    fail_preflight: bool,
    fail_target: bool,
    fail_engine: bool,
    fail_dump_of: Option<i32>,
    fail_load: bool,
    fail_jump: bool,
    log: Vec<String>,
    memory: Option<u64>,
    /// A systemd host (`None`: not systemd), whose unit holds are logged.
    systemd: Option<overboot::host::systemd::Host>,
    /// The engine tracks memory changes (pre-copy rounds happen).
    tracking: bool,
    /// Bytes each pre-copy round writes, in order (then 1 KiB).
    pre_bytes: Vec<usize>,
    /// Bytes written since the last round, as counted before each round after a first, in
    /// order (then none counted).
    dirty: Vec<u64>,
    /// The pre-copy round (from 1) that fails half-way.
    fail_pre_round: Option<usize>,
    /// The engine can restore lazily.
    lazy: bool,
    /// What each successful dump did with its tree, by root pid.
    after_dump: Vec<(i32, AfterDump)>,
    /// Stopped tasks cannot be ended.
    fail_end_stopped: bool,
    /// The network lock cannot be set up.
    fail_network: bool,
    /// The running kernel's release (default 6.1.0-47).
    running: Option<String>,
    /// The engine's version (default 3.17.1).
    engine: Option<String>,
    /// A signal that arrives when the update reaches this phase's boundary (and stays).
    interrupt_at: Option<(&'static str, i32)>,
    /// That signal arrived.
    interrupted: bool,
    /// Block-mode shutdown inhibitors held.
    inhibitors: Vec<String>,
}

fn tree(pid: i32) -> TreeInfo {
    TreeInfo {
        target: Target::Pid(pid),
        name: format!("pid-{pid}"),
        root: pid,
        cmdline: "worker".into(),
        processes: vec![overboot::host::target::ProcessInfo {
            pid,
            ppid: 1,
            comm: "worker".into(),
            threads: 1,
            rss_bytes: 0,
        }],
        fds: Default::default(),
        tmpfs_files: Default::default(),
        listen_ports: Default::default(),
        unit: None,
        journal_streams: Vec::new(),
    }
}

impl Effects for Mock {
    fn shutdown_inhibitors(&mut self) -> Vec<String> {
        self.inhibitors.clone()
    }

    fn interrupted(&mut self, at: overboot::model::phases::Phase) -> Option<i32> {
        if let Some((phase, signal)) = self.interrupt_at {
            self.interrupted |= phase == at.name();
            if self.interrupted {
                return Some(signal);
            }
        }
        None
    }

    fn running_release(&mut self) -> String {
        self.running
            .clone()
            .unwrap_or_else(|| "6.1.0-47-cloud-amd64".into())
    }

    fn kexec_preflight(&mut self) -> Result<(), KexecError> {
        self.log.push("preflight".into());
        if self.fail_preflight {
            return Err(KexecError::Disabled);
        }
        Ok(())
    }

    fn inspect_kernel(&mut self, path: &Path) -> Result<KernelImage, KexecError> {
        self.log.push("inspect_kernel".into());
        Ok(KernelImage {
            path: path.into(),
            release: "6.1.0-56-cloud-amd64".into(),
            version_string: "6.1.0-56-cloud-amd64 (x)".into(),
            boot_protocol: (2, 15),
            size: 1,
            cmdline_size: 2048,
        })
    }

    fn inspect_targets(&mut self, targets: &[Target]) -> Result<Vec<TreeInfo>, TargetError> {
        self.log.push("inspect_targets".into());
        if self.fail_target {
            return Err(TargetError::Init {
                target: "pid:1".into(),
            });
        }
        Ok(targets
            .iter()
            .map(|t| match t {
                Target::Pid(p) => tree(*p),
                Target::Unit(u) => panic!("the mock resolves no unit ({u})"),
            })
            .collect())
    }

    fn probe_engine(&mut self) -> Result<String, CheckpointError> {
        self.log.push("probe_engine".into());
        if self.fail_engine {
            return Err(CheckpointError::CriuExited {
                status: std::process::ExitStatus::default(),
                stderr: "no criu".into(),
            });
        }
        Ok(self.engine.clone().unwrap_or_else(|| "3.17.1".into()))
    }

    fn check_network(&mut self, _trees: &[TreeInfo]) -> Result<(), NetworkError> {
        self.log.push("check_network".into());
        if self.fail_network {
            return Err(NetworkError::Tool {
                command: "nft list tables".into(),
                stderr: "no nftables".into(),
            });
        }
        Ok(())
    }

    fn block_new_connections(&mut self, _ports: &BTreeSet<u16>) -> Result<(), NetworkError> {
        self.log.push("block".into());
        Ok(())
    }

    fn unblock_new_connections(&mut self) {
        self.log.push("unblock".into());
    }

    fn capture_network(&mut self) -> Result<NetworkState, NetworkError> {
        self.log.push("capture_network".into());
        Ok(NetworkState::default())
    }

    fn clocks(&mut self) -> ClockReadings {
        ClockReadings::default()
    }

    fn memory_tracking(&mut self) -> bool {
        self.tracking
    }

    fn lazy_pages(&mut self) -> bool {
        self.lazy
    }

    fn dirty_bytes(&mut self, tree: &TreeInfo) -> Option<u64> {
        let count = self.log.iter().filter(|l| l.starts_with("dirty")).count();
        self.log.push(format!("dirty {}", tree.root));
        self.dirty.get(count).copied()
    }

    fn pre_dump(
        &mut self,
        tree: &TreeInfo,
        images: &Path,
        parent: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let round = self
            .log
            .iter()
            .filter(|l| l.starts_with("pre_dump"))
            .count()
            + 1;
        self.log
            .push(format!("pre_dump {} {}", tree.root, parent.unwrap_or("-")));
        // As CRIU: pages, then the link to the parent.
        let bytes = self.pre_bytes.get(round - 1).copied().unwrap_or(1024);
        std::fs::write(images.join("pages-1.img"), vec![7u8; bytes]).expect("pages");
        if self.fail_pre_round == Some(round) {
            return Err(CheckpointError::CriuExited {
                status: std::process::ExitStatus::default(),
                stderr: "pre-dump failed".into(),
            });
        }
        if let Some(parent) = parent {
            std::os::unix::fs::symlink(parent, images.join("parent")).expect("parent link");
        }
        Ok(())
    }

    fn dump(
        &mut self,
        tree: &TreeInfo,
        images: &Path,
        parent: Option<&str>,
        after: AfterDump,
    ) -> Result<(), CheckpointError> {
        match parent {
            Some(parent) => self.log.push(format!("dump {} {parent}", tree.root)),
            None => self.log.push(format!("dump {}", tree.root)),
        }
        if self.fail_dump_of == Some(tree.root) {
            return Err(CheckpointError::CriuExited {
                status: std::process::ExitStatus::default(),
                stderr: "dump failed".into(),
            });
        }
        std::fs::write(images.join("core-1.img"), b"image").expect("write image");
        self.after_dump.push((tree.root, after));
        if let Some(parent) = parent {
            std::os::unix::fs::symlink(parent, images.join("parent")).expect("parent link");
        }
        Ok(())
    }

    fn end_stopped(&mut self, pids: &[i32]) -> std::io::Result<()> {
        let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
        self.log.push(format!("end_stopped {}", pids.join(",")));
        if self.fail_end_stopped {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "pid 100 is still there",
            ));
        }
        Ok(())
    }

    fn restore(
        &mut self,
        images: &Path,
        _journal_streams: &[overboot_handover::JournalStream],
    ) -> Result<i32, CheckpointError> {
        let name = images.file_name().map(|n| n.to_string_lossy().into_owned());
        self.log
            .push(format!("restore {}", name.unwrap_or_default()));
        Ok(1)
    }

    fn load(&mut self, _request: &LoadRequest) -> Result<KernelImage, KexecError> {
        self.log.push("load".into());
        if self.fail_load {
            return Err(KexecError::Busy);
        }
        self.inspect_kernel(Path::new("/k"))
    }

    fn unload(&mut self) {
        self.log.push("unload".into());
    }

    fn memory_available(&mut self) -> u64 {
        self.memory.unwrap_or(u64::MAX)
    }

    fn systemd_host(&mut self) -> overboot::host::systemd::Host {
        self.systemd.clone().unwrap_or_default()
    }

    fn hold_units(
        &mut self,
        _trees: &[TreeInfo],
    ) -> Result<(), overboot::host::systemd::SystemdError> {
        if self.systemd.is_some() {
            self.log.push("hold".into());
        }
        Ok(())
    }

    fn release_units(&mut self, restored: &[String]) {
        if self.systemd.is_some() {
            self.log.push(format!("release {}", restored.join(",")));
        }
    }

    fn jump(&mut self) -> Result<(), KexecError> {
        self.log.push("jump".into());
        if self.fail_jump {
            return Err(KexecError::NotLoaded);
        }
        Ok(())
    }
}

fn options(work: &Path) -> UpdateOptions {
    UpdateOptions {
        kernel: PathBuf::from("/boot/vmlinuz-new"),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        preserve: vec![Target::Pid(100), Target::Pid(200)],
        work_dir: work.join("run"),
        state_dir: work.join("state"),
        rollback: RollbackRecipe::default(),
        network_lock: true,
        handover: Handover::default(),
        store_why: "--handover".into(),
        store_default: false,
        pre_copy_rounds: 3,
        criu_log_level: 2,
        lazy_restore: false,
        ignore_inhibitors: false,
    }
}

fn run(mock: &mut Mock) -> (Result<update::Staged, UpdateError>, tempfile::TempDir) {
    run_with(mock, |_| {})
}

fn run_with(
    mock: &mut Mock,
    adjust: impl FnOnce(&mut UpdateOptions),
) -> (Result<update::Staged, UpdateError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = options(dir.path());
    adjust(&mut options);
    let result = update::run(mock, &options, &mut |_| {});
    (result, dir)
}

#[test]
fn lazy_restore_needs_the_engine_and_travels_in_the_map() {
    let mut mock = Mock::default();
    let (result, _dir) = run_with(&mut mock, |o| o.lazy_restore = true);
    let err = result.expect_err("no lazy pages here");
    assert!(matches!(err, UpdateError::LazyUnsupported), "{err}");
    assert!(err.to_string().contains("nothing was frozen"), "{err}");
    assert!(!dumped(&mock), "{:?}", mock.log);

    let mut mock = Mock {
        lazy: true,
        ..Mock::default()
    };
    let (result, _dir) = run_with(&mut mock, |o| o.lazy_restore = true);
    let staged = result.expect("update");
    let map = overboot_handover::SaveStateMap::open(&staged.map_dir).expect("map");
    assert!(map.manifest().lazy_restore);
    // Without the option the map says nothing of it (an eager restore).
    let (result, _dir) = run(&mut Mock::default());
    let map = overboot_handover::SaveStateMap::open(&result.expect("update").map_dir).unwrap();
    assert!(!map.manifest().lazy_restore);
}

fn dumped(mock: &Mock) -> bool {
    mock.log.iter().any(|l| l.starts_with("dump"))
}

#[test]
fn a_successful_update_dumps_every_tree_then_loads_then_jumps() {
    let mut mock = Mock::default();
    let (result, dir) = run(&mut mock);
    let staged = result.expect("update");
    assert_eq!(
        mock.log,
        [
            "preflight",
            "inspect_kernel",
            "inspect_targets",
            "check_network",
            "probe_engine",
            "block",
            "dump 100",
            "dump 200",
            "capture_network",
            "load",
            "inspect_kernel",
            "jump"
        ]
    );
    assert!(staged
        .cmdline
        .contains("overboot.handover=initrd:/overboot/ssm"));
    assert!(staged.cmdline.starts_with("console=ttyS0"));
    for phase in ["check", "freeze_dump", "write_map", "publish", "kexec_load"] {
        assert!(staged.phases.contains_key(phase), "phase {phase} missing");
    }
    // The map is complete and verifies.
    let map = overboot_handover::SaveStateMap::open(&staged.map_dir).expect("map");
    map.verify_files().expect("verify");
    assert_eq!(map.manifest().trees.len(), 2);
    assert!(dir.path().join("state/pending.json").exists());
}

#[test]
fn failed_checks_freeze_nothing() {
    for mut mock in [
        Mock {
            fail_preflight: true,
            ..Mock::default()
        },
        Mock {
            fail_target: true,
            ..Mock::default()
        },
        Mock {
            fail_engine: true,
            ..Mock::default()
        },
    ] {
        let (result, _dir) = run(&mut mock);
        let err = result.expect_err("must fail");
        assert!(
            !dumped(&mock),
            "dumped after a failed check: {:?}",
            mock.log
        );
        assert!(!mock.log.contains(&"load".to_string()));
        assert!(
            err.to_string().contains("nothing was frozen")
                || err.to_string().contains("before anything was frozen"),
            "{err}"
        );
    }
}

#[test]
fn a_failed_second_dump_restores_the_first_tree_here() {
    let mut mock = Mock {
        fail_dump_of: Some(200),
        ..Mock::default()
    };
    let (result, _dir) = run(&mut mock);
    let err = result.expect_err("must fail");
    assert!(
        mock.log.contains(&"restore pid-100".to_string()),
        "{:?}",
        mock.log
    );
    assert!(!mock.log.contains(&"load".to_string()));
    assert!(
        err.to_string().contains("restored on this kernel: pid-100"),
        "{err}"
    );
    assert_eq!(err.class(), overboot::ExitClass::Checkpoint);
}

#[test]
fn a_failed_load_or_jump_restores_every_tree_here() {
    for mut mock in [
        Mock {
            fail_load: true,
            ..Mock::default()
        },
        Mock {
            fail_jump: true,
            ..Mock::default()
        },
    ] {
        let (result, dir) = run(&mut mock);
        let err = result.expect_err("must fail");
        for tree in ["restore pid-100", "restore pid-200"] {
            assert!(mock.log.contains(&tree.to_string()), "{:?}", mock.log);
        }
        assert!(err.to_string().contains("restored on this kernel"), "{err}");
        assert_eq!(
            mock.log.last().map(String::as_str),
            Some("unblock"),
            "{:?}",
            mock.log
        );
        assert!(!dir.path().join("state/pending.json").exists());
    }
}

#[test]
fn a_directory_store_writes_the_map_there_and_loads_the_initrd_as_given() {
    let mut mock = Mock::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("disk/overboot");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, b"base initrd").expect("initrd");
    let mut opts = options(dir.path());
    opts.handover = Handover::Dir(store.clone());
    opts.initrd = Some(initrd.clone());
    let staged = update::run(&mut mock, &opts, &mut |_| {}).expect("update");
    // The kernel is loaded before anything is frozen: its load is outside the blackout.
    let at = |what: &str| mock.log.iter().position(|l| l.starts_with(what)).unwrap();
    assert!(
        at("load") < at("block") && at("load") < at("dump"),
        "{:?}",
        mock.log
    );
    assert_eq!(mock.log.iter().filter(|l| *l == "load").count(), 1);
    assert!(staged.phases.contains_key("kexec_load_early"));
    assert!(!staged.phases.contains_key("kexec_load"));
    assert!(staged.map_dir.starts_with(&store), "{:?}", staged.map_dir);
    assert!(
        staged.cmdline.ends_with(&format!(
            "overboot.handover=dir:{}",
            staged.map_dir.display()
        )),
        "{}",
        staged.cmdline
    );
    assert_eq!(staged.initrd.as_deref(), Some(initrd.as_path()));
    assert_eq!(std::fs::read(&initrd).expect("initrd"), b"base initrd");
    overboot_handover::SaveStateMap::open(&staged.map_dir)
        .expect("map")
        .verify_files()
        .expect("verify");
}

/// `/dev/shm` when it is a tmpfs (a file system a kexec loses), for the store checks.
fn shm_tmpfs() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .then_some(shm)
}

#[test]
fn a_directory_store_in_ram_is_refused_before_anything_is_frozen() {
    let Some(shm) = shm_tmpfs() else {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    };
    let mut mock = Mock::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path());
    opts.handover = Handover::Dir(shm.join(format!("overboot-test-{}", std::process::id())));
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("must refuse");
    let _ = std::fs::remove_dir_all(shm.join(format!("overboot-test-{}", std::process::id())));
    assert!(!dumped(&mock), "{:?}", mock.log);
    let text = err.to_string();
    assert!(
        text.contains("tmpfs") && text.contains("nothing was frozen"),
        "{text}"
    );
    assert_eq!(err.class(), overboot::ExitClass::BadInput);
}

#[test]
fn a_default_directory_store_that_cannot_hold_the_map_falls_back_to_the_initrd() {
    // A directory the checks reject (tmpfs stands in for one without room): named by the
    // operator it is refused (above); as the default it gives way to the initrd, said in a
    // warning, on a host without systemd — and is refused on one with systemd, whose new boot
    // has no initrd to take the map from.
    let Some(shm) = shm_tmpfs() else {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    };
    let store = shm.join(format!("overboot-default-{}", std::process::id()));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path());
    opts.handover = Handover::Dir(store.clone());
    opts.store_default = true;
    let mut mock = Mock {
        fail_jump: true,
        ..Mock::default()
    };
    let mut said = Vec::new();
    update::run(&mut mock, &opts, &mut |line| said.push(line.to_string()))
        .expect_err("the mock jump fails");
    assert!(dumped(&mock), "it did not go on: {:?}", mock.log);
    // The initrd store: the kernel is loaded after the dump, with the map appended.
    let at = |entry: &str| mock.log.iter().position(|l| l.starts_with(entry));
    assert!(at("dump 100") < at("load"), "{:?}", mock.log);
    assert!(
        said.iter()
            .any(|l| l.contains("rides in the new kernel's initrd")),
        "{said:?}"
    );
    let plan = overboot::old::plan::make(&mut Mock::default(), &opts);
    assert!(
        plan.store.starts_with("initrd (the default directory"),
        "{}",
        plan.store
    );

    let mut mock = Mock {
        systemd: Some(systemd(true)),
        ..Mock::default()
    };
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("refused under systemd");
    let _ = std::fs::remove_dir_all(&store);
    assert!(matches!(err, UpdateError::HandoverDir(_)), "{err}");
    assert!(!dumped(&mock), "{:?}", mock.log);
}

#[test]
fn handover_stores_parse_and_bad_ones_are_explained() {
    assert_eq!("initrd".parse::<Handover>(), Ok(Handover::Initrd));
    assert_eq!(
        "dir:/lab/ssm".parse::<Handover>(),
        Ok(Handover::Dir(PathBuf::from("/lab/ssm")))
    );
    assert!("dir:relative"
        .parse::<Handover>()
        .unwrap_err()
        .contains("absolute"));
    assert!("pmem:/x"
        .parse::<Handover>()
        .unwrap_err()
        .contains("expected"));
}

#[test]
fn a_directory_store_without_room_for_the_map_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    overboot::host::store::check_dir(dir.path(), 1 << 20, true).expect("1 MiB fits");
    let err =
        overboot::host::store::check_dir(dir.path(), u64::MAX / 4, true).expect_err("too big");
    assert!(err.to_string().contains("the map needs about"), "{err}");
    assert!(err.to_string().contains("nothing was frozen"), "{err}");
}

#[test]
fn a_failure_after_an_early_load_restores_the_trees_and_unloads_the_kernel() {
    let mut mock = Mock {
        fail_jump: true,
        ..Mock::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path());
    opts.handover = Handover::Dir(dir.path().join("disk"));
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("jump fails");
    assert!(err.to_string().contains("restored"), "{err}");
    assert_eq!(
        mock.log.last().map(String::as_str),
        Some("unload"),
        "{:?}",
        mock.log
    );

    // A kernel refused at the early load: nothing was frozen, nothing to unload.
    let mut mock = Mock {
        fail_load: true,
        ..Mock::default()
    };
    opts.handover = Handover::Dir(dir.path().join("disk2"));
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("load fails");
    assert!(!dumped(&mock), "{:?}", mock.log);
    assert!(
        err.to_string().contains("before anything was frozen"),
        "{err}"
    );
    assert!(!mock.log.contains(&"unload".to_string()));
}

#[test]
fn a_directory_store_leaves_dumped_trees_stopped_and_ends_them_before_a_local_restore() {
    // Success: stopped, never ended (the kexec abandons them), never restored here.
    let mut mock = Mock::default();
    let (result, _dir) = run_with(&mut mock, into_a_directory_store);
    result.expect("update");
    assert_eq!(
        mock.after_dump,
        [(100, AfterDump::Stop), (200, AfterDump::Stop)]
    );
    assert_none_ended(&mock);

    // A failed jump: each tree's stopped tasks end before its restore needs their pids.
    let mut mock = Mock {
        fail_jump: true,
        ..Mock::default()
    };
    let (result, _dir) = run_with(&mut mock, into_a_directory_store);
    let err = result.expect_err("jump fails");
    assert!(err.to_string().contains("restored on this kernel"), "{err}");
    let at = |line: &str| mock.log.iter().position(|l| l == line);
    for (pid, tree) in [(100, "pid-100"), (200, "pid-200")] {
        let ended = at(&format!("end_stopped {pid}")).expect("ended");
        let restored = at(&format!("restore {tree}")).expect("restored");
        assert!(ended < restored, "{:?}", mock.log);
    }

    // A failed second dump: CRIU resumed that tree itself; only the first was stopped.
    let mut mock = Mock {
        fail_dump_of: Some(200),
        ..Mock::default()
    };
    let (result, _dir) = run_with(&mut mock, into_a_directory_store);
    result.expect_err("dump fails");
    assert!(at_least_once(&mock, "end_stopped 100"));
    assert!(!at_least_once(&mock, "end_stopped 200"));
}

fn assert_none_ended(mock: &Mock) {
    let ended = mock.log.iter().any(|l| l.starts_with("end_stopped"));
    assert!(!ended, "{:?}", mock.log);
}

fn into_a_directory_store(options: &mut UpdateOptions) {
    options.handover = Handover::Dir(options.work_dir.join("store"));
}

fn at_least_once(mock: &Mock, line: &str) -> bool {
    mock.log.iter().any(|l| l == line)
}

#[test]
fn a_stopped_tree_that_cannot_be_ended_is_reported_not_restored() {
    let mut mock = Mock {
        fail_jump: true,
        fail_end_stopped: true,
        ..Mock::default()
    };
    let (result, _dir) = run_with(&mut mock, into_a_directory_store);
    let err = result.expect_err("jump fails").to_string();
    assert!(err.contains("NOT restored"), "{err}");
    assert!(err.contains("stopped tasks could not be ended"), "{err}");
    assert!(err.contains("images kept in"), "{err}");
    assert!(
        !mock.log.iter().any(|l| l.starts_with("restore ")),
        "{:?}",
        mock.log
    );
    // New connections are let in again all the same.
    assert!(at_least_once(&mock, "unblock"), "{:?}", mock.log);
}

#[test]
fn the_initrd_store_kills_dumped_trees() {
    let mut mock = Mock {
        fail_jump: true,
        ..Mock::default()
    };
    let (result, _dir) = run(&mut mock);
    result.expect_err("jump fails");
    assert_eq!(
        mock.after_dump,
        [(100, AfterDump::Kill), (200, AfterDump::Kill)]
    );
    assert_none_ended(&mock);
}

#[test]
fn an_initrd_handover_that_would_run_out_of_memory_is_refused_before_anything_is_frozen() {
    let mut mock = Mock {
        memory: Some(1 << 20),
        ..Mock::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 4 << 20]).expect("initrd");
    let mut opts = options(dir.path());
    opts.initrd = Some(initrd);
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("must refuse");
    assert!(!dumped(&mock), "{:?}", mock.log);
    let text = err.to_string();
    assert!(
        text.contains("not enough memory") && text.contains("nothing was frozen"),
        "{text}"
    );
    assert!(text.contains("--handover dir:"), "{text}");
    assert_eq!(err.class(), overboot::ExitClass::BadInput);
}

#[test]
fn the_initrd_handover_memory_counts_every_copy() {
    // 659 MiB map, 39 MiB initrd, 8 MiB kernel: the case that ran out of memory in a 3 GiB
    // guest with 2.25 GiB available.
    let needed = overboot::old::estimate::initrd_handover_memory(659 << 20, 39 << 20, 8 << 20);
    assert!(needed > 2250 << 20, "{}", needed >> 20);
    // 540 MiB map in the same guest (2.37 GiB available) went through.
    let needed = overboot::old::estimate::initrd_handover_memory(540 << 20, 39 << 20, 8 << 20);
    assert!(needed < 2370 << 20, "{}", needed >> 20);
}

/// A systemd host: the map cannot ride in the initrd, the generator must be there to restore
/// anything, and the units are held from restarting from the freeze until a failure releases
/// them (adopting what was restored here).
#[test]
fn systemd_hosts_need_a_directory_store_and_the_generator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path());
    let mut mock = Mock {
        systemd: Some(systemd(true)),
        ..Mock::default()
    };
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("initrd store refused");
    assert!(matches!(err, UpdateError::SystemdInitrd { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("nothing was frozen") && text.contains("/state/ssm"),
        "{text}"
    );
    assert!(!dumped(&mock), "{:?}", mock.log);
    assert_eq!(err.class(), overboot::ExitClass::BadInput);

    opts.handover = Handover::Dir(dir.path().join("ssm"));
    let mut mock = Mock {
        systemd: Some(systemd(false)),
        ..Mock::default()
    };
    let err = update::run(&mut mock, &opts, &mut |_| {}).expect_err("no generator refused");
    assert!(matches!(err, UpdateError::NoGenerator), "{err}");
    assert!(
        err.to_string().contains("overboot systemd install"),
        "{err}"
    );
    assert!(!dumped(&mock), "{:?}", mock.log);

    let mut mock = Mock {
        systemd: Some(systemd(true)),
        fail_jump: true,
        ..Mock::default()
    };
    update::run(&mut mock, &opts, &mut |_| {}).expect_err("jump fails");
    let at = |entry: &str| mock.log.iter().position(|l| l == entry);
    assert!(at("hold") < at("dump 100"), "{:?}", mock.log);
    assert!(at("block") < at("hold"), "{:?}", mock.log);
    let release = at("release pid-100,pid-200");
    assert!(release.is_some(), "{:?}", mock.log);
    assert!(at("restore pid-200") < release, "{:?}", mock.log);
}

#[test]
fn pre_copy_rounds_run_before_the_freeze_and_the_dump_builds_on_the_last() {
    let mib = 1 << 20;
    let mut mock = Mock {
        tracking: true,
        // Tree 100: 40 MiB, then 8 (shrank: go on), then 6 (third round: the most).
        // Tree 200: 40 MiB, then 30 (did not shrink enough: stop).
        pre_bytes: vec![40 * mib, 8 * mib, 6 * mib, 40 * mib, 30 * mib],
        ..Mock::default()
    };
    let (result, dir) = run_dir(&mut mock);
    let staged = result.expect("update");
    let block = mock.log.iter().position(|l| l == "block").unwrap();
    assert_eq!(
        mock.log[..block]
            .iter()
            .filter(|l| l.starts_with("pre_dump"))
            .collect::<Vec<_>>(),
        [
            "pre_dump 100 -",
            "pre_dump 100 ../pre-1",
            "pre_dump 100 ../pre-2",
            "pre_dump 200 -",
            "pre_dump 200 ../pre-1",
        ]
    );
    assert!(
        mock.log.contains(&"dump 100 pre-3".to_string()),
        "{:?}",
        mock.log
    );
    assert!(
        mock.log.contains(&"dump 200 pre-2".to_string()),
        "{:?}",
        mock.log
    );
    let rounds: Vec<(String, u32, u64)> = staged
        .pre_copy
        .iter()
        .map(|r| (r.tree.clone(), r.round, r.bytes >> 20))
        .collect();
    assert_eq!(
        rounds,
        [
            ("pid-100".to_string(), 1, 40),
            ("pid-100".to_string(), 2, 8),
            ("pid-100".to_string(), 3, 6),
            ("pid-200".to_string(), 1, 40),
            ("pid-200".to_string(), 2, 30),
        ]
    );
    assert!(staged.phases.contains_key("pre_copy"));
    // The map holds every round as regular files (CRIU's links dropped) and verifies.
    let map = overboot_handover::SaveStateMap::open(&staged.map_dir).expect("map");
    map.verify_files().expect("verify");
    assert!(map
        .manifest()
        .files
        .contains_key("trees/pid-100/pre-3/pages-1.img"));
    // A restore directory gets the chain back: final → pre-3 → pre-2 → pre-1.
    let images = staged.map_dir.join("trees/pid-100");
    let scratch = dir.path().join("scratch");
    overboot::model::images::restore_dir(&images, &scratch).expect("restore dir");
    assert_eq!(
        std::fs::read_link(scratch.join("parent")).unwrap(),
        Path::new("pre-3")
    );
    let first = scratch.join("parent/parent/parent/pages-1.img");
    assert_eq!(std::fs::metadata(first).unwrap().len(), 40 << 20);
    assert!(scratch.join("core-1.img").exists());
}

#[test]
fn a_round_that_would_copy_little_is_not_run_and_the_count_is_reported() {
    let mib = 1 << 20;
    let mut mock = Mock {
        tracking: true,
        // Tree 100: 40 MiB, then 8 MiB written since (a second round), then 1 MiB (small:
        // no third). Tree 200: 40 MiB, then 2 MiB written since (small: no second round).
        pre_bytes: vec![40 * mib, 8 * mib, 40 * mib],
        dirty: vec![8 << 20, 1 << 20, 2 << 20],
        ..Mock::default()
    };
    let (result, _dir) = run_dir(&mut mock);
    let staged = result.expect("update");
    let block = mock.log.iter().position(|l| l == "block").unwrap();
    assert_eq!(
        mock.log[..block]
            .iter()
            .filter(|l| l.starts_with("pre_dump") || l.starts_with("dirty"))
            .collect::<Vec<_>>(),
        [
            "pre_dump 100 -",
            "dirty 100",
            "pre_dump 100 ../pre-1",
            "dirty 100",
            "pre_dump 200 -",
            "dirty 200",
        ]
    );
    for dump in ["dump 100 pre-2", "dump 200 pre-1"] {
        assert!(mock.log.contains(&dump.to_string()), "{:?}", mock.log);
    }
    let rounds: Vec<(&str, u32, Option<u64>)> = staged
        .pre_copy
        .iter()
        .map(|r| (r.tree.as_str(), r.round, r.dirty_after))
        .collect();
    assert_eq!(
        rounds,
        [
            ("pid-100", 1, Some(8 << 20)),
            ("pid-100", 2, Some(1 << 20)),
            ("pid-200", 1, Some(2 << 20)),
        ]
    );
}

#[test]
fn a_failed_pre_copy_round_leaves_the_rounds_before_and_the_update_goes_on() {
    let mib = 1 << 20;
    let mut mock = Mock {
        tracking: true,
        pre_bytes: vec![40 * mib, 8 * mib, 40 * mib],
        fail_pre_round: Some(2),
        ..Mock::default()
    };
    let (result, _dir) = run_dir(&mut mock);
    let staged = result.expect("update");
    assert!(
        mock.log.contains(&"dump 100 pre-1".to_string()),
        "{:?}",
        mock.log
    );
    let map = overboot_handover::SaveStateMap::open(&staged.map_dir).expect("map");
    map.verify_files().expect("verify");
    assert!(!staged.map_dir.join("trees/pid-100/pre-2").exists());
    assert_eq!(
        staged
            .pre_copy
            .iter()
            .filter(|r| r.tree == "pid-100")
            .count(),
        1
    );
}

#[test]
fn without_memory_tracking_with_zero_rounds_or_into_the_initrd_there_is_no_pre_copy() {
    let mut mock = Mock::default();
    let (result, _dir) = run_dir(&mut mock);
    assert!(result.expect("update").pre_copy.is_empty());
    assert!(!mock.log.iter().any(|l| l.starts_with("pre_dump")));
    let mut mock = Mock {
        tracking: true,
        ..Mock::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path());
    opts.handover = Handover::Dir(dir.path().join("store"));
    opts.pre_copy_rounds = 0;
    update::run(&mut mock, &opts, &mut |_| {}).expect("update");
    assert!(!mock.log.iter().any(|l| l.starts_with("pre_dump")));
    // The initrd store's memory check counts one dump's worth of map: no rounds on top.
    let mut mock = Mock {
        tracking: true,
        ..Mock::default()
    };
    let (result, _dir) = run(&mut mock);
    assert!(result.expect("update").pre_copy.is_empty());
    assert!(!mock.log.iter().any(|l| l.starts_with("pre_dump")));
}

#[test]
fn an_update_failing_before_any_dump_removes_its_pre_copy_rounds() {
    let mut mock = Mock {
        tracking: true,
        fail_dump_of: Some(100),
        ..Mock::default()
    };
    let (result, dir) = run_dir(&mut mock);
    result.expect_err("must fail");
    assert!(mock.log.iter().any(|l| l.starts_with("pre_dump")));
    let leftovers: Vec<_> = walkdir(dir.path());
    assert!(
        !leftovers
            .iter()
            .any(|p| p.to_string_lossy().contains("pre-1")),
        "{leftovers:?}"
    );
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            }
            out.push(entry.path());
        }
    }
    out
}

/// As [`run`], with the map in a directory store (where pre-copy happens).
fn run_dir(mock: &mut Mock) -> (Result<update::Staged, UpdateError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path());
    opts.handover = Handover::Dir(dir.path().join("store"));
    let result = update::run(mock, &opts, &mut |_| {});
    (result, dir)
}

/// A systemd host, with or without overboot's generator.
fn systemd(generator: bool) -> overboot::host::systemd::Host {
    overboot::host::systemd::Host {
        booted: true,
        generator: generator.then(|| PathBuf::from("/etc/systemd/system-generators/x")),
    }
}

/// `plan` runs the very checks `update` makes: for every check's failing case, `update` refuses
/// before anything is frozen and `plan` says no with the same reason (among the others it
/// finds); with every check passing, both say yes.
#[test]
fn plan_and_update_refuse_the_same_inputs() {
    type Adjust = fn(&mut UpdateOptions, &Path);
    let cases: Vec<(&str, Mock, Adjust)> = vec![
        ("nothing to preserve", Mock::default(), |o, _| {
            o.preserve.clear()
        }),
        (
            "kexec disabled",
            Mock {
                fail_preflight: true,
                ..Mock::default()
            },
            |_, _| {},
        ),
        ("missing initrd", Mock::default(), |o, d| {
            o.initrd = Some(d.join("absent.img"))
        }),
        (
            "target refused",
            Mock {
                fail_target: true,
                ..Mock::default()
            },
            |_, _| {},
        ),
        (
            "systemd with the initrd store",
            Mock {
                systemd: Some(systemd(true)),
                ..Mock::default()
            },
            |_, _| {},
        ),
        (
            "no generator",
            Mock {
                systemd: Some(systemd(false)),
                ..Mock::default()
            },
            |o, d| o.handover = Handover::Dir(d.join("ssm")),
        ),
        ("store in RAM", Mock::default(), |o, _| {
            let shm = format!("/dev/shm/overboot-plan-test-{}", std::process::id());
            o.handover = Handover::Dir(PathBuf::from(shm));
        }),
        (
            "memory",
            Mock {
                memory: Some(1),
                ..Mock::default()
            },
            |_, _| {},
        ),
        (
            "network lock",
            Mock {
                fail_network: true,
                ..Mock::default()
            },
            |_, _| {},
        ),
        (
            "engine",
            Mock {
                fail_engine: true,
                ..Mock::default()
            },
            |_, _| {},
        ),
        ("lazy pages", Mock::default(), |o, _| o.lazy_restore = true),
        (
            "lazy pages with CRIU 4",
            Mock {
                lazy: true,
                engine: Some("4.2.1".into()),
                ..Mock::default()
            },
            |o, _| o.lazy_restore = true,
        ),
        (
            "shutdown inhibitor",
            Mock {
                inhibitors: vec!["lab (pid 42): writing".into()],
                ..Mock::default()
            },
            |_, _| {},
        ),
        // CRIU 3.17 cannot run on 6.13 and later: leaving such a kernel is refused.
        (
            "engine too old",
            Mock {
                running: Some("6.13.2".into()),
                ..Mock::default()
            },
            |_, _| {},
        ),
    ];
    for (case, mock, adjust) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path());
        adjust(&mut opts, dir.path());
        let mut for_update = Mock {
            log: Vec::new(),
            ..clone_mock(&mock)
        };
        let err = update::run(&mut for_update, &opts, &mut |_| {});
        if case == "store in RAM" {
            // (update made the directory to look at it; plan judges its parent)
            if let Handover::Dir(shm) = &opts.handover {
                let _ = std::fs::remove_dir_all(shm);
            }
            if !matches!(&err, Err(UpdateError::HandoverDir(_))) {
                eprintln!("skipped {case}: /dev/shm is not a tmpfs here");
                continue;
            }
        }
        let Err(err) = err else {
            panic!("{case}: update went ahead");
        };
        assert!(!dumped(&for_update), "{case}: dumped: {:?}", for_update.log);
        let mut for_plan = clone_mock(&mock);
        let plan = overboot::old::plan::make(&mut for_plan, &opts);
        assert!(
            !plan.ok,
            "{case}: plan said yes where update refused: {err}"
        );
        let reason = overboot_checkpoint::error_chain(&err);
        assert!(
            plan.problems.contains(&reason),
            "{case}: plan does not give update's reason {reason:?}: {:?}",
            plan.problems
        );
        let changed = |l: &String| ["load", "block", "hold"].contains(&l.as_str());
        assert!(
            !dumped(&for_plan) && !for_plan.log.iter().any(changed),
            "{case}: plan changed something: {:?}",
            for_plan.log
        );
        if let Handover::Dir(store) = &opts.handover {
            assert!(
                !store.exists() || case != "store in RAM",
                "plan made {}",
                store.display()
            );
        }
    }
    // Every check passing: both go ahead.
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(dir.path());
    let plan = overboot::old::plan::make(&mut Mock::default(), &opts);
    assert!(plan.ok, "{:?}", plan.problems);
    assert_eq!(plan.trees.len(), 2);
    update::run(&mut Mock::default(), &opts, &mut |_| {}).expect("update goes ahead");
}

/// The mock's settings, without what a run logged.
fn clone_mock(m: &Mock) -> Mock {
    Mock {
        fail_preflight: m.fail_preflight,
        fail_target: m.fail_target,
        fail_engine: m.fail_engine,
        fail_network: m.fail_network,
        running: m.running.clone(),
        engine: m.engine.clone(),
        inhibitors: m.inhibitors.clone(),
        memory: m.memory,
        systemd: m.systemd.clone(),
        lazy: m.lazy,
        ..Mock::default()
    }
}

/// Every attempt leaves a report `overboot status` shows: a refusal by the checks says so and
/// why; a failure after the freeze says what became of the trees; `status --all` lists both.
#[test]
fn every_failed_attempt_leaves_a_report() {
    use overboot::model::report::{Outcome, Report};
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(dir.path());
    let mut refused = Mock {
        fail_engine: true,
        ..Mock::default()
    };
    update::run(&mut refused, &opts, &mut |_| {}).expect_err("refused");
    let last = Report::last(&opts.state_dir).expect("a report of the refusal");
    assert_eq!(last.outcome, Outcome::Refused);
    let detail = last.detail.unwrap_or_default();
    assert!(
        detail.contains("checkpoint engine cannot run") && detail.contains("no criu"),
        "{detail}"
    );
    assert_eq!(last.from, "6.1.0-47-cloud-amd64");

    // Two seconds apart at least: report ids sort by UTC seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut failed = Mock {
        fail_dump_of: Some(200),
        ..Mock::default()
    };
    update::run(&mut failed, &opts, &mut |_| {}).expect_err("second dump fails");
    let last = Report::last(&opts.state_dir).expect("a report of the failure");
    assert_eq!(last.outcome, Outcome::Failed);
    let detail = last.detail.unwrap_or_default();
    assert!(
        detail.contains("restored on this kernel: pid-100"),
        "{detail}"
    );
    assert!(last.phases.contains_key("check") && last.phases.contains_key("freeze_dump"));

    let all = Report::all(&opts.state_dir).expect("history");
    let outcomes: Vec<_> = all.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(outcomes, [Outcome::Refused, Outcome::Failed]);
    assert!(all[1].line().contains("failed"), "{}", all[1].line());
}

/// A signal (SIGINT, SIGTERM, SIGHUP) stops the update at the next phase boundary: before the
/// freeze nothing is frozen (a kernel loaded early is unloaded); after it, every tree dumped
/// so far is restored on this kernel. The report says `interrupted`, with the signal and the
/// phase; no in-flight record is left behind.
#[test]
fn a_signal_stops_the_update_and_every_dumped_tree_comes_back() {
    use overboot::model::report::{Outcome, Report};
    let cases: [(&str, bool, &[&str], &[&str]); 5] = [
        ("check", false, &[], &["dump 100", "load", "jump"]),
        ("pre_copy", true, &["unload"], &["dump 100", "jump"]),
        (
            "freeze_dump",
            false,
            &["dump 100", "restore pid-100"],
            &["dump 200", "load"],
        ),
        (
            "write_map",
            false,
            &["restore pid-100", "restore pid-200"],
            &["load", "jump"],
        ),
        (
            "kexec_load",
            false,
            &["restore pid-100", "restore pid-200"],
            &["load", "jump"],
        ),
    ];
    for (phase, dir_store, happened, never) in cases {
        let mut mock = Mock {
            interrupt_at: Some((phase, 15)),
            tracking: true,
            ..Mock::default()
        };
        let (result, dir) = run_with(&mut mock, |o| {
            if dir_store {
                into_a_directory_store(o);
            }
        });
        let err = result.expect_err("interrupted");
        assert_eq!(
            err.class(),
            overboot::ExitClass::Interrupted,
            "{phase}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("interrupted by SIGTERM at {phase}")),
            "{phase}: {text}"
        );
        for entry in happened {
            assert!(
                at_least_once(&mock, entry),
                "{phase}: no {entry}: {:?}",
                mock.log
            );
        }
        for entry in never {
            assert!(
                !at_least_once(&mock, entry),
                "{phase}: {entry}: {:?}",
                mock.log
            );
        }
        let state = dir.path().join("state");
        let last = Report::last(&state).expect("report");
        assert_eq!(last.outcome, Outcome::Interrupted, "{phase}");
        assert!(
            !overboot::old::inflight::InFlight::path(&state).exists(),
            "{phase}"
        );
    }
}

/// An update that died between its freeze and its jump left its record: its guardian (or the
/// next overboot) ends the stopped tasks, restores every dumped tree and the one being dumped
/// (when CRIU left it stopped or dead), lifts the block, unloads the kernel and reports; a
/// record from another boot is dropped.
#[test]
fn the_trees_of_an_update_that_died_come_back() {
    use overboot::model::report::{Outcome, Report};
    use overboot::old::back::Dumped;
    use overboot::old::inflight::{self, InFlight};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let dumped = |name: &str| Dumped {
        name: name.into(),
        images: dir.path().join("map/trees").join(name),
        // Pids no process has: ending them is immediate.
        stopped: Some(vec![i32::MAX - 1]),
        journal_streams: Vec::new(),
    };
    let record = InFlight {
        pid: i32::MAX,
        boot_id: "another boot".into(),
        phase: "write_map".into(),
        held: Vec::new(),
        dumped: vec![dumped("pid-100")],
        dumping: Some(dumped("pid-200")),
        loaded: true,
    };
    record.save(&state);
    let mut mock = Mock::default();
    assert!(inflight::recover_stale(&mut mock, &state).is_none());
    assert!(
        !InFlight::path(&state).exists(),
        "a record of another boot stays"
    );
    assert!(mock.log.is_empty(), "{:?}", mock.log);

    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    InFlight {
        boot_id: boot_id.trim().into(),
        ..record
    }
    .save(&state);
    let report = inflight::recover_stale(&mut mock, &state).expect("recovered");
    assert_eq!(report.outcome, Outcome::Interrupted);
    let detail = report.detail.unwrap_or_default();
    assert!(
        detail.contains("during write map") && detail.contains("restored on this kernel: pid-100"),
        "{detail}"
    );
    for entry in ["restore pid-100", "restore pid-200", "unblock", "unload"] {
        assert!(at_least_once(&mock, entry), "no {entry}: {:?}", mock.log);
    }
    assert!(!InFlight::path(&state).exists());
    assert_eq!(
        Report::last(&state).expect("report").outcome,
        Outcome::Interrupted
    );
}

/// A block-mode shutdown inhibitor stops the update before anything is frozen, naming who
/// holds it, unless the operator says --ignore-inhibitors.
#[test]
fn a_shutdown_inhibitor_blocks_the_update_unless_ignored() {
    let inhibited = || Mock {
        inhibitors: vec!["lab (pid 42): writing the ledger".into()],
        ..Mock::default()
    };
    let mut mock = inhibited();
    let (result, _dir) = run(&mut mock);
    let err = result.expect_err("inhibited");
    assert!(matches!(err, UpdateError::Inhibited { .. }), "{err}");
    assert!(err.to_string().contains("lab (pid 42)"), "{err}");
    assert_eq!(err.class(), overboot::ExitClass::BadInput);
    assert!(!dumped(&mock), "{:?}", mock.log);
    let mut mock = inhibited();
    let (result, _dir) = run_with(&mut mock, |o| o.ignore_inhibitors = true);
    result.expect("told to ignore the inhibitor");
}

/// `plan` says which config file the options came from (the CLI fills it in), or none.
#[test]
fn plan_names_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(dir.path());
    let mut plan = overboot::old::plan::make(&mut Mock::default(), &opts);
    assert!(
        plan.human().contains("\n  config: none\n"),
        "{}",
        plan.human()
    );
    let json = serde_json::to_value(&plan).expect("json");
    assert_eq!(json["config"], serde_json::Value::Null);
    plan.config = Some("/etc/overboot/overboot.toml".into());
    assert!(
        plan.human()
            .contains("\n  config: /etc/overboot/overboot.toml\n"),
        "{}",
        plan.human()
    );
    let json = serde_json::to_value(&plan).expect("json");
    assert_eq!(json["config"], "/etc/overboot/overboot.toml");
}
