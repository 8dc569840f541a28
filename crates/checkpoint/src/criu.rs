//! The real engine: one `criu swrk <fd>` child per request, spoken to over a socket pair.
//!
//! ```text
//!  overboot ── socketpair(AF_UNIX, SOCK_SEQPACKET) ──┐
//!     │ ours (CLOEXEC)                      theirs (inherited: FD_CLOEXEC cleared in the child)
//!     └─ spawn: criu swrk <theirs>  ◄────────────────┘
//! ```
//!
//! Facts from `criu/cr-service.c` (3.17.1 and master) this relies on:
//! - `criu swrk <fd>` serves requests on `<fd>` like the service, with `swrk_restore` set (which
//!   allows `rst_sibling` and `inherit_fd`), and exits after a request without `keep_open`.
//! - `images_dir_fd` and `work_dir_fd` are *not* used as fds of criu: CRIU opens
//!   `/proc/<pid>/fd/<n>` where `<pid>` comes from `SO_PEERCRED` on the socket. For a socket
//!   pair that is the process that created it — us. So the directories are opened in our
//!   process, close-on-exec like every other fd, and kept open until the answer arrives.
//! - Without `pid` in the options, a dump dumps the peer: we always set it.
//! - A restore through swrk is always detached; `rst_sibling` makes the tree our child.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::engine::{
    CriuVersion, DumpOutcome, Engine, Features, NotifyHandler, Probe, RestoreOutcome,
};
use crate::error::CheckpointError;
use crate::request::{DumpRequest, RestoreRequest};
use crate::session::Session;
use crate::transport::{ProtocolError, Transport};

/// How long criu may take to exit after its final answer before we kill it.
const EXIT_GRACE: Duration = Duration::from_secs(30);
/// How much of criu's stderr we keep for [`CheckpointError::CriuExited`].
const STDERR_KEEP: usize = 4096;

/// CRIU, found at `binary`, driven in swrk mode.
#[derive(Debug, Clone)]
pub struct Criu {
    binary: PathBuf,
    scratch_dir: PathBuf,
    timeout: Option<Duration>,
}

impl Default for Criu {
    /// `criu` from `PATH`.
    fn default() -> Self {
        Self::new("criu")
    }
}

impl Criu {
    /// CRIU at `binary` (a path, or a name looked up in `PATH`).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            scratch_dir: std::env::temp_dir(),
            timeout: None,
        }
    }

    /// Where `check` puts its log (`check.log`); the system temp dir by default.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = dir.into();
        self
    }

    /// Give up (and kill criu) when any single answer takes longer than `timeout`.
    /// Notification handlers run between answers and are not counted.
    pub fn with_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The binary this engine runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The optional features that work with this CRIU on this kernel (memory tracking, lazy
    /// pages, pidfd store).
    pub fn features(&self) -> Result<Features, CheckpointError> {
        self.run(|s| s.features(false))
    }

    /// Version, optional features and `criu check`, from one criu process. A failed check is
    /// reported in [`Probe::check_error`], not as an error: `plan` wants the reason.
    pub fn probe(&self) -> Result<Probe, CheckpointError> {
        let scratch = self.scratch_dir.clone();
        self.run(|s| {
            let version = s.version(true)?;
            let features = s.features(true)?;
            let check_error = match s.check(&scratch) {
                Ok(()) => None,
                Err(e @ CheckpointError::CheckFailed { .. }) => Some(error_chain(&e)),
                Err(e) => return Err(e),
            };
            Ok(Probe {
                version,
                features,
                check_error,
            })
        })
    }

    /// Runs one conversation with a fresh `criu swrk`, then reaps it.
    fn run<T>(
        &self,
        talk: impl FnOnce(&Session) -> Result<T, CheckpointError>,
    ) -> Result<T, CheckpointError> {
        self.run_with(&[], talk)
    }

    /// [`Criu::run`], with `inherited` fds of ours open in criu under the same numbers.
    fn run_with<T>(
        &self,
        inherited: &[i32],
        talk: impl FnOnce(&Session) -> Result<T, CheckpointError>,
    ) -> Result<T, CheckpointError> {
        let _span = tracing::debug_span!("criu_swrk", binary = %self.binary.display()).entered();
        let worker = Worker::spawn(&self.binary, self.timeout, inherited)?;
        let result = talk(&worker.session);
        worker.finish(result)
    }
}

impl Engine for Criu {
    fn version(&mut self) -> Result<CriuVersion, CheckpointError> {
        self.run(|s| s.version(false))
    }

    fn check(&mut self) -> Result<(), CheckpointError> {
        let scratch = self.scratch_dir.clone();
        self.run(|s| s.check(&scratch))
    }

    fn dump(
        &mut self,
        req: &DumpRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError> {
        let _span = tracing::info_span!("criu_dump", pid = req.pid).entered();
        self.run(|s| s.dump(req, notify))
    }

    fn pre_dump(
        &mut self,
        req: &DumpRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError> {
        let _span = tracing::info_span!("criu_pre_dump", pid = req.pid).entered();
        self.run(|s| s.pre_dump(req, notify))
    }

    fn restore(
        &mut self,
        req: &RestoreRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<RestoreOutcome, CheckpointError> {
        let _span = tracing::info_span!("criu_restore").entered();
        let inherited: Vec<i32> = req.inherit_fds.iter().map(|i| i.fd).collect();
        self.run_with(&inherited, |s| s.restore(req, notify))
    }
}

/// A running `criu swrk` and our session with it.
#[derive(Debug)]
struct Worker {
    child: Child,
    session: Session,
    stderr: mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(
        binary: &Path,
        timeout: Option<Duration>,
        inherited: &[i32],
    ) -> Result<Self, CheckpointError> {
        let (ours, theirs): (OwnedFd, OwnedFd) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(CheckpointError::Socket)?;
        let their_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(binary);
        // Its own process group: a Ctrl-C at the terminal reaches overboot, which stops at
        // the next step, never CRIU in the middle of a dump.
        cmd.arg("swrk")
            .arg(their_fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let keep: Vec<i32> = std::iter::once(their_fd)
            .chain(inherited.iter().copied())
            .collect();
        // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: it makes fcntl(2) calls on fd numbers in a vector allocated before
        // the fork and moved in, and allocates nothing. `theirs` stays open in the parent until
        // after spawn returns; the caller keeps `inherited` open until the request is answered.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &keep {
                    fcntl(*fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| CheckpointError::SpawnFailed {
            binary: binary.to_path_buf(),
            source,
        })?;
        // Only criu may hold its end, or we would never see EOF when it dies.
        drop(theirs);
        tracing::debug!(pid = child.id(), "criu swrk started");
        let stderr = collect_stderr(child.stderr.take());
        let mut transport = Transport::new(ours);
        if timeout.is_some() {
            if let Err(e) = transport.set_timeout(timeout) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        }
        Ok(Self {
            child,
            session: Session::new(transport),
            stderr,
        })
    }

    /// Closes our end, reaps criu, and turns "peer gone" into [`CheckpointError::CriuExited`].
    fn finish<T>(self, result: Result<T, CheckpointError>) -> Result<T, CheckpointError> {
        let Self {
            mut child,
            session,
            stderr,
        } = self;
        drop(session);
        let peer_gone = matches!(&result, Err(CheckpointError::Protocol(e)) if e.is_peer_gone());
        let timed_out = matches!(
            &result,
            Err(CheckpointError::Protocol(ProtocolError::TimedOut(_)))
        );
        if timed_out {
            let _ = child.kill();
        }
        let status = reap(&mut child);
        match (result, status) {
            (Err(_), Some(status)) if peer_gone => Err(CheckpointError::CriuExited {
                status,
                stderr: stderr
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or_default(),
            }),
            (result, Some(status)) => {
                if !status.success() {
                    tracing::debug!(%status, "criu swrk exited");
                }
                result
            }
            (result, None) => result,
        }
    }
}

/// Waits for criu to exit, killing it after [`EXIT_GRACE`].
fn reap(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                tracing::warn!(
                    pid = child.id(),
                    "criu did not exit after answering; killing it"
                );
                let _ = child.kill();
                return child.wait().ok();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for criu");
                return None;
            }
        }
    }
}

/// Reads criu's stderr on a thread (so criu never blocks on a full pipe) and hands over its end.
fn collect_stderr(pipe: Option<std::process::ChildStderr>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(STDERR_KEEP);
                kept.drain(..excess);
            }
            let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
        });
    }
    rx
}

/// An error and its causes on one line, as `plan` shows a reason.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
