//! Edits of CRIU image files that an update needs between dump and restore.
//!
//! CRIU (≥ 3.15, on kernels with time namespaces) records CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! at dump time in `timens-0.img`, and restores every tree into a new time namespace whose
//! clocks continue from exactly those values: the tree would see no time pass during the
//! blackout. [`advance_clocks`] adds the elapsed time to the recorded values, so the clocks
//! jump forward by about the blackout, as they do for a process that was merely paused.
//!
//! A TCP connection whose peer never negotiated window scaling is dumped without the
//! `TCPI_OPT_WSCALE` bit, and CRIU then restores it without a window option: the new socket
//! keeps the receive scale the new kernel picked at connect time and advertises its window
//! shifted by it — a peer that does not scale reads a window of a few bytes and the connection
//! crawls. [`pin_unscaled_windows`] marks such connections as scaled by 0 in both directions,
//! which is exactly what the peer assumes, so CRIU sets the window option and the kernel stops
//! shifting. Connections that negotiated scaling are left alone.
//!
//! ```text
//! timens-0.img:      u32 IMG_COMMON_MAGIC 0x54564319 | u32 TIMENS_MAGIC 0x43114433
//!                    u32 len | timens_entry { monotonic: timespec{sec,nsec}, boottime: timespec }
//! tcp-stream-*.img:  u32 IMG_COMMON_MAGIC | u32 TCP_STREAM_MAGIC 0x51465506
//!                    u32 len | tcp_stream_entry {..} | receive queue bytes | send queue bytes
//! ```

use std::path::{Path, PathBuf};

use prost::Message;

pub(crate) const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const TIMENS_MAGIC: u32 = 0x4311_4433;
const TCP_STREAM_MAGIC: u32 = 0x5146_5506;
const NSEC_PER_SEC: u64 = 1_000_000_000;
/// `TCPI_OPT_WSCALE` of `linux/tcp.h`.
const TCPI_OPT_WSCALE: u32 = 4;

/// `tcp_stream_entry` of `images/tcp-stream.proto` (every field, so a rewrite loses nothing).
#[derive(Clone, PartialEq, Message)]
pub struct TcpStreamEntry {
    /// Bytes in the receive queue.
    #[prost(uint32, required, tag = "1")]
    pub inq_len: u32,
    /// Receive sequence.
    #[prost(uint32, required, tag = "2")]
    pub inq_seq: u32,
    /// Bytes in the send queue.
    #[prost(uint32, required, tag = "3")]
    pub outq_len: u32,
    /// Send sequence.
    #[prost(uint32, required, tag = "4")]
    pub outq_seq: u32,
    /// `TCPI_OPT_*` bits.
    #[prost(uint32, required, tag = "5")]
    pub opt_mask: u32,
    /// Send window scale.
    #[prost(uint32, required, tag = "6")]
    pub snd_wscale: u32,
    /// MSS clamp.
    #[prost(uint32, required, tag = "7")]
    pub mss_clamp: u32,
    /// Receive window scale.
    #[prost(uint32, optional, tag = "8")]
    pub rcv_wscale: Option<u32>,
    /// Timestamp.
    #[prost(uint32, optional, tag = "9")]
    pub timestamp: Option<u32>,
    /// TCP_CORK.
    #[prost(bool, optional, tag = "10")]
    pub cork: Option<bool>,
    /// TCP_NODELAY.
    #[prost(bool, optional, tag = "11")]
    pub nodelay: Option<bool>,
    /// Unsent bytes of the send queue.
    #[prost(uint32, optional, tag = "12")]
    pub unsq_len: Option<u32>,
    /// `snd_wl1`.
    #[prost(uint32, optional, tag = "13")]
    pub snd_wl1: Option<u32>,
    /// `snd_wnd`.
    #[prost(uint32, optional, tag = "14")]
    pub snd_wnd: Option<u32>,
    /// `max_window`.
    #[prost(uint32, optional, tag = "15")]
    pub max_window: Option<u32>,
    /// `rcv_wnd`.
    #[prost(uint32, optional, tag = "16")]
    pub rcv_wnd: Option<u32>,
    /// `rcv_wup`.
    #[prost(uint32, optional, tag = "17")]
    pub rcv_wup: Option<u32>,
}

/// `timespec` of `images/timens.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct Timespec {
    /// Seconds.
    #[prost(uint64, required, tag = "1")]
    pub tv_sec: u64,
    /// Nanoseconds.
    #[prost(uint64, required, tag = "2")]
    pub tv_nsec: u64,
}

/// `timens_entry` of `images/timens.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct TimensEntry {
    /// CLOCK_MONOTONIC at dump.
    #[prost(message, required, tag = "1")]
    pub monotonic: Timespec,
    /// CLOCK_BOOTTIME at dump.
    #[prost(message, required, tag = "2")]
    pub boottime: Timespec,
}

/// Errors editing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// I/O on the image.
    #[error("image {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not the layout above.
    #[error("image {path} is not a CRIU image of the expected kind: {reason}")]
    Format { path: PathBuf, reason: String },
}

impl Timespec {
    fn add_ns(&self, ns: u64) -> Timespec {
        let total = self.tv_nsec + ns % NSEC_PER_SEC;
        Timespec {
            tv_sec: self.tv_sec + ns / NSEC_PER_SEC + total / NSEC_PER_SEC,
            tv_nsec: total % NSEC_PER_SEC,
        }
    }
}

/// Advances the clocks recorded in `images/timens-0.img` by `elapsed_ns`. Returns the new
/// entry, or `None` when the images have no clock record (CRIU or kernel without timens).
pub fn advance_clocks(images: &Path, elapsed_ns: u64) -> Result<Option<TimensEntry>, ImageError> {
    let path = images.join("timens-0.img");
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let format = |reason: &str| ImageError::Format {
        path: path.clone(),
        reason: reason.into(),
    };
    let (range, _) = split_entry(&path, &bytes, TIMENS_MAGIC)?;
    let body = &bytes[range];
    let entry = TimensEntry::decode(body).map_err(|e| format(&e.to_string()))?;
    let advanced = TimensEntry {
        monotonic: entry.monotonic.add_ns(elapsed_ns),
        boottime: entry.boottime.add_ns(elapsed_ns),
    };
    let payload = advanced.encode_to_vec();
    let mut out = image_start(TIMENS_MAGIC, 12 + payload.len());
    put_entry(&mut out, &payload).ok_or_else(|| format("entry too large"))?;
    std::fs::write(&path, out).map_err(io)?;
    Ok(Some(advanced))
}

/// Splits an image into its first entry and what follows, checking the magic.
fn split_entry(
    path: &Path,
    bytes: &[u8],
    magic: u32,
) -> Result<(std::ops::Range<usize>, usize), ImageError> {
    let format = |reason: &str| ImageError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let word = |at: usize| le_word(bytes, at);
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(magic) {
        return Err(format("bad magic"));
    }
    let len = word(8).ok_or_else(|| format("no entry"))? as usize;
    if bytes.len() < 12 + len {
        return Err(format("truncated entry"));
    }
    Ok((12..12 + len, 12 + len))
}

/// The little-endian `u32` at `at` in an image's bytes, if they go that far.
pub(crate) fn le_word(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

/// The start of an image's bytes: the common magic, then the image's own `magic`.
pub(crate) fn image_start(magic: u32, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    out.extend_from_slice(&magic.to_le_bytes());
    out
}

/// Appends one entry to an image's bytes: its length, then `payload`. `None` (nothing
/// appended) when it is too large for its length word.
pub(crate) fn put_entry(out: &mut Vec<u8>, payload: &[u8]) -> Option<()> {
    let len = u32::try_from(payload.len()).ok()?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Some(())
}

/// Marks every connection in `images` whose peer did not negotiate window scaling as scaled
/// by 0 both ways (see the module doc). Returns the images changed.
pub fn pin_unscaled_windows(images: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut changed = Vec::new();
    let entries = std::fs::read_dir(images).map_err(|source| ImageError::Io {
        path: images.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("tcp-stream-") {
            continue;
        }
        let path = entry.path();
        let io = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let bytes = std::fs::read(&path).map_err(io)?;
        let (body, rest) = split_entry(&path, &bytes, TCP_STREAM_MAGIC)?;
        let mut tse = TcpStreamEntry::decode(&bytes[body]).map_err(|e| ImageError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if tse.opt_mask & TCPI_OPT_WSCALE != 0 {
            continue;
        }
        tse.opt_mask |= TCPI_OPT_WSCALE;
        tse.snd_wscale = 0;
        tse.rcv_wscale = Some(0);
        let mut out = image_start(TCP_STREAM_MAGIC, bytes.len() + 8);
        put_entry(&mut out, &tse.encode_to_vec()).ok_or_else(|| ImageError::Format {
            path: path.clone(),
            reason: "entry too large".into(),
        })?;
        out.extend_from_slice(&bytes[rest..]);
        std::fs::write(&path, out).map_err(io)?;
        changed.push(path);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image of one entry, then `tail`.
    fn write_image(path: &Path, magic: u32, entry: &impl Message, tail: &[u8]) {
        let mut bytes = image_start(magic, 0);
        put_entry(&mut bytes, &entry.encode_to_vec()).unwrap();
        bytes.extend_from_slice(tail);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn clocks_advance_with_carry() {
        let dir = tempfile::tempdir().unwrap();
        let entry = TimensEntry {
            monotonic: Timespec {
                tv_sec: 40,
                tv_nsec: 900_000_000,
            },
            boottime: Timespec {
                tv_sec: 41,
                tv_nsec: 0,
            },
        };
        write_image(&dir.path().join("timens-0.img"), TIMENS_MAGIC, &entry, &[]);
        let advanced = advance_clocks(dir.path(), 7_200_000_000).unwrap().unwrap();
        assert_eq!(
            advanced.monotonic,
            Timespec {
                tv_sec: 48,
                tv_nsec: 100_000_000
            }
        );
        assert_eq!(
            advanced.boottime,
            Timespec {
                tv_sec: 48,
                tv_nsec: 200_000_000
            }
        );
        // Written back in CRIU's layout: reading it again gives the same values.
        let again = advance_clocks(dir.path(), 0).unwrap().unwrap();
        assert_eq!(again, advanced);
    }

    fn read_stream(path: &Path) -> (TcpStreamEntry, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        let (body, rest) = split_entry(path, &bytes, TCP_STREAM_MAGIC).unwrap();
        (
            TcpStreamEntry::decode(&bytes[body]).unwrap(),
            bytes[rest..].to_vec(),
        )
    }

    #[test]
    fn unscaled_connections_are_pinned_and_scaled_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let unscaled = TcpStreamEntry {
            inq_len: 3,
            outq_len: 2,
            opt_mask: 1 | 2,
            mss_clamp: 1460,
            unsq_len: Some(0),
            timestamp: Some(77),
            ..TcpStreamEntry::default()
        };
        let scaled = TcpStreamEntry {
            opt_mask: 1 | 2 | TCPI_OPT_WSCALE,
            snd_wscale: 7,
            rcv_wscale: Some(7),
            ..unscaled.clone()
        };
        for (name, tse) in [
            ("tcp-stream-a.img", &unscaled),
            ("tcp-stream-b.img", &scaled),
        ] {
            write_image(&dir.path().join(name), TCP_STREAM_MAGIC, tse, b"abcxy");
        }
        let changed = pin_unscaled_windows(dir.path()).unwrap();
        assert_eq!(changed, [dir.path().join("tcp-stream-a.img")]);
        let (a, queues) = read_stream(&dir.path().join("tcp-stream-a.img"));
        assert_eq!(a.opt_mask, 1 | 2 | TCPI_OPT_WSCALE);
        assert_eq!((a.snd_wscale, a.rcv_wscale), (0, Some(0)));
        assert_eq!((a.timestamp, a.inq_len, a.mss_clamp), (Some(77), 3, 1460));
        assert_eq!(
            queues, b"abcxy",
            "the queued bytes must survive the rewrite"
        );
        let (b, _) = read_stream(&dir.path().join("tcp-stream-b.img"));
        assert_eq!(b, scaled);
    }

    #[test]
    fn no_image_is_not_an_error_and_bad_magic_is() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(advance_clocks(dir.path(), 1).unwrap(), None);
        std::fs::write(dir.path().join("timens-0.img"), [0u8; 16]).unwrap();
        assert!(matches!(
            advance_clocks(dir.path(), 1),
            Err(ImageError::Format { .. })
        ));
    }
}
