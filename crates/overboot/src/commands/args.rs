//! The arguments `plan` and `update` share, so that `plan` checks exactly the update that the
//! same words would run; each option left out takes the config file's setting, if any (see
//! [`super::config`]), else its default.

use std::path::{Path, PathBuf};

use overboot::host::store::Handover;
use overboot::host::target::Target;
use overboot::old::options::UpdateOptions;
use overboot_handover::RollbackRecipe;

use super::config::Config;
use super::error::CommandError;

/// `--pre-copy-rounds` when neither the command line nor the config file sets it.
const DEFAULT_PRE_COPY_ROUNDS: u32 = 3;
/// `--criu-log-level` when neither the command line nor the config file sets it.
const DEFAULT_CRIU_LOG_LEVEL: u8 = 2;

/// The arguments `plan` and `update` share: what to update to, what to carry, and how. The
/// options the config file can set are `Option`s (or a pair of flags) here, so that a setting
/// left out of the command line is told from one given.
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
    /// Command line of the new kernel (overboot adds its own parameter). Default: the config
    /// file's append, else the running kernel's command line (without overboot's parameters)
    /// unless the config file says reuse_cmdline = false (then empty); `--append ""` gives an
    /// empty one.
    #[arg(long, conflicts_with = "reuse_cmdline")]
    pub append: Option<String>,
    /// Give the new kernel the running kernel's command line (config: reuse_cmdline): the
    /// default unless the config file names another.
    #[arg(long)]
    pub reuse_cmdline: bool,
    /// When the new kernel fails to come up: `reset` (default) gives it `panic=N` (N: the
    /// config file's panic_reboot_secs, else 10) unless its command line sets `panic=`, so that
    /// a kernel that panics resets the machine, which boots the old kernel through the
    /// firmware and restores the services from a directory store; `hang` leaves the machine
    /// at the panic for someone to look at (the services come back only when it is reset).
    #[arg(long, value_name = "reset|hang", value_parser = ["reset", "hang"])]
    pub on_failed_boot: Option<String>,
    /// What to carry across: `pid:N` (the tree rooted at N) or `unit:NAME.service` (every
    /// process of a running systemd service). Repeatable; needed unless the config file's
    /// preserve names targets (then used only when no --preserve is given).
    #[arg(long = "preserve", value_name = "TARGET")]
    pub preserve: Vec<Target>,
    /// Where the map is built (a RAM file system). Default: the config file's work_dir, else
    /// /run/overboot.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Persistent state directory (reports); default $OVERBOOT_STATE_DIR, the config file's
    /// state_dir, or /var/lib/overboot.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Kernel to go back to if the restore fails; default the config file's [rollback]
    /// kernel, else /boot/vmlinuz-$(uname -r).
    #[arg(long)]
    pub rollback_kernel: Option<PathBuf>,
    /// Initrd to go back with; default the config file's [rollback] initrd, else
    /// /boot/initrd.img-$(uname -r) if present.
    #[arg(long)]
    pub rollback_initrd: Option<PathBuf>,
    /// How the map reaches the new kernel: `initrd` (appended to --initrd, RAM only) or
    /// `dir:/path` (written to a file system the new kernel's userspace mounts at the same
    /// path; each update gets its own subdirectory, removed after a successful resume).
    /// Default: the config file's store, else `dir:<state dir>/ssm` when systemd is PID 1 (the
    /// initrd's files are gone after switch_root) or when the state directory is on a disk file
    /// system (the kernel is then loaded before the freeze and kexec does not checksum the
    /// map; without room there for the map, `initrd` after all), else `initrd`. `plan` says
    /// which and why.
    #[arg(long, value_name = "STORE")]
    pub handover: Option<Handover>,
    /// Pre-copy rounds at most: memory is copied (and hashed) while the services still run,
    /// round after round while the pages written in between shrink, so the dump after the
    /// freeze writes only what changed since the last round. 0 turns pre-copy off. Skipped
    /// when CRIU cannot track memory changes on this kernel, and with the initrd store (its
    /// memory check counts one dump). Default: the config file's pre_copy_rounds, else 3.
    #[arg(long, value_name = "N")]
    pub pre_copy_rounds: Option<u32>,
    /// CRIU's log level for the dumps and restores (0–4): 2 logs errors and warnings; 4
    /// (debug) logs every page range, which at gigabytes of memory costs seconds inside the
    /// blackout. The logs go to the update's report directory either way. Default: the config
    /// file's criu_log_level, else 2.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub criu_log_level: Option<u8>,
    /// Restore the services' memory lazily in the new kernel: they run again as soon as
    /// everything but their memory is back, and a page server per service copies the pages
    /// from the map, each on first touch, the rest in the background, then exits. Everything
    /// but the memory pages is verified before anything runs; the pages the server puts in,
    /// 1 MiB at a time before their first use (a damaged piece kills the service rather than
    /// feed it). Until the server is done, a service's memory exists only in the map: should
    /// it die, the service gets zero-filled pages. A later update refuses to start until the
    /// server has exited. A service with less than 128 MiB of memory pages is restored whole
    /// (its server would cost more than it saves). Default: the config file's lazy_restore,
    /// else off.
    #[arg(long, overrides_with = "no_lazy_restore")]
    pub lazy_restore: bool,
    /// Restore every page before the services run, although the config file says
    /// lazy_restore = true.
    #[arg(long, overrides_with = "lazy_restore")]
    pub no_lazy_restore: bool,
    /// Go ahead although a shutdown inhibitor blocks (`systemd-inhibit --list`): the services
    /// not carried are ended by the switch as by a shutdown.
    #[arg(long)]
    pub ignore_inhibitors: bool,
    /// Test only: no network lock, so peers may see resets (proves the lock matters).
    #[arg(long, hide = true)]
    pub unsafe_no_network_lock: bool,
}

impl UpdateArgs {
    /// The options of the update these arguments ask for, `config` filling in what they leave
    /// out.
    pub fn options(self, config: &Config) -> Result<UpdateOptions, CommandError> {
        let args = self;
        let settings = &config.update;
        let preserve = if args.preserve.is_empty() {
            settings.preserve.clone().unwrap_or_default()
        } else {
            args.preserve
        };
        if preserve.is_empty() {
            return Err(CommandError::Usage(format!(
                "nothing to preserve: give --preserve TARGET, or preserve in [update] of the \
                 config file (read: {})",
                config.source()
            )));
        }
        let (kernel, initrd) = kernel_and_initrd(args.to.as_deref(), args.kernel, args.initrd)?;
        let proc_cmdline = std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .trim()
            .to_string();
        let cmdline = match (args.append, args.reuse_cmdline) {
            (Some(a), _) => a,
            (None, true) => strip_overboot_params(&proc_cmdline),
            // Nothing said: the running kernel's command line, as `systemctl kexec` would boot
            // the same entry's options; an empty one would boot without root= or console=.
            (None, false) => match (&settings.append, settings.reuse_cmdline) {
                (Some(a), _) => a.clone(),
                (None, Some(false)) => String::new(),
                (None, _) => strip_overboot_params(&proc_cmdline),
            },
        };
        let release = overboot::host::proc::release();
        let rollback_initrd = args
            .rollback_initrd
            .or_else(|| config.rollback.initrd.clone())
            .or_else(|| {
                let p = PathBuf::from(format!("/boot/initrd.img-{release}"));
                p.exists().then_some(p)
            });
        let state_dir = config.state_dir(args.state_dir);
        let (handover, store_why, store_default) = match (args.handover, settings.store.clone()) {
            (Some(given), _) => (given, "--handover".to_string(), false),
            (None, Some(set)) => (set, "the config file's store".to_string(), false),
            (None, None) => {
                let systemd = overboot::host::systemd::Host::detect().booted;
                let chosen = overboot::host::store::default_store(&state_dir, systemd);
                (chosen.handover, format!("default: {}", chosen.why), true)
            }
        };
        let lazy_restore = match (args.lazy_restore, args.no_lazy_restore) {
            (true, _) => true,
            (_, true) => false,
            _ => settings.lazy_restore.unwrap_or(false),
        };
        let options = UpdateOptions {
            kernel,
            initrd,
            cmdline: with_panic(
                cmdline,
                match args.on_failed_boot.as_deref() {
                    Some("hang") => None,
                    _ => Some(
                        config
                            .failed_boot
                            .panic_reboot_secs
                            .unwrap_or(DEFAULT_PANIC_REBOOT_SECS),
                    ),
                },
            ),
            preserve,
            work_dir: args
                .work_dir
                .or_else(|| settings.work_dir.clone())
                .unwrap_or_else(|| PathBuf::from(overboot::model::files::DEFAULT_WORK_DIR)),
            state_dir,
            rollback: RollbackRecipe {
                kernel: args
                    .rollback_kernel
                    .or_else(|| config.rollback.kernel.clone())
                    .unwrap_or_else(|| PathBuf::from(format!("/boot/vmlinuz-{release}"))),
                initrd: rollback_initrd,
                cmdline: strip_overboot_params(&proc_cmdline),
            },
            network_lock: !args.unsafe_no_network_lock,
            handover,
            store_why,
            store_default,
            pre_copy_rounds: args
                .pre_copy_rounds
                .or(settings.pre_copy_rounds)
                .unwrap_or(DEFAULT_PRE_COPY_ROUNDS),
            criu_log_level: args
                .criu_log_level
                .or(settings.criu_log_level)
                .unwrap_or(DEFAULT_CRIU_LOG_LEVEL),
            lazy_restore,
            ignore_inhibitors: args.ignore_inhibitors,
        };
        Ok(options)
    }
}

/// The new kernel and its initrd: `--kernel` and `--initrd`, or `--to`'s in /boot.
fn kernel_and_initrd(
    to: Option<&str>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
) -> Result<(PathBuf, Option<PathBuf>), CommandError> {
    match (to, kernel) {
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
            Ok((found.kernel, initrd.or(found.initrd)))
        }
        (None, Some(kernel)) => Ok((kernel, initrd)),
        // clap requires one of them.
        (None, None) => Err(CommandError::Usage("--kernel or --to is needed".into())),
    }
}

/// Seconds a new kernel that panics waits before it resets the machine, unless the config file
/// or its command line say otherwise: long enough to read the panic on a console, short
/// enough that the services' peers are still retransmitting when they come back.
pub const DEFAULT_PANIC_REBOOT_SECS: u32 = 10;

/// `cmdline` with `panic=N` added for `panic_reboot_secs = N` (N > 0), so that a new kernel
/// that panics reboots; unless `cmdline` sets `panic=` itself.
fn with_panic(cmdline: String, panic_reboot_secs: Option<u32>) -> String {
    match panic_reboot_secs {
        Some(secs) if secs > 0 => {
            if cmdline.split_whitespace().any(|w| w.starts_with("panic=")) {
                cmdline
            } else if cmdline.is_empty() {
                format!("panic={secs}")
            } else {
                format!("{cmdline} panic={secs}")
            }
        }
        _ => cmdline,
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

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/etc/overboot/overboot.toml"), text).unwrap()
    }

    /// The options of `update --kernel /k --preserve pid:42 EXTRA` with the config file `text`.
    fn options(extra: &[&str], text: &str) -> UpdateOptions {
        parse(extra).unwrap().options(&config(text)).unwrap()
    }

    #[test]
    fn criu_logs_errors_and_warnings_unless_told_otherwise() {
        assert_eq!(options(&[], "").criu_log_level, 2);
        assert_eq!(options(&["--criu-log-level", "4"], "").criu_log_level, 4);
        let three = "[update]\ncriu_log_level = 3\n";
        assert_eq!(options(&[], three).criu_log_level, 3);
        assert_eq!(options(&["--criu-log-level", "4"], three).criu_log_level, 4);
        assert_eq!(options(&["--criu-log-level", "0"], three).criu_log_level, 0);
        assert!(parse(&["--criu-log-level", "5"]).is_err());
        assert!(parse(&["--criu-log-level", "-1"]).is_err());
    }

    #[test]
    fn the_command_line_beats_the_config_file_beats_the_default() {
        let file = r#"
[update]
store = "dir:/srv/ssm"
pre_copy_rounds = 7
work_dir = "/dev/shm/overboot"
state_dir = "/srv/overboot"

[rollback]
kernel = "/boot/vmlinuz-old"
initrd = "/boot/initrd.img-old"
"#;
        let default = options(&["--handover", "initrd"], "");
        assert_eq!(default.pre_copy_rounds, 3);
        assert_eq!(default.work_dir, PathBuf::from("/run/overboot"));
        let release = overboot::host::proc::release();
        assert_eq!(
            default.rollback.kernel,
            PathBuf::from(format!("/boot/vmlinuz-{release}"))
        );

        let from_file = options(&[], file);
        assert_eq!(from_file.handover, Handover::Dir("/srv/ssm".into()));
        assert_eq!(from_file.pre_copy_rounds, 7);
        assert_eq!(from_file.work_dir, PathBuf::from("/dev/shm/overboot"));
        if std::env::var_os("OVERBOOT_STATE_DIR").is_none() {
            assert_eq!(from_file.state_dir, PathBuf::from("/srv/overboot"));
        }
        assert_eq!(
            from_file.rollback.kernel,
            PathBuf::from("/boot/vmlinuz-old")
        );
        assert_eq!(
            from_file.rollback.initrd,
            Some(PathBuf::from("/boot/initrd.img-old"))
        );

        let given = options(
            &[
                "--handover",
                "initrd",
                "--pre-copy-rounds",
                "0",
                "--work-dir",
                "/run/ob",
                "--state-dir",
                "/var/ob",
                "--rollback-kernel",
                "/k-back",
                "--rollback-initrd",
                "/i-back",
            ],
            file,
        );
        assert_eq!(given.handover, Handover::Initrd);
        assert_eq!(given.pre_copy_rounds, 0);
        assert_eq!(given.work_dir, PathBuf::from("/run/ob"));
        assert_eq!(given.state_dir, PathBuf::from("/var/ob"));
        assert_eq!(given.rollback.kernel, PathBuf::from("/k-back"));
        assert_eq!(given.rollback.initrd, Some(PathBuf::from("/i-back")));
    }

    #[test]
    fn the_config_files_targets_are_carried_only_when_none_is_given() {
        let file = config("[update]\npreserve = [\"unit:nginx.service\", \"pid:7\"]\n");
        let bare = || {
            Cli::try_parse_from(["update", "--kernel", "/k"])
                .unwrap()
                .args
        };
        assert_eq!(
            bare().options(&file).unwrap().preserve,
            vec![Target::Unit("nginx.service".into()), Target::Pid(7)]
        );
        let given = parse(&[]).unwrap().options(&file).unwrap();
        assert_eq!(given.preserve, vec![Target::Pid(42)]);
        for nothing in [config(""), config("[update]\npreserve = []\n")] {
            let e = bare().options(&nothing).unwrap_err();
            assert!(e.to_string().starts_with("nothing to preserve"), "{e}");
            assert_eq!(e.class(), overboot::ExitClass::Usage);
        }
    }

    #[test]
    fn the_config_file_can_turn_lazy_restore_on_and_the_command_line_off() {
        let on = "[update]\nlazy_restore = true\n";
        let off = "[update]\nlazy_restore = false\n";
        assert!(!options(&[], "").lazy_restore);
        assert!(options(&[], on).lazy_restore);
        assert!(!options(&["--no-lazy-restore"], on).lazy_restore);
        assert!(options(&["--lazy-restore"], off).lazy_restore);
        assert!(!options(&["--lazy-restore", "--no-lazy-restore"], "").lazy_restore);
        assert!(options(&["--no-lazy-restore", "--lazy-restore"], "").lazy_restore);
    }

    #[test]
    fn the_new_command_line_comes_from_the_command_line_then_the_config_file() {
        let append = "[update]\nappend = \"quiet\"\n";
        let reuse = "[update]\nreuse_cmdline = true\n";
        let running = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        // Without the panic= that --on-failed-boot's default adds (tested below).
        let options = |extra: &[&str], text: &str| {
            let mut extra = extra.to_vec();
            extra.extend(["--on-failed-boot", "hang"]);
            options(&extra, text)
        };
        // Nothing said: the running kernel's, never an empty one that boots without root=.
        assert_eq!(options(&[], "").cmdline, strip_overboot_params(&running));
        let no_reuse = "[update]\nreuse_cmdline = false\n";
        assert_eq!(options(&[], no_reuse).cmdline, "");
        assert_eq!(options(&["--append", ""], "").cmdline, "");
        assert_eq!(options(&[], append).cmdline, "quiet");
        assert_eq!(options(&["--append", "ro"], append).cmdline, "ro");
        assert_eq!(options(&[], reuse).cmdline, strip_overboot_params(&running));
        assert_eq!(options(&["--append", ""], reuse).cmdline, "");
        assert_eq!(
            options(&["--reuse-cmdline"], append).cmdline,
            strip_overboot_params(&running)
        );
    }

    #[test]
    fn panic_reboot_secs_gives_the_new_kernel_panic_unless_it_has_one() {
        let ten = "[update]\nappend = \"quiet\"\n[failed_boot]\npanic_reboot_secs = 10\n";
        assert_eq!(options(&[], ten).cmdline, "quiet panic=10");
        assert_eq!(options(&["--append", ""], ten).cmdline, "panic=10");
        assert_eq!(
            options(&["--append", "panic=5 ro"], ten).cmdline,
            "panic=5 ro"
        );
        let zero = "[update]\nappend = \"quiet\"\n[failed_boot]\npanic_reboot_secs = 0\n";
        assert_eq!(options(&[], zero).cmdline, "quiet");
        // The default: reset after 10 s; `hang` adds nothing.
        let quiet = "[update]\nappend = \"quiet\"\n";
        assert_eq!(options(&[], quiet).cmdline, "quiet panic=10");
        assert_eq!(
            options(&["--on-failed-boot", "reset"], quiet).cmdline,
            "quiet panic=10"
        );
        assert_eq!(
            options(&["--on-failed-boot", "hang"], quiet).cmdline,
            "quiet"
        );
        assert_eq!(options(&["--on-failed-boot", "hang"], ten).cmdline, "quiet");
    }
}
