//! The benchmark's Redis data set: `count` keys `bench:<i>` of [`VALUE_BYTES`] each, whose
//! bytes are a deterministic, incompressible function of `i` (so an RDB file is as large as the
//! data, as with real caches), written from the host in pipelines and checked after a switch:
//! the key count, and a spread sample of keys byte for byte.

use std::net::SocketAddr;
use std::time::Duration;

use crate::redis::{RedisError, Reply, RespConn};

/// Bytes of each value.
pub const VALUE_BYTES: usize = 16 * 1024;
/// Commands per pipeline when writing.
const PIPELINE: usize = 32;
/// Keys compared byte for byte by [`Dataset::check`].
const SAMPLE: u64 = 128;

/// A data set of about `mib` MiB of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dataset {
    /// Number of keys.
    pub count: u64,
}

/// What [`Dataset::check`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetCheck {
    /// Keys Redis holds with our prefix counted in (`DBSIZE`, which includes the counter).
    pub dbsize: u64,
    /// Sampled keys compared.
    pub sampled: u64,
    /// Of those, missing or different.
    pub bad: u64,
}

impl DatasetCheck {
    /// Every key is there and every sampled one is intact.
    pub fn ok(&self, dataset: Dataset) -> bool {
        self.dbsize >= dataset.count && self.bad == 0
    }
}

impl Dataset {
    /// About `mib` MiB of values.
    pub fn of_mib(mib: u32) -> Dataset {
        Dataset {
            count: (u64::from(mib) * 1024 * 1024).div_ceil(VALUE_BYTES as u64),
        }
    }

    /// The key of index `i`.
    pub fn key(i: u64) -> String {
        format!("bench:{i}")
    }

    /// The value of index `i`: xorshift64 bytes seeded by `i`.
    pub fn value(i: u64) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(VALUE_BYTES);
        while out.len() < VALUE_BYTES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(VALUE_BYTES);
        out
    }

    /// Writes every key through one connection, `PIPELINE` `SET`s per round trip.
    pub fn write(&self, addr: SocketAddr, timeout: Duration) -> Result<(), RedisError> {
        let mut conn = RespConn::connect(addr, timeout)?;
        let mut i = 0;
        while i < self.count {
            let end = (i + PIPELINE as u64).min(self.count);
            let pairs: Vec<(String, Vec<u8>)> =
                (i..end).map(|j| (Self::key(j), Self::value(j))).collect();
            let commands: Vec<Vec<&[u8]>> = pairs
                .iter()
                .map(|(k, v)| vec![b"SET".as_slice(), k.as_bytes(), v.as_slice()])
                .collect();
            for reply in conn.pipeline(&commands)? {
                if reply != Reply::Status("OK".into()) {
                    return Err(RedisError::Unexpected {
                        what: "SET".into(),
                        reply,
                    });
                }
            }
            i = end;
        }
        Ok(())
    }

    /// `DBSIZE` on a new connection; `None` while Redis is still loading (or not up).
    pub fn dbsize(addr: SocketAddr, timeout: Duration) -> Option<u64> {
        let mut conn = RespConn::connect(addr, timeout).ok()?;
        match conn.command(&[b"DBSIZE"]).ok()? {
            Reply::Integer(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    /// Counts the keys and compares [`SAMPLE`] keys spread over the whole set.
    pub fn check(&self, addr: SocketAddr, timeout: Duration) -> Result<DatasetCheck, RedisError> {
        let mut conn = RespConn::connect(addr, timeout)?;
        let dbsize = match conn.command(&[b"DBSIZE"])? {
            Reply::Integer(n) => u64::try_from(n).unwrap_or(0),
            reply => {
                return Err(RedisError::Unexpected {
                    what: "DBSIZE".into(),
                    reply,
                })
            }
        };
        let step = (self.count / SAMPLE).max(1);
        let mut check = DatasetCheck {
            dbsize,
            ..DatasetCheck::default()
        };
        let mut i = 0;
        while i < self.count {
            let key = Self::key(i);
            check.sampled += 1;
            match conn.command(&[b"GET", key.as_bytes()])? {
                Reply::Bulk(Some(v)) if v == Self::value(i) => {}
                _ => check.bad += 1,
            }
            i += step;
        }
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_values_are_deterministic_and_distinct() {
        assert_eq!(Dataset::of_mib(64).count, 4096);
        assert_eq!(Dataset::of_mib(2048).count, 131_072);
        let (a, b) = (Dataset::value(1), Dataset::value(2));
        assert_eq!(a.len(), VALUE_BYTES);
        assert_eq!(a, Dataset::value(1));
        assert_ne!(a, b);
        // Incompressible-looking: many distinct byte values.
        let distinct: std::collections::BTreeSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }

    #[test]
    fn a_check_needs_every_key_and_intact_samples() {
        let d = Dataset { count: 10 };
        let good = DatasetCheck {
            dbsize: 11,
            sampled: 10,
            bad: 0,
        };
        assert!(good.ok(d));
        assert!(!DatasetCheck { dbsize: 9, ..good }.ok(d));
        assert!(!DatasetCheck { bad: 1, ..good }.ok(d));
    }
}
