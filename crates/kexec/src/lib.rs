//! The kernel switch of an overboot update: check the new kernel, load it with
//! `kexec_file_load`, and jump into it with `reboot(LINUX_REBOOT_CMD_KEXEC)`.
//!
//! `plan` calls [`inspect`] and [`preflight`] to refuse early; `update` calls [`load`] while the
//! services still run (loading takes seconds under TCG) and [`jump`] after the checkpoint. No
//! kexec-tools needed: `kexec_file_load` lets the running kernel parse the image, check its
//! signature and build the purgatory itself.
//!
//! ```text
//!  inspect ─► preflight ─► open fds ─► kexec_file_load ─► … checkpoint … ─► sync ─► reboot(KEXEC)
//!  (bzimage)  (host)                   (sys)                                        (sys)
//! ```
//!
//! Every failure is a [`KexecError`] whose [`KexecError::class`] the CLI maps to an exit code.
//! The raw syscalls live in [`overboot_sys`], the project's one place for them.

pub mod bzimage;
mod error;
mod host;

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use overboot_sys as sys;

pub use error::{KexecError, KexecErrorClass};
pub use host::{lockdown_mode, HostKexecState, KEXEC_LOADED, KEXEC_LOAD_DISABLED, LOCKDOWN};

/// A kernel image that passed [`inspect`]: what `plan` shows and the report records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Where it was read from.
    pub path: PathBuf,
    /// The release, e.g. `6.1.0-56-cloud-amd64`: the first word of the version string.
    pub release: String,
    /// The whole embedded version string.
    pub version_string: String,
    /// Boot protocol version (major, minor).
    pub boot_protocol: (u8, u8),
    /// File size in bytes.
    pub size: u64,
    /// Longest command line the kernel takes; `kexec_file_load` counts the NUL against it.
    pub cmdline_size: u32,
}

/// What to load: kernel, optional initrd, command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initrd (with the Save State Map appended, when the initrd store is used).
    pub initrd: Option<PathBuf>,
    /// The new kernel's command line, without a NUL.
    pub cmdline: String,
}

/// Checks that `path` is a bzImage the running kernel can kexec into, and reads its release.
pub fn inspect(path: &Path) -> Result<KernelImage, KexecError> {
    let file = open_readable(path)?;
    inspect_open(path, &file)
}

/// The running kernel's kexec policy right now (root, sysctl, lockdown).
pub fn host_state() -> HostKexecState {
    HostKexecState::read()
}

/// Refuses what the host state already tells: not root ([`KexecError::NotRoot`]),
/// `kexec_load_disabled` set ([`KexecError::Disabled`]). Logs the lockdown mode, which only the
/// kernel's signature check can turn into a refusal.
pub fn preflight() -> Result<(), KexecError> {
    let state = HostKexecState::read();
    tracing::info!(
        root = state.root,
        kexec_load_disabled = ?state.disabled,
        lockdown = state.lockdown.as_deref().unwrap_or("absent"),
        "kexec preflight"
    );
    host::check_preflight(&state)
}

/// Loads the kernel, initrd and command line of `req` for the next [`jump`].
///
/// The kernel file is inspected and then handed to the kernel through the same open file, so
/// what was checked is what gets loaded.
pub fn load(req: &LoadRequest) -> Result<KernelImage, KexecError> {
    let span = tracing::info_span!(
        "kexec_load",
        kernel = %req.kernel.display(),
        initrd = ?req.initrd,
        cmdline_len = req.cmdline.len(),
    );
    let _entered = span.enter();
    preflight()?;
    let kernel = open_readable(&req.kernel)?;
    let image = inspect_open(&req.kernel, &kernel)?;
    let cmdline = checked_cmdline(&req.cmdline, image.cmdline_size)?;
    let initrd = req.initrd.as_deref().map(open_readable).transpose()?;
    let kernel: OwnedFd = kernel.into();
    let initrd: Option<OwnedFd> = initrd.map(OwnedFd::from);
    sys::kexec_file_load(kernel.as_fd(), initrd.as_ref().map(AsFd::as_fd), &cmdline).map_err(
        |errno| {
            let state = HostKexecState::read();
            host::classify_load_errno("kexec_file_load", errno, Some(&req.kernel), &state)
        },
    )?;
    tracing::info!(release = %image.release, "kernel loaded");
    Ok(image)
}

/// Unloads whatever is loaded for the next kexec (also fine when nothing is).
pub fn unload() -> Result<(), KexecError> {
    preflight()?;
    sys::kexec_file_unload().map_err(|errno| {
        let state = HostKexecState::read();
        host::classify_load_errno("kexec_file_unload", errno, None, &state)
    })
}

/// Whether a kernel is loaded for the next kexec (`/sys/kernel/kexec_loaded`).
pub fn loaded() -> Result<bool, KexecError> {
    let path = Path::new(KEXEC_LOADED);
    host::read_flag(path)?
        .ok_or_else(|| host::host_state(path, io::Error::from(io::ErrorKind::NotFound)))
}

/// Jumps into the loaded kernel: syncs file systems, then `reboot(LINUX_REBOOT_CMD_KEXEC)`.
///
/// Refuses with [`KexecError::NotLoaded`] when nothing is loaded. Returns only on failure.
pub fn jump() -> Result<Infallible, KexecError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(KexecError::NotRoot);
    }
    match loaded() {
        Ok(true) => {}
        Ok(false) => return Err(KexecError::NotLoaded),
        // Without /sys the kernel itself says EINVAL when nothing is loaded.
        Err(e) => tracing::warn!(error = %e, "cannot tell whether a kernel is loaded"),
    }
    tracing::info!("syncing and jumping into the loaded kernel");
    sys::sync();
    match sys::reboot_kexec() {
        Ok(never) => match never {},
        Err(errno) => Err(host::classify_reboot_errno(errno)),
    }
}

/// Opens `path` for reading: [`KexecError::NotFound`] if absent, [`KexecError::NotReadable`] if
/// it cannot be opened or is not a regular file.
fn open_readable(path: &Path) -> Result<File, KexecError> {
    let not_readable = |source| KexecError::NotReadable {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KexecError::NotFound {
            path: path.to_owned(),
        },
        _ => not_readable(e),
    })?;
    let meta = file.metadata().map_err(not_readable)?;
    if !meta.is_file() {
        return Err(not_readable(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(file)
}

/// Reads the header of an open image and validates it.
fn inspect_open(path: &Path, file: &File) -> Result<KernelImage, KexecError> {
    let not_readable = |source| KexecError::NotReadable {
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(not_readable)?.len();
    let prefix = read_prefix(file, bzimage::PREFIX_LEN).map_err(not_readable)?;
    let header =
        bzimage::parse(&prefix, size).map_err(|e| KexecError::from_image(path.to_owned(), e))?;
    Ok(KernelImage {
        path: path.to_owned(),
        release: header.release().to_owned(),
        boot_protocol: header.protocol,
        size,
        cmdline_size: header.cmdline_size,
        version_string: header.version_string,
    })
}

/// Reads up to `len` bytes from the start of `file` without moving its offset.
fn read_prefix(file: &File, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(
            &mut buf[filled..],
            u64::try_from(filled).unwrap_or(u64::MAX),
        ) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The command line as the kernel wants it: NUL-terminated, NUL included in its length, no
/// longer than the new kernel's `cmdline_size`.
fn checked_cmdline(cmdline: &str, cmdline_size: u32) -> Result<CString, KexecError> {
    let max = usize::try_from(cmdline_size).unwrap_or(usize::MAX);
    // The bzImage64 loader refuses a length (NUL included) above cmdline_size.
    if cmdline.len() + 1 > max {
        return Err(KexecError::CmdlineTooLong {
            len: cmdline.len(),
            max: cmdline_size,
        });
    }
    CString::new(cmdline).map_err(|_| KexecError::CmdlineHasNul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bzimage::synth;
    use std::io::Write;

    /// The Debian kernel the lab downloads.
    const REAL_KERNEL: &str =
        "/tmp/kdl/x/linux-image-6.1.0-56-cloud-amd64-unsigned/boot/vmlinuz-6.1.0-56-cloud-amd64";

    /// The Debian kernel at [`REAL_KERNEL`], or `None` (saying the test is skipped) when the
    /// lab has not fetched it.
    fn real_kernel() -> Option<&'static Path> {
        let path = Path::new(REAL_KERNEL);
        if !path.exists() {
            println!("skipped: {REAL_KERNEL} not downloaded (the lab fetches it)");
            return None;
        }
        Some(path)
    }

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    fn inspect_bytes(bytes: &[u8]) -> (tempfile::NamedTempFile, Result<KernelImage, KexecError>) {
        let f = write_temp(bytes);
        let r = inspect(f.path());
        (f, r)
    }

    #[test]
    fn synthetic_image_inspects() {
        let bytes = synth::image();
        let (f, r) = inspect_bytes(&bytes);
        let img = r.unwrap();
        assert_eq!(img.path, f.path());
        assert_eq!(img.release, "6.1.0-56-cloud-amd64");
        assert_eq!(img.version_string, synth::VERSION_STRING);
        assert_eq!(img.boot_protocol, (2, 15));
        assert_eq!(img.size, u64::try_from(bytes.len()).unwrap());
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz");
        let e = inspect(&path).unwrap_err();
        assert!(matches!(e, KexecError::NotFound { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("{} does not exist", path.display()));
        assert_eq!(e.class(), KexecErrorClass::Io);
    }

    #[test]
    fn directory_is_not_readable() {
        let dir = tempfile::tempdir().unwrap();
        let e = inspect(dir.path()).unwrap_err();
        assert!(matches!(e, KexecError::NotReadable { .. }), "{e:?}");
    }

    #[test]
    fn garbage_is_not_a_bzimage_and_says_why() {
        let (f, r) = inspect_bytes(&[0u8; 4096]);
        let e = r.unwrap_err();
        assert!(matches!(e, KexecError::NotBzImage { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "{} is not a bzImage: no HdrS magic at 0x202",
                f.path().display()
            )
        );
        let (_f, r) = inspect_bytes(b"#!/bin/sh\n");
        assert!(matches!(r.unwrap_err(), KexecError::NotBzImage { .. }));
    }

    #[test]
    fn each_header_defect_has_its_own_variant() {
        let mut old = synth::image();
        synth::set_protocol(&mut old, 2, 6);
        let (_f, r) = inspect_bytes(&old);
        assert!(matches!(
            r.unwrap_err(),
            KexecError::ProtocolTooOld {
                major: 2,
                minor: 6,
                ..
            }
        ));

        let mut no64 = synth::image();
        synth::set_xloadflags(&mut no64, 0);
        let (_f, r) = inspect_bytes(&no64);
        assert!(matches!(r.unwrap_err(), KexecError::Not64Bit { .. }));

        let full = synth::image();
        let (_f, r) = inspect_bytes(&full[..full.len() - 16]);
        let e = r.unwrap_err();
        let total = u64::try_from(full.len()).unwrap();
        assert!(
            matches!(e, KexecError::Truncated { expected, actual, .. }
                if expected == total && actual == total - 16),
            "{e:?}"
        );
        assert_eq!(e.class(), KexecErrorClass::BadImage);
    }

    #[test]
    fn cmdline_counts_its_nul_against_the_kernel_limit() {
        let ok = checked_cmdline("console=ttyS0", 14).unwrap();
        assert_eq!(ok.as_bytes_with_nul().len(), 14);
        assert!(matches!(
            checked_cmdline("console=ttyS0", 13),
            Err(KexecError::CmdlineTooLong { len: 13, max: 13 })
        ));
        assert!(matches!(
            checked_cmdline("a\0b", 100),
            Err(KexecError::CmdlineHasNul)
        ));
        assert_eq!(checked_cmdline("", 1).unwrap().as_bytes_with_nul(), b"\0");
    }

    #[test]
    fn real_debian_kernel_inspects() {
        let Some(path) = real_kernel() else {
            return;
        };
        let img = inspect(path).unwrap();
        assert_eq!(img.release, "6.1.0-56-cloud-amd64");
        assert!(img
            .version_string
            .starts_with("6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP"));
        assert!(img.boot_protocol >= (2, 12));
        assert!(img.cmdline_size > 255);
    }

    #[test]
    fn every_lab_kernel_reports_the_release_in_its_file_name() {
        let Ok(packages) = std::fs::read_dir("/tmp/kdl/x") else {
            println!("skipped: /tmp/kdl/x not present (the lab downloads kernels there)");
            return;
        };
        for package in packages {
            let boot = package.unwrap().path().join("boot");
            let Ok(files) = std::fs::read_dir(&boot) else {
                continue;
            };
            for file in files {
                let path = file.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if let Some(release) = name.strip_prefix("vmlinuz-") {
                    let img = inspect(&path).unwrap();
                    assert_eq!(img.release, release, "{}", path.display());
                }
            }
        }
    }

    #[test]
    fn truncated_real_kernel_is_truncated() {
        let Some(path) = real_kernel() else {
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        let cut = bytes.len() / 2;
        let (_f, r) = inspect_bytes(&bytes[..cut]);
        let e = r.unwrap_err();
        assert!(
            matches!(e, KexecError::Truncated { expected, actual, .. }
                if expected == u64::try_from(bytes.len()).unwrap()
                    && actual == u64::try_from(cut).unwrap()),
            "{e:?}"
        );
    }
}
