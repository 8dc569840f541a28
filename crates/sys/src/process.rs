//! The calling process and thread: the nice value of one thread (the page server's background
//! copy), and `fork` without `exec` for a process with one thread ([`fork_alone`]: the resume
//! agent's worker and page server start as copies of the agent, not as new programs), with
//! the closing of what such a child inherited ([`close_inherited_fds`]).

use nix::errno::Errno;

/// Sets the nice value of the calling thread (`setpriority(PRIO_PROCESS, 0, nice)`, which Linux
/// applies to the calling thread alone). Lowering it again needs `CAP_SYS_NICE`.
pub fn set_thread_nice(nice: i32) -> Result<(), Errno> {
    // SAFETY: `setpriority` takes plain integers (which, who: 0 for the caller, the value) and
    // touches no memory of ours.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    Errno::result(ret).map(drop)
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
