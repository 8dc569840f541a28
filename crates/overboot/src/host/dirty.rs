//! Between pre-copy rounds: how much of a running tree's memory was written since the last
//! round, i.e. what the next round would copy, read before paying for it.
//!
//! ```text
//!  round k (CRIU pre-dump, track_mem)    service runs, writes pages     decide round k+1
//!  collects pages, clears soft-dirty ──► PTEs get soft-dirty again ──► count them here
//!                                                                      small: no round k+1
//! ```
//!
//! Each round clears the soft-dirty bits of the tree's page tables (`/proc/PID/clear_refs`,
//! CRIU's `track_mem`); a write sets a page's bit again, and a mapping made since is dirty
//! whole. `/proc/PID/pagemap` shows the bit (55) for every page, beside present (63) and
//! swapped (62): the pages present or swapped with the bit set are those the next round would
//! write (CRIU reads the same bits). Shared file mappings are left out, as CRIU dumps none of
//! their pages. Reading the page tables is the kernel's walk of the whole memory, done while
//! the service runs: outside the blackout.
//!
//! Why ask first rather than run the round and look at its size: every round adds a level to
//! the chain of pagemaps, and every level lists the whole memory (a 2 GiB Redis: some 130,000
//! entries), which CRIU reads again inside the blackout — the frozen dump opens its parent's
//! chain — and so does the page server before the restore can start (about 40 ms a level for
//! a 512 MiB Redis in the lab). A round that would copy no more than the freeze writes anyway
//! spares it nothing and costs it that level ([`crate::precopy::Policy::worth_next`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Bytes of a page.
const PAGE: u64 = 4096;
/// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const SOFT_DIRTY: u64 = 1 << 55;
/// Pagemap entries read at a time (256 KiB, 128 MiB of memory).
const CHUNK_ENTRIES: usize = 32 * 1024;

/// Why the written bytes could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// `/proc/PID/maps` or `/proc/PID/pagemap` could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of `/proc/PID/maps` is not a mapping.
    #[error("{path}: not a mapping: {line:?}")]
    Maps { path: PathBuf, line: String },
}

/// The pages of `entries` (raw pagemap entries, 8 bytes each, native order) that are present
/// or swapped and soft-dirty.
pub fn count_dirty(entries: &[u8]) -> u64 {
    entries
        .chunks_exact(8)
        .map(|e| u64::from_ne_bytes(e.try_into().unwrap_or([0; 8])))
        .filter(|e| e & SOFT_DIRTY != 0 && e & (PRESENT | SWAPPED) != 0)
        .count() as u64
}

/// The soft-dirty pages of `[start, end)` of the address space whose pagemap is open as
/// `pagemap`.
pub fn dirty_pages(pagemap: &File, start: u64, end: u64) -> std::io::Result<u64> {
    let mut page = start / PAGE;
    let last = end.div_ceil(PAGE);
    // Most mappings are a few pages (libraries, stacks): a buffer of their size.
    let entries = usize::try_from(last.saturating_sub(page))
        .unwrap_or(usize::MAX)
        .min(CHUNK_ENTRIES);
    let mut buf = vec![0u8; entries * 8];
    let mut dirty = 0;
    while page < last {
        let want = usize::try_from(last - page)
            .unwrap_or(usize::MAX)
            .min(CHUNK_ENTRIES);
        let read = pagemap.read_at(&mut buf[..want * 8], page * 8)?;
        if read == 0 {
            break; // past the end of the user address space
        }
        dirty += count_dirty(&buf[..read]);
        page += (read / 8) as u64;
    }
    Ok(dirty)
}

/// One line of `/proc/PID/maps`: `[start, end)` and whether CRIU dumps its pages (not a
/// shared file mapping, not the vsyscall page).
fn mapping(line: &str) -> Option<(u64, u64, bool)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let inode = fields.nth(2)?;
    let path = fields.next().unwrap_or("");
    let shared_file = perms.ends_with('s')
        && inode != "0"
        && !path.starts_with("/dev/zero")
        && !path.starts_with("/SYSV");
    Some((start, end, !shared_file && path != "[vsyscall]"))
}

/// Bytes the processes `pids` wrote since their soft-dirty bits were last cleared. A process
/// that exited meanwhile counts nothing.
pub fn dirty_bytes(pids: &[i32]) -> Result<u64, DirtyError> {
    let mut pages = 0;
    for pid in pids {
        let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
        let pagemap_path = PathBuf::from(format!("/proc/{pid}/pagemap"));
        let read_error = |path: &PathBuf| {
            let path = path.clone();
            move |source| DirtyError::Read { path, source }
        };
        // A process gone since the targets were read: nothing of it to copy.
        let open = |path: &PathBuf| match File::open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_error(path)(e)),
        };
        let (Some(maps), Some(pagemap)) = (open(&maps_path)?, open(&pagemap_path)?) else {
            continue;
        };
        for line in BufReader::new(maps).lines() {
            let line = line.map_err(read_error(&maps_path))?;
            let (start, end, dumped) = mapping(&line).ok_or_else(|| DirtyError::Maps {
                path: maps_path.clone(),
                line: line.clone(),
            })?;
            if dumped {
                pages += dirty_pages(&pagemap, start, end).map_err(read_error(&pagemap_path))?;
            }
        }
    }
    Ok(pages * PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn only_present_or_swapped_soft_dirty_pages_count() {
        let pfn = 0x1234;
        let bytes = entries(&[
            PRESENT | SOFT_DIRTY | pfn, // written since the clear
            PRESENT | pfn,              // clean
            SWAPPED | SOFT_DIRTY,       // written, then swapped out
            SOFT_DIRTY,                 // in a new mapping, never touched: nothing to copy
            0,
            PRESENT | SOFT_DIRTY | (1 << 61) | pfn, // file page, written (private copy)
        ]);
        assert_eq!(count_dirty(&bytes), 3);
        // A torn entry at the end is not an entry.
        assert_eq!(count_dirty(&bytes[..bytes.len() - 3]), 2);
    }

    #[test]
    fn shared_file_mappings_and_vsyscall_are_not_dumped_the_rest_is() {
        let cases = [
            (
                "55d3f6a5e000-55d3f6a7f000 rw-p 00000000 00:00 0          [heap]",
                true,
            ),
            (
                "7f00000000-7f00100000 r-xp 00000000 fe:01 1234    /usr/lib/libc.so.6",
                true,
            ),
            (
                "7f00000000-7f00100000 rw-s 00000000 fe:01 1234    /var/lib/db.mmap",
                false,
            ),
            (
                "7f00000000-7f00100000 rw-s 00000000 00:01 99      /dev/zero (deleted)",
                true,
            ),
            (
                "7f00000000-7f00100000 rw-s 00000000 00:01 98      /SYSV00000000 (deleted)",
                true,
            ),
            ("7f00000000-7f00100000 rw-p 00000000 00:00 0", true),
            (
                "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]",
                false,
            ),
        ];
        for (line, dumped) in cases {
            let (start, end, d) = mapping(line).expect(line);
            assert!(start < end, "{line}");
            assert_eq!(d, dumped, "{line}");
        }
        assert_eq!(mapping("not a mapping"), None);
        assert_eq!(
            mapping("55d3f6a5e000-55d3f6a7f000 rw-p 00000000 00:00 0"),
            Some((0x55d3_f6a5_e000, 0x55d3_f6a7_f000, true))
        );
    }

    #[test]
    fn a_process_of_this_machine_can_be_read_and_a_gone_one_counts_nothing() {
        // Whether this kernel tracks soft-dirty pages or not, the walk of a real address space
        // reads every mapping; the count itself is checked in the lab's guests, whose kernels
        // track (pre-copy's report: `dirty_after`).
        let own = i32::try_from(std::process::id()).expect("pid");
        let bytes = dirty_bytes(&[own]).expect("own address space");
        assert_eq!(bytes % PAGE, 0);
        assert_eq!(dirty_bytes(&[i32::MAX]).expect("no such process"), 0);
    }

    #[test]
    fn a_range_is_read_in_chunks_to_its_end() {
        // A file standing in for a pagemap: 3 chunks and a bit, every third entry dirty.
        let n = CHUNK_ENTRIES * 3 + 5;
        let values: Vec<u64> = (0..n)
            .map(|i| {
                if i.is_multiple_of(3) {
                    PRESENT | SOFT_DIRTY
                } else {
                    PRESENT
                }
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pagemap");
        std::fs::write(&path, entries(&values)).expect("write");
        let file = File::open(&path).expect("open");
        let all = dirty_pages(&file, 0, n as u64 * PAGE).expect("read");
        assert_eq!(all, n.div_ceil(3) as u64);
        // From page 1 to page 7: pages 3 and 6.
        assert_eq!(dirty_pages(&file, PAGE, 7 * PAGE).expect("read"), 2);
        // Past the end: what there is.
        assert_eq!(
            dirty_pages(&file, (n as u64 - 1) * PAGE, (n as u64 + 100) * PAGE).expect("read"),
            u64::from((n - 1).is_multiple_of(3))
        );
    }
}
