//! After a restore: make each peer of a restored TCP connection resend what it sent during the
//! blackout now, instead of at its next retransmission timeout.
//!
//! ```text
//!  peer                          blackout                         restored socket
//!  INCR ──x (locked, then no kernel)   RTO backs off: 1, 2, 4, 8 s …
//!                                                    restore ──── window probe (CRIU)
//!                                                    nudge   ──── window probe × PROBES
//!  3rd duplicate ACK: fast retransmit ─────────────────────────► INCR … answered at once
//! ```
//!
//! During the blackout every segment the peer sends is lost (CRIU's lock in the old kernel, then
//! no kernel at all), and its retransmission timer doubles each time. Measured in the lab (QEMU's
//! user network, whose TCP is BSD's): after a 13 s blackout the commands sent during it were
//! answered 11 s after the socket was back, at the peer's next timeout.
//!
//! Taking a socket out of repair mode (`TCP_REPAIR_OFF`) makes it send a window probe: a pure ACK
//! of the current window for sequence `snd_una - 1`. A BSD-derived stack (QEMU's slirp, FreeBSD,
//! macOS) trims the old byte, keeps the ACK and, when it acknowledges nothing new with an unchanged
//! window, counts it as a duplicate ACK: the third one starts a fast retransmit. So each
//! established socket of a restored tree is toggled in and out of repair mode [`PROBES`] times
//! (the first probe may carry a changed window and count as a window update). A Linux peer drops
//! such a probe as an old segment (it answers with an ACK and resends at its own timeout): the
//! nudge neither helps nor harms it. A round can miss: a segment of the service's own between
//! two probes restarts the peer's count. So after the update is done, [`follow_up`] checks each
//! probed connection (`TCP_INFO`'s time since data last came in) and probes again the ones
//! whose peer stayed silent, up to [`ROUNDS`] rounds in all.
//!
//! While a socket is in repair mode its owner's reads fail with `EPERM` and writes with `EINVAL`,
//! so every thread of the tree is held in a ptrace stop (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`, as
//! CRIU freezes) around the toggles, and the sockets are borrowed with `pidfd_getfd`. A thread
//! stopped for a signal gets that signal back when released. If this agent dies meanwhile, the
//! kernel detaches and resumes the threads. The nudge is best effort: a failure is logged, never
//! fails the update, and leaves the sockets untouched (nothing is toggled unless every thread of
//! the tree is held).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use overboot_sys as sys;

use crate::host::network::{self, TcpState};

/// Window probes sent per connection: three duplicate ACKs start a fast retransmit, and the
/// first may count as a window update instead.
pub const PROBES: usize = 4;

/// How long a thread may take to reach its ptrace stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the nudge (logged by the caller; they never fail an update).
#[derive(Debug, thiserror::Error)]
pub enum NudgeError {
    /// A thread could not be held.
    #[error("cannot hold thread {tid} of pid {pid}")]
    Hold {
        pid: i32,
        tid: i32,
        #[source]
        source: Errno,
    },
    /// A thread did not stop in time.
    #[error("thread {tid} did not stop within {STOP_TIMEOUT:?}")]
    StopTimeout { tid: i32 },
    /// The threads kept changing while being held.
    #[error("the threads of pid {pid} kept changing")]
    Unsettled { pid: i32 },
    /// A process's sockets could not be listed.
    #[error("cannot list the sockets of pid {pid}")]
    Sockets {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be borrowed or toggled.
    #[error("cannot probe descriptor {fd} of pid {pid}")]
    Probe {
        pid: i32,
        fd: RawFd,
        #[source]
        source: Errno,
    },
}

/// An established connection of a tree: `(pid, fd)`.
pub type Socket = (i32, RawFd);

/// What a nudge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nudged {
    /// Window probes sent.
    pub probes: usize,
    /// The connections probed, for [`follow_up`].
    pub sockets: Vec<Socket>,
    /// When they were.
    pub at: Option<Instant>,
}

impl Nudged {
    /// Established connections probed.
    pub fn connections(&self) -> usize {
        self.sockets.len()
    }
}

/// Rounds of probes at most: a round can miss (a segment of the service's own between two
/// probes restarts the peer's count of duplicate ACKs).
pub const ROUNDS: usize = 3;

/// How long a connection may stay silent after a round before the next one.
const HEARD_WITHIN: Duration = Duration::from_millis(300);

/// The descriptors of `pid` that are established TCP connections, with their socket inodes.
/// Each socket is asked itself (a copy through `pidfd_getfd`: its family, type and
/// `TCP_INFO` state). `/proc/<pid>/net/tcp{,6}` would walk the kernel's whole table of
/// connections, which it sizes by the machine's memory: 20–35 ms per table under TCG in a lab
/// guest of 9 GiB, four tables per nudge, all of it in the blackout.
fn established_fds(pid: i32) -> std::io::Result<Vec<(RawFd, u64)>> {
    let pidfd = sys::pidfd_open(pid)?;
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = network::socket_inode(&link.to_string_lossy());
        let fd = entry.file_name().to_string_lossy().parse::<RawFd>().ok();
        let (Some(inode), Some(fd)) = (inode, fd) else {
            continue;
        };
        // A descriptor closed meanwhile is no connection of the tree.
        let Ok(sock) = sys::pidfd_getfd(pidfd.as_fd(), fd) else {
            continue;
        };
        if is_established_tcp(sock.as_fd()) {
            fds.push((fd, inode));
        }
    }
    Ok(fds)
}

/// Whether `sock` is an IPv4 or IPv6 stream socket that TCP reports established.
fn is_established_tcp(sock: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
    };
    let inet = getsockname::<SockaddrStorage>(sock.as_raw_fd())
        .ok()
        .and_then(|a| a.family())
        .is_some_and(|f| matches!(f, AddressFamily::Inet | AddressFamily::Inet6));
    let stream = getsockopt(&sock, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    // `TCP_INFO` fails on a socket that is not TCP's.
    inet && stream && sys::tcp_info(sock).is_ok_and(|info| is_established(&info))
}

/// Whether `TCP_INFO` reports the connection established.
fn is_established(info: &libc::tcp_info) -> bool {
    TcpState::from_code(info.tcpi_state) == TcpState::Established
}

fn threads(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Threads held in a ptrace stop; released (with any signal their stop caught) when dropped.
#[derive(Debug, Default)]
struct Held {
    /// Thread, and the signal to hand back on release.
    stopped: Vec<(Pid, Option<Signal>)>,
    /// Threads seized and interrupted whose stop has not been seen yet.
    pending: Vec<(i32, Pid)>,
}

/// What `waitpid` said of a thread being held.
enum Stop {
    /// Not stopped yet.
    Running,
    /// In its ptrace stop, with the signal to hand back on release.
    Stopped(Option<Signal>),
    /// It exited.
    Gone,
}

fn poll_stop(pid: i32, thread: Pid) -> Result<Stop, NudgeError> {
    loop {
        return match waitpid(thread, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive | WaitStatus::Continued(_)) => Ok(Stop::Running),
            // A signal-delivery stop: the signal goes back on release.
            Ok(WaitStatus::Stopped(_, signal)) => Ok(Stop::Stopped(Some(signal))),
            Ok(WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_)) => {
                Ok(Stop::Stopped(None))
            }
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                Ok(Stop::Gone)
            }
            Err(Errno::EINTR) => continue,
            Err(source) => Err(NudgeError::Hold {
                pid,
                tid: thread.as_raw(),
                source,
            }),
        };
    }
}

impl Held {
    /// Seizes and interrupts `tid` without waiting for its stop ([`Held::wait_stops`] does).
    /// A thread that exited meanwhile is no error.
    fn interrupt(&mut self, pid: i32, tid: i32) -> Result<(), NudgeError> {
        let thread = Pid::from_raw(tid);
        match ptrace::seize(thread, ptrace::Options::empty()) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(source) => return Err(NudgeError::Hold { pid, tid, source }),
        }
        // Seized before interrupted: released or, failing that, detached when this agent exits.
        self.pending.push((pid, thread));
        match ptrace::interrupt(thread) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(NudgeError::Hold { pid, tid, source }),
        }
    }

    /// Waits until every interrupted thread is in its ptrace stop, all within [`STOP_TIMEOUT`]:
    /// the waits overlap (a thread inside a page fault that a lazy restore's page server
    /// answers stops only once it is answered).
    fn wait_stops(&mut self) -> Result<(), NudgeError> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let mut running = Vec::new();
            let mut failed = None;
            for (pid, thread) in std::mem::take(&mut self.pending) {
                if failed.is_some() {
                    // Not polled: still pending, so that dropping the hold releases it.
                    running.push((pid, thread));
                    continue;
                }
                match poll_stop(pid, thread) {
                    Ok(Stop::Running) => running.push((pid, thread)),
                    Ok(Stop::Stopped(signal)) => self.stopped.push((thread, signal)),
                    Ok(Stop::Gone) => {}
                    Err(e) => {
                        running.push((pid, thread));
                        failed = Some(e);
                    }
                }
            }
            self.pending = running;
            if let Some(e) = failed {
                return Err(e);
            }
            let Some(&(_, thread)) = self.pending.first() else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(NudgeError::StopTimeout {
                    tid: thread.as_raw(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Holds every thread of every process in `pids`, including threads started meanwhile:
    /// each round interrupts every thread not seen yet, then waits for all of them.
    fn hold_all(&mut self, pids: &[i32]) -> Result<(), NudgeError> {
        let mut seen = BTreeSet::new();
        // The first process that still had new threads in the last round.
        let mut changing = None;
        for _ in 0..16 {
            changing = None;
            for &pid in pids {
                for tid in threads(pid) {
                    if seen.insert(tid) {
                        changing.get_or_insert(pid);
                        self.interrupt(pid, tid)?;
                    }
                }
            }
            if changing.is_none() {
                return Ok(());
            }
            self.wait_stops()?;
        }
        Err(NudgeError::Unsettled {
            pid: changing.unwrap_or_default(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A thread whose stop came after the wait gave up is released too; one still running
        // stays seized until this agent exits (the kernel then detaches it).
        for (pid, thread) in std::mem::take(&mut self.pending) {
            if let Ok(Stop::Stopped(signal)) = poll_stop(pid, thread) {
                self.stopped.push((thread, signal));
            }
        }
        for (thread, signal) in self.stopped.drain(..) {
            if let Err(e) = ptrace::detach(thread, signal) {
                tracing::warn!(tid = thread.as_raw(), error = %e, "cannot release a held thread");
            }
        }
    }
}

/// Sends [`PROBES`] window probes on descriptor `fd` of `pid` (held by the caller).
fn probe(pid: i32, fd: RawFd) -> Result<usize, NudgeError> {
    let error = |source| NudgeError::Probe { pid, fd, source };
    let pidfd = sys::pidfd_open(pid).map_err(error)?;
    let sock = sys::pidfd_getfd(pidfd.as_fd(), fd).map_err(error)?;
    // Leaving repair mode clears `SO_REUSEADDR` (the kernel sets `SK_NO_REUSE`): put the
    // owner's value back, as CRIU does after its own `TCP_REPAIR_OFF`.
    let reuse =
        nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::ReuseAddr).map_err(error)?;
    let mut sent = 0;
    let mut outcome = Ok(());
    for _ in 0..PROBES {
        outcome = sys::set_tcp_repair(sock.as_fd(), true);
        if outcome.is_err() {
            break;
        }
        // Out of repair mode at once: the owner's I/O fails while it is on.
        outcome = sys::set_tcp_repair(sock.as_fd(), false);
        if outcome.is_err() {
            break;
        }
        sent += 1;
    }
    if outcome.is_err() {
        // Never leave it in repair mode (a no-op if it is not).
        let _ = sys::set_tcp_repair(sock.as_fd(), false);
    }
    let restored =
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReuseAddr, &reuse);
    outcome.and(restored).map_err(error)?;
    Ok(sent)
}

/// Nudges the peers of every established TCP connection of one tree (its processes `pids`).
pub fn nudge_tree(pids: &[i32]) -> Result<Nudged, NudgeError> {
    let start = Instant::now();
    // A tree without connections is not stopped at all.
    if established_sockets(pids)?.is_empty() {
        return Ok(Nudged::default());
    }
    let listed = start.elapsed();
    let mut held = Held::default();
    held.hold_all(pids)?;
    let stopped = start.elapsed();
    // Listed again while held: the descriptor tables cannot change now.
    let mut nudged = Nudged::default();
    for (pid, fd) in established_sockets(pids)? {
        nudged.probes += probe(pid, fd)?;
        nudged.sockets.push((pid, fd));
    }
    nudged.at = Some(Instant::now());
    let probed = start.elapsed();
    drop(held);
    tracing::debug!(
        threads = thread_count(pids),
        listed_us = listed.as_micros(),
        stopped_us = stopped.as_micros(),
        probed_us = probed.as_micros(),
        released_us = start.elapsed().as_micros(),
        "nudge steps (cumulative)"
    );
    Ok(nudged)
}

/// How many threads the tree has (for the debug log).
fn thread_count(pids: &[i32]) -> usize {
    pids.iter().map(|&pid| threads(pid).len()).sum()
}

/// Whether the peer of descriptor `fd` of `pid` sent data within the last `within` (false
/// for a socket no longer established or gone: nothing to wait for then, see [`follow_up`]).
fn heard(pid: i32, fd: RawFd, within: Duration) -> Option<bool> {
    let pidfd = sys::pidfd_open(pid).ok()?;
    let sock = sys::pidfd_getfd(pidfd.as_fd(), fd).ok()?;
    let info = sys::tcp_info(sock.as_fd()).ok()?;
    // The time is in jiffies underneath (4–10 ms): data that came right after a round may
    // read as a few ms older than it.
    is_established(&info).then(|| {
        u128::from(info.tcpi_last_data_recv) < within.as_millis() + JIFFY_SLACK.as_millis()
    })
}

/// What `tcpi_last_data_recv` may be off by (two jiffies at `HZ=100`).
const JIFFY_SLACK: Duration = Duration::from_millis(20);

/// Further rounds for the connections of each tree (`(pids, the first round)`) whose peer
/// stayed silent since the round before: up to [`ROUNDS`] in all, [`HEARD_WITHIN`] apart. A
/// peer with nothing to resend stays silent and gets every round: harmless. Best effort (a
/// failure is logged); returns the probes sent.
pub fn follow_up(trees: &[(&[i32], Nudged)]) -> usize {
    let mut sent = 0;
    let mut waiting: Vec<(&[i32], Vec<Socket>)> = trees
        .iter()
        .filter(|(_, n)| !n.sockets.is_empty())
        .map(|(pids, n)| (*pids, n.sockets.clone()))
        .collect();
    let mut since = trees
        .iter()
        .filter_map(|(_, n)| n.at)
        .min()
        .unwrap_or_else(Instant::now);
    for round in 2..=ROUNDS {
        if waiting.is_empty() {
            break;
        }
        std::thread::sleep(HEARD_WITHIN.saturating_sub(since.elapsed()));
        let elapsed = since.elapsed();
        for (_, sockets) in &mut waiting {
            sockets.retain(|(pid, fd)| heard(*pid, *fd, elapsed) == Some(false));
        }
        waiting.retain(|(_, sockets)| !sockets.is_empty());
        since = Instant::now();
        for (pids, sockets) in &waiting {
            let mut held = Held::default();
            if let Err(e) = held.hold_all(pids) {
                tracing::warn!(round, error = %e, "cannot hold a tree to nudge its peers again");
                continue;
            }
            for (pid, fd) in sockets {
                match probe(*pid, *fd) {
                    Ok(n) => sent += n,
                    Err(e) => tracing::warn!(round, error = %e, "cannot nudge a peer again"),
                }
            }
            tracing::info!(
                round,
                connections = sockets.len(),
                "nudged silent peers again"
            );
        }
    }
    sent
}

/// `(pid, fd)` of every established TCP connection of `pids`, each socket once (a socket
/// several processes or descriptors share is probed once).
fn established_sockets(pids: &[i32]) -> Result<Vec<Socket>, NudgeError> {
    let mut sockets = Vec::new();
    let mut inodes_seen = BTreeSet::new();
    for &pid in pids {
        let fds = established_fds(pid).map_err(|source| NudgeError::Sockets { pid, source })?;
        for (fd, inode) in fds {
            if inodes_seen.insert(inode) {
                sockets.push((pid, fd));
            }
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Only established TCP connections count, IPv4 and IPv6, found without the kernel's
    /// tables: not a listener, a UDP socket, a Unix stream or a pipe.
    #[test]
    fn only_established_tcp_descriptors_are_picked() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let six = TcpListener::bind("[::1]:0").ok();
        let six_pair = six.as_ref().map(|l| {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (c, l.accept().unwrap().0)
        });
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (unix_a, unix_b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
        let mut expected = vec![client.as_raw_fd(), server.as_raw_fd()];
        if let Some((c, s)) = &six_pair {
            expected.extend([c.as_raw_fd(), s.as_raw_fd()]);
        }
        let not_expected = [
            listener.as_raw_fd(),
            udp.as_raw_fd(),
            unix_a.as_raw_fd(),
            unix_b.as_raw_fd(),
            pipe_r.as_raw_fd(),
            pipe_w.as_raw_fd(),
        ];
        let found: Vec<RawFd> = established_fds(std::process::id().try_into().unwrap())
            .unwrap()
            .into_iter()
            .map(|(fd, _)| fd)
            .collect();
        // Other tests of this process may hold connections of their own meanwhile.
        for fd in &expected {
            assert!(found.contains(fd), "{fd} missing from {found:?}");
        }
        for fd in &not_expected {
            assert!(!found.contains(fd), "{fd} in {found:?}");
        }
        drop(server);
        // The peer closed: the client is in CLOSE_WAIT now, no longer established.
        let mut buf = [0u8; 1];
        let _ = (&client).read(&mut buf);
        let found: Vec<RawFd> = established_fds(std::process::id().try_into().unwrap())
            .unwrap()
            .into_iter()
            .map(|(fd, _)| fd)
            .collect();
        assert!(!found.contains(&client.as_raw_fd()), "{found:?}");
    }

    /// Set for the child of [`a_held_process_keeps_its_connection_and_the_peer_gets_the_probes`].
    const CHILD_ENV: &str = "OVERBOOT_NUDGE_TEST_PEER";

    /// Not a test of its own: the process the test below nudges (an echo client).
    #[test]
    fn echo_child() {
        let Ok(addr) = std::env::var(CHILD_ENV) else {
            return;
        };
        let mut conn = TcpStream::connect(addr).expect("connect");
        let mut buf = [0u8; 64];
        loop {
            // A read failing with EPERM (a socket left in repair mode) ends the echo.
            let n = conn.read(&mut buf).expect("read");
            if n == 0 {
                return;
            }
            conn.write_all(&buf[..n]).expect("write");
        }
    }

    fn win_probes() -> u64 {
        let text = std::fs::read_to_string("/proc/net/netstat").expect("netstat");
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "TCPWinProbe")
            .and_then(|(_, v)| v.parse().ok())
            .expect("TCPWinProbe")
    }

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn echo(conn: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        conn.write_all(text).expect("send");
        let mut back = vec![0u8; text.len()];
        conn.read_exact(&mut back).expect("echo");
        back
    }

    /// A real process, a real connection (loopback): the nudge holds the process, sends the
    /// probes, and the connection goes on both ways afterwards. Needs root (ptrace of another
    /// process, `CAP_NET_ADMIN` for `TCP_REPAIR`); touches only its own child.
    #[test]
    fn a_held_process_keeps_its_connection_and_the_peer_gets_the_probes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (ptrace and TCP_REPAIR)");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "new::nudge::tests::echo_child", "--nocapture"])
            .env(CHILD_ENV, listener.local_addr().expect("addr").to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the echo child");
        let child = Kill(child);
        let pid = i32::try_from(child.0.id()).expect("pid");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        assert_eq!(echo(&mut conn, b"before"), b"before");

        // The child's socket with SO_REUSEADDR on, as a server's accepted sockets often are.
        let pidfd = sys::pidfd_open(pid).expect("pidfd");
        let (fd, _) = established_fds(pid).expect("fds")[0];
        let theirs = sys::pidfd_getfd(pidfd.as_fd(), fd).expect("getfd");
        let reuse = nix::sys::socket::sockopt::ReuseAddr;
        nix::sys::socket::setsockopt(&theirs, reuse, &true).expect("SO_REUSEADDR");

        let probes_before = win_probes();
        let nudged = nudge_tree(&[pid]).expect("nudge");
        assert_eq!((nudged.connections(), nudged.probes), (1, PROBES));
        assert_eq!(nudged.sockets, [(pid, fd)]);
        assert!(
            win_probes() >= probes_before + PROBES as u64,
            "the kernel sent a window probe per toggle"
        );
        assert!(
            nix::sys::socket::getsockopt(&theirs, reuse).expect("get"),
            "SO_REUSEADDR is the owner's again after the toggles"
        );
        // Released, out of repair mode: the child reads and writes again.
        assert_eq!(echo(&mut conn, b"after the nudge"), b"after the nudge");
        // A peer heard from since is left alone; a silent one gets the other rounds.
        assert_eq!(
            follow_up(&[(&[pid], nudged.clone())]),
            0,
            "heard: no second round"
        );
        let silent_since = win_probes();
        std::thread::sleep(HEARD_WITHIN * 2);
        let again = Nudged {
            sockets: vec![(pid, fd)],
            at: Some(Instant::now()),
            ..Nudged::default()
        };
        assert_eq!(follow_up(&[(&[pid], again)]), (ROUNDS - 1) * PROBES);
        assert!(win_probes() >= silent_since + ((ROUNDS - 1) * PROBES) as u64);
        assert_eq!(echo(&mut conn, b"after the rounds"), b"after the rounds");
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(state.contains("TracerPid:\t0\n"), "no tracer left: {state}");
    }
}
