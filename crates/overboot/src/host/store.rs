//! Where the Save State Map goes. The operator picks the store (`--handover`): appended to the
//! new kernel's initrd (default, RAM, nothing to set up), or a directory on a file system that
//! survives the switch and that the new kernel mounts at the same path — a disk, or best, a
//! reserved-RAM store: RAM that both kernels leave alone across kexec because their command
//! lines reserve it as legacy persistent memory (`memmap=SIZE!OFFSET`, `CONFIG_X86_PMEM_LEGACY`,
//! modules `nd_e820` and `nd_pmem`), seen as `/dev/pmemN`. With a file system on it,
//! `--handover dir:<mount>/ssm` hands the map over where it lies: no initrd copy, no kexec
//! digest of it, no unpacking at boot. `overboot plan` finds such a store or says how to make
//! one; `update` checks a directory before anything is frozen.

use std::path::{Path, PathBuf};

/// A directory store that cannot hold the map.
#[derive(Debug, thiserror::Error)]
#[error("handover directory {path} cannot hold the map (nothing was frozen): {reason}")]
pub struct StoreError {
    /// The directory.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// How the Save State Map reaches the new kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Handover {
    /// Appended to the new kernel's initrd: RAM only, no disk needed in the new kernel.
    #[default]
    Initrd,
    /// Written straight into `<dir>/<update id>` on a persistent disk file system that the new
    /// kernel's early userspace mounts at the same path; flushed before the jump.
    Dir(PathBuf),
}

impl std::str::FromStr for Handover {
    type Err = String;

    fn from_str(s: &str) -> Result<Handover, String> {
        match s.split_once(':') {
            None if s == "initrd" => Ok(Handover::Initrd),
            Some(("dir", path)) if Path::new(path).is_absolute() => {
                Ok(Handover::Dir(PathBuf::from(path)))
            }
            Some(("dir", _)) => Err(format!("{s:?}: the directory must be an absolute path")),
            _ => Err(format!("{s:?}: expected `initrd` or `dir:/absolute/path`")),
        }
    }
}

/// File systems whose contents a kexec loses: a directory store there would hand over nothing.
const RAM_FILESYSTEMS: [(&str, nix::sys::statfs::FsType); 2] = [
    ("tmpfs", nix::sys::statfs::TMPFS_MAGIC),
    ("ramfs", nix::sys::statfs::FsType(0x8584_58f6)),
];

/// The store an update uses when neither the command line nor the config file names one, and
/// why: `plan` prints both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultStore {
    /// The store.
    pub handover: Handover,
    /// Why this one, for the operator.
    pub why: String,
}

/// The default store under `state_dir` on this machine (see [`choose_default`]).
pub fn default_store(state_dir: &Path, systemd: bool) -> DefaultStore {
    let dir = state_dir.join(crate::model::files::DEFAULT_STORE);
    let probe = dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    let file_system = nix::sys::statfs::statfs(probe)
        .ok()
        .map(|fs| file_system_name(fs.filesystem_type()));
    choose_default(&dir, systemd, file_system)
}

/// A file system's name and whether a kexec loses what it holds.
fn file_system_name(kind: nix::sys::statfs::FsType) -> (String, bool) {
    if let Some((name, _)) = RAM_FILESYSTEMS.iter().find(|(_, magic)| *magic == kind) {
        return ((*name).to_string(), true);
    }
    let name = match kind.0 {
        0xEF53 => "ext4".to_string(),
        0x5846_5342 => "xfs".to_string(),
        0x9123_683E => "btrfs".to_string(),
        other => format!("file system 0x{other:x}"),
    };
    (name, false)
}

/// The default store at `dir`, given whether systemd is PID 1 and the state directory's file
/// system (its name and whether a kexec loses what it holds; `None`: unknown):
/// - systemd is PID 1: the directory (the initrd's files are gone after switch_root);
/// - the state directory is on a disk file system: the directory. The new kernel is loaded
///   before the freeze and the map is neither copied into an initrd nor checksummed by kexec
///   (at the load and again at the jump) nor unpacked at boot: in the lab about half the
///   blackout of the initrd store at 64 MiB (docs/bench). Without room for the map there,
///   the checks fall back to the initrd;
/// - otherwise the initrd, which needs nothing of the new boot.
pub fn choose_default(
    dir: &Path,
    systemd: bool,
    file_system: Option<(String, bool)>,
) -> DefaultStore {
    let shown = dir.display();
    if systemd {
        return DefaultStore {
            handover: Handover::Dir(dir.to_path_buf()),
            why: "systemd is PID 1: the new boot's initrd is gone after switch_root".into(),
        };
    }
    let why = match file_system {
        None => format!("the file system of {shown} cannot be read"),
        Some((name, true)) => format!("{shown} is on {name}, which a kexec loses"),
        Some((name, false)) => {
            return DefaultStore {
                handover: Handover::Dir(dir.to_path_buf()),
                why: format!(
                    "{shown} is on {name}: the kernel is loaded before the freeze and kexec \
                     neither copies nor checksums the map (the initrd if it has no room for \
                     it; the new boot must mount it before `overboot resume`)"
                ),
            };
        }
    };
    DefaultStore {
        handover: Handover::Initrd,
        why: format!("{why}: the map rides in the new kernel's initrd"),
    }
}

/// Checks a directory store's place before anything is frozen: it exists (or can be created),
/// is on a file system that survives a kernel switch (a disk, or reserved RAM such as legacy
/// persistent memory — not tmpfs or ramfs), and has room for `needed` bytes. With `create`
/// false (`plan`) a missing directory is judged by the nearest directory above it that exists.
pub fn check_dir(dir: &Path, needed: u64, create: bool) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError {
        path: dir.to_path_buf(),
        reason,
    };
    let dir = if create {
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
        dir
    } else {
        dir.ancestors()
            .find(|d| d.is_dir())
            .ok_or_else(|| bad("no directory above it exists".into()))?
    };
    let fs = nix::sys::statfs::statfs(dir).map_err(|e| bad(format!("statfs: {e}")))?;
    let kind = fs.filesystem_type();
    if let Some((name, _)) = RAM_FILESYSTEMS.iter().find(|(_, magic)| *magic == kind) {
        return Err(bad(format!(
            "it is on {name}, which does not survive the kernel switch; use a disk file system \
             that the new kernel's early userspace mounts at the same path, or the initrd store"
        )));
    }
    let vfs = nix::sys::statvfs::statvfs(dir).map_err(|e| bad(format!("statvfs: {e}")))?;
    let available = vfs.blocks_available() * vfs.fragment_size();
    if available < needed {
        return Err(bad(format!(
            "{} MiB free, the map needs about {} MiB",
            available >> 20,
            needed.div_ceil(1 << 20)
        )));
    }
    Ok(())
}

/// A legacy persistent-memory block device and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RamStore {
    /// `/dev/pmem0`.
    pub device: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// Where it is mounted, if it is.
    pub mount_point: Option<PathBuf>,
    /// Free bytes on that file system.
    pub available_bytes: u64,
}

/// The `pmem*` block devices under `sys_block` (`/sys/block`) with their mount points from
/// `mounts` (the text of `/proc/mounts`).
pub fn find(sys_block: &Path, mounts: &str) -> Vec<RamStore> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut stores: Vec<RamStore> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("pmem").then_some(name)
        })
        .map(|name| {
            let sectors = std::fs::read_to_string(sys_block.join(&name).join("size"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let device = PathBuf::from(format!("/dev/{name}"));
            let mount_point = mounts.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                let (dev, point) = (fields.next()?, fields.next()?);
                (Path::new(dev) == device).then(|| PathBuf::from(point))
            });
            let available_bytes = mount_point
                .as_deref()
                .and_then(|m| nix::sys::statvfs::statvfs(m).ok())
                .map_or(0, |v| v.blocks_available() * v.fragment_size());
            RamStore {
                device,
                size_bytes: sectors * 512,
                mount_point,
                available_bytes,
            }
        })
        .collect();
    stores.sort_by(|a, b| a.device.cmp(&b.device));
    stores
}

/// One sentence for the operator: which store to use for a map of `needed` bytes, or how to
/// reserve one.
/// `fallback` is where the map goes without a reserved-RAM store: `None` for the initrd store,
/// or the directory store a systemd host uses by default.
pub fn advice(stores: &[RamStore], needed: u64, fallback: Option<&Path>) -> String {
    let mib = |b: u64| b >> 20;
    let want = needed + needed / 10 + (64 << 20);
    if let Some(s) = stores
        .iter()
        .find(|s| s.mount_point.is_some() && s.available_bytes >= want)
    {
        let mount = s.mount_point.as_deref().unwrap_or(Path::new("/"));
        return format!(
            "reserved RAM {} ({} MiB, {} MiB free) at {}: pass --handover dir:{}/ssm to hand the \
             map over in place (both kernels' command lines must keep the same memmap= \
             reservation; the new kernel must mount it there before `overboot resume`)",
            s.device.display(),
            mib(s.size_bytes),
            mib(s.available_bytes),
            mount.display(),
            mount.display()
        );
    }
    let found = match stores.first() {
        Some(s) if s.mount_point.is_none() => format!(
            "{} ({} MiB) is not mounted; format it once (mkfs.ext4) and mount it at boot",
            s.device.display(),
            mib(s.size_bytes)
        ),
        Some(s) => format!(
            "{} has {} MiB free, too little",
            s.device.display(),
            mib(s.available_bytes)
        ),
        None => "no reserved RAM".into(),
    };
    let goes = match fallback {
        None => "the map goes through the new kernel's initrd (copied, checksummed by kexec, \
                 unpacked at boot)"
            .to_string(),
        Some(dir) => format!(
            "the map goes to dir:{} (systemd host: written to the disk and read back)",
            dir.display()
        ),
    };
    format!(
        "{found}: {goes}. To hand it over in place, reserve at least {} MiB on the command \
         line of both kernels with memmap={}M!<offset> (an unused System RAM range of \
         /proc/iomem; CONFIG_X86_PMEM_LEGACY, modules nd_e820 and nd_pmem), format /dev/pmem0 \
         once, mount it at boot, and pass --handover dir:<mount point>/ssm",
        mib(want).max(1),
        mib(want).div_ceil(128).max(1) * 128
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_store_is_the_state_directory_on_a_disk() {
        let dir = Path::new("/var/lib/overboot/ssm");
        let fs = |name: &str, ram| Some((name.to_string(), ram));
        let on_disk = choose_default(dir, false, fs("ext4", false));
        assert_eq!(on_disk.handover, Handover::Dir(dir.into()));
        assert!(on_disk.why.contains("is on ext4"), "{}", on_disk.why);
        let ram = choose_default(dir, false, fs("tmpfs", true));
        assert_eq!(ram.handover, Handover::Initrd);
        assert!(
            ram.why.contains("tmpfs, which a kexec loses"),
            "{}",
            ram.why
        );
        assert_eq!(choose_default(dir, false, None).handover, Handover::Initrd);
        // systemd: the directory, even on tmpfs (the checks refuse that one by name).
        let systemd = choose_default(dir, true, fs("tmpfs", true));
        assert_eq!(systemd.handover, Handover::Dir(dir.into()));
    }

    fn sys_with(devices: &[(&str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, sectors) in devices {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("size"), format!("{sectors}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("vda")).unwrap();
        dir
    }

    #[test]
    fn finds_pmem_devices_and_their_mounts() {
        let sys = sys_with(&[("pmem0", 2 * 1024 * 1024)]);
        let stores = find(
            sys.path(),
            "/dev/vda /lab ext4 rw 0 0\n/dev/pmem0 / ext4 rw 0 0\n",
        );
        assert_eq!(stores.len(), 1);
        assert_eq!(stores[0].device, Path::new("/dev/pmem0"));
        assert_eq!(stores[0].size_bytes, 1 << 30);
        assert_eq!(stores[0].mount_point.as_deref(), Some(Path::new("/")));
        assert!(stores[0].available_bytes > 0, "statvfs of / read");
        assert!(find(Path::new("/nonexistent"), "").is_empty());
    }

    #[test]
    fn advice_names_the_store_or_how_to_reserve_one() {
        let store = RamStore {
            device: "/dev/pmem0".into(),
            size_bytes: 1 << 30,
            mount_point: Some("/pmem".into()),
            available_bytes: 900 << 20,
        };
        let text = advice(std::slice::from_ref(&store), 512 << 20, None);
        assert!(text.contains("--handover dir:/pmem/ssm"), "{text}");

        let text = advice(std::slice::from_ref(&store), 2 << 30, None);
        assert!(
            text.contains("too little") && text.contains("memmap="),
            "{text}"
        );

        let unmounted = RamStore {
            mount_point: None,
            available_bytes: 0,
            ..store
        };
        let text = advice(&[unmounted], 1 << 20, None);
        assert!(text.contains("not mounted"), "{text}");

        let text = advice(&[], 512 << 20, None);
        assert!(text.starts_with("no reserved RAM"), "{text}");
        assert!(text.contains("initrd"), "{text}");
        assert!(text.contains("memmap=640M!<offset>"), "{text}");

        let text = advice(&[], 512 << 20, Some(Path::new("/var/lib/overboot/ssm")));
        assert!(
            text.contains("dir:/var/lib/overboot/ssm (systemd host") && !text.contains("initrd"),
            "{text}"
        );
    }
}
