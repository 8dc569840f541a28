//! `overboot status`: the last update's report (every attempt leaves one: resumed, rolled
//! back, failed, refused); `--all` the history.

use std::path::PathBuf;

use overboot::model::report::Report;

use super::config::Config;
use super::error::{print, CommandError};

/// Arguments of `overboot status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Persistent state directory; default $OVERBOOT_STATE_DIR, the config file's state_dir,
    /// or /var/lib/overboot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Every report kept, oldest first, one line each (`--json`: the whole reports).
    #[arg(long)]
    all: bool,
}

pub fn run(args: Args, config: &Config, json: bool) -> Result<(), CommandError> {
    let state = config.state_dir(args.state_dir);
    // An update that died before its jump left its trees frozen: bring them back first; the
    // report below says so.
    let work_dir = PathBuf::from(overboot::model::files::DEFAULT_WORK_DIR);
    let mut effects = overboot::old::effects::HostEffects::new(true, &work_dir, 2);
    let _ = overboot::old::inflight::recover_stale(&mut effects, &state);
    if args.all {
        let reports = Report::all(&state)?;
        let lines: Vec<String> = reports.iter().map(Report::line).collect();
        return print(json, &lines.join("\n"), &reports);
    }
    let report = Report::last(&state)?;
    print(json, report.human().trim_end(), &report)
}
