//! `overboot guard` (hidden): the guardian `update` starts before its freeze. It waits for
//! that update to exit; when the update left its in-flight record (it died between the freeze
//! and the jump: SIGKILL, a crash), the guardian brings every frozen tree back on this kernel
//! and writes the report (see `overboot::old::inflight`). A jump ends it with the old kernel.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use overboot::old::effects::HostEffects;
use overboot::old::inflight;

use super::error::CommandError;

/// Arguments of `overboot guard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The update to watch.
    #[arg(long)]
    pid: i32,
    /// Its state directory (where its in-flight record is).
    #[arg(long)]
    state_dir: PathBuf,
    /// Its work directory.
    #[arg(long)]
    work_dir: PathBuf,
}

pub fn run(args: Args) -> Result<(), CommandError> {
    // The terminal's hangup or Ctrl-C meant for the update must not end its guardian: they
    // only set a flag nobody reads.
    let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        let _ = signal_hook::flag::register(signal, std::sync::Arc::clone(&ignored));
    }
    match overboot_sys::pidfd_open(args.pid) {
        Ok(pidfd) => {
            // Readable once the process exited.
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            while let Err(nix::errno::Errno::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
        }
        // Already gone (or pidfds unsupported: nothing to wait on).
        Err(e) => tracing::info!(pid = args.pid, error = %e, "no pidfd for the update"),
    }
    let mut effects = HostEffects::new(true, &args.work_dir, 2);
    let how = format!("overboot update (pid {}) died", args.pid);
    if let Some(report) = inflight::recover_after(&mut effects, &args.state_dir, args.pid, &how) {
        eprintln!("overboot guard: {}", report.detail.unwrap_or_default());
    }
    Ok(())
}
