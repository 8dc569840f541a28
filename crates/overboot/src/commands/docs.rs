//! `overboot generate-docs DIR` (hidden, for packaging): the manual pages and the shell
//! completions, generated from the same clap definitions the binary parses with, so that they
//! never describe options the binary lacks.
//!
//! ```text
//!  DIR/man/overboot.8               the command and its verbs
//!  DIR/man/overboot-VERB.8          one per visible verb (overboot-update.8, ...), and one per
//!                                   verb of a verb (overboot-patch-build.8, ...)
//!  DIR/completions/overboot.bash    bash-completion
//!  DIR/completions/_overboot        zsh
//!  DIR/completions/overboot.fish    fish
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

use super::error::CommandError;

/// Arguments of `overboot generate-docs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory to write `man/` and `completions/` into (made if missing).
    dir: PathBuf,
}

/// The exit codes, as `model/exit.rs` and docs/reference/exit-codes.md list them.
const EXIT_STATUS: &[(u8, &str)] = &[
    (0, "success"),
    (1, "internal error"),
    (
        2,
        "usage: bad arguments, or a config file that is missing (when named), unreadable or \
         invalid",
    ),
    (3, "permission: not root, or a capability is missing"),
    (
        4,
        "kexec refused by policy: kexec_load_disabled, lockdown, signature rejected",
    ),
    (
        5,
        "bad input: not a kernel, a missing or truncated file, a bad target process; \
         plan: the update would be refused",
    ),
    (6, "resources: out of memory for the new kernel, kexec busy"),
    (
        7,
        "checkpoint failed (CRIU); the processes were left running",
    ),
    (
        8,
        "handover failed: the Save State Map is missing, corrupt or of an unknown version",
    ),
    (
        9,
        "restore failed (rolled back, or the map was kept for the operator)",
    ),
    (10, "nothing to do: no kernel loaded, no report yet"),
    (
        11,
        "interrupted: update stopped at SIGINT, SIGTERM or SIGHUP; every preserved tree runs on \
         this kernel",
    ),
];

/// The files the package installs or overboot keeps, for overboot(8).
const FILES: &[(&str, &str)] = &[
    (
        "/etc/overboot/overboot.toml",
        "the settings of plan and update (and the state directory of status and resume), each \
         commented out with its default; an option on the command line beats the file. \
         --config or $OVERBOOT_CONFIG names another file",
    ),
    (
        "/etc/default/overboot",
        "OVERBOOT_UPDATE_ARGS, the arguments overboot-update.service gives overboot update",
    ),
    (
        "/var/lib/overboot",
        "the state directory: reports, the default directory store (ssm/), kept maps \
         (the config file's state_dir, or $OVERBOOT_STATE_DIR, overrides)",
    ),
    (
        "/run/overboot",
        "the work directory of an update and of the new kernel's agent",
    ),
];

/// Writes the pages and completions of `cli`, the whole command line.
pub fn run(args: Args, cli: clap::Command) -> Result<(), CommandError> {
    let mut cmd = cli.disable_help_subcommand(true);
    cmd.build();
    let man = args.dir.join("man");
    create_dir(&man)?;
    write_pages(&cmd, &man, None)?;
    let completions = args.dir.join("completions");
    create_dir(&completions)?;
    for (shell, name) in [
        (Shell::Bash, "overboot.bash"),
        (Shell::Zsh, "_overboot"),
        (Shell::Fish, "overboot.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "overboot", &mut text);
        write(&completions.join(name), &text)?;
    }
    Ok(())
}

/// Writes `cmd`'s page and those of its visible verbs, recursively; `parent` is the page of
/// the command `cmd` is a verb of.
fn write_pages(cmd: &clap::Command, dir: &Path, parent: Option<&str>) -> Result<(), CommandError> {
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .source(concat!("overboot ", env!("CARGO_PKG_VERSION")))
        .manual("overboot");
    let mut text = Vec::new();
    page.render(&mut text).map_err(output)?;
    text.extend_from_slice(extra_sections(cmd, parent).as_bytes());
    write(&dir.join(page.get_filename()), &text)?;
    let name = page_name(cmd);
    for verb in visible_verbs(cmd) {
        write_pages(verb, dir, Some(&name))?;
    }
    Ok(())
}

/// A command's page: `overboot`, `overboot-update`, `overboot-patch-build`.
fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name().unwrap_or(cmd.get_name()).to_string()
}

fn visible_verbs(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|v| !v.is_hide_set())
}

/// EXIT STATUS and FILES on overboot(8); SEE ALSO on every page: the page it is a verb of,
/// its verbs' pages (and CRIU's on overboot(8)).
fn extra_sections(cmd: &clap::Command, parent: Option<&str>) -> String {
    let mut roff = String::new();
    if parent.is_none() {
        roff.push_str(".SH \"EXIT STATUS\"\n");
        for (code, meaning) in EXIT_STATUS {
            roff.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", escape(meaning)));
        }
        roff.push_str(".SH FILES\n");
        for (path, what) in FILES {
            roff.push_str(&format!(".TP\n\\fI{path}\\fR\n{}\n", escape(what)));
        }
    }
    let mut see: Vec<String> = parent.map(str::to_string).into_iter().collect();
    see.extend(visible_verbs(cmd).map(page_name));
    if parent.is_none() {
        see.push("criu".to_string());
    }
    let refs: Vec<String> = see
        .iter()
        .map(|name| format!("\\fB{}\\fR(8)", escape(name)))
        .collect();
    roff.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", ")));
    roff
}

/// A line of text for roff: a leading dot or quote would be read as a request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.chars().next() {
        Some('.') | Some('\'') => format!("\\&{text}"),
        _ => text,
    }
}

fn create_dir(dir: &Path) -> Result<(), CommandError> {
    std::fs::create_dir_all(dir).map_err(|e| with_path(dir, e))
}

fn write(path: &Path, contents: &[u8]) -> Result<(), CommandError> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| with_path(path, e))
}

fn with_path(path: &Path, e: std::io::Error) -> CommandError {
    CommandError::Output(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

fn output(e: std::io::Error) -> CommandError {
    CommandError::Output(e)
}
