//! The client that watches an update from outside: ONE persistent connection to Redis sending
//! `INCR <key>` at a fixed rate (every 20 ms by default) on a writer thread while a reader
//! thread records each reply's value and arrival time. It never reconnects: a reset or EOF ends
//! it with the error recorded. Commands keep being sent during the blackout; they queue in the
//! host's and QEMU's socket buffers and must all be answered, in order, once the service is back.
//!
//! [`summarize`] turns the samples into what an operator asks: did the connection survive, is
//! every reply the previous plus one, how long was the longest silence (the client-observed
//! blackout) and were the commands sent during it answered after it, and when the client had
//! recovered (no command slower than [`SLOW_COMMAND`] any more: see [`recovered_at`]). The
//! benchmark reuses the raw [`Sample`]s for its latency-over-time plot.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::redis::{self, RedisError, Reply};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct IncrConfig {
    /// The counter's key.
    pub key: String,
    /// Time between two commands.
    pub interval: Duration,
    /// The loop stops sending after this long even if nobody stops it.
    pub max_duration: Duration,
    /// After sending stops, how long to wait for the outstanding replies.
    pub drain: Duration,
}

impl Default for IncrConfig {
    fn default() -> IncrConfig {
        IncrConfig {
            key: "counter".into(),
            interval: Duration::from_millis(20),
            max_duration: Duration::from_secs(900),
            drain: Duration::from_secs(60),
        }
    }
}

/// One command: when it was sent and, if answered, when and with which value (ms since start).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Sent, ms after the loop started.
    pub sent_ms: f64,
    /// Reply arrived, ms after the loop started.
    pub reply_ms: Option<f64>,
    /// The counter's value in the reply.
    pub value: Option<i64>,
}

/// What the client saw, in the terms of the network issue.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct IncrSummary {
    /// No reset, no EOF, no protocol error, and every command sent was answered.
    pub connection_survived: bool,
    /// Commands sent.
    pub sent: u64,
    /// Replies received.
    pub answered: u64,
    /// The first counter value.
    pub first_value: i64,
    /// The last counter value.
    pub last_value: i64,
    /// Increments missing between consecutive replies, plus commands never answered.
    pub lost: u64,
    /// Replies not greater than the previous one.
    pub duplicated: u64,
    /// The longest time between two consecutive replies (the client-observed blackout).
    pub blackout_ms: u64,
    /// When that gap began (ms after start: the reply before it).
    pub blackout_start_ms: u64,
    /// From the start of the longest gap to the reply of the last command slower than
    /// [`SLOW_COMMAND`] (or to the end of the gap if none was): the blackout plus the stalls
    /// after it, such as a retransmission the client backed off on. Never less than
    /// `blackout_ms`.
    pub recovery_ms: u64,
    /// Commands sent inside the longest gap.
    pub sent_during_blackout: u64,
    /// Of those, how many were answered (necessarily after the gap).
    pub answered_after_blackout: u64,
    /// The longest time one `INCR` took to write: the client was held back by full socket
    /// buffers (the peer's window closed) for that long.
    pub longest_write_ms: u64,
    /// How the connection ended, if it did.
    pub error: Option<String>,
}

/// Progress while the loop runs (for a line per second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncrProgress {
    /// Commands sent.
    pub sent: u64,
    /// Replies received.
    pub answered: u64,
    /// The last value received.
    pub last_value: i64,
    /// Time since the last reply (or since the start), ms.
    pub silent_ms: u64,
    /// The longest gap between replies so far, ms.
    pub longest_gap_ms: u64,
    /// Whether the connection ended with an error.
    pub failed: bool,
}

#[derive(Debug, Default)]
struct State {
    sent: Vec<Duration>,
    replies: Vec<(i64, Duration)>,
    error: Option<String>,
    sending_done: bool,
    longest_gap: Duration,
    longest_write: Duration,
}

/// A running `INCR` loop on one connection.
#[derive(Debug)]
pub struct IncrLoop {
    start: Instant,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl IncrLoop {
    /// Connects and starts sending.
    pub fn start(addr: SocketAddr, config: IncrConfig) -> Result<IncrLoop, RedisError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|source| RedisError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let reader_stream = stream.try_clone()?;
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State::default()));
        let writer = {
            let (stop, state, config) = (Arc::clone(&stop), Arc::clone(&state), config.clone());
            std::thread::Builder::new()
                .name("incr-writer".into())
                .spawn(move || send_loop(stream, &config, start, &stop, &state))?
        };
        let reader = {
            let state = Arc::clone(&state);
            let limit = config.max_duration + config.drain;
            std::thread::Builder::new()
                .name("incr-reader".into())
                .spawn(move || read_loop(reader_stream, start, limit, config.drain, &state))?
        };
        Ok(IncrLoop {
            start,
            stop,
            state,
            threads: vec![writer, reader],
        })
    }

    /// What the loop has seen so far.
    pub fn progress(&self) -> IncrProgress {
        let now = self.start.elapsed();
        let state = lock(&self.state);
        let last = state.replies.last().map_or(Duration::ZERO, |r| r.1);
        IncrProgress {
            sent: state.sent.len() as u64,
            answered: state.replies.len() as u64,
            last_value: state.replies.last().map_or(0, |r| r.0),
            silent_ms: ms(now.saturating_sub(last)),
            longest_gap_ms: ms(state.longest_gap),
            failed: state.error.is_some(),
        }
    }

    /// Waits until at least `n` replies arrived or the connection failed, up to `timeout`;
    /// returns whether `n` were reached.
    pub fn wait_answered(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let p = self.progress();
            if p.answered >= n {
                return true;
            }
            if p.failed {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops sending, waits (bounded by the drain time) for the outstanding replies, and
    /// returns the summary and every sample.
    pub fn finish(mut self) -> (IncrSummary, Vec<Sample>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let state = lock(&self.state);
        let mut summary = summarize(&state.sent, &state.replies, state.error.clone());
        summary.longest_write_ms = ms(state.longest_write);
        let samples = state
            .sent
            .iter()
            .enumerate()
            .map(|(i, sent)| {
                let reply = state.replies.get(i);
                Sample {
                    sent_ms: sent.as_secs_f64() * 1000.0,
                    reply_ms: reply.map(|r| r.1.as_secs_f64() * 1000.0),
                    value: reply.map(|r| r.0),
                }
            })
            .collect();
        (summary, samples)
    }
}

impl Drop for IncrLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn send_loop(
    mut stream: TcpStream,
    config: &IncrConfig,
    start: Instant,
    stop: &AtomicBool,
    state: &Mutex<State>,
) {
    let mut command = Vec::new();
    redis::encode(&[b"INCR", config.key.as_bytes()], &mut command);
    let interval = config.interval.max(Duration::from_millis(1));
    let max_count = config.max_duration.as_nanos() / interval.as_nanos() + 1;
    let deadline = start + config.max_duration;
    let mut due = start;
    let mut n: u128 = 0;
    while n < max_count && Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        if lock(state).error.is_some() {
            break;
        }
        let before = start.elapsed();
        if let Err(e) = stream.write_all(&command) {
            lock(state).error.get_or_insert(format!("write: {e}"));
            break;
        }
        let after = start.elapsed();
        {
            let mut s = lock(state);
            s.sent.push(after);
            s.longest_write = s.longest_write.max(after.saturating_sub(before));
        }
        n += 1;
        // Every interval; ticks missed while a write was blocked (full socket buffers) are
        // skipped, not sent in a burst afterwards.
        due = (due + interval).max(Instant::now());
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    lock(state).sending_done = true;
}

fn read_loop(
    mut stream: TcpStream,
    start: Instant,
    limit: Duration,
    drain: Duration,
    state: &Mutex<State>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut drain_deadline: Option<Duration> = None;
    loop {
        let now = start.elapsed();
        {
            let mut s = lock(state);
            if s.error.is_some() || now >= limit {
                break;
            }
            if s.sending_done {
                if s.replies.len() >= s.sent.len() {
                    break;
                }
                let deadline = *drain_deadline.get_or_insert(now + drain);
                if now >= deadline {
                    let missing = s.sent.len() - s.replies.len();
                    s.error = Some(format!(
                        "{missing} commands unanswered after the drain time"
                    ));
                    break;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                lock(state).error = Some("connection closed by the server (EOF)".into());
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                let what = if e.kind() == ErrorKind::ConnectionReset {
                    "connection reset by peer".to_string()
                } else {
                    format!("read: {e}")
                };
                lock(state).error = Some(what);
                break;
            }
        }
        let arrived = start.elapsed();
        let mut used = 0;
        loop {
            match redis::parse(&buf[used..]) {
                Ok(Some((Reply::Integer(v), len))) => {
                    used += len;
                    let mut s = lock(state);
                    let prev = s.replies.last().map_or(Duration::ZERO, |r| r.1);
                    if !s.replies.is_empty() {
                        s.longest_gap = s.longest_gap.max(arrived.saturating_sub(prev));
                    }
                    s.replies.push((v, arrived));
                }
                Ok(Some((other, _))) => {
                    lock(state).error = Some(format!("unexpected reply {other:?}"));
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    lock(state).error = Some(format!("bad RESP: {e}"));
                    return;
                }
            }
        }
        buf.drain(..used);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A command that took longer than this to be answered is still part of the disruption.
pub const SLOW_COMMAND: Duration = Duration::from_secs(1);

/// When the client had recovered: the reply to the last command answered more than
/// [`SLOW_COMMAND`] after it was sent, or `gap_end` (the end of the longest gap) if that is later
/// or no command was that slow. Commands never answered are left out: they are counted as lost.
/// `sent[i]` and `replies[i]` as for [`summarize`].
pub fn recovered_at(sent: &[Duration], replies: &[(i64, Duration)], gap_end: Duration) -> Duration {
    sent.iter()
        .zip(replies)
        .filter(|(sent, (_, reply))| reply.saturating_sub(**sent) > SLOW_COMMAND)
        .map(|(_, (_, reply))| *reply)
        .fold(gap_end, Duration::max)
}

/// Judges a run: `sent[i]` is when command `i` went out, `replies[i]` its reply (replies come
/// in command order on one connection).
pub fn summarize(
    sent: &[Duration],
    replies: &[(i64, Duration)],
    error: Option<String>,
) -> IncrSummary {
    let mut s = IncrSummary {
        sent: sent.len() as u64,
        answered: replies.len() as u64,
        first_value: replies.first().map_or(0, |r| r.0),
        last_value: replies.last().map_or(0, |r| r.0),
        error,
        ..IncrSummary::default()
    };
    let mut gap = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for pair in replies.windows(2) {
        let ((prev, t0), (value, t1)) = (pair[0], pair[1]);
        if value <= prev {
            s.duplicated += 1;
        } else {
            s.lost += u64::try_from(value - prev - 1).unwrap_or(0);
        }
        if t1.saturating_sub(t0) > gap.0 {
            gap = (t1.saturating_sub(t0), t0, t1);
        }
    }
    let unanswered = s.sent.saturating_sub(s.answered);
    s.lost += unanswered;
    s.blackout_ms = ms(gap.0);
    s.blackout_start_ms = ms(gap.1);
    if replies.len() >= 2 {
        s.recovery_ms = ms(recovered_at(sent, replies, gap.2).saturating_sub(gap.1));
    }
    let inside: Vec<usize> = sent
        .iter()
        .enumerate()
        .filter(|(_, t)| **t > gap.1 && **t < gap.2)
        .map(|(i, _)| i)
        .collect();
    s.sent_during_blackout = inside.len() as u64;
    s.answered_after_blackout = inside.iter().filter(|i| **i < replies.len()).count() as u64;
    s.connection_survived = s.error.is_none() && unanswered == 0;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_clean_run_with_a_pause_is_judged() {
        // Commands every 20 ms; replies stop between 40 and 1000 ms, then all arrive.
        let sent: Vec<Duration> = (0..10).map(|i| at(i * 20)).collect();
        let mut replies: Vec<(i64, Duration)> = vec![(1, at(1)), (2, at(21)), (3, at(41))];
        replies.extend((4..=10).map(|v| (v, at(1000))));
        let s = summarize(&sent, &replies, None);
        assert!(s.connection_survived);
        assert_eq!((s.lost, s.duplicated, s.last_value), (0, 0, 10));
        assert_eq!(s.blackout_ms, 959);
        assert_eq!(s.sent_during_blackout, 7);
        assert_eq!(s.answered_after_blackout, 7);
    }

    /// Commands every 20 ms for `until` ms, each answered `latency(sent)` ms after it was sent
    /// (and never before the previous reply: one connection answers in order).
    fn series(until: u64, latency: impl Fn(u64) -> u64) -> (Vec<Duration>, Vec<(i64, Duration)>) {
        let sent: Vec<Duration> = (0..until / 20).map(|i| at(i * 20)).collect();
        let mut last = Duration::ZERO;
        let replies = sent
            .iter()
            .zip(1..)
            .map(|(t, value)| {
                last = last.max(*t + at(latency(ms(*t))));
                (value, last)
            })
            .collect();
        (sent, replies)
    }

    #[test]
    fn recovery_is_the_blackout_when_the_client_catches_up_at_once() {
        // Silent from 1000 to 6000 ms; everything queued is answered at 6000 ms.
        let (sent, replies) = series(10_000, |t| {
            if (1000..6000).contains(&t) {
                6000 - t
            } else {
                1
            }
        });
        let s = summarize(&sent, &replies, None);
        assert_eq!((s.blackout_start_ms, s.blackout_ms), (981, 5019));
        assert_eq!(s.recovery_ms, s.blackout_ms);
        assert!(s.connection_survived);
    }

    #[test]
    fn a_second_stall_after_the_blackout_extends_the_recovery() {
        // The blackout 1000–13000 ms; then the commands sent 13000–14000 ms stall until
        // 22000 ms (a retransmission backed off), and those queued behind them with them: a
        // second gap of 9 s, shorter than the blackout.
        let (sent, replies) = series(30_000, |t| match t {
            1000..=12_999 => 13_000 - t,
            13_000..=13_999 => 22_000 - t,
            _ => 1,
        });
        let s = summarize(&sent, &replies, None);
        assert_eq!((s.blackout_start_ms, s.blackout_ms), (981, 12_019));
        // The last slow command was sent at 20980 ms and answered at 22000 ms.
        assert_eq!(s.recovery_ms, 22_000 - 981);
        assert_eq!((s.lost, s.duplicated), (0, 0));
    }

    #[test]
    fn a_run_without_a_stall_recovers_with_its_longest_gap() {
        let (sent, replies) = series(2000, |_| 3);
        let s = summarize(&sent, &replies, None);
        assert_eq!(s.blackout_ms, 20);
        assert_eq!(s.recovery_ms, 20);
        // Slow but steady (every reply 1.5 s late, no gap): from the first reply, where the
        // first of the equal 20 ms gaps begins, to the last one.
        let (sent, replies) = series(2000, |_| 1500);
        let s = summarize(&sent, &replies, None);
        assert_eq!((s.blackout_start_ms, s.blackout_ms), (1500, 20));
        assert_eq!(s.recovery_ms, 3480 - 1500);
    }

    #[test]
    fn unanswered_commands_do_not_count_as_recovered() {
        // The blackout 1000–3000 ms, replies resume, then the connection resets at 5000 ms
        // with the commands sent after 4000 ms never answered.
        let (sent, mut replies) = series(6000, |t| {
            if (1000..3000).contains(&t) {
                3000 - t
            } else {
                1
            }
        });
        replies.truncate(4000 / 20);
        let s = summarize(&sent, &replies, Some("connection reset by peer".into()));
        assert!(!s.connection_survived);
        assert_eq!(s.lost, 2000 / 20);
        assert_eq!((s.blackout_start_ms, s.blackout_ms), (981, 2019));
        assert_eq!(s.recovery_ms, s.blackout_ms);
        assert_eq!(recovered_at(&sent, &[], at(5)), at(5));
    }

    #[test]
    fn resets_gaps_and_duplicates_are_counted() {
        let sent: Vec<Duration> = (0..5).map(|i| at(i * 20)).collect();
        let replies = vec![(1, at(1)), (3, at(21)), (3, at(41))];
        let s = summarize(&sent, &replies, Some("connection reset by peer".into()));
        assert!(!s.connection_survived);
        assert_eq!(s.duplicated, 1);
        assert_eq!(s.lost, 1 + 2);
    }
}
