//! What the running kernel allows: root, the `kexec_load_disabled` sysctl, lockdown, whether an
//! image is loaded; and the translation of a failed syscall's errno into a [`KexecError`].
//!
//! `plan` reads this state to refuse early; `load` reads it again when the kernel says `EPERM`,
//! because the same errno means "not root", "disabled" or "locked down" and only the state tells
//! them apart. The decisions are pure functions of [`HostKexecState`] so they are unit-tested
//! without root.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::KexecError;

/// The sysctl that, once 1, forbids kexec until the next reboot.
pub const KEXEC_LOAD_DISABLED: &str = "/proc/sys/kernel/kexec_load_disabled";
/// 1 when an image is loaded for the next kexec.
pub const KEXEC_LOADED: &str = "/sys/kernel/kexec_loaded";
/// The lockdown LSM's state, e.g. `[none] integrity confidentiality`.
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// The running kernel's kexec policy, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKexecState {
    /// The effective uid is 0.
    pub root: bool,
    /// `kernel.kexec_load_disabled`; `None` when the sysctl is absent or unreadable.
    pub disabled: Option<bool>,
    /// The lockdown mode (`none`, `integrity`, `confidentiality`); `None` without the LSM.
    pub lockdown: Option<String>,
}

impl HostKexecState {
    /// Reads the state, treating what cannot be read as unknown.
    pub fn read() -> Self {
        Self {
            root: nix::unistd::geteuid().is_root(),
            disabled: read_flag(Path::new(KEXEC_LOAD_DISABLED)).unwrap_or(None),
            lockdown: lockdown_mode(),
        }
    }

    /// Lockdown is on (any mode but `none`).
    pub fn locked_down(&self) -> bool {
        self.lockdown.as_deref().is_some_and(|m| m != "none")
    }
}

/// The lockdown mode from /sys/kernel/security/lockdown, if the lockdown LSM is there.
pub fn lockdown_mode() -> Option<String> {
    std::fs::read_to_string(LOCKDOWN)
        .ok()
        .and_then(|text| parse_lockdown(&text))
}

/// Picks the bracketed (active) mode out of `none [integrity] confidentiality`.
pub(crate) fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

/// Refuses early, before any syscall, what the state already tells: not root, kexec disabled.
pub(crate) fn check_preflight(state: &HostKexecState) -> Result<(), KexecError> {
    if !state.root {
        return Err(KexecError::NotRoot);
    }
    if state.disabled == Some(true) {
        return Err(KexecError::Disabled);
    }
    Ok(())
}

/// Reads a `0`/`1` kernel flag file; `Ok(None)` when the file does not exist.
pub(crate) fn read_flag(path: &Path) -> Result<Option<bool>, KexecError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(host_state(path, source)),
    };
    match text.trim() {
        "0" => Ok(Some(false)),
        "1" => Ok(Some(true)),
        _ => Err(host_state(
            path,
            io::Error::new(io::ErrorKind::InvalidData, "expected 0 or 1"),
        )),
    }
}

/// A [`KexecError::HostState`] for `path`.
pub(crate) fn host_state(path: &Path, source: io::Error) -> KexecError {
    KexecError::HostState {
        path: PathBuf::from(path),
        source,
    }
}

/// Translates the errno of a failed `kexec_file_load` (or unload, when `kernel` is `None`).
pub(crate) fn classify_load_errno(
    op: &'static str,
    errno: Errno,
    kernel: Option<&Path>,
    state: &HostKexecState,
) -> KexecError {
    match errno {
        Errno::EPERM => {
            if !state.root {
                KexecError::NotRoot
            } else if state.disabled == Some(true) {
                KexecError::Disabled
            } else if state.locked_down() {
                KexecError::SignatureRejected {
                    lockdown: state.lockdown.clone(),
                    errno,
                }
            } else {
                // Root without CAP_SYS_BOOT, e.g. in a user namespace.
                KexecError::NotRoot
            }
        }
        Errno::EKEYREJECTED
        | Errno::EBADMSG
        | Errno::EACCES
        | Errno::ENOKEY
        | Errno::EKEYEXPIRED
        | Errno::EKEYREVOKED
        | Errno::ENOPKG => KexecError::SignatureRejected {
            lockdown: state.lockdown.clone(),
            errno,
        },
        Errno::ENOEXEC => match kernel {
            Some(path) => KexecError::NotAKernel {
                path: path.to_owned(),
            },
            None => KexecError::Syscall { op, errno },
        },
        Errno::ENOMEM | Errno::EADDRNOTAVAIL => KexecError::OutOfMemory { errno },
        Errno::EBUSY => KexecError::Busy,
        Errno::ENOSYS => KexecError::Unsupported,
        _ => KexecError::Syscall { op, errno },
    }
}

/// Translates the errno of a failed `reboot(LINUX_REBOOT_CMD_KEXEC)`.
pub(crate) fn classify_reboot_errno(errno: Errno) -> KexecError {
    match errno {
        Errno::EPERM => KexecError::NotRoot,
        // The kernel answers EINVAL when no image is loaded.
        Errno::EINVAL => KexecError::NotLoaded,
        _ => KexecError::Syscall {
            op: "reboot",
            errno,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::KexecErrorClass as C;

    fn state(root: bool, disabled: Option<bool>, lockdown: Option<&str>) -> HostKexecState {
        HostKexecState {
            root,
            disabled,
            lockdown: lockdown.map(str::to_owned),
        }
    }

    fn class_of(errno: Errno, s: &HostKexecState) -> C {
        classify_load_errno("kexec_file_load", errno, Some(Path::new("/k")), s).class()
    }

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown("none integrity"), None);
        assert_eq!(parse_lockdown(""), None);
    }

    #[test]
    fn preflight_refuses_non_root_then_disabled() {
        assert!(matches!(
            check_preflight(&state(false, Some(true), None)),
            Err(KexecError::NotRoot)
        ));
        assert!(matches!(
            check_preflight(&state(true, Some(true), None)),
            Err(KexecError::Disabled)
        ));
        assert!(check_preflight(&state(true, Some(false), Some("integrity"))).is_ok());
        assert!(check_preflight(&state(true, None, None)).is_ok());
    }

    #[test]
    fn eperm_is_told_apart_by_the_state() {
        assert_eq!(
            class_of(Errno::EPERM, &state(false, None, None)),
            C::Permission
        );
        assert_eq!(
            class_of(Errno::EPERM, &state(true, Some(true), None)),
            C::Disabled
        );
        assert_eq!(
            class_of(Errno::EPERM, &state(true, Some(false), Some("integrity"))),
            C::Signature
        );
        assert_eq!(
            class_of(Errno::EPERM, &state(true, Some(false), Some("none"))),
            C::Permission
        );
    }

    #[test]
    fn signature_errnos_carry_the_lockdown_mode() {
        let s = state(true, Some(false), Some("confidentiality"));
        for errno in [Errno::EKEYREJECTED, Errno::EBADMSG, Errno::EACCES] {
            match classify_load_errno("kexec_file_load", errno, None, &s) {
                KexecError::SignatureRejected { lockdown, .. } => {
                    assert_eq!(lockdown.as_deref(), Some("confidentiality"));
                }
                other => panic!("{errno}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_errnos_map_to_their_classes() {
        let s = state(true, Some(false), None);
        assert_eq!(class_of(Errno::ENOEXEC, &s), C::BadImage);
        assert_eq!(class_of(Errno::ENOMEM, &s), C::Resources);
        assert_eq!(class_of(Errno::EADDRNOTAVAIL, &s), C::Resources);
        assert_eq!(class_of(Errno::EBUSY, &s), C::Busy);
        assert_eq!(class_of(Errno::EINVAL, &s), C::Other);
        let e = classify_load_errno("kexec_file_load", Errno::ENOEXEC, Some(Path::new("/k")), &s);
        assert_eq!(e.to_string(), "the running kernel refused /k as a kernel");
        assert!(matches!(
            classify_load_errno("kexec_file_unload", Errno::ENOEXEC, None, &s),
            KexecError::Syscall { .. }
        ));
    }

    #[test]
    fn reboot_einval_means_nothing_loaded() {
        assert!(matches!(
            classify_reboot_errno(Errno::EINVAL),
            KexecError::NotLoaded
        ));
        assert!(matches!(
            classify_reboot_errno(Errno::EPERM),
            KexecError::NotRoot
        ));
    }

    #[test]
    fn flag_files_read_zero_one_absent_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("flag");
        assert_eq!(read_flag(&f).unwrap(), None);
        std::fs::write(&f, "1\n").unwrap();
        assert_eq!(read_flag(&f).unwrap(), Some(true));
        std::fs::write(&f, "0\n").unwrap();
        assert_eq!(read_flag(&f).unwrap(), Some(false));
        std::fs::write(&f, "yes\n").unwrap();
        let e = read_flag(&f).unwrap_err();
        assert_eq!(e.class(), C::Io);
        assert_eq!(e.to_string(), format!("cannot read {}", f.display()));
    }
}
