//! systemd services as `--preserve` targets (`unit:NAME.service`): from a unit name to the
//! process trees of its control group, read-only, before anything is frozen.
//!
//! systemd keeps every process of a service in the service's cgroup (v2, the unified
//! hierarchy): `/sys/fs/cgroup/<slice>/…/NAME.service/cgroup.procs`, with the slices
//! (`system.slice`, `system-getty.slice`, …) as directories above it and, for a unit with
//! `Delegate=`, cgroups of its own below it. The unit's processes are all pids of that subtree;
//! its trees are rooted at those whose parent is not one of them (usually just the main PID,
//! a child of PID 1). We read the file system instead of asking systemd over D-Bus: no client
//! library, and the answer is the kernel's own.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::TargetError;

/// Where systemd's view of units is read from: the host's, or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct SystemdView {
    /// The cgroup v2 mount (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Directories holding unit files, in systemd's search order.
    pub unit_dirs: Vec<PathBuf>,
}

impl SystemdView {
    /// The running system's.
    pub fn host() -> SystemdView {
        SystemdView {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            unit_dirs: [
                "/etc/systemd/system",
                "/run/systemd/system",
                "/run/systemd/transient",
                "/usr/local/lib/systemd/system",
                "/usr/lib/systemd/system",
                "/lib/systemd/system",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
        }
    }
}

/// The canonical unit name of a `unit:` target: `NAME` means `NAME.service`, as for
/// `systemctl`; only services can be preserved (a socket, timer or scope is not a process
/// tree systemd restarts), and a name never contains a path.
pub fn unit_name(text: &str) -> Result<String, TargetError> {
    let target = format!("unit:{text}");
    let valid = !text.is_empty()
        && text.len() <= 255
        && !text.starts_with('.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    if !valid {
        return Err(TargetError::Syntax(target));
    }
    if text.ends_with(".service") {
        return Ok(text.to_string());
    }
    match text.rsplit_once('.') {
        Some((_, kind))
            if [
                "socket",
                "timer",
                "scope",
                "slice",
                "target",
                "mount",
                "path",
                "device",
                "swap",
                "automount",
            ]
            .contains(&kind) =>
        {
            Err(TargetError::NotAService { target })
        }
        _ => Ok(format!("{text}.service")),
    }
}

/// The cgroup directory of `unit`: found below the slices of the hierarchy (it is never inside
/// another unit's cgroup). `None` when the unit has no cgroup, i.e. is not running.
fn find_cgroup(root: &Path, unit: &str) -> Option<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let candidate = dir.join(unit);
        if candidate.is_dir() {
            return Some(candidate);
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".slice") && entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    None
}

/// Every pid in the cgroup `dir` and the cgroups below it.
fn cgroup_pids(dir: &Path) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    pids
}

/// The processes of a running service: every pid of its cgroup subtree, ascending. Refuses a
/// host without the unified hierarchy, an unknown unit and a unit with no process.
pub fn unit_pids(view: &SystemdView, unit: &str) -> Result<BTreeSet<i32>, TargetError> {
    let target = format!("unit:{unit}");
    if !view.cgroup_root.join("cgroup.controllers").exists() {
        return Err(TargetError::NoUnifiedCgroup { target });
    }
    let cgroup = find_cgroup(&view.cgroup_root, unit);
    let pids = cgroup.as_deref().map(cgroup_pids).unwrap_or_default();
    if !pids.is_empty() {
        return Ok(pids);
    }
    let known = cgroup.is_some()
        || view.unit_dirs.iter().any(|d| {
            d.join(unit).exists() || template_of(unit).is_some_and(|t| d.join(t).exists())
        });
    if known {
        Err(TargetError::UnitInactive { target })
    } else {
        Err(TargetError::NoSuchUnit { target })
    }
}

/// `foo@.service` for an instance `foo@bar.service`.
fn template_of(unit: &str) -> Option<String> {
    let (prefix, rest) = unit.split_once('@')?;
    let suffix = rest.rsplit_once('.').map(|(_, s)| s)?;
    Some(format!("{prefix}@.{suffix}"))
}

/// The roots of the trees that make up `pids`: those whose parent (per `parent`) is not one of
/// them. Ascending.
pub fn tree_roots(pids: &BTreeSet<i32>, parent: impl Fn(i32) -> Option<i32>) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| parent(*pid).is_none_or(|ppid| !pids.contains(&ppid)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonical_services() {
        assert_eq!(
            unit_name("redis-server.service").unwrap(),
            "redis-server.service"
        );
        assert_eq!(unit_name("redis-server").unwrap(), "redis-server.service");
        assert_eq!(unit_name("getty@ttyS1").unwrap(), "getty@ttyS1.service");
        assert!(matches!(
            unit_name("redis.socket"),
            Err(TargetError::NotAService { .. })
        ));
        for bad in ["", "../etc/passwd", "a/b.service", ".service", "x y"] {
            assert!(
                matches!(unit_name(bad), Err(TargetError::Syntax(_))),
                "{bad:?} accepted"
            );
        }
    }

    /// A fake `/sys/fs/cgroup` and unit directory.
    fn fake() -> (tempfile::TempDir, SystemdView) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cgroup");
        let units = dir.path().join("units");
        fs::create_dir_all(&units).unwrap();
        fs::create_dir_all(cg.join("system.slice/redis-server.service")).unwrap();
        fs::write(cg.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(
            cg.join("system.slice/redis-server.service/cgroup.procs"),
            "412\n",
        )
        .unwrap();
        // A delegated unit with a sub-cgroup, in a nested slice.
        let d = cg.join("system.slice/system-worker.slice/worker@a.service");
        fs::create_dir_all(d.join("payload")).unwrap();
        fs::write(d.join("cgroup.procs"), "500\n").unwrap();
        fs::write(d.join("payload/cgroup.procs"), "501\n502\n").unwrap();
        // Stopped: unit file present, no cgroup; or a cgroup left empty.
        fs::write(units.join("stopped.service"), "[Service]\n").unwrap();
        fs::write(units.join("worker@.service"), "[Service]\n").unwrap();
        fs::create_dir_all(cg.join("system.slice/emptied.service")).unwrap();
        fs::write(cg.join("system.slice/emptied.service/cgroup.procs"), "").unwrap();
        let view = SystemdView {
            cgroup_root: cg,
            unit_dirs: vec![units],
        };
        (dir, view)
    }

    #[test]
    fn a_running_unit_gives_its_cgroup() {
        let (_dir, view) = fake();
        let pids = unit_pids(&view, "redis-server.service").unwrap();
        assert_eq!(pids.into_iter().collect::<Vec<_>>(), [412]);
        let pids = unit_pids(&view, "worker@a.service").unwrap();
        assert_eq!(pids.into_iter().collect::<Vec<_>>(), [500, 501, 502]);
    }

    #[test]
    fn stopped_and_unknown_units_are_told_apart() {
        let (_dir, view) = fake();
        for unit in ["stopped.service", "emptied.service", "worker@b.service"] {
            assert_eq!(
                unit_pids(&view, unit),
                Err(TargetError::UnitInactive {
                    target: format!("unit:{unit}")
                }),
                "{unit}"
            );
        }
        assert_eq!(
            unit_pids(&view, "nope.service"),
            Err(TargetError::NoSuchUnit {
                target: "unit:nope.service".into()
            })
        );
    }

    #[test]
    fn without_cgroup2_nothing_resolves() {
        let (_dir, mut view) = fake();
        view.cgroup_root = view.cgroup_root.join("system.slice");
        assert!(matches!(
            unit_pids(&view, "redis-server.service"),
            Err(TargetError::NoUnifiedCgroup { .. })
        ));
    }

    #[test]
    fn roots_are_pids_whose_parent_is_outside() {
        let pids: BTreeSet<i32> = [500, 501, 502, 600].into_iter().collect();
        let parent = |pid| match pid {
            500 => Some(1),
            501 | 502 => Some(500),
            600 => Some(1),
            _ => None,
        };
        assert_eq!(tree_roots(&pids, parent), [500, 600]);
    }
}
