//! systemd hosts: how a preserved service comes back in the new boot *as itself* — the same
//! unit, active, with the same main PID — instead of as an orphan beside a fresh copy.
//!
//! ```text
//!  old kernel                                    new kernel (same root file system)
//!  overboot update --preserve unit:X.service     systemd runs overboot-generator (early):
//!   X.service.d/zz-overboot-hold.conf:             map on the command line → sysinit wants
//!     Restart=no (runtime), so the end of the      overboot-resume.service; X.service gets
//!     dumped (stopped) processes after a failure   the adopt drop-in
//!     is not answered by a fresh X
//!   dump, map in dir:/var/lib/overboot/ssm/ID   overboot-resume.service (before sysinit.target,
//!   kexec ─────────────────────────────────────►  PIDs still free): verify, lock, network,
//!                                                 restore every tree, unlock; writes
//!                                                 /run/overboot/units/X.service.json
//!                                               X.service starts: ExecStart=+overboot systemd
//!                                                 adopt X: its restored processes into X's
//!                                                 cgroup, sd_notify MAINPID=<old main> READY=1
//!                                               overboot-adopted.service (after every X):
//!                                                 daemon-reload; the map is gone, so the drop-ins
//!                                                 are too: stop/restart run X's own unit file
//! ```
//!
//! Why one early restore instead of each unit restoring itself when it starts: all trees come
//! back together or not at all (the agent's all-or-nothing restore and its rollback work
//! unchanged), under one network lock that is in place before any interface is up (peers never
//! see a reset), and before the boot has used many PIDs (a preserved PID must be free).
//!
//! The map lives in a directory store (`--handover dir:`), by default
//! `/var/lib/overboot/ssm` on the root file system: the initrd store is unpacked into the
//! initramfs and gone after switch_root, while the root file system (or a reserved-RAM store
//! mounted by fstab, which `RequiresMountsFor=` waits for) is there when systemd runs.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use overboot_handover::{Manifest, PreservedTree, PreservedUnit};

/// The generator's file name; `overboot` run under this name is the generator.
pub const GENERATOR: &str = "overboot-generator";
/// Where `overboot systemd install` puts the generator (the administrator's directory).
pub const GENERATOR_DIR: &str = "/etc/systemd/system-generators";
/// Every directory systemd runs generators from.
const GENERATOR_DIRS: &[&str] = &[
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
const RUNTIME_UNITS: &str = "/run/systemd/system";
/// Persistent unit directory of the administrator.
const ADMIN_UNITS: &str = "/etc/systemd/system";
/// Subdirectory of the agent's work dir with one record per restored unit.
pub const UNITS_DIR: &str = "units";
/// File in the agent's work dir once every preserved unit was adopted: the generator then
/// emits nothing more in this boot.
pub const FINISHED: &str = "adopted";
/// How long `adopt` waits for systemd to take the new main PID.
const BARRIER_TIMEOUT_MS: u16 = 30_000;

/// Where a prepared service's standard output and error go.
pub const LOG_DIR: &str = "/var/log/overboot";

/// The persistent drop-in that makes `unit` preservable. It turns off the options that put a
/// service in namespaces of its own (user, mount, UTS, IPC, network): CRIU cannot bring those
/// into a new boot's systemd. Empty assignments reset lists (paths) the unit file set. And it
/// sends standard output and error to a file: a service's stream connection to journald
/// cannot be carried (CRIU cannot dump one half of a unix stream connection whose other half
/// is journald's).
pub fn preservable_dropin(unit: &str) -> String {
    format!(
        "\
# Written by `overboot systemd prepare`: this service runs in the host's namespaces and logs
# to a file, so that `overboot update --preserve unit:{unit}` can carry it across a kernel
# update (CRIU restores processes, not the private mounts, users and host names systemd makes
# for a unit, nor a stream connection to journald).
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
StandardOutput=append:{LOG_DIR}/{unit}.log
StandardError=inherit
"
    )
}

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SystemdError + '_ {
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
    state_dir.join("ssm")
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
fn systemctl(args: &[&str]) -> Result<(), SystemdError> {
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
fn write_file(path: &Path, contents: &str) -> Result<(), SystemdError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, contents).map_err(io(path))
}

// ---------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------

/// What the generator writes into its output directory: files and symlinks, by path relative
/// to that directory (a link's target is relative to it too).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Generated {
    /// `(path, contents)`.
    pub files: Vec<(PathBuf, String)>,
    /// `(link, target)`.
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// Escapes a path for a unit name the way `systemd-escape --path` does.
fn escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(char::from(b))
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Quotes a word for an `Exec*=` line (specifiers and escapes are systemd's, not ours).
fn exec_word(word: &str) -> String {
    word.replace('\\', "\\\\").replace('%', "%%")
}

/// The agent's unit, written on every boot (so that it survives the daemon-reload after the
/// adoption) but wanted only when a map is on the command line.
fn resume_unit(exe: &Path) -> String {
    format!(
        "\
# Generated by overboot-generator: the agent that restores the services carried from the
# previous kernel, before sysinit.target so that their PIDs are still free and no interface
# is up without the network lock.
[Unit]
Description=overboot: restore the services carried from the previous kernel
DefaultDependencies=no
ConditionKernelCommandLine=overboot.handover
After=local-fs.target systemd-modules-load.service systemd-udev-trigger.service
Before=sysinit.target network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={} resume
# Restored trees of pid: targets stay in this unit's cgroup: never kill them with it.
KillMode=process
TimeoutStartSec=infinity
OOMScoreAdjust=-1000
StandardOutput=journal+console
StandardError=journal+console
",
        exec_word(&exe.to_string_lossy())
    )
}

/// The unit that, once every preserved unit adopted its processes, reloads systemd so that
/// the adopt drop-ins disappear (the map is gone by then).
fn adopted_unit(exe: &Path) -> String {
    format!(
        "\
# Generated by overboot-generator: after the preserved services adopted their restored
# processes, reload systemd so that they run from their own unit files again.
[Unit]
Description=overboot: hand the adopted services back to their unit files

[Service]
Type=oneshot
ExecStart={} systemd finish
",
        exec_word(&exe.to_string_lossy())
    )
}

/// The drop-in that turns `unit`'s start into the adoption of its restored processes.
pub fn adopt_dropin(exe: &Path, unit: &str) -> String {
    format!(
        "\
# Generated by overboot: the processes of {unit} were carried from the previous kernel and
# restored by {RESUME_UNIT}; starting the unit adopts them (same main PID) instead of
# starting new ones. Gone after {ADOPTED_UNIT} reloads systemd.
[Unit]
After={RESUME_UNIT}
Wants={RESUME_UNIT}

[Service]
Type=notify
NotifyAccess=main
PIDFile=
ExecCondition=
ExecStartPre=
ExecStartPost=
ExecStart=
ExecStart=+{} systemd adopt {}
",
        exec_word(&exe.to_string_lossy()),
        exec_word(unit)
    )
}

/// The preserved units of a manifest, in order, each once.
pub fn preserved_units(trees: &[PreservedTree]) -> Vec<String> {
    unit_names(trees.iter().filter_map(|t| t.unit.as_ref()))
}

/// The names of `units`, in order, each once.
pub fn unit_names<'a>(units: impl Iterator<Item = &'a PreservedUnit>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for unit in units {
        if !names.contains(&unit.name) {
            names.push(unit.name.clone());
        }
    }
    names
}

/// What the generator writes. `map` is the map's directory when the command line names one
/// and this boot has not finished adopting; `manifest` its manifest when readable. The units
/// are always written; they are wanted, and the preserved units changed, only with a map.
pub fn generate(exe: &Path, map: Option<&Path>, manifest: Option<&Manifest>) -> Generated {
    let mut out = Generated::default();
    out.files.push((RESUME_UNIT.into(), resume_unit(exe)));
    out.files.push((ADOPTED_UNIT.into(), adopted_unit(exe)));
    let Some(map) = map else {
        return out;
    };
    // The agent runs even when the manifest cannot be read: it reports that and rolls back.
    out.links.push((
        Path::new("sysinit.target.wants").join(RESUME_UNIT),
        Path::new("..").join(RESUME_UNIT),
    ));
    let mut waits = format!(
        "# Generated by overboot-generator: the map and the interfaces the agent needs.\n\
         [Unit]\nRequiresMountsFor={}\n",
        exec_word(&map.to_string_lossy())
    );
    let Some(manifest) = manifest else {
        out.files.push((
            Path::new(&format!("{RESUME_UNIT}.d")).join("map.conf"),
            waits,
        ));
        return out;
    };
    let interfaces = manifest.network.iter().flat_map(|n| &n.interfaces);
    for interface in interfaces {
        let device = format!(
            "sys-subsystem-net-devices-{}.device",
            escape_path(&interface.name)
        );
        waits.push_str(&format!("Wants={device}\nAfter={device}\n"));
    }
    out.files.push((
        Path::new(&format!("{RESUME_UNIT}.d")).join("map.conf"),
        waits,
    ));
    let units = preserved_units(&manifest.trees);
    if units.is_empty() {
        return out;
    }
    for unit in &units {
        out.files.push((
            Path::new(&format!("{unit}.d")).join(ADOPT_DROPIN),
            adopt_dropin(exe, unit),
        ));
    }
    out.files.push((
        Path::new(&format!("{ADOPTED_UNIT}.d")).join("units.conf"),
        format!(
            "# Generated by overboot-generator: after every preserved unit.\n[Unit]\nAfter={}\n",
            units.join(" ")
        ),
    ));
    out.links.push((
        Path::new("multi-user.target.wants").join(ADOPTED_UNIT),
        Path::new("..").join(ADOPTED_UNIT),
    ));
    out
}

/// Runs as systemd's generator: reads the command line and the map's manifest and writes
/// into `normal_dir`. Never fails the boot: problems are logged and the agent reports them.
pub fn run_generator(exe: &Path, normal_dir: &Path, work_dir: &Path) -> Result<(), SystemdError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let finished = work_dir.join(FINISHED).exists();
    let map = match overboot_handover::locate_from_cmdline(&cmdline) {
        Ok(Some(map)) if !finished => Some(map),
        Ok(_) => None,
        Err(e) => {
            // The agent reports the malformed parameter; it must run to do so.
            eprintln!("overboot-generator: {e}");
            Some(PathBuf::from("/"))
        }
    };
    let manifest = map.as_deref().and_then(|m| {
        overboot_handover::SaveStateMap::open(m)
            .map_err(|e| eprintln!("overboot-generator: {}: {e}", m.display()))
            .ok()
            .map(|map| map.manifest().clone())
    });
    let generated = generate(exe, map.as_deref(), manifest.as_ref());
    for (path, contents) in &generated.files {
        write_file(&normal_dir.join(path), contents)?;
    }
    for (link, target) in &generated.links {
        let link = normal_dir.join(link);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).map_err(io(&link))?;
    }
    Ok(())
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

fn dropin_path(base: &str, unit: &str, name: &str) -> PathBuf {
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
    std::fs::create_dir_all(LOG_DIR).map_err(io(Path::new(LOG_DIR)))?;
    write_file(&path, &preservable_dropin(unit))?;
    systemctl(&["daemon-reload"])?;
    if restart {
        systemctl(&["restart", unit])?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, unit: Option<&str>, pids: &[i32]) -> PreservedTree {
        PreservedTree {
            name: name.into(),
            root_pid: pids[0],
            pids: pids.to_vec(),
            images: format!("trees/{name}"),
            cmdline: String::new(),
            clocks_realtime_ns: 0,
            unit: unit.map(|u| PreservedUnit {
                name: u.into(),
                main_pid: pids[0],
            }),
        }
    }

    fn manifest(trees: Vec<PreservedTree>, interfaces: &[&str]) -> Manifest {
        let network = crate::host::network::NetworkState {
            locked: true,
            interfaces: interfaces
                .iter()
                .map(|n| crate::host::network::Interface {
                    name: (*n).into(),
                    addresses: Vec::new(),
                })
                .collect(),
            ..Default::default()
        };
        Manifest {
            trees,
            network: Some(network),
            ..Manifest::default()
        }
    }

    fn file<'a>(g: &'a Generated, path: &str) -> Option<&'a str> {
        g.files
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, c)| c.as_str())
    }

    #[test]
    fn without_a_map_only_idle_units_are_written() {
        let exe = Path::new("/usr/sbin/overboot");
        let g = generate(exe, None, None);
        assert!(g.links.is_empty(), "{g:?}");
        assert_eq!(g.files.len(), 2);
        let resume = file(&g, RESUME_UNIT).unwrap();
        assert!(resume.contains("ExecStart=/usr/sbin/overboot resume\n"));
        assert!(resume.contains("Before=sysinit.target"));
        assert!(resume.contains("ConditionKernelCommandLine=overboot.handover"));
        assert!(file(&g, ADOPTED_UNIT)
            .unwrap()
            .contains("ExecStart=/usr/sbin/overboot systemd finish\n"));
    }

    #[test]
    fn a_map_with_units_makes_them_adopt() {
        let exe = Path::new("/usr/sbin/overboot");
        let m = manifest(
            vec![
                tree(
                    "unit-redis-server.service",
                    Some("redis-server.service"),
                    &[700, 701],
                ),
                tree("pid-900", None, &[900]),
                tree("unit-a-b.service-1", Some("a-b.service"), &[1000]),
                tree("unit-a-b.service-2", Some("a-b.service"), &[1002]),
            ],
            &["eth0", "br-lan"],
        );
        let map = Path::new("/var/lib/overboot/ssm/1-2");
        let g = generate(exe, Some(map), Some(&m));
        assert!(g.links.contains(&(
            PathBuf::from("sysinit.target.wants/overboot-resume.service"),
            PathBuf::from("../overboot-resume.service")
        )));
        assert!(g.links.contains(&(
            PathBuf::from("multi-user.target.wants/overboot-adopted.service"),
            PathBuf::from("../overboot-adopted.service")
        )));
        let waits = file(&g, "overboot-resume.service.d/map.conf").unwrap();
        assert!(waits.contains("RequiresMountsFor=/var/lib/overboot/ssm/1-2\n"));
        assert!(waits.contains("After=sys-subsystem-net-devices-eth0.device\n"));
        assert!(waits.contains("Wants=sys-subsystem-net-devices-br\\x2dlan.device\n"));
        let redis = file(&g, "redis-server.service.d/zz-overboot-adopt.conf").unwrap();
        assert!(redis.contains(
            "ExecStart=\nExecStart=+/usr/sbin/overboot systemd adopt redis-server.service\n"
        ));
        assert!(redis.contains("Type=notify\n"));
        assert!(redis.contains("After=overboot-resume.service\n"));
        assert!(file(&g, "a-b.service.d/zz-overboot-adopt.conf").is_some());
        assert_eq!(
            g.files
                .iter()
                .filter(|(p, _)| p.ends_with(ADOPT_DROPIN))
                .count(),
            2,
            "one drop-in per unit, none for pid: trees"
        );
        assert!(file(&g, "overboot-adopted.service.d/units.conf")
            .unwrap()
            .contains("After=redis-server.service a-b.service\n"));
    }

    #[test]
    fn an_unreadable_manifest_still_runs_the_agent() {
        let g = generate(Path::new("/x/overboot"), Some(Path::new("/ssm/1")), None);
        assert_eq!(g.links.len(), 1, "{g:?}");
        assert!(file(&g, "overboot-resume.service.d/map.conf").is_some());
        assert!(!g.files.iter().any(|(p, _)| p.ends_with(ADOPT_DROPIN)));
    }

    #[test]
    fn records_gather_every_tree_of_a_unit() {
        let dir = tempfile::tempdir().unwrap();
        let trees = vec![
            tree("unit-a.service-1", Some("a.service"), &[10, 11]),
            tree("pid-20", None, &[20]),
            tree("unit-a.service-2", Some("a.service"), &[12]),
        ];
        write_records(dir.path(), &trees).unwrap();
        let text = std::fs::read_to_string(record_path(dir.path(), "a.service")).unwrap();
        let record: Restored = serde_json::from_str(&text).unwrap();
        assert_eq!(record.main_pid, 10);
        assert_eq!(record.pids, vec![10, 11, 12]);
        assert_eq!(
            std::fs::read_dir(dir.path().join(UNITS_DIR))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn adopting_needs_the_agents_record() {
        let dir = tempfile::tempdir().unwrap();
        let err = adopt("nope.service", dir.path()).unwrap_err();
        assert!(matches!(err, SystemdError::NotRestored { .. }), "{err}");
        assert!(err.to_string().contains("nope.service was not restored"));
    }

    #[test]
    fn prepared_units_leave_their_namespaces_and_the_journal() {
        let text = preservable_dropin("redis-server.service");
        for line in [
            "PrivateUsers=no\n",
            "ProtectHostname=no\n",
            "ProtectSystem=no\n",
            "PrivateTmp=no\n",
            "StandardOutput=append:/var/log/overboot/redis-server.service.log\n",
            "StandardError=inherit\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn paths_escape_like_systemd() {
        assert_eq!(escape_path("eth0"), "eth0");
        assert_eq!(escape_path("br-lan"), "br\\x2dlan");
        assert_eq!(escape_path("/var/lib"), "var-lib");
        assert_eq!(escape_path(".x"), "\\x2ex");
    }

    #[test]
    fn install_links_the_generator() {
        let root = tempfile::tempdir().unwrap();
        let link = install(Path::new("/usr/sbin/overboot"), root.path()).unwrap();
        assert_eq!(
            link,
            root.path()
                .join("etc/systemd/system-generators/overboot-generator")
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("/usr/sbin/overboot")
        );
    }
}
