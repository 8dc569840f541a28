//! The reserved-RAM store: RAM that both kernels leave alone across kexec because their command
//! lines reserve it as legacy persistent memory (`memmap=SIZE!OFFSET`, `CONFIG_X86_PMEM_LEGACY`,
//! modules `nd_e820` and `nd_pmem`), seen as `/dev/pmemN`. With a file system on it mounted at
//! the same path in both kernels, `--handover dir:<mount>/ssm` hands the map over where it lies:
//! no initrd copy, no kexec digest of it, no unpacking at boot. `overboot plan` finds such a
//! store or says how to make one.

use std::path::{Path, PathBuf};

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
pub fn advice(stores: &[RamStore], needed: u64) -> String {
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
    format!(
        "{found}: the map goes through the new kernel's initrd (copied, checksummed by kexec, \
         unpacked at boot). To hand it over in place, reserve at least {} MiB on the command \
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
        let text = advice(std::slice::from_ref(&store), 512 << 20);
        assert!(text.contains("--handover dir:/pmem/ssm"), "{text}");

        let text = advice(std::slice::from_ref(&store), 2 << 30);
        assert!(
            text.contains("too little") && text.contains("memmap="),
            "{text}"
        );

        let unmounted = RamStore {
            mount_point: None,
            available_bytes: 0,
            ..store
        };
        let text = advice(&[unmounted], 1 << 20);
        assert!(text.contains("not mounted"), "{text}");

        let text = advice(&[], 512 << 20);
        assert!(text.starts_with("no reserved RAM"), "{text}");
        assert!(text.contains("memmap=640M!<offset>"), "{text}");
    }
}
