//! `overboot pending`: whether a kernel newer than the running one is installed — a sentinel
//! for automation (exit 0: an update is pending; 10: none), e.g. kured's
//! `--reboot-sentinel-command`. After a rollback the old kernel runs again, so the update
//! stays pending. Also writes the `overboot_update_pending` metric.

use std::path::PathBuf;

use overboot::host::kernels;

use super::error::{print, CommandError};

/// Arguments of `overboot pending`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the installed kernels are (`vmlinuz-<release>`).
    #[arg(long, default_value = "/boot")]
    boot: PathBuf,
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    let running = overboot::host::proc::release();
    let newest = kernels::pending(&args.boot, &running);
    let metrics =
        overboot::model::metrics::of_pending(&running, newest.as_ref().map(|k| k.release.as_str()));
    if let Err(e) = overboot::model::metrics::write("overboot_pending.prom", &metrics) {
        tracing::warn!(error = %e, "cannot write the metrics textfile");
    }
    let human = match &newest {
        Some(k) => format!(
            "pending: {running} runs, {} is installed ({})",
            k.release,
            k.kernel.display()
        ),
        None => format!("nothing pending: no installed kernel is newer than {running}"),
    };
    print(
        json,
        &human,
        &serde_json::json!({"running": running, "pending": newest.is_some(), "newest": newest}),
    )?;
    match newest {
        Some(_) => Ok(()),
        None => Err(CommandError::NothingPending),
    }
}
