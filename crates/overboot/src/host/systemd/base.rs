//! The names overboot gives its units, drop-ins and records, its errors, and the little it asks
//! of the running systemd (is it PID 1, a unit's main PID, `systemctl`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The generator's file name; `overboot` run under this name is the generator.
pub const GENERATOR: &str = "overboot-generator";
/// Where `overboot systemd install` puts the generator (the administrator's directory).
pub const GENERATOR_DIR: &str = "/etc/systemd/system-generators";
/// Every directory systemd runs generators from.
pub(super) const GENERATOR_DIRS: &[&str] = &[
    GENERATOR_DIR,
    "/run/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
    "/lib/systemd/system-generators",
];
/// The unit running the agent in the new boot.
pub const RESUME_UNIT: &str = "overboot-resume.service";
/// The unit that hands adopted services back to their own unit files.
pub const ADOPTED_UNIT: &str = "overboot-adopted.service";
/// Drop-in making a preserved unit's start an adoption.
pub const ADOPT_DROPIN: &str = "zz-overboot-adopt.conf";
/// Runtime drop-in keeping systemd from restarting a unit while its processes are dumped.
pub const HOLD_DROPIN: &str = "zz-overboot-hold.conf";
/// Persistent drop-in that makes a service preservable (`overboot systemd prepare`).
pub const PREPARE_DROPIN: &str = "overboot-preservable.conf";
/// Runtime unit directory (drop-ins that must not outlive this boot).
pub(super) const RUNTIME_UNITS: &str = "/run/systemd/system";
/// Persistent unit directory of the administrator.
pub(super) const ADMIN_UNITS: &str = "/etc/systemd/system";
/// Subdirectory of the agent's work dir with one record per restored unit.
pub const UNITS_DIR: &str = "units";
/// File in the agent's work dir once every preserved unit was adopted: the generator then
/// emits nothing more in this boot.
pub const FINISHED: &str = "adopted";
/// How long `adopt` waits for systemd to take the new main PID.
pub(super) const BARRIER_TIMEOUT_MS: u16 = 30_000;

/// Errors of the systemd integration.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `systemctl` failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// The agent left no record of this unit in this boot.
    #[error("{unit} was not restored by overboot in this boot (no {})", path.display())]
    NotRestored { unit: String, path: PathBuf },
    /// The record is not readable.
    #[error("the record {path} is not valid")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The restored main process is gone.
    #[error("the restored main process {pid} of {unit} is not alive")]
    NotAlive { unit: String, pid: i32 },
    /// Not run by systemd as a service's main process.
    #[error("NOTIFY_SOCKET is not set: `overboot systemd adopt` runs as a unit's ExecStart")]
    NoNotifySocket,
    /// Talking to systemd over the notification socket failed.
    #[error("sending {what} to systemd")]
    Notify {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    /// systemd did not take the message in time.
    #[error("systemd did not confirm the new main PID of {unit} within {secs} s")]
    Barrier { unit: String, secs: u64 },
}

impl SystemdError {
    /// The exit class.
    pub fn class(&self) -> crate::ExitClass {
        use crate::ExitClass as E;
        match self {
            SystemdError::NotRestored { .. } | SystemdError::NotAlive { .. } => E::Restore,
            SystemdError::NoNotifySocket => E::Usage,
            _ => E::Internal,
        }
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SystemdError + '_ {
    move |source| SystemdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `update` needs to know of the host's init system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// systemd is PID 1 (`/run/systemd/system` exists, as `sd_booted()` checks).
    pub booted: bool,
    /// Where overboot's generator is installed, if it is.
    pub generator: Option<PathBuf>,
}

impl Host {
    /// The running system's.
    pub fn detect() -> Host {
        Host {
            booted: Path::new(RUNTIME_UNITS).is_dir(),
            generator: GENERATOR_DIRS
                .iter()
                .map(|d| Path::new(d).join(GENERATOR))
                .find(|p| p.exists()),
        }
    }
}

/// The default store on a systemd host: a directory on the root file system.
pub fn default_store(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::model::files::DEFAULT_STORE)
}

/// `systemctl show -P MainPID UNIT`, when systemd answers and the unit has one.
pub fn main_pid(unit: &str) -> Option<i32> {
    let out = Command::new("systemctl")
        .args(["show", "-P", "MainPID", unit])
        .output()
        .ok()?;
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && pid > 0).then_some(pid)
}

/// Runs `systemctl ARGS`.
pub(super) fn systemctl(args: &[&str]) -> Result<(), SystemdError> {
    let command = format!("systemctl {}", args.join(" "));
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| SystemdError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(SystemdError::Command {
        command,
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Writes `contents` to `path`, making its directory.
pub(super) fn write_file(path: &Path, contents: &str) -> Result<(), SystemdError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, contents).map_err(io(path))
}
