//! systemd hosts: how a preserved service comes back in the new boot *as itself* — the same
//! unit, active, with the same main PID — instead of as an orphan beside a fresh copy.
//!
//! ```text
//!  old kernel                                    new kernel (same root file system)
//!  overboot update --preserve unit:X.service     systemd runs overboot-generator (early):
//!   X.service.d/zz-overboot-hold.conf:             map on the command line → sysinit wants
//!     Restart=no (runtime), so the end of the      overboot-resume.service; X.service gets
//!     dumped (stopped) processes after a failure   the adopt drop-in
//!     is not answered by a fresh X
//!   dump, map in dir:/var/lib/overboot/ssm/ID   overboot-resume.service (before sysinit.target,
//!   kexec ─────────────────────────────────────►  PIDs still free): verify, lock, network,
//!                                                 restore every tree, unlock; writes
//!                                                 /run/overboot/units/X.service.json
//!                                               X.service starts: ExecStart=+overboot systemd
//!                                                 adopt X: its restored processes into X's
//!                                                 cgroup, sd_notify MAINPID=<old main> READY=1
//!                                               overboot-adopted.service (after every X):
//!                                                 daemon-reload; the map is gone, so the drop-ins
//!                                                 are too: stop/restart run X's own unit file
//! ```
//!
//! Why one early restore instead of each unit restoring itself when it starts: all trees come
//! back together or not at all (the agent's all-or-nothing restore and its rollback work
//! unchanged), under one network lock that is in place before any interface is up (peers never
//! see a reset), and before the boot has used many PIDs (a preserved PID must be free).
//!
//! The map lives in a directory store (`--handover dir:`), by default
//! `/var/lib/overboot/ssm` on the root file system: the initrd store is unpacked into the
//! initramfs and gone after switch_root, while the root file system (or a reserved-RAM store

mod base;
mod generator;
pub mod inhibit;
pub mod sandbox;
mod units;

pub use base::*;
pub use generator::*;
pub use units::*;

#[cfg(test)]
mod tests {
    use super::generator::escape_path;
    use super::*;
    use overboot_handover::{Manifest, PreservedTree, PreservedUnit};
    use std::path::{Path, PathBuf};

    fn tree(name: &str, unit: Option<&str>, pids: &[i32]) -> PreservedTree {
        PreservedTree {
            name: name.into(),
            root_pid: pids[0],
            pids: pids.to_vec(),
            threads: Vec::new(),
            images: format!("trees/{name}"),
            cmdline: String::new(),
            clocks_realtime_ns: 0,
            unit: unit.map(|u| PreservedUnit {
                name: u.into(),
                main_pid: pids[0],
            }),
            journal_streams: Vec::new(),
        }
    }

    fn manifest(trees: Vec<PreservedTree>, interfaces: &[&str]) -> Manifest {
        let network = crate::host::network::NetworkState {
            locked: true,
            interfaces: interfaces
                .iter()
                .map(|n| crate::host::network::Interface {
                    name: (*n).into(),
                    addresses: Vec::new(),
                })
                .collect(),
            ..Default::default()
        };
        Manifest {
            trees,
            network: Some(network),
            ..Manifest::default()
        }
    }

    fn file<'a>(g: &'a Generated, path: &str) -> Option<&'a str> {
        g.files
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, c)| c.as_str())
    }

    #[test]
    fn without_a_map_only_idle_units_are_written() {
        let exe = Path::new("/usr/sbin/overboot");
        let g = generate(exe, None, None);
        assert!(g.links.is_empty(), "{g:?}");
        assert_eq!(g.files.len(), 2);
        let resume = file(&g, RESUME_UNIT).unwrap();
        assert!(resume.contains("ExecStart=/usr/sbin/overboot resume\n"));
        assert!(resume.contains("Before=sysinit.target"));
        assert!(resume.contains("ConditionKernelCommandLine=overboot.handover"));
        assert!(file(&g, ADOPTED_UNIT)
            .unwrap()
            .contains("ExecStart=/usr/sbin/overboot systemd finish\n"));
    }

    #[test]
    fn a_map_with_units_makes_them_adopt() {
        let exe = Path::new("/usr/sbin/overboot");
        let m = manifest(
            vec![
                tree(
                    "unit-redis-server.service",
                    Some("redis-server.service"),
                    &[700, 701],
                ),
                tree("pid-900", None, &[900]),
                tree("unit-a-b.service-1", Some("a-b.service"), &[1000]),
                tree("unit-a-b.service-2", Some("a-b.service"), &[1002]),
            ],
            &["eth0", "br-lan"],
        );
        let map = Path::new("/var/lib/overboot/ssm/1-2");
        let g = generate(exe, Some(map), Some(&m));
        assert!(g.links.contains(&(
            PathBuf::from("sysinit.target.wants/overboot-resume.service"),
            PathBuf::from("../overboot-resume.service")
        )));
        assert!(g.links.contains(&(
            PathBuf::from("multi-user.target.wants/overboot-adopted.service"),
            PathBuf::from("../overboot-adopted.service")
        )));
        let waits = file(&g, "overboot-resume.service.d/map.conf").unwrap();
        assert!(waits.contains("RequiresMountsFor=/var/lib/overboot/ssm/1-2\n"));
        assert!(waits.contains("After=sys-subsystem-net-devices-eth0.device\n"));
        assert!(waits.contains("Wants=sys-subsystem-net-devices-br\\x2dlan.device\n"));
        let redis = file(&g, "redis-server.service.d/zz-overboot-adopt.conf").unwrap();
        assert!(redis.contains(
            "ExecStart=\nExecStart=+/usr/sbin/overboot systemd adopt redis-server.service\n"
        ));
        assert!(redis.contains("Type=notify\n"));
        assert!(redis.contains("After=overboot-resume.service\n"));
        assert!(file(&g, "a-b.service.d/zz-overboot-adopt.conf").is_some());
        assert_eq!(
            g.files
                .iter()
                .filter(|(p, _)| p.ends_with(ADOPT_DROPIN))
                .count(),
            2,
            "one drop-in per unit, none for pid: trees"
        );
        assert!(file(&g, "overboot-adopted.service.d/units.conf")
            .unwrap()
            .contains("After=redis-server.service a-b.service\n"));
    }

    #[test]
    fn an_unreadable_manifest_still_runs_the_agent() {
        let g = generate(Path::new("/x/overboot"), Some(Path::new("/ssm/1")), None);
        assert_eq!(g.links.len(), 1, "{g:?}");
        assert!(file(&g, "overboot-resume.service.d/map.conf").is_some());
        assert!(!g.files.iter().any(|(p, _)| p.ends_with(ADOPT_DROPIN)));
    }

    #[test]
    fn records_gather_every_tree_of_a_unit() {
        let dir = tempfile::tempdir().unwrap();
        let trees = vec![
            tree("unit-a.service-1", Some("a.service"), &[10, 11]),
            tree("pid-20", None, &[20]),
            tree("unit-a.service-2", Some("a.service"), &[12]),
        ];
        write_records(dir.path(), &trees).unwrap();
        let text = std::fs::read_to_string(record_path(dir.path(), "a.service")).unwrap();
        let record: Restored = serde_json::from_str(&text).unwrap();
        assert_eq!(record.main_pid, 10);
        assert_eq!(record.pids, vec![10, 11, 12]);
        assert_eq!(
            std::fs::read_dir(dir.path().join(UNITS_DIR))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn adopting_needs_the_agents_record() {
        let dir = tempfile::tempdir().unwrap();
        let err = adopt("nope.service", dir.path()).unwrap_err();
        assert!(matches!(err, SystemdError::NotRestored { .. }), "{err}");
        assert!(err.to_string().contains("nope.service was not restored"));
    }

    #[test]
    fn prepared_units_leave_their_namespaces_but_keep_the_journal() {
        let text = preservable_dropin("redis-server.service");
        for line in [
            "PrivateUsers=no\n",
            "ProtectHostname=no\n",
            "ProtectSystem=no\n",
            "PrivateTmp=no\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(!text.contains("StandardOutput") && !text.contains("StandardError"));
    }

    #[test]
    fn a_map_left_by_a_new_kernel_that_never_ran_its_agent_is_recovered_from() {
        use crate::model::report::{write_json, Pending};
        let state = tempfile::tempdir().unwrap();
        let map = state.path().join("ssm").join("1-1");
        std::fs::create_dir_all(&map).unwrap();
        let mut pending = Pending {
            id: "1-1".into(),
            phases: Default::default(),
            freeze_realtime_ns: 1,
            jump_realtime_ns: 2,
            handover_bytes: 0,
            peak_mem_bytes: 0,
            pre_copy: Vec::new(),
            recover: None,
            to_release: "7.3".into(),
            frozen_dump_bytes: 0,
        };
        let file = crate::model::files::pending(state.path());
        // No update in flight; then one whose map rode in RAM: nothing to recover.
        assert_eq!(super::generator::recovery_map(state.path()), None);
        write_json(&file, &pending).unwrap();
        assert_eq!(super::generator::recovery_map(state.path()), None);
        // A directory store: recovered from once the map is there (its header written last).
        pending.recover = Some(format!("overboot.handover=dir:{}", map.display()));
        write_json(&file, &pending).unwrap();
        assert_eq!(super::generator::recovery_map(state.path()), None);
        std::fs::write(map.join("HEADER"), b"x").unwrap();
        assert_eq!(super::generator::recovery_map(state.path()), Some(map));
        let dropin = super::generator::recover_dropin(Path::new("/usr/sbin/overboot"));
        assert!(
            dropin.contains("ConditionKernelCommandLine=\n")
                && dropin.contains("ExecStart=\nExecStart=/usr/sbin/overboot resume --recover\n"),
            "{dropin}"
        );
    }

    #[test]
    fn paths_escape_like_systemd() {
        assert_eq!(escape_path("eth0"), "eth0");
        assert_eq!(escape_path("br-lan"), "br\\x2dlan");
        assert_eq!(escape_path("/var/lib"), "var-lib");
        assert_eq!(escape_path(".x"), "\\x2ex");
    }

    #[test]
    fn install_links_the_generator() {
        let root = tempfile::tempdir().unwrap();
        let link = install(Path::new("/usr/sbin/overboot"), root.path()).unwrap();
        assert_eq!(
            link,
            root.path()
                .join("etc/systemd/system-generators/overboot-generator")
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("/usr/sbin/overboot")
        );
    }
}
