//! Applying, listing, reverting and replacing live patches on the running kernel, as root:
//! modules go in through `finit_module(2)` and out through `delete_module(2)`; state is read from
//! and written to `/sys/kernel/livepatch/<patch>/` (`enabled`, `transition`, one directory per
//! patched object and function). A transition finishes when every task has left the old code;
//! when it does not within the timeout, the tasks still on the other side are named (from
//! `/proc/<pid>/task/<tid>/patch_state`).

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{delete_module, finit_module, DeleteModuleFlags, ModuleInitFlags};

use crate::io_error::{io, IoError};
use crate::modinfo::{self, Modinfo, ModinfoError};

/// Where the kernel lists live patches.
pub const SYSFS: &str = "/sys/kernel/livepatch";
const POLL: Duration = Duration::from_millis(50);

/// Errors applying, listing or removing patches.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The module's `.modinfo` could not be read.
    #[error(transparent)]
    Modinfo(#[from] ModinfoError),
    /// The module is not a livepatch module.
    #[error("{0} is not a livepatch module (no livepatch=Y in .modinfo)")]
    NotLivepatch(PathBuf),
    /// The module was built for another kernel.
    #[error("refused: {module} was built for {built_for}, the running kernel is {running}")]
    WrongRelease {
        module: PathBuf,
        built_for: String,
        running: String,
    },
    /// `replace` was given a patch that is not cumulative.
    #[error("{0} is not a cumulative (replace) patch; build it with `patch build --replace`")]
    NotCumulative(PathBuf),
    /// The kernel has no livepatch support.
    #[error("the running kernel has no livepatch support ({SYSFS} is missing)")]
    Unsupported,
    /// Not allowed (not root, module loading disabled, lockdown).
    #[error("not permitted to {action} (root with CAP_SYS_MODULE needed; modules_disabled and lockdown also forbid it)")]
    Permission {
        action: &'static str,
        #[source]
        source: Errno,
    },
    /// The patch is already loaded.
    #[error("patch {0} is already applied")]
    AlreadyApplied(String),
    /// The loader refused the module.
    #[error("the kernel refused {module}: {source} (see dmesg)")]
    Load {
        module: PathBuf,
        #[source]
        source: Errno,
    },
    /// No such patch.
    #[error("no live patch named {0}")]
    NoSuchPatch(String),
    /// The transition did not finish.
    #[error(
        "patch {patch}: transition to {target} not finished after {secs} s; blocked by {blockers}"
    )]
    Stalled {
        patch: String,
        target: &'static str,
        secs: u64,
        blockers: String,
    },
    /// The module could not be unloaded.
    #[error("cannot unload module {module}")]
    Unload {
        module: String,
        #[source]
        source: Errno,
    },
    /// Filesystem error.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Failure classes of [`RuntimeError`], for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeErrorClass {
    /// Not root or not allowed.
    Permission,
    /// Wrong module, wrong kernel.
    BadInput,
    /// Nothing to act on.
    Nothing,
    /// Busy: a transition that does not finish.
    Busy,
    /// Anything else.
    Other,
}

impl RuntimeError {
    /// The failure class.
    pub fn class(&self) -> RuntimeErrorClass {
        match self {
            RuntimeError::Permission { .. } => RuntimeErrorClass::Permission,
            RuntimeError::Modinfo(_)
            | RuntimeError::NotLivepatch(_)
            | RuntimeError::WrongRelease { .. }
            | RuntimeError::NotCumulative(_)
            | RuntimeError::AlreadyApplied(_)
            | RuntimeError::Load { .. } => RuntimeErrorClass::BadInput,
            RuntimeError::NoSuchPatch(_) => RuntimeErrorClass::Nothing,
            RuntimeError::Stalled { .. } => RuntimeErrorClass::Busy,
            RuntimeError::Unsupported | RuntimeError::Unload { .. } | RuntimeError::Io(_) => {
                RuntimeErrorClass::Other
            }
        }
    }
}

/// A live patch as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LivePatch {
    /// Patch (and module) name.
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether a transition is in progress.
    pub transition: bool,
    /// Patched functions as `object:function,sympos`.
    pub functions: Vec<String>,
}

impl LivePatch {
    /// `enabled`, `disabled`, `enabling` or `disabling`.
    pub fn state(&self) -> &'static str {
        match (self.enabled, self.transition) {
            (true, false) => "enabled",
            (true, true) => "enabling",
            (false, true) => "disabling",
            (false, false) => "disabled",
        }
    }
}

/// Whether reading a file of a patch's sysfs directory failed because the patch is being freed:
/// the file is gone (`ENOENT`), or its kobject is already deactivated and the read returns
/// `ENODEV` (seen in the lab between a revert's transition ending and the directory going away).
fn going(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(Errno::ENODEV as i32)
}

/// A patch's sysfs flag (`enabled`, `transition`); `None` when the patch is being freed.
fn read_flag(path: &Path) -> Result<Option<bool>, RuntimeError> {
    match fs::read_to_string(path) {
        Ok(v) => Ok(Some(v.trim() == "1")),
        Err(e) if going(&e) => Ok(None),
        Err(e) => Err(io(path)(e).into()),
    }
}

/// The directories in `path`, sorted; none when `path` is going away with its patch.
fn sorted_dirs(path: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if going(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e).into()),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Lists the live patches of the running kernel (`root` is [`SYSFS`] outside tests).
pub fn list(root: &Path) -> Result<Vec<LivePatch>, RuntimeError> {
    if !root.exists() {
        return Err(RuntimeError::Unsupported);
    }
    let mut patches = Vec::new();
    for dir in sorted_dirs(root)? {
        // A patch freed while it is listed (a revert ending) is no longer there.
        let (Some(enabled), Some(transition)) = (
            read_flag(&dir.join("enabled"))?,
            read_flag(&dir.join("transition"))?,
        ) else {
            continue;
        };
        let mut functions = Vec::new();
        for object in sorted_dirs(&dir)? {
            for func in sorted_dirs(&object)? {
                functions.push(format!("{}:{}", file_name(&object), file_name(&func)));
            }
        }
        patches.push(LivePatch {
            name: file_name(&dir),
            enabled,
            transition,
            functions,
        });
    }
    Ok(patches)
}

/// The running kernel's release.
pub fn running_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks a module file before loading: a livepatch module, built for this kernel.
pub fn check_module(module: &Path, running: &str) -> Result<Modinfo, RuntimeError> {
    let info = modinfo::read(module)?;
    if !info.livepatch {
        return Err(RuntimeError::NotLivepatch(module.to_path_buf()));
    }
    if info.release() != running {
        return Err(RuntimeError::WrongRelease {
            module: module.to_path_buf(),
            built_for: info.release().to_string(),
            running: running.to_string(),
        });
    }
    Ok(info)
}

/// Waits until `patch` has no transition in progress; names the blocking tasks on timeout.
pub fn wait_transition(
    root: &Path,
    patch: &str,
    target: &'static str,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let path = root.join(patch).join("transition");
    let start = Instant::now();
    loop {
        match fs::read_to_string(&path) {
            // The directory goes away when a disabled patch is freed.
            Err(e) if going(&e) => return Ok(()),
            Err(e) => return Err(io(&path)(e).into()),
            Ok(v) if v.trim() == "0" => return Ok(()),
            Ok(_) => {}
        }
        if start.elapsed() >= timeout {
            let wanted = if target == "patched" { "1" } else { "0" };
            return Err(RuntimeError::Stalled {
                patch: patch.into(),
                target,
                secs: timeout.as_secs(),
                blockers: blocking_tasks(wanted),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Tasks whose `patch_state` is neither `wanted` nor -1, as `pid/tid (comm)`.
fn blocking_tasks(wanted: &str) -> String {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return "unknown tasks".into();
    };
    for p in procs.filter_map(Result::ok) {
        let pid = file_name(&p.path());
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.filter_map(Result::ok) {
            let state = fs::read_to_string(t.path().join("patch_state")).unwrap_or_default();
            let state = state.trim();
            if state.is_empty() || state == "-1" || state == wanted {
                continue;
            }
            let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            found.push(format!("{pid}/{} ({})", file_name(&t.path()), comm.trim()));
        }
    }
    if found.is_empty() {
        "no task found blocking (the kernel retries every second)".into()
    } else {
        found.join(", ")
    }
}

/// Loads a livepatch module and waits until the patch is fully applied.
pub fn apply(module: &Path, root: &Path, timeout: Duration) -> Result<Modinfo, RuntimeError> {
    let info = check_module(module, &running_release())?;
    if !root.exists() {
        return Err(RuntimeError::Unsupported);
    }
    let file = fs::File::open(module).map_err(io(module))?;
    let params = CString::default();
    let _span = tracing::info_span!("apply", patch = %info.name).entered();
    finit_module(&file, &params, ModuleInitFlags::empty()).map_err(|e| match e {
        Errno::EPERM | Errno::EACCES => RuntimeError::Permission {
            action: "load a module",
            source: e,
        },
        Errno::EEXIST => RuntimeError::AlreadyApplied(info.name.clone()),
        _ => RuntimeError::Load {
            module: module.to_path_buf(),
            source: e,
        },
    })?;
    wait_transition(root, &info.name, "patched", timeout)?;
    Ok(info)
}

/// Unloads a module, retrying while the kernel still holds it (the patch is freed
/// asynchronously after it is disabled).
fn unload(name: &str, timeout: Duration) -> Result<(), RuntimeError> {
    let cname = CString::new(name).map_err(|_| RuntimeError::NoSuchPatch(name.into()))?;
    let start = Instant::now();
    loop {
        match delete_module(&cname, DeleteModuleFlags::O_NONBLOCK) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EPERM) => {
                return Err(RuntimeError::Permission {
                    action: "unload a module",
                    source: Errno::EPERM,
                })
            }
            Err(e @ (Errno::EBUSY | Errno::EAGAIN | Errno::EWOULDBLOCK))
                if start.elapsed() < timeout =>
            {
                tracing::debug!(error = %e, module = name, "module still busy");
                std::thread::sleep(POLL);
            }
            Err(source) => {
                return Err(RuntimeError::Unload {
                    module: name.into(),
                    source,
                })
            }
        }
    }
}

/// Disables a patch, waits for the transition back, and unloads its module.
pub fn revert(name: &str, root: &Path, timeout: Duration) -> Result<(), RuntimeError> {
    if !root.exists() {
        return Err(RuntimeError::Unsupported);
    }
    let dir = root.join(name);
    if !dir.exists() {
        return Err(RuntimeError::NoSuchPatch(name.into()));
    }
    let _span = tracing::info_span!("revert", patch = name).entered();
    // Being freed (`None`): disabled already.
    if read_flag(&dir.join("enabled"))? == Some(true) {
        let enabled = dir.join("enabled");
        fs::write(&enabled, b"0").map_err(|e| match e.raw_os_error().map(Errno::from_raw) {
            Some(errno @ (Errno::EPERM | Errno::EACCES)) => RuntimeError::Permission {
                action: "disable a patch",
                source: errno,
            },
            _ => io(&enabled)(e).into(),
        })?;
    }
    wait_transition(root, name, "unpatched", timeout)?;
    unload(name, timeout)
}

/// Applies a cumulative patch that replaces every applied one, then unloads the modules of
/// the patches it replaced. Returns the new patch's modinfo and the replaced names.
pub fn replace(
    module: &Path,
    root: &Path,
    timeout: Duration,
) -> Result<(Modinfo, Vec<String>), RuntimeError> {
    let info = check_module(module, &running_release())?;
    if !info.replace {
        return Err(RuntimeError::NotCumulative(module.to_path_buf()));
    }
    let before = list(root)?;
    let info = apply(module, root, timeout)?;
    let mut replaced = Vec::new();
    for old in before.into_iter().filter(|p| p.name != info.name) {
        // Replaced patches leave sysfs once the transition ends; their modules stay loaded.
        let start = Instant::now();
        while root.join(&old.name).exists() && start.elapsed() < timeout {
            std::thread::sleep(POLL);
        }
        unload(&old.name, timeout)?;
        replaced.push(old.name);
    }
    Ok((info, replaced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_patches_from_a_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("livepatch_fix");
        fs::create_dir_all(p.join("vmlinux/meminfo_proc_show,1")).unwrap();
        fs::write(p.join("enabled"), "1\n").unwrap();
        fs::write(p.join("transition"), "0\n").unwrap();
        let patches = list(root.path()).unwrap();
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].state(), "enabled");
        assert_eq!(patches[0].functions, ["vmlinux:meminfo_proc_show,1"]);
    }

    #[test]
    fn revert_of_unknown_patch_is_nothing_to_do() {
        let root = tempfile::tempdir().unwrap();
        let err = revert("nope", root.path(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.class(), RuntimeErrorClass::Nothing);
    }

    #[test]
    fn a_patch_being_freed_is_gone_not_an_error() {
        assert!(going(&std::io::Error::from_raw_os_error(
            Errno::ENODEV as i32
        )));
        assert!(going(&std::io::Error::from(std::io::ErrorKind::NotFound)));
        assert!(!going(&std::io::Error::from_raw_os_error(
            Errno::EACCES as i32
        )));
        // Listed while its directory empties: left out.
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("livepatch_gone")).unwrap();
        assert!(list(root.path()).unwrap().is_empty());
    }

    #[test]
    fn transition_wait_ends_when_the_patch_is_gone() {
        let root = tempfile::tempdir().unwrap();
        wait_transition(root.path(), "gone", "unpatched", Duration::from_secs(1)).unwrap();
    }
}
