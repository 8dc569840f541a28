//! Lazy restore (`overboot update --lazy-restore`): the new kernel's agent restores the trees
//! without their private anonymous memory, which a page server per tree — overboot's own,
//! [`overboot_pageserver`], run as `overboot serve-pages` — then puts back from the map over
//! userfaultfd: a page on demand when a task touches it, the rest copied in the background
//! until every page is back, when the server exits. The tasks answer before those pages are
//! copied. That holds for the pages a pre-copy round holds too: the agent flags them lazy in
//! the restore's copy of each pagemap ([`overboot_checkpoint::pagemap::prepare_lazy`]),
//! and the server finds them down the chain of rounds; then it writes each pagemap anew with
//! no entry left to a round, so that CRIU reads none of them
//! ([`overboot_checkpoint::pagemap::flatten`]). (CRIU 3.17's own `criu lazy-pages`
//! cannot: it serves only the pages the final dump wrote.) Trees with little memory are
//! restored whole ([`MIN_SERVED_BYTES`]).
//!
//! The server puts in only checked bytes, but it checks them itself: the restore's gate
//! verifies everything CRIU reads before any restored task runs, and leaves the 1 MiB pieces
//! of the memory pages that CRIU reads nothing from ([`PIECES`], written by each server); the
//! server checks each piece it reads from against its digest in the map (format 3.1) before
//! its first page goes in. So the
//! check no longer grows the blackout with the memory carried — and a damaged piece, found
//! after the tasks ran, can no longer roll the update back: the server kills the tasks it
//! serves rather than feed them damaged memory. The other trust put in it: until it is done,
//! a task's missing pages exist only in the map, and should the server die, the kernel hands
//! the task zero-filled pages instead (so a server that fails kills its tasks too). That is
//! why it is an option, and why an update refuses to start while a server of the previous one
//! still serves.
//!
//! Each server's pid is recorded in the work dir ([`crate::host::served::DAEMONS`]), so that the next update can
//! tell the previous one is still copying: CRIU cannot dump a task with userfaultfd ranges.
//! The server is a fork of the agent, not a new program (see [`crate::host::forked`]); its parent
//! stays and writes its exit code beside its log ([`STATUS`]): 0 once every page came back.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::host::served::{COMM, VERB};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use overboot_pageserver::served_pieces;
use overboot_pageserver::PIECES;

/// The server's log (its stderr), in the directory it serves.
pub const LOG: &str = "lazy-pages.log";

/// The daemon's exit code, written in the directory it serves once it exited: 0 when every
/// page came back.
pub const STATUS: &str = "lazy-pages.status";

/// The daemon's pid, in the directory it serves.
const PID: &str = "lazy-pages.pid";

/// The socket CRIU's restore connects to, relative to the work dir both share.
const SOCKET: &str = overboot_pageserver::SOCKET;

/// How long a server may take to listen (it indexes its pagemaps first: a tree per server,
/// all starting at once, under TCG).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a daemon could not serve.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The shell that runs the page server could not be started.
    #[error("cannot start {shell} to run the page server")]
    Spawn {
        shell: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent could not fork the page server.
    #[error("cannot fork the agent to run the page server")]
    Fork {
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before it listened.
    #[error("the page server exited ({status}) before it listened; see {log}")]
    Exited {
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    /// The daemon did not listen in time.
    #[error("the page server did not listen on {socket} within {secs} s", secs = LISTEN_TIMEOUT.as_secs())]
    Timeout { socket: PathBuf },
}

/// A started daemon.
#[derive(Debug)]
pub struct Daemon {
    parent: Parent,
    pid: i32,
    /// Its log file.
    pub log: PathBuf,
}

/// The daemon's parent, which writes its exit code: leader of their process group.
#[derive(Debug)]
enum Parent {
    /// A fork of the agent (see [`crate::host::forked::daemon`]), by pid.
    Forked(i32),
    /// A shell.
    Shell(Child),
}

impl Parent {
    /// Its exit status, once it exited (the daemon did before it).
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Parent::Forked(pid) => crate::host::forked::try_wait(*pid).ok().flatten(),
            Parent::Shell(child) => child.try_wait().ok().flatten(),
        }
    }

    /// Kills the group (the parent and its daemon) and reaps the parent.
    fn stop(&mut self) {
        let leader = match self {
            Parent::Forked(pid) => *pid,
            Parent::Shell(child) => i32::try_from(child.id()).unwrap_or(0),
        };
        if leader > 0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(leader),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match self {
            Parent::Forked(pid) => drop(crate::host::forked::wait(*pid)),
            Parent::Shell(child) => drop(child.wait()),
        }
    }
}

impl Daemon {
    /// The daemon's pid (not its parent's).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Stops it (the restore it was for did not happen).
    pub fn stop(mut self) {
        self.parent.stop();
    }

    /// Leaves it running on its own: it exits when every page is back.
    pub fn detach(self) -> i32 {
        self.pid
    }
}

/// Starts the page server for the restore images in `dir` (also the restore's work dir, where
/// the socket and its log go), whose page files are in the map at `map` (for their piece
/// digests), and waits until it listens. A parent stays with it to write its exit code to
/// [`STATUS`] in `dir` when it is done (0: every page came back).
///
/// The server is a fork of the calling agent ([`crate::host::forked::daemon`]; it names itself
/// [`COMM`]) when the agent has one thread; otherwise `overboot` — the binary at `program` —
/// run as [`VERB`] by a shell, which then is that parent.
pub fn start(program: &Path, dir: &Path, map: &Path) -> Result<Daemon, LazyError> {
    let socket = dir.join(SOCKET);
    let log = dir.join(LOG);
    let pid_file = dir.join(PID);
    for stale in [&socket, &pid_file, &dir.join(STATUS), &dir.join(PIECES)] {
        let _ = std::fs::remove_file(stale);
    }
    let mut parent = match fork(dir, map) {
        Ok(Some(waiter)) => Parent::Forked(waiter),
        Ok(None) => Parent::Shell(shell(program, dir, map)?),
        Err(source) => return Err(LazyError::Fork { source }),
    };
    let start = Instant::now();
    loop {
        if let Some(status) = parent.try_wait() {
            return Err(LazyError::Exited { status, log });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let (Some(pid), true) = (pid, socket.exists()) {
            return Ok(Daemon { parent, pid, log });
        }
        if start.elapsed() > LISTEN_TIMEOUT {
            parent.stop();
            return Err(LazyError::Timeout { socket });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Forks the server (see [`start`]): the waiter's pid, `None` when the agent has threads.
fn fork(dir: &Path, map: &Path) -> std::io::Result<Option<i32>> {
    let serve = || {
        if let Ok(name) = std::ffi::CString::new(COMM) {
            let _ = nix::sys::prctl::set_name(&name);
        }
        match overboot_pageserver::serve_and_log(dir, map) {
            Ok(()) => 0,
            Err(e) => {
                crate::model::exit::print_failure(&overboot_pageserver::FAILED, Some(&e));
                crate::ExitClass::Restore as u8
            }
        }
    };
    let write = |name: &str, value: i32| {
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = std::fs::write(&tmp, format!("{value}\n"))
            .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    };
    crate::host::forked::daemon(
        dir,
        &dir.join(LOG),
        serve,
        |pid| write(PID, pid),
        |code| write(STATUS, code),
    )
}

/// Starts the server as a program, through a shell that stays its parent (see [`start`]).
fn shell(program: &Path, dir: &Path, map: &Path) -> Result<Child, LazyError> {
    let script = format!(
        "\"$0\" {VERB} \"$1\" --map \"$2\" 2> {LOG} & echo $! > {PID}.tmp && mv {PID}.tmp {PID}; \
         wait $!; echo $? > {STATUS}.tmp && mv {STATUS}.tmp {STATUS}"
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(program)
        .arg(dir)
        .arg(map)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: no signal meant for the agent reaches it, and stopping it
        // reaches the daemon too.
        .process_group(0)
        .spawn()
        .map_err(|source| LazyError::Spawn {
            shell: PathBuf::from("/bin/sh"),
            source,
        })
}

/// A tree whose page files (every round's) hold less than this is restored whole even with
/// `--lazy-restore`: starting its page server (a process that reads and indexes the pagemaps)
/// costs the blackout more than CRIU putting those pages in. Measured in the lab's guests: a
/// server costs 0.3–0.6 s before the restore can start (a tree of a few pages pays it for
/// nothing); a 64 MiB Redis came back in 1.4–2.6 s whole against 1.6–1.7 s lazily, a 512 MiB
/// one in 4.6–4.9 s against 1.9–4.0 s.
pub const MIN_SERVED_BYTES: u64 = 128 << 20;

/// The bytes of the memory page files (`pages-*.img`) of the images in `images` and of the
/// pre-copy rounds below it (`parent/`, `parent/parent/`, ...).
pub fn page_bytes(images: &Path) -> u64 {
    let mut total = 0;
    let mut dir = images.to_path_buf();
    // Bounded: a chain is as long as the pre-copy rounds, never a cycle worth following.
    for _ in 0..64 {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            break;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("pages-") && name.ends_with(".img") {
                // Through links: the restore's copy links the map's files.
                total += std::fs::metadata(entry.path()).map_or(0, |m| m.len());
            }
        }
        dir = dir.join("parent");
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bytes_counts_every_round_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let (top, round) = (dir.path().join("top"), dir.path().join("round-1"));
        std::fs::create_dir_all(&top).unwrap();
        std::fs::create_dir_all(&round).unwrap();
        std::fs::write(round.join("pages-1.img"), vec![0; 3 * 4096]).unwrap();
        std::fs::write(round.join("pagemap-7.img"), b"not counted").unwrap();
        std::fs::write(dir.path().join("map-pages"), vec![0; 4096]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("map-pages"), top.join("pages-2.img")).unwrap();
        std::os::unix::fs::symlink("../round-1", top.join("parent")).unwrap();
        assert_eq!(page_bytes(&top), 4 * 4096);
        assert_eq!(page_bytes(&round), 3 * 4096);
        assert_eq!(page_bytes(&dir.path().join("absent")), 0);
    }

    #[test]
    fn a_daemon_that_cannot_start_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        // `false` exits at once without listening, and so does a missing binary; the shell
        // records the exit code either way.
        for criu in ["false", "/nonexistent/criu"] {
            match start(Path::new(criu), dir.path(), dir.path()) {
                Err(LazyError::Exited { .. }) => {}
                other => panic!("{criu}: expected Exited, got {other:?}"),
            }
            let status = std::fs::read_to_string(dir.path().join(STATUS)).unwrap();
            assert_ne!(status.trim(), "0", "{criu}");
        }
    }
}
