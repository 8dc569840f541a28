//! Descriptors that come from another process: one CRIU sends over a unix socket
//! (`SCM_RIGHTS`, the restored tasks' userfaultfds) and one borrowed from a process by its
//! pidfd (`pidfd_open`, `pidfd_getfd`: the restored tasks' sockets, for the nudge).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Receives one descriptor sent with `SCM_RIGHTS` (and one byte of data, as CRIU sends it)
/// on the connected unix socket `sock`.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: `SCM_RIGHTS` installed each received descriptor in our table for
                // this message alone; wrapping each at once gives it exactly one owner (extra
                // ones are closed when dropped).
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                received.get_or_insert(fd);
            }
        }
    }
    if msg.bytes == 0 {
        return Err(Errno::ECONNRESET);
    }
    received.ok_or(Errno::EBADMSG)
}

/// Opens a pidfd for the process `pid` (`pidfd_open(2)`, Linux 5.3).
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: `pidfd_open` takes a pid and flags (none) by value and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let raw = RawFd::try_from(Errno::result(ret)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just installed `raw` in our table for this call alone: the `OwnedFd`
    // is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Duplicates descriptor `target` of the process behind `pidfd` into this process
/// (`pidfd_getfd(2)`, Linux 5.6; needs ptrace access to it). The copy shares the open file:
/// socket options set on it are the owner's.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: the pidfd is borrowed, so it stays open for the call; the target descriptor
    // number and the flags (none) are plain integers. No memory of ours is touched.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    let raw = RawFd::try_from(Errno::result(ret)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just installed `raw` in our table for this call alone: the `OwnedFd`
    // is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
