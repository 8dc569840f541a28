//! `overboot patch`: live patches for the running kernel — `build` a klp module from a source
//! patch for an exact Debian kernel release, `apply` it, `list` patches, `revert` one, or
//! `replace` them all with a cumulative patch.

use std::path::PathBuf;
use std::time::Duration;

use overboot_livepatch::runtime::{self, SYSFS};
use overboot_livepatch::{BuildRequest, LivePatch};

use super::error::{print, CommandError};

/// Arguments of `overboot patch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Build a livepatch module from a source patch (unified diff against the kernel source).
    Build {
        /// The fix, as a `-p1` unified diff of .c files.
        #[arg(long)]
        source_patch: PathBuf,
        /// Kernel release to build for (default: the running kernel's).
        #[arg(long)]
        kernel_release: Option<String>,
        /// Module file to write (default: ./<name>.ko).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Patch and module name (default: livepatch_<patch file name>).
        #[arg(long)]
        name: Option<String>,
        /// Build a cumulative patch that atomically replaces all applied ones.
        #[arg(long)]
        replace: bool,
        /// Downloads and unpacked kernel trees (default: $OVERBOOT_CACHE or /var/cache/overboot).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The target's /proc/kallsyms, to refuse ambiguous names (default: this machine's when
        /// building for the running kernel).
        #[arg(long)]
        kallsyms: Option<PathBuf>,
    },
    /// Load a livepatch module and wait until every task runs the new code.
    Apply {
        /// The module built by `patch build`.
        module: PathBuf,
        /// Seconds to wait for the transition before naming the blocking tasks.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// List the live patches of the running kernel with their state.
    List,
    /// Disable a patch, wait until no task runs its code, and unload it.
    Revert {
        /// Patch name (as `patch list` shows it).
        name: String,
        /// Seconds to wait for the transition.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Apply a cumulative patch (built with --replace) replacing all applied patches atomically.
    Replace {
        /// The cumulative module.
        module: PathBuf,
        /// Seconds to wait for the transition.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn default_cache() -> PathBuf {
    std::env::var_os("OVERBOOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/overboot"))
        .join("livepatch")
}

/// `/proc/kallsyms` when it shows real addresses (root, kptr_restrict permitting).
fn own_kallsyms() -> Option<PathBuf> {
    let path = PathBuf::from("/proc/kallsyms");
    let text = std::fs::read_to_string(&path).ok()?;
    let first = text.lines().next()?;
    (!first.starts_with("0000000000000000")).then_some(path)
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    let root = PathBuf::from(SYSFS);
    match args.action {
        Action::Build {
            source_patch,
            kernel_release,
            output,
            name,
            replace,
            cache,
            kallsyms,
        } => {
            let running = runtime::running_release();
            let release = kernel_release.unwrap_or_else(|| running.clone());
            let kallsyms = kallsyms.or_else(|| (release == running).then(own_kallsyms).flatten());
            let module_name = name
                .clone()
                .unwrap_or_else(|| overboot_livepatch::build::module_name(&source_patch));
            let request = BuildRequest {
                output: output.unwrap_or_else(|| PathBuf::from(format!("{module_name}.ko"))),
                patch: source_patch,
                release,
                cache: cache.unwrap_or_else(default_cache),
                name,
                replace,
                kallsyms,
            };
            let report = overboot_livepatch::build(&request)?;
            let functions: Vec<&str> = report
                .functions
                .iter()
                .map(|f| f.old_name.as_str())
                .collect();
            print(
                json,
                &format!(
                    "built {} for {} ({}): patches {}; livepatch relocations to {}",
                    report.module.display(),
                    report.release,
                    report.name,
                    functions.join(", "),
                    if report.klp_symbols.is_empty() {
                        "nothing".to_string()
                    } else {
                        report.klp_symbols.join(", ")
                    }
                ),
                &report,
            )
        }
        Action::Apply { module, timeout } => {
            let info = runtime::apply(&module, &root, Duration::from_secs(timeout))?;
            print(
                json,
                &format!("applied {} ({})", info.name, info.release()),
                &serde_json::json!({ "applied": info.name, "release": info.release() }),
            )
        }
        Action::List => {
            let patches = runtime::list(&root)?;
            let human = if patches.is_empty() {
                "no live patches".to_string()
            } else {
                patches
                    .iter()
                    .map(human_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            print(json, &human, &patches)
        }
        Action::Revert { name, timeout } => {
            runtime::revert(&name, &root, Duration::from_secs(timeout))?;
            print(
                json,
                &format!("reverted {name}"),
                &serde_json::json!({ "reverted": name }),
            )
        }
        Action::Replace { module, timeout } => {
            let (info, replaced) = runtime::replace(&module, &root, Duration::from_secs(timeout))?;
            print(
                json,
                &format!(
                    "applied {} replacing {}",
                    info.name,
                    if replaced.is_empty() {
                        "nothing".to_string()
                    } else {
                        replaced.join(", ")
                    }
                ),
                &serde_json::json!({ "applied": info.name, "replaced": replaced }),
            )
        }
    }
}

fn human_line(p: &LivePatch) -> String {
    format!("{} {} {}", p.name, p.state(), p.functions.join(" "))
}
