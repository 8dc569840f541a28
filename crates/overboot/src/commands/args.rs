//! The arguments `plan` and `update` share, so that `plan` checks exactly the update that the
//! same words would run.

use std::path::{Path, PathBuf};

use overboot::host::store::Handover;
use overboot::host::target::Target;
use overboot::model::report::state_dir;
use overboot::old::options::UpdateOptions;
use overboot_handover::RollbackRecipe;

use super::error::CommandError;

/// The arguments `plan` and `update` share: what to update to, what to carry, and how.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The new kernel (an x86 bzImage).
    #[arg(long, required_unless_present = "to", conflicts_with = "to")]
    pub kernel: Option<PathBuf>,
    /// An installed kernel instead of --kernel: `/boot/vmlinuz-RELEASE` with its
    /// `/boot/initrd.img-RELEASE`, or `newest` (see `overboot pending`).
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    /// Its initrd; the Save State Map is appended to a copy of it.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Command line of the new kernel (overboot adds its own parameter).
    #[arg(long, conflicts_with = "reuse_cmdline")]
    pub append: Option<String>,
    /// Give the new kernel the running kernel's command line.
    #[arg(long)]
    pub reuse_cmdline: bool,
    /// What to carry across: `pid:N` (the tree rooted at N) or `unit:NAME.service` (every
    /// process of a running systemd service). Repeatable.
    #[arg(long = "preserve", value_name = "TARGET", required = true)]
    pub preserve: Vec<Target>,
    /// Where the map is built (a RAM file system).
    #[arg(long, default_value = "/run/overboot")]
    pub work_dir: PathBuf,
    /// Persistent state directory (reports); default $OVERBOOT_STATE_DIR or /var/lib/overboot.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Kernel to go back to if the restore fails; default /boot/vmlinuz-$(uname -r).
    #[arg(long)]
    pub rollback_kernel: Option<PathBuf>,
    /// Initrd to go back with; default /boot/initrd.img-$(uname -r) if present.
    #[arg(long)]
    pub rollback_initrd: Option<PathBuf>,
    /// How the map reaches the new kernel: `initrd` (appended to --initrd, RAM only) or
    /// `dir:/path` (written to a file system the new kernel's userspace mounts at the same
    /// path; each update gets its own subdirectory, removed after a successful resume).
    /// Default: `initrd`, or `dir:<state dir>/ssm` when systemd is PID 1 (the initrd's files
    /// are gone after switch_root).
    #[arg(long, value_name = "STORE")]
    pub handover: Option<Handover>,
    /// Pre-copy rounds at most: memory is copied (and hashed) while the services still run,
    /// round after round while the pages written in between shrink, so the dump after the
    /// freeze writes only what changed since the last round. 0 turns pre-copy off. Skipped
    /// when CRIU cannot track memory changes on this kernel, and with the initrd store (its
    /// memory check counts one dump).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub pre_copy_rounds: u32,
    /// CRIU's log level for the dumps and restores (0–4): 2 logs errors and warnings; 4
    /// (debug) logs every page range, which at gigabytes of memory costs seconds inside the
    /// blackout. The logs go to the update's report directory either way.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    pub criu_log_level: u8,
    /// Restore the services' memory lazily in the new kernel: they run again as soon as
    /// everything but their memory is back, and a page server per service copies the pages
    /// from the map, each on first touch, the rest in the background, then exits. Everything
    /// but the memory pages is verified before anything runs; the pages the server puts in,
    /// 1 MiB at a time before their first use (a damaged piece kills the service rather than
    /// feed it). Until the server is done, a service's memory exists only in the map: should
    /// it die, the service gets zero-filled pages. A later update refuses to start until the
    /// server has exited. A service with less than 128 MiB of memory pages is restored whole
    /// (its server would cost more than it saves).
    #[arg(long)]
    pub lazy_restore: bool,
    /// Go ahead although a shutdown inhibitor blocks (`systemd-inhibit --list`): the services
    /// not carried are ended by the switch as by a shutdown.
    #[arg(long)]
    pub ignore_inhibitors: bool,
    /// Test only: no network lock, so peers may see resets (proves the lock matters).
    #[arg(long, hide = true)]
    pub unsafe_no_network_lock: bool,
}

impl UpdateArgs {
    /// The options of the update these arguments ask for.
    pub fn options(self) -> Result<UpdateOptions, CommandError> {
        let args = self;
        let (kernel, initrd) = match (&args.to, args.kernel) {
            (Some(to), _) => {
                let found =
                    overboot::host::kernels::named(Path::new("/boot"), to).ok_or_else(|| {
                        CommandError::NoSuchKernel(format!(
                            "--to {to}: no /boot/vmlinuz-{to} (installed: {})",
                            overboot::host::kernels::installed(Path::new("/boot"))
                                .iter()
                                .map(|k| k.release.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                (found.kernel, args.initrd.or(found.initrd))
            }
            (None, Some(kernel)) => (kernel, args.initrd),
            // clap requires one of them.
            (None, None) => return Err(CommandError::Usage("--kernel or --to is needed".into())),
        };
        let proc_cmdline = std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .trim()
            .to_string();
        let cmdline = match (args.append, args.reuse_cmdline) {
            (Some(a), _) => a,
            (None, true) => strip_overboot_params(&proc_cmdline),
            (None, false) => String::new(),
        };
        let release = overboot::host::proc::release();
        let rollback_initrd = args.rollback_initrd.or_else(|| {
            let p = PathBuf::from(format!("/boot/initrd.img-{release}"));
            p.exists().then_some(p)
        });
        let state_dir = args.state_dir.unwrap_or_else(state_dir);
        let handover = args.handover.unwrap_or_else(|| {
            if overboot::host::systemd::Host::detect().booted {
                Handover::Dir(overboot::host::systemd::default_store(&state_dir))
            } else {
                Handover::Initrd
            }
        });
        let options = UpdateOptions {
            kernel,
            initrd,
            cmdline,
            preserve: args.preserve,
            work_dir: args.work_dir,
            state_dir,
            rollback: RollbackRecipe {
                kernel: args
                    .rollback_kernel
                    .unwrap_or_else(|| PathBuf::from(format!("/boot/vmlinuz-{release}"))),
                initrd: rollback_initrd,
                cmdline: strip_overboot_params(&proc_cmdline),
            },
            network_lock: !args.unsafe_no_network_lock,
            handover,
            pre_copy_rounds: args.pre_copy_rounds,
            criu_log_level: args.criu_log_level,
            lazy_restore: args.lazy_restore,
            ignore_inhibitors: args.ignore_inhibitors,
        };
        Ok(options)
    }
}

/// The command line without overboot's own parameters (they describe one handover only).
fn strip_overboot_params(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with("overboot."))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn parse(extra: &[&str]) -> Result<UpdateArgs, clap::Error> {
        let base = ["update", "--kernel", "/k", "--preserve", "pid:42"];
        Cli::try_parse_from(base.iter().chain(extra.iter()).copied()).map(|c| c.args)
    }

    #[test]
    fn an_installed_kernel_can_be_named_instead_of_a_path() {
        let to = Cli::try_parse_from(["update", "--to", "newest", "--preserve", "pid:42"])
            .expect("--to alone")
            .args;
        assert_eq!(to.to.as_deref(), Some("newest"));
        assert!(to.kernel.is_none());
        assert!(Cli::try_parse_from(["update", "--preserve", "pid:42"]).is_err());
        assert!(
            parse(&["--to", "newest"]).is_err(),
            "--kernel and --to together"
        );
    }

    #[test]
    fn criu_logs_errors_and_warnings_unless_told_otherwise() {
        assert_eq!(parse(&[]).unwrap().criu_log_level, 2);
        assert_eq!(parse(&["--criu-log-level", "4"]).unwrap().criu_log_level, 4);
        assert!(parse(&["--criu-log-level", "5"]).is_err());
        assert!(parse(&["--criu-log-level", "-1"]).is_err());
    }
}
