//! The raw system calls of the kernel switch: `kexec_file_load`, `sync` and
//! `reboot(LINUX_REBOOT_CMD_KEXEC)`; and those of the lazy restore's page server on the other
//! side of it: the `userfaultfd(2)` ioctls that put a page into a restored task
//! (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`) and the adoption of the descriptors the kernel and CRIU
//! hand it; and the descriptor borrowing (`pidfd_open`, `pidfd_getfd`) and `TCP_REPAIR` toggle
//! that nudge a restored connection's peer (see `overboot::nudge`), and the page server's
//! `setpriority` for its background copy; and `fork` without `exec`, for a process with one
//! thread ([`fork_alone`]: the resume agent's worker and page server start as copies of the
//! agent, not as new programs). The only module of overboot with raw syscalls.
//!
//! Thin, typed wrappers in the style of `nix`: file descriptors come in as `BorrowedFd`, the
//! command line as a `CStr`, errors go out as `Errno`. No policy and no error classification:
//! that is [`crate::load`]'s job. `nix` has no `kexec_file_load`, so that one is written here;
//! `sync` and `reboot` go through `nix`.

use std::convert::Infallible;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// `_IOWR(0xAA, 0x03, struct uffdio_copy)` of `linux/userfaultfd.h`.
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;

/// `struct uffdio_copy`.
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// A userfaultfd operation that stopped early: the bytes it did before `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdPartial {
    /// Bytes copied (or zero-filled) before the error.
    pub done: u64,
    /// Why it stopped (`EAGAIN`: the address space is changing, read its events first;
    /// `EEXIST`: the page at `dst + done` is already there; `ENOENT`: no registered range;
    /// `ESRCH`: the task is gone).
    pub errno: Errno,
}

/// The outcome of a userfaultfd ioctl: `ret` and the count the kernel wrote back, which is
/// the bytes done, or a negative errno when nothing was.
fn uffd_outcome(ret: libc::c_int, done: i64, len: u64) -> Result<u64, UffdPartial> {
    if ret == 0 {
        return Ok(len);
    }
    let errno = Errno::last();
    match u64::try_from(done) {
        Ok(done) => Err(UffdPartial { done, errno }),
        // Nothing done: the count is the negated error.
        Err(_) => Err(UffdPartial {
            done: 0,
            errno: i32::try_from(-done).map_or(errno, Errno::from_raw),
        }),
    }
}

/// Copies `src` into the task behind `uffd` at `dst` (`UFFDIO_COPY`) and wakes the threads
/// waiting on those pages. `dst` and `src.len()` are multiples of the page size, the range
/// lies in one registered mapping. Returns the bytes copied: all of them, or the part done
/// before the error.
pub fn uffd_copy(uffd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> Result<u64, UffdPartial> {
    let len = src.len() as u64;
    let mut arg = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `arg` is a live `struct uffdio_copy` the kernel reads and writes back (`copy`);
    // its `src` and `len` describe the borrowed slice `src`, which the kernel only reads.
    // `dst` is an address in the *other* task's address space (the one registered with
    // `uffd`): the kernel writes there, never into ours. `uffd` is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, &mut arg) };
    uffd_outcome(ret, arg.copy, len)
}

/// Maps zero pages into the task behind `uffd` at `[start, start + len)` (`UFFDIO_ZEROPAGE`)
/// and wakes its waiting threads: for a fault on memory the dump held no page for.
pub fn uffd_zeropage(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<u64, UffdPartial> {
    let mut arg = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `arg` is a live `struct uffdio_zeropage` the kernel reads and writes back; the
    // range is in the other task's address space. No memory of ours is touched beyond `arg`.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut arg) };
    uffd_outcome(ret, arg.zeropage, len)
}

/// Wakes the threads of the task behind `uffd` waiting on `[start, start + len)`
/// (`UFFDIO_WAKE`): they fault again, and the kernel sees what changed meanwhile.
pub fn uffd_wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let arg = UffdioRange { start, len };
    // SAFETY: `arg` is a live `struct uffdio_range` the kernel only reads; `uffd` is borrowed.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WAKE, &arg) };
    Errno::result(ret).map(drop)
}

/// Takes ownership of a descriptor the kernel just installed in this process for the caller
/// alone: the new userfaultfd of a forked task (`UFFD_EVENT_FORK`'s `ufd`).
pub fn adopt_event_fd(raw: RawFd) -> Result<OwnedFd, Errno> {
    if raw < 0 {
        return Err(Errno::EBADF);
    }
    // Check that it is open before owning it.
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: the kernel installed `raw` in our descriptor table while delivering the fork
    // event read by the caller, who has not stored it anywhere else: nothing else owns it,
    // so the `OwnedFd` is its only owner and closes it exactly once. It is open (checked).
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

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

/// Sets the nice value of the calling thread (`setpriority(PRIO_PROCESS, 0, nice)`, which Linux
/// applies to the calling thread alone). Lowering it again needs `CAP_SYS_NICE`.
pub fn set_thread_nice(nice: i32) -> Result<(), Errno> {
    // SAFETY: `setpriority` takes plain integers (which, who: 0 for the caller, the value) and
    // touches no memory of ours.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
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

/// Which side of a [`fork_alone`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(libc::pid_t),
    /// The child: a copy of the caller with one thread.
    Child,
}

/// The number of threads of the calling process (the entries of `/proc/self/task`).
pub fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Forks the calling process when it has one thread, the caller (`Ok(None)` when it has more:
/// the caller then starts a program instead). The child may run any code, unlike the child of
/// a threaded process, which may only call async-signal-safe functions before it `exec`s: no
/// other thread of the parent can hold a lock the child needs (the allocator's, stdout's, the
/// tracing subscriber's). Whatever the caller buffered for stdout is flushed first, so that the
/// child does not write it a second time. A thread that was joined may still be listed for a
/// moment while the kernel finishes its exit: the count is read a few times before giving up.
pub fn fork_alone() -> Result<Option<Forked>, Errno> {
    use std::io::Write;
    let mut alone = false;
    for _ in 0..10 {
        if thread_count().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))? == 1 {
            alone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if !alone {
        return Ok(None);
    }
    let _ = std::io::stdout().flush();
    // SAFETY: the process has exactly one thread (counted just above; only that thread could
    // start another, and it is here), so at the fork no other thread holds a lock or is in the
    // middle of changing shared state: the child's copy of the address space is consistent
    // and it may allocate, lock and run arbitrary code, as a single-threaded process may.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(Forked::Parent(child.as_raw()))),
        nix::unistd::ForkResult::Child => Ok(Some(Forked::Child)),
    }
}

/// Closes every descriptor above stderr, in a child forked without `exec` that is to run on its
/// own (a daemon): what `exec` does to the descriptors its parent opened close-on-exec, as all
/// of Rust's are. Without it the daemon would hold, for as long as it runs, whatever its
/// parent had open, among them the write end of a pipe someone reads to its end.
pub fn close_inherited_fds() -> Result<(), Errno> {
    // SAFETY: `close_range` takes plain integers (first, last, flags: none) and touches no
    // memory. It closes descriptors that objects of the parent's code own in this copy of its
    // address space; the caller, a forked child, never returns to that code (it exits), so
    // none of those objects is used or dropped here and nothing closes a descriptor twice.
    let ret = unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    Errno::result(ret).map(drop)
}
