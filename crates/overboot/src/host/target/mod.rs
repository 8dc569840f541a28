//! What `--preserve` names, and what `plan`/`update` learn about it before anything is frozen:
//! the process tree (from `/proc`), its threads, resident memory, open files by kind, and the
//! reasons it cannot be carried across, if any.
//!
//! A target is a process tree (`pid:N`) or a systemd service (`unit:NAME.service`, every
//! process of its cgroup, see [`unit`]); a service whose processes form several trees
//! gives one tree each.
//!
//! Checks here are read-only. They refuse PID 1, overboot itself (or a tree that contains it),
//! missing processes, processes in namespaces of their own, and file descriptors of kinds CRIU
//! 3.x cannot checkpoint (io_uring, pidfd, perf events, BPF objects, KVM), naming the process,
//! the fd and its kind.

mod error;
mod streams;
pub mod unit;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

pub use error::TargetError;

/// A target as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// `pid:N`: the process tree rooted at N.
    Pid(i32),
    /// `unit:NAME.service`: every process of a running systemd service.
    Unit(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid:{pid}"),
            Target::Unit(name) => write!(f, "unit:{name}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        let bad = || TargetError::Syntax(s.to_string());
        match s.split_once(':') {
            Some(("pid", n)) => n.parse().map(Target::Pid).map_err(|_| bad()),
            Some(("unit", name)) => unit::unit_name(name).map(Target::Unit),
            _ => Err(bad()),
        }
    }
}

/// One process of a tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// `comm`.
    pub comm: String,
    /// Number of threads.
    pub threads: u32,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// What a target tree holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeInfo {
    /// The target.
    pub target: Target,
    /// Name used in the Save State Map (`pid-N`).
    pub name: String,
    /// Root pid.
    pub root: i32,
    /// The root's command line, for people.
    pub cmdline: String,
    /// Every process, root first.
    pub processes: Vec<ProcessInfo>,
    /// Open file descriptors by kind (`file`, `pipe`, `socket:unix`, `socket:tcp`, ...).
    pub fds: BTreeMap<String, u32>,
    /// Regular files open on tmpfs, which the new kernel does not have unless carried.
    pub tmpfs_files: BTreeSet<PathBuf>,
    /// TCP ports the tree listens on (new connections to them are held off during the switch).
    pub listen_ports: BTreeSet<u16>,
    /// The systemd service the tree belongs to (`unit:` targets).
    pub unit: Option<overboot_handover::PreservedUnit>,
    /// Its stream connections to journald, which the restore opens anew.
    #[serde(default)]
    pub journal_streams: Vec<overboot_handover::JournalStream>,
}

impl TreeInfo {
    /// All pids of the tree.
    pub fn pids(&self) -> Vec<i32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Total resident memory.
    pub fn rss_bytes(&self) -> u64 {
        self.processes.iter().map(|p| p.rss_bytes).sum()
    }

    /// Total threads.
    pub fn threads(&self) -> u32 {
        self.processes.iter().map(|p| p.threads).sum()
    }
}

/// The namespaces a preserved process must share with overboot. Not `time`: a tree restored by
/// an earlier update lives in the time namespace that continues its clocks.
const SHARED_NAMESPACES: &[&str] = &["user", "mnt", "uts", "ipc", "net", "pid", "cgroup"];

/// The namespace links (`/proc/<pid>/ns/<kind>`) of `pid`, by kind.
fn namespaces(pid: &str) -> BTreeMap<&'static str, String> {
    SHARED_NAMESPACES
        .iter()
        .filter_map(|kind| {
            let link = fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
            Some((*kind, link.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The kinds in which `theirs` differs from `ours` (kinds missing from either are not judged).
pub fn foreign_namespaces(
    ours: &BTreeMap<&'static str, String>,
    theirs: &BTreeMap<&'static str, String>,
) -> Vec<&'static str> {
    SHARED_NAMESPACES
        .iter()
        .copied()
        .filter(|kind| matches!((ours.get(kind), theirs.get(kind)), (Some(a), Some(b)) if a != b))
        .collect()
}

/// Reads `/proc/<pid>/stat` and gives `read` the command name and the fields after it:
/// state(0) ppid(1) ... flags(6) ... num_threads(17) ... starttime(19) ... rss(21). The name may
/// hold spaces and parentheses: it ends at the last `)`.
fn with_stat<T>(pid: i32, read: impl FnOnce(&str, &[&str]) -> Option<T>) -> Option<T> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    read(text.get(open + 1..close)?, &rest)
}

/// Reads `/proc/<pid>/stat`: (comm, ppid, threads, rss pages, flags).
fn stat(pid: i32) -> Option<(String, i32, u32, u64, u64)> {
    with_stat(pid, |comm, rest| {
        let ppid = rest.get(1)?.parse().ok()?;
        let flags = rest.get(6)?.parse().ok()?;
        let threads = rest.get(17)?.parse().ok()?;
        let rss = rest.get(21)?.parse().ok()?;
        Some((comm.to_string(), ppid, threads, rss, flags))
    })
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// When process `pid` started (`starttime` of `/proc/<pid>/stat`, clock ticks since boot): with
/// the pid, it names one process, not whichever holds that number later.
fn start_time(pid: i32) -> Option<u64> {
    with_stat(pid, |_, rest| rest.get(19)?.parse().ok())
}

/// Kills the processes `pids` (`SIGKILL`, which ends stopped ones too) and waits until each
/// is gone: reaped by its parent, not merely a zombie, so that its pid is free (or held by a
/// process started since). Fails with `TimedOut`, naming a pid still there, after `timeout`.
pub fn end_tasks(pids: &[i32], timeout: std::time::Duration) -> std::io::Result<()> {
    use nix::sys::signal::{kill, Signal};
    let alive: Vec<(i32, u64)> = pids
        .iter()
        .filter_map(|&pid| Some((pid, start_time(pid)?)))
        .collect();
    for (pid, _) in &alive {
        let _ = kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let Some((pid, _)) = alive
            .iter()
            .find(|(pid, started)| start_time(*pid) == Some(*started))
        else {
            return Ok(());
        };
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "pid {pid} is still there {:.1} s after SIGKILL (not reaped by its parent?)",
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The tree rooted at `root`: root first, then descendants breadth-first.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for pid in crate::host::proc::all_pids() {
        if let Some((_, ppid, ..)) = stat(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut order = vec![root];
    let mut i = 0;
    while i < order.len() {
        if let Some(kids) = children.get(&order[i]) {
            order.extend(kids);
        }
        i += 1;
    }
    order
}

/// The kind of an fd from its `/proc/<pid>/fd/<n>` link, and whether CRIU can dump it.
pub fn fd_kind(link: &str) -> (String, bool) {
    const UNSUPPORTED: &[(&str, &str)] = &[
        ("anon_inode:[io_uring]", "an io_uring instance"),
        ("anon_inode:[pidfd]", "a pidfd"),
        ("anon_inode:[perf_event]", "a perf event"),
        ("anon_inode:bpf-map", "a BPF map"),
        ("anon_inode:bpf-prog", "a BPF program"),
        ("anon_inode:bpf_link", "a BPF link"),
        ("anon_inode:kvm-vm", "a KVM virtual machine"),
        ("anon_inode:kvm-vcpu", "a KVM vCPU"),
        ("/dev/kvm", "/dev/kvm"),
        ("anon_inode:[userfaultfd]", "a userfaultfd"),
        ("anon_inode:[secretmem]", "secret memory"),
    ];
    for (prefix, kind) in UNSUPPORTED {
        if link.starts_with(prefix) {
            return ((*kind).to_string(), false);
        }
    }
    let kind = if link.starts_with("pipe:") {
        "pipe"
    } else if link.starts_with("socket:") {
        "socket"
    } else if let Some(rest) = link.strip_prefix("anon_inode:") {
        return (format!("anon:{}", rest.trim_matches(['[', ']'])), true);
    } else if link.starts_with("/dev/") {
        "device"
    } else {
        "file"
    };
    (kind.to_string(), true)
}

/// Whether `path` lives on a file system that does not survive the switch (tmpfs, ramfs, the
/// initramfs rootfs). A mount on top of it (e.g. the data disk) takes precedence.
fn on_volatile_fs(path: &std::path::Path) -> bool {
    let all: Vec<(PathBuf, String)> = fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((PathBuf::from(dir.replace("\\040", " ")), fstype.to_string()))
        })
        .collect();
    all.iter()
        .filter(|(dir, _)| path.starts_with(dir))
        .max_by_key(|(dir, _)| dir.as_os_str().len())
        .is_some_and(|(_, fstype)| matches!(fstype.as_str(), "tmpfs" | "ramfs" | "rootfs"))
}

/// Inspects a target without changing anything: its trees, one for `pid:N`, one per root for
/// `unit:NAME.service`. `self_pid` is overboot's own pid.
pub fn inspect(target: &Target, self_pid: i32) -> Result<Vec<TreeInfo>, TargetError> {
    match target {
        Target::Pid(root) => Ok(vec![inspect_tree(
            target,
            *root,
            format!("pid-{root}"),
            self_pid,
        )?]),
        Target::Unit(unit) => {
            let pids = unit::unit_pids(&unit::SystemdView::host(), unit)?;
            let roots = unit::tree_roots(&pids, |pid| stat(pid).map(|s| s.1));
            let several = roots.len() > 1;
            let main_pid = crate::host::systemd::main_pid(unit)
                .filter(|pid| pids.contains(pid))
                .or_else(|| roots.first().copied())
                .unwrap_or(0);
            roots
                .into_iter()
                .map(|root| {
                    let name = if several {
                        format!("unit-{unit}-{root}")
                    } else {
                        format!("unit-{unit}")
                    };
                    let mut tree = inspect_tree(target, root, name, self_pid)?;
                    tree.unit = Some(overboot_handover::PreservedUnit {
                        name: unit.clone(),
                        main_pid,
                    });
                    Ok(tree)
                })
                .collect()
        }
    }
}

/// Refuses `pid` when it has namespaces `ours` are not, naming the unit's settings that made
/// them.
fn refuse_own_namespaces(
    target: &Target,
    ours: &BTreeMap<&'static str, String>,
    pid: i32,
    comm: &str,
) -> Result<(), TargetError> {
    let foreign = foreign_namespaces(ours, &namespaces(&pid.to_string()));
    if foreign.is_empty() {
        return Ok(());
    }
    let made_by = match target {
        Target::Unit(unit) => {
            let settings = crate::host::systemd::sandbox::unit_settings_making(unit, &foreign);
            if settings.is_empty() {
                String::new()
            } else {
                format!(", made by the unit's {}", settings.join(", "))
            }
        }
        Target::Pid(_) => String::new(),
    };
    Err(TargetError::ForeignNamespaces {
        target: target.to_string(),
        pid,
        comm: comm.to_string(),
        namespaces: foreign.join(", "),
        made_by,
    })
}

/// Inspects the tree rooted at `root`, which `target` named; `name` names it in the map.
fn inspect_tree(
    target: &Target,
    root: i32,
    tree_name: String,
    self_pid: i32,
) -> Result<TreeInfo, TargetError> {
    let name = target.to_string();
    if root == 1 {
        return Err(TargetError::Init { target: name });
    }
    let Some((_, _, _, _, flags)) = stat(root) else {
        return Err(TargetError::NoSuchProcess { target: name });
    };
    if flags & PF_KTHREAD != 0 {
        return Err(TargetError::KernelThread {
            target: name,
            pid: root,
        });
    }
    let page = 4096;
    let tcp = crate::host::network::tcp_sockets();
    let mut listen_ports = BTreeSet::new();
    let mut processes = Vec::new();
    let mut fds: BTreeMap<String, u32> = BTreeMap::new();
    let mut tmpfs_files = BTreeSet::new();
    let mut sockets = Vec::new();
    let ours = namespaces("self");
    for pid in descendants(root) {
        if pid == self_pid {
            return Err(TargetError::ContainsSelf { target: name, pid });
        }
        let Some((comm, ppid, threads, rss, _)) = stat(pid) else {
            continue; // exited meanwhile
        };
        refuse_own_namespaces(target, &ours, pid, &comm)?;
        let dir = format!("/proc/{pid}/fd");
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
            let (mut kind, supported) = fd_kind(&link);
            if !supported {
                return Err(TargetError::UnsupportedFd {
                    target: name,
                    pid,
                    comm,
                    fd,
                    kind,
                });
            }
            if kind == "socket" {
                let inode = crate::host::network::socket_inode(&link);
                if let Some((port, state)) = inode.and_then(|i| tcp.get(&i)) {
                    kind = format!("socket:{}", state.name());
                    if *state == crate::host::network::TcpState::Listen {
                        listen_ports.insert(*port);
                    }
                } else if let Some(inode) = inode {
                    sockets.push(streams::HeldSocket {
                        pid,
                        comm: comm.clone(),
                        fd,
                        inode,
                    });
                }
            }
            if kind == "file" {
                let path = PathBuf::from(link.trim_end_matches(" (deleted)"));
                if on_volatile_fs(&path) && path.is_file() {
                    tmpfs_files.insert(path);
                }
            }
            *fds.entry(kind).or_default() += 1;
        }
        processes.push(ProcessInfo {
            pid,
            ppid,
            comm,
            threads,
            rss_bytes: rss * page,
        });
    }
    let cmdline = fs::read(format!("/proc/{root}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let journal_streams = streams::journal_streams(&name, &sockets, &mut fds)?;
    Ok(TreeInfo {
        target: target.clone(),
        name: tree_name,
        root,
        cmdline,
        processes,
        fds,
        tmpfs_files,
        listen_ports,
        unit: None,
        journal_streams,
    })
}

/// Inspects every target and refuses overlapping ones.
pub fn inspect_all(targets: &[Target], self_pid: i32) -> Result<Vec<TreeInfo>, TargetError> {
    let mut trees: Vec<TreeInfo> = Vec::new();
    for target in targets {
        for tree in inspect(target, self_pid)? {
            for other in &trees {
                if let Some(pid) = tree.pids().into_iter().find(|p| other.pids().contains(p)) {
                    return Err(TargetError::Overlap {
                        target: target.to_string(),
                        pid,
                        other: other.target.to_string(),
                    });
                }
            }
            trees.push(tree);
        }
    }
    Ok(trees)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("pid:42".parse::<Target>(), Ok(Target::Pid(42)));
        assert!(matches!(
            "42".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
        assert!(matches!(
            "pid:x".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
        assert_eq!(
            "unit:redis-server.service".parse::<Target>(),
            Ok(Target::Unit("redis-server.service".into()))
        );
        assert_eq!(
            "unit:redis-server".parse::<Target>(),
            Ok(Target::Unit("redis-server.service".into()))
        );
        assert_eq!(
            Target::Unit("redis-server.service".into()).to_string(),
            "unit:redis-server.service"
        );
        assert!(matches!(
            "unit:redis.socket".parse::<Target>(),
            Err(TargetError::NotAService { .. })
        ));
    }

    #[test]
    fn fd_kinds() {
        assert_eq!(fd_kind("pipe:[123]"), ("pipe".into(), true));
        assert_eq!(fd_kind("/var/log/x"), ("file".into(), true));
        assert_eq!(
            fd_kind("anon_inode:[io_uring]"),
            ("an io_uring instance".into(), false)
        );
        assert_eq!(
            fd_kind("anon_inode:[eventfd]"),
            ("anon:eventfd".into(), true)
        );
    }

    #[test]
    fn namespaces_of_their_own_are_found() {
        let ns = |pairs: &[(&'static str, &str)]| -> BTreeMap<&'static str, String> {
            pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
        };
        let ours = ns(&[
            ("user", "user:[1]"),
            ("mnt", "mnt:[2]"),
            ("uts", "uts:[3]"),
            ("net", "net:[4]"),
        ]);
        let sandboxed = ns(&[
            ("user", "user:[11]"),
            ("mnt", "mnt:[12]"),
            ("uts", "uts:[3]"),
            ("net", "net:[4]"),
        ]);
        assert_eq!(foreign_namespaces(&ours, &sandboxed), ["user", "mnt"]);
        assert!(foreign_namespaces(&ours, &ours).is_empty());
        // What cannot be read is not judged.
        assert!(foreign_namespaces(&ours, &ns(&[("user", "user:[1]")])).is_empty());
        // Our own children share our namespaces.
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        assert!(foreign_namespaces(&namespaces("self"), &namespaces(&me.to_string())).is_empty());
    }

    #[test]
    fn pid_one_and_missing_are_refused() {
        assert!(matches!(
            inspect(&Target::Pid(1), 999_999),
            Err(TargetError::Init { .. })
        ));
        assert!(matches!(
            inspect(&Target::Pid(i32::MAX - 7), 999_999),
            Err(TargetError::NoSuchProcess { .. })
        ));
    }

    #[test]
    fn own_tree_is_refused() {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        assert!(matches!(
            inspect(&Target::Pid(me), me),
            Err(TargetError::ContainsSelf { .. })
        ));
    }

    /// A child of this test that sleeps 30 s, and its pid.
    fn sleeping_child() -> (std::process::Child, i32) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).unwrap_or(0);
        (child, pid)
    }

    #[test]
    fn stopped_tasks_are_ended_and_their_pids_freed() {
        use nix::sys::signal::{kill, Signal};
        let (mut child, pid) = sleeping_child();
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).expect("stop");
        // Its parent (this test) reaps it, as a shell or systemd would.
        let reaper = std::thread::spawn(move || child.wait().expect("wait"));
        end_tasks(&[pid], std::time::Duration::from_secs(20)).expect("ended");
        assert!(start_time(pid).is_none(), "pid {pid} still in /proc");
        assert!(!reaper.join().expect("reaper").success());
        // Pids already gone are no error.
        end_tasks(&[pid], std::time::Duration::from_millis(100)).expect("gone already");
    }

    #[test]
    fn a_zombie_nobody_reaps_is_reported() {
        let (mut child, pid) = sleeping_child();
        let err = end_tasks(&[pid], std::time::Duration::from_millis(300)).expect_err("zombie");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains(&format!("pid {pid}")), "{err}");
        let _ = child.wait();
        assert!(start_time(pid).is_none());
    }

    #[test]
    fn a_child_is_inspected() {
        let (mut child, pid) = sleeping_child();
        let tree = inspect(&Target::Pid(pid), 1);
        let _ = child.kill();
        let _ = child.wait();
        let mut trees = tree.expect("inspect");
        assert_eq!(trees.len(), 1);
        let tree = trees.remove(0);
        assert_eq!(tree.root, pid);
        assert_eq!(tree.pids(), vec![pid]);
        assert!(tree.cmdline.contains("sleep 30"));
    }
}
