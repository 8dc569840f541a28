//! TCP socket options `nix` does not offer: the `TCP_REPAIR` toggle that makes a restored
//! socket send a window probe (see `overboot::nudge`), and the kernel's `TCP_INFO`.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// Sets `TCP_REPAIR` on a TCP socket: `true` puts it in repair mode (`TCP_REPAIR_ON`), `false`
/// takes it out (`TCP_REPAIR_OFF`), which makes an established socket send a window probe.
/// Needs `CAP_NET_ADMIN`.
pub fn set_tcp_repair(sock: BorrowedFd<'_>, on: bool) -> Result<(), Errno> {
    let value: libc::c_int = i32::from(on);
    let len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the socket is borrowed, so it stays open for the call; the option value points
    // at a live `c_int` of the length given, which the kernel only reads.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_REPAIR,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    Errno::result(ret).map(drop)
}

/// The kernel's `TCP_INFO` of a TCP socket (the fields `libc::tcp_info` knows; a newer kernel's
/// longer struct is cut to them).
pub fn tcp_info(sock: BorrowedFd<'_>) -> Result<libc::tcp_info, Errno> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: the socket is borrowed, so it stays open for the call; `info` is a zeroed
    // `tcp_info` of the length passed in `len`, which the kernel writes at most `len` bytes
    // of (and updates `len`). Both live across the call.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    Errno::result(ret)?;
    // SAFETY: zero is a valid value of every field (plain integers), and the kernel filled in
    // what it wrote.
    Ok(unsafe { info.assume_init() })
}
