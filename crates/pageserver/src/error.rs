//! Why the page server stopped before every page was back, and what the CLI says failed.

use std::path::PathBuf;

use nix::errno::Errno;
use overboot_checkpoint::images::ImageError;

/// What the CLI says failed when a page server stops before every page is back (the head of
/// the error chain it prints, whether the server runs as the verb or as a fork of the agent).
pub const FAILED: &str = "serving the lazy restore's pages";

/// Why the page server stopped before every page was back.
#[derive(Debug, thiserror::Error)]
pub enum PageServerError {
    /// The images could not be read.
    #[error("cannot index the pages left to the lazy restore in {dir}")]
    Index {
        dir: PathBuf,
        #[source]
        source: ImageError,
    },
    /// A page file could not be mapped, or is shorter than its pagemap says.
    #[error("cannot map page file {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be made or the restore did not connect.
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the restore's connection failed.
    #[error("reading from criu restore")]
    Restore(#[source] std::io::Error),
    /// The restore went away before it finished.
    #[error("criu restore closed its connection before it finished")]
    HungUp,
    /// The restore named a task the images do not hold.
    #[error("criu restore sent task {0}, which the images hold no pagemap for")]
    UnknownTask(i32),
    /// A userfaultfd operation failed for a reason other than the task's address space
    /// changing or the task exiting.
    #[error("{op} at {addr:#x} in task {pid}")]
    Uffd {
        op: &'static str,
        pid: i32,
        addr: u64,
        #[source]
        source: Errno,
    },
    /// The task's address space kept changing under one copy.
    #[error("task {pid} kept changing its memory map under the copy at {addr:#x}")]
    Unsettled { pid: i32, addr: u64 },
    /// An event the server does not know.
    #[error("task {pid} sent userfaultfd event {event:#x}, which is not handled")]
    UnknownEvent { pid: i32, event: u8 },
    /// The map cannot be opened for its piece digests.
    #[error("cannot open the map at {path} for the digests of its memory pages")]
    OpenMap {
        path: PathBuf,
        #[source]
        source: overboot_handover::HandoverError,
    },
    /// A piece of a page file does not match its digest: its pages are not put in.
    #[error(
        "{path}: bytes {start}..{end} do not match their digest (expected {expected}, got \
         {actual}); the tasks are killed rather than given damaged memory"
    )]
    Corrupt {
        path: PathBuf,
        start: u64,
        end: u64,
        expected: String,
        actual: String,
    },
    /// poll(2) or reading events failed.
    #[error("waiting for page faults")]
    Poll(#[source] std::io::Error),
}
