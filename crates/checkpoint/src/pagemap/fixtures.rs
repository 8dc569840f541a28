//! Images for the tests of the pagemap modules: pagemap and mm images as CRIU writes them,
//! and a chain of pre-copy rounds below a dump.

use std::path::{Path, PathBuf};

use prost::Message;

use super::image::{PagemapHead, PAGEMAP_MAGIC, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
use super::vma::{
    MmEntry, VmaEntry, MAP_ANONYMOUS, MAP_PRIVATE, VMA_ANON_PRIVATE, VMA_AREA_REGULAR,
};
use crate::images::{image_start, put_entry};

/// `pagemap_entry`, as prost encodes it: the reference the hand-written codec is held to.
#[derive(Clone, PartialEq, Message)]
pub(super) struct PagemapEntry {
    #[prost(uint64, required, tag = "1")]
    pub(super) vaddr: u64,
    #[prost(uint32, required, tag = "2")]
    pub(super) nr_pages: u32,
    #[prost(bool, optional, tag = "3")]
    pub(super) in_parent: Option<bool>,
    #[prost(uint32, optional, tag = "4")]
    pub(super) flags: Option<u32>,
}

pub(super) fn write_multi(path: &Path, magic: u32, entries: &[Vec<u8>]) {
    let mut out = image_start(magic, 0);
    for e in entries {
        put_entry(&mut out, e).unwrap();
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

/// The dump of task 5 in `top`: its pagemap (its own pages in `pages-13.img`) and mappings.
pub(super) fn dump(top: &Path, entries: &[Vec<u8>], vmas: Vec<VmaEntry>) {
    pagemap(&top.join("pagemap-5.img"), 13, entries);
    mm(top, 5, vmas);
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
