//! The Save State Map (SSM): the state `overboot update` hands from the old kernel to the new
//! kernel's early userspace (`overboot resume`).
//!
//! A map is a directory ([`map`]): a binary [`header`] pinning a JSON [`manifest`] (format
//! version, kernels, clocks at freeze, preserved trees, carried files, rollback recipe, and the
//! size and digest of every file: XXH64 in format 3, XXH3-128 in format 2, SHA-256 in format
//! 1), plus the image files. In the old kernel a [`MapWriter`] builds it after the dump and a [`Store`] publishes it (appended to the new initrd as a newc
//! [`cpio`], or copied to a directory). In the new kernel [`locate_from_cmdline`] finds it,
//! [`SaveStateMap::open`] checks header and manifest, and [`SaveStateMap::verify_files`] checks
//! every image before anything is restored.

mod cmdline;
pub mod cpio;
mod digest;
mod error;
pub mod header;
mod layout;
pub mod manifest;
pub mod map;
mod mapped;
pub mod network;
pub mod store;
mod verify;
mod writer;

pub use digest::{chunk_digest, CHUNK_BYTES};
pub use error::HandoverError;
pub use manifest::{
    CarriedFile, ClockReadings, DigestAlgorithm, FileEntry, FormatVersion, JournalStream,
    KernelInfo, Manifest, ManifestError, PreservedTree, PreservedUnit, RollbackRecipe,
    TargetKernel, CURRENT_DIGEST, CURRENT_FORMAT,
};
pub use map::SaveStateMap;
pub use mapped::map_read_only;
pub use store::{
    locate_from_cmdline, locate_store_from_cmdline, DirectoryStore, InitrdStore, Published, Store,
    StoreError, StoreKind, CMDLINE_KEY,
};
pub use verify::{DeferredFiles, VerifyReport};
pub use writer::MapWriter;
