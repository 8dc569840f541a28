//! Records one process of the agent leaves another: why the worker failed (for its
//! supervisor), and why an update rolled back (for the old kernel's agent and its report).
//! Typed and written as JSON, never scraped from a log.

use std::path::Path;

use super::files::WORKER_FAILURE;
use super::report::{read_json, write_json, ReportError};

/// Why an update was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollbackRecord {
    /// Release of the kernel where the restore failed.
    pub failed_on: String,
    /// What failed (the worker's error chain).
    pub reason: String,
}

/// Why the resume worker failed, as it left it for its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerFailure {
    /// The exit class (see [`crate::model::exit::ExitClass`]).
    pub class: u8,
    /// The error and its causes, outermost first.
    pub chain: Vec<String>,
}

impl WorkerFailure {
    /// The record of `error`, with its whole cause chain.
    pub fn of(error: &(dyn std::error::Error + 'static), class: u8) -> WorkerFailure {
        let mut chain = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = next {
            chain.push(e.to_string());
            next = e.source();
        }
        WorkerFailure { class, chain }
    }

    /// Writes it into the work directory.
    pub fn save(&self, work_dir: &Path) -> Result<(), ReportError> {
        write_json(&work_dir.join(WORKER_FAILURE), self)
    }

    /// The record in the work directory, if the worker left one.
    pub fn load(work_dir: &Path) -> Option<WorkerFailure> {
        read_json(&work_dir.join(WORKER_FAILURE)).ok()
    }

    /// Removes a stale record before a worker runs.
    pub fn clear(work_dir: &Path) {
        let _ = std::fs::remove_file(work_dir.join(WORKER_FAILURE));
    }

    /// The chain as one line.
    pub fn reason(&self) -> String {
        self.chain.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("restore of pid-42 failed; no restored task ran")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_record_keeps_the_whole_chain_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(WorkerFailure::load(tmp.path()), None);
        let error = Outer(std::io::Error::other("criu exited with 1"));
        let record = WorkerFailure::of(&error, 7);
        assert_eq!(
            record.reason(),
            "restore of pid-42 failed; no restored task ran / criu exited with 1"
        );
        record.save(tmp.path()).unwrap();
        assert_eq!(WorkerFailure::load(tmp.path()), Some(record));
        WorkerFailure::clear(tmp.path());
        assert_eq!(WorkerFailure::load(tmp.path()), None);
    }
}
