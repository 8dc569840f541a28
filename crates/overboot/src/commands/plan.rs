//! `overboot plan`: what `update` would do with the same arguments, changing nothing.

use overboot::old::effects::HostEffects;

use super::args::UpdateArgs;
use super::config::Config;
use super::error::{print, CommandError};

/// Arguments of `overboot plan`: those of `update`.
pub type Args = UpdateArgs;

pub fn run(args: Args, config: &Config, json: bool) -> Result<(), CommandError> {
    let options = args.options(config)?;
    let mut effects = HostEffects::for_update(&options);
    let mut plan = overboot::old::plan::make(&mut effects, &options);
    plan.config = config.path.clone();
    print(json, plan.human().trim_end(), &plan)?;
    if plan.ok {
        Ok(())
    } else {
        Err(CommandError::PlanRefused(plan.problems.len()))
    }
}
