//! The page server's side of `userfaultfd(2)`: the ioctls that put a page into a restored task
//! (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`) or wake its threads (`UFFDIO_WAKE`), and the adoption of
//! the userfaultfd the kernel installs for a forked task (`UFFD_EVENT_FORK`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

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
