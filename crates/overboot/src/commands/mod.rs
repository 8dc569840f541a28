//! The verbs of the CLI. Each module turns its arguments into plain options and calls the
//! library; [`CommandError`] carries the failure class that decides the exit code.

mod args;
mod config;
mod docs;
mod error;
mod guard;
mod kexec;
mod pages;
mod patch;
mod pending;
mod plan;
mod resume;
mod status;
pub mod systemd;
mod update;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use config::Config;
pub use error::{exit_code, CommandError};

/// Move a running Linux server onto a new kernel without stopping its services.
#[derive(Debug, Parser)]
#[command(name = "overboot", version, about)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); OVERBOOT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Machine-readable output: one JSON document on stdout, logs as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// The config file (settings of plan and update, the state directory of status and
    /// resume); default $OVERBOOT_CONFIG, else /etc/overboot/overboot.toml if it exists. A
    /// file named here or by $OVERBOOT_CONFIG must exist.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Boot a new kernel over the running one (no services preserved).
    Kexec(kexec::Args),
    /// Live patches: build, apply, list, revert, replace (no kernel switch).
    Patch(patch::Args),
    /// Whether a kernel newer than the running one is installed (exit 0: yes; 10: no).
    Pending(pending::Args),
    /// What `update` would do, changing nothing; exits non-zero when it would fail.
    Plan(plan::Args),
    /// Carry process trees onto a new kernel: check, freeze, dump, hand over, kexec.
    Update(update::Args),
    /// The agent of the new kernel: verify the Save State Map and restore its trees.
    Resume(resume::Args),
    /// The last update's report.
    Status(status::Args),
    /// systemd hosts: install the generator, make a service preservable, adopt restored units.
    Systemd(systemd::Args),
    /// The lazy restore's page server (started by the agent).
    #[command(hide = true)]
    ServePages(pages::Args),
    /// The guardian of an update (started by `update` before its freeze).
    #[command(hide = true)]
    Guard(guard::Args),
    /// Write the manual pages and shell completions into a directory (packaging).
    #[command(hide = true)]
    GenerateDocs(docs::Args),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    let named = config::named(cli.config);
    let config = named.as_deref();
    match cli.command {
        Verb::Kexec(args) => kexec::run(args, cli.json),
        Verb::Patch(args) => patch::run(args, cli.json),
        Verb::Pending(args) => pending::run(args, cli.json),
        Verb::Plan(args) => plan::run(args, &Config::load(config)?, cli.json),
        Verb::Update(args) => update::run(args, &Config::load(config)?, cli.json),
        Verb::Resume(args) => resume::run(args, &resume::config(config), cli.json),
        Verb::Status(args) => status::run(args, &Config::load(config)?, cli.json),
        Verb::Systemd(args) => systemd::run(args, cli.json),
        Verb::ServePages(args) => pages::run(args),
        Verb::Guard(args) => guard::run(args),
        Verb::GenerateDocs(args) => docs::run(args, Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_named_before_or_after_the_verb() {
        for words in [
            &["overboot", "--config", "/etc/ob.toml", "status"][..],
            &["overboot", "status", "--config", "/etc/ob.toml"][..],
        ] {
            let cli = Cli::try_parse_from(words).unwrap();
            assert_eq!(
                cli.config.as_deref(),
                Some(std::path::Path::new("/etc/ob.toml"))
            );
        }
    }
}
