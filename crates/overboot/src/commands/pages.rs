//! `overboot serve-pages DIR` (hidden): the lazy restore's page server, started by the agent
//! for each tree it restores lazily (see [`overboot::pageserver`]). Its summary goes to stderr,
//! which the agent sends to `lazy-pages.log` beside the images.

use std::io::Write;
use std::path::PathBuf;

use super::CommandError;

/// Arguments of `serve-pages`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The restore's images dir (it must be the current directory: the socket is relative).
    pub dir: PathBuf,
    /// The Save State Map holding the page files (for their piece digests).
    #[arg(long)]
    pub map: PathBuf,
}

pub fn run(args: Args) -> Result<(), CommandError> {
    let started = std::time::Instant::now();
    let summary = overboot::pageserver::serve(&args.dir, &args.map)?;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "every page is back: {} tasks, {} pages ({} in at {} faults, {} zero-page faults, {} in \
         the background, {} dropped by the tasks; {} MiB checked), images indexed in {} ms{}, \
         {} ms after the restore finished, {} ms in all",
        summary.tasks,
        summary.pages,
        summary.fault_pages,
        summary.faults,
        summary.zero_faults,
        summary.background_pages,
        summary.dropped_pages,
        summary.checked_bytes >> 20,
        summary.index_ms,
        if summary.flat {
            " (the restore read no pre-copy round)"
        } else {
            ""
        },
        summary.after_restore_ms,
        started.elapsed().as_millis()
    );
    Ok(())
}
