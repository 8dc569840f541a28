//! `overboot resume`: the agent run by the new kernel's early userspace.

use std::path::PathBuf;

use overboot::report::state_dir;
use overboot::resume::{self, ResumeOptions};

use super::{print, CommandError};

/// Arguments of `overboot resume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read the kernel command line from this file.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline_file: PathBuf,
    /// Persistent state directory (reports); default $OVERBOOT_STATE_DIR or /var/lib/overboot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Scratch space in RAM for the restore.
    #[arg(long, default_value = "/run/overboot")]
    work_dir: PathBuf,
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    let cmdline = std::fs::read_to_string(&args.cmdline_file).map_err(CommandError::Output)?;
    let options = ResumeOptions {
        cmdline,
        state_dir: args.state_dir.unwrap_or_else(state_dir),
        work_dir: args.work_dir,
    };
    match resume::run(&options)? {
        None => print(
            json,
            "no Save State Map on the command line: nothing to resume",
            &serde_json::json!({"resumed": false}),
        ),
        Some(report) => print(json, report.human().trim_end(), &report),
    }
}
