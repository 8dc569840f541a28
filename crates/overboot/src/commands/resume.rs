//! `overboot resume`: the agent run by the new kernel's early userspace. It supervises a
//! worker that does the restore — a fork of itself, or `overboot resume --worker` when it
//! cannot fork — and rolls back when it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use overboot::model::records::WorkerFailure;
use overboot::new::agent::HostAgent;
use overboot::new::resume::{self, ResumeOptions};
use overboot::new::supervise::{self as rollback, Supervised};

use super::config::Config;
use super::error::{print, CommandError};

/// Arguments of `overboot resume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read the kernel command line from this file.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline_file: PathBuf,
    /// Persistent state directory (reports); default $OVERBOOT_STATE_DIR, the config file's
    /// state_dir, or /var/lib/overboot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Scratch space in RAM for the restore.
    #[arg(long, default_value = overboot::model::files::DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    /// Do the restore itself (run by the supervising agent; no rollback here).
    #[arg(long, hide = true)]
    worker: bool,
    /// Restore from the map a new kernel that never reached its agent left (`pending.json` in
    /// the state directory names it): this boot came back on the old kernel through the
    /// firmware. The generator runs the agent this way; no rollback follows a failure.
    #[arg(long)]
    recover: bool,
}

/// The agent restores a map once per boot: a second start (systemd starts
/// `overboot-resume.service` again when a preserved unit that waits for it restarts after a
/// failed resume) would restore the same map again over what is there. The marker lives in
/// the work directory, in RAM: a new boot starts without it.
fn once_per_boot(work_dir: &Path, cmdline: &str) -> Result<(), CommandError> {
    if !matches!(
        overboot_handover::locate_store_from_cmdline(cmdline),
        Ok(Some(_))
    ) {
        return Ok(());
    }
    let marker = work_dir.join(overboot::model::files::AGENT_STARTED);
    if marker.exists() {
        return Err(CommandError::AgentRan(marker));
    }
    std::fs::create_dir_all(work_dir).map_err(CommandError::Output)?;
    std::fs::write(&marker, std::process::id().to_string()).map_err(CommandError::Output)
}

/// For `--recover`: this boot's command line with the map's parameter of `pending.json` and
/// the rollback marker (a failure keeps the map, nothing to roll back to), written to the work
/// directory for the worker; the file's path.
fn recovery_cmdline(args: &Args, state: &Path) -> Result<PathBuf, CommandError> {
    let pending: overboot::model::report::Pending =
        overboot::model::report::read_json(&overboot::model::files::pending(state))
            .map_err(|e| CommandError::Usage(format!("--recover: no update to recover: {e}")))?;
    let param = pending.recover.ok_or_else(|| {
        CommandError::Usage("--recover: the last update's map does not survive a reset".into())
    })?;
    let cmdline = std::fs::read_to_string(&args.cmdline_file).map_err(CommandError::Output)?;
    let text = format!(
        "{} {param} {} {}",
        cmdline.trim(),
        rollback::ROLLBACK_PARAM,
        rollback::RECOVERED_PARAM
    );
    std::fs::create_dir_all(&args.work_dir).map_err(CommandError::Output)?;
    let path = args.work_dir.join("recover.cmdline");
    std::fs::write(&path, text).map_err(CommandError::Output)?;
    Ok(path)
}

/// The config file, for its state directory: one that cannot be read or is invalid is left out
/// with a warning, since the agent's restore must not fail for a setting it does not use.
pub fn config(named: Option<&Path>) -> Config {
    Config::load(named).unwrap_or_else(|e| {
        let chain = overboot_checkpoint::error_chain(&e);
        eprintln!("overboot resume: config file left out: {chain}");
        Config::default()
    })
}

pub fn run(mut args: Args, config: &Config, json: bool) -> Result<(), CommandError> {
    let state = config.state_dir(args.state_dir.clone());
    if args.recover && !args.worker {
        args.cmdline_file = recovery_cmdline(&args, &state)?;
    }
    let cmdline = std::fs::read_to_string(&args.cmdline_file).map_err(CommandError::Output)?;
    if !args.worker {
        once_per_boot(&args.work_dir, &cmdline)?;
    }
    let options = ResumeOptions {
        fault: overboot::model::fault::from_cmdline(&cmdline),
        rollback: rollback::is_rollback(&cmdline),
        recovered: rollback::is_recovered(&cmdline),
        cmdline,
        state_dir: state.clone(),
        work_dir: args.work_dir.clone(),
        store_wait: overboot::new::options::DEFAULT_STORE_WAIT,
    };
    if args.worker {
        return work(&options, json);
    }
    let mut worker = || {
        // A fork of this agent when it can (see `overboot::forked`): no second start of the
        // program inside the blackout.
        let output = match overboot::host::forked::output_of(|| {
            super::error::exit_code(work(&options, json))
        })? {
            Some(output) => output,
            None => {
                let mut cmd = Command::new(rollback::worker_program());
                if json {
                    cmd.arg("--json");
                }
                cmd.args(["resume", "--worker", "--cmdline-file"])
                    .arg(&args.cmdline_file)
                    .arg("--state-dir")
                    .arg(&state)
                    .arg("--work-dir")
                    .arg(&args.work_dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::piped());
                cmd.output()?
            }
        };
        // Show the worker's errors as they are; the supervisor acts on its record.
        let _ = std::io::stderr().write_all(&output.stderr);
        Ok(output.status)
    };
    let mut say = |line: &str| eprintln!("overboot resume: {line}");
    match rollback::supervise(&options, &mut worker, &mut say)? {
        Supervised::NoMap | Supervised::Resumed => Ok(()),
    }
}

/// The worker: verifies the map and restores its trees (no rollback here). A failure leaves
/// its record for the supervisor ([`WorkerFailure`]).
fn work(options: &ResumeOptions, json: bool) -> Result<(), CommandError> {
    let result = resume::run(&mut HostAgent, options);
    if let Err(e) = &result {
        let record = WorkerFailure::of(e, e.class() as u8);
        if let Err(save) = record.save(&options.work_dir) {
            tracing::error!(error = %save, "cannot record why the worker failed");
        }
    }
    match result? {
        None => print(
            json,
            "no Save State Map on the command line: nothing to resume",
            &serde_json::json!({"resumed": false}),
        ),
        Some(report) => print(json, report.human().trim_end(), &report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_restores_a_map_once_per_boot() {
        let work = tempfile::tempdir().unwrap();
        // A boot without a map: nothing to guard.
        once_per_boot(work.path(), "root=/dev/vda").unwrap();
        once_per_boot(work.path(), "root=/dev/vda").unwrap();
        let with_map = "root=/dev/vda overboot.handover=dir:/var/lib/overboot/ssm/1-1";
        once_per_boot(work.path(), with_map).unwrap();
        let again = once_per_boot(work.path(), with_map).unwrap_err();
        assert!(matches!(again, CommandError::AgentRan(_)), "{again}");
        assert_eq!(again.class(), overboot::ExitClass::Restore);
        assert!(again.to_string().contains("already ran in this boot"));
    }
}
