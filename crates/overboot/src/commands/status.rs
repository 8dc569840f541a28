//! `overboot status`: the last update's report.

use std::path::PathBuf;

use overboot::model::report::{state_dir, Report};

use super::error::{print, CommandError};

/// Arguments of `overboot status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Persistent state directory; default $OVERBOOT_STATE_DIR or /var/lib/overboot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    let report = Report::last(&args.state_dir.unwrap_or_else(state_dir))?;
    print(json, report.human().trim_end(), &report)
}
