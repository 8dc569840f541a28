//! The preserved units on either kernel: the agent's records of what it restored, the
//! adoption of those processes by their units (`sd_notify` with the old main PID), holding the
//! units from restarting during an update and releasing them after a failure, installing the
//! generator, and `overboot systemd prepare`.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use overboot_handover::PreservedTree;

use super::base::*;
use super::generator::*;

/// The persistent drop-in that makes `unit` preservable. It turns off the options that put a
/// service in namespaces of its own (user, mount, UTS, IPC, network): CRIU cannot bring those
/// into a new boot's systemd. Empty assignments reset lists (paths) the unit file set. The
/// unit keeps logging to journald: its streams there are carried (see
/// [`crate::host::journal`]).
pub fn preservable_dropin(unit: &str) -> String {
    format!(
        "\
# Written by `overboot systemd prepare`: this service runs in the host's namespaces, so that
# `overboot update --preserve unit:{unit}` can carry it across a kernel update (overboot does
# not carry yet the private mounts, users and host names systemd makes for a unit).
[Service]
PrivateUsers=no
PrivateTmp=no
PrivateDevices=no
PrivateNetwork=no
PrivateIPC=no
PrivateMounts=no
ProtectHostname=no
ProtectSystem=no
ProtectHome=no
ProtectKernelTunables=no
ProtectKernelModules=no
ProtectKernelLogs=no
ProtectControlGroups=no
ProtectClock=no
ProtectProc=default
ProcSubset=all
ReadWritePaths=
ReadOnlyPaths=
InaccessiblePaths=
ExecPaths=
NoExecPaths=
TemporaryFileSystem=
BindPaths=
BindReadOnlyPaths=
"
    )
}

// ---------------------------------------------------------------------------------------
// The agent's records and the adoption
// ---------------------------------------------------------------------------------------

/// What the agent leaves for a unit's adoption: `<work dir>/units/<unit>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    /// The unit.
    pub unit: String,
    /// Its main PID (before and after).
    pub main_pid: i32,
    /// Every restored process of the unit.
    pub pids: Vec<i32>,
}

/// The record path of `unit`.
pub fn record_path(work_dir: &Path, unit: &str) -> PathBuf {
    work_dir.join(UNITS_DIR).join(format!("{unit}.json"))
}

/// Writes the record of every preserved unit among `trees` (all restored and alive).
pub fn write_records(work_dir: &Path, trees: &[PreservedTree]) -> Result<(), SystemdError> {
    for unit in preserved_units(trees) {
        let of_unit: Vec<&PreservedTree> = trees
            .iter()
            .filter(|t| t.unit.as_ref().is_some_and(|u| u.name == unit))
            .collect();
        let main_pid = of_unit
            .iter()
            .find_map(|t| t.unit.as_ref().map(|u| u.main_pid))
            .unwrap_or(0);
        let record = Restored {
            unit: unit.clone(),
            main_pid,
            pids: of_unit.iter().flat_map(|t| t.pids.clone()).collect(),
        };
        let text =
            serde_json::to_string_pretty(&record).map_err(|source| SystemdError::Record {
                path: record_path(work_dir, &unit),
                source,
            })?;
        write_file(&record_path(work_dir, &unit), &text)?;
    }
    Ok(())
}

/// The cgroup (v2) directory of this process.
fn own_cgroup() -> Result<PathBuf, SystemdError> {
    let path = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| SystemdError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("no cgroup v2 entry"),
        })?;
    Ok(Path::new("/sys/fs/cgroup").join(rel.trim().trim_start_matches('/')))
}

/// Sends one notification datagram to systemd, with `fds` attached.
fn notify_send(
    socket: &nix::sys::socket::UnixAddr,
    message: &str,
    fds: &[std::os::fd::RawFd],
    what: &'static str,
) -> Result<(), SystemdError> {
    use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
    let err = |source| SystemdError::Notify { what, source };
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    let iov = [IoSlice::new(message.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    socket::sendmsg(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), Some(socket)).map_err(err)?;
    Ok(())
}

/// `sd_notify(state)` followed by `sd_notify_barrier()`: returns once systemd has processed
/// the message (it closes the pipe we hand it after everything sent before).
fn notify(unit: &str, state: &str) -> Result<(), SystemdError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::UnixAddr;
    let path = std::env::var("NOTIFY_SOCKET").map_err(|_| SystemdError::NoNotifySocket)?;
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()),
        None => UnixAddr::new(path.as_str()),
    }
    .map_err(|source| SystemdError::Notify {
        what: "the socket address",
        source,
    })?;
    notify_send(&addr, state, &[], "the new main PID")?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| {
        SystemdError::Notify {
            what: "a barrier pipe",
            source,
        }
    })?;
    notify_send(&addr, "BARRIER=1", &[write.as_raw_fd()], "the barrier")?;
    drop(write);
    let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
    let ready =
        nix::poll::poll(&mut fds, PollTimeout::from(BARRIER_TIMEOUT_MS)).map_err(|source| {
            SystemdError::Notify {
                what: "the barrier wait",
                source,
            }
        })?;
    if ready == 0 {
        return Err(SystemdError::Barrier {
            unit: unit.into(),
            secs: u64::from(BARRIER_TIMEOUT_MS / 1000),
        });
    }
    Ok(())
}

/// `overboot systemd adopt UNIT`, the unit's ExecStart in the new boot: moves the restored
/// processes into this (the unit's) cgroup and makes the restored main process the unit's
/// main PID. Returns that PID.
pub fn adopt(unit: &str, work_dir: &Path) -> Result<i32, SystemdError> {
    let path = record_path(work_dir, unit);
    let text = std::fs::read_to_string(&path).map_err(|_| SystemdError::NotRestored {
        unit: unit.into(),
        path: path.clone(),
    })?;
    let record: Restored =
        serde_json::from_str(&text).map_err(|source| SystemdError::Record { path, source })?;
    if !crate::host::proc::alive(record.main_pid) {
        return Err(SystemdError::NotAlive {
            unit: unit.into(),
            pid: record.main_pid,
        });
    }
    let procs = own_cgroup()?.join("cgroup.procs");
    for pid in record.pids.iter().filter(|p| crate::host::proc::alive(**p)) {
        // Threads follow their process; a pid already here is rewritten harmlessly.
        std::fs::write(&procs, pid.to_string()).map_err(io(&procs))?;
    }
    notify(
        unit,
        &format!(
            "MAINPID={}\nREADY=1\nSTATUS=restored by overboot from the previous kernel",
            record.main_pid
        ),
    )?;
    Ok(record.main_pid)
}

/// `overboot systemd finish` ([`ADOPTED_UNIT`]): every preserved unit adopted its
/// processes; from now on the generator emits nothing, and a reload gives the units back
/// their own unit files (with their adopted main PIDs).
pub fn finish(work_dir: &Path) -> Result<(), SystemdError> {
    write_file(&work_dir.join(FINISHED), "")?;
    systemctl(&["daemon-reload"])
}

// ---------------------------------------------------------------------------------------
// The old kernel: no restart while a unit is dumped, adoption after a local restore
// ---------------------------------------------------------------------------------------

pub(super) fn dropin_path(base: &str, unit: &str, name: &str) -> PathBuf {
    Path::new(base).join(format!("{unit}.d")).join(name)
}

/// Keeps systemd from restarting `units` when the dump ends their processes (a fresh copy
/// would take the port and the data the restore needs): a runtime `Restart=no`.
pub fn hold_restarts(units: &[String]) -> Result<(), SystemdError> {
    if units.is_empty() {
        return Ok(());
    }
    for unit in units {
        write_file(
            &dropin_path(RUNTIME_UNITS, unit, HOLD_DROPIN),
            "# overboot update: no restart while the processes are carried to a new kernel.\n\
             [Service]\nRestart=no\n",
        )?;
    }
    systemctl(&["daemon-reload"])
}

/// Undoes [`hold_restarts`] after a failed update; every unit whose processes were restored
/// here (`restored`) adopts them again, as in a new boot. Best effort: logs what fails (the
/// processes run either way).
pub fn release_restarts(units: &[String], restored: &[PreservedTree], exe: &Path, work_dir: &Path) {
    if units.is_empty() {
        return;
    }
    let adopt: Vec<String> = preserved_units(restored)
        .into_iter()
        .filter(|u| units.contains(u))
        .collect();
    if let Err(e) = write_records(work_dir, restored) {
        tracing::warn!(error = %e, "cannot record the locally restored units");
    }
    for unit in units {
        let _ = std::fs::remove_file(dropin_path(RUNTIME_UNITS, unit, HOLD_DROPIN));
    }
    for unit in &adopt {
        if let Err(e) = write_file(
            &dropin_path(RUNTIME_UNITS, unit, ADOPT_DROPIN),
            &adopt_dropin(exe, unit),
        ) {
            tracing::warn!(%unit, error = %e, "cannot write the adopt drop-in");
        }
    }
    if let Err(e) = systemctl(&["daemon-reload"]) {
        tracing::warn!(error = %e, "daemon-reload after a failed update");
    }
    for unit in &adopt {
        let _ = systemctl(&["reset-failed", unit]);
        match systemctl(&["start", unit]) {
            Ok(()) => tracing::info!(%unit, "the unit adopted its locally restored processes"),
            Err(e) => tracing::warn!(%unit, error = %e, "the unit did not adopt its processes"),
        }
        let _ = std::fs::remove_file(dropin_path(RUNTIME_UNITS, unit, ADOPT_DROPIN));
    }
    if !adopt.is_empty() {
        if let Err(e) = systemctl(&["daemon-reload"]) {
            tracing::warn!(error = %e, "daemon-reload after the local adoption");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Setup: the generator and preservable services
// ---------------------------------------------------------------------------------------

/// `overboot systemd install`: links the generator to `exe` in [`GENERATOR_DIR`].
pub fn install(exe: &Path, root: &Path) -> Result<PathBuf, SystemdError> {
    let dir = root.join(GENERATOR_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let link = dir.join(GENERATOR);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(exe, &link).map_err(io(&link))?;
    Ok(link)
}

/// `overboot systemd prepare UNIT`: the persistent drop-in [`preservable_dropin`], then a reload;
/// with `restart` the unit is restarted so that it runs without namespaces of its own.
pub fn prepare(unit: &str, restart: bool) -> Result<PathBuf, SystemdError> {
    let path = dropin_path(ADMIN_UNITS, unit, PREPARE_DROPIN);
    write_file(&path, &preservable_dropin(unit))?;
    systemctl(&["daemon-reload"])?;
    if restart {
        systemctl(&["restart", unit])?;
    }
    Ok(path)
}
