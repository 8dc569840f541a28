//! Edits of CRIU image files that an update needs between dump and restore.
//!
//! CRIU (≥ 3.15, on kernels with time namespaces) records CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! at dump time in `timens-0.img`, and restores every tree into a new time namespace whose
//! clocks continue from exactly those values: the tree would see no time pass during the
//! blackout. [`advance_clocks`] adds the elapsed time to the recorded values, so the clocks
//! jump forward by about the blackout, as they do for a process that was merely paused.
//!
//! ```text
//! timens-0.img:  u32 IMG_COMMON_MAGIC 0x54564319 | u32 TIMENS_MAGIC 0x43114433
//!                u32 len | timens_entry { monotonic: timespec{sec,nsec}, boottime: timespec }
//! ```

use std::path::{Path, PathBuf};

use prost::Message;

const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const TIMENS_MAGIC: u32 = 0x4311_4433;
const NSEC_PER_SEC: u64 = 1_000_000_000;

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
    #[error("image {path} is not a CRIU timens image: {reason}")]
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
    let word = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(TIMENS_MAGIC) {
        return Err(format("bad magic"));
    }
    let len = word(8).ok_or_else(|| format("no entry"))? as usize;
    let body = bytes
        .get(12..12 + len)
        .ok_or_else(|| format("truncated entry"))?;
    let entry = TimensEntry::decode(body).map_err(|e| format(&e.to_string()))?;
    let advanced = TimensEntry {
        monotonic: entry.monotonic.add_ns(elapsed_ns),
        boottime: entry.boottime.add_ns(elapsed_ns),
    };
    let payload = advanced.encode_to_vec();
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    out.extend_from_slice(&TIMENS_MAGIC.to_le_bytes());
    let payload_len = u32::try_from(payload.len()).map_err(|_| format("entry too large"))?;
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    std::fs::write(&path, out).map_err(io)?;
    Ok(Some(advanced))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(dir: &Path, entry: &TimensEntry) {
        let payload = entry.encode_to_vec();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&TIMENS_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        bytes.extend_from_slice(&payload);
        std::fs::write(dir.join("timens-0.img"), bytes).unwrap();
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
        write_image(dir.path(), &entry);
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
