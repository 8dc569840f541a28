//! `overboot systemd`: set a systemd host up for updates that carry services as themselves
//! (`install`, `prepare`), and the two steps the new boot's units run (`adopt`, `finish`).
//! Run under the name `overboot-generator`, overboot is systemd's generator ([`generator`]).

use std::path::{Path, PathBuf};

use overboot::host::systemd::{self, SystemdError};

use super::error::{print, CommandError};

/// Arguments of `overboot systemd`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Install overboot's systemd generator (a link to this binary in
    /// /etc/systemd/system-generators): the new boot then restores and adopts the services.
    Install {
        /// Install into this root instead of / (image builders).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Make a service preservable: a persistent drop-in that runs it in the host's namespaces
    /// (CRIU cannot carry the private mounts, users and host names systemd gives a unit).
    Prepare {
        /// The unit (`NAME` or `NAME.service`).
        unit: String,
        /// Restart the unit now so that the drop-in takes effect (otherwise at its next start).
        #[arg(long)]
        restart: bool,
    },
    /// A preserved unit's ExecStart in the new boot: take over the restored processes as the
    /// unit's own, with the same main PID.
    Adopt {
        /// The unit.
        unit: String,
        /// The agent's work directory.
        #[arg(long, default_value = overboot::model::files::DEFAULT_WORK_DIR)]
        work_dir: PathBuf,
    },
    /// After every preserved unit adopted its processes: reload systemd so that the units run
    /// from their own unit files again.
    Finish {
        /// The agent's work directory.
        #[arg(long, default_value = overboot::model::files::DEFAULT_WORK_DIR)]
        work_dir: PathBuf,
    },
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/sbin/overboot"))
}

fn unit(text: &str) -> Result<String, CommandError> {
    overboot::host::target::unit::unit_name(text).map_err(|e| CommandError::Usage(e.to_string()))
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    match args.verb {
        Verb::Install { root } => {
            let link = systemd::install(&exe(), &root)?;
            print(
                json,
                &format!("installed the generator: {}", link.display()),
                &serde_json::json!({"generator": link}),
            )
        }
        Verb::Prepare {
            unit: name,
            restart,
        } => {
            let name = unit(&name)?;
            let dropin = systemd::prepare(&name, restart)?;
            let human = if restart {
                format!(
                    "{name} restarted without namespaces of its own ({})",
                    dropin.display()
                )
            } else {
                format!(
                    "wrote {}; restart {name} once for it to take effect",
                    dropin.display()
                )
            };
            print(
                json,
                &human,
                &serde_json::json!({"unit": name, "dropin": dropin, "restarted": restart}),
            )
        }
        Verb::Adopt {
            unit: name,
            work_dir,
        } => {
            let name = unit(&name)?;
            let pid = systemd::adopt(&name, &work_dir)?;
            print(
                json,
                &format!("{name} adopted its restored main process {pid}"),
                &serde_json::json!({"unit": name, "main_pid": pid}),
            )
        }
        Verb::Finish { work_dir } => {
            systemd::finish(&work_dir)?;
            print(
                json,
                "every preserved unit adopted its processes; systemd reloaded",
                &serde_json::json!({"finished": true}),
            )
        }
    }
}

/// systemd's generator protocol: `overboot-generator NORMAL_DIR [EARLY_DIR LATE_DIR]`. Never
/// fails the boot: a problem is printed (to the kernel log) and the exit status is 0.
pub fn generator(args: &[String]) -> std::process::ExitCode {
    let Some(normal) = args.get(1) else {
        eprintln!("overboot-generator: usage: overboot-generator NORMAL_DIR [EARLY_DIR LATE_DIR]");
        return std::process::ExitCode::SUCCESS;
    };
    let state_dir = super::resume::config(None).state_dir(None);
    if let Err(e) = systemd::run_generator(
        &exe(),
        Path::new(normal),
        Path::new(overboot::model::files::DEFAULT_WORK_DIR),
        &state_dir,
    ) {
        eprintln!("overboot-generator: {e}");
    }
    std::process::ExitCode::SUCCESS
}

impl From<SystemdError> for CommandError {
    fn from(e: SystemdError) -> CommandError {
        CommandError::Systemd(e)
    }
}
