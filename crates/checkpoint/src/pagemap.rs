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

mod flat;
mod image;
mod lazy;
mod vma;

pub use flat::{flatten, prepare_lazy_flat};
pub use image::{task_pids, PAGE_SIZE};
pub use lazy::{prepare_lazy, Extent, LazyPages, HOT_PAGES_BYTES};

#[cfg(test)]
mod fixtures;
