//! The crate's one unsafe operation: a read-only mapping of a map file, so that the digest of a
//! large image is computed in place. On reserved RAM (`memmap=`, a DAX file system on
//! `/dev/pmem0`) the mapping is the store's memory itself, and hashing reads it without the
//! copy into a buffer that `read` makes — under QEMU TCG that copy alone ran at 490 MB/s.

use std::fs::File;
use std::io;

/// The bytes of `file`, mapped read-only with every page present.
pub(crate) fn map(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private to this call's caller, which only reads it
    // to hash it. A map's files are written once (by `MapWriter` in the old kernel, or by the
    // cpio unpacking of the new kernel's initrd) and only read afterwards; nothing in overboot
    // writes or truncates one while it is hashed. Should something outside overboot do so
    // anyway, the digest sees changed bytes and the file fails its check (a write), or the
    // process takes SIGBUS (a truncation) — never a result that passes for the file's content.
    unsafe { memmap2::MmapOptions::new().populate().map(file) }
}

/// The bytes of a map file, mapped read-only; its pages come in as they are first read. The
/// lazy restore's page server copies restored tasks' pages out of such mappings: on the
/// reserved-RAM store, straight from the store's memory into the task's.
pub fn map_read_only(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: as for `map`: read-only, and the map's files are written once and only read
    // afterwards; nothing in overboot writes or truncates one while the page server runs, and
    // the server checks its offsets against the mapping's length before reading. A change from
    // outside overboot would be a change of the pages served (the map was verified before the
    // restored tasks ran) or a SIGBUS that ends the server — never memory unsafety of ours.
    unsafe { memmap2::MmapOptions::new().map(file) }
}
