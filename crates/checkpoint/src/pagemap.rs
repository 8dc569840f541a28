//! The memory of a dumped task, as a lazy restore sees it: CRIU's pagemap images, read to
//! decide which pages the restored task gets from the page server rather than from CRIU, and
//! where in the map each of those pages lies.
//!
//! A lazy restore (CRIU's `--lazy-pages`) leaves a page out of the restore only when the dump
//! flagged its pagemap entry `PE_LAZY`; a dump on top of pre-dumps writes the pages that did not
//! change since as `PE_PARENT` holes without that flag, so CRIU 3.17 restores all of them
//! before the tasks run — most of the memory, after pre-copy. [`prepare_lazy`] flags such a
//! hole lazy when the parent chain holds every one of its pages in an entry CRIU itself flagged
//! lazy and the region is one CRIU registers for lazy pages; then lists, for each task, every
//! page left out of the restore with the file and offset that hold it, down the chain of
//! pre-dumps (the page server's index), and where the pages CRIU reads itself lie. On top of
//! pre-dumps it also takes the lazy flag off the dump's own pages, up to [`HOT_PAGES_BYTES`]:
//! written since the last round, they are the ones the service touches first.
//!
//! ```text
//! pagemap-<pid>.img: u32 IMG_COMMON_MAGIC | u32 PAGEMAP_MAGIC 0x56084025
//!                    u32 len | pagemap_head { pages_id }
//!                    (u32 len | pagemap_entry { vaddr, nr_pages, in_parent?, flags? })*
//!                    flags: PE_PARENT 1 (pages in parent/), PE_LAZY 2, PE_PRESENT 4
//!                    (pages in pages-<pages_id>.img, in entry order, 4 KiB each)
//! mm-<pid>.img:      u32 IMG_COMMON_MAGIC | u32 MM_MAGIC | u32 len | mm_entry { .. vmas: [vma_entry] }
//! parent/            the previous round's images (a pre-dump), the same layout
//! ```

use std::path::{Path, PathBuf};

use prost::Message;

use crate::images::{ImageError, IMG_COMMON_MAGIC};

mod flat;
pub use flat::{flatten, prepare_lazy_flat};

const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// `pagemap.h`: the pages are in the parent images.
const PE_PARENT: u32 = 1 << 0;
/// `pagemap.h`: the pages may be restored by the lazy-pages daemon.
const PE_LAZY: u32 = 1 << 1;
/// `pagemap.h`: the pages are in this image.
const PE_PRESENT: u32 = 1 << 2;

/// On top of pre-copy rounds, the frozen dump's own pages are the ones the service wrote since
/// the last round: what it was working on, and what it touches first once it runs again. Up to
/// this much of them per task CRIU puts back before the tasks run (the rest stays lazy): each
/// would otherwise cost the resumed service a fault, answered by the page server. Measured in
/// the lab (2 GiB Redis, TCG): the first command after the resume took 1.4 s of faults.
pub const HOT_PAGES_BYTES: u64 = 32 << 20;
/// `mman.h`.
const MAP_PRIVATE: u32 = 0x02;
const MAP_ANONYMOUS: u32 = 0x20;
const MAP_LOCKED: u32 = 0x2000;
const MAP_HUGETLB: u32 = 0x4_0000;
/// `image.h`: VMA status bits.
const VMA_AREA_REGULAR: u32 = 1 << 0;
const VMA_AREA_STACK: u32 = 1 << 1;
const VMA_AREA_VSYSCALL: u32 = 1 << 2;
const VMA_AREA_VDSO: u32 = 1 << 3;
const VMA_ANON_PRIVATE: u32 = 1 << 9;
const VMA_AREA_VVAR: u32 = 1 << 12;
const VMA_AREA_AIORING: u32 = 1 << 13;
/// The page size of every image CRIU writes on x86-64.
pub const PAGE_SIZE: u64 = 4096;

/// `pagemap_head` of `images/pagemap.proto`.
#[derive(Clone, PartialEq, Message)]
struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pages_id: u32,
}

/// One `pagemap_entry` of `images/pagemap.proto` (`vaddr` 1, `nr_pages` 2, `in_parent` 3,
/// `flags` 4), decoded by hand: after pre-copy a task's pagemap at 2 GiB holds some 130,000
/// entries in each round, and decoding each into an allocation of its own with prost took about
/// 0.4 s a pagemap in the lab's guests, inside the blackout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    vaddr: u64,
    nr_pages: u32,
    /// `PE_*`, with `in_parent` folded in (see [`pe_flags`]).
    flags: u32,
    /// Where its encoding lies in the image's bytes, copied as is when the image is rewritten;
    /// `None` once it changed.
    raw: Option<(usize, usize)>,
}

impl Entry {
    fn end(&self) -> u64 {
        self.vaddr + u64::from(self.nr_pages) * PAGE_SIZE
    }
}

/// The entry's `PE_*` flags; an image of before the flags says only `in_parent`.
fn pe_flags(in_parent: Option<bool>, flags: Option<u32>) -> u32 {
    let parent = if in_parent == Some(true) {
        PE_PARENT
    } else {
        0
    };
    match flags {
        Some(flags) => flags | parent,
        None if parent != 0 => parent,
        None => PE_PRESENT,
    }
}

/// A protobuf varint at `*at`, which it moves past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Decodes one `pagemap_entry` (unknown fields are skipped, as protobuf wants):
/// `(vaddr, nr_pages, PE_* flags)`.
fn decode_entry(bytes: &[u8]) -> Result<(u64, u32, u32), &'static str> {
    let (mut vaddr, mut nr_pages, mut in_parent, mut flags) = (None, None, None, None);
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at).ok_or("truncated field key")?;
        match key & 7 {
            0 => {
                let value = varint(bytes, &mut at).ok_or("truncated varint")?;
                let narrow = |value| u32::try_from(value).map_err(|_| "32-bit field out of range");
                match key >> 3 {
                    1 => vaddr = Some(value),
                    2 => nr_pages = Some(narrow(value)?),
                    3 => in_parent = Some(value != 0),
                    4 => flags = Some(narrow(value)?),
                    _ => {}
                }
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(bytes, &mut at).ok_or("truncated length")?;
                at = usize::try_from(len)
                    .ok()
                    .and_then(|len| at.checked_add(len))
                    .ok_or("bad length")?;
            }
            _ => return Err("unsupported wire type"),
        }
        if at > bytes.len() {
            return Err("truncated field");
        }
    }
    match (vaddr, nr_pages) {
        (Some(vaddr), Some(nr_pages)) => Ok((vaddr, nr_pages, pe_flags(in_parent, flags))),
        _ => Err("pagemap_entry without vaddr or nr_pages"),
    }
}

/// Appends the encoding of a `pagemap_entry` with `flags` (and no `in_parent`), as CRIU's
/// protobuf-c writes it.
fn encode_entry(vaddr: u64, nr_pages: u32, flags: u32, out: &mut Vec<u8>) {
    fn put(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push(value.to_le_bytes()[0] | 0x80);
            value >>= 7;
        }
        out.push(value.to_le_bytes()[0]);
    }
    out.push(1 << 3);
    put(vaddr, out);
    out.push(2 << 3);
    put(u64::from(nr_pages), out);
    out.push(4 << 3);
    put(u64::from(flags), out);
}

/// `vma_entry` of `images/vma.proto` (the fields read here).
#[derive(Clone, PartialEq, Message)]
struct VmaEntry {
    #[prost(uint64, required, tag = "1")]
    start: u64,
    #[prost(uint64, required, tag = "2")]
    end: u64,
    #[prost(uint32, required, tag = "6")]
    flags: u32,
    #[prost(uint32, required, tag = "7")]
    status: u32,
}

impl VmaEntry {
    /// CRIU 3.17's `vma_entry_can_be_lazy`, narrowed to regular private anonymous memory
    /// (never the main stack, vDSO, vvar, vsyscall, AIO rings, locked or huge pages).
    fn can_be_lazy(&self) -> bool {
        let status_is = |bits: u32| self.status & bits == bits;
        self.flags & (MAP_ANONYMOUS | MAP_PRIVATE) == MAP_ANONYMOUS | MAP_PRIVATE
            && self.flags & (MAP_LOCKED | MAP_HUGETLB) == 0
            && status_is(VMA_AREA_REGULAR | VMA_ANON_PRIVATE)
            && self.status
                & (VMA_AREA_STACK
                    | VMA_AREA_VSYSCALL
                    | VMA_AREA_VDSO
                    | VMA_AREA_VVAR
                    | VMA_AREA_AIORING)
                == 0
    }
}

/// `mm_entry` of `images/mm.proto` (the VMAs only).
#[derive(Clone, PartialEq, Message)]
struct MmEntry {
    #[prost(message, repeated, tag = "14")]
    vmas: Vec<VmaEntry>,
}

fn format_error(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The entries of a multi-entry image, in place: `(magic, [(offset, len)])`.
fn entry_spans(path: &Path, bytes: &[u8]) -> Result<(u32, Vec<(usize, usize)>), ImageError> {
    let word = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if word(0) != Some(IMG_COMMON_MAGIC) {
        return Err(format_error(path, "bad magic"));
    }
    let magic = word(4).ok_or_else(|| format_error(path, "no magic"))?;
    let mut spans = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = word(at).ok_or_else(|| format_error(path, "truncated entry size"))? as usize;
        if bytes.len() - (at + 4) < len {
            return Err(format_error(path, "truncated entry"));
        }
        spans.push((at + 4, len));
        at += 4 + len;
    }
    Ok((magic, spans))
}

/// One task's pagemap in one directory.
struct Pagemap {
    /// The image, as read (a rewrite keeps its head and unchanged entries).
    bytes: Vec<u8>,
    /// The head's place in `bytes`.
    head: (usize, usize),
    /// `pages-<pages_id>.img`, beside the pagemap.
    pages_id: u32,
    entries: Vec<Entry>,
}

fn read_pagemap(dir: &Path, pid: &str) -> Result<Pagemap, ImageError> {
    let path = dir.join(format!("pagemap-{pid}.img"));
    let bytes = read_file(&path)?;
    let (magic, spans) = entry_spans(&path, &bytes)?;
    let Some((&head, spans)) = spans.split_first().filter(|_| magic == PAGEMAP_MAGIC) else {
        return Err(format_error(&path, "not a pagemap"));
    };
    let pages_id = PagemapHead::decode(&bytes[head.0..head.0 + head.1])
        .map_err(|e| format_error(&path, e.to_string()))?
        .pages_id;
    let mut entries = Vec::with_capacity(spans.len());
    for &(at, len) in spans {
        let (vaddr, nr_pages, flags) =
            decode_entry(&bytes[at..at + len]).map_err(|e| format_error(&path, e))?;
        let entry = Entry {
            vaddr,
            nr_pages,
            flags,
            raw: Some((at, len)),
        };
        if entries
            .last()
            .is_some_and(|last: &Entry| vaddr < last.end())
        {
            return Err(format_error(&path, "entries out of order"));
        }
        entries.push(entry);
    }
    Ok(Pagemap {
        bytes,
        head,
        pages_id,
        entries,
    })
}

fn read_vmas(dir: &Path, pid: &str) -> Result<Vec<VmaEntry>, ImageError> {
    let path = dir.join(format!("mm-{pid}.img"));
    let bytes = read_file(&path)?;
    let (_, spans) = entry_spans(&path, &bytes)?;
    let mm = spans
        .first()
        .map_or(&[][..], |&(at, len)| &bytes[at..at + len]);
    let mm = MmEntry::decode(mm).map_err(|e| format_error(&path, e.to_string()))?;
    let mut vmas = mm.vmas;
    vmas.sort_by_key(|v| v.start);
    Ok(vmas)
}

/// The chain of pagemaps of `pid` below `images`: `parent/`, `parent/parent/`, ...
fn parent_chain(images: &Path, pid: &str) -> Result<Vec<(PathBuf, Pagemap)>, ImageError> {
    let mut chain = Vec::new();
    let mut dir = images.join("parent");
    while dir.join(format!("pagemap-{pid}.img")).exists() {
        let pagemap = read_pagemap(&dir, pid)?;
        chain.push((dir.clone(), pagemap));
        dir = dir.join("parent");
    }
    Ok(chain)
}

/// The pids of the tasks whose pagemaps are in `images`.
pub fn task_pids(images: &Path) -> Result<Vec<u32>, ImageError> {
    let entries = std::fs::read_dir(images).map_err(|source| ImageError::Io {
        path: images.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("pagemap-")?
                .strip_suffix(".img")?
                .parse()
                .ok()
        })
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Writes `pagemap` as `pagemap-<pid>.img` in `images`, a file of its own (a link to the map
/// is replaced, never written through): the head and unchanged entries as read, the changed
/// ones encoded anew.
fn rewrite_pagemap(images: &Path, pid: &str, pagemap: &Pagemap) -> Result<(), ImageError> {
    let path = images.join(format!("pagemap-{pid}.img"));
    let mut out = Vec::with_capacity(pagemap.bytes.len() + pagemap.entries.len() * 4);
    out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    out.extend_from_slice(&PAGEMAP_MAGIC.to_le_bytes());
    let mut put = |payload: &[u8]| -> Result<(), ImageError> {
        let len =
            u32::try_from(payload.len()).map_err(|_| format_error(&path, "entry too large"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
        Ok(())
    };
    let (at, len) = pagemap.head;
    put(&pagemap.bytes[at..at + len])?;
    let mut encoded = Vec::with_capacity(32);
    for e in &pagemap.entries {
        match e.raw {
            Some((at, len)) => put(&pagemap.bytes[at..at + len])?,
            None => {
                encoded.clear();
                encode_entry(e.vaddr, e.nr_pages, e.flags, &mut encoded);
                put(&encoded)?;
            }
        }
    }
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    std::fs::remove_file(&path).map_err(io)?;
    std::fs::write(&path, out).map_err(io)
}

/// The lazy restore's preparations, in one reading of each task's images: flags the
/// pre-copied holes lazy (see the module doc; a changed pagemap is rewritten as a file of its
/// own) and indexes every task's lazy pages. Returns the pages flagged and the index by pid.
pub fn prepare_lazy(images: &Path) -> Result<(u64, Vec<(u32, LazyPages)>), ImageError> {
    let (flagged, prepared) = prepare(images)?;
    let mut tasks = Vec::with_capacity(prepared.len());
    for task in prepared {
        task.write_top(images)?;
        tasks.push((task.pid, task.lazy));
    }
    Ok((flagged, tasks))
}

/// One task as [`prepare`] left it: its index, and its pagemap as the restore is to read it
/// (with the lazy flags changed, `changed`) but not yet written, with its mappings.
struct Prepared {
    pid: u32,
    lazy: LazyPages,
    top: Pagemap,
    changed: bool,
    vmas: Vec<VmaEntry>,
}

impl Prepared {
    /// Writes the task's pagemap with its flags changed, if they were.
    fn write_top(&self, images: &Path) -> Result<(), ImageError> {
        if self.changed {
            rewrite_pagemap(images, &self.pid.to_string(), &self.top)?;
        }
        Ok(())
    }
}

/// [`prepare_lazy`] without writing anything: each task's images read once.
fn prepare(images: &Path) -> Result<(u64, Vec<Prepared>), ImageError> {
    let mut flagged = 0;
    let mut tasks = Vec::new();
    for pid in task_pids(images)? {
        let name = pid.to_string();
        let top = read_pagemap(images, &name)?;
        let chain = parent_chain(images, &name)?;
        let vmas = read_vmas(images, &name)?;
        let (pages, lazy, top, changed) = index_task(images, &name, top, chain, &vmas)?;
        flagged += pages;
        tasks.push(Prepared {
            pid,
            lazy,
            top,
            changed,
            vmas,
        });
    }
    Ok((flagged, tasks))
}

/// A run of pages the page server puts into a task: `[start, end)` of its address space,
/// held at `offset` of `LazyPages::files[file]`. Never crosses a VMA of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Index into [`LazyPages::files`].
    pub file: usize,
    /// Where `start`'s page begins in that file.
    pub offset: u64,
}

impl Extent {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Every page of one task that the restore leaves to the page server, and where it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyPages {
    /// The page files (`pages-<id>.img` of the images and of their parents).
    pub files: Vec<PathBuf>,
    /// Sorted by address, not overlapping.
    pub extents: Vec<Extent>,
    /// Where the pages the restore itself puts in lie (`file` and `offset` as above; the
    /// addresses are the task's): bytes of the page files that CRIU reads.
    pub eager: Vec<Extent>,
}

impl LazyPages {
    /// The number of pages.
    pub fn pages(&self) -> u64 {
        self.extents.iter().map(|e| e.len() / PAGE_SIZE).sum()
    }
}

/// One level of the chain, for [`resolve`]: its entries, each present entry's offset in its
/// page file, that file's index, and the first entry the next lookup can need.
struct Level {
    entries: Vec<Entry>,
    offsets: Vec<u64>,
    file: usize,
    cursor: usize,
}

/// Appends to `out` where `[start, end)` lies, from `levels[0]` down, each run with whether
/// the entry that holds it is flagged lazy. Lookups come in address order (the top's entries,
/// each cut into the holes it leaves to the next level), so each level's cursor only moves
/// forward: the whole chain is walked once.
fn resolve(
    levels: &mut [Level],
    start: u64,
    end: u64,
    out: &mut Vec<(Extent, bool)>,
) -> Result<(), ()> {
    let (level, deeper) = levels.split_first_mut().ok_or(())?;
    debug_assert!(level.cursor == 0 || level.entries[level.cursor - 1].end() <= start);
    while level
        .entries
        .get(level.cursor)
        .is_some_and(|e| e.end() <= start)
    {
        level.cursor += 1;
    }
    let mut at = start;
    let mut index = level.cursor;
    while at < end {
        let e = *level.entries.get(index).ok_or(())?;
        if e.vaddr > at {
            return Err(()); // a gap: not in this image at all
        }
        let upto = e.end().min(end);
        if e.flags & PE_PRESENT != 0 {
            let extent = Extent {
                start: at,
                end: upto,
                file: level.file,
                offset: level.offsets[index] + (at - e.vaddr),
            };
            out.push((extent, e.flags & PE_LAZY != 0));
        } else if e.flags & PE_PARENT != 0 {
            resolve(deeper, at, upto, out)?;
        } else {
            return Err(());
        }
        at = upto;
        index += 1;
    }
    Ok(())
}

/// Every page of task `pid` (images read already) that a lazy restore leaves out, with the page
/// file and offset that hold it, split at the image's VMA boundaries (one `UFFDIO_COPY` stays
/// in one mapping); and where the pages CRIU reads lie. The pages left out are those of entries
/// flagged `PE_LAZY`, and of holes this flags so: every page of the hole held, down the chain,
/// in an entry CRIU flagged lazy, in a VMA CRIU registers for lazy pages. Returns the pages
/// flagged with the index, and the pagemap with whether its flags changed (it is not written).
fn index_task(
    images: &Path,
    pid: &str,
    mut top: Pagemap,
    chain: Vec<(PathBuf, Pagemap)>,
    vmas: &[VmaEntry],
) -> Result<(u64, LazyPages, Pagemap, bool), ImageError> {
    let top_entries = std::mem::take(&mut top.entries);
    let mut files = vec![images.join(format!("pages-{}.img", top.pages_id))];
    let mut levels = Vec::with_capacity(chain.len() + 1);
    let pagemaps = std::iter::once(top_entries.clone())
        .chain(chain.into_iter().map(|(dir, pagemap)| {
            files.push(dir.join(format!("pages-{}.img", pagemap.pages_id)));
            pagemap.entries
        }))
        .collect::<Vec<_>>();
    for (file, entries) in pagemaps.into_iter().enumerate() {
        let mut offsets = Vec::with_capacity(entries.len());
        let mut next = 0;
        for e in &entries {
            offsets.push(next);
            if e.flags & PE_PRESENT != 0 {
                next += u64::from(e.nr_pages) * PAGE_SIZE;
            }
        }
        levels.push(Level {
            entries,
            offsets,
            file,
            cursor: 0,
        });
    }
    let pagemap_path = images.join(format!("pagemap-{pid}.img"));
    let mut found = Vec::new();
    let mut eager = Vec::new();
    let mut flagged = 0;
    let mut changed = false;
    // On top of pre-copy rounds, the dump's own pages are those written since the last round.
    let mut hot_budget = if levels.len() > 1 { HOT_PAGES_BYTES } else { 0 };
    let mut pieces = Vec::new();
    top.entries = top_entries;
    for e in &mut top.entries {
        pieces.clear();
        let resolved = resolve(&mut levels, e.vaddr, e.end(), &mut pieces);
        let bytes = u64::from(e.nr_pages) * PAGE_SIZE;
        let hot = e.flags & PE_LAZY != 0 && e.flags & (PE_PRESENT | PE_PARENT) == PE_PRESENT;
        if hot && resolved.is_ok() && bytes <= hot_budget {
            hot_budget -= bytes;
            e.flags &= !PE_LAZY;
            e.raw = None;
            changed = true;
            eager.extend(pieces.iter().map(|(x, _)| *x));
        } else if e.flags & PE_LAZY != 0 {
            resolved.map_err(|()| {
                let (start, end) = (e.vaddr, e.end());
                format_error(
                    &pagemap_path,
                    format!("no image of the chain holds pages {start:#x}..{end:#x}"),
                )
            })?;
            found.extend(pieces.iter().map(|(x, _)| *x));
        } else if resolved.is_ok() {
            let at = vmas.partition_point(|v| v.end <= e.vaddr);
            let in_lazy_vma = vmas
                .get(at)
                .is_some_and(|v| v.start <= e.vaddr && e.end() <= v.end && v.can_be_lazy());
            if e.flags & PE_PARENT != 0 && in_lazy_vma && pieces.iter().all(|(_, lazy)| *lazy) {
                e.flags |= PE_LAZY;
                e.raw = None;
                flagged += u64::from(e.nr_pages);
                found.extend(pieces.iter().map(|(x, _)| *x));
            } else {
                eager.extend(pieces.iter().map(|(x, _)| *x));
            }
        }
        // Not found and not lazy: the restore fails on it before any task runs.
    }
    let changed = flagged > 0 || changed;
    // Cut at VMA boundaries; pages outside every VMA are not the task's to get.
    let mut extents: Vec<(usize, Extent)> = Vec::with_capacity(found.len());
    for piece in found {
        let first = vmas.partition_point(|v| v.end <= piece.start);
        for (index, vma) in vmas.iter().enumerate().skip(first) {
            if vma.start >= piece.end {
                break;
            }
            let start = piece.start.max(vma.start);
            let end = piece.end.min(vma.end);
            let cut = Extent {
                start,
                end,
                file: piece.file,
                offset: piece.offset + (start - piece.start),
            };
            // Join runs that continue each other in the same file and mapping.
            match extents.last_mut() {
                Some((last_vma, last))
                    if *last_vma == index
                        && last.end == cut.start
                        && last.file == cut.file
                        && last.offset + last.len() == cut.offset =>
                {
                    last.end = cut.end;
                }
                _ => extents.push((index, cut)),
            }
        }
    }
    Ok((
        flagged,
        LazyPages {
            files,
            extents: extents.into_iter().map(|(_, e)| e).collect(),
            eager,
        },
        top,
        changed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pagemap_entry`, as prost encodes it: the reference the hand-written codec is held to.
    #[derive(Clone, PartialEq, Message)]
    struct PagemapEntry {
        #[prost(uint64, required, tag = "1")]
        vaddr: u64,
        #[prost(uint32, required, tag = "2")]
        nr_pages: u32,
        #[prost(bool, optional, tag = "3")]
        in_parent: Option<bool>,
        #[prost(uint32, optional, tag = "4")]
        flags: Option<u32>,
    }

    pub(super) fn write_multi(path: &Path, magic: u32, entries: &[Vec<u8>]) {
        let mut out = Vec::new();
        out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        out.extend_from_slice(&magic.to_le_bytes());
        for e in entries {
            out.extend_from_slice(&u32::try_from(e.len()).unwrap().to_le_bytes());
            out.extend_from_slice(e);
        }
        std::fs::write(path, out).unwrap();
    }

    pub(super) fn pe(vaddr: u64, nr_pages: u32, flags: u32) -> Vec<u8> {
        PagemapEntry {
            vaddr,
            nr_pages,
            in_parent: None,
            flags: Some(flags),
        }
        .encode_to_vec()
    }

    pub(super) fn pagemap(path: &Path, pages_id: u32, entries: &[Vec<u8>]) {
        let mut all = vec![PagemapHead { pages_id }.encode_to_vec()];
        all.extend_from_slice(entries);
        write_multi(path, PAGEMAP_MAGIC, &all);
    }

    pub(super) fn mm(dir: &Path, pid: u32, vmas: Vec<VmaEntry>) {
        write_multi(
            &dir.join(format!("mm-{pid}.img")),
            0x5749_2820,
            &[MmEntry { vmas }.encode_to_vec()],
        );
    }

    pub(super) fn vma(start: u64, end: u64, flags: u32, status: u32) -> VmaEntry {
        VmaEntry {
            start,
            end,
            flags,
            status,
        }
    }

    pub(super) const HEAP: u32 = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
    pub(super) const ANON: u32 = MAP_ANONYMOUS | MAP_PRIVATE;

    pub(super) fn p(n: u64) -> u64 {
        0x10_0000 + n * PAGE_SIZE
    }

    /// top -> pre-2 -> pre-1, as pre-copy leaves them: returns (root, top).
    pub(super) fn chain() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let pre1 = dir.path().join("pre-1");
        let pre2 = dir.path().join("pre-2");
        for d in [&top, &pre1, &pre2] {
            std::fs::create_dir(d).unwrap();
        }
        std::os::unix::fs::symlink("../pre-2", top.join("parent")).unwrap();
        std::os::unix::fs::symlink("../pre-1", pre2.join("parent")).unwrap();
        // Round 1 holds pages 0-9 lazily, 10-11 eagerly (CRIU's choice, e.g. a stack page).
        pagemap(
            &pre1.join("pagemap-5.img"),
            11,
            &[pe(p(0), 10, PE_PRESENT | PE_LAZY), pe(p(10), 2, PE_PRESENT)],
        );
        // Round 2 rewrote pages 2-3 and points at round 1 for the rest.
        pagemap(
            &pre2.join("pagemap-5.img"),
            12,
            &[
                pe(p(0), 2, PE_PARENT),
                pe(p(2), 2, PE_PRESENT | PE_LAZY),
                pe(p(4), 8, PE_PARENT),
            ],
        );
        (dir, top)
    }

    #[test]
    fn the_entry_codec_agrees_with_protobuf() {
        let entry = |vaddr, nr_pages, in_parent, flags| PagemapEntry {
            vaddr,
            nr_pages,
            in_parent,
            flags,
        };
        let cases = [
            entry(0x7f12_3456_7000, 131_072, None, Some(PE_PRESENT | PE_LAZY)),
            entry(0x1000, 1, Some(true), None),
            entry(0, 0, Some(false), None),
            entry(!0xfff, u32::MAX, None, Some(PE_PARENT)),
            entry(0x40_0000, 3, Some(true), Some(PE_LAZY)),
        ];
        for case in &cases {
            let bytes = case.encode_to_vec();
            let flags = pe_flags(case.in_parent, case.flags);
            assert_eq!(
                decode_entry(&bytes),
                Ok((case.vaddr, case.nr_pages, flags)),
                "{case:?}"
            );
            if let (None, Some(flags)) = (case.in_parent, case.flags) {
                let mut ours = Vec::new();
                encode_entry(case.vaddr, case.nr_pages, flags, &mut ours);
                assert_eq!(ours, bytes, "{case:?}");
            }
        }
        // Fields it does not know are skipped; truncation and missing fields are errors.
        let mut bytes = cases[0].encode_to_vec();
        bytes.extend([
            5 << 3,
            0x96,
            0x01,
            (6 << 3) | 2,
            2,
            0xaa,
            0xbb,
            (7 << 3) | 5,
            1,
            2,
            3,
            4,
        ]);
        assert_eq!(
            decode_entry(&bytes),
            Ok((cases[0].vaddr, 131_072, PE_PRESENT | PE_LAZY))
        );
        assert!(decode_entry(&bytes[..3]).is_err());
        assert!(decode_entry(&[(6 << 3) | 2, 9, 0]).is_err());
        assert!(decode_entry(&[1 << 3, 5]).is_err());
    }

    #[test]
    fn holes_over_lazy_parent_pages_become_lazy_and_nothing_else_does() {
        let (dir, top) = chain();
        // The dump: holes over pages 0-5, 6-9 (lazy down the chain), 10-11 (not), page 12
        // written now (hot: CRIU puts it back), and a hole in a VMA that cannot be lazy.
        let map_file = dir.path().join("map-pagemap");
        pagemap(
            &map_file,
            13,
            &[
                pe(p(0), 6, PE_PARENT),
                pe(p(6), 4, PE_PARENT),
                pe(p(10), 2, PE_PARENT),
                pe(p(12), 1, PE_PRESENT | PE_LAZY),
                pe(p(100), 1, PE_PARENT),
            ],
        );
        let original = std::fs::read(&map_file).unwrap();
        std::os::unix::fs::symlink(&map_file, top.join("pagemap-5.img")).unwrap();
        mm(
            &top,
            5,
            vec![
                vma(p(0), p(13), ANON, HEAP),
                vma(p(100), p(101), ANON | MAP_LOCKED, HEAP),
            ],
        );

        let (flagged, tasks) = prepare_lazy(&top).unwrap();
        assert_eq!(flagged, 10);
        // The map's file is untouched: the link was replaced by a file of its own.
        assert_eq!(std::fs::read(&map_file).unwrap(), original);
        assert!(!top.join("pagemap-5.img").is_symlink());
        let entries = read_pagemap(&top, "5").unwrap().entries;
        let flags: Vec<u32> = entries.iter().map(|e| e.flags).collect();
        assert_eq!(
            flags,
            [
                PE_PARENT | PE_LAZY,
                PE_PARENT | PE_LAZY,
                PE_PARENT,
                PE_PRESENT,
                PE_PARENT
            ]
        );
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].1.pages(), 10);
        // Idempotent: nothing left to flag, the same index.
        let (again, same) = prepare_lazy(&top).unwrap();
        assert_eq!(again, 0);
        assert_eq!(same, tasks);
        assert_eq!(std::fs::read(&map_file).unwrap(), original);
    }

    #[test]
    fn every_lazy_page_is_found_in_the_image_that_holds_it() {
        let (dir, top) = chain();
        // The dump: page 0 written now (eagerly: not the server's), pages 1-5 lazy holes,
        // pages 6-7 lazy and written now (hot: CRIU puts them back), 8-9 a lazy hole, 10-11 a
        // hole CRIU restores.
        pagemap(
            &top.join("pagemap-5.img"),
            13,
            &[
                pe(p(0), 1, PE_PRESENT),
                pe(p(1), 5, PE_PARENT | PE_LAZY),
                pe(p(6), 2, PE_PRESENT | PE_LAZY),
                pe(p(8), 2, PE_PARENT | PE_LAZY),
                pe(p(10), 2, PE_PARENT),
            ],
        );
        // Two mappings meet at page 5.
        mm(
            &top,
            5,
            vec![vma(p(0), p(5), ANON, HEAP), vma(p(5), p(12), ANON, HEAP)],
        );
        let (flagged, tasks) = prepare_lazy(&top).unwrap();
        // Pages 10-11 are not lazy anywhere down the chain: nothing to flag.
        assert_eq!(flagged, 0);
        let [(5, lazy)] = &tasks[..] else {
            panic!("one task, pid 5: {tasks:?}");
        };
        assert_eq!(
            lazy.files,
            [
                top.join("pages-13.img"),
                top.join("parent/pages-12.img"),
                top.join("parent/parent/pages-11.img"),
            ]
        );
        let x = |start: u64, end: u64, file: usize, offset_pages: u64| Extent {
            start: p(start),
            end: p(end),
            file,
            offset: offset_pages * PAGE_SIZE,
        };
        assert_eq!(
            lazy.extents,
            [
                // Page 1: round 1 (its page 1); pages 2-3: round 2 (its first two pages);
                // page 4: round 1 again, cut at the mapping's end.
                x(1, 2, 2, 1),
                x(2, 4, 1, 0),
                x(4, 5, 2, 4),
                // Page 5 continues round 1 in the next mapping: a new extent.
                x(5, 6, 2, 5),
                // Pages 8-9: round 1.
                x(8, 10, 2, 8),
            ]
        );
        assert_eq!(lazy.pages(), 7);
        // What CRIU reads itself: pages 0 and 6-7 from the dump's file (after page 0), pages
        // 10-11 from round 1.
        assert_eq!(lazy.eager, [x(0, 1, 0, 0), x(6, 8, 0, 1), x(10, 12, 2, 10)]);
        drop(dir);
    }

    #[test]
    fn hot_pages_come_back_first_up_to_the_budget_and_only_on_top_of_rounds() {
        let (dir, top) = chain();
        let budget = HOT_PAGES_BYTES / PAGE_SIZE;
        let big = u32::try_from(budget).unwrap(); // exactly the budget
                                                  // Written now: 2 pages, then one entry of the whole budget (too big once the two are
                                                  // taken: stays lazy), then 1 page (fits again).
        pagemap(
            &top.join("pagemap-5.img"),
            13,
            &[
                pe(p(0), 2, PE_PRESENT | PE_LAZY),
                pe(p(2), big, PE_PRESENT | PE_LAZY),
                pe(p(2 + budget), 1, PE_PRESENT | PE_LAZY),
            ],
        );
        mm(&top, 5, vec![vma(p(0), p(3 + budget), ANON, HEAP)]);
        let (_, tasks) = prepare_lazy(&top).unwrap();
        let flags: Vec<u32> = read_pagemap(&top, "5")
            .unwrap()
            .entries
            .iter()
            .map(|e| e.flags)
            .collect();
        assert_eq!(flags, [PE_PRESENT, PE_PRESENT | PE_LAZY, PE_PRESENT]);
        assert_eq!(tasks[0].1.pages(), budget);

        // A dump without rounds: its own pages are all of the memory, none of them hot.
        let alone = tempfile::tempdir().unwrap();
        pagemap(
            &alone.path().join("pagemap-5.img"),
            13,
            &[pe(p(0), 2, PE_PRESENT | PE_LAZY)],
        );
        mm(alone.path(), 5, vec![vma(p(0), p(2), ANON, HEAP)]);
        let (_, tasks) = prepare_lazy(alone.path()).unwrap();
        assert_eq!(tasks[0].1.pages(), 2);
        assert!(tasks[0].1.eager.is_empty());
        drop(dir);
    }

    #[test]
    fn a_lazy_hole_no_parent_holds_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        pagemap(
            &dir.path().join("pagemap-9.img"),
            1,
            &[pe(p(0), 1, PE_PARENT | PE_LAZY)],
        );
        mm(dir.path(), 9, vec![vma(p(0), p(1), ANON, HEAP)]);
        match prepare_lazy(dir.path()) {
            Err(ImageError::Format { reason, .. }) => assert!(reason.contains("no image")),
            other => panic!("expected a format error, got {other:?}"),
        }
        assert_eq!(task_pids(dir.path()).unwrap(), [9]);
    }
}
