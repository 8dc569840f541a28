//! The pagemap image (`pagemap-<pid>.img`, drawn in [`super`]): its entries decoded and
//! encoded by hand, a task's pagemap read from one directory and from each round of the chain
//! below it, and written back with changed flags; plus the framing every multi-entry image
//! shares (the `mm` image is read with it too).

use std::path::{Path, PathBuf};

use prost::Message;

use crate::images::{image_start, put_entry, ImageError, IMG_COMMON_MAGIC};

/// `magic.h`: the pagemap image.
pub(super) const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// `pagemap.h`: the pages are in the parent images.
pub(super) const PE_PARENT: u32 = 1 << 0;
/// `pagemap.h`: the pages may be restored by the lazy-pages daemon.
pub(super) const PE_LAZY: u32 = 1 << 1;
/// `pagemap.h`: the pages are in this image.
pub(super) const PE_PRESENT: u32 = 1 << 2;

/// The page size of every image CRIU writes on x86-64.
pub const PAGE_SIZE: u64 = 4096;

/// `pagemap_head` of `images/pagemap.proto`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pub(super) pages_id: u32,
}

/// One `pagemap_entry` of `images/pagemap.proto` (`vaddr` 1, `nr_pages` 2, `in_parent` 3,
/// `flags` 4), decoded by hand: after pre-copy a task's pagemap at 2 GiB holds some 130,000
/// entries in each round, and decoding each into an allocation of its own with prost took about
/// 0.4 s a pagemap in the lab's guests, inside the blackout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) vaddr: u64,
    pub(super) nr_pages: u32,
    /// `PE_*`, with `in_parent` folded in (see [`pe_flags`]).
    pub(super) flags: u32,
    /// Where its encoding lies in the image's bytes, copied as is when the image is rewritten;
    /// `None` once it changed.
    pub(super) raw: Option<(usize, usize)>,
}

impl Entry {
    pub(super) fn end(&self) -> u64 {
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
pub(super) fn encode_entry(vaddr: u64, nr_pages: u32, flags: u32, out: &mut Vec<u8>) {
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

pub(super) fn format_error(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The entries of a multi-entry image, in place: `(magic, [(offset, len)])`.
pub(super) fn entry_spans(
    path: &Path,
    bytes: &[u8],
) -> Result<(u32, Vec<(usize, usize)>), ImageError> {
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
pub(super) struct Pagemap {
    /// The image, as read (a rewrite keeps its head and unchanged entries).
    pub(super) bytes: Vec<u8>,
    /// The head's place in `bytes`.
    pub(super) head: (usize, usize),
    /// `pages-<pages_id>.img`, beside the pagemap.
    pub(super) pages_id: u32,
    pub(super) entries: Vec<Entry>,
}

pub(super) fn read_pagemap(dir: &Path, pid: &str) -> Result<Pagemap, ImageError> {
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

/// The chain of pagemaps of `pid` below `images`: `parent/`, `parent/parent/`, ...
pub(super) fn parent_chain(
    images: &Path,
    pid: &str,
) -> Result<Vec<(PathBuf, Pagemap)>, ImageError> {
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
pub(super) fn rewrite_pagemap(
    images: &Path,
    pid: &str,
    pagemap: &Pagemap,
) -> Result<(), ImageError> {
    let path = images.join(format!("pagemap-{pid}.img"));
    let mut out = image_start(
        PAGEMAP_MAGIC,
        pagemap.bytes.len() + pagemap.entries.len() * 4,
    );
    let mut put = |payload: &[u8]| {
        put_entry(&mut out, payload).ok_or_else(|| format_error(&path, "entry too large"))
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::PagemapEntry;
    use super::*;

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
}
