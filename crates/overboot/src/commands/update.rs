//! `overboot update`: carry process trees onto a new kernel.

use std::time::Instant;

use overboot::old::effects::HostEffects;
use overboot::old::update;

use super::args::UpdateArgs;
use super::config::Config;
use super::error::CommandError;

/// Arguments of `overboot update`.
pub type Args = UpdateArgs;

pub fn run(args: Args, config: &Config, json: bool) -> Result<(), CommandError> {
    let options = args.options(config)?;
    tracing::info!(config = %config.source(), "config file");
    // Once trees are dumped, this process is the only way back for them: the kernel's OOM
    // killer must pick anything else (best effort; needs root, as the update does anyway).
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let start = Instant::now();
    let mut progress = |step: &str| {
        if !json {
            eprintln!("[{:>6.2}s] {step}", start.elapsed().as_secs_f64());
        } else {
            tracing::info!(step, "progress");
        }
    };
    let mut effects = HostEffects::for_update(&options);
    // An update that died before its jump left its trees frozen: bring them back first.
    if let Some(report) = overboot::old::inflight::recover_stale(&mut effects, &options.state_dir) {
        progress(&format!(
            "recovered an earlier update: {}",
            report.detail.unwrap_or_default()
        ));
    }
    update::run(&mut effects, &options, &mut progress)?;
    Ok(())
}
