//! The update report: what the resume agent (or a failed update) writes to the state
//! directory, and what `overboot status` prints.
//!
//! ```text
//! <state dir>/                  default /var/lib/overboot (persistent: survives the switch)
//! ├── pending.json              written by `update` right before the jump: id, phases so far,
//! │                             realtime at freeze and at the jump
//! ├── last-report.json          copy of the newest report
//! └── reports/<id>/report.json  one directory per update, with CRIU's dump and restore logs
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/overboot";

/// The state directory: `$OVERBOOT_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> PathBuf {
    state_dir_from_env().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The state directory `$OVERBOOT_STATE_DIR` names, if it is set.
pub fn state_dir_from_env() -> Option<PathBuf> {
    std::env::var_os("OVERBOOT_STATE_DIR").map(PathBuf::from)
}

/// Errors reading or writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No report yet.
    #[error("no update report in {0} yet")]
    NoReport(PathBuf),
    /// File system error.
    #[error("report i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed report.
    #[error("report {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every tree runs on the new kernel.
    Resumed,
    /// The new kernel could not take the trees; they run again on the old kernel.
    RolledBack,
    /// The update failed; `detail` says where and what became of the processes.
    Failed,
    /// The checks refused the update before anything was frozen; `detail` says why.
    Refused,
    /// `update` was stopped by a signal, or died, before the jump; `detail` says when and
    /// what became of the trees (restored on this kernel).
    Interrupted,
    /// The new kernel never reached the agent (it panicked, hung, did not find its root); the
    /// machine came back through the firmware on the old kernel, where the trees were restored
    /// from the map; `detail` says what is known.
    RecoveredAfterFailedBoot,
}

impl Outcome {
    /// The name reports, metrics and report ids use (`rolled_back`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Resumed => "resumed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Interrupted => "interrupted",
            Outcome::RecoveredAfterFailedBoot => "recovered_after_failed_boot",
        }
    }
}

/// One preserved tree in the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeReport {
    /// Name in the Save State Map.
    pub name: String,
    /// Root pid before the switch.
    pub root_pid: i32,
    /// Every pid before the switch.
    pub pids: Vec<i32>,
    /// Root pid after restore.
    pub restored_pid: Option<i32>,
    /// Whether the tree's root (and a unit's main process) was alive after restore.
    pub alive: bool,
    /// Restore time of this tree.
    pub restore_ms: u64,
    /// The time namespace the restored root runs in (`time:[inode]`), made by CRIU.
    #[serde(default)]
    pub time_namespace: Option<String>,
    /// With a lazy restore: the page server (`overboot serve-pages`) putting this tree's
    /// memory back, and its log. It exits when every page is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_pages: Option<LazyPages>,
    /// Established TCP connections whose peers were nudged to resend at once (see
    /// `nudge`); 0 when the tree has none or the nudge failed (the agent's log says why).
    #[serde(default)]
    pub nudged_connections: usize,
}

/// The daemon of a lazily restored tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LazyPages {
    /// Its pid.
    pub pid: i32,
    /// Its log.
    pub log: PathBuf,
}

/// What `update` hands to the agent through the state directory (not the map: it is written
/// after the map is loaded).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// Update id.
    pub id: String,
    /// Phases measured on the old kernel (ms).
    pub phases: BTreeMap<String, u64>,
    /// CLOCK_REALTIME when the first tree was frozen (ns).
    pub freeze_realtime_ns: u64,
    /// CLOCK_REALTIME right before the jump (ns).
    pub jump_realtime_ns: u64,
    /// Bytes handed over.
    pub handover_bytes: u64,
    /// Most memory in use on the old kernel at a phase boundary (bytes).
    #[serde(default)]
    pub peak_mem_bytes: u64,
    /// Pre-copy rounds before the freeze.
    #[serde(default)]
    pub pre_copy: Vec<super::rounds::Round>,
    /// The map's command-line parameter (`overboot.handover=dir:...`) when its store survives a
    /// reset: a boot that comes back on a kernel without it, with this file still here, is a
    /// boot after a new kernel that never reached the agent, and restores from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover: Option<String>,
    /// The new kernel's release.
    #[serde(default)]
    pub to_release: String,
    /// Bytes the dump wrote after the freeze (with pre-copy: the pages changed since the last
    /// round, and everything that is not memory).
    #[serde(default)]
    pub frozen_dump_bytes: u64,
}

/// The report of one update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Update id (also the directory name).
    pub id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What went wrong, when something did.
    pub detail: Option<String>,
    /// Kernel release before.
    pub from: String,
    /// Kernel release after.
    pub to: String,
    /// Preserved trees.
    pub trees: Vec<TreeReport>,
    /// Phase durations (ms): freeze_dump, write_map, kexec_load, jump_to_agent, verify_map,
    /// restore, and blackout (freeze to end of restore).
    pub phases: BTreeMap<String, u64>,
    /// Bytes of the Save State Map.
    pub handover_bytes: u64,
    /// Freeze to end of restore (ms), the service's blackout.
    pub blackout_ms: u64,
    /// Most memory in use (`MemTotal - MemAvailable`, bytes) at a phase boundary of the update,
    /// on either kernel: on the old one the map and the loaded segments, on the new one the
    /// map and the restored trees.
    #[serde(default)]
    pub peak_mem_bytes: u64,
    /// How far each tree's CLOCK_MONOTONIC and CLOCK_BOOTTIME were advanced past their values
    /// at freeze (ns): the time each tree spent frozen, up to its restore.
    pub clock_offsets_ns: BTreeMap<String, i64>,
    /// CRIU logs kept with this report.
    pub logs: Vec<PathBuf>,
    /// Pre-copy rounds before the freeze, per tree: bytes and time of each.
    #[serde(default)]
    pub pre_copy: Vec<super::rounds::Round>,
    /// Bytes the dump wrote after the freeze (see [`Pending::frozen_dump_bytes`]).
    #[serde(default)]
    pub frozen_dump_bytes: u64,
    /// What the old kernel's checks could not vouch for (see `old::compat`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A new update id: UTC seconds and the pid, sortable.
pub fn new_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}-{}", std::process::id())
}

/// An id's sort key: its leading number (UTC seconds), then the rest.
fn sortable(id: &str) -> (u64, &str) {
    let (secs, rest) = id.split_once('-').unwrap_or((id, ""));
    (secs.parse().unwrap_or(0), rest)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` as pretty JSON, atomically (temp file + rename), readable by root only.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ReportError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| ReportError::Parse {
        path: path.into(),
        source,
    })?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Reads a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ReportError::Parse {
        path: path.into(),
        source,
    })
}

impl Report {
    /// A report of an attempt with no trees to show (refused, failed, interrupted): its id,
    /// outcome, what happened, and the kernels.
    pub fn of_attempt(
        id: String,
        outcome: Outcome,
        detail: String,
        from: String,
        to: String,
    ) -> Report {
        Report {
            id,
            outcome,
            detail: Some(detail),
            from,
            to,
            trees: Vec::new(),
            phases: BTreeMap::new(),
            handover_bytes: 0,
            blackout_ms: 0,
            peak_mem_bytes: 0,
            clock_offsets_ns: BTreeMap::new(),
            logs: Vec::new(),
            pre_copy: Vec::new(),
            frozen_dump_bytes: 0,
            warnings: Vec::new(),
        }
    }

    /// The directory of this report in `state`.
    pub fn dir(state: &Path, id: &str) -> PathBuf {
        state.join(super::files::REPORTS).join(id)
    }

    /// Writes the report into its directory and as `last-report.json`, and its metrics for
    /// node_exporter (see [`super::metrics`]).
    pub fn save(&self, state: &Path) -> Result<PathBuf, ReportError> {
        let path = Report::dir(state, &self.id).join("report.json");
        write_json(&path, self)?;
        write_json(&state.join(super::files::LAST_REPORT), self)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let outcome = self.outcome.name();
        let attempt = super::metrics::Attempt {
            outcome,
            blackout_ms: self.blackout_ms,
            phases: &self.phases,
        };
        let text = super::metrics::of_attempt(attempt, now);
        if let Err(e) = super::metrics::write("overboot.prom", &text) {
            tracing::warn!(error = %e, "cannot write the metrics textfile");
        }
        Ok(path)
    }

    /// Every report in `state`, oldest first (by id: UTC seconds, then the pid).
    pub fn all(state: &Path) -> Result<Vec<Report>, ReportError> {
        let dir = state.join(super::files::REPORTS);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut reports = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join("report.json");
            if path.is_file() {
                reports.push(read_json::<Report>(&path)?);
            }
        }
        reports.sort_by(|a, b| sortable(&a.id).cmp(&sortable(&b.id)));
        Ok(reports)
    }

    /// One line for a history.
    pub fn line(&self) -> String {
        let outcome = self.outcome.name();
        format!(
            "{:<24} {:<12} {} → {}  blackout {} ms",
            self.id, outcome, self.from, self.to, self.blackout_ms
        )
    }

    /// The newest report.
    pub fn last(state: &Path) -> Result<Report, ReportError> {
        let path = state.join(super::files::LAST_REPORT);
        if !path.exists() {
            return Err(ReportError::NoReport(state.into()));
        }
        read_json(&path)
    }

    /// A text summary for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let outcome = match self.outcome {
            Outcome::Resumed => "resumed on the new kernel",
            Outcome::RolledBack => "ROLLED BACK: every tree runs again on the old kernel",
            Outcome::Failed => "FAILED",
            Outcome::Refused => "refused before anything was frozen",
            Outcome::Interrupted => "INTERRUPTED before the jump",
            Outcome::RecoveredAfterFailedBoot => {
                "RECOVERED: the new kernel never came up; every tree runs again on the old kernel"
            }
        };
        out.push_str(&format!(
            "update {}: {} → {}: {outcome}\n",
            self.id, self.from, self.to
        ));
        for warning in &self.warnings {
            out.push_str(&format!("  WARNING: {warning}\n"));
        }
        if let Some(detail) = &self.detail {
            out.push_str(&format!("  {detail}\n"));
        }
        out.push_str(&format!(
            "  blackout {} ms, handover {} bytes\n",
            self.blackout_ms, self.handover_bytes
        ));
        for tree in &self.trees {
            out.push_str(&format!(
                "  {}: pid {} → {} ({} processes, {})\n",
                tree.name,
                tree.root_pid,
                tree.restored_pid
                    .map_or_else(|| "not restored".to_string(), |p| p.to_string()),
                tree.pids.len(),
                if tree.alive { "alive" } else { "NOT alive" }
            ));
        }
        if !self.pre_copy.is_empty() {
            out.push_str("  pre-copy (service running):");
            for r in &self.pre_copy {
                out.push_str(&format!(
                    " {} round {} {} KiB in {} ms{};",
                    r.tree,
                    r.round,
                    r.bytes >> 10,
                    r.ms,
                    r.dirty_after
                        .map(|d| format!(", {} KiB written after it", d >> 10))
                        .unwrap_or_default()
                ));
            }
            out.push_str(&format!(
                " then {} KiB dumped frozen\n",
                self.frozen_dump_bytes >> 10
            ));
        }
        out.push_str("  phases (ms):");
        for (name, ms) in &self.phases {
            out.push_str(&format!(" {name}={ms}"));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_the_serialized_ones() {
        for outcome in [
            Outcome::Resumed,
            Outcome::RolledBack,
            Outcome::Failed,
            Outcome::Refused,
            Outcome::Interrupted,
            Outcome::RecoveredAfterFailedBoot,
        ] {
            let serialized = serde_json::to_value(&outcome).unwrap();
            assert_eq!(serialized.as_str(), Some(outcome.name()));
        }
    }
}
