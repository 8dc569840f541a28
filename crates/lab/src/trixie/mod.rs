//! The Debian 13 (trixie) profile: a real Debian server in the guest — systemd as PID 1 on an
//! ext4 root file system made with debootstrap, booted through the distribution's own
//! initramfs (initramfs-tools) — with two of trixie's kernels installed: 6.12 (trixie) and 7.3
//! (trixie-backports), so that tests move systemd services from one to the other.
//!
//! ```text
//!  host                                         guest (QEMU TCG)
//!  kernel + initrd from the cached tree ──────► initramfs: virtio_blk, mount /dev/vda
//!  root.qcow2 (overlay) ── backing ── image ──► /dev/vda: trixie, systemd, redis-server,
//!                                               criu, nftables, overboot (its .deb, dpkg -i);
//!                                               /boot holds both kernels and their initramfs
//!  serial console ◄─ `@@LAB booted …` ──────── lab-console.service (after multi-user.target)
//!  127.0.0.1:<port> ── hostfwd ───────────────► 10.0.2.15:6379 redis-server.service
//! ```
//!
//! Kernels come from trixie and trixie-backports through the lab's own apt configuration
//! ([`apt`]); the tree and its image are built and cached by [`rootfs`]; the files the profile
//! adds to a plain Debian tree are in [`files`].

pub mod apt;
pub mod carry;
pub mod files;
pub mod logger;
pub mod rootfs;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::guest::{Guest, GuestConfig, GuestError};
use crate::host::{self, HostError};
use crate::lab;

use self::apt::{AptError, LabApt};
use self::rootfs::{KernelInstall, RootfsError};

pub use self::rootfs::SUITE;

/// Host packages this profile needs on top of the lab's own: debootstrap builds the tree,
/// qemu-img makes the per-test overlays.
pub const HOST_PACKAGES: &[&str] = &["debootstrap", "qemu-utils"];

/// The kernel command line of trixie guests: the root is the whole virtio disk, interfaces keep
/// their kernel names (`eth0`), systemd prints no status lines into the console protocol, and
/// the boot-time check of the IO-APIC timer is skipped (`no_timer_check`): on a loaded host a
/// TCG vCPU can miss the ticks it counts, and 6.12 then panics with "IO-APIC + timer doesn't
/// work!", as it did here once.
pub const CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0 no_timer_check panic=-1 \
     quiet systemd.show_status=false";

/// How long a trixie guest may take to reach multi-user under TCG (about 45 s when the host's
/// two cores are otherwise idle; other guests may share them).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

/// Guest memory: systemd, Redis and CRIU with room to spare.
pub const MEMORY_MIB: u32 = 1536;

/// A kernel of the profile: the package holding its image, pinned, and the series to fall back
/// to when the archive has moved on. 7.x kernels come as several packages: their names are
/// the companions' prefixes followed by the same `<version>+deb13-cloud-amd64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrixieKernelSpec {
    /// Short label used by tests (`6.12`, `7.3`).
    pub label: &'static str,
    /// The pinned package holding the kernel image.
    pub package: &'static str,
    /// Package-name prefix and suffix of the series, for the fallback.
    pub series: (&'static str, &'static str),
    /// Prefixes of the other packages of the same kernel.
    pub companions: &'static [&'static str],
}

/// Debian 13's own kernel.
pub const K6_12: TrixieKernelSpec = TrixieKernelSpec {
    label: "6.12",
    package: "linux-image-6.12.117+deb13-cloud-amd64-unsigned",
    series: ("linux-image-6.12.", "+deb13-cloud-amd64-unsigned"),
    companions: &[],
};

/// The kernel of trixie-backports (7.x packaging: image, modules and base files apart).
pub const K7_3: TrixieKernelSpec = TrixieKernelSpec {
    label: "7.3",
    package: "linux-binary-7.3.4+deb13-cloud-amd64",
    series: ("linux-binary-7.3.", "+deb13-cloud-amd64"),
    companions: &["linux-modules-", "linux-base-"],
};

/// The release (`uname -r`) a kernel package installs.
/// overboot's Debian package, built as README says (`scripts/package`, lintian left to the
/// suite's own step): `target/debian/overboot_<version>_amd64.deb`.
fn package() -> Result<PathBuf, TrixieError> {
    let root = host::workspace_root();
    host::run(
        std::process::Command::new("bash")
            .arg("scripts/package")
            .arg("--no-lintian")
            .current_dir(&root),
    )?;
    let dir = root.join("target/debian");
    let io = |source| TrixieError::Io {
        path: dir.clone(),
        source,
    };
    fs::read_dir(&dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("overboot_") && n.ends_with("_amd64.deb")
            })
        })
        .ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "scripts/package left no overboot_*_amd64.deb",
            ))
        })
}

fn release_of(package: &str) -> String {
    let name = package
        .strip_prefix("linux-image-")
        .or_else(|| package.strip_prefix("linux-binary-"))
        .unwrap_or(package);
    name.strip_suffix("-unsigned").unwrap_or(name).to_string()
}

/// Errors of the trixie profile.
#[derive(Debug, thiserror::Error)]
pub enum TrixieError {
    /// Host packages could not be installed.
    #[error("preparing the host")]
    Host(#[from] HostError),
    /// The lab's apt failed.
    #[error("fetching from trixie")]
    Apt(#[from] AptError),
    /// The tree or its image could not be built.
    #[error("building the trixie root file system")]
    Rootfs(#[from] RootfsError),
    /// Our binaries could not be built.
    #[error("building overboot")]
    Lab(#[from] lab::LabError),
    /// A label names no kernel of the profile.
    #[error("unknown trixie kernel {0:?} (known: 6.12, 7.3)")]
    UnknownKernel(String),
    /// The guest failed.
    #[error("trixie guest")]
    Guest(#[from] GuestError),
    /// A port for the forward.
    #[error("host network")]
    Net(#[from] crate::net::NetError),
    /// Filesystem error.
    #[error("trixie profile i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The prepared profile: the cached tree (kernels and initramfs images) and its ext4 image.
#[derive(Debug)]
pub struct Trixie {
    rootfs: PathBuf,
    image: PathBuf,
    releases: BTreeMap<String, String>,
}

impl Trixie {
    /// Installs what the host lacks (as root), fetches both kernels, builds our binaries and the
    /// tree and image unless the cache has them.
    pub fn prepare() -> Result<Trixie, TrixieError> {
        if nix::unistd::geteuid().is_root() {
            host::ensure_packages(host::HOST_PACKAGES)?;
            host::ensure_packages(HOST_PACKAGES)?;
        }
        let cache = host::cache_dir().join("trixie");
        let apt = LabApt::new(&cache.join("apt"))?;
        let mut kernels = Vec::new();
        let mut releases = BTreeMap::new();
        for spec in [K6_12, K7_3] {
            let kernel = fetch_kernel(&apt, &spec, &cache.join("debs"))?;
            releases.insert(spec.label.to_string(), kernel.release.clone());
            kernels.push(kernel);
        }
        let rootfs = rootfs::rootfs(&cache, &apt, &kernels)?;
        let binaries = lab::build_binaries()?;
        // overboot itself comes in its Debian package (binary, generator, units, man pages,
        // config), installed with the image's own dpkg; the lab's workload is copied in.
        let package = package()?;
        let image = rootfs::image(
            &cache,
            &rootfs,
            &[(binaries.workload.clone(), "/usr/bin/lab-workload")],
            &[],
            &[package],
        )?;
        Ok(Trixie {
            rootfs,
            image,
            releases,
        })
    }

    /// `uname -r` of the kernel with this label.
    pub fn release(&self, label: &str) -> Result<&str, TrixieError> {
        self.releases
            .get(label)
            .map(String::as_str)
            .ok_or_else(|| TrixieError::UnknownKernel(label.into()))
    }

    /// The kernel image of `label` on the host (the tree's `/boot/vmlinuz-<release>`).
    pub fn vmlinuz(&self, label: &str) -> Result<PathBuf, TrixieError> {
        let release = self.release(label)?;
        Ok(self.rootfs.join(format!("boot/vmlinuz-{release}")))
    }

    /// The initramfs of `label` on the host, made by initramfs-tools in the tree.
    pub fn initrd(&self, label: &str) -> Result<PathBuf, TrixieError> {
        let release = self.release(label)?;
        Ok(self.rootfs.join(format!("boot/initrd.img-{release}")))
    }

    /// The cached ext4 image every guest's overlay is backed by.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// A guest booting `label` from a fresh overlay of the image in `target/lab/<name>/`, with a
    /// NIC on QEMU's user network and a free port of 127.0.0.1 forwarded to each guest port.
    /// Returns the config and the host ports, in the order of `guest_ports`.
    pub fn guest_config(
        &self,
        name: &str,
        label: &str,
        guest_ports: &[u16],
    ) -> Result<(GuestConfig, Vec<u16>), TrixieError> {
        let dir = host::run_dir(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| TrixieError::Io {
            path: dir.clone(),
            source,
        })?;
        let overlay = dir.join("root.qcow2");
        rootfs::overlay(&self.image, &overlay)?;
        let mut config = GuestConfig::new(name, &self.vmlinuz(label)?, &self.initrd(label)?);
        config.append = CMDLINE.into();
        config.memory_mib = MEMORY_MIB;
        config.disk = Some(overlay);
        let host_ports = lab::forward_ports(&mut config, guest_ports)?;
        Ok((config, host_ports))
    }

    /// Boots a guest and waits until systemd reached multi-user and the console protocol runs.
    /// Returns the guest and its `@@LAB booted` line.
    pub fn boot(&self, config: &GuestConfig) -> Result<(Guest, String), TrixieError> {
        Ok(Guest::boot(config, BOOT_TIMEOUT)?)
    }
}

/// Resolves, downloads (once) and lists the packages of one kernel.
fn fetch_kernel(
    apt: &LabApt,
    spec: &TrixieKernelSpec,
    debs: &Path,
) -> Result<KernelInstall, TrixieError> {
    let done_marker = |dir: &Path| dir.join(".downloaded");
    // A warm cache needs no archive at all: the pinned package already downloaded wins.
    let pinned_dir = debs.join(spec.package);
    let package = if done_marker(&pinned_dir).exists() {
        spec.package.to_string()
    } else {
        apt.resolve(spec.package, spec.series)?
    };
    let release = release_of(&package);
    let mut packages = vec![package.clone()];
    packages.extend(spec.companions.iter().map(|p| format!("{p}{release}")));
    let dir = debs.join(&package);
    let files = if done_marker(&dir).exists() {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|source| TrixieError::Io {
                path: dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        files.sort();
        files
    } else {
        let files = apt.download(&packages, &dir)?;
        fs::write(done_marker(&dir), b"").map_err(|source| TrixieError::Io {
            path: dir.clone(),
            source,
        })?;
        files
    };
    Ok(KernelInstall {
        release,
        packages,
        debs: files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_follow_both_packagings() {
        assert_eq!(release_of(K6_12.package), "6.12.117+deb13-cloud-amd64");
        assert_eq!(release_of(K7_3.package), "7.3.4+deb13-cloud-amd64");
    }
}
