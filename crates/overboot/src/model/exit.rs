//! Exit codes of the `overboot` CLI, one per failure class. docs/reference/exit-codes.md documents the same table.
//!
//! | code | class |
//! |-----:|-------|
//! | 0 | success |
//! | 1 | internal error (a bug or an unexpected system state) |
//! | 2 | usage: bad arguments (clap), or a bad config file |
//! | 3 | permission: not root / missing capability |
//! | 4 | kexec refused by policy: `kexec_load_disabled`, lockdown, signature rejected |
//! | 5 | bad input: not a kernel, missing or truncated file, bad target process |
//! | 6 | resources: out of memory for the new kernel, kexec busy |
//! | 7 | checkpoint failed (CRIU); the processes were left running |
//! | 8 | handover failed: the Save State Map is missing, corrupt or of an unknown version |
//! | 9 | restore failed (rolled back, or the map was kept for the operator) |
//! | 10 | nothing to do: no kernel loaded, no report yet |
//! | 11 | interrupted: `update` stopped at a signal (SIGINT, SIGTERM, SIGHUP); every preserved tree runs on this kernel |

use std::process::ExitCode;

/// A failure class with its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitClass {
    /// Internal error.
    Internal = 1,
    /// Bad arguments.
    Usage = 2,
    /// Not root / missing capability.
    Permission = 3,
    /// kexec refused by policy.
    Policy = 4,
    /// Bad input.
    BadInput = 5,
    /// Not enough resources.
    Resources = 6,
    /// Checkpoint failed.
    Checkpoint = 7,
    /// Save State Map unusable.
    Handover = 8,
    /// Restore failed.
    Restore = 9,
    /// Nothing to act on.
    Nothing = 10,
    /// Stopped by a signal; every tree runs on this kernel.
    Interrupted = 11,
}

/// Prints a failure as the CLI does, on stderr: `overboot: error: <head>`, then each cause of
/// the chain from `source` on, one per line.
pub fn print_failure(head: &dyn std::fmt::Display, source: Option<&dyn std::error::Error>) {
    eprintln!("overboot: error: {head}");
    let mut source = source;
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

impl From<ExitClass> for ExitCode {
    fn from(class: ExitClass) -> ExitCode {
        ExitCode::from(class as u8)
    }
}

impl From<overboot_kexec::KexecErrorClass> for ExitClass {
    fn from(class: overboot_kexec::KexecErrorClass) -> ExitClass {
        use overboot_kexec::KexecErrorClass as K;
        match class {
            K::Permission => ExitClass::Permission,
            K::Disabled | K::Signature => ExitClass::Policy,
            K::BadImage | K::Io => ExitClass::BadInput,
            K::Resources | K::Busy => ExitClass::Resources,
            K::NotLoaded => ExitClass::Nothing,
            K::Other => ExitClass::Internal,
        }
    }
}
