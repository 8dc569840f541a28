//! Errors of the kernel switch and their classes.
//!
//! Every way loading or jumping can fail gets its own variant, with the path where one is
//! involved, so `plan` and `update` can say exactly why they refuse. [`KexecErrorClass`] groups
//! them for the CLI, which maps each class to an exit code.

use std::path::PathBuf;

use nix::errno::Errno;

use crate::bzimage::BzImageError;

/// A failure to inspect, load, unload or jump into a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    /// The file does not exist.
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// The file exists but cannot be opened or read.
    #[error("cannot read {}", path.display())]
    NotReadable {
        /// The file.
        path: PathBuf,
        /// What the read returned.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an x86 bzImage the running kernel can load.
    #[error("{} is not a bzImage: {reason}", path.display())]
    NotBzImage {
        /// The file.
        path: PathBuf,
        /// The first check it failed.
        reason: BzImageError,
    },
    /// The file is shorter than its setup header says.
    #[error("{} is truncated: {actual} bytes, the header says {expected}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// The boot protocol is older than 2.12, the oldest `kexec_file_load` takes.
    #[error("{} uses boot protocol {major}.{minor:02}, kexec_file_load needs 2.12", path.display())]
    ProtocolTooOld {
        /// The file.
        path: PathBuf,
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The kernel has no 64-bit entry point (XLF_KERNEL_64 unset).
    #[error("{} is not a 64-bit kernel", path.display())]
    Not64Bit {
        /// The file.
        path: PathBuf,
    },
    /// The running kernel's own bzImage loader refused the image (`ENOEXEC`).
    #[error("the running kernel refused {} as a kernel", path.display())]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// The command line is longer than the new kernel accepts.
    #[error("command line is {len} bytes, the kernel takes at most {max}")]
    CmdlineTooLong {
        /// Length without the NUL.
        len: usize,
        /// The kernel's `cmdline_size`.
        max: u32,
    },
    /// The command line contains a NUL byte.
    #[error("command line contains a NUL byte")]
    CmdlineHasNul,
    /// Not root, or no CAP_SYS_BOOT.
    #[error("kexec needs root (CAP_SYS_BOOT)")]
    NotRoot,
    /// `kernel.kexec_load_disabled` is 1 (it cannot be reset without a reboot).
    #[error("kexec is disabled by kernel.kexec_load_disabled")]
    Disabled,
    /// The running kernel requires a signed image and rejected this one's signature.
    #[error("the running kernel rejected the image's signature{}", lockdown_note(.lockdown))]
    SignatureRejected {
        /// Lockdown mode at the time (`none`, `integrity`, `confidentiality`), if known.
        lockdown: Option<String>,
        /// What the kernel returned.
        #[source]
        errno: Errno,
    },
    /// Not enough (suitably placed) memory for the new kernel's segments.
    #[error("not enough memory to stage the new kernel")]
    OutOfMemory {
        /// What the kernel returned.
        #[source]
        errno: Errno,
    },
    /// Another kexec load or unload is in progress.
    #[error("another kexec load is in progress")]
    Busy,
    /// No kernel is loaded, so there is nothing to jump into.
    #[error("no kernel is loaded for kexec")]
    NotLoaded,
    /// The running kernel has no `kexec_file_load` (`ENOSYS`).
    #[error("the running kernel has no kexec_file_load")]
    Unsupported,
    /// A kernel state file under /proc or /sys could not be read or understood.
    #[error("cannot read {}", path.display())]
    HostState {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Any other errno from a syscall.
    #[error("{op} failed")]
    Syscall {
        /// The syscall: `kexec_file_load`, `kexec_file_unload` or `reboot`.
        op: &'static str,
        /// What it returned.
        #[source]
        errno: Errno,
    },
}

/// What kind of failure a [`KexecError`] is; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KexecErrorClass {
    /// Not root / no CAP_SYS_BOOT.
    Permission,
    /// kexec disabled by sysctl.
    Disabled,
    /// The image is not a loadable kernel.
    BadImage,
    /// Signature rejected (secure boot / lockdown / `KEXEC_SIG_FORCE`).
    Signature,
    /// Out of memory for the new kernel.
    Resources,
    /// Another load in progress.
    Busy,
    /// Nothing loaded to jump into.
    NotLoaded,
    /// A file could not be found or read.
    Io,
    /// Anything else.
    Other,
}

impl KexecError {
    /// The class of this error.
    pub fn class(&self) -> KexecErrorClass {
        use KexecErrorClass as C;
        match self {
            Self::NotRoot => C::Permission,
            Self::Disabled => C::Disabled,
            Self::NotBzImage { .. }
            | Self::Truncated { .. }
            | Self::ProtocolTooOld { .. }
            | Self::Not64Bit { .. }
            | Self::NotAKernel { .. } => C::BadImage,
            Self::SignatureRejected { .. } => C::Signature,
            Self::OutOfMemory { .. } => C::Resources,
            Self::Busy => C::Busy,
            Self::NotLoaded => C::NotLoaded,
            Self::NotFound { .. } | Self::NotReadable { .. } | Self::HostState { .. } => C::Io,
            Self::CmdlineTooLong { .. }
            | Self::CmdlineHasNul
            | Self::Unsupported
            | Self::Syscall { .. } => C::Other,
        }
    }

    /// Turns a bzImage check failure for `path` into the matching variant.
    pub fn from_image(path: PathBuf, err: BzImageError) -> Self {
        match err {
            BzImageError::Truncated { expected, actual } => Self::Truncated {
                path,
                expected,
                actual,
            },
            BzImageError::ProtocolTooOld { major, minor } => {
                Self::ProtocolTooOld { path, major, minor }
            }
            BzImageError::Not64Bit => Self::Not64Bit { path },
            reason => Self::NotBzImage { path, reason },
        }
    }
}

/// The lockdown part of the signature message.
fn lockdown_note(lockdown: &Option<String>) -> String {
    match lockdown {
        Some(mode) => format!(" (lockdown: {mode})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_path_and_reason() {
        let e = KexecError::from_image("/tmp/x".into(), BzImageError::NoHeaderMagic);
        assert_eq!(
            e.to_string(),
            "/tmp/x is not a bzImage: no HdrS magic at 0x202"
        );
        assert_eq!(e.class(), KexecErrorClass::BadImage);
    }

    #[test]
    fn image_errors_map_to_their_own_variants() {
        let p = PathBuf::from("/k");
        let t = KexecError::from_image(
            p.clone(),
            BzImageError::Truncated {
                expected: 10,
                actual: 5,
            },
        );
        assert!(matches!(
            t,
            KexecError::Truncated {
                expected: 10,
                actual: 5,
                ..
            }
        ));
        let o = KexecError::from_image(
            p.clone(),
            BzImageError::ProtocolTooOld { major: 2, minor: 6 },
        );
        assert_eq!(
            o.to_string(),
            "/k uses boot protocol 2.06, kexec_file_load needs 2.12"
        );
        assert!(matches!(
            KexecError::from_image(p, BzImageError::Not64Bit),
            KexecError::Not64Bit { .. }
        ));
    }

    #[test]
    fn signature_message_names_the_lockdown_mode() {
        let e = KexecError::SignatureRejected {
            lockdown: Some("integrity".into()),
            errno: Errno::EPERM,
        };
        assert_eq!(
            e.to_string(),
            "the running kernel rejected the image's signature (lockdown: integrity)"
        );
        assert_eq!(e.class(), KexecErrorClass::Signature);
    }
}
