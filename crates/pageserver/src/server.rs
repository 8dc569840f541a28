//! The server proper: it listens for the restore, takes each task's userfaultfd, answers its
//! faults and events, and copies the rest in the background until every page is back (see the
//! crate's doc).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use overboot_checkpoint::pagemap::{Extent, PAGE_SIZE};
use overboot_sys as sys;

use crate::error::PageServerError;
use crate::event::{Event, MSG_SIZE};
use crate::index::{index, TaskPages};
use crate::missing::Missing;
use crate::pieces::{write_served_pieces, Pieces};
use crate::protocol::{RESTORE_FINISHED, SOCKET};
use crate::summary::{progress_line, Summary};

/// What a fault brings in at once, around the faulting page.
const FAULT_WINDOW: u64 = 64 * 1024;

/// What one background copy brings in: a fault that arrives meanwhile waits for it.
const CHUNK: u64 = 1024 * 1024;

/// The nice value of the background copy: the restored service and the agent come first (a
/// fault is handled at the server's own priority again, see [`Server::priority`]).
const BACKGROUND_NICE: i32 = 19;

/// How often the log says how far the server got, once the restore finished.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How often one copy may be told to come back after the task's address space changed.
const RETRIES: usize = 1000;

/// One task served: its userfaultfd and the pages it still misses.
#[derive(Debug)]
struct Task {
    pid: i32,
    uffd: File,
    missing: Missing,
}

/// How a copy ended.
enum Copied {
    /// Every page asked for is in (or was already).
    Done,
    /// The task's address space is changing: read its events, then ask again.
    Again,
    /// The task is gone.
    Gone,
}

/// The server's state.
struct Server {
    maps: Vec<memmap2::Mmap>,
    /// Per mapping: its path, the digest of each piece (none: checked whole by the gate) and
    /// which pieces were checked.
    pieces: Vec<Pieces>,
    index: TaskPages,
    tasks: Vec<Task>,
    /// Faults read (with when) while another copy waited for the address space to settle.
    pending: VecDeque<(i32, u64, Instant)>,
    finished: Option<Instant>,
    summary: Summary,
    /// The summary when the log last told the progress, and when.
    progress: Option<(Instant, Summary)>,
    /// The nice value the server started with, and whether it runs at [`BACKGROUND_NICE`].
    own_nice: i32,
    background_nice: bool,
}

/// The calling thread's nice value (field 19 of `/proc/thread-self/stat`; 0 if unreadable).
fn current_nice() -> i32 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| {
            // The command name (field 2) may hold spaces: count from its closing parenthesis.
            let rest = stat.get(stat.rfind(')')? + 1..)?.to_owned();
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .unwrap_or(0)
}

/// [`serve`], then its summary ([`Summary::line`]) on stderr: the log's last line.
pub fn serve_and_log(dir: &Path, map: &Path) -> Result<(), PageServerError> {
    use std::io::Write;
    let started = Instant::now();
    let summary = serve(dir, map)?;
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}",
        summary.line(started.elapsed())
    );
    Ok(())
}

/// Serves the restore of the images in `dir` (the current directory holds the socket), whose
/// page files are in the map at `map`, until every page is back.
pub fn serve(dir: &Path, map: &Path) -> Result<Summary, PageServerError> {
    let started = Instant::now();
    let (maps, pieces, index, eager, flat) = index(dir, map)?;
    write_served_pieces(dir, map, &pieces, &eager);
    let summary = Summary {
        pages: index.values().flatten().map(|e| e.len() / PAGE_SIZE).sum(),
        index_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        flat,
        ..Summary::default()
    };
    let mut server = Server::new(maps, pieces, index, summary, current_nice());
    let socket = Path::new(SOCKET);
    let listen_error = |source| PageServerError::Listen {
        path: dir.join(SOCKET),
        source,
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(listen_error)?;
    let (client, _) = listener.accept().map_err(listen_error)?;
    drop(listener);
    let result = server.run(client);
    if result.is_err() {
        server.kill_all();
    }
    result.map(|()| server.summary)
}

impl Server {
    /// A server of the page files in `maps` (their `pieces`, and where each task's pages lie in
    /// them, `index`) that serves no task yet, started at nice value `own_nice`.
    fn new(
        maps: Vec<memmap2::Mmap>,
        pieces: Vec<Pieces>,
        index: TaskPages,
        summary: Summary,
        own_nice: i32,
    ) -> Self {
        Server {
            maps,
            pieces,
            index,
            tasks: Vec::new(),
            pending: VecDeque::new(),
            finished: None,
            summary,
            progress: None,
            own_nice,
            background_nice: false,
        }
    }

    fn run(&mut self, client: UnixStream) -> Result<(), PageServerError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut client = Some(client);
        loop {
            if !self.pending.is_empty() {
                self.priority(false);
            }
            while let Some((pid, addr, read)) = self.pending.pop_front() {
                self.fault(pid, addr)?;
                let waited = u64::try_from(read.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.summary.slowest_fault_us = self.summary.slowest_fault_us.max(waited);
            }
            self.log_progress();
            let busy = self.finished.is_some() && self.tasks.iter().any(|t| !t.missing.is_empty());
            if self.finished.is_some() && !busy {
                if let Some(at) = self.finished {
                    self.summary.after_restore_ms =
                        u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                }
                return Ok(());
            }
            let (client_ready, ready) = {
                let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.tasks.len() + 1);
                if let Some(c) = &client {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                fds.extend(
                    self.tasks
                        .iter()
                        .map(|t| PollFd::new(t.uffd.as_fd(), PollFlags::POLLIN)),
                );
                let timeout = if busy {
                    PollTimeout::ZERO
                } else {
                    PollTimeout::NONE
                };
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(PageServerError::Poll(e.into())),
                }
                let is_ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                let skip = usize::from(client.is_some());
                let client_ready = client.is_some() && is_ready(&fds[0]);
                let ready: Vec<i32> = fds[skip..]
                    .iter()
                    .zip(&self.tasks)
                    .filter(|(fd, _)| is_ready(fd))
                    .map(|(_, t)| t.pid)
                    .collect();
                (client_ready, ready)
            };
            if client_ready {
                if let Some(c) = client.as_mut() {
                    if !self.read_restore(c)? {
                        client = None;
                    }
                }
            }
            if client_ready || !ready.is_empty() {
                self.priority(false);
            }
            for pid in &ready {
                self.read_events(*pid)?;
            }
            if busy && !client_ready && ready.is_empty() && self.pending.is_empty() {
                self.priority(true);
                self.background()?;
            }
        }
    }

    /// Reads one message of the restore; false when it closed the connection.
    fn read_restore(&mut self, client: &mut UnixStream) -> Result<bool, PageServerError> {
        let mut word = [0u8; 4];
        match client.read(&mut word[..1]) {
            Ok(0) if self.finished.is_some() => return Ok(false),
            Ok(0) => return Err(PageServerError::HungUp),
            Ok(_) => {}
            Err(e) => return Err(PageServerError::Restore(e)),
        }
        client
            .read_exact(&mut word[1..])
            .map_err(PageServerError::Restore)?;
        if u32::from_ne_bytes(word) == RESTORE_FINISHED {
            self.finished = Some(Instant::now());
            self.progress = Some((Instant::now(), self.summary.clone()));
            return Ok(true);
        }
        let pid = i32::from_ne_bytes(word);
        let Ok(key) = u32::try_from(pid) else {
            return Ok(true); // a zombie: no memory, no descriptor
        };
        let uffd = sys::recv_fd(client.as_fd()).map_err(|e| PageServerError::Restore(e.into()))?;
        let extents = self
            .index
            .get(&key)
            .ok_or(PageServerError::UnknownTask(pid))?;
        self.tasks.push(Task {
            pid,
            uffd: File::from(uffd),
            missing: Missing::new(extents.iter().copied()),
        });
        self.summary.tasks += 1;
        Ok(true)
    }

    /// Reads and handles every event waiting on task `pid`'s userfaultfd.
    fn read_events(&mut self, pid: i32) -> Result<(), PageServerError> {
        let mut buf = [0u8; MSG_SIZE * 16];
        loop {
            let Some(t) = self.tasks.iter().position(|t| t.pid == pid) else {
                return Ok(());
            };
            let n = match self.tasks[t].uffd.read(&mut buf) {
                Ok(0) => {
                    self.gone(t);
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PageServerError::Poll(e)),
            };
            for msg in buf[..n].chunks_exact(MSG_SIZE) {
                let msg: &[u8; MSG_SIZE] = msg.try_into().unwrap_or(&[0; MSG_SIZE]);
                self.event(t, Event::decode(msg))?;
            }
        }
    }

    /// Handles one event of task `t`; a fault is queued (see [`Server::pending`]).
    fn event(&mut self, t: usize, event: Event) -> Result<(), PageServerError> {
        let task = &mut self.tasks[t];
        match event {
            Event::Fault(addr) => self.pending.push_back((task.pid, addr, Instant::now())),
            Event::Fork(raw) => {
                let uffd = sys::adopt_event_fd(raw).map_err(|source| PageServerError::Uffd {
                    op: "adopting the userfaultfd of a forked child",
                    pid: task.pid,
                    addr: 0,
                    source,
                })?;
                let child = Task {
                    // The child's pid is not in the event: the fd number tells them apart.
                    pid: -uffd.as_raw_fd(),
                    missing: task.missing.clone(),
                    uffd: File::from(uffd),
                };
                self.tasks.push(child);
                self.summary.tasks += 1;
            }
            Event::Remap { from, to, len } => task.missing.remap(from, to, len),
            Event::Drop { start, end } => {
                let dropped: u64 = task
                    .missing
                    .take(start, end)
                    .iter()
                    .map(|e| e.len() / PAGE_SIZE)
                    .sum();
                self.summary.dropped_pages += dropped;
            }
            Event::Other(event) => {
                return Err(PageServerError::UnknownEvent {
                    pid: task.pid,
                    event,
                })
            }
        }
        Ok(())
    }

    /// Answers a fault of task `pid` at `addr`.
    fn fault(&mut self, pid: i32, addr: u64) -> Result<(), PageServerError> {
        self.summary.faults += 1;
        for _ in 0..RETRIES {
            // Looked up again each time: reading events may add or remove tasks.
            let Some(t) = self.tasks.iter().position(|task| task.pid == pid) else {
                return Ok(()); // it exited
            };
            let outcome = match self.tasks[t].missing.find(addr) {
                Some(e) => {
                    let window = addr & !(FAULT_WINDOW - 1);
                    let (start, end) = (e.start.max(window), e.end.min(window + FAULT_WINDOW));
                    let before = self.tasks[t].missing.pages();
                    let outcome = self.copy(t, start, end)?;
                    if let Some(task) = self.tasks.get(t).filter(|task| task.pid == pid) {
                        self.summary.fault_pages += before - task.missing.pages();
                    }
                    outcome
                }
                None => {
                    self.summary.zero_faults += 1;
                    self.zero(t, addr)?
                }
            };
            match outcome {
                Copied::Done | Copied::Gone => return Ok(()),
                Copied::Again => self.read_events(pid)?,
            }
        }
        Err(PageServerError::Unsettled { pid, addr })
    }

    /// Maps a zero page at `addr` of task `t`.
    fn zero(&mut self, t: usize, addr: u64) -> Result<Copied, PageServerError> {
        let task = &self.tasks[t];
        match sys::uffd_zeropage(task.uffd.as_fd(), addr, PAGE_SIZE) {
            Ok(_) => Ok(Copied::Done),
            Err(p) => match p.errno {
                Errno::EEXIST => Ok(Copied::Done),
                // No longer registered (unmapped, or discarded and unregistered): the thread
                // faults again and the kernel answers it.
                Errno::ENOENT => {
                    let _ = sys::uffd_wake(task.uffd.as_fd(), addr, PAGE_SIZE);
                    Ok(Copied::Done)
                }
                Errno::EAGAIN => Ok(Copied::Again),
                Errno::ESRCH | Errno::ENOSPC => {
                    self.gone(t);
                    Ok(Copied::Gone)
                }
                source => Err(PageServerError::Uffd {
                    op: "zero page",
                    pid: task.pid,
                    addr,
                    source,
                }),
            },
        }
    }

    /// Puts in what task `t` misses of `[start, end)`.
    fn copy(&mut self, t: usize, start: u64, end: u64) -> Result<Copied, PageServerError> {
        let pieces = self.tasks[t].missing.take(start, end);
        for (n, piece) in pieces.iter().enumerate() {
            let mut at = piece.start;
            while at < piece.end {
                let from = usize::try_from(piece.offset + (at - piece.start)).unwrap_or(usize::MAX);
                let len = usize::try_from(piece.end - at).unwrap_or(usize::MAX);
                self.check(piece.file, from, len)?;
                let task = &self.tasks[t];
                // Checked against the mapping's length when it was made.
                let src = &self.maps[piece.file][from..from + len];
                let errno = match sys::uffd_copy(task.uffd.as_fd(), at, src) {
                    Ok(done) => {
                        at += done;
                        continue;
                    }
                    Err(p) => {
                        at += p.done;
                        p.errno
                    }
                };
                match errno {
                    // Already there (the task faulted it in through another range): skip it.
                    Errno::EEXIST => at += PAGE_SIZE,
                    Errno::EAGAIN => {
                        let task = &mut self.tasks[t];
                        task.missing.put(Extent {
                            start: at,
                            offset: piece.offset + (at - piece.start),
                            ..*piece
                        });
                        for rest in &pieces[n + 1..] {
                            task.missing.put(*rest);
                        }
                        return Ok(Copied::Again);
                    }
                    // The range is no longer registered: unmapped meanwhile.
                    Errno::ENOENT => at = piece.end,
                    Errno::ESRCH | Errno::ENOSPC => {
                        self.gone(t);
                        return Ok(Copied::Gone);
                    }
                    source => {
                        return Err(PageServerError::Uffd {
                            op: "copy",
                            pid: task.pid,
                            addr: at,
                            source,
                        })
                    }
                }
            }
        }
        Ok(Copied::Done)
    }

    /// Checks, against their digests, the pieces of page file `file` under `[from, from + len)`
    /// not checked yet.
    fn check(&mut self, file: usize, from: usize, len: usize) -> Result<(), PageServerError> {
        let pieces = &mut self.pieces[file];
        if pieces.digests.is_empty() || len == 0 {
            return Ok(());
        }
        let size = usize::try_from(overboot_handover::CHUNK_BYTES).unwrap_or(usize::MAX);
        let map = &self.maps[file];
        for index in from / size..=(from + len - 1) / size {
            if pieces.checked.get(index).copied().unwrap_or(true) {
                continue;
            }
            let start = index * size;
            let end = (start + size).min(map.len());
            let actual = overboot_handover::chunk_digest(&map[start..end]);
            if actual != pieces.digests[index] {
                return Err(PageServerError::Corrupt {
                    path: pieces.path.clone(),
                    start: start as u64,
                    end: end as u64,
                    expected: pieces.digests[index].clone(),
                    actual,
                });
            }
            pieces.checked[index] = true;
            self.summary.checked_bytes += (end - start) as u64;
        }
        Ok(())
    }

    /// Every [`PROGRESS_EVERY`] after the restore finished, a line on stderr (the log): what
    /// came in since the last, and what is left.
    fn log_progress(&mut self) {
        use std::io::Write;
        let (Some(finished), Some((last, before))) = (self.finished, &self.progress) else {
            return;
        };
        if last.elapsed() < PROGRESS_EVERY {
            return;
        }
        let line = progress_line(
            finished.elapsed(),
            before,
            &self.summary,
            self.tasks.iter().map(|t| t.missing.pages()).sum(),
        );
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        self.progress = Some((Instant::now(), self.summary.clone()));
    }

    /// Background copy at [`BACKGROUND_NICE`], everything else at the nice value the server
    /// started with. Best effort: a refusal leaves the priority as it is.
    fn priority(&mut self, background: bool) {
        if self.background_nice == background {
            return;
        }
        let nice = if background {
            BACKGROUND_NICE
        } else {
            self.own_nice
        };
        match sys::set_thread_nice(nice) {
            Ok(()) => self.background_nice = background,
            Err(e) => tracing::debug!(nice, error = %e, "cannot change the server's priority"),
        }
    }

    /// Copies the next chunk of the first task that still misses pages.
    fn background(&mut self) -> Result<(), PageServerError> {
        let Some((t, e)) = self
            .tasks
            .iter()
            .enumerate()
            .find_map(|(t, task)| task.missing.first().map(|e| (t, e)))
        else {
            return Ok(());
        };
        let before = self.tasks[t].missing.pages();
        let pid = self.tasks[t].pid;
        let outcome = self.copy(t, e.start, e.end.min(e.start + CHUNK))?;
        if let Some(task) = self.tasks.get(t).filter(|task| task.pid == pid) {
            self.summary.background_pages += before - task.missing.pages();
        }
        if let Copied::Again = outcome {
            self.read_events(pid)?;
        }
        Ok(())
    }

    /// Forgets task `t`: it exited.
    fn gone(&mut self, t: usize) {
        let task = self.tasks.remove(t);
        self.summary.dropped_pages += task.missing.pages();
        self.pending.retain(|(pid, _, _)| *pid != task.pid);
    }

    /// Kills every task still served (see the module doc).
    fn kill_all(&self) {
        for task in self.tasks.iter().filter(|t| t.pid > 0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(task.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_background_copy_runs_at_low_priority_and_faults_at_the_servers_own() {
        // On a thread of its own: the nice value is per thread.
        std::thread::spawn(|| {
            let own = current_nice();
            let mut server = Server::new(
                Vec::new(),
                Vec::new(),
                TaskPages::new(),
                Summary::default(),
                own,
            );
            server.priority(true);
            assert_eq!(current_nice(), BACKGROUND_NICE);
            server.priority(false);
            // Raising it back needs CAP_SYS_NICE (the agent runs as root).
            if nix::unistd::geteuid().is_root() {
                assert_eq!(current_nice(), own);
                assert!(!server.background_nice);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_piece_is_checked_once_before_use_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages-1.img");
        let mib = usize::try_from(overboot_handover::CHUNK_BYTES).unwrap();
        let mut bytes: Vec<u8> = (0..3 * mib).map(|i| (i % 251).to_le_bytes()[0]).collect();
        let digests = bytes
            .chunks(mib)
            .map(overboot_handover::chunk_digest)
            .collect();
        bytes[mib + 7] ^= 1; // damage in piece 1
        std::fs::write(&path, &bytes).unwrap();
        let map = overboot_handover::map_read_only(&File::open(&path).unwrap()).unwrap();
        let pieces = Pieces {
            path: path.clone(),
            size: 3 * mib,
            digests,
            checked: vec![false; 3],
        };
        let mut server = Server::new(
            vec![map],
            vec![pieces],
            TaskPages::new(),
            Summary::default(),
            0,
        );
        // Pieces 0 and 2 pass, each checked once.
        server.check(0, 4096, 8192).unwrap();
        server.check(0, 2 * mib, mib).unwrap();
        server.check(0, 0, 4096).unwrap();
        assert_eq!(
            server.summary.checked_bytes,
            2 * overboot_handover::CHUNK_BYTES
        );
        assert_eq!(server.pieces[0].checked, [true, false, true]);
        // A copy reaching into piece 1 is refused, naming its bytes.
        match server.check(0, mib - 4096, 8192) {
            Err(PageServerError::Corrupt { start, end, .. }) => {
                assert_eq!((start, end), (mib as u64, 2 * mib as u64));
            }
            other => panic!("expected the damaged piece refused, got {other:?}"),
        }
        // Without digests (checked by the gate), nothing is checked here.
        server.pieces[0] = Pieces {
            path,
            size: 3 * mib,
            digests: Vec::new(),
            checked: Vec::new(),
        };
        server.check(0, mib, 4096).unwrap();
    }
}
