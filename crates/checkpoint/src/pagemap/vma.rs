//! The task's mappings, from its `mm-<pid>.img`: which of them CRIU registers for lazy pages,
//! and where each one begins and ends (a page server's copy stays within one).

use std::path::Path;

use prost::Message;

use super::image::{entry_spans, format_error, read_file};
use crate::images::ImageError;

/// `mman.h`.
pub(super) const MAP_PRIVATE: u32 = 0x02;
pub(super) const MAP_ANONYMOUS: u32 = 0x20;
pub(super) const MAP_LOCKED: u32 = 0x2000;
const MAP_HUGETLB: u32 = 0x4_0000;
/// `image.h`: VMA status bits.
pub(super) const VMA_AREA_REGULAR: u32 = 1 << 0;
const VMA_AREA_STACK: u32 = 1 << 1;
const VMA_AREA_VSYSCALL: u32 = 1 << 2;
const VMA_AREA_VDSO: u32 = 1 << 3;
pub(super) const VMA_ANON_PRIVATE: u32 = 1 << 9;
const VMA_AREA_VVAR: u32 = 1 << 12;
const VMA_AREA_AIORING: u32 = 1 << 13;

/// `vma_entry` of `images/vma.proto` (the fields read here).
#[derive(Clone, PartialEq, Message)]
pub(super) struct VmaEntry {
    #[prost(uint64, required, tag = "1")]
    pub(super) start: u64,
    #[prost(uint64, required, tag = "2")]
    pub(super) end: u64,
    #[prost(uint32, required, tag = "6")]
    pub(super) flags: u32,
    #[prost(uint32, required, tag = "7")]
    pub(super) status: u32,
}

impl VmaEntry {
    /// CRIU 3.17's `vma_entry_can_be_lazy`, narrowed to regular private anonymous memory
    /// (never the main stack, vDSO, vvar, vsyscall, AIO rings, locked or huge pages).
    pub(super) fn can_be_lazy(&self) -> bool {
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
pub(super) struct MmEntry {
    #[prost(message, repeated, tag = "14")]
    pub(super) vmas: Vec<VmaEntry>,
}

pub(super) fn read_vmas(dir: &Path, pid: &str) -> Result<Vec<VmaEntry>, ImageError> {
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
