//! The Debian 13 root filesystem of the trixie profile, in three cached layers:
//!
//! ```text
//!  cache/trixie/rootfs-<key>/      debootstrap minbase + PACKAGES, the profile's files, both
//!                                  kernels unpacked into it, depmod and mkinitramfs run in a
//!                                  chroot (the distribution's own initramfs-tools)
//!        key = sha256(suite, PACKAGES, kernel packages, profile files, PROFILE_VERSION)
//!  cache/trixie/image-<key>.ext4   that tree + overboot's binaries + the pinned CRIU built in
//!                                  a copy of the tree (crate::criu; Debian's own with
//!                                  OVERBOOT_LAB_CRIU=distro), as an ext4 file system
//!        key = sha256(rootfs key, binaries, CRIU)
//!  target/lab/<run>/root.qcow2     per test: a copy-on-write overlay whose backing file is
//!                                  the image, so the cache stays pristine
//! ```
//!
//! A layer is built in a `.tmp` sibling and renamed into place when complete, so an interrupted
//! build is never taken for a finished one.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::criu::{self, CriuError, Engine, PinnedCriu, Userland};
use crate::host::{self, HostError};

use super::apt::LabApt;
use super::files::{PROFILE_FILES, PROFILE_LINKS, UNLINKS};

/// The Debian suite of the tree.
pub const SUITE: &str = "trixie";

/// Bumped whenever the way the tree is built changes in a way the key does not see.
const PROFILE_VERSION: &str = "1";

/// Packages installed on top of debootstrap's minbase.
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "criu",
    "redis-server",
    "nftables",
    "iproute2",
    "kmod",
    "initramfs-tools",
    "zstd",
];

/// The size of the root file system image (sparse).
const IMAGE_MIB: u64 = 2048;

/// Errors while building the root file system.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A build step (debootstrap, chroot, mkfs, qemu-img) failed.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: HostError,
    },
    /// The binaries need a library the tree lacks and the host cannot give.
    #[error("{binary} needs {library}, which is neither in the trixie tree nor on the host")]
    Library { binary: PathBuf, library: String },
    /// The pinned CRIU links a library the image's tree lacks.
    #[error("the pinned CRIU links {0}, which the trixie tree lacks")]
    CriuLibrary(PathBuf),
    /// The pinned CRIU could not be built, or the engine is not known.
    #[error("the image's CRIU")]
    Criu(#[from] CriuError),
    /// Filesystem error.
    #[error("rootfs i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn step(what: &str, cmd: &mut Command) -> Result<String, RootfsError> {
    host::run(cmd).map_err(|source| RootfsError::Step {
        step: what.into(),
        source,
    })
}

/// A kernel to install into the tree: its release and unpacked package trees.
#[derive(Debug, Clone)]
pub struct KernelInstall {
    /// `uname -r`.
    pub release: String,
    /// The packages it came from (part of the cache key).
    pub packages: Vec<String>,
    /// The `.deb` files to unpack into the tree.
    pub debs: Vec<PathBuf>,
}

fn short_hash(hasher: Sha256) -> String {
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The key of the rootfs layer.
pub fn rootfs_key(kernels: &[KernelInstall]) -> String {
    let mut h = Sha256::new();
    h.update(PROFILE_VERSION);
    h.update(SUITE);
    for p in PACKAGES {
        h.update(p);
        h.update([0]);
    }
    for k in kernels {
        for p in &k.packages {
            h.update(p);
            h.update([0]);
        }
    }
    for (path, mode, text) in PROFILE_FILES {
        h.update(path);
        h.update(mode.to_le_bytes());
        h.update(text);
    }
    for (link, target) in PROFILE_LINKS {
        h.update(link);
        h.update(target);
    }
    for path in UNLINKS {
        h.update(path);
    }
    short_hash(h)
}

/// The rootfs layer for these kernels: built (debootstrap, profile files, kernels, initramfs)
/// unless the cache has it.
pub fn rootfs(
    cache: &Path,
    apt: &LabApt,
    kernels: &[KernelInstall],
) -> Result<PathBuf, RootfsError> {
    let key = rootfs_key(kernels);
    let dir = cache.join(format!("rootfs-{key}"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let start = Instant::now();
    let tmp = cache.join(format!("rootfs-{key}.tmp"));
    if tmp.exists() {
        // debootstrap mounts /proc and /sys in the tree while it installs; a killed run leaves
        // them mounted, and nothing below a mount point may be deleted.
        host::unmount_below(&tmp).map_err(|source| RootfsError::Step {
            step: "unmounting what an interrupted build left mounted".into(),
            source,
        })?;
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let debs = cache.join("debootstrap-debs");
    fs::create_dir_all(&debs).map_err(io(&debs))?;
    eprintln!("lab: trixie: debootstrap {} into {}", SUITE, tmp.display());
    step(
        "debootstrap",
        Command::new("debootstrap")
            .args(["--variant=minbase", "--merged-usr"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(SUITE)
            .arg(&tmp)
            .arg(apt.mirror()),
    )?;
    let debootstrapped = start.elapsed();
    configure(&tmp)?;
    for kernel in kernels {
        install_kernel(&tmp, kernel)?;
    }
    // The package cache debootstrap leaves behind is not part of a server's root.
    let archives = tmp.join("var/cache/apt/archives");
    for entry in fs::read_dir(&archives).map_err(io(&archives))?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "deb") {
            let _ = fs::remove_file(entry.path());
        }
    }
    fs::write(tmp.join(".complete"), b"").map_err(io(&tmp))?;
    // Older layers of this profile are not needed any more.
    remove_siblings(cache, "rootfs-", &format!("rootfs-{key}"));
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    eprintln!(
        "lab: trixie: rootfs {key} built in {:.1} s (debootstrap {:.1} s)",
        start.elapsed().as_secs_f64(),
        debootstrapped.as_secs_f64()
    );
    Ok(dir)
}

fn remove_siblings(cache: &Path, prefix: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name != keep && !name.ends_with(".tmp") {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn write_file(root: &Path, path: &str, mode: u32, text: &str) -> Result<(), RootfsError> {
    let dest = root.join(path.trim_start_matches('/'));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let _ = fs::remove_file(&dest);
    fs::write(&dest, text).map_err(io(&dest))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).map_err(io(&dest))
}

/// Writes the profile's files, links and edits into a debootstrapped tree.
fn configure(root: &Path) -> Result<(), RootfsError> {
    for (path, mode, text) in PROFILE_FILES {
        write_file(root, path, *mode, text)?;
    }
    for (link, target) in PROFILE_LINKS {
        let dest = root.join(link.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let _ = fs::remove_file(&dest);
        symlink(target, &dest).map_err(io(&dest))?;
    }
    for path in UNLINKS {
        let _ = fs::remove_file(root.join(path.trim_start_matches('/')));
    }
    // Redis listens on every address (the host reaches it through a forwarded port), keeps no
    // snapshot on disk, and needs no password inside the lab.
    let conf = root.join("etc/redis/redis.conf");
    let text = fs::read_to_string(&conf).map_err(io(&conf))?;
    let mut edited: String = text
        .lines()
        .map(|line| {
            if line.starts_with("bind ") {
                "bind 0.0.0.0"
            } else if line.starts_with("protected-mode ") {
                "protected-mode no"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    edited.push_str("\nsave \"\"\n");
    fs::write(&conf, edited).map_err(io(&conf))?;
    let state = root.join("var/lib/overboot");
    fs::create_dir_all(&state).map_err(io(&state))
}

/// Unpacks a kernel's packages into the tree (the way `dpkg` would lay them out), then runs the
/// distribution's `depmod` and `mkinitramfs` for its release inside the tree.
fn install_kernel(root: &Path, kernel: &KernelInstall) -> Result<(), RootfsError> {
    for deb in &kernel.debs {
        step(
            &format!("unpacking {}", deb.display()),
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(root),
        )?;
    }
    let release = &kernel.release;
    // 7.x packages keep the image in the modules directory; boot loaders and `overboot kexec`
    // look in /boot, where the 6.x packages put it.
    let boot_image = root.join(format!("boot/vmlinuz-{release}"));
    if !boot_image.exists() {
        let packaged = root.join(format!("usr/lib/modules/{release}/vmlinuz"));
        fs::copy(&packaged, &boot_image).map_err(io(&packaged))?;
    }
    let config = root.join(format!("boot/config-{release}"));
    let packaged_config = root.join(format!("usr/lib/modules/{release}/config"));
    if !config.exists() && packaged_config.exists() {
        fs::copy(&packaged_config, &config).map_err(io(&config))?;
    }
    step(
        &format!("depmod {release} in the trixie tree"),
        Command::new("chroot").arg(root).args(["depmod", release]),
    )?;
    step(
        &format!("mkinitramfs {release} in the trixie tree"),
        Command::new("chroot")
            .arg(root)
            .args(["mkinitramfs", "-o"])
            .arg(format!("/boot/initrd.img-{release}"))
            .arg(release),
    )?;
    Ok(())
}

/// The image layer: the rootfs tree plus `binaries` (each `(host path, guest path)`), the
/// shared libraries they need that the tree lacks, the symlinks `links` (`(link, target)`),
/// unless `OVERBOOT_LAB_CRIU=distro` the pinned CRIU in place of Debian's, and the `.deb`s of
/// `packages` installed with the tree's own `dpkg -i`, as an ext4 image.
pub fn image(
    cache: &Path,
    rootfs: &Path,
    binaries: &[(PathBuf, &str)],
    links: &[(&str, &str)],
    packages: &[PathBuf],
) -> Result<PathBuf, RootfsError> {
    let pinned = match Engine::from_env_or(Engine::Pinned)? {
        Engine::Pinned => {
            let built = criu::for_trixie(rootfs)?;
            criu::announce(Userland::Trixie, &criu::describe(&built));
            Some(built)
        }
        Engine::Distro => {
            let what = criu::describe_distro(&rootfs.join("var/lib/dpkg"));
            criu::announce(Userland::Trixie, &what);
            None
        }
    };
    let mut h = Sha256::new();
    h.update(
        rootfs
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default(),
    );
    for (host_path, guest) in binaries {
        h.update(guest);
        h.update(fs::read(host_path).map_err(io(host_path))?);
    }
    for (link, target) in links {
        h.update(link);
        h.update(target);
    }
    if let Some(built) = &pinned {
        h.update("criu diverted");
        h.update(fs::read(&built.binary).map_err(io(&built.binary))?);
    }
    for deb in packages {
        h.update("dpkg -i");
        h.update(fs::read(deb).map_err(io(deb))?);
    }
    let key = short_hash(h);
    let name = format!("image-{key}.ext4");
    let image = cache.join(&name);
    if image.exists() {
        return Ok(image);
    }
    let start = Instant::now();
    // A hard-linked copy of the tree to add the binaries to: the tree itself stays as built.
    let staging = cache.join(format!("image-{key}.staging.tmp"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    step(
        "linking the tree for the image",
        Command::new("cp").arg("-al").arg(rootfs).arg(&staging),
    )?;
    let _ = fs::remove_file(staging.join(".complete"));
    for (host_path, guest) in binaries {
        let dest = staging.join(guest.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let _ = fs::remove_file(&dest);
        fs::copy(host_path, &dest).map_err(io(host_path))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(io(&dest))?;
        add_missing_libraries(&staging, host_path)?;
    }
    if let Some(built) = &pinned {
        install_pinned_criu(&staging, built)?;
    }
    for deb in packages {
        install_package(&staging, deb)?;
    }
    for (link, target) in links {
        let dest = staging.join(link.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let _ = fs::remove_file(&dest);
        std::os::unix::fs::symlink(target, &dest).map_err(io(&dest))?;
    }
    let tmp = cache.join(format!("{name}.tmp"));
    crate::disk::build_labelled(&tmp, &staging, IMAGE_MIB, "trixie-root").map_err(|e| {
        RootfsError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    fs::remove_dir_all(&staging).map_err(io(&staging))?;
    remove_siblings(cache, "image-", &name);
    fs::rename(&tmp, &image).map_err(io(&image))?;
    eprintln!(
        "lab: trixie: image {key} built in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// Installs `deb` in the tree at `root` as an operator would, with the tree's `dpkg -i` (its
/// dependencies must be in the tree already: nothing is fetched). The tree is a hard-linked
/// copy: dpkg replaces the files it rewrites, but appends to its log, which is unlinked first.
fn install_package(root: &Path, deb: &Path) -> Result<(), RootfsError> {
    let log = root.join("var/log/dpkg.log");
    if let Ok(text) = fs::read(&log) {
        fs::remove_file(&log).map_err(io(&log))?;
        fs::write(&log, text).map_err(io(&log))?;
    }
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "package.deb".into());
    let inside = root.join("tmp").join(&name);
    fs::copy(deb, &inside).map_err(io(deb))?;
    step(
        &format!("dpkg -i {name} in the trixie tree"),
        Command::new("chroot")
            .arg(root)
            .args(["dpkg", "-i"])
            .arg(format!("/tmp/{name}")),
    )?;
    fs::remove_file(&inside).map_err(io(&inside))
}

/// Puts the pinned CRIU at `/usr/sbin/criu` in the tree at `root`, Debian's moved aside by
/// `dpkg-divert` (to `criu.distrib`: dpkg knows, and an upgrade of the package lands there);
/// the package stays installed for the libraries it depends on, every one of which the build
/// linked must be in the tree.
fn install_pinned_criu(root: &Path, built: &PinnedCriu) -> Result<(), RootfsError> {
    step(
        "dpkg-divert /usr/sbin/criu in the trixie tree",
        Command::new("chroot").arg(root).args([
            "dpkg-divert",
            "--quiet",
            "--local",
            "--rename",
            "--divert",
            "/usr/sbin/criu.distrib",
            "--add",
            "/usr/sbin/criu",
        ]),
    )?;
    let dest = root.join("usr/sbin/criu");
    fs::copy(&built.binary, &dest).map_err(io(&built.binary))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(io(&dest))?;
    for lib in &built.libraries {
        let in_tree = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if !in_tree.exists() {
            return Err(RootfsError::CriuLibrary(lib.clone()));
        }
    }
    Ok(())
}

/// Copies the libraries `binary` needs (per the host's `ldd`) that the tree has under no name
/// into the tree. The tree's own glibc is newer than the host's and stays: a binary built on
/// Debian 12 runs on 13's libraries.
fn add_missing_libraries(root: &Path, binary: &Path) -> Result<(), RootfsError> {
    let libs = crate::image::shared_libraries(binary).map_err(|e| RootfsError::Io {
        path: binary.into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for lib in libs {
        let Some(file) = lib.file_name() else {
            continue;
        };
        let known = ["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"]
            .iter()
            .any(|dir| root.join(dir).join(file).exists());
        if known {
            continue;
        }
        let dest = root.join("usr/lib/x86_64-linux-gnu").join(file);
        fs::copy(&lib, &dest).map_err(|_| RootfsError::Library {
            binary: binary.into(),
            library: lib.display().to_string(),
        })?;
    }
    Ok(())
}

/// A copy-on-write overlay of `image` at `overlay` (qcow2 with the image as raw backing file).
pub fn overlay(image: &Path, overlay: &Path) -> Result<(), RootfsError> {
    let _ = fs::remove_file(overlay);
    step(
        "qemu-img create (overlay)",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image)
            .arg(overlay),
    )?;
    Ok(())
}
