//! The page files' pieces (of [`overboot_handover::CHUNK_BYTES`]) and their digests: the
//! server checks each piece before its first page goes in, and tells the restore's gate, in
//! [`PIECES`], which pieces the restore itself reads nothing from, so that the gate leaves them
//! to it ([`served_pieces`] reads them back).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// File the page server writes in the directory it serves once it indexed its pages: the
/// pieces ([`overboot_handover::CHUNK_BYTES`] each) of the map's page files, by map-relative
/// path, that the restore itself reads nothing from. The restore's gate leaves those: the
/// server checks each piece it reads from before its first use, and nothing reads the rest
/// (pages a later pre-copy round or the dump wrote again).
pub const PIECES: &str = "lazy-pieces.json";

/// A page file's piece digests (map format 3.1) and which pieces passed.
#[derive(Debug)]
pub(crate) struct Pieces {
    pub(crate) path: PathBuf,
    /// The file's length.
    pub(crate) size: usize,
    pub(crate) digests: Vec<String>,
    pub(crate) checked: Vec<bool>,
}

/// Writes [`PIECES`] in `dir`: the pieces of each page file (by map-relative
/// path) that the restore itself reads nothing from, for its gate to leave: this server
/// checks each piece it reads from before its first page goes in, and nothing reads the others
/// (pages a later round or the dump wrote again). Best effort: without the file the gate
/// checks everything.
pub(crate) fn write_served_pieces(
    dir: &Path,
    map: &Path,
    pieces: &[Pieces],
    eager: &[Vec<(u64, u64)>],
) {
    let root = std::fs::canonicalize(map).unwrap_or_else(|_| map.to_path_buf());
    let mut served = BTreeMap::new();
    for (file, reads) in pieces.iter().zip(eager) {
        let Some(rel) = file.path.strip_prefix(&root).ok().and_then(Path::to_str) else {
            continue;
        };
        if file.digests.is_empty() {
            continue; // no piece digests: the gate checks the file whole
        }
        let size = u64::try_from(file.size).unwrap_or(u64::MAX);
        let left = untouched_pieces(reads, size, overboot_handover::CHUNK_BYTES);
        if !left.is_empty() {
            served.insert(rel.to_string(), left);
        }
    }
    if let Ok(json) = serde_json::to_vec(&served) {
        let tmp = dir.join(format!("{}.tmp", PIECES));
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(PIECES));
        }
    }
}

/// The pieces the page servers of the restores in `dirs` check themselves (see [`PIECES`]);
/// a server that wrote none leaves every piece to the gate.
pub fn served_pieces(dirs: &[PathBuf]) -> BTreeMap<String, BTreeSet<usize>> {
    let mut served: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for dir in dirs {
        let Ok(bytes) = std::fs::read(dir.join(PIECES)) else {
            continue;
        };
        let Ok(pieces) = serde_json::from_slice::<BTreeMap<String, BTreeSet<usize>>>(&bytes) else {
            continue;
        };
        for (rel, set) in pieces {
            served.entry(rel).or_default().extend(set);
        }
    }
    served
}

/// The pieces of `piece` bytes of a file of `size` bytes that no span of `reads` (byte
/// ranges) touches.
fn untouched_pieces(reads: &[(u64, u64)], size: u64, piece: u64) -> BTreeSet<usize> {
    let count = size.div_ceil(piece);
    let mut touched = vec![false; usize::try_from(count).unwrap_or(0)];
    for &(start, end) in reads {
        if end <= start {
            continue;
        }
        for index in start / piece..=((end - 1) / piece).min(count.saturating_sub(1)) {
            if let Some(t) = usize::try_from(index).ok().and_then(|i| touched.get_mut(i)) {
                *t = true;
            }
        }
    }
    touched
        .iter()
        .enumerate()
        .filter(|(_, t)| !**t)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pieces_the_restore_reads_nothing_from_are_left_to_the_server() {
        // Pieces of 10 bytes, a file of 45: [0,10) [10,20) [20,30) [30,40) [40,45).
        let left = |reads: &[(u64, u64)]| untouched_pieces(reads, 45, 10);
        assert_eq!(left(&[]), BTreeSet::from([0, 1, 2, 3, 4]));
        // One byte is enough to keep a piece for the gate; an empty span touches nothing.
        assert_eq!(left(&[(19, 21), (44, 45), (5, 5)]), BTreeSet::from([0, 3]));
        assert_eq!(left(&[(0, 45)]), BTreeSet::new());
        // Spans past the end (they cannot be read) change nothing beyond it.
        assert_eq!(left(&[(30, 400)]), BTreeSet::from([0, 1, 2]));
    }
}
