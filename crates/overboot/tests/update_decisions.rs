//! The decisions of `overboot update`, tested without root through a mock [`Effects`]: nothing
//! is frozen before every check passed, and once a tree is dumped every later failure brings it
//! back on the running kernel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use overboot::network::{NetworkError, NetworkState};
use overboot::target::{Target, TargetError, TreeInfo};
use overboot::update::{self, Effects, UpdateError, UpdateOptions};
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
}

fn tree(pid: i32) -> TreeInfo {
    TreeInfo {
        target: Target::Pid(pid),
        name: format!("pid-{pid}"),
        root: pid,
        cmdline: "worker".into(),
        processes: Vec::new(),
        fds: Default::default(),
        tmpfs_files: Default::default(),
        listen_ports: Default::default(),
    }
}

impl Effects for Mock {
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
        Ok("3.17.1".into())
    }

    fn check_network(&mut self, _trees: &[TreeInfo]) -> Result<(), NetworkError> {
        self.log.push("check_network".into());
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

    fn dump(&mut self, tree: &TreeInfo, images: &Path) -> Result<(), CheckpointError> {
        self.log.push(format!("dump {}", tree.root));
        if self.fail_dump_of == Some(tree.root) {
            return Err(CheckpointError::CriuExited {
                status: std::process::ExitStatus::default(),
                stderr: "dump failed".into(),
            });
        }
        std::fs::write(images.join("core-1.img"), b"image").expect("write image");
        Ok(())
    }

    fn restore(&mut self, images: &Path) -> Result<i32, CheckpointError> {
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
    }
}

fn run(mock: &mut Mock) -> (Result<update::Staged, UpdateError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = update::run(mock, &options(dir.path()), &mut |_| {});
    (result, dir)
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
