//! The benchmark: how long a client waits during a kernel update, where the time goes, how it
//! grows with the service's memory, and how it compares with what operators do today.
//!
//! For each dataset size (Redis holding that many MiB of 16 KiB values written from the host)
//! and each run, every method runs in a fresh guest (same memory, same data disk size):
//!
//! ```text
//! overboot  Redis on A, INCR client on one connection; overboot update → B with the map in
//!           reserved RAM (legacy persistent memory, memmap=SIZE!OFFSET on both kernels'
//!           command lines, ext4 on /dev/pmem0 at /pmem: --handover dir:/pmem/ssm)
//!           blackout = the longest gap between two replies (client-observed);
//!           recovery = from the start of that gap to the reply of the last command slower
//!           than 1 s (a stall after the blackout, such as a backed-off retransmission)
//! initrd    the same with the map appended to B's initrd (--handover initrd, the default,
//!           which needs no reserved RAM)
//! disk      the same with --handover dir:/lab/ssm: the dump goes to the data disk, the new
//!           kernel restores from it
//! floor     a bare `overboot kexec` A → B with nothing preserved, same command line;
//!           blackout = console "jumping into B" → B's init ("@@LAB init"), host clock;
//!           recovery = blackout (no client)
//! restart   Redis on B saved to an RDB file on the data disk; QEMU `system_reset` (firmware
//!           and all); the lab init, then a fresh redis-server loading the RDB;
//!           blackout = reset → the first DBSIZE reply showing every key;
//!           recovery = blackout (no client on one connection)
//! ```
//!
//! Output in the output directory (default `target/bench/`), rewritten after every run so an
//! interrupted benchmark keeps what it measured: `results.json`, `results.md`, `latency.svg`
//! (one overboot update's reply latency over time with the agent's phases shaded),
//! `blackout.svg` (median blackout against dataset size, one line per method, min–max bars),
//! `latency-<method>-<MiB>-<run>.json` (every INCR command of that run) and
//! `console-<method>-<MiB>-<run>.log` (its guest's console; `.timed.log` with the host's
//! seconds before each line). The schema of `results.json` (a list, one object per run) is
//! [`RunRecord`], documented in README.

mod dataset;
mod render;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::guest::Guest;
use crate::incr::{IncrConfig, IncrLoop, Sample};
use crate::lab::{Lab, LabError, Scenario, BASE_CMDLINE, BOOT_TIMEOUT};
use crate::service::{self, ServiceError, CMD};

pub use dataset::{Dataset, DatasetCheck};
pub use render::{markdown, summarize_cells, Cell};

/// A way of moving the service onto the new kernel (or of measuring the floor).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `overboot update`, map in reserved RAM (`--handover dir:` on legacy pmem).
    Overboot,
    /// `overboot update`, map appended to the new kernel's initrd.
    Initrd,
    /// Bare kexec with nothing preserved: the kernel's own boot.
    Floor,
    /// Reset the machine, reload Redis from its RDB file.
    Restart,
    /// `overboot update --handover dir:` on the data disk.
    Disk,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 5] = [
        Method::Overboot,
        Method::Initrd,
        Method::Floor,
        Method::Restart,
        Method::Disk,
    ];

    /// The name used in `results.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Overboot => "overboot",
            Method::Initrd => "initrd",
            Method::Floor => "floor",
            Method::Restart => "restart",
            Method::Disk => "disk",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown method {s:?} (overboot, initrd, floor, restart, disk)"))
    }
}

/// One run of one method at one size: one object of `results.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// `overboot`, `initrd`, `floor`, `restart` or `disk`.
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
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Dataset sizes, MiB.
    pub sizes_mib: Vec<u32>,
    /// Runs per method and size.
    pub runs: u32,
    /// Methods to run.
    pub methods: Vec<Method>,
    /// Kernel label to switch to (from A).
    pub to: String,
    /// Output directory.
    pub out: PathBuf,
    /// `--pre-copy-rounds` for the update methods (`None`: overboot's default).
    pub pre_copy_rounds: Option<u32>,
    /// `--lazy-restore` for the update methods.
    pub lazy_restore: bool,
    /// `--criu-log-level` for the update methods (`None`: overboot's default). From level 3
    /// CRIU stamps its log lines with the time; the bench then prints where its time went.
    pub criu_log_level: Option<u8>,
    /// Boot every kernel with `initcall_debug` and save the new kernel's `dmesg` of each
    /// update and floor run (`dmesg-<method>-<MiB>-<run>.txt` in `out`).
    pub boot_trace: bool,
}

impl BenchOptions {
    /// The full benchmark: 64 MiB, 512 MiB, 2 GiB, three runs each, every method, A → B.
    pub fn full(out: PathBuf) -> BenchOptions {
        BenchOptions {
            sizes_mib: vec![64, 512, 2048],
            runs: 3,
            methods: Method::ALL.to_vec(),
            to: "B".into(),
            out,
            pre_copy_rounds: None,
            lazy_restore: false,
            criu_log_level: None,
            boot_trace: false,
        }
    }

    /// `--quick`: one size (64 MiB), one run per method.
    pub fn quick(out: PathBuf) -> BenchOptions {
        BenchOptions {
            sizes_mib: vec![64],
            runs: 1,
            ..BenchOptions::full(out)
        }
    }
}

/// Errors of the benchmark itself (a failed run is recorded, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The lab could not be prepared.
    #[error("lab")]
    Lab(#[from] LabError),
    /// Writing the output failed.
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Guest RAM for a dataset: Redis itself, the map in RAM, the initrd copy with the map and
/// the kexec segments all exist at once on the old kernel (about 4 × the data), plus the base.
pub fn guest_memory_mib(dataset_mib: u32) -> u32 {
    1024 + 4 * dataset_mib
}

/// Reserved RAM for the `overboot` method's store: the map (about Redis's resident memory, up to
/// 1.4 × the data) plus file system overhead, in 128 MiB steps.
pub fn pmem_mib(dataset_mib: u32) -> u32 {
    (dataset_mib * 3 / 2 + 128).div_ceil(128) * 128
}

/// Data disk for a dataset: kernels and initrds, plus an RDB file or a map on disk (the map is
/// about 1.4 × the data, its pre-copy rounds a little more; `update` wants 1.1 × its estimate
/// free). The guests of one size share the disk: `restart` removes its RDB file when done.
fn disk_mib(dataset_mib: u32) -> u64 {
    512 + 3 * u64::from(dataset_mib)
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the benchmark, writing the outputs after every run; returns every record.
pub fn run(options: &BenchOptions) -> Result<Vec<RunRecord>, BenchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    let lab = Lab::prepare(&["A", &options.to])?;
    let release_to = lab.kernel(&options.to)?.release.clone();
    let mut records = Vec::new();
    for &size in &options.sizes_mib {
        // Named after the output directory too, so that two benchmarks never share a disk.
        let tag = options
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scenario = lab.scenario(
            &format!("bench-{size}-{tag}"),
            &["A", &options.to],
            disk_mib(size),
        )?;
        for run in 1..=options.runs {
            for &method in &options.methods {
                eprintln!("bench: {} at {size} MiB, run {run}...", method.name());
                let started = Instant::now();
                let ctx = RunContext {
                    lab: &lab,
                    scenario: &scenario,
                    to: &options.to,
                    release_to: &release_to,
                    dataset_mib: size,
                    run,
                    out: &options.out,
                    pre_copy_rounds: options.pre_copy_rounds,
                    lazy_restore: options.lazy_restore,
                    criu_log_level: options.criu_log_level,
                    boot_trace: options.boot_trace,
                };
                let record = ctx.run(method);
                eprintln!(
                    "bench: {} at {size} MiB, run {run}: {} blackout {} ms, recovery {} ms \
                     ({:.0} s wall){}",
                    method.name(),
                    if record.ok { "ok" } else { "FAILED" },
                    record.blackout_ms,
                    record.recovery_ms,
                    started.elapsed().as_secs_f64(),
                    record
                        .error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                records.push(record);
                write_outputs(&options.out, &records)?;
            }
        }
    }
    Ok(records)
}

/// Writes `results.json`, `results.md` and the plots from `records`.
pub fn write_outputs(out: &Path, records: &[RunRecord]) -> Result<(), BenchError> {
    let write = |name: &str, bytes: Vec<u8>| {
        let path = out.join(name);
        fs::write(&path, bytes).map_err(|source| BenchError::Io { path, source })
    };
    let json = serde_json::to_vec_pretty(records).unwrap_or_default();
    write("results.json", json)?;
    write("results.md", markdown(records).into_bytes())?;
    write("blackout.svg", render::blackout_svg(records).into_bytes())?;
    if let Some((record, samples)) = latency_source(out, records) {
        write(
            "latency.svg",
            render::latency_svg(&record, &samples).into_bytes(),
        )?;
    }
    Ok(())
}

/// The samples of the first successful overboot run at the smallest size (for the latency
/// plot).
fn latency_source(out: &Path, records: &[RunRecord]) -> Option<(RunRecord, LatencyFile)> {
    let mut candidates: Vec<&RunRecord> = records
        .iter()
        .filter(|r| r.method == Method::Overboot && r.ok)
        .collect();
    candidates.sort_by_key(|r| (r.dataset_mib, r.run));
    candidates.into_iter().find_map(|r| {
        let path = out.join(latency_file_name(r.method, r.dataset_mib, r.run));
        let bytes = fs::read(path).ok()?;
        Some((r.clone(), serde_json::from_slice(&bytes).ok()?))
    })
}

fn latency_file_name(method: Method, size: u32, run: u32) -> String {
    format!("latency-{}-{size}-{run}.json", method.name())
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

struct RunContext<'a> {
    lab: &'a Lab,
    scenario: &'a Scenario,
    to: &'a str,
    release_to: &'a str,
    dataset_mib: u32,
    run: u32,
    out: &'a Path,
    pre_copy_rounds: Option<u32>,
    lazy_restore: bool,
    criu_log_level: Option<u8>,
    boot_trace: bool,
}

/// What a method measured.
#[derive(Default)]
struct Measured {
    ok: bool,
    blackout_ms: u64,
    recovery_ms: u64,
    phases: BTreeMap<String, u64>,
    handover_bytes: u64,
    peak_mem_bytes: u64,
    connection_survived: Option<bool>,
    lost: u64,
    duplicated: u64,
    dataset: Option<DatasetCheck>,
    from: String,
    to: String,
    pre_copy_bytes: Vec<u64>,
    frozen_dump_bytes: u64,
    memory_back_ms: Option<u64>,
    slowest_fault_ms: Option<f64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

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

/// Timeout for bulk Redis I/O (writing or checking gigabytes under TCG).
const BULK: Duration = Duration::from_secs(1800);

impl RunContext<'_> {
    fn run(&self, method: Method) -> RunRecord {
        let memory = match method {
            Method::Overboot => {
                crate::lab::pmem_layout(
                    guest_memory_mib(self.dataset_mib),
                    pmem_mib(self.dataset_mib),
                )
                .0
            }
            _ => guest_memory_mib(self.dataset_mib),
        };
        let mut console_log = String::new();
        let result = match method {
            Method::Overboot | Method::Initrd | Method::Disk => {
                self.update(method, &mut console_log)
            }
            Method::Floor => self.floor(&mut console_log),
            Method::Restart => self.restart(&mut console_log),
        };
        let (m, error) = match result {
            Ok(m) => (m, None),
            Err(e) => (Measured::default(), Some(chain(&e))),
        };
        let console_log = self.keep_console(method, &console_log);
        RunRecord {
            method,
            dataset_mib: self.dataset_mib,
            run: self.run,
            ok: m.ok && error.is_none(),
            blackout_ms: m.blackout_ms,
            recovery_ms: m.recovery_ms,
            phases: m.phases,
            handover_bytes: m.handover_bytes,
            peak_mem_bytes: m.peak_mem_bytes,
            guest_memory_mib: memory,
            connection_survived: m.connection_survived,
            lost: m.lost,
            duplicated: m.duplicated,
            dataset: m.dataset,
            from: m.from,
            to: m.to,
            error,
            console_log,
            pre_copy_rounds: match method {
                Method::Overboot | Method::Disk | Method::Initrd => self.pre_copy_rounds,
                Method::Floor | Method::Restart => None,
            },
            lazy_restore: self.lazy_restore
                && matches!(method, Method::Overboot | Method::Disk | Method::Initrd),
            pre_copy_bytes: m.pre_copy_bytes,
            frozen_dump_bytes: m.frozen_dump_bytes,
            memory_back_ms: m.memory_back_ms,
            slowest_fault_ms: m.slowest_fault_ms,
        }
    }

    /// Copies the run's console logs (`console.log` at `log`, and `console.timed.log` beside
    /// it) into the output directory as `console-<method>-<MiB>-<run>.log` and
    /// `.timed.log`, since the next run of the same size boots its guest in the same
    /// directory; returns the copy's path (`log` itself if it could not be copied).
    fn keep_console(&self, method: Method, log: &str) -> String {
        if log.is_empty() {
            return String::new();
        }
        let stem = format!(
            "console-{}-{}-{}",
            method.name(),
            self.dataset_mib,
            self.run
        );
        let kept = self.out.join(format!("{stem}.log"));
        let from = Path::new(log);
        if fs::copy(from, &kept).is_err() {
            return log.to_string();
        }
        let _ = fs::copy(
            from.with_file_name("console.timed.log"),
            self.out.join(format!("{stem}.timed.log")),
        );
        kept.display().to_string()
    }

    fn dataset(&self) -> Dataset {
        Dataset::of_mib(self.dataset_mib)
    }

    /// overboot, initrd and disk: Redis on A with the data set, a client on one connection,
    /// the update with the method's store.
    fn update(&self, method: Method, log: &mut String) -> Result<Measured, ServiceError> {
        let memory = guest_memory_mib(self.dataset_mib);
        let boot = service::RedisBoot {
            pmem_mib: (method == Method::Overboot).then(|| pmem_mib(self.dataset_mib)),
            append: self.boot_trace_append().into(),
            ..service::RedisBoot::default()
        };
        let mut rg = service::boot_redis_with(self.lab, self.scenario, "A", memory, &boot)?;
        *log = rg.guest.log_path().display().to_string();
        let dataset = self.dataset();
        dataset.write(rg.redis, BULK)?;
        let incr = IncrLoop::start(
            rg.redis,
            IncrConfig {
                max_duration: Duration::from_secs(3 * 3600),
                ..IncrConfig::default()
            },
        )?;
        incr.wait_answered(50, Duration::from_secs(60));
        let mut extra = match method {
            // Both kernels need the reservation: the new one gets the running command line.
            Method::Overboot => "--reuse-cmdline --handover dir:/pmem/ssm".to_string(),
            Method::Disk => {
                rg.guest.run_ok("rm -rf /lab/ssm", CMD)?;
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
        let update = service::run_update(
            &mut rg.guest,
            self.to,
            self.release_to,
            &[rg.redis_pid],
            &extra,
            &mut || {},
        )?;
        // Let the client be answered steadily on the new kernel before judging it.
        let answered = incr.progress().answered;
        incr.wait_answered(answered + 50, Duration::from_secs(120));
        let (summary, samples) = incr.finish();
        let check = dataset.check(rg.redis, BULK)?;
        self.save_boot_trace(&mut rg.guest, method);
        let report = service::agent_report(&mut rg.guest)?;
        // The page servers' summaries (a lazy restore), kept in the guest's console log once
        // each server finished (its status file written): when every page was back.
        let servers = rg.guest.run(
            "end=$(( $(cut -d. -f1 /proc/uptime) + 150 )); \
             for f in /run/overboot/*/*/lazy-pages.log; do [ -e \"$f\" ] || continue; \
             s=${f%.log}.status; while [ ! -e \"$s\" ] && \
             [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do sleep 0.5; done; cat \"$f\"; done; true",
            Duration::from_secs(240),
        );
        let (memory_back_ms, slowest_fault_ms) = servers
            .map(|out| page_servers_done(&out.lines))
            .unwrap_or_default();
        if self.criu_log_level.is_some_and(|l| l >= 3) {
            // Where CRIU's time went: the lines after each pause of 20 ms or more in its
            // timestamped logs (the whole logs stay on the guest's disk).
            let _ = rg.guest.run(CRIU_LOG_GAPS, Duration::from_secs(120));
        }
        let latency = LatencyFile {
            blackout_start_ms: summary.blackout_start_ms,
            samples: samples.iter().map(LatencySample::from).collect(),
        };
        let path = self
            .out
            .join(latency_file_name(method, self.dataset_mib, self.run));
        let _ = fs::write(&path, serde_json::to_vec(&latency).unwrap_or_default());
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
        let outcome_resumed = report.get("outcome").and_then(|o| o.as_str()) == Some("resumed");
        Ok(Measured {
            ok: update.resume_rc == 0
                && outcome_resumed
                && summary.connection_survived
                && summary.lost == 0
                && summary.duplicated == 0
                && check.ok(dataset),
            blackout_ms: summary.blackout_ms,
            recovery_ms: summary.recovery_ms,
            phases,
            handover_bytes: number("handover_bytes"),
            peak_mem_bytes: number("peak_mem_bytes"),
            connection_survived: Some(summary.connection_survived),
            lost: summary.lost,
            duplicated: summary.duplicated,
            dataset: Some(check),
            from: rg.from.clone(),
            to: report
                .get("to")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string(),
            pre_copy_bytes,
            frozen_dump_bytes: number("frozen_dump_bytes"),
            memory_back_ms,
            slowest_fault_ms,
        })
    }

    /// floor: a bare kexec A → B, nothing preserved, the lab's command line.
    fn floor(&self, log: &mut String) -> Result<Measured, ServiceError> {
        let mut config = self.lab.guest_config(self.scenario, "A")?;
        config.memory_mib = guest_memory_mib(self.dataset_mib);
        let append = format!("{BASE_CMDLINE} {}", self.boot_trace_append())
            .trim_end()
            .to_string();
        config.append = append.clone();
        let mut guest = self.lab.boot(&config)?;
        *log = guest.log_path().display().to_string();
        let from = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        let peak = mem_used(&mut guest)?;
        guest.send(&format!(
            "overboot kexec --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img \
             --append '{append}' 2>&1; echo \"@@LAB\" \"kexec-exited rc=$?\"",
            to = self.to
        ))?;
        let jump = format!("jumping into {}", self.release_to);
        let line = guest.wait_until(&jump, Duration::from_secs(600), |l| {
            l.contains(&jump) || l.contains("@@LAB kexec-exited")
        })?;
        if line.last().is_some_and(|l| l.contains("kexec-exited")) {
            return Err(ServiceError::UpdateFailed {
                rc: -1,
                output: line.join("\n"),
                log: log.clone(),
            });
        }
        let jumped = Instant::now();
        guest.wait_for("@@LAB init", BOOT_TIMEOUT)?;
        let at_init = jumped.elapsed();
        guest.wait_for("@@LAB booted", BOOT_TIMEOUT)?;
        let at_shell = jumped.elapsed();
        let to = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        self.save_boot_trace(&mut guest, Method::Floor);
        Ok(Measured {
            ok: to == self.release_to,
            blackout_ms: ms(at_init),
            // No client: nothing can stall after the blackout that the blackout does not cover.
            recovery_ms: ms(at_init),
            phases: BTreeMap::from([
                ("jump_to_init".to_string(), ms(at_init)),
                ("jump_to_shell".to_string(), ms(at_shell)),
            ]),
            peak_mem_bytes: peak,
            from,
            to,
            ..Measured::default()
        })
    }

    /// restart: Redis on B with its RDB on the data disk, a machine reset, the RDB loaded.
    fn restart(&self, log: &mut String) -> Result<Measured, ServiceError> {
        const RDB: &str = "--dir /lab/wl --dbfilename bench.rdb";
        let memory = guest_memory_mib(self.dataset_mib);
        let boot = service::RedisBoot {
            monitor: true,
            redis_options: RDB.into(),
            pmem_mib: None,
            append: String::new(),
        };
        let mut rg = service::boot_redis_with(self.lab, self.scenario, self.to, memory, &boot)?;
        *log = rg.guest.log_path().display().to_string();
        let dataset = self.dataset();
        dataset.write(rg.redis, BULK)?;
        let mut conn = crate::redis::RespConn::connect(rg.redis, BULK)?;
        conn.command(&[b"SAVE"])?;
        rg.guest.run_ok("sync", Duration::from_secs(600))?;
        let reset_at = Instant::now();
        rg.guest.reset()?;
        rg.guest.wait_for("@@LAB booted", BOOT_TIMEOUT)?;
        let at_shell = reset_at.elapsed();
        let out = rg
            .guest
            .run_ok(&crate::net::redis_start_command_with(RDB), CMD)?;
        let _ = out;
        let deadline = Instant::now() + BULK;
        let loaded = loop {
            if Dataset::dbsize(rg.redis, Duration::from_secs(5)).is_some_and(|n| n >= dataset.count)
            {
                break reset_at.elapsed();
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Timeout {
                    what: "Redis to load its RDB file".into(),
                    secs: BULK.as_secs(),
                    log: log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let check = dataset.check(rg.redis, BULK)?;
        let peak = mem_used(&mut rg.guest)?;
        let to = rg.guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        // The next method's guest shares the data disk: the `disk` method needs the room.
        rg.guest
            .run_ok("rm -f /lab/wl/bench.rdb && sync", Duration::from_secs(600))?;
        Ok(Measured {
            ok: check.ok(dataset),
            blackout_ms: ms(loaded),
            // Every connection was lost; the service is back when every key is.
            recovery_ms: ms(loaded),
            phases: BTreeMap::from([
                ("reset_to_shell".to_string(), ms(at_shell)),
                (
                    "redis_load".to_string(),
                    ms(loaded.saturating_sub(at_shell)),
                ),
            ]),
            peak_mem_bytes: peak,
            dataset: Some(check),
            from: rg.from.clone(),
            to,
            ..Measured::default()
        })
    }
}

/// The new kernel's log lines a boot trace keeps: everything but initcall_debug's `calling`
/// lines and the initcalls that returned within a millisecond.
const BOOT_TRACE_DMESG: &str =
    "dmesg | awk '/ calling / { next } /returned .* after [0-9]+ usecs/ && $(NF-1) < 1000 { next } { print }'";

impl RunContext<'_> {
    /// What `--boot-trace` adds to the kernel command line.
    fn boot_trace_append(&self) -> &'static str {
        if self.boot_trace {
            "initcall_debug"
        } else {
            ""
        }
    }

    /// With `--boot-trace`, saves the new kernel's log (initcalls of 1 ms or more, every other
    /// line) as `dmesg-<method>-<MiB>-<run>.txt` in the output directory. A diagnostic: a
    /// failure to read or write it is reported, not fatal.
    fn save_boot_trace(&self, guest: &mut Guest, method: Method) {
        if !self.boot_trace {
            return;
        }
        let path = self.out.join(format!(
            "dmesg-{}-{}-{}.txt",
            method.name(),
            self.dataset_mib,
            self.run
        ));
        let written = guest
            .run_ok(BOOT_TRACE_DMESG, Duration::from_secs(300))
            .map_err(|e| e.to_string())
            .and_then(|out| fs::write(&path, out.text()).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("bench: boot trace {}: {e}", path.display());
        }
    }
}

/// `MemTotal - MemAvailable` in the guest, bytes.
fn mem_used(guest: &mut Guest) -> Result<u64, ServiceError> {
    let out = guest.run_ok("cat /proc/meminfo", CMD)?;
    let field = |name: &str| {
        out.lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(field("MemTotal:").saturating_sub(field("MemAvailable:")) * 1024)
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

    #[test]
    fn guests_get_room_for_four_copies_of_the_data() {
        assert_eq!(guest_memory_mib(64), 1280);
        assert_eq!(guest_memory_mib(2048), 9216);
        assert_eq!(pmem_mib(64), 256);
        assert_eq!(pmem_mib(512), 896);
        assert_eq!(pmem_mib(2048), 3200);
    }
}
