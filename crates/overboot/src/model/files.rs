//! The names of the files one step of an update leaves for another, in one place.
//!
//! ```text
//! <state dir>/ (persistent, default /var/lib/overboot)    <work dir>/ (RAM, /run/overboot)
//! ├── pending.json       update → agent: id, phases,      ├── restored          worker → supervisor:
//! │                      clocks at freeze and jump        │                     trees restored so far
//! ├── rollback.json      supervisor → old kernel's agent: ├── worker-failure.json
//! │                      why the update rolled back       │                     worker → supervisor:
//! ├── last-report.json   the newest report                │                     why it failed
//! ├── reports/<id>/      one directory per update         └── <id>/...          maps, restore dirs
//! ├── kept-maps/<secs>/  a map kept when nothing could restore it
//! ├── inflight.json      update → its guardian: the frozen trees, until the jump
//! └── ssm/               the default directory store on systemd hosts
//! ```

use std::path::{Path, PathBuf};

/// Written by `update` right before the jump; read and removed by the agent.
pub const PENDING: &str = "pending.json";
/// The work directory when none is named: on a RAM file system, gone at the next boot.
pub const DEFAULT_WORK_DIR: &str = "/run/overboot";
/// In the work directory: the agent started in this boot (it restores a map once per boot).
pub const AGENT_STARTED: &str = "resume.started";
/// Why an update is being rolled back ([`super::records::RollbackRecord`]).
pub const ROLLBACK_RECORD: &str = "rollback.json";
/// The newest report.
pub const LAST_REPORT: &str = "last-report.json";
/// One directory per report.
pub const REPORTS: &str = "reports";
/// Maps kept when neither kernel could restore them.
pub const KEPT_MAPS: &str = "kept-maps";
/// The directory store's default place on systemd hosts.
pub const DEFAULT_STORE: &str = "ssm";
/// An update between its freeze and its jump: what to bring back if it dies
/// (`old::inflight`).
pub const INFLIGHT: &str = "inflight.json";
/// In the work dir: the trees restored so far (`name pid pid ...` per line), so that a
/// rollback stops exactly what this update restored.
pub const RESTORED_LIST: &str = "restored";
/// In the work dir: why the worker failed ([`super::records::WorkerFailure`]).
pub const WORKER_FAILURE: &str = "worker-failure.json";

/// `pending.json` of a state directory.
pub fn pending(state_dir: &Path) -> PathBuf {
    state_dir.join(PENDING)
}

/// `rollback.json` of a state directory.
pub fn rollback_record(state_dir: &Path) -> PathBuf {
    state_dir.join(ROLLBACK_RECORD)
}
