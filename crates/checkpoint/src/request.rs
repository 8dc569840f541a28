//! What the orchestration asks of the engine — one plain struct per request — and how each
//! becomes CRIU's `criu_opts`.
//!
//! Paths stay paths here; the directories are opened only when the request is sent (CRIU wants
//! fds, see [`crate::criu`]), so these structs can be built, logged and serialized freely.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rpc::{CriuNetworkLockMethod, CriuOpts};

/// CRIU's default log level (errors, warnings, info) is 2; 4 is debug, which is what one wants
/// when reading why a dump failed.
pub const DEFAULT_LOG_LEVEL: i32 = 4;

/// How CRIU keeps the tree's network quiet while it is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NetworkLockMode {
    /// Whatever this CRIU does by default (iptables, unless its config says otherwise).
    #[default]
    Default,
    /// iptables rules.
    Iptables,
    /// An nftables table `inet CRIU-<pid>`; the table is what we carry across kexec.
    Nftables,
    /// No lock from CRIU (`SKIP`, CRIU ≥ 3.18: 3.17 answers "Invalid request code").
    Skip,
}

impl NetworkLockMode {
    fn to_rpc(self) -> Option<i32> {
        match self {
            Self::Default => None,
            Self::Iptables => Some(CriuNetworkLockMethod::Iptables as i32),
            Self::Nftables => Some(CriuNetworkLockMethod::Nftables as i32),
            Self::Skip => Some(CriuNetworkLockMethod::Skip as i32),
        }
    }
}

/// A dump (or pre-dump) of the process tree rooted at `pid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpRequest {
    /// Root of the tree. Always sent: CRIU dumps *its caller* when the pid is missing.
    pub pid: i32,
    /// Where the images go; must exist.
    pub images_dir: PathBuf,
    /// Where CRIU writes its log (and chdirs to); the images dir when `None`.
    pub work_dir: Option<PathBuf>,
    /// Log file name inside the work dir, e.g. `dump.log`; no `/` allowed.
    pub log_file: String,
    /// CRIU log level (0–4).
    pub log_level: i32,
    /// Keep the tree running after the dump (for tests and rollback drills).
    pub leave_running: bool,
    /// Leave the tree stopped (`SIGSTOP`) after a successful dump instead of killing it: CRIU
    /// then does not wait while the kernel frees its memory (most of a large tree's dump), and
    /// the tasks keep their pids until the caller kills them or a kexec abandons them. Its TCP
    /// sockets stay in repair mode, their connections locked. DUMP only.
    pub leave_stopped: bool,
    /// Dump established TCP connections.
    pub tcp_established: bool,
    /// Allow unix sockets whose peer is outside the tree.
    pub ext_unix_sk: bool,
    /// Dump file locks.
    pub file_locks: bool,
    /// The tree belongs to a shell job (has a controlling terminal session).
    pub shell_job: bool,
    /// Images of a previous pre-dump this one is incremental to. A relative path is taken
    /// relative to `images_dir` (as CRIU does); an absolute one is made relative when both
    /// share a parent, so an image set can be moved as a whole.
    pub parent_images: Option<PathBuf>,
    /// Track memory changes (soft-dirty) for a later incremental dump.
    pub track_mem: bool,
    /// How the network is locked during the dump.
    pub network_lock: NetworkLockMode,
    /// Drop in-flight TCP connections (half-open) instead of failing.
    pub tcp_skip_in_flight: bool,
    /// `--external` resources (`unix[ino]`, `mnt[path]:key`, ...).
    pub external: Vec<String>,
    /// Seconds CRIU waits for the tree to freeze; CRIU's default when `None`.
    pub freeze_timeout: Option<u32>,
}

impl DumpRequest {
    /// A dump of `pid` into `images_dir` with our defaults: debug log `dump.log` in the images
    /// dir, TCP connections and external unix sockets included, tree stopped afterwards.
    pub fn new(pid: i32, images_dir: impl Into<PathBuf>) -> Self {
        Self {
            pid,
            images_dir: images_dir.into(),
            work_dir: None,
            log_file: "dump.log".to_owned(),
            log_level: DEFAULT_LOG_LEVEL,
            leave_running: false,
            leave_stopped: false,
            tcp_established: true,
            ext_unix_sk: true,
            file_locks: false,
            shell_job: false,
            parent_images: None,
            track_mem: false,
            network_lock: NetworkLockMode::Default,
            tcp_skip_in_flight: false,
            external: Vec::new(),
            freeze_timeout: None,
        }
    }

    /// The log file CRIU writes for this request.
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.images_dir, self.work_dir.as_deref(), &self.log_file)
    }

    /// `criu_opts` for this request, given the fds (in our process) of its directories.
    pub(crate) fn to_opts(&self, images_dir_fd: i32, work_dir_fd: Option<i32>) -> CriuOpts {
        CriuOpts {
            pid: Some(self.pid),
            leave_running: Some(self.leave_running),
            tcp_established: Some(self.tcp_established),
            ext_unix_sk: Some(self.ext_unix_sk),
            file_locks: Some(self.file_locks),
            shell_job: Some(self.shell_job),
            track_mem: Some(self.track_mem),
            parent_img: self
                .parent_images
                .as_deref()
                .map(|p| parent_img(&self.images_dir, p)),
            network_lock: self.network_lock.to_rpc(),
            tcp_skip_in_flight: self.tcp_skip_in_flight.then_some(true),
            external: self.external.clone(),
            timeout: self.freeze_timeout,
            ..base_opts(images_dir_fd, work_dir_fd, &self.log_file, self.log_level)
        }
    }
}

/// A file handed to a restored tree in place of one it had (CRIU's `inherit_fd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InheritedFd {
    /// What it replaces, as CRIU names files: `socket:[INO]`, `pipe:[INO]`, a path.
    pub key: String,
    /// The fd in our process (criu swrk inherits it under the same number).
    pub fd: i32,
}

/// A restore of the tree whose images are in `images_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// The images.
    pub images_dir: PathBuf,
    /// Where CRIU writes its log; the images dir when `None`.
    pub work_dir: Option<PathBuf>,
    /// Log file name inside the work dir, e.g. `restore.log`.
    pub log_file: String,
    /// CRIU log level (0–4).
    pub log_level: i32,
    /// Restore established TCP connections.
    pub tcp_established: bool,
    /// Allow unix sockets whose peer is outside the tree.
    pub ext_unix_sk: bool,
    /// Restore file locks.
    pub file_locks: bool,
    /// The tree was a shell job.
    pub shell_job: bool,
    /// Make the restored root our child (CRIU's `rst_sibling`, swrk only) instead of criu's;
    /// we then must reap it. Without it the tree is reparented to init (or the nearest
    /// subreaper) when criu exits. `criu swrk` always restores detached.
    pub restore_sibling: bool,
    /// How the network is locked until the tree resumes.
    pub network_lock: NetworkLockMode,
    /// Close restored TCP connections instead of reviving them.
    pub tcp_close: bool,
    /// `--external` resources.
    pub external: Vec<String>,
    /// Files of ours the tree gets in place of what it had (`--inherit-fd fd[N]:KEY`), e.g. a
    /// new connection for an external unix socket dumped with `--external unix[INO]`. The
    /// caller keeps each fd open until the restore returns.
    pub inherit_fds: Vec<InheritedFd>,
    /// Leave the private anonymous memory to a running lazy-pages daemon (userfaultfd; CRIU's
    /// `criu lazy-pages`, or overboot's page server): the tasks start before their pages are
    /// back. The daemon must listen on
    /// `lazy-pages.socket` in the work dir (the images dir when there is none).
    pub lazy_pages: bool,
}

impl RestoreRequest {
    /// A restore from `images_dir` with our defaults: debug log `restore.log` in the images
    /// dir, TCP connections and external unix sockets included, tree detached.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            work_dir: None,
            log_file: "restore.log".to_owned(),
            log_level: DEFAULT_LOG_LEVEL,
            tcp_established: true,
            ext_unix_sk: true,
            file_locks: false,
            shell_job: false,
            restore_sibling: false,
            network_lock: NetworkLockMode::Default,
            tcp_close: false,
            external: Vec::new(),
            inherit_fds: Vec::new(),
            lazy_pages: false,
        }
    }

    /// The log file CRIU writes for this request.
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.images_dir, self.work_dir.as_deref(), &self.log_file)
    }

    pub(crate) fn to_opts(&self, images_dir_fd: i32, work_dir_fd: Option<i32>) -> CriuOpts {
        CriuOpts {
            tcp_established: Some(self.tcp_established),
            ext_unix_sk: Some(self.ext_unix_sk),
            file_locks: Some(self.file_locks),
            shell_job: Some(self.shell_job),
            rst_sibling: Some(self.restore_sibling),
            network_lock: self.network_lock.to_rpc(),
            tcp_close: self.tcp_close.then_some(true),
            external: self.external.clone(),
            inherit_fd: self
                .inherit_fds
                .iter()
                .map(|i| crate::rpc::InheritFd {
                    key: i.key.clone(),
                    fd: i.fd,
                })
                .collect(),
            lazy_pages: self.lazy_pages.then_some(true),
            ..base_opts(images_dir_fd, work_dir_fd, &self.log_file, self.log_level)
        }
    }
}

/// What every request tells CRIU the same way: its directories (as fds in our process), its
/// log, and that it is to send us notifications.
fn base_opts(
    images_dir_fd: i32,
    work_dir_fd: Option<i32>,
    log_file: &str,
    log_level: i32,
) -> CriuOpts {
    CriuOpts {
        images_dir_fd,
        work_dir_fd,
        log_file: Some(log_file.to_owned()),
        log_level: Some(log_level),
        notify_scripts: Some(true),
        ..CriuOpts::default()
    }
}

fn log_path(images_dir: &Path, work_dir: Option<&Path>, log_file: &str) -> PathBuf {
    work_dir.unwrap_or(images_dir).join(log_file)
}

/// CRIU opens `parent_img` relative to the images dir and links `parent` to it verbatim.
fn parent_img(images_dir: &Path, parent: &Path) -> String {
    let rel = match (images_dir.parent(), parent.parent()) {
        (Some(a), Some(b)) if parent.is_absolute() && a == b && is_plain(a) => parent
            .file_name()
            .map(|name| Path::new("..").join(name))
            .unwrap_or_else(|| parent.to_path_buf()),
        _ => parent.to_path_buf(),
    };
    rel.to_string_lossy().into_owned()
}

fn is_plain(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_parent_images_become_relative() {
        let mut req = DumpRequest::new(42, "/run/overboot/images/2");
        req.parent_images = Some("/run/overboot/images/1".into());
        assert_eq!(req.to_opts(5, None).parent_img.as_deref(), Some("../1"));
        req.parent_images = Some("/elsewhere/1".into());
        assert_eq!(
            req.to_opts(5, None).parent_img.as_deref(),
            Some("/elsewhere/1")
        );
        req.parent_images = Some("../pre".into());
        assert_eq!(req.to_opts(5, None).parent_img.as_deref(), Some("../pre"));
    }

    #[test]
    fn dump_always_names_the_pid_and_asks_for_notifications() {
        let opts = DumpRequest::new(42, "/img").to_opts(7, Some(8));
        assert_eq!(opts.pid, Some(42));
        assert_eq!(opts.images_dir_fd, 7);
        assert_eq!(opts.work_dir_fd, Some(8));
        assert_eq!(opts.notify_scripts, Some(true));
        assert_eq!(opts.network_lock, None);
    }

    #[test]
    fn lazy_pages_are_asked_only_when_wanted() {
        let mut req = RestoreRequest::new("/img");
        assert_eq!(req.to_opts(7, None).lazy_pages, None);
        req.lazy_pages = true;
        assert_eq!(req.to_opts(7, None).lazy_pages, Some(true));
    }

    #[test]
    fn log_goes_to_the_work_dir_when_there_is_one() {
        let mut req = RestoreRequest::new("/img");
        assert_eq!(req.log_path(), PathBuf::from("/img/restore.log"));
        req.work_dir = Some("/work".into());
        assert_eq!(req.log_path(), PathBuf::from("/work/restore.log"));
    }
}
