//! The kernel switch: load the next kernel with `kexec_file_load` (which `nix` lacks) and jump
//! into it with `sync` and `reboot(LINUX_REBOOT_CMD_KEXEC)` (through `nix`). Used by
//! `overboot-kexec`, which checks the image first and classifies the errors.

use std::convert::Infallible;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};

/// Loads `kernel` (and `initrd`, if any) as the image the next [`reboot_kexec`] jumps into.
///
/// The command line is passed with its terminating NUL, and its length counts the NUL, as the
/// kernel requires. Without an initrd the call carries `KEXEC_FILE_NO_INITRAMFS`.
pub fn kexec_file_load(
    kernel: BorrowedFd<'_>,
    initrd: Option<BorrowedFd<'_>>,
    cmdline: &CStr,
) -> Result<(), Errno> {
    let (initrd_fd, flags) = match initrd {
        Some(fd) => (fd.as_raw_fd(), 0),
        None => (-1, libc::KEXEC_FILE_NO_INITRAMFS),
    };
    let cmdline = cmdline.to_bytes_with_nul();
    // A `usize` always fits a `c_ulong` on Linux (both are the pointer width).
    let cmdline_len = libc::c_ulong::try_from(cmdline.len()).map_err(|_| Errno::E2BIG)?;
    let flags = libc::c_ulong::try_from(flags).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both file descriptors are borrowed, so they stay open for the whole call; the
    // command line pointer and length describe a live, NUL-terminated buffer the kernel only
    // reads; the flags are defined `KEXEC_FILE_*` bits. The call touches no memory of ours
    // beyond that buffer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            cmdline_len,
            cmdline.as_ptr(),
            flags,
        )
    };
    Errno::result(ret).map(drop)
}

/// Unloads the image loaded for the next kexec (`KEXEC_FILE_UNLOAD`: no fds, empty command
/// line). Unloading when nothing is loaded succeeds.
pub fn kexec_file_unload() -> Result<(), Errno> {
    let flags = libc::c_ulong::try_from(libc::KEXEC_FILE_UNLOAD).map_err(|_| Errno::EINVAL)?;
    let no_fd: libc::c_int = -1;
    let no_len: libc::c_ulong = 0;
    // SAFETY: with KEXEC_FILE_UNLOAD the kernel reads neither file descriptor nor the command
    // line; we pass -1, -1, length 0 and a null pointer, so no memory of ours is touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            no_fd,
            no_fd,
            no_len,
            std::ptr::null::<libc::c_char>(),
            flags,
        )
    };
    Errno::result(ret).map(drop)
}

/// Flushes file system buffers to disk before the jump.
pub fn sync() {
    nix::unistd::sync();
}

/// Jumps into the loaded kernel (`reboot(LINUX_REBOOT_CMD_KEXEC)`). Returns only on failure.
pub fn reboot_kexec() -> Result<Infallible, Errno> {
    reboot(RebootMode::RB_KEXEC)
}
