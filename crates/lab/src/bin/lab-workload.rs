//! Workload programs that run inside lab guests and are carried across kernel switches.
//!
//! Each writes line-oriented records to a log file (on the guest's ext4 data disk) that the
//! host-side test parses after the switch: counters must continue, checksums must hold, sequence
//! numbers must have no gap, duplicate or reordering, clocks must never go backwards.
//!
//! ```text
//! lab-workload mem    LOG MIB THREADS   heap of MIB MiB, THREADS threads checksumming it
//! lab-workload pipes  LOG               three processes passing a sequence number through pipes
//! lab-workload append FILE              numbered records, each with the offset it was written at
//! lab-workload unix   LOG               ping/pong over a unix socketpair between two processes
//! lab-workload clock  LOG               CLOCK_MONOTONIC/BOOTTIME/REALTIME every 10 ms
//! lab-workload uring  LOG               holds an io_uring instance (CRIU 3.17 cannot dump it)
//! lab-workload tcpout LOG HOST PORT     one outbound TCP connection exchanging numbered lines
//!                                       with an echo server (never reconnects)
//! lab-workload timens OFFSETS           not a workload but a probe: writes OFFSETS to
//!                                       /proc/self/timens_offsets of a new time namespace and
//!                                       prints whether the kernel took them and what it keeps
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, LineWriter, Seek, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{fork, pipe, ForkResult};

/// A record log: each line reaches the file in one write(2) (`writeln!` on a bare `File`
/// writes every formatted piece separately, so a writer stopped between two of them — the tests
/// stop it before reading the log from the disk — leaves half a record).
fn log_file(path: &str) -> LineWriter<File> {
    LineWriter::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}")),
    )
}

fn now_ns(clock: ClockId) -> i128 {
    let ts = clock_gettime(clock).expect("clock_gettime");
    i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
}

/// Fills `buf` with a deterministic pattern (xorshift64) and returns its checksum.
fn fill(buf: &mut [u64], seed: u64) {
    let mut x = seed | 1;
    for word in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *word = x;
    }
}

fn checksum(buf: &[u64]) -> u64 {
    buf.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, w| {
        (h ^ w).wrapping_mul(0x0100_0000_01b3)
    })
}

fn mem(log: &str, mib: usize, threads: usize) {
    let words = mib * 1024 * 1024 / 8;
    let per = words / threads;
    let mut heap = vec![0u64; words];
    let chunks: Vec<(u64, &mut [u64])> = heap
        .chunks_mut(per)
        .enumerate()
        .map(|(i, c)| (i as u64 + 1, c))
        .collect();
    let mut sums = Vec::new();
    for (seed, chunk) in chunks {
        fill(chunk, seed);
        sums.push(checksum(chunk));
    }
    let expected = sums.iter().fold(0u64, |a, s| a.rotate_left(5) ^ s);
    let heap: Arc<Vec<u64>> = Arc::new(heap);
    let passes = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    for t in 0..threads {
        let heap = Arc::clone(&heap);
        let passes = Arc::clone(&passes);
        let bad = Arc::clone(&bad);
        let want = sums[t];
        std::thread::spawn(move || loop {
            let slice = &heap[t * per..(t + 1) * per];
            if checksum(slice) != want {
                bad.fetch_add(1, Ordering::SeqCst);
            }
            passes.fetch_add(1, Ordering::SeqCst);
        });
    }
    let mut out = log_file(log);
    writeln!(
        out,
        "start pid={} mib={mib} threads={threads} checksum={expected:016x}",
        std::process::id()
    )
    .ok();
    let mut counter: u64 = 0;
    loop {
        counter += 1;
        // The threads never write: recomputing the whole checksum here proves the memory is
        // intact, the passes counter proves the threads run.
        let sum = heap
            .chunks(per)
            .take(threads)
            .map(checksum)
            .fold(0u64, |a, s| a.rotate_left(5) ^ s);
        writeln!(
            out,
            "tick pid={} counter={counter} checksum={sum:016x} passes={} bad={} threads={}",
            std::process::id(),
            passes.load(Ordering::SeqCst),
            bad.load(Ordering::SeqCst),
            thread_count()
        )
        .ok();
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn pipes(log: &str) {
    let (r1, w1) = pipe().expect("pipe");
    let (r2, w2) = pipe().expect("pipe");
    // SAFETY: called before any thread is spawned in this process, so the child is a plain copy.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(w1);
            drop(r2);
            // Middle: forward every number unchanged.
            let mut input = BufReader::new(File::from(r1));
            let mut output = File::from(w2);
            let mut line = String::new();
            loop {
                line.clear();
                if input.read_line(&mut line).unwrap_or(0) == 0 {
                    std::process::exit(0);
                }
                if output.write_all(line.as_bytes()).is_err() {
                    std::process::exit(1);
                }
            }
        }
        ForkResult::Parent { .. } => {}
    }
    drop(r1);
    drop(w2);
    // SAFETY: single-threaded process, as above.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(w1);
            // Sink: log what arrives, and whether it is the successor of the previous one.
            let mut input = BufReader::new(File::from(r2));
            let mut out = log_file(log);
            let mut last: u64 = 0;
            let mut line = String::new();
            loop {
                line.clear();
                if input.read_line(&mut line).unwrap_or(0) == 0 {
                    std::process::exit(0);
                }
                let n: u64 = line.trim().parse().unwrap_or(0);
                let ok = n == last + 1;
                writeln!(out, "seq {n} ok={ok} pid={}", std::process::id()).ok();
                last = n;
            }
        }
        ForkResult::Parent { .. } => {}
    }
    drop(r2);
    let mut output = File::from(w1);
    let mut n: u64 = 0;
    loop {
        n += 1;
        if writeln!(output, "{n}").is_err() {
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn append(path: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut expected: u64 = 0;
    let mut n: u64 = 0;
    loop {
        n += 1;
        let offset = file.stream_position().expect("offset");
        let record = format!(
            "rec {n:08} off {offset:010} pid {:07} ok {}\n",
            std::process::id(),
            u8::from(offset == expected)
        );
        file.write_all(record.as_bytes()).expect("write");
        expected = offset + record.len() as u64;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unix(log: &str) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    // SAFETY: single-threaded process at this point.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(a);
            let mut reader = BufReader::new(b.try_clone().expect("clone"));
            let mut writer = b;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    std::process::exit(0);
                }
                let reply = line.replace("ping", "pong");
                if writer.write_all(reply.as_bytes()).is_err() {
                    std::process::exit(1);
                }
            }
        }
        ForkResult::Parent { .. } => {}
    }
    drop(b);
    let mut out = log_file(log);
    let mut reader = BufReader::new(a.try_clone().expect("clone"));
    let mut writer = a;
    let mut line = String::new();
    let mut n: u64 = 0;
    loop {
        n += 1;
        writeln!(writer, "ping {n}").expect("send");
        line.clear();
        reader.read_line(&mut line).expect("recv");
        let ok = line.trim() == format!("pong {n}");
        writeln!(out, "pong {n} ok={ok} pid={}", std::process::id()).ok();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn clock(log: &str) {
    let mut out = log_file(log);
    let mut last_mono = 0;
    let mut last_boot = 0;
    loop {
        let mono = now_ns(ClockId::CLOCK_MONOTONIC);
        let boot = now_ns(ClockId::CLOCK_BOOTTIME);
        let real = now_ns(ClockId::CLOCK_REALTIME);
        let ok = mono >= last_mono && boot >= last_boot;
        writeln!(
            out,
            "clock mono={mono} boot={boot} real={real} ok={ok} pid={}",
            std::process::id()
        )
        .ok();
        last_mono = mono;
        last_boot = boot;
        std::thread::sleep(Duration::from_millis(10));
    }
}

mod sys {
    /// `io_uring_setup(2)`, which neither std nor nix wraps.
    pub fn io_uring_setup(entries: u32) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        // struct io_uring_params is 120 bytes; zeroed means "defaults".
        let mut params = [0u8; 120];
        // SAFETY: io_uring_setup reads and writes `params`, a live buffer of the size the kernel
        // expects; it returns a new fd or -1 and touches no other memory of ours.
        let ret = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, params.as_mut_ptr()) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = i32::try_from(ret).map_err(std::io::Error::other)?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }
}

fn uring(log: &str) {
    let ring = sys::io_uring_setup(8).expect("io_uring_setup");
    let mut out = log_file(log);
    let mut n: u64 = 0;
    loop {
        n += 1;
        writeln!(out, "uring {n} pid={} ring={ring:?}", std::process::id()).ok();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One outbound connection to an echo server: send `line N`, expect it back, log
/// `echo N ok=<bool> pid=P` every 50 ms. A reset, EOF or a wrong echo is logged and ends the
/// process: it never reconnects, so an unbroken sequence with one pid proves the connection
/// itself survived.
fn tcpout(log: &str, host: &str, port: u16) -> ExitCode {
    let mut out = log_file(log);
    let pid = std::process::id();
    let stream = match std::net::TcpStream::connect((host, port)) {
        Ok(s) => s,
        Err(e) => {
            writeln!(out, "error connect {host}:{port}: {e} pid={pid}").ok();
            return ExitCode::FAILURE;
        }
    };
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    let mut n: u64 = 0;
    loop {
        n += 1;
        if let Err(e) = writeln!(writer, "line {n}") {
            writeln!(out, "error send {n}: {e} pid={pid}").ok();
            return ExitCode::FAILURE;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => {
                writeln!(out, "error eof at {n} pid={pid}").ok();
                return ExitCode::FAILURE;
            }
            Ok(_) => {}
            Err(e) => {
                writeln!(out, "error recv {n}: {e} pid={pid}").ok();
                return ExitCode::FAILURE;
            }
        }
        let ok = line.trim_end() == format!("line {n}");
        writeln!(out, "echo {n} ok={ok} pid={pid}").ok();
        if !ok {
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live-patch lab test's probe of a stable fix (time/namespace: validate the nanoseconds
/// of `/proc/PID/timens_offsets`): unshares a time namespace for this process's children,
/// writes `offsets` to its offsets file and prints `write: accepted` or `write: rejected
/// <errno>`, then the offsets the kernel keeps, as the file shows them.
fn timens(offsets: &str) -> ExitCode {
    if let Err(e) = unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)) {
        eprintln!("unshare(CLONE_NEWTIME): {e}");
        return ExitCode::FAILURE;
    }
    let path = "/proc/self/timens_offsets";
    let written = OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(offsets.as_bytes()));
    match written {
        Ok(()) => println!("write: accepted"),
        Err(e) => match e.raw_os_error() {
            Some(code) => println!("write: rejected {:?}", Errno::from_raw(code)),
            None => println!("write: rejected {e}"),
        },
    }
    match std::fs::read_to_string(path) {
        Ok(kept) => print!("{kept}"),
        Err(e) => {
            eprintln!("read {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: lab-workload mem LOG MIB THREADS | pipes LOG | append FILE | unix LOG | clock LOG \
         | uring LOG | tcpout LOG HOST PORT | timens OFFSETS"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned();
    match (arg(1).as_deref(), arg(2)) {
        (Some("mem"), Some(log)) => {
            let mib = arg(3).and_then(|s| s.parse().ok()).unwrap_or(256);
            let threads = arg(4).and_then(|s| s.parse().ok()).unwrap_or(1);
            mem(&log, mib, threads);
        }
        (Some("pipes"), Some(log)) => pipes(&log),
        (Some("append"), Some(file)) => append(&file),
        (Some("unix"), Some(log)) => unix(&log),
        (Some("clock"), Some(log)) => clock(&log),
        (Some("uring"), Some(log)) => uring(&log),
        (Some("tcpout"), Some(log)) => {
            let (Some(host), Some(port)) = (arg(3), arg(4).and_then(|p| p.parse().ok())) else {
                return usage();
            };
            return tcpout(&log, &host, port);
        }
        (Some("timens"), Some(offsets)) => return timens(&offsets),
        _ => return usage(),
    }
    ExitCode::SUCCESS
}
