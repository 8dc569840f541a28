//! CRIU's own log, read back for the error chain.
//!
//! When a dump or restore fails, CRIU's answer carries only its first error message; the reason
//! usually sits a few lines further in the log file it wrote into the work directory. This module
//! pulls the last `Error` lines out of that file so an operator sees them next to our error, and
//! always names the file so they can read the rest.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How much of the end of a log we read: debug logs of big trees run to many megabytes.
const TAIL_BYTES: u64 = 4 << 20;

/// Lines CRIU marks as errors look like `(00.012345) Error (criu/cr-dump.c:2130): ...`.
const ERROR_MARK: &str = "Error";

/// The last `n` lines of the log at `path` that contain `Error`, oldest first.
pub fn log_tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        .skip(usize::from(start > 0)) // the first line may be cut in half
        .filter(|l| l.contains(ERROR_MARK))
        .map(|l| l.trim_end().to_owned())
        .collect();
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    Ok(lines)
}

/// The CRIU log of a failed request: where it is, and its last error lines.
///
/// It is the `source` of the request's error, so a printed cause chain ends with what CRIU said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriuLog {
    /// The log file (work dir, or images dir when there is no work dir, joined with the name).
    pub path: PathBuf,
    /// Its last lines containing `Error`; empty when there were none or it could not be read.
    pub errors: Vec<String>,
}

impl CriuLog {
    /// How many error lines we carry in an error.
    pub const LINES: usize = 5;

    /// Reads the tail of the log at `path`; a missing or unreadable log gives no lines.
    pub fn read(path: PathBuf) -> Self {
        let errors = log_tail(&path, Self::LINES).unwrap_or_default();
        Self { path, errors }
    }
}

impl fmt::Display for CriuLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errors.is_empty() {
            write!(f, "see the CRIU log {}", self.path.display())
        } else {
            write!(
                f,
                "CRIU log {}: {}",
                self.path.display(),
                self.errors.join(" | ")
            )
        }
    }
}

impl std::error::Error for CriuLog {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_the_last_error_lines_in_order() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "(00.000001) Version: 3.17.1").unwrap();
        writeln!(f, "(00.000002) Error (criu/a.c:1): first").unwrap();
        writeln!(f, "(00.000003) Error (criu/b.c:2): second").unwrap();
        writeln!(f, "(00.000004) Warn  (criu/c.c:3): noise").unwrap();
        writeln!(f, "(00.000005) Error (criu/d.c:4): third").unwrap();
        let lines = log_tail(f.path(), 2).unwrap();
        assert_eq!(
            lines,
            vec![
                "(00.000003) Error (criu/b.c:2): second",
                "(00.000005) Error (criu/d.c:4): third"
            ]
        );
    }

    #[test]
    fn a_missing_log_still_names_its_path() {
        let log = CriuLog::read(PathBuf::from("/nonexistent/dump.log"));
        assert!(log.errors.is_empty());
        assert_eq!(log.to_string(), "see the CRIU log /nonexistent/dump.log");
    }
}
