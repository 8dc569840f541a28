//! The lazy restore's page server (`overboot serve-pages DIR`, started by `overboot::lazy`): it
//! puts the memory CRIU's restore left out back into the restored tasks over userfaultfd,
//! straight from the map's page files, and exits once every page is back.
//!
//! It speaks the protocol of CRIU's own `criu lazy-pages` daemon to `criu restore
//! --lazy-pages`, over [`SOCKET`] in the images dir: per restored task its pid (a
//! native `i32`; negative for a zombie, with nothing else) followed by its userfaultfd (one
//! byte with `SCM_RIGHTS`); once every task is restored, [`RESTORE_FINISHED`]. Unlike CRIU
//! 3.17's daemon it serves the pages a pre-copy round holds as well (see
//! [`overboot_checkpoint::pagemap`]), finds a page by a lookup rather than a walk of the
//! pagemaps, and copies from a mapping of the page file rather than through a buffer.
//!
//! What it does per task (`userfaultfd` events, the task stopped until answered):
//! - a fault on a page it still holds: copies the 64 KiB around it (within the extent);
//!   on a page it does not hold (never dumped, or dropped since): a zero page;
//! - `FORK`: the child gets its own copy of what the parent still misses;
//! - `REMAP` (mremap): the pages move with the mapping; `UNMAP`/`REMOVE` (munmap, madvise
//!   `DONTNEED`): they are dropped, a later fault there reads zeros as it would have;
//! - once the restore finished and no fault waits: copies the rest, 1 MiB at a time, at nice
//!   19 (the service, just resumed, and the agent finishing the update get the CPU first; a
//!   fault waits at most for one such copy, then is handled at the server's own priority).
//!
//! Every 5 s after the restore finished, its log says what came in since and what is left; its
//! last line sums it all up, with the longest a fault waited.
//!
//! Should it fail, it kills the tasks it serves: a task whose missing pages can no longer
//! come would otherwise read zeros where its memory was (exit code non-zero, cause on stderr).
//!
//! Before it listens it writes [`PIECES`] beside the images: which pieces of the page files it
//! checks against their digests itself, for the restore's gate to leave
//! ([`served_pieces`] reads them back for it).
//!
//! Its modules, each using only those listed before it: `protocol` (CRIU's side of the
//! socket), `event` (the kernel's userfaultfd messages), `error`, `summary` (the log's lines),
//! `missing` (what one task still misses), `pieces` (the digests and [`PIECES`]), `index` (the
//! images, read once before it listens) and `server`.

mod error;
mod event;
mod index;
mod missing;
mod pieces;
mod protocol;
mod server;
mod summary;

pub use error::{PageServerError, FAILED};
pub use missing::Missing;
pub use pieces::{served_pieces, PIECES};
pub use protocol::{RESTORE_FINISHED, SOCKET};
pub use server::{serve, serve_and_log};
pub use summary::Summary;
