//! A restore that reads no pre-copy round ([`flatten`]). After pre-copy, CRIU 3.17's restore
//! opens the whole chain of pagemaps below the dump's (`parent/`, `parent/parent/`, ...) and
//! decodes every entry of every round before it maps a page: some 130,000 entries a round for
//! a 2 GiB Redis, about 0.6 s of the blackout under TCG, and more with every round and every
//! GiB. Once [`super::prepare_lazy`] has flagged the holes the page server fills, what CRIU
//! itself needs of the chain is small: the pages it puts back before the tasks run (the hot
//! pages, and the holes it must fill itself), which [`super::LazyPages::eager`] lists. So each
//! task's pagemap in the restore directory is written anew with no entry left to a parent:
//!
//! ```text
//! before                                   after
//! pagemap-<pid>.img  (one entry a run)     pagemap-<pid>.img  pagemap_head { pages_id: N' }
//!   PE_PARENT|PE_LAZY ... (hole, lazy)       PE_LAZY    one entry per mapping's lazy span
//!   PE_PRESENT        ... (hot page)         PE_PRESENT one entry per contiguous run
//!   PE_PARENT         ... (CRIU reads)       (its pages copied, in entry order, into
//! parent -> pre-3 -> pre-2 -> pre-1           pages-<N'>.img, a file of the restore's own)
//!                                          parent/  a stub: each task's pagemap with no entry
//! ```
//!
//! The lazy entries carry no pages and no parent (as CRIU's own lazy dump writes them), so
//! consecutive ones within a mapping merge, gaps included: CRIU only skips them, and a page
//! that was never there reads as zero from the page server as it would have. The stub parent
//! keeps CRIU's page read "with a parent", the case in which it disables transparent huge
//! pages until the tasks' memory is registered for lazy pages (else `khugepaged` could fill a
//! lazy range with zeros) and then enables them again. The page files the page server reads
//! are named by their real paths from here on (the `parent` link is gone).
//!
//! Nothing changes unless every task can be flattened; a tree with shared anonymous memory
//! (`pagemap-shmem-<id>.img`, whose rounds CRIU also chains) keeps its chain.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::image::{
    encode_entry, format_error, read_pagemap, rewrite_pagemap, Pagemap, PagemapHead, PAGEMAP_MAGIC,
    PAGE_SIZE, PE_LAZY, PE_PRESENT,
};
use super::lazy::{prepare, LazyPages};
use super::vma::{read_vmas, VmaEntry};
use crate::images::{image_start, put_entry, ImageError};

/// One task's new pagemap and page file, written beside the images but not yet in place.
struct Flat {
    pid: u32,
    pagemap: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Rewrites the restore directory `images` (as [`super::prepare_lazy`] left it, `tasks` being
/// what it returned) so that CRIU reads no pre-copy round, and names each task's page files by
/// their real paths. Returns whether it did; `false` (nothing changed) when there is no chain,
/// when a tree has shared anonymous memory, or when a page CRIU must read is in no image (the
/// restore then fails on it as it would have).
pub fn flatten(images: &Path, tasks: &mut [(u32, LazyPages)]) -> Result<bool, ImageError> {
    if !can_flatten(images, tasks.len())? {
        return Ok(false);
    }
    let mut tops = Vec::with_capacity(tasks.len());
    for (pid, _) in tasks.iter() {
        let name = pid.to_string();
        tops.push((read_pagemap(images, &name)?, read_vmas(images, &name)?));
    }
    flatten_read(images, tasks, &tops)
}

/// [`super::prepare_lazy`] then [`flatten`], with each task's images read once and its pagemap
/// written once (flattened, or with its lazy flags when it cannot be): what the page server
/// needs before it listens, inside the blackout. Returns the index and whether it flattened.
pub fn prepare_lazy_flat(images: &Path) -> Result<(Vec<(u32, LazyPages)>, bool), ImageError> {
    let (_, prepared) = prepare(images)?;
    let mut tasks: Vec<(u32, LazyPages)> = Vec::with_capacity(prepared.len());
    let mut tops = Vec::with_capacity(prepared.len());
    let mut changed = Vec::with_capacity(prepared.len());
    for task in prepared {
        tasks.push((task.pid, task.lazy));
        tops.push((task.top, task.vmas));
        changed.push(task.changed);
    }
    let flat = can_flatten(images, tasks.len())? && flatten_read(images, &mut tasks, &tops)?;
    if !flat {
        // As `prepare_lazy` leaves them: the lazy flags changed, the chain in place.
        for (((pid, _), (top, _)), changed) in tasks.iter().zip(&tops).zip(changed) {
            if changed {
                rewrite_pagemap(images, &pid.to_string(), top)?;
            }
        }
    }
    Ok((tasks, flat))
}

/// Whether the restore directory has a chain to flatten and no shared anonymous memory.
fn can_flatten(images: &Path, tasks: usize) -> Result<bool, ImageError> {
    let parent = images.join("parent");
    let linked = std::fs::symlink_metadata(&parent).is_ok_and(|m| m.file_type().is_symlink());
    Ok(linked && tasks > 0 && !has_shmem_pagemaps(images)?)
}

/// [`flatten`] with each task's pagemap (as the restore is to read it) and mappings in `tops`,
/// in the order of `tasks`.
fn flatten_read(
    images: &Path,
    tasks: &mut [(u32, LazyPages)],
    tops: &[(Pagemap, Vec<VmaEntry>)],
) -> Result<bool, ImageError> {
    let parent = images.join("parent");
    let mut flats = Vec::with_capacity(tasks.len());
    for (next_id, ((pid, lazy), (top, vmas))) in
        (free_pages_id(images)?..).zip(tasks.iter().zip(tops))
    {
        let written = flatten_task(images, *pid, lazy, top, vmas, next_id);
        match written {
            Ok(Some(flat)) => flats.push((flat, next_id)),
            Ok(None) | Err(_) => {
                // Leave no half-done work behind.
                for (flat, id) in &flats {
                    let _ = std::fs::remove_file(&flat.pagemap);
                    let _ = std::fs::remove_file(images.join(format!("pages-{id}.img")));
                }
                let _ = std::fs::remove_file(images.join(format!("pages-{next_id}.img")));
                return written.map(|_| false);
            }
        }
    }
    // The page server reads the rounds' files: by their real paths, before the link goes.
    for (_, lazy) in tasks.iter_mut() {
        for file in &mut lazy.files {
            if let Ok(real) = std::fs::canonicalize(&*file) {
                *file = real;
            }
        }
    }
    for (flat, _) in &flats {
        let target = images.join(format!("pagemap-{}.img", flat.pid));
        // A rename replaces a link to the map, never writes through it.
        std::fs::rename(&flat.pagemap, &target).map_err(io(&target))?;
    }
    std::fs::remove_file(&parent).map_err(io(&parent))?;
    std::fs::create_dir(&parent).map_err(io(&parent))?;
    for (pid, _) in tasks.iter() {
        let path = parent.join(format!("pagemap-{pid}.img"));
        std::fs::write(&path, pagemap_bytes(1, &[])).map_err(io(&path))?;
    }
    let pages = parent.join("pages-1.img");
    std::fs::write(&pages, []).map_err(io(&pages))?;
    Ok(true)
}

fn has_shmem_pagemaps(images: &Path) -> Result<bool, ImageError> {
    let entries = std::fs::read_dir(images).map_err(io(images))?;
    Ok(entries.filter_map(Result::ok).any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("pagemap-shmem-")
    }))
}

/// One more than the largest `pages-<id>.img` in `images`.
fn free_pages_id(images: &Path) -> Result<u32, ImageError> {
    let entries = std::fs::read_dir(images).map_err(io(images))?;
    let largest = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("pages-")?
                .strip_suffix(".img")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    Ok(largest + 1)
}

/// A pagemap image: magic, `pagemap_head { pages_id }`, then the encoded entries.
fn pagemap_bytes(pages_id: u32, entries: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut out = image_start(PAGEMAP_MAGIC, 16 + entries.len() * 24);
    let mut put = |payload: &[u8]| {
        // An entry is a few varints, a head one more: never too large for its length.
        let _ = put_entry(&mut out, payload);
    };
    put(&PagemapHead { pages_id }.encode_to_vec());
    let mut encoded = Vec::with_capacity(32);
    for &(vaddr, nr_pages, flags) in entries {
        encoded.clear();
        encode_entry(vaddr, nr_pages, flags, &mut encoded);
        put(&encoded);
    }
    out
}

/// Writes task `pid`'s flattened page file (`pages-<pages_id>.img`) and pagemap (beside its
/// place, for [`flatten`] to move in). `None` when the pages CRIU reads are not all listed.
fn flatten_task(
    images: &Path,
    pid: u32,
    lazy: &LazyPages,
    top: &Pagemap,
    vmas: &[VmaEntry],
    pages_id: u32,
) -> Result<Option<Flat>, ImageError> {
    let listed: u64 = lazy.eager.iter().map(|x| x.len() / PAGE_SIZE).sum();
    let needed: u64 = top
        .entries
        .iter()
        .filter(|e| e.flags & PE_LAZY == 0)
        .map(|e| u64::from(e.nr_pages))
        .sum();
    if listed != needed {
        return Ok(None);
    }
    // The mapping an entry lies in, if it lies in one.
    let vma_of = |start: u64, end: u64| {
        let at = vmas.partition_point(|v| v.end <= start);
        vmas.get(at)
            .filter(|v| v.start <= start && end <= v.end)
            .map(|_| at)
    };
    let mut entries: Vec<(u64, u32, u32)> = Vec::new();
    let mut last_vma = None;
    for e in &top.entries {
        let flags = if e.flags & PE_LAZY != 0 {
            PE_LAZY
        } else {
            PE_PRESENT
        };
        let vma = vma_of(e.vaddr, e.end());
        if let Some(last) = entries.last_mut() {
            let last_end = last.0 + u64::from(last.1) * PAGE_SIZE;
            let pages = u32::try_from((e.end() - last.0) / PAGE_SIZE).ok();
            let joins = vma.is_some()
                && vma == last_vma
                && last.2 == flags
                && (flags == PE_LAZY || last_end == e.vaddr);
            if let (true, Some(pages)) = (joins, pages) {
                last.1 = pages;
                continue;
            }
        }
        entries.push((e.vaddr, e.nr_pages, flags));
        last_vma = vma;
    }
    let pages_path = images.join(format!("pages-{pages_id}.img"));
    let mut out = BufWriter::new(File::create(&pages_path).map_err(io(&pages_path))?);
    let mut sources: HashMap<usize, File> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for x in &lazy.eager {
        let path = lazy
            .files
            .get(x.file)
            .ok_or_else(|| format_error(images, "an eager extent names no page file"))?;
        let file = match sources.entry(x.file) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(File::open(path).map_err(io(path))?)
            }
        };
        let mut offset = x.offset;
        let mut left = x.len();
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            file.read_exact_at(&mut buf[..n], offset)
                .map_err(io(path))?;
            out.write_all(&buf[..n]).map_err(io(&pages_path))?;
            offset += n as u64;
            left -= n as u64;
        }
    }
    out.flush().map_err(io(&pages_path))?;
    let pagemap = images.join(format!("pagemap-{pid}.img.flat"));
    std::fs::write(&pagemap, pagemap_bytes(pages_id, &entries)).map_err(io(&pagemap))?;
    Ok(Some(Flat { pid, pagemap }))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{chain, dump, p, pe, vma, ANON, HEAP};
    use super::super::image::PE_PARENT;
    use super::super::prepare_lazy;
    use super::*;

    const PAGE: usize = 4096;

    /// Page files whose every page is filled with its tag.
    fn pages(path: &Path, tags: &[u8]) {
        let bytes: Vec<u8> = tags
            .iter()
            .flat_map(|&t| std::iter::repeat_n(t, PAGE))
            .collect();
        std::fs::write(path, bytes).unwrap();
    }

    /// The page files of [`chain`]'s rounds under `root`: round 1 (`pages-11`) holds pages
    /// 0-11 tagged 0x10.., round 2 (`pages-12`) pages 2-3 tagged 0x22 and 0x23.
    fn round_pages(root: &Path) {
        pages(
            &root.join("pre-1/pages-11.img"),
            &(0x10..0x1c).collect::<Vec<u8>>(),
        );
        pages(&root.join("pre-2/pages-12.img"), &[0x22, 0x23]);
    }

    fn tags(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len() % PAGE, 0);
        bytes
            .chunks(PAGE)
            .map(|page| {
                assert!(page.iter().all(|&b| b == page[0]), "a page of mixed bytes");
                page[0]
            })
            .collect()
    }

    #[test]
    fn the_restore_reads_no_round_and_gets_the_same_pages() {
        let (dir, top) = chain();
        round_pages(dir.path());
        // The dump: page 0 written now (CRIU's), holes 1-3 and 4-5 (lazy down the chain),
        // 6-7 written now (hot), a hole 8-9 in the next mapping, 10-11 a hole CRIU fills
        // itself (round 1 holds them eagerly).
        dump(
            &top,
            &[
                pe(p(0), 1, PE_PRESENT),
                pe(p(1), 3, PE_PARENT),
                pe(p(4), 2, PE_PARENT),
                pe(p(6), 2, PE_PRESENT | PE_LAZY),
                pe(p(8), 2, PE_PARENT),
                pe(p(10), 2, PE_PARENT),
            ],
            vec![vma(p(0), p(8), ANON, HEAP), vma(p(8), p(12), ANON, HEAP)],
        );
        pages(&top.join("pages-13.img"), &[0xa0, 0xa6, 0xa7]);
        let (_, mut tasks) = prepare_lazy(&top).unwrap();
        let before = tasks[0].1.clone();

        assert!(flatten(&top, &mut tasks).unwrap());
        let flat = read_pagemap(&top, "5").unwrap();
        let entries: Vec<(u64, u32, u32)> = flat
            .entries
            .iter()
            .map(|e| (e.vaddr, e.nr_pages, e.flags))
            .collect();
        assert_eq!(
            entries,
            [
                (p(0), 1, PE_PRESENT),
                // Two lazy holes in one mapping: one entry, no parent.
                (p(1), 5, PE_LAZY),
                (p(6), 2, PE_PRESENT),
                // The next mapping starts an entry of its own.
                (p(8), 2, PE_LAZY),
                (p(10), 2, PE_PRESENT),
            ]
        );
        // What CRIU puts back, in entry order, from a page file of the restore's own; the
        // dump's page file (which the page server serves from) is left as it was.
        assert_eq!(flat.pages_id, 14);
        assert_eq!(
            tags(&top.join("pages-14.img")),
            [0xa0, 0xa6, 0xa7, 0x1a, 0x1b]
        );
        assert_eq!(tags(&top.join("pages-13.img")), [0xa0, 0xa6, 0xa7]);
        // The chain is gone for CRIU: a stub parent with an empty pagemap.
        let parent = top.join("parent");
        assert!(!parent.is_symlink() && parent.is_dir());
        assert!(read_pagemap(&parent, "5").unwrap().entries.is_empty());
        assert!(!top.join("pagemap-5.img.flat").exists());
        // The page server gets the same extents from the same bytes, by real paths.
        let after = &tasks[0].1;
        assert_eq!(after.extents, before.extents);
        assert_eq!(after.files.len(), before.files.len());
        for (old, new) in before.files.iter().zip(&after.files) {
            assert!(
                !new.starts_with(&parent),
                "{new:?} still goes through parent/"
            );
            assert_eq!(std::fs::canonicalize(new).ok(), Some(new.clone()));
            if old.exists() || new.exists() {
                assert_eq!(std::fs::read(new).unwrap().len() % PAGE, 0);
            }
        }
        // Page 1 comes from round 1, where it always was.
        let x = after.extents[0];
        assert_eq!(x.start, p(1));
        let round1 = std::fs::read(&after.files[x.file]).unwrap();
        assert_eq!(round1[usize::try_from(x.offset).unwrap()], 0x11);
    }

    #[test]
    fn in_one_pass_the_images_end_as_in_two() {
        // The fixture of the test above, and one whose page 20 is in no round (not flattened).
        let fixture = |missing: bool| {
            let (dir, top) = chain();
            round_pages(dir.path());
            let mut entries = vec![
                pe(p(0), 1, PE_PRESENT),
                pe(p(1), 3, PE_PARENT),
                pe(p(4), 2, PE_PARENT),
                pe(p(6), 2, PE_PRESENT | PE_LAZY),
            ];
            if missing {
                entries.push(pe(p(20), 1, PE_PARENT));
            }
            dump(&top, &entries, vec![vma(p(0), p(21), ANON, HEAP)]);
            pages(&top.join("pages-13.img"), &[0xa0, 0xa6, 0xa7]);
            (dir, top)
        };
        let files = |top: &Path| -> Vec<(String, Vec<u8>)> {
            let mut all = Vec::new();
            for dir in [top.to_path_buf(), top.join("parent")] {
                let mut names: Vec<_> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_file())
                    .collect();
                names.sort();
                for path in names {
                    let name = path.strip_prefix(top).unwrap().display().to_string();
                    all.push((name, std::fs::read(&path).unwrap()));
                }
            }
            all
        };
        for missing in [false, true] {
            let (_a, two) = fixture(missing);
            let (_, mut expected) = prepare_lazy(&two).unwrap();
            let expected_flat = flatten(&two, &mut expected).unwrap();
            let (_b, one) = fixture(missing);
            let (tasks, flat) = prepare_lazy_flat(&one).unwrap();
            assert_eq!(flat, expected_flat);
            assert_eq!(flat, !missing);
            assert_eq!(files(&one), files(&two), "missing: {missing}");
            assert_eq!(tasks.len(), expected.len());
            for ((pid, lazy), (want_pid, want)) in tasks.iter().zip(&expected) {
                assert_eq!(pid, want_pid);
                assert_eq!(lazy.extents, want.extents);
                assert_eq!(lazy.eager, want.eager);
                let names = |l: &LazyPages| -> Vec<String> {
                    l.files
                        .iter()
                        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                        .collect()
                };
                assert_eq!(names(lazy), names(want));
            }
        }
    }

    #[test]
    fn without_a_chain_or_with_shared_memory_nothing_changes() {
        // A dump without rounds.
        let alone = tempfile::tempdir().unwrap();
        dump(
            alone.path(),
            &[pe(p(0), 2, PE_PRESENT | PE_LAZY)],
            vec![vma(p(0), p(2), ANON, HEAP)],
        );
        let (_, mut tasks) = prepare_lazy(alone.path()).unwrap();
        assert!(!flatten(alone.path(), &mut tasks).unwrap());

        // Rounds, but shared anonymous memory (whose pagemaps chain too).
        let (_dir, top) = chain();
        dump(
            &top,
            &[pe(p(0), 2, PE_PARENT)],
            vec![vma(p(0), p(12), ANON, HEAP)],
        );
        std::fs::write(top.join("pagemap-shmem-7.img"), b"").unwrap();
        let (_, mut tasks) = prepare_lazy(&top).unwrap();
        let before = std::fs::read(top.join("pagemap-5.img")).unwrap();
        assert!(!flatten(&top, &mut tasks).unwrap());
        assert!(top.join("parent").is_symlink());
        assert_eq!(std::fs::read(top.join("pagemap-5.img")).unwrap(), before);
    }

    #[test]
    fn a_page_in_no_image_leaves_the_chain_in_place() {
        let (_dir, top) = chain();
        // Page 20 is in no round: CRIU's restore fails on it, as it would have.
        dump(
            &top,
            &[pe(p(0), 1, PE_PARENT), pe(p(20), 1, PE_PARENT)],
            vec![vma(p(0), p(21), ANON, HEAP)],
        );
        let (_, mut tasks) = prepare_lazy(&top).unwrap();
        assert!(!flatten(&top, &mut tasks).unwrap());
        assert!(top.join("parent").is_symlink());
        assert!(!top.join("pages-14.img").exists());
    }
}
