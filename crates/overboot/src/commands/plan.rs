//! `overboot plan`: what `update` would do, changing nothing.

use std::path::PathBuf;

use overboot::target::Target;

use super::{print, CommandError};

/// Arguments of `overboot plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new kernel (an x86 bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// Its initrd.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// What to carry across: `pid:N` or `unit:NAME.service`. Repeatable.
    #[arg(long = "preserve", value_name = "TARGET")]
    preserve: Vec<Target>,
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    let kernel = overboot_kexec::inspect(&args.kernel);
    let engine = match overboot_checkpoint::Criu::default().probe() {
        Ok(probe) => match probe.check_error {
            None => Ok(probe.version.to_string()),
            Some(reason) => Err(format!("criu {} check failed: {reason}", probe.version)),
        },
        Err(e) => Err(overboot_checkpoint::error_chain(&e)),
    };
    let plan = overboot::plan::make(kernel, args.initrd.as_deref(), &args.preserve, engine);
    print(json, plan.human().trim_end(), &plan)?;
    if plan.ok {
        Ok(())
    } else {
        Err(CommandError::PlanRefused(plan.problems.len()))
    }
}
