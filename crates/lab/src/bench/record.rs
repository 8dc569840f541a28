//! What the benchmark records: the methods it compares, one object of `results.json` per run
//! ([`RunRecord`]; its schema is documented in docs/bench/README.md), and each update run's
//! `latency-<method>-<MiB>-<run>.json` ([`LatencyFile`]).

use std::collections::BTreeMap;

use super::dataset::DatasetCheck;
use crate::incr::Sample;

/// A way of moving the service onto the new kernel (or of measuring the floor).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `overboot update`, map in reserved RAM (`--handover dir:` on legacy pmem).
    Overboot,
    /// `overboot update --handover initrd`: the map appended to the new kernel's initrd.
    Initrd,
    /// `overboot update` with nothing but the kernel, initrd and targets: what a new user runs.
    Defaults,
    /// Bare kexec with nothing preserved: the kernel's own boot.
    Floor,
    /// Reset the machine, reload Redis from its RDB file.
    Restart,
    /// `overboot update --handover dir:` on the data disk.
    Disk,
    /// Plain CRIU + kexec-tools, scripted (the peer to beat; see `naive.rs`).
    Naive,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 7] = [
        Method::Overboot,
        Method::Defaults,
        Method::Initrd,
        Method::Naive,
        Method::Floor,
        Method::Restart,
        Method::Disk,
    ];

    /// The name used in `results.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Overboot => "overboot",
            Method::Initrd => "initrd",
            Method::Defaults => "defaults",
            Method::Floor => "floor",
            Method::Restart => "restart",
            Method::Disk => "disk",
            Method::Naive => "naive",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown method {s:?} (overboot, defaults, initrd, naive, floor, restart, disk)")
            })
    }
}

/// One run of one method at one size: one object of `results.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// `overboot`, `defaults`, `initrd`, `naive`, `floor`, `restart` or `disk`.
    pub method: Method,
    /// Dataset size (MiB of values; 0 is never used: the floor runs at each size's memory).
    pub dataset_mib: u32,
    /// Run number, from 1.
    pub run: u32,
    /// Whether the run completed and its checks held (connection, increments, keys).
    pub ok: bool,
    /// The client-observed blackout (ms); see the module doc for each method's definition.
    pub blackout_ms: u64,
    /// Until the client saw no more stalls (ms): for overboot, initrd and disk from the start
    /// of the blackout to the reply of the last command slower than 1 s (`IncrSummary`), at
    /// least `blackout_ms`; for floor and restart equal to `blackout_ms`. 0 in results written
    /// before it was measured.
    #[serde(default)]
    pub recovery_ms: u64,
    /// Phase durations (ms): the agent's for overboot/disk; measured by the host for the others.
    pub phases: BTreeMap<String, u64>,
    /// Bytes of the Save State Map (overboot, disk; 0 otherwise).
    pub handover_bytes: u64,
    /// Guest memory in use at its peak (overboot/disk: the agent's phase-boundary peak on
    /// either kernel; floor: before the jump; restart: after Redis loaded), bytes.
    pub peak_mem_bytes: u64,
    /// Guest RAM (MiB).
    pub guest_memory_mib: u32,
    /// The persistent connection survived (overboot, disk); `None` when the method has none.
    pub connection_survived: Option<bool>,
    /// Increments lost and duplicated (overboot, disk).
    pub lost: u64,
    /// Replies not greater than the previous one.
    pub duplicated: u64,
    /// Keys present and sampled keys intact after the switch.
    pub dataset: Option<DatasetCheck>,
    /// Release before and after.
    pub from: String,
    /// Release after.
    pub to: String,
    /// When the run failed: the whole error chain.
    pub error: Option<String>,
    /// The guest's console log: its copy in the output directory
    /// (`console-<method>-<MiB>-<run>.log`), or in results written before the copies were kept,
    /// the run directory's log that the next run of the size overwrote.
    pub console_log: String,
    /// `--pre-copy-rounds` given to `overboot update` (overboot, disk; `None`: its default,
    /// or a run measured before pre-copy existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_copy_rounds: Option<u32>,
    /// `--lazy-restore` was given to `overboot update` (overboot, disk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy_restore: bool,
    /// Bytes of each pre-copy round, in order (overboot, disk), from the agent's report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_copy_bytes: Vec<u64>,
    /// Bytes dumped after the freeze (from the agent's report; 0 when not reported).
    #[serde(default)]
    pub frozen_dump_bytes: u64,
    /// A lazy restore: from the restore's finish until every page was back, the slowest of the
    /// page servers (ms; from their logs' last lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_back_ms: Option<u64>,
    /// A lazy restore: the longest a restored task's fault waited for the page server (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest_fault_ms: Option<f64>,
    /// How the client's connection ended when it did not survive: a reset, an EOF, or commands
    /// still unanswered when the run ended (a connection that stalled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_error: Option<String>,
}

/// Every INCR command of one run and where its blackout began.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LatencyFile {
    /// ms after the client started: the reply before the longest gap.
    pub blackout_start_ms: u64,
    /// Each command: sent, answered (ms after start), value.
    pub samples: Vec<LatencySample>,
}

/// One command of [`LatencyFile`].
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LatencySample {
    /// Sent, ms after start.
    pub sent_ms: f64,
    /// Answered, ms after start.
    pub reply_ms: Option<f64>,
}

impl From<&Sample> for LatencySample {
    fn from(s: &Sample) -> LatencySample {
        LatencySample {
            sent_ms: s.sent_ms,
            reply_ms: s.reply_ms,
        }
    }
}

pub(super) fn latency_file_name(method: Method, size: u32, run: u32) -> String {
    format!("latency-{}-{size}-{run}.json", method.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_by_name() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
        }
        assert!("reboot".parse::<Method>().is_err());
    }
}
