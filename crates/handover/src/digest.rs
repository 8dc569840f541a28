//! Digests of map files, in parallel: the resume agent verifies every image before it restores
//! anything, inside the blackout, so hashing uses every core (up to a few) rather than one.
//!
//! Image files are checked with XXH64 (format 3): the digest guards against damage (a kernel or
//! device scribbling over the map between the kernels), not against tampering, since whoever
//! can write the map is root on both kernels, and the map is hashed twice inside the blackout.
//! XXH64 is plain 64-bit integer arithmetic, four lanes of multiply-rotate: as fast as XXH3 on
//! hardware, and it stays fast where vector instructions are emulated (QEMU TCG runs XXH3's
//! SSE2 loop at a sixth of XXH64's speed). Maps of format 2 carry XXH3-128 and those of format
//! 1 SHA-256; both are still verified. The header's pin of `manifest.json` stays SHA-256.

use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::Xxh3;
use xxhash_rust::xxh64::Xxh64;

use crate::manifest::DigestAlgorithm;

/// Most threads used to hash a map: beyond this the disk or memory bandwidth is the limit.
const MAX_HASH_THREADS: usize = 8;

/// Read size when hashing.
const CHUNK: usize = 1 << 20;

/// Size and lower-case hex digest of a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileDigest {
    pub(crate) size: u64,
    pub(crate) hex: String,
    /// The digest of each [`CHUNK_BYTES`] of it, when asked for (see [`chunk_digest`]).
    pub(crate) chunks: Vec<String>,
}

/// The size of the pieces of a large file that are digested on their own as well (map format
/// 3.1), so that a reader can check the piece it is about to use without reading the whole
/// file: the lazy restore's page server checks each piece of the memory pages before its first
/// page goes into a task.
pub const CHUNK_BYTES: u64 = CHUNK_LEN as u64;

/// [`CHUNK_BYTES`] as a length in memory.
pub(crate) const CHUNK_LEN: usize = 1 << 20;

/// The digest of one piece of a file (XXH64, seed 0, lower-case hex).
pub fn chunk_digest(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(bytes, 0))
}

/// Files at least this large are hashed in place through a mapping (see `mapped`); smaller
/// ones are read, which costs less than setting up a mapping.
const MAP_AT_LEAST: u64 = 1 << 20;

/// Hashes one file; with `chunked`, a file of at least [`MAP_AT_LEAST`] bytes gets the
/// digests of its [`CHUNK_BYTES`] pieces too (read while they are in the cache).
pub(crate) fn hash_file(
    path: &Path,
    algorithm: DigestAlgorithm,
    chunked: bool,
) -> io::Result<FileDigest> {
    let file = File::open(path)?;
    if file.metadata()?.len() >= MAP_AT_LEAST {
        let bytes = crate::mapped::map(&file)?;
        let mut hasher = Hasher::new(algorithm);
        let mut chunks = Vec::new();
        if chunked {
            for piece in bytes.chunks(CHUNK_LEN) {
                chunks.push(chunk_digest(piece));
                hasher.update(piece);
            }
        } else {
            hasher.update(&bytes);
        }
        return Ok(FileDigest {
            size: bytes.len() as u64,
            hex: hasher.finish_hex(),
            chunks,
        });
    }
    let mut reader = HashingReader::new(file, algorithm);
    let mut buf = vec![0u8; CHUNK];
    while reader.read(&mut buf)? != 0 {}
    Ok(reader.finish())
}

/// A running digest of one of the algorithms.
enum Hasher {
    Sha256(Box<Sha256>),
    Xxh3(Box<Xxh3>),
    Xxh64(Box<Xxh64>),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hasher::Sha256(_) => "Sha256",
            Hasher::Xxh3(_) => "Xxh3",
            Hasher::Xxh64(_) => "Xxh64",
        })
    }
}

impl Hasher {
    fn new(algorithm: DigestAlgorithm) -> Hasher {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Box::default()),
            DigestAlgorithm::Xxh3_128 => Hasher::Xxh3(Box::default()),
            DigestAlgorithm::Xxh64 => Hasher::Xxh64(Box::new(Xxh64::new(0))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Xxh3(h) => h.update(bytes),
            Hasher::Xxh64(h) => h.update(bytes),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Xxh3(h) => format!("{:032x}", h.digest128()),
            Hasher::Xxh64(h) => format!("{:016x}", h.digest()),
        }
    }
}

/// A reader that hashes what passes through it, so a copy can be verified without reading twice.
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, algorithm: DigestAlgorithm) -> Self {
        Self {
            inner,
            hasher: Hasher::new(algorithm),
            size: 0,
        }
    }

    /// Size and digest of everything read so far.
    pub(crate) fn finish(self) -> FileDigest {
        FileDigest {
            size: self.size,
            hex: self.hasher.finish_hex(),
            chunks: Vec::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// SHA-256 of a byte slice, raw.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Applies `f` to every item on a few threads; results come back in the order of `items`.
pub(crate) fn parallel_map<T, R, F>(items: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_HASH_THREADS)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut indexed: Vec<(usize, R)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    indexed.sort_unstable_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = parallel_map(&items, |x| x * 2);
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn hashes_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let digest = hash_file(&path, DigestAlgorithm::Sha256, false).unwrap();
        assert_eq!(digest.size, 3);
        assert_eq!(
            digest.hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // The reference implementation's value (Python `xxhash.xxh3_128_hexdigest(b"abc")`).
        let digest = hash_file(&path, DigestAlgorithm::Xxh3_128, false).unwrap();
        assert_eq!(digest.hex, "06b05ab6733a618578af5f94892f3950");
        // The reference value of the XXH64 specification's sanity check (seed 0).
        let digest = hash_file(&path, DigestAlgorithm::Xxh64, false).unwrap();
        assert_eq!(digest.hex, "44bc2cf5ad770999");
    }

    #[test]
    fn a_mapped_file_hashes_like_a_read_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let bytes: Vec<u8> = (0..3 * MAP_AT_LEAST + 12345)
            .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        for algorithm in [
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Xxh3_128,
            DigestAlgorithm::Xxh64,
        ] {
            let mapped = hash_file(&path, algorithm, false).unwrap();
            let mut reader = HashingReader::new(bytes.as_slice(), algorithm);
            std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
            assert_eq!(mapped, reader.finish(), "{algorithm}");
            // Chunked: the same file digest, and each 1 MiB piece's own (the last short).
            let chunked = hash_file(&path, algorithm, true).unwrap();
            assert_eq!(chunked.hex, mapped.hex, "{algorithm}");
            let pieces: Vec<String> = bytes
                .chunks(CHUNK_LEN)
                .map(|c| format!("{:016x}", xxhash_rust::xxh64::xxh64(c, 0)))
                .collect();
            assert_eq!(chunked.chunks.len(), 4);
            assert_eq!(chunked.chunks, pieces, "{algorithm}");
        }
    }
}
