//! A small Redis client for the host side of the network scenarios: RESP2 over
//! `std::net::TcpStream`, written here because the checks need what a general client hides —
//! one connection that must never be re-established behind our back, raw arrival times, and
//! pipelines whose replies are matched to their commands by position.
//!
//! ```text
//! command:  *<n>\r\n  then per argument  $<len>\r\n<bytes>\r\n
//! replies:  +status\r\n  -error\r\n  :integer\r\n  $<len>\r\n<bytes>\r\n ($-1 = nil)  *<n>\r\n...
//! ```
//!
//! [`KeySet`] writes a deterministic data set before an update and checks it byte for byte
//! afterwards; [`ping_new_connection`] proves the listening socket still accepts. The long-lived
//! `INCR` client is in [`crate::incr`]. Every wait is bounded by a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Errors of the Redis client.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The TCP connection could not be made.
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("redis connection i/o")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// No complete reply before the deadline.
    #[error("no reply to {what} within {ms} ms")]
    Timeout { what: String, ms: u128 },
    /// The bytes are not RESP.
    #[error("bad RESP from the server: {0}")]
    Protocol(String),
    /// The server answered with an error or an unexpected reply.
    #[error("unexpected reply to {what}: {reply:?}")]
    Unexpected { what: String, reply: Reply },
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3 abc`, or `None` for nil.
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`, or `None` for a nil array.
    Array(Option<Vec<Reply>>),
}

/// Appends the RESP encoding of one command to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn int(bytes: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an integer: {:?}", String::from_utf8_lossy(bytes)))
}

/// Parses one reply from the start of `buf`: `Ok(None)` when it is not complete yet, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some((head, mut used)) = line(buf) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = head.split_first() else {
        return Err("empty line".into());
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let reply = match kind {
        b'+' => Reply::Status(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Integer(int(rest)?),
        b'$' => {
            let Ok(len) = usize::try_from(int(rest)?) else {
                return Ok(Some((Reply::Bulk(None), used)));
            };
            if buf.len() < used + len + 2 {
                return Ok(None);
            }
            let data = buf[used..used + len].to_vec();
            used += len + 2;
            Reply::Bulk(Some(data))
        }
        b'*' => {
            let Ok(n) = usize::try_from(int(rest)?) else {
                return Ok(Some((Reply::Array(None), used)));
            };
            let mut items = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                match parse(&buf[used..])? {
                    Some((item, len)) => {
                        items.push(item);
                        used += len;
                    }
                    None => return Ok(None),
                }
            }
            Reply::Array(Some(items))
        }
        other => return Err(format!("unknown reply type {:?}", char::from(other))),
    };
    Ok(Some((reply, used)))
}

/// One blocking connection: commands and pipelines with a deadline per call.
#[derive(Debug)]
pub struct RespConn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl RespConn {
    /// Connects within `timeout`; each later call waits at most `timeout` for its replies.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<RespConn, RedisError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| RedisError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RespConn {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    /// Sends commands in one write and reads one reply per command.
    pub fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, RedisError> {
        let mut out = Vec::new();
        for args in commands {
            encode(args, &mut out);
        }
        self.stream.write_all(&out)?;
        let what = commands
            .first()
            .and_then(|c| c.first())
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        let deadline = Instant::now() + self.timeout;
        (0..commands.len())
            .map(|_| self.read_reply(&what, deadline))
            .collect()
    }

    /// Sends one command and returns its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut replies = self.pipeline(&[args.to_vec()])?;
        replies.pop().ok_or(RedisError::Closed)
    }

    fn read_reply(&mut self, what: &str, deadline: Instant) -> Result<Reply, RedisError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some((reply, used)) = parse(&self.buf).map_err(RedisError::Protocol)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RedisError::Timeout {
                    what: what.into(),
                    ms: self.timeout.as_millis(),
                });
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RedisError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Opens a new connection and expects `PONG`: the listening socket accepts. Returns how long
/// the connect and the reply took.
pub fn ping_new_connection(addr: SocketAddr, timeout: Duration) -> Result<Duration, RedisError> {
    let start = Instant::now();
    let mut conn = RespConn::connect(addr, timeout)?;
    match conn.command(&[b"PING"])? {
        Reply::Status(s) if s == "PONG" => Ok(start.elapsed()),
        reply => Err(RedisError::Unexpected {
            what: "PING".into(),
            reply,
        }),
    }
}

/// Waits until Redis answers `PING` on a new connection, trying every 250 ms until `timeout`.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<(), RedisError> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = ping_new_connection(addr, Duration::from_secs(2));
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A deterministic data set: `count` keys `<prefix>:<i>` whose values are binary strings of
/// 16 to 79 bytes derived from `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    /// Key name prefix.
    pub prefix: String,
    /// Number of keys.
    pub count: u64,
}

/// The outcome of checking a [`KeySet`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyCheck {
    /// Keys read back.
    pub keys_checked: u64,
    /// Keys that were not there.
    pub keys_missing: u64,
    /// Keys whose value differs from what was written.
    pub keys_wrong: u64,
    /// The first missing or wrong key, for the message.
    pub first_bad: Option<String>,
}

/// Keys per pipelined `MSET`/`MGET`.
const BATCH: u64 = 1000;

impl KeySet {
    /// `count` keys named `<prefix>:<i>`.
    pub fn new(prefix: &str, count: u64) -> KeySet {
        KeySet {
            prefix: prefix.into(),
            count,
        }
    }

    /// The name of key `i`.
    pub fn key(&self, i: u64) -> String {
        format!("{}:{i:06}", self.prefix)
    }

    /// The value of key `i`: every byte value occurs, lengths vary.
    pub fn value(i: u64) -> Vec<u8> {
        let len = 16 + usize::try_from(i % 64).unwrap_or(0);
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn batches(&self) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        (0..self.count.div_ceil(BATCH)).map(|b| b * BATCH..((b + 1) * BATCH).min(self.count))
    }

    /// Writes every key with `MSET`, a batch at a time, on one new connection.
    pub fn write(&self, addr: SocketAddr, timeout: Duration) -> Result<(), RedisError> {
        let mut conn = RespConn::connect(addr, timeout)?;
        for range in self.batches() {
            let pairs: Vec<(String, Vec<u8>)> =
                range.map(|i| (self.key(i), KeySet::value(i))).collect();
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            for (k, v) in &pairs {
                args.push(k.as_bytes());
                args.push(v);
            }
            match conn.command(&args)? {
                Reply::Status(s) if s == "OK" => {}
                reply => {
                    return Err(RedisError::Unexpected {
                        what: "MSET".into(),
                        reply,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads every key back with `MGET` on one new connection and compares the bytes.
    pub fn check(&self, addr: SocketAddr, timeout: Duration) -> Result<KeyCheck, RedisError> {
        let mut conn = RespConn::connect(addr, timeout)?;
        let mut check = KeyCheck::default();
        for range in self.batches() {
            let keys: Vec<String> = range.clone().map(|i| self.key(i)).collect();
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(keys.iter().map(String::as_bytes));
            let values = match conn.command(&args)? {
                Reply::Array(Some(values)) if values.len() == keys.len() => values,
                reply => {
                    return Err(RedisError::Unexpected {
                        what: "MGET".into(),
                        reply,
                    })
                }
            };
            for (i, value) in range.zip(values) {
                check.keys_checked += 1;
                let bad = match value {
                    Reply::Bulk(Some(bytes)) if bytes == KeySet::value(i) => continue,
                    Reply::Bulk(None) => {
                        check.keys_missing += 1;
                        "missing"
                    }
                    _ => {
                        check.keys_wrong += 1;
                        "wrong value"
                    }
                };
                if check.first_bad.is_none() {
                    check.first_bad = Some(format!("{}: {bad}", self.key(i)));
                }
            }
        }
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_when_complete() {
        assert_eq!(parse(b":4"), Ok(None));
        assert_eq!(parse(b":42\r\n+OK"), Ok(Some((Reply::Integer(42), 5))));
        assert_eq!(parse(b"$3\r\nab"), Ok(None));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n"),
            Ok(Some((Reply::Bulk(Some(b"a\r\n".to_vec())), 9)))
        );
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        assert_eq!(
            parse(b"*2\r\n$1\r\nx\r\n$-1\r\n"),
            Ok(Some((
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"x".to_vec())),
                    Reply::Bulk(None)
                ])),
                16
            )))
        );
        assert_eq!(parse(b"*2\r\n$1\r\nx\r\n"), Ok(None));
        assert!(parse(b"?\r\n").is_err());
    }

    #[test]
    fn commands_are_encoded() {
        let mut out = Vec::new();
        encode(&[b"INCR", b"counter"], &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n");
    }

    #[test]
    fn values_are_deterministic_and_varied() {
        assert_eq!(KeySet::value(7), KeySet::value(7));
        assert_ne!(KeySet::value(7), KeySet::value(8));
        assert_eq!(KeySet::value(0).len(), 16);
        assert_eq!(KeySet::value(63).len(), 79);
        let set = KeySet::new("k", 2500);
        let ranges: Vec<_> = set.batches().collect();
        assert_eq!(ranges, [0..1000, 1000..2000, 2000..2500]);
    }
}
