//! The errors of the checkpoint engine: what an operator needs to know when a dump or restore
//! fails — CRIU's own message and errno, and the log file to read.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use nix::errno::Errno;

use crate::log::CriuLog;
use crate::rpc::CriuReqType;
use crate::transport::ProtocolError;

/// Why a checkpoint/restore request failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The CRIU binary could not be started.
    #[error("cannot start {binary}")]
    SpawnFailed {
        /// The binary we tried.
        binary: PathBuf,
        /// Why `exec` failed.
        #[source]
        source: io::Error,
    },
    /// The socket pair for `criu swrk` could not be made.
    #[error("cannot create the socket pair for criu swrk")]
    Socket(#[source] Errno),
    /// An images or work directory could not be opened.
    #[error("cannot open directory {path}")]
    OpenDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The in-memory configuration file for CRIU could not be made.
    #[error("cannot write CRIU's configuration file")]
    ConfigFile {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// CRIU exited (or crashed) before answering.
    #[error("criu exited ({status}) before answering{}", stderr_suffix(stderr))]
    CriuExited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The conversation broke: undecodable or unexpected messages, socket errors.
    #[error("RPC protocol error")]
    Protocol(#[from] ProtocolError),
    /// CRIU refused or failed a dump.
    #[error("dump of pid {pid} failed: {}", errmsg(message, *errno))]
    DumpFailed {
        /// The root of the tree.
        pid: i32,
        /// CRIU's `cr_errno`, when it set one.
        errno: Option<i32>,
        /// CRIU's `cr_errmsg` (its first logged error), when it sent one.
        message: Option<String>,
        /// Where CRIU's log is, and its last errors.
        #[source]
        log: CriuLog,
    },
    /// CRIU failed a pre-dump.
    #[error("pre-dump of pid {pid} failed: {}", errmsg(message, *errno))]
    PreDumpFailed {
        /// The root of the tree.
        pid: i32,
        /// CRIU's `cr_errno`.
        errno: Option<i32>,
        /// CRIU's `cr_errmsg`.
        message: Option<String>,
        /// CRIU's log.
        #[source]
        log: CriuLog,
    },
    /// CRIU failed a restore.
    #[error("restore failed: {}", errmsg(message, *errno))]
    RestoreFailed {
        /// CRIU's `cr_errno`.
        errno: Option<i32>,
        /// CRIU's `cr_errmsg`.
        message: Option<String>,
        /// CRIU's log.
        #[source]
        log: CriuLog,
    },
    /// `criu check` found the kernel lacking.
    #[error("criu check failed: {}", errmsg(message, *errno))]
    CheckFailed {
        /// CRIU's `cr_errno`.
        errno: Option<i32>,
        /// CRIU's `cr_errmsg`.
        message: Option<String>,
        /// CRIU's log.
        #[source]
        log: CriuLog,
    },
    /// A version or feature query failed.
    #[error("criu {request:?} request failed: {}", errmsg(message, *errno))]
    RequestFailed {
        /// The request type.
        request: CriuReqType,
        /// CRIU's `cr_errno`.
        errno: Option<i32>,
        /// CRIU's `cr_errmsg`.
        message: Option<String>,
    },
    /// Our handler for a notification failed, so CRIU aborted the request.
    #[error(
        "the {script} hook failed ({reason}); criu aborted: {}",
        errmsg(message, None)
    )]
    HookFailed {
        /// The notification (`network-lock`, `post-dump`, ...).
        script: String,
        /// What our handler returned.
        reason: String,
        /// CRIU's `cr_errmsg`.
        message: Option<String>,
        /// CRIU's log.
        #[source]
        log: CriuLog,
    },
}

fn errmsg(message: &Option<String>, errno: Option<i32>) -> String {
    let text = message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("no message from criu");
    match errno {
        Some(e) => format!("{text} (errno {e}: {})", Errno::from_raw(e).desc()),
        None => text.to_owned(),
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl CheckpointError {
    /// CRIU's `cr_errno` when CRIU reported the failure. CRIU sets few: `ESRCH` (no such
    /// process to dump), `EEXIST` (a pid to restore is taken), `EBADRQC` (bad options).
    pub fn criu_errno(&self) -> Option<i32> {
        match self {
            Self::DumpFailed { errno, .. }
            | Self::PreDumpFailed { errno, .. }
            | Self::RestoreFailed { errno, .. }
            | Self::CheckFailed { errno, .. }
            | Self::RequestFailed { errno, .. } => *errno,
            _ => None,
        }
    }

    /// True when a restore failed because one of the tree's pids is in use.
    pub fn is_pid_taken(&self) -> bool {
        matches!(self, Self::RestoreFailed { .. }) && self.criu_errno() == Some(libc::EEXIST)
    }
}
