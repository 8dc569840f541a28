//! The update methods (`overboot`, `initrd`, `disk`): Redis on A with the data set and a client
//! on one connection, `overboot update` to the new kernel with the method's store, and what the
//! client, the agent's report and the page servers say of it.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use super::record::{latency_file_name, LatencyFile, LatencySample, Method};
use super::run::{Measured, RunContext, Started, BULK};
use super::sizing::pmem_mib;
use crate::guest::Guest;
use crate::incr::{IncrSummary, Sample};
use crate::service::{self, ServiceError, CMD};

/// Prints, for the last update's CRIU logs, each line that came 20 ms or more after the line
/// before it (the gap, and that line before it), the restore's page counts and whether it
/// disabled transparent huge pages for a lazy restore, and each log's last line: CRIU stamps every line with
/// the seconds since it opened the log from log level 3 (level 4 adds a line per page range,
/// which slows a large dump and restore several times over).
const CRIU_LOG_GAPS: &str = r#"d=$(ls -td /var/lib/overboot/reports/*/ | head -1); for f in "$d"*-dump.log "$d"*-restore.log; do [ -f "$f" ] || continue; echo "== $f"; awk -F'[()]' '/^\(/ { t = $2 + 0; if (NR == 1 || t - p >= 0.02 || /huge pages|nr_restored_pages|nr_lazy/) printf "   after: %s\n%+.3f %s\n", last, t - p, $0; p = t; last = $0 } END { print "last: " last }' "$f"; done"#;

/// From the page servers' last lines (`every page is back: ...`), the longest any took after
/// the restore finished (ms) and the longest any fault waited (ms); `None` without such lines.
fn page_servers_done(lines: &[String]) -> (Option<u64>, Option<f64>) {
    let mut back = None;
    let mut slowest = None;
    for line in lines
        .iter()
        .filter(|l| l.starts_with("every page is back: "))
    {
        let after = line
            .split(" ms after the restore finished")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        let fault = line
            .split("the slowest answered in ")
            .nth(1)
            .and_then(|tail| tail.split(' ').next())
            .and_then(|n| n.parse::<f64>().ok());
        back = back.max(after);
        slowest = match (slowest, fault) {
            (Some(a), Some(b)) => Some(f64::max(a, b)),
            (a, b) => a.or(b),
        };
    }
    (back, slowest)
}

impl RunContext<'_> {
    /// overboot, initrd and disk: Redis on A with the data set, a client on one connection,
    /// the update with the method's store.
    pub(super) fn update(
        &self,
        method: Method,
        log: &mut String,
    ) -> Result<Measured, ServiceError> {
        let pmem = (method == Method::Overboot).then(|| pmem_mib(self.dataset_mib));
        let Started {
            mut rg,
            dataset,
            incr,
        } = self.start_redis(pmem, log)?;
        let command = match method {
            // What a new user types: no store, no command line, no tuning. Only the rollback
            // kernel is named: the lab keeps its kernels in /lab/boot, not /boot.
            Method::Defaults => format!(
                "overboot update --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img \
                 --rollback-kernel /lab/boot/A/vmlinuz --rollback-initrd /lab/boot/A/initrd.img \
                 --preserve pid:{pid}",
                to = self.to,
                pid = rg.redis_pid
            ),
            _ => {
                let extra = self.update_arguments(method, &mut rg.guest)?;
                service::update_command(self.to, &[rg.redis_pid], &extra)
            }
        };
        let update =
            service::run_update_line(&mut rg.guest, &command, self.release_to, &mut || {})?;
        // Let the client be answered steadily on the new kernel before judging it.
        let answered = incr.progress().answered;
        incr.wait_answered(answered + 50, Duration::from_secs(120));
        let (summary, samples) = incr.finish();
        let check = dataset.check(rg.redis, BULK)?;
        self.save_boot_trace(&mut rg.guest, method);
        let report = service::agent_report(&mut rg.guest)?;
        let (memory_back_ms, slowest_fault_ms) = page_servers_summary(&mut rg.guest);
        if self.criu_log_level.is_some_and(|l| l >= 3) {
            // Where CRIU's time went: the lines after each pause of 20 ms or more in its
            // timestamped logs (the whole logs stay on the guest's disk).
            let _ = rg.guest.run(CRIU_LOG_GAPS, Duration::from_secs(120));
        }
        self.keep_latency(method, &summary, &samples);
        let agent = AgentReport::read(&report);
        Ok(Measured {
            ok: update.resume_rc == 0
                && agent.resumed
                && summary.connection_survived
                && summary.lost == 0
                && summary.duplicated == 0
                && check.ok(dataset),
            blackout_ms: summary.blackout_ms,
            recovery_ms: summary.recovery_ms,
            phases: agent.phases,
            handover_bytes: agent.handover_bytes,
            peak_mem_bytes: agent.peak_mem_bytes,
            connection_survived: Some(summary.connection_survived),
            lost: summary.lost,
            duplicated: summary.duplicated,
            dataset: Some(check),
            from: rg.from.clone(),
            to: agent.to,
            pre_copy_bytes: agent.pre_copy_bytes,
            frozen_dump_bytes: agent.frozen_dump_bytes,
            memory_back_ms,
            slowest_fault_ms,
            client_error: summary.error.clone(),
        })
    }

    /// What the method adds to `overboot update`: its store (the `disk` method's emptied
    /// first), then the benchmark's pre-copy, lazy restore and CRIU log options.
    fn update_arguments(&self, method: Method, guest: &mut Guest) -> Result<String, ServiceError> {
        let mut extra = match method {
            // Both kernels need the reservation: the new one gets the running command line.
            Method::Overboot => "--reuse-cmdline --handover dir:/pmem/ssm".to_string(),
            Method::Initrd => "--handover initrd".to_string(),
            Method::Disk => {
                guest.run_ok("rm -rf /lab/ssm", CMD)?;
                "--handover dir:/lab/ssm".to_string()
            }
            _ => String::new(),
        };
        if let Some(rounds) = self.pre_copy_rounds {
            extra.push_str(&format!(" --pre-copy-rounds {rounds}"));
        }
        if self.lazy_restore {
            extra.push_str(" --lazy-restore");
        }
        if let Some(level) = self.criu_log_level {
            extra.push_str(&format!(" --criu-log-level {level}"));
        }
        Ok(extra)
    }

    /// Writes every INCR command of the run and where its blackout began to
    /// `latency-<method>-<MiB>-<run>.json` in the output directory (best effort).
    pub(super) fn keep_latency(&self, method: Method, summary: &IncrSummary, samples: &[Sample]) {
        let latency = LatencyFile {
            blackout_start_ms: summary.blackout_start_ms,
            samples: samples.iter().map(LatencySample::from).collect(),
        };
        let path = self
            .out
            .join(latency_file_name(method, self.dataset_mib, self.run));
        let _ = fs::write(&path, serde_json::to_vec(&latency).unwrap_or_default());
    }
}

/// The page servers' summaries (a lazy restore), kept in the guest's console log once each
/// server finished (its status file written): when every page was back, and the slowest fault
/// (see [`page_servers_done`]). Waits up to 150 s for the servers; `None`s without any.
fn page_servers_summary(guest: &mut Guest) -> (Option<u64>, Option<f64>) {
    let servers = guest.run(
        "end=$(( $(cut -d. -f1 /proc/uptime) + 150 )); \
         for f in /run/overboot/*/*/lazy-pages.log; do [ -e \"$f\" ] || continue; \
         s=${f%.log}.status; while [ ! -e \"$s\" ] && \
         [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do sleep 0.5; done; cat \"$f\"; done; true",
        Duration::from_secs(240),
    );
    servers
        .map(|out| page_servers_done(&out.lines))
        .unwrap_or_default()
}

/// What the agent's report (`overboot status --json` in the new kernel) says of the update.
struct AgentReport {
    /// Its outcome is `resumed`.
    resumed: bool,
    /// The agent's phase durations (ms).
    phases: BTreeMap<String, u64>,
    handover_bytes: u64,
    peak_mem_bytes: u64,
    frozen_dump_bytes: u64,
    /// Bytes of each pre-copy round, in order.
    pre_copy_bytes: Vec<u64>,
    /// The release it resumed on.
    to: String,
}

impl AgentReport {
    /// Reads the fields of `report`; a missing one is 0 or empty.
    fn read(report: &serde_json::Value) -> Self {
        let phases: BTreeMap<String, u64> = report
            .get("phases")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default();
        let number = |key: &str| report.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        let pre_copy_bytes: Vec<u64> = report
            .get("pre_copy")
            .and_then(|r| r.as_array())
            .map(|rounds| {
                rounds
                    .iter()
                    .filter_map(|r| r.get("bytes").and_then(|b| b.as_u64()))
                    .collect()
            })
            .unwrap_or_default();
        AgentReport {
            resumed: report.get("outcome").and_then(|o| o.as_str()) == Some("resumed"),
            phases,
            handover_bytes: number("handover_bytes"),
            peak_mem_bytes: number("peak_mem_bytes"),
            frozen_dump_bytes: number("frozen_dump_bytes"),
            pre_copy_bytes,
            to: report
                .get("to")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_server_summaries_give_the_slowest_server_and_fault() {
        let line = |after: u64, slowest: &str| {
            format!(
                "every page is back: 1 tasks, 664073 pages (1824 in at 467 faults, 13 zero-page \
                 faults, the slowest answered in {slowest} ms, 662249 in the background, 0 \
                 dropped by the tasks; 2602 MiB checked), images indexed in 861 ms, {after} ms \
                 after the restore finished, 24590 ms in all"
            )
        };
        let lines = vec![
            "10 s after the restore: 5 faults (80 pages) and 2 MiB in the background".to_string(),
            line(22_369, "24.6"),
            line(1_200, "31.0"),
        ];
        assert_eq!(page_servers_done(&lines), (Some(22_369), Some(31.0)));
        assert_eq!(page_servers_done(&lines[..1]), (None, None));
    }
}
