//! Metrics for the machine's monitoring, as node_exporter's textfile collector reads them
//! (`*.prom` files in its directory): the last attempt's outcome, blackout and phases, written
//! with every report (`overboot.prom`), and whether a newer kernel is installed, written by
//! `overboot pending` (`overboot_pending.prom`). The directory is `$OVERBOOT_TEXTFILE_DIR`, else
//! Debian's `/var/lib/prometheus/node-exporter`; nothing is written when it does not exist.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Debian's textfile directory (package prometheus-node-exporter).
pub const DEFAULT_TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";

/// Every outcome, by the name reports use.
const OUTCOMES: [&str; 6] = [
    "resumed",
    "rolled_back",
    "failed",
    "refused",
    "interrupted",
    "recovered_after_failed_boot",
];

/// What the metrics say of the last attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Its outcome, as reports name it (`resumed`, ...).
    pub outcome: &'a str,
    /// Its blackout (ms).
    pub blackout_ms: u64,
    /// Its phases (ms).
    pub phases: &'a BTreeMap<String, u64>,
}

/// The textfile directory, when it exists.
pub fn textfile_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("OVERBOOT_TEXTFILE_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_TEXTFILE_DIR), PathBuf::from);
    dir.is_dir().then_some(dir)
}

/// The metrics of the last attempt, `now` the Unix time it was written.
pub fn of_attempt(report: Attempt<'_>, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP overboot_update_last_outcome The last update attempt's outcome (1 for the one it had).\n\
         # TYPE overboot_update_last_outcome gauge"
    );
    for name in OUTCOMES {
        let value = u8::from(name == report.outcome);
        let _ = writeln!(
            out,
            "overboot_update_last_outcome{{outcome=\"{name}\"}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP overboot_update_last_blackout_seconds From the freeze to the end of the restore.\n\
         # TYPE overboot_update_last_blackout_seconds gauge\n\
         overboot_update_last_blackout_seconds {}",
        seconds(report.blackout_ms)
    );
    let _ = writeln!(
        out,
        "# HELP overboot_update_last_phase_seconds Each phase of the last update attempt.\n\
         # TYPE overboot_update_last_phase_seconds gauge"
    );
    for (phase, ms) in report.phases {
        let _ = writeln!(
            out,
            "overboot_update_last_phase_seconds{{phase=\"{}\"}} {}",
            label(phase),
            seconds(*ms)
        );
    }
    let _ = writeln!(
        out,
        "# HELP overboot_update_last_timestamp_seconds When the last report was written.\n\
         # TYPE overboot_update_last_timestamp_seconds gauge\n\
         overboot_update_last_timestamp_seconds {now}"
    );
    out
}

/// The pending-kernel metrics: `newest` the newest installed release when newer than `running`.
pub fn of_pending(running: &str, newest: Option<&str>) -> String {
    format!(
        "# HELP overboot_update_pending Whether a kernel newer than the running one is installed.\n\
         # TYPE overboot_update_pending gauge\n\
         overboot_update_pending{{running=\"{}\",newest=\"{}\"}} {}\n",
        label(running),
        label(newest.unwrap_or("")),
        u8::from(newest.is_some())
    )
}

/// Writes `text` as `name` into the textfile directory, atomically (node_exporter may read at
/// any time); nothing when there is no such directory.
pub fn write(name: &str, text: &str) -> std::io::Result<()> {
    let Some(dir) = textfile_dir() else {
        return Ok(());
    };
    write_into(&dir, name, text)
}

fn write_into(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A label value with `\` and `"` escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_becomes_gauges_node_exporter_reads() {
        let phases = BTreeMap::from([("freeze_dump".to_string(), 610)]);
        let attempt = Attempt {
            outcome: "rolled_back",
            blackout_ms: 8_312,
            phases: &phases,
        };
        let text = of_attempt(attempt, 1_765_000_000);
        for line in [
            "overboot_update_last_outcome{outcome=\"rolled_back\"} 1",
            "overboot_update_last_outcome{outcome=\"resumed\"} 0",
            "overboot_update_last_outcome{outcome=\"interrupted\"} 0",
            "overboot_update_last_blackout_seconds 8.312",
            "overboot_update_last_phase_seconds{phase=\"freeze_dump\"} 0.610",
            "overboot_update_last_timestamp_seconds 1765000000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        let pending = of_pending("6.1.0-47", Some("6.1.0-56"));
        assert!(
            pending.contains("overboot_update_pending{running=\"6.1.0-47\",newest=\"6.1.0-56\"} 1")
        );
        assert!(of_pending("6.1.0-56", None).ends_with("} 0\n"));
        let dir = tempfile::tempdir().unwrap();
        write_into(dir.path(), "overboot.prom", &text).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("overboot.prom")).unwrap(),
            text
        );
    }
}
