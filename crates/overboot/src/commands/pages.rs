//! `overboot serve-pages DIR` (hidden): the lazy restore's page server, started by the agent
//! for each tree it restores lazily (see [`overboot_pageserver`]). Its summary goes to stderr,
//! which the agent sends to `lazy-pages.log` beside the images.

use std::path::PathBuf;

use super::error::CommandError;

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
    Ok(overboot_pageserver::serve_and_log(&args.dir, &args.map)?)
}
