//! A set of workloads carried through a kernel switch (or a rollback): started in the guest,
//! watched until they log, compared before and after, and judged from their logs on the data
//! disk once the guest is gone. Shared by the update, rollback and soak tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::disk;
use crate::guest::Guest;
use crate::workloads::{self, Verdict, Workload};

const CMD: Duration = Duration::from_secs(120);

/// How a workload's log is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `mem` with this many threads.
    Mem(usize),
    /// Consecutive `<word> N` records.
    Sequence(&'static str),
    /// The `append` record file.
    Append,
    /// The `clock` log.
    Clock,
}

/// One workload and how to judge it.
#[derive(Debug, Clone)]
pub struct Carried {
    /// The workload.
    pub workload: Workload,
    /// Its check.
    pub check: Check,
    /// Whether every record carries the root's pid (not so for a pipeline's sink).
    pub root_logs: bool,
}

impl Carried {
    /// A workload judged by `check`, whose records carry the root's pid.
    pub fn new(workload: Workload, check: Check) -> Carried {
        Carried {
            workload,
            check,
            root_logs: true,
        }
    }
}

/// The standard set: heaps (single and multi-threaded), a pipeline of three processes, a unix
/// socket pair, a clock reader, a file on the ext4 disk and one on tmpfs (carried in the map).
pub fn standard(heap_mib: u32) -> Vec<Carried> {
    vec![
        Carried::new(
            Workload::new("mem1", "mem", &format!("{heap_mib} 1")),
            Check::Mem(1),
        ),
        Carried::new(
            Workload::new("mem8", "mem", &format!("{heap_mib} 8")),
            Check::Mem(8),
        ),
        Carried {
            root_logs: false,
            ..Carried::new(Workload::new("pipes", "pipes", ""), Check::Sequence("seq"))
        },
        Carried::new(Workload::new("unix", "unix", ""), Check::Sequence("pong")),
        Carried::new(Workload::new("clock", "clock", ""), Check::Clock),
        Carried::new(
            Workload::append("append", "/lab/wl/append.dat"),
            Check::Append,
        ),
        Carried::new(Workload::append("tmpfs", "/tmp/tmpfs.dat"), Check::Append),
    ]
}

/// A small set, for tests about decisions rather than size: a 16 MiB heap on two threads, a
/// pipeline, a clock reader and a file on the ext4 disk.
pub fn small() -> Vec<Carried> {
    vec![
        Carried::new(Workload::new("mem2", "mem", "16 2"), Check::Mem(2)),
        Carried {
            root_logs: false,
            ..Carried::new(Workload::new("pipes", "pipes", ""), Check::Sequence("seq"))
        },
        Carried::new(Workload::new("clock", "clock", ""), Check::Clock),
        Carried::new(
            Workload::append("append", "/lab/wl/append.dat"),
            Check::Append,
        ),
    ]
}

/// Waits (polling in the guest) until `path` has at least `lines` lines.
pub fn wait_lines(guest: &mut Guest, path: &str, lines: u64) -> Result<(), String> {
    guest
        .run_ok(
            &format!(
                "timeout 300 sh -c 'until [ \"$(wc -l < {path} 2>/dev/null || echo 0)\" -ge {lines} ]; do sleep 0.2; done'"
            ),
            Duration::from_secs(330),
        )
        .map(drop)
        .map_err(|e| format!("{path} did not reach {lines} lines: {e}"))
}

/// Lines in a guest file.
pub fn line_count(guest: &mut Guest, path: &str) -> Result<u64, String> {
    guest
        .run_ok(&format!("wc -l < {path}"), CMD)
        .map_err(|e| e.to_string())?
        .text()
        .trim()
        .parse()
        .map_err(|e| format!("line count of {path}: {e}"))
}

/// A running set: pids and line counts at the last [`Running::mark`].
#[derive(Debug)]
pub struct Running {
    /// The workloads.
    pub set: Vec<Carried>,
    /// Name → root pid.
    pub pids: BTreeMap<String, i32>,
    /// Name → lines at the last mark.
    pub marks: BTreeMap<String, u64>,
}

impl Running {
    /// Starts every workload (PIDs above the early-boot range of any kernel, as services on a
    /// real server have) and waits until each has logged.
    pub fn start(guest: &mut Guest, set: Vec<Carried>) -> Result<Running, String> {
        guest
            .run_ok(
                "mkdir -p /lab/wl && echo 3000 > /proc/sys/kernel/ns_last_pid",
                CMD,
            )
            .map_err(|e| e.to_string())?;
        let mut pids = BTreeMap::new();
        for c in &set {
            let out = guest
                .run_ok(&c.workload.start_command(), CMD)
                .map_err(|e| e.to_string())?;
            let pid = out
                .lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("@@PID {} ", c.workload.name)))
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| format!("no pid for {}", c.workload.name))?;
            pids.insert(c.workload.name.clone(), pid);
        }
        for c in &set {
            wait_lines(guest, &c.workload.log, 3)?;
        }
        let mut running = Running {
            set,
            pids,
            marks: BTreeMap::new(),
        };
        running.mark(guest)?;
        Ok(running)
    }

    /// `--preserve pid:N` for every workload.
    pub fn preserve_args(&self) -> String {
        self.pids
            .values()
            .map(|p| format!(" --preserve pid:{p}"))
            .collect()
    }

    /// Notes every log's line count.
    pub fn mark(&mut self, guest: &mut Guest) -> Result<(), String> {
        for c in &self.set {
            let n = line_count(guest, &c.workload.log)?;
            self.marks.insert(c.workload.name.clone(), n);
        }
        Ok(())
    }

    /// Every workload is alive with its pid and logs past its mark.
    pub fn check_alive_and_progressing(&self, guest: &mut Guest) -> Result<(), String> {
        for c in &self.set {
            let pid = self.pids[&c.workload.name];
            guest
                .run_ok(&format!("kill -0 {pid}"), CMD)
                .map_err(|e| format!("{} (pid {pid}) is not alive: {e}", c.workload.name))?;
            wait_lines(guest, &c.workload.log, self.marks[&c.workload.name] + 5)?;
        }
        Ok(())
    }

    /// Stops every workload, copies tmpfs logs to the disk, syncs, and returns each disk
    /// log's size as the guest sees it (path under `/lab`).
    pub fn stop_and_sync(&self, guest: &mut Guest) -> Result<BTreeMap<String, usize>, String> {
        let out = guest
            .run_ok(
                "for p in $(pidof lab-workload); do kill -STOP $p; done; \
                 [ -f /tmp/tmpfs.dat ] && cp /tmp/tmpfs.dat /lab/wl/tmpfs.dat; sync && \
                 for f in /lab/wl/*.log /lab/wl/*.dat; do echo \"@@SIZE $f $(wc -c < $f)\"; done",
                CMD,
            )
            .map_err(|e| e.to_string())?;
        Ok(out
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("@@SIZE /lab"))
            .filter_map(|l| {
                let (path, size) = l.split_once(' ')?;
                Some((path.to_string(), size.trim().parse().ok()?))
            })
            .collect())
    }

    /// Judges every log on the (dead) guest's disk: the whole log holds, the pid never
    /// changed, and there are records past the mark. Returns each verdict.
    pub fn judge(
        &self,
        disk_image: &Path,
        sizes: &BTreeMap<String, usize>,
    ) -> Result<BTreeMap<String, Verdict>, String> {
        let mut verdicts = BTreeMap::new();
        disk::replay_journal(disk_image).map_err(|e| e.to_string())?;
        for c in &self.set {
            let name = &c.workload.name;
            let on_disk = format!("/wl/{}", c.workload.log.rsplit('/').next().unwrap_or(""));
            let mut bytes = disk::read_replayed(disk_image, &on_disk).map_err(|e| e.to_string())?;
            let size = *sizes
                .get(&on_disk)
                .ok_or_else(|| format!("no size for {on_disk}"))?;
            if bytes.len() < size {
                return Err(format!(
                    "{on_disk}: {} bytes on disk, {size} in the guest",
                    bytes.len()
                ));
            }
            bytes.truncate(size);
            // A workload stopped mid-record leaves a partial last line: only whole lines count.
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
            let text = String::from_utf8_lossy(&bytes);
            let verdict = match c.check {
                Check::Mem(threads) => workloads::verify_mem(&text, threads),
                Check::Sequence(word) => workloads::verify_sequence(&text, word),
                Check::Append => workloads::verify_append(&text),
                Check::Clock => workloads::verify_clock(&text),
            }
            .map_err(|e| format!("{name}: {e}"))?;
            if c.root_logs && verdict.pid != self.pids[name] {
                return Err(format!(
                    "{name}: records carry pid {}, the root is {}",
                    verdict.pid, self.pids[name]
                ));
            }
            if verdict.records <= self.marks[name] {
                return Err(format!("{name}: no record after the switch"));
            }
            verdicts.insert(name.clone(), verdict);
        }
        Ok(verdicts)
    }
}
