//! The network side of a lab scenario: host ports forwarded into the guest over QEMU's user-mode
//! network, the Redis service a test carries across an update, and a host echo server that a
//! guest process keeps an outbound connection to.
//!
//! ```text
//!  host                                   QEMU user net (slirp)          guest (10.0.2.15)
//!  127.0.0.1:<redis_port>  ── hostfwd ──────────────────────────────────► :6379 redis-server
//!  127.0.0.1:<echo port>   ◄───────────── 10.0.2.2:<echo port> ◄──────── lab-workload tcpout
//! ```
//!
//! Everything here talks only to 127.0.0.1; every loop is bounded in count and time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The guest's address on QEMU's user network.
pub const GUEST_ADDR: &str = "10.0.2.15";
/// The host as the guest sees it on QEMU's user network.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// Redis's port in the guest.
pub const REDIS_GUEST_PORT: u16 = 6379;
/// The guest log of the Redis service (its stderr; stdout goes there too).
pub const REDIS_LOG: &str = "/lab/wl/redis.err";

/// Errors of the network helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No free port on 127.0.0.1, or the echo server could not listen.
    #[error("binding 127.0.0.1")]
    Bind(#[source] std::io::Error),
    /// The echo server thread could not be started.
    #[error("starting the echo server thread")]
    Thread(#[source] std::io::Error),
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released for QEMU).
pub fn free_port() -> Result<u16, NetError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(NetError::Bind)?;
    Ok(listener.local_addr().map_err(NetError::Bind)?.port())
}

/// `n` distinct free ports on 127.0.0.1 (all held at once while they are picked).
pub fn free_ports(n: usize) -> Result<Vec<u16>, NetError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(NetError::Bind))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(NetError::Bind))
        .collect()
}

/// The shell command that starts Redis in the guest, detached, without persistence, listening
/// on every address; it prints `@@PID redis <pid>`.
pub fn redis_start_command() -> String {
    redis_start_command_with("")
}

/// Like [`redis_start_command`] with extra `redis-server` options (e.g. `--dir` and
/// `--dbfilename`, to load and `SAVE` an RDB file).
pub fn redis_start_command_with(options: &str) -> String {
    format!(
        "setsid redis-server --port {REDIS_GUEST_PORT} --bind 0.0.0.0 --protected-mode no \
         --save '' --appendonly no --daemonize no {options} </dev/null >{REDIS_LOG} 2>&1 & \
         echo \"@@PID redis $!\""
    )
}

/// The shell command that starts the outbound-connection workload, printing `@@PID tcpout <pid>`.
pub fn tcpout_start_command(log: &str, port: u16) -> String {
    format!(
        "setsid lab-workload tcpout {log} {HOST_FROM_GUEST} {port} </dev/null \
         >/lab/wl/tcpout.err 2>&1 & echo \"@@PID tcpout $!\""
    )
}

/// The pid in a `@@PID <name> <pid>` line of a guest command's output.
pub fn parse_pid(lines: &[String], name: &str) -> Option<i32> {
    let prefix = format!("@@PID {name} ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|p| p.trim().parse().ok())
}

/// What the echo server saw, per accepted connection (in accept order).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EchoStats {
    /// Connections accepted.
    pub connections: u64,
    /// Lines echoed on each connection.
    pub lines: Vec<u64>,
    /// How each connection ended (`open`, `eof`, or the error).
    pub ends: Vec<String>,
}

/// A host TCP server on 127.0.0.1 that echoes every line back on the connection it came from.
/// The guest reaches it at `10.0.2.2:<port>`. It stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    stats: Arc<std::sync::Mutex<BTreeMap<u64, (u64, String)>>>,
    thread: Option<JoinHandle<()>>,
}

/// How long the echo server runs at most, and how many connections it accepts.
const ECHO_MAX_RUN: Duration = Duration::from_secs(3600);
const ECHO_MAX_CONNECTIONS: u64 = 16;

impl EchoServer {
    /// Listens on a free port of 127.0.0.1 and serves in a thread.
    pub fn start() -> Result<EchoServer, NetError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(NetError::Bind)?;
        let port = listener.local_addr().map_err(NetError::Bind)?.port();
        listener.set_nonblocking(true).map_err(NetError::Bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let (s, a, st) = (Arc::clone(&stop), Arc::clone(&accepted), Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || accept_loop(&listener, &s, &a, &st))
            .map_err(NetError::Thread)?;
        Ok(EchoServer {
            port,
            stop,
            accepted,
            stats,
            thread: Some(thread),
        })
    }

    /// The port on 127.0.0.1 (and on 10.0.2.2 from the guest).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server saw so far.
    pub fn stats(&self) -> EchoStats {
        let map = self
            .stats
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        EchoStats {
            connections: self.accepted.load(Ordering::SeqCst),
            lines: map.values().map(|(n, _)| *n).collect(),
            ends: map.values().map(|(_, e)| e.clone()).collect(),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type EchoTable = Arc<std::sync::Mutex<BTreeMap<u64, (u64, String)>>>;

fn accept_loop(
    listener: &TcpListener,
    stop: &Arc<AtomicBool>,
    accepted: &AtomicU64,
    stats: &EchoTable,
) {
    let deadline = Instant::now() + ECHO_MAX_RUN;
    let mut workers = Vec::new();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) if accepted.load(Ordering::SeqCst) < ECHO_MAX_CONNECTIONS => {
                let id = accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut m) = stats.lock() {
                    m.insert(id, (0, "open".into()));
                }
                let (stop, table) = (Arc::clone(stop), Arc::clone(stats));
                let worker = std::thread::Builder::new()
                    .name(format!("echo-{id}"))
                    .spawn(move || {
                        let end = echo_lines(&stream, id, &table, &stop, deadline);
                        if let Ok(mut m) = table.lock() {
                            if let Some(entry) = m.get_mut(&id) {
                                entry.1 = end;
                            }
                        }
                    });
                workers.extend(worker.ok());
            }
            // Over the connection budget: dropped at once.
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Connection threads end on EOF, error, the stop flag or the deadline (reads time out
    // every 200 ms).
    for w in workers {
        let _ = w.join();
    }
}

fn echo_lines(
    stream: &TcpStream,
    id: u64,
    table: &EchoTable,
    stop: &AtomicBool,
    deadline: Instant,
) -> String {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_read_timeout(Some(Duration::from_millis(200))) {
        return e.to_string();
    }
    let mut reader = BufReader::new(stream);
    let mut writer = stream;
    let mut line = Vec::new();
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return "eof".into(),
            Ok(_) if line.ends_with(b"\n") => {
                if let Err(e) = writer.write_all(&line) {
                    return e.to_string();
                }
                line.clear();
                if let Ok(mut m) = table.lock() {
                    if let Some(entry) = m.get_mut(&id) {
                        entry.0 += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return e.to_string(),
        }
    }
    "open".into()
}

/// `127.0.0.1:<port>`.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
