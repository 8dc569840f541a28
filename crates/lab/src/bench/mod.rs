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
//! defaults  the same with nothing but the kernel, initrd and target: what a new user runs
//!           (the store overboot picks: here the state directory on the data disk)
//! initrd    the same with the map appended to B's initrd (--handover initrd: no disk, no
//!           reserved RAM)
//! disk      the same with --handover dir:/lab/ssm: the dump goes to the data disk, the new
//!           kernel restores from it
//! naive     the simplest thing an operator could script instead: criu dump, a cpio appended
//!           to B's initrd, kexec-tools' `kexec -s -l` and `kexec -e`, then the lock table,
//!           the network and criu restore from B's init (naive.rs); same client, same
//!           blackout and recovery; the peer overboot's defaults (`initrd`) must beat
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
//! [`RunRecord`], documented in docs/bench/README.md.

mod baseline;
mod dataset;
mod naive;
mod record;
mod render;
mod run;
mod sizing;
mod update;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::lab::{Lab, LabError};

use self::record::latency_file_name;
use self::run::{Measured, RunContext};
use self::sizing::disk_mib;

pub use dataset::{Dataset, DatasetCheck};
pub use record::{LatencyFile, LatencySample, Method, RunRecord};
pub use render::{markdown, summarize_cells, Cell};
pub use sizing::{guest_memory_mib, pmem_mib};

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
    /// kexec-tools could not be fetched for the `naive` method.
    #[error("the naive method")]
    Naive(#[from] naive::NaiveError),
    /// Writing the output failed.
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    let naive_files = if options.methods.contains(&Method::Naive) {
        naive::data_disk_files(&crate::host::cache_dir())?
    } else {
        Vec::new()
    };
    let mut records = Vec::new();
    for &size in &options.sizes_mib {
        // Named after the output directory too, so that two benchmarks never share a disk.
        let tag = options
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scenario = lab.scenario_with(
            &format!("bench-{size}-{tag}"),
            &["A", &options.to],
            disk_mib(size),
            &naive_files,
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

// The methods' measurements are in update.rs and baseline.rs; one run's record is put
// together here.
impl RunContext<'_> {
    /// Runs `method` once and records what it measured, or the whole error chain.
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
            Method::Overboot | Method::Defaults | Method::Initrd | Method::Disk => {
                self.update(method, &mut console_log)
            }
            Method::Floor => self.floor(&mut console_log),
            Method::Restart => self.restart(&mut console_log),
            Method::Naive => self.naive(&mut console_log),
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
                Method::Floor | Method::Restart | Method::Naive | Method::Defaults => None,
            },
            lazy_restore: self.lazy_restore
                && matches!(method, Method::Overboot | Method::Disk | Method::Initrd),
            pre_copy_bytes: m.pre_copy_bytes,
            frozen_dump_bytes: m.frozen_dump_bytes,
            memory_back_ms: m.memory_back_ms,
            slowest_fault_ms: m.slowest_fault_ms,
            client_error: m.client_error,
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
}
