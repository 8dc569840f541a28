//! The resume agent's helpers started as copies of the agent (`fork` without `exec`) rather
//! than as new programs: the worker that verifies and restores ([`output_of`], see
//! [`crate::rollback`]) and the lazy restore's page server ([`daemon`], see [`crate::lazy`]).
//! Both run inside the blackout. In the lab's guests an exec of `overboot` costs 70–80 ms of
//! emulated CPU before `main` (the kernel maps a 6 MB binary, the loader relocates it, every
//! page of code and data it touches faults in): twice per update, and a shell's exec more for
//! the page server. A fork of the agent costs its page tables, and the child finds the
//! agent's code already translated and mapped.
//!
//! Only a process with one thread may fork and go on running arbitrary code in the child
//! ([`overboot_sys::fork_alone`]); when the agent has another, both return `Ok(None)`
//! and the callers start the program as they always could.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Output};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use overboot_sys::{fork_alone, Forked};

/// The exit code of a child whose body panicked (Rust's own for a panicking `main`).
const PANICKED: u8 = 101;

/// Runs `body` in a child forked from this process, as `Command::output` runs a program:
/// stdin from `/dev/null`, stdout shared with this process, stderr collected. The child exits
/// with the code `body` returns. `Ok(None)` when this process has other threads: nothing was
/// started.
pub fn output_of(body: impl FnOnce() -> u8) -> std::io::Result<Option<Output>> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match fork_alone()? {
        None => Ok(None),
        Some(Forked::Child) => {
            drop(read);
            let redirected = stdio(None, &write);
            // Its copy on stderr is the only one left: the pipe ends when the child's stderr
            // does, not when one of its own children (which inherit what it has open) exits.
            drop(write);
            let code = match redirected {
                Ok(()) => run(body),
                Err(_) => 1,
            };
            std::process::exit(i32::from(code))
        }
        Some(Forked::Parent(pid)) => {
            drop(write);
            let mut stderr = Vec::new();
            let read_all = std::fs::File::from(read).read_to_end(&mut stderr);
            // Reaped whatever the read did: no zombie is left behind.
            let status = wait(pid)?;
            read_all?;
            Ok(Some(Output {
                status,
                stdout: Vec::new(),
                stderr,
            }))
        }
    }
}

/// Starts `body` as a daemon forked from this process: a waiter process, leader of a process
/// group of its own (no signal meant for this process reaches it; killing the group stops
/// both) with its working directory `dir` and no descriptor of this process but the standard
/// three, pointed at `/dev/null`, forks the daemon, whose stdin and stdout are
/// `/dev/null` and stderr the file `log` (created or truncated), calls `started` with the
/// daemon's pid, waits for it and calls `finished` with its exit code (128 + the signal that
/// killed it, as a shell's `$?`). Returns the waiter's pid (the group's id) without waiting;
/// `Ok(None)` when this process has other threads: nothing was started.
pub fn daemon(
    dir: &Path,
    log: &Path,
    body: impl FnOnce() -> u8,
    started: impl FnOnce(i32),
    finished: impl FnOnce(i32),
) -> std::io::Result<Option<i32>> {
    match fork_alone()? {
        None => Ok(None),
        Some(Forked::Parent(waiter)) => {
            // Set on both sides, so that it holds before either goes on (the race is benign).
            let _ = nix::unistd::setpgid(Pid::from_raw(waiter), Pid::from_raw(waiter));
            Ok(Some(waiter))
        }
        Some(Forked::Child) => {
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            let code = run(|| waiter(dir, log, body, started, finished));
            std::process::exit(i32::from(code))
        }
    }
}

/// The waiter of [`daemon`]: 0 when the daemon ran (whatever its own code), 1 when it could
/// not be started.
fn waiter(
    dir: &Path,
    log: &Path,
    body: impl FnOnce() -> u8,
    started: impl FnOnce(i32),
    finished: impl FnOnce(i32),
) -> u8 {
    let null = || std::fs::OpenOptions::new().write(true).open("/dev/null");
    let setup = || -> std::io::Result<()> {
        std::env::set_current_dir(dir)?;
        let null = OwnedFd::from(null()?);
        stdio(Some(&null), &null)?;
        drop(null);
        // Nothing the agent had open stays open for the daemon's life (a pipe its supervisor
        // reads to the end, above all).
        Ok(overboot_sys::close_inherited_fds()?)
    };
    if setup().is_err() {
        return 1;
    }
    let server = match fork_alone() {
        Ok(Some(Forked::Parent(pid))) => pid,
        Ok(Some(Forked::Child)) => {
            let code = match std::fs::File::create(log) {
                Ok(file) => match stdio(None, &OwnedFd::from(file)) {
                    Ok(()) => run(body),
                    Err(_) => 1,
                },
                Err(_) => 1,
            };
            std::process::exit(i32::from(code))
        }
        // The waiter is a fresh fork of a process with one thread: it has one too.
        Ok(None) | Err(_) => return 1,
    };
    started(server);
    let code = match wait(server) {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1),
        Err(_) => 1,
    };
    finished(code);
    0
}

/// Points stdin at `/dev/null`, stdout at `stdout` when given, and stderr at `stderr`.
fn stdio(stdout: Option<&OwnedFd>, stderr: &OwnedFd) -> std::io::Result<()> {
    let null = OwnedFd::from(std::fs::File::open("/dev/null")?);
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    if let Some(out) = stdout {
        nix::unistd::dup2(out.as_raw_fd(), 1)?;
    }
    nix::unistd::dup2(stderr.as_raw_fd(), 2)?;
    Ok(())
}

/// Runs a child's body: its code, or [`PANICKED`] when it panicked (the hook printed why). A
/// panic must not unwind out of the child into the copy of the parent's stack.
fn run(body: impl FnOnce() -> u8) -> u8 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(PANICKED)
}

/// Waits for the child `pid` to exit and returns its status.
pub fn wait(pid: i32) -> std::io::Result<ExitStatus> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(status) => {
                if let Some(status) = exit_status(status) {
                    return Ok(status);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The status of the child `pid` if it exited, without waiting (`None` while it runs).
pub fn try_wait(pid: i32) -> std::io::Result<Option<ExitStatus>> {
    use nix::sys::wait::WaitPidFlag;
    Ok(exit_status(waitpid(
        Pid::from_raw(pid),
        Some(WaitPidFlag::WNOHANG),
    )?))
}

/// An exit or a killing signal as the status `std::process` reports; `None` for anything else.
fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw(code << 8)),
        WaitStatus::Signaled(_, signal, core) => Some(ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test harness runs tests on threads of its own: a test process has several, so
    // these fork only when run alone (`--test-threads=1` still leaves the main thread and
    // the test's); they check the refusal otherwise. The lab's updates run the forks.
    #[test]
    fn a_threaded_process_does_not_fork() {
        let other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(output_of(|| 0).unwrap().is_none());
        let dir = std::env::temp_dir();
        let started = daemon(&dir, &dir.join("never.log"), || 0, |_| {}, |_| {}).unwrap();
        assert!(started.is_none());
        other.join().unwrap();
    }
}
