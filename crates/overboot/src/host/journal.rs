//! A unit's stream connection to journald, carried across the switch.
//!
//! systemd connects a service's standard output and error to journald's `stdout` socket
//! before it executes the service, and opens the stream with a few lines of settings
//! (identifier, unit, priority, ...). journald keeps those settings, by the inode of its own
//! end, in `/run/systemd/journal/streams/<dev>:<ino>`. CRIU cannot checkpoint half of a
//! stream connection, and journald's half does not move to the new kernel anyway. So:
//!
//! ```text
//!  old kernel: inspection  tree's socket ──peer──► journald's end ── streams/<dev>:<ino>
//!              dump        CRIU: --external unix[<tree's inode>] (the tree's end only)
//!  new kernel: restore     connect /run/systemd/journal/stdout, write the same settings,
//!                          --inherit-fd fd[N]:socket:[<tree's inode>] → the tree's fd 1, 2, …
//! ```
//!
//! journald takes each line's sender from its credentials (`SO_PASSCRED`), so the lines the
//! restored service writes are its own (`_PID`, `_SYSTEMD_UNIT`), not the agent's that opened
//! the stream. The same reconnection serves a restore on the old kernel after a failed update.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    connect, setsockopt, shutdown, socket, sockopt, AddressFamily, Shutdown, SockFlag, SockType,
    UnixAddr,
};
use overboot_handover::JournalStream;

/// journald's socket for the streams of services' standard output and error.
pub const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";
/// Where journald keeps each stream's settings.
pub const STREAMS_DIR: &str = "/run/systemd/journal/streams";
/// The send buffer systemd gives a service's stream, so a burst of output does not block.
const SEND_BUFFER: usize = 8 * 1024 * 1024;

/// A C-escaped value as systemd's `cescape` writes it, unescaped.
fn cunescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match b[i + 1] {
            b'n' => (b'\n', 2),
            b't' => (b'\t', 2),
            b'r' => (b'\r', 2),
            b'a' => (7, 2),
            b'b' => (8, 2),
            b'f' => (12, 2),
            b'v' => (11, 2),
            b'x' => match s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => (v, 4),
                None => (b'x', 2),
            },
            d @ b'0'..=b'7' => match s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                Some(v) => (v, 4),
                None => (d, 2),
            },
            other => (other, 2),
        };
        out.push(byte);
        i += used;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The settings in one of journald's stream files; `inode` is left 0 for the caller.
pub fn parse_stream_file(text: &str) -> JournalStream {
    let mut stream = JournalStream {
        priority: 6, // LOG_INFO, journald's default
        ..JournalStream::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let flag = value.trim() == "1";
        match key {
            "PRIORITY" => stream.priority = value.trim().parse().unwrap_or(6),
            "LEVEL_PREFIX" => stream.level_prefix = flag,
            "FORWARD_TO_SYSLOG" => stream.forward_to_syslog = flag,
            "FORWARD_TO_KMSG" => stream.forward_to_kmsg = flag,
            "FORWARD_TO_CONSOLE" => stream.forward_to_console = flag,
            "IDENTIFIER" => stream.identifier = cunescape(value),
            "UNIT" => stream.unit = cunescape(value),
            _ => {}
        }
    }
    stream
}

/// journald's open streams, by the inode of journald's end; empty without journald.
pub fn streams_in(dir: &Path) -> HashMap<u64, JournalStream> {
    let mut streams = HashMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(ino) = name
            .split_once(':')
            .and_then(|(_, i)| i.parse::<u64>().ok())
        else {
            continue;
        };
        if let Ok(text) = fs::read_to_string(entry.path()) {
            streams.insert(ino, parse_stream_file(&text));
        }
    }
    streams
}

/// The opening lines of a stream, as systemd writes them for a service.
pub fn opening_lines(stream: &JournalStream) -> String {
    let flag = |b: bool| u8::from(b);
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        stream.identifier,
        stream.unit,
        stream.priority,
        flag(stream.level_prefix),
        flag(stream.forward_to_syslog),
        flag(stream.forward_to_kmsg),
        flag(stream.forward_to_console),
    )
}

/// Opens a new stream to the journald listening at `socket_path` with `stream`'s settings: a
/// socket for writing only, as systemd opens a service's.
pub fn connect_stream(socket_path: &Path, stream: &JournalStream) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(socket_path)?)?;
    shutdown(fd.as_raw_fd(), Shutdown::Read)?;
    if let Err(e) = setsockopt(&fd, sockopt::SndBufForce, &SEND_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the journal stream's send buffer");
    }
    let mut file = fs::File::from(fd);
    file.write_all(opening_lines(stream).as_bytes())?;
    Ok(OwnedFd::from(file))
}

/// The fds a restore hands the tree in place of its journal streams, each with CRIU's key
/// (`socket:[<inode>]`). A stream journald does not take (no journald in this boot) becomes
/// `/dev/null`, with a warning: the service keeps running, its output until its next start
/// is lost.
pub fn replacement_fds(streams: &[JournalStream]) -> Vec<(String, OwnedFd)> {
    streams
        .iter()
        .filter_map(|stream| {
            let key = format!("socket:[{}]", stream.inode);
            match connect_stream(Path::new(STDOUT_SOCKET), stream) {
                Ok(fd) => Some((key, fd)),
                Err(e) => {
                    tracing::warn!(
                        unit = %stream.unit,
                        error = %e,
                        "cannot open a journal stream: the service's output goes to /dev/null"
                    );
                    let null = fs::OpenOptions::new().write(true).open("/dev/null").ok()?;
                    Some((key, OwnedFd::from(null)))
                }
            }
        })
        .collect()
}

/// CRIU's view of [`replacement_fds`]: each key with the fd's number (the fds stay ours).
pub fn inherited(fds: &[(String, OwnedFd)]) -> Vec<overboot_checkpoint::InheritedFd> {
    fds.iter()
        .map(|(key, fd)| overboot_checkpoint::InheritedFd {
            key: key.clone(),
            fd: fd.as_raw_fd(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    const REDIS: &str = "# This is private data. Do not parse\nPRIORITY=6\nLEVEL_PREFIX=1\n\
        FORWARD_TO_SYSLOG=0\nFORWARD_TO_KMSG=0\nFORWARD_TO_CONSOLE=0\n\
        STREAM_ID=0123456789abcdef0123456789abcdef\nIDENTIFIER=redis-server\n\
        UNIT=redis-server.service\n";

    #[test]
    fn journald_stream_files_are_read() {
        let s = parse_stream_file(REDIS);
        assert_eq!(s.identifier, "redis-server");
        assert_eq!(s.unit, "redis-server.service");
        assert_eq!(s.priority, 6);
        assert!(s.level_prefix && !s.forward_to_syslog && !s.forward_to_console);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("0:4711"), REDIS).unwrap();
        fs::write(dir.path().join("garbage"), REDIS).unwrap();
        let all = streams_in(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(all[&4711].unit, "redis-server.service");
    }

    #[test]
    fn escaped_values_come_back_as_written() {
        assert_eq!(cunescape(r"my\x20app"), "my app");
        assert_eq!(cunescape(r"a\\b\n"), "a\\b\n");
        assert_eq!(cunescape(r"\101"), "A");
        assert_eq!(cunescape(r"plain"), "plain");
    }

    #[test]
    fn a_new_stream_opens_with_the_settings_systemd_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let listener = UnixListener::bind(&path).unwrap();
        let stream = parse_stream_file(REDIS);
        let fd = connect_stream(&path, &stream).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut out = fs::File::from(fd);
        out.write_all(b"a line after the switch\n").unwrap();
        drop(out);
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(
            got,
            "redis-server\nredis-server.service\n6\n1\n0\n0\n0\na line after the switch\n"
        );
    }
}
