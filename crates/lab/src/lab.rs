//! The lab as a whole: kernels fetched, binaries built, one initramfs per kernel, a data disk
//! holding every kernel and initrd a scenario may switch to, and guests booted from them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::disk::{self, DiskError};
use crate::guest::{Guest, GuestConfig, GuestError};
use crate::host::{self, HostError};
use crate::image::{GuestImage, ImageError, DUMP_MODULES, GUEST_MODULES};
use crate::kernels::{self, Kernel, KernelError, KernelSpec};

/// The base kernel command line of lab guests.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// Boot timeout for one guest kernel under TCG (typically 3–10 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Host preparation failed.
    #[error("preparing the host")]
    Host(#[from] HostError),
    /// A kernel could not be fetched.
    #[error("fetching kernel {label}")]
    Kernel {
        label: String,
        #[source]
        source: KernelError,
    },
    /// A guest image could not be built.
    #[error("building the guest image")]
    Image(#[from] ImageError),
    /// The data disk could not be built.
    #[error("building the data disk")]
    Disk(#[from] DiskError),
    /// The guest failed.
    #[error("guest")]
    Guest(#[from] GuestError),
    /// A label names no kernel of the lab.
    #[error("unknown kernel label {0:?} (known: A, B, C)")]
    UnknownKernel(String),
    /// Building our binaries failed.
    #[error("building {what}: {detail}")]
    Build { what: String, detail: String },
    /// No free host port for a forward.
    #[error("host network")]
    Net(#[from] crate::net::NetError),
    /// Filesystem error.
    #[error("lab i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binaries of ours that go into every guest.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `overboot` CLI.
    pub overboot: PathBuf,
    /// The lab's workload programs (`lab-workload <kind>`).
    pub workload: PathBuf,
}

/// A prepared lab: kernels fetched and binaries built.
#[derive(Debug)]
pub struct Lab {
    kernels: BTreeMap<String, Kernel>,
    binaries: Binaries,
}

/// A scenario's artefacts: an initrd per kernel and the data disk.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name of the run (logs in `target/lab/<name>`).
    pub name: String,
    /// The run directory.
    pub dir: PathBuf,
    /// Kernel label → its initrd on the host.
    pub initrds: BTreeMap<String, PathBuf>,
    /// The data disk image.
    pub disk: PathBuf,
}

impl Lab {
    /// Installs missing host packages (as root), fetches the kernels and builds our binaries.
    pub fn prepare(labels: &[&str]) -> Result<Lab, LabError> {
        if nix::unistd::geteuid().is_root() {
            host::ensure_packages(host::HOST_PACKAGES)?;
        }
        let cache = host::cache_dir();
        let mut kernels = BTreeMap::new();
        for label in labels {
            let spec = KernelSpec::by_label(label)
                .ok_or_else(|| LabError::UnknownKernel(label.to_string()))?;
            let kernel = kernels::fetch(&spec, &cache).map_err(|source| LabError::Kernel {
                label: spec.label.into(),
                source,
            })?;
            kernels.insert(spec.label.to_string(), kernel);
        }
        let binaries = build_binaries()?;
        Ok(Lab { kernels, binaries })
    }

    /// The kernel with this label.
    pub fn kernel(&self, label: &str) -> Result<&Kernel, LabError> {
        self.kernels
            .get(&label.to_ascii_uppercase())
            .ok_or_else(|| LabError::UnknownKernel(label.into()))
    }

    /// Our binaries.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Builds the standard guest initramfs for a kernel at `out`.
    pub fn build_initrd(
        &self,
        kernel: &Kernel,
        staging: &Path,
        out: &Path,
    ) -> Result<u64, LabError> {
        let mut image = GuestImage::new(staging, kernel)?;
        image.add_modules(kernel, GUEST_MODULES)?;
        image.add_late_modules(kernel, DUMP_MODULES)?;
        image.add_binary(&self.binaries.overboot, "/usr/sbin/overboot")?;
        image.add_binary(&self.binaries.workload, "/usr/bin/lab-workload")?;
        image.add_criu()?;
        // The network scenarios' service, and nft to inspect or carry CRIU's lock table.
        image.add_binary(Path::new("/usr/bin/redis-server"), "/usr/bin/redis-server")?;
        image.add_binary(Path::new("/usr/sbin/nft"), "/usr/sbin/nft")?;
        // To format the reserved-RAM store (/dev/pmem0) on a fresh boot; out of PATH, where
        // busybox's own mke2fs applet (no -t, no -O) would win.
        image.add_binary(Path::new("/sbin/mke2fs"), "/usr/lib/lab/mke2fs")?;
        image.add_resume_hook()?;
        image.add_naive_hook()?;
        let size = image.build(out)?;
        let _ = fs::remove_dir_all(staging);
        Ok(size)
    }

    /// Builds a scenario: an initrd for every kernel it uses and a data disk of `disk_mib`
    /// holding each kernel and initrd under `/lab/boot/<label>/` (`vmlinuz`, `initrd.img`).
    pub fn scenario(
        &self,
        name: &str,
        labels: &[&str],
        disk_mib: u64,
    ) -> Result<Scenario, LabError> {
        self.scenario_with(name, labels, disk_mib, &[])
    }

    /// Like [`Lab::scenario`], with extra host files copied onto the data disk: each
    /// `(host_path, path_under_lab)` lands at `/lab/<path_under_lab>` in the guest.
    pub fn scenario_with(
        &self,
        name: &str,
        labels: &[&str],
        disk_mib: u64,
        extra: &[(PathBuf, String)],
    ) -> Result<Scenario, LabError> {
        let dir = host::run_dir(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let contents = dir.join("disk-contents");
        for (host_path, rel) in extra {
            let dest = contents.join(rel.trim_start_matches('/'));
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            fs::copy(host_path, &dest).map_err(io(host_path))?;
        }
        let mut initrds = BTreeMap::new();
        for label in labels {
            let kernel = self.kernel(label)?;
            let boot = contents.join("boot").join(&kernel.label);
            fs::create_dir_all(&boot).map_err(io(&boot))?;
            let initrd = dir.join(format!("initrd-{}.img", kernel.label));
            self.build_initrd(kernel, &dir.join("staging"), &initrd)?;
            fs::copy(&initrd, boot.join("initrd.img")).map_err(io(&initrd))?;
            fs::copy(&kernel.vmlinuz, boot.join("vmlinuz")).map_err(io(&kernel.vmlinuz))?;
            fs::write(boot.join("release"), &kernel.release).map_err(io(&boot))?;
            initrds.insert(kernel.label.clone(), initrd);
        }
        let disk = dir.join("data.ext4");
        disk::build(&disk, &contents, disk_mib)?;
        let _ = fs::remove_dir_all(&contents);
        Ok(Scenario {
            name: name.into(),
            dir,
            initrds,
            disk,
        })
    }

    /// A guest config booting `label` of `scenario` with its data disk.
    pub fn guest_config(&self, scenario: &Scenario, label: &str) -> Result<GuestConfig, LabError> {
        let kernel = self.kernel(label)?;
        let initrd = scenario
            .initrds
            .get(&kernel.label)
            .ok_or_else(|| LabError::UnknownKernel(label.into()))?;
        let mut config = GuestConfig::new(&scenario.name, &kernel.vmlinuz, initrd);
        config.append = BASE_CMDLINE.into();
        config.disk = Some(scenario.disk.clone());
        Ok(config)
    }

    /// Like [`Lab::guest_config`], with a virtio-net NIC on QEMU's user network (the guest's
    /// init configures it as 10.0.2.15/24 via 10.0.2.2) and, for each guest port, a free port of
    /// 127.0.0.1 forwarded to it. Returns the config and the host ports, in the same order.
    pub fn guest_config_net(
        &self,
        scenario: &Scenario,
        label: &str,
        guest_ports: &[u16],
    ) -> Result<(GuestConfig, Vec<u16>), LabError> {
        let mut config = self.guest_config(scenario, label)?;
        let host_ports = forward_ports(&mut config, guest_ports)?;
        Ok((config, host_ports))
    }

    /// Like [`Lab::guest_config_net`], with `pmem_mib` of RAM reserved as legacy persistent
    /// memory (`/dev/pmem0`, mounted at `/pmem` by the lab's init) on top of `memory_mib` of
    /// usable RAM; see [`pmem_layout`].
    pub fn guest_config_pmem(
        &self,
        scenario: &Scenario,
        label: &str,
        guest_ports: &[u16],
        memory_mib: u32,
        pmem_mib: u32,
    ) -> Result<(GuestConfig, Vec<u16>), LabError> {
        let (mut config, ports) = self.guest_config_net(scenario, label, guest_ports)?;
        let (total, offset) = pmem_layout(memory_mib, pmem_mib);
        config.memory_mib = total;
        config.append = format!("{} memmap={pmem_mib}M!{offset}M", config.append);
        Ok((config, ports))
    }

    /// Boots a guest and waits until its shell is ready.
    pub fn boot(&self, config: &GuestConfig) -> Result<Guest, LabError> {
        let (guest, _line) = Guest::boot(config, BOOT_TIMEOUT)?;
        Ok(guest)
    }
}

/// Gives the guest of `config` a NIC on QEMU's user network with a free port of 127.0.0.1
/// forwarded to each of `guest_ports`. Returns the host ports, in the same order.
pub fn forward_ports(
    config: &mut GuestConfig,
    guest_ports: &[u16],
) -> Result<Vec<u16>, crate::net::NetError> {
    let host_ports = crate::net::free_ports(guest_ports.len())?;
    config.net = Some(
        host_ports
            .iter()
            .copied()
            .zip(guest_ports.iter().copied())
            .collect(),
    );
    Ok(host_ports)
}

/// Where `pmem_mib` of reserved RAM goes in a q35 guest that keeps `memory_mib` of usable RAM:
/// returns (guest RAM in total, offset of the region), MiB. QEMU's q35 puts RAM below 4 GiB up
/// to the whole size when it is at most 2.75 GiB, else 2 GiB below 4 GiB and the rest from 4 GiB
/// up. Small guests get the region near the top of their RAM (clear of the firmware tables at
/// the very top); large ones at 4 GiB, with at least 2 GiB of usable RAM below it.
pub fn pmem_layout(memory_mib: u32, pmem_mib: u32) -> (u32, u32) {
    const LOW_MAX: u32 = 2816;
    if memory_mib + pmem_mib < LOW_MAX {
        let total = memory_mib + pmem_mib;
        // 128 MiB-aligned, at least 128 MiB below the top.
        let offset = (total - pmem_mib - 128) / 128 * 128;
        (total, offset)
    } else {
        (memory_mib.max(2048) + pmem_mib, 4096)
    }
}

/// Builds `overboot` and `lab-workload` (release) with the cargo that runs us, and returns their
/// paths. `OVERBOOT_LAB_BIN_DIR` points at prebuilt ones instead.
pub fn build_binaries() -> Result<Binaries, LabError> {
    if let Some(dir) = std::env::var_os("OVERBOOT_LAB_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return Ok(Binaries {
            overboot: dir.join("overboot"),
            workload: dir.join("lab-workload"),
        });
    }
    let root = host::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "overboot",
            "--bin",
            "overboot",
            "-p",
            "overboot-lab",
            "--bin",
            "lab-workload",
        ])
        .output()
        .map_err(|e| LabError::Build {
            what: "overboot".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Build {
            what: "overboot and lab-workload".into(),
            detail: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(Binaries {
        overboot: target.join("release/overboot"),
        workload: target.join("release/lab-workload"),
    })
}

#[cfg(test)]
mod tests {
    use super::pmem_layout;

    #[test]
    fn reserved_ram_lies_inside_the_guests_ram_and_leaves_the_memory_asked_for() {
        for (memory, pmem) in [
            (1280, 224),
            (2048, 896),
            (3072, 896),
            (9216, 3200),
            (1024, 1792),
        ] {
            let (total, offset) = pmem_layout(memory, pmem);
            assert_eq!(offset % 128, 0);
            if total < 2816 {
                // All RAM below 4 GiB: the region ends 128 MiB or more below the top.
                assert!(
                    offset + pmem + 128 <= total,
                    "{memory} {pmem}: {total} {offset}"
                );
                assert_eq!(total - pmem, memory);
            } else {
                // q35: 2 GiB below 4 GiB, the rest from 4 GiB, where the region starts.
                assert_eq!(offset, 4096);
                assert!(total - 2048 >= pmem);
                assert!(total - pmem >= memory);
            }
        }
    }
}
