//! One conversation with CRIU over a [`Transport`]: send a request, serve its notifications,
//! turn the final answer into an outcome or a [`CheckpointError`].
//!
//! The flow, as `criu/cr-service.c` implements it:
//!
//! ```text
//!  us                                      criu swrk
//!  criu_req{DUMP, opts{notify_scripts}} ─►
//!                                       ◄─ criu_resp{NOTIFY, notify{script:"network-lock"}}
//!  criu_req{NOTIFY, notify_success}     ─►   (criu waits for this; false = abort)
//!                                       ◄─ ... more NOTIFY ...
//!                                       ◄─ criu_resp{DUMP, success, cr_errno?, cr_errmsg?}
//! ```
//!
//! Which notifications arrive (seen with CRIU 3.17.1 on 6.1 in a lab guest): a dump sends
//! `pre-dump`, `post-dump`; a restore `pre-restore`, `post-restore` (with the root pid),
//! `pre-resume`, `post-resume`; a single pre-dump none. `network-lock` / `network-unlock` come
//! only for a tree with its *own* network namespace: in the root namespace CRIU locks each TCP
//! connection itself (iptables rules, or the nftables table `inet CRIU-<pid>`) and says nothing.
//!
//! CRIU answers a request it cannot parse with type `EMPTY` and `success = false`. Only VERSION,
//! FEATURE_CHECK, CPUINFO and page-server requests may set `keep_open`; after any other request
//! criu exits. The directories named by a request are opened here, in *our* process: CRIU reads
//! them as `/proc/<peer>/fd/<n>`, where `<peer>` is the `SO_PEERCRED` pid of the socket — the
//! process that created the socket pair.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::engine::{
    CriuVersion, DumpOutcome, Features, Notification, NotifyHandler, RestoreOutcome,
};
use crate::error::CheckpointError;
use crate::log::CriuLog;
use crate::request::{DumpRequest, RestoreRequest};
use crate::rpc::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use crate::transport::{ProtocolError, Transport};

/// The final answer to a request, with what happened on the way.
#[derive(Debug)]
struct Answer {
    resp: CriuResp,
    notifications: Vec<String>,
    /// The first notification whose handler failed, and why.
    hook_failure: Option<(String, String)>,
}

impl Answer {
    /// The failure to report for a request whose answer has `success = false` and whose CRIU
    /// log is at `log`.
    fn failure(
        self,
        log: PathBuf,
        make: impl FnOnce(Option<i32>, Option<String>, CriuLog) -> CheckpointError,
    ) -> CheckpointError {
        let log = CriuLog::read(log);
        let errno = self.resp.cr_errno.filter(|e| *e != 0);
        match self.hook_failure {
            Some((script, reason)) => CheckpointError::HookFailed {
                script,
                reason,
                message: self.resp.cr_errmsg,
                log,
            },
            None => make(errno, self.resp.cr_errmsg, log),
        }
    }

    /// The failure of a `request` that writes no log: CRIU's errno and message, as they came.
    fn request_failed(self, request: CriuReqType) -> CheckpointError {
        CheckpointError::RequestFailed {
            request,
            errno: self.resp.cr_errno,
            message: self.resp.cr_errmsg,
        }
    }
}

/// A conversation with one CRIU worker (or a stand-in) over `transport`.
#[derive(Debug)]
pub struct Session {
    transport: Transport,
}

impl Session {
    /// A session over an already connected transport.
    pub fn new(transport: Transport) -> Self {
        Self { transport }
    }

    /// VERSION. With `keep_open`, CRIU stays for another request.
    pub fn version(&self, keep_open: bool) -> Result<CriuVersion, CheckpointError> {
        let mut req = CriuReq::new(CriuReqType::Version);
        req.keep_open = keep_open.then_some(true);
        let mut answer =
            self.exchange(&req, CriuReqType::Version, &mut crate::engine::accept_all)?;
        match (answer.resp.success, answer.resp.version.take()) {
            (true, Some(v)) => Ok(v.into()),
            (_, _) => Err(answer.request_failed(CriuReqType::Version)),
        }
    }

    /// FEATURE_CHECK for every feature we know. With `keep_open`, CRIU stays.
    pub fn features(&self, keep_open: bool) -> Result<Features, CheckpointError> {
        let mut req = CriuReq::new(CriuReqType::FeatureCheck);
        req.keep_open = keep_open.then_some(true);
        // CRIU dereferences `features` unconditionally: it must be present.
        req.features = Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: Some(true),
        });
        let mut answer = self.exchange(
            &req,
            CriuReqType::FeatureCheck,
            &mut crate::engine::accept_all,
        )?;
        match (answer.resp.success, answer.resp.features.take()) {
            (true, Some(f)) => Ok(f.into()),
            (_, _) => Err(answer.request_failed(CriuReqType::FeatureCheck)),
        }
    }

    /// CHECK. CRIU 3.17 opens the images dir even for a check, so `scratch_dir` serves as both
    /// images and work dir; the log `check.log` lands there.
    pub fn check(&self, scratch_dir: &Path) -> Result<(), CheckpointError> {
        let dir = open_dir(scratch_dir)?;
        let log_file = "check.log";
        let mut req = CriuReq::new(CriuReqType::Check);
        req.opts = Some(CriuOpts {
            images_dir_fd: dir.as_raw_fd(),
            log_file: Some(log_file.to_owned()),
            log_level: Some(crate::request::DEFAULT_LOG_LEVEL),
            ..CriuOpts::default()
        });
        let answer = self.exchange(&req, CriuReqType::Check, &mut crate::engine::accept_all)?;
        drop(dir);
        if answer.resp.success {
            return Ok(());
        }
        Err(
            answer.failure(scratch_dir.join(log_file), |errno, message, log| {
                CheckpointError::CheckFailed {
                    errno,
                    message,
                    log,
                }
            }),
        )
    }

    /// DUMP.
    pub fn dump(
        &self,
        req: &DumpRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError> {
        self.dump_like(req, CriuReqType::Dump, req.track_mem, notify)
    }

    /// SINGLE_PRE_DUMP (one pre-dump, then criu is done), always with memory tracking.
    pub fn pre_dump(
        &self,
        req: &DumpRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError> {
        self.dump_like(req, CriuReqType::SinglePreDump, true, notify)
    }

    /// RESTORE.
    pub fn restore(
        &self,
        req: &RestoreRequest,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<RestoreOutcome, CheckpointError> {
        let images = open_dir(&req.images_dir)?;
        let work = req.work_dir.as_deref().map(open_dir).transpose()?;
        let mut msg = CriuReq::new(CriuReqType::Restore);
        msg.opts = Some(req.to_opts(images.as_raw_fd(), work.as_ref().map(AsRawFd::as_raw_fd)));
        let answer = self.exchange(&msg, CriuReqType::Restore, notify)?;
        drop((images, work));
        match (answer.resp.success, answer.resp.restore.as_ref()) {
            (true, Some(r)) => Ok(RestoreOutcome {
                pid: r.pid,
                notifications: answer.notifications,
            }),
            (true, None) => Err(ProtocolError::MissingField("restore").into()),
            (false, _) => Err(answer.failure(req.log_path(), |errno, message, log| {
                CheckpointError::RestoreFailed {
                    errno,
                    message,
                    log,
                }
            })),
        }
    }

    /// A dump of `req`'s tree of `kind` (DUMP or SINGLE_PRE_DUMP).
    fn dump_like(
        &self,
        req: &DumpRequest,
        kind: CriuReqType,
        track_mem: bool,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<DumpOutcome, CheckpointError> {
        let images = open_dir(&req.images_dir)?;
        let work = req.work_dir.as_deref().map(open_dir).transpose()?;
        let mut opts = req.to_opts(images.as_raw_fd(), work.as_ref().map(AsRawFd::as_raw_fd));
        opts.track_mem = Some(track_mem);
        let config = (req.leave_stopped && kind == CriuReqType::Dump)
            .then(|| config_file(LEAVE_STOPPED))
            .transpose()?;
        if let Some(config) = &config {
            opts.config_file = Some(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                config.as_raw_fd()
            ));
        }
        let mut msg = CriuReq::new(kind);
        msg.opts = Some(opts);
        // The fds must stay open until CRIU has opened them: that is, until the answer.
        let answer = self.exchange(&msg, kind, notify);
        drop((images, work, config));
        let answer = answer?;
        if answer.resp.success {
            return Ok(DumpOutcome {
                // A pre-dump's answer has nothing restored to tell.
                restored: kind == CriuReqType::Dump
                    && answer.resp.dump.and_then(|d| d.restored).unwrap_or(false),
                notifications: answer.notifications,
            });
        }
        let pid = req.pid;
        Err(answer.failure(req.log_path(), |errno, message, log| {
            if kind == CriuReqType::Dump {
                CheckpointError::DumpFailed {
                    pid,
                    errno,
                    message,
                    log,
                }
            } else {
                CheckpointError::PreDumpFailed {
                    pid,
                    errno,
                    message,
                    log,
                }
            }
        }))
    }

    /// Sends `req`, serves notifications, returns the answer of type `expect` (or CRIU's
    /// `EMPTY` error answer).
    fn exchange(
        &self,
        req: &CriuReq,
        expect: CriuReqType,
        notify: &mut NotifyHandler<'_>,
    ) -> Result<Answer, CheckpointError> {
        self.transport.send(req)?;
        let mut notifications = Vec::new();
        let mut hook_failure = None;
        loop {
            let resp = self.transport.recv()?;
            match resp.kind() {
                Some(CriuReqType::Notify) => {
                    let n = resp.notify.unwrap_or_default();
                    let note = Notification {
                        script: n.script.unwrap_or_default(),
                        pid: n.pid,
                    };
                    let _span = tracing::info_span!("criu_notify", script = %note.script).entered();
                    let result = notify(&note);
                    if let Err(reason) = &result {
                        tracing::warn!(script = %note.script, %reason, "notification handler failed");
                        hook_failure.get_or_insert_with(|| (note.script.clone(), reason.clone()));
                    }
                    let mut ack = CriuReq::new(CriuReqType::Notify);
                    ack.notify_success = Some(result.is_ok());
                    self.transport.send(&ack)?;
                    notifications.push(note.script);
                }
                Some(k) if k == expect || (k == CriuReqType::Empty && !resp.success) => {
                    return Ok(Answer {
                        resp,
                        notifications,
                        hook_failure,
                    });
                }
                _ => {
                    return Err(ProtocolError::Unexpected {
                        expected: expect,
                        got: resp.r#type,
                    }
                    .into())
                }
            }
        }
    }
}

/// The configuration that stops the tree after its dump instead of killing it. CRIU 3.17's RPC
/// has no `leave_stopped` field (3.18 added one); it does read a configuration file named by the
/// request (`config_file`), whose options override the request's, in 3.17 and later alike.
const LEAVE_STOPPED: &str = "leave-stopped\n";

/// A configuration file for CRIU in memory: a memfd that CRIU opens as `/proc/<our pid>/fd/<n>`
/// (nothing on disk to clean up, nothing in the images).
fn config_file(text: &str) -> Result<OwnedFd, CheckpointError> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let err = |source: std::io::Error| CheckpointError::ConfigFile { source };
    let fd = memfd_create(c"overboot-criu.conf", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| err(e.into()))?;
    let mut file = File::from(fd);
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(err)?;
    Ok(OwnedFd::from(file))
}

/// Opens a directory for CRIU: an fd in our process, close-on-exec (CRIU does not inherit it;
/// it opens `/proc/<our pid>/fd/<n>`).
fn open_dir(path: &Path) -> Result<OwnedFd, CheckpointError> {
    let err = |source| CheckpointError::OpenDir {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    if !file.metadata().map_err(err)?.is_dir() {
        return Err(err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    Ok(OwnedFd::from(file))
}
