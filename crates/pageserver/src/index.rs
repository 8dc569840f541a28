//! The server's view of the images, read once before it listens: every task's lazy pages (down
//! the chain of pre-copy rounds), the page files mapped with their piece digests from the map,
//! and what the restore itself reads.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use overboot_checkpoint::pagemap::{self, Extent, LazyPages};

use crate::error::PageServerError;
use crate::pieces::Pieces;

/// Every task's lazy pages, by pid, with `file` an index into the server's mappings.
pub(crate) type TaskPages = HashMap<u32, Vec<Extent>>;

/// Per mapping: the byte ranges the restore itself reads from it.
pub(crate) type EagerSpans = Vec<Vec<(u64, u64)>>;

/// The server's view of the images: the page files mapped with their digests, every task's lazy
/// pages, what the restore itself reads, and whether the restore reads no round.
pub(crate) type Indexed = (Vec<memmap2::Mmap>, Vec<Pieces>, TaskPages, EagerSpans, bool);

/// Indexes every task's lazy pages in `dir` and maps their page files, with the piece
/// digests the map at `map` lists for them.
pub(crate) fn index(dir: &Path, map: &Path) -> Result<Indexed, PageServerError> {
    let ssm =
        overboot_handover::SaveStateMap::open(map).map_err(|source| PageServerError::OpenMap {
            path: map.to_path_buf(),
            source,
        })?;
    let root = std::fs::canonicalize(map).unwrap_or_else(|_| map.to_path_buf());
    let index_error = |source| PageServerError::Index {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = Vec::new();
    let mut index = HashMap::new();
    let mut eager: Vec<(usize, u64, u64)> = Vec::new();
    // One reading of the images: flag the pre-copied holes lazy (the restore reads the
    // rewritten pagemaps) and index what the server will put in; then spare the restore the
    // reading of every round (the page files keep their real paths).
    let (tasks, flat) = pagemap::prepare_lazy_flat(dir).map_err(index_error)?;
    for (pid, lazy) in tasks {
        let LazyPages {
            files: own,
            extents,
            eager: reads,
        } = lazy;
        let mut renumber = Vec::with_capacity(own.len());
        for path in own {
            let canonical = std::fs::canonicalize(&path).unwrap_or(path);
            let at = files
                .iter()
                .position(|f| *f == canonical)
                .unwrap_or_else(|| {
                    files.push(canonical);
                    files.len() - 1
                });
            renumber.push(at);
        }
        let extents = extents
            .into_iter()
            .map(|e| Extent {
                file: renumber[e.file],
                ..e
            })
            .collect::<Vec<_>>();
        index.insert(pid, extents);
        eager.extend(
            reads
                .iter()
                .map(|e| (renumber[e.file], e.offset, e.offset + e.len())),
        );
    }
    let mut maps = Vec::with_capacity(files.len());
    let mut pieces = Vec::with_capacity(files.len());
    for (n, path) in files.iter().enumerate() {
        let used = index.values().flatten().filter(|e| e.file == n);
        let needed = used.map(|e| e.offset + e.len()).max().unwrap_or(0);
        let map_error = |source| PageServerError::Map {
            path: path.clone(),
            source,
        };
        let file = File::open(path).map_err(map_error)?;
        let mapping = overboot_handover::map_read_only(&file).map_err(map_error)?;
        if (mapping.len() as u64) < needed {
            return Err(map_error(std::io::Error::other(format!(
                "{} bytes, its pagemap needs {needed}",
                mapping.len()
            ))));
        }
        let map = mapping;
        let digests = path
            .strip_prefix(&root)
            .ok()
            .and_then(|rel| ssm.manifest().files.get(rel.to_str()?))
            .filter(|entry| {
                entry.chunks.len() as u64 == entry.size.div_ceil(overboot_handover::CHUNK_BYTES)
                    && entry.size == map.len() as u64
            })
            .map(|entry| entry.chunks.clone())
            .unwrap_or_default();
        pieces.push(Pieces {
            path: path.clone(),
            size: map.len(),
            checked: vec![false; digests.len()],
            digests,
        });
        maps.push(map);
    }
    let mut spans: EagerSpans = vec![Vec::new(); files.len()];
    for (file, start, end) in eager {
        spans[file].push((start, end));
    }
    Ok((maps, pieces, index, spans, flat))
}
