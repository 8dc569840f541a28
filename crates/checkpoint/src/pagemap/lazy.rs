//! The lazy restore's index of a task's memory: which pages the page server puts in and which
//! CRIU reads itself, where down the chain of pre-copy rounds each lies, and the holes over
//! lazy parent pages flagged lazy on the way (see [`super`] for why).

use std::path::{Path, PathBuf};

use super::image::{
    format_error, parent_chain, read_pagemap, rewrite_pagemap, task_pids, Entry, Pagemap,
    PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT,
};
use super::vma::{read_vmas, VmaEntry};
use crate::images::ImageError;

/// On top of pre-copy rounds, the frozen dump's own pages are the ones the service wrote since
/// the last round: what it was working on, and what it touches first once it runs again. Up to
/// this much of them per task CRIU puts back before the tasks run (the rest stays lazy): each
/// would otherwise cost the resumed service a fault, answered by the page server. Measured in
/// the lab (2 GiB Redis, TCG): the first command after the resume took 1.4 s of faults.
pub const HOT_PAGES_BYTES: u64 = 32 << 20;

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
pub(super) struct Prepared {
    pub(super) pid: u32,
    pub(super) lazy: LazyPages,
    pub(super) top: Pagemap,
    pub(super) changed: bool,
    pub(super) vmas: Vec<VmaEntry>,
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
pub(super) fn prepare(images: &Path) -> Result<(u64, Vec<Prepared>), ImageError> {
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
    let (files, mut levels) = chain_levels(images, &top, chain);
    let pagemap_path = images.join(format!("pagemap-{pid}.img"));
    let sorted = sort_entries(&mut top, &mut levels, vmas, &pagemap_path)?;
    Ok((
        sorted.flagged,
        LazyPages {
            files,
            extents: cut_at_vmas(sorted.lazy, vmas),
            eager: sorted.eager,
        },
        top,
        sorted.changed,
    ))
}

/// The page files of the chain (the top's first, then each round's down the chain) and one
/// [`Level`] for each, its cursor at the start.
fn chain_levels(
    images: &Path,
    top: &Pagemap,
    chain: Vec<(PathBuf, Pagemap)>,
) -> (Vec<PathBuf>, Vec<Level>) {
    let mut files = vec![images.join(format!("pages-{}.img", top.pages_id))];
    let mut levels = Vec::with_capacity(chain.len() + 1);
    let pagemaps = std::iter::once(top.entries.clone())
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
    (files, levels)
}

/// What [`sort_entries`] made of a task's pagemap.
struct Sorted {
    /// The runs the page server puts in, in address order, not yet cut at the VMAs.
    lazy: Vec<Extent>,
    /// The runs CRIU reads itself.
    eager: Vec<Extent>,
    /// Pages of holes flagged lazy.
    flagged: u64,
    /// Whether any entry's flags changed.
    changed: bool,
}

/// Resolves each entry of `top` down the chain and sorts its pages: lazy ones to the page
/// server; hot ones (written since the last round, within [`HOT_PAGES_BYTES`]) and those that
/// cannot be lazy to CRIU; holes over lazy parent pages in a lazy VMA flagged lazy. A lazy
/// entry no image holds is an error of `pagemap_path`.
fn sort_entries(
    top: &mut Pagemap,
    levels: &mut [Level],
    vmas: &[VmaEntry],
    pagemap_path: &Path,
) -> Result<Sorted, ImageError> {
    let mut found = Vec::new();
    let mut eager = Vec::new();
    let mut flagged = 0;
    let mut changed = false;
    // On top of pre-copy rounds, the dump's own pages are those written since the last round.
    let mut hot_budget = if levels.len() > 1 { HOT_PAGES_BYTES } else { 0 };
    let mut pieces = Vec::new();
    for e in &mut top.entries {
        pieces.clear();
        let resolved = resolve(levels, e.vaddr, e.end(), &mut pieces);
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
                    pagemap_path,
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
    Ok(Sorted {
        lazy: found,
        eager,
        flagged,
        changed: flagged > 0 || changed,
    })
}

/// Cuts the runs `found` at the VMA boundaries and joins the runs that continue each other in
/// the same file and mapping. Pages outside every VMA are not the task's to get.
fn cut_at_vmas(found: Vec<Extent>, vmas: &[VmaEntry]) -> Vec<Extent> {
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
    extents.into_iter().map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{chain, dump, mm, p, pagemap, pe, vma, ANON, HEAP};
    use super::super::vma::MAP_LOCKED;
    use super::*;

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
        dump(
            &top,
            &[
                pe(p(0), 1, PE_PRESENT),
                pe(p(1), 5, PE_PARENT | PE_LAZY),
                pe(p(6), 2, PE_PRESENT | PE_LAZY),
                pe(p(8), 2, PE_PARENT | PE_LAZY),
                pe(p(10), 2, PE_PARENT),
            ],
            // Two mappings meet at page 5.
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
        dump(
            &top,
            &[
                pe(p(0), 2, PE_PRESENT | PE_LAZY),
                pe(p(2), big, PE_PRESENT | PE_LAZY),
                pe(p(2 + budget), 1, PE_PRESENT | PE_LAZY),
            ],
            vec![vma(p(0), p(3 + budget), ANON, HEAP)],
        );
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
        dump(
            alone.path(),
            &[pe(p(0), 2, PE_PRESENT | PE_LAZY)],
            vec![vma(p(0), p(2), ANON, HEAP)],
        );
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
