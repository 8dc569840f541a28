//! Phase timings of an update. Each phase runs inside a `tracing` span named `phase` with the
//! phase's name, and its duration is recorded here for the report and the benchmark, together
//! with the machine's memory in use (`MemTotal - MemAvailable`) at the start and end of each
//! phase: the update's peak lies at a phase boundary (the map and the loaded kernel segments
//! only grow until the jump).

use std::collections::BTreeMap;
use std::time::Instant;

/// The phases of an update, on both kernels, by the names the report and the benchmark read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Every check before anything is frozen.
    Check,
    /// `kexec_file_load` before the freeze (directory store).
    KexecLoadEarly,
    /// Pre-copy rounds, services running.
    PreCopy,
    /// Freeze and dump (summed over the trees).
    FreezeDump,
    /// Hashing the images and writing the manifest.
    WriteMap,
    /// Handing the map to its store.
    Publish,
    /// `kexec_file_load` after the freeze (initrd store).
    KexecLoad,
    /// The jump itself (`reboot(LINUX_REBOOT_CMD_KEXEC)`; named, never timed).
    Jump,
    /// From the jump to the agent's start (realtime clock).
    JumpToAgent,
    /// The new kernel's uptime when the agent started.
    NewKernelBoot,
    /// The agent's check of the map (all but the memory pages).
    VerifyMap,
    /// The memory pages' check, beside the restore.
    VerifyPages,
    /// Network configuration under the lock.
    Network,
    /// Starting the lazy restore's page servers.
    LazyServers,
    /// Every tree's restore.
    Restore,
    /// Making the peers resend.
    Nudge,
    /// The agent from start to report.
    AgentTotal,
    /// From the freeze to the end of the restore.
    Blackout,
}

impl Phase {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::KexecLoadEarly => "kexec_load_early",
            Phase::PreCopy => "pre_copy",
            Phase::FreezeDump => "freeze_dump",
            Phase::WriteMap => "write_map",
            Phase::Publish => "publish",
            Phase::KexecLoad => "kexec_load",
            Phase::Jump => "jump",
            Phase::JumpToAgent => "jump_to_agent",
            Phase::NewKernelBoot => "new_kernel_boot",
            Phase::VerifyMap => "verify_map",
            Phase::VerifyPages => "verify_pages",
            Phase::Network => "network",
            Phase::LazyServers => "lazy_servers",
            Phase::Restore => "restore",
            Phase::Nudge => "nudge",
            Phase::AgentTotal => "agent_total",
            Phase::Blackout => "blackout",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Durations of the phases run so far, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    done: BTreeMap<String, u64>,
    order: Vec<String>,
    peak_mem: u64,
}

impl Phases {
    /// Runs `f` as `phase`.
    pub fn run<T>(&mut self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let name = phase.name();
        let span = tracing::info_span!("phase", name);
        let _entered = span.enter();
        self.sample_memory();
        let start = Instant::now();
        let out = f();
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.sample_memory();
        tracing::info!(phase = name, ms, peak_mem = self.peak_mem, "phase done");
        self.record(phase, ms);
        out
    }

    /// Notes the memory in use now, if `/proc/meminfo` is readable.
    pub fn sample_memory(&mut self) {
        if let Some(used) = mem_used_now() {
            self.peak_mem = self.peak_mem.max(used);
        }
    }

    /// The most memory in use seen at a phase boundary (bytes; 0 if never read).
    pub fn peak_mem_bytes(&self) -> u64 {
        self.peak_mem
    }

    /// Records a duration measured elsewhere (added to what the phase took before).
    pub fn record(&mut self, phase: Phase, ms: u64) {
        self.record_named(phase.name(), ms);
    }

    /// Records a duration under a name read from elsewhere (a phase of the other kernel's).
    pub fn record_named(&mut self, name: &str, ms: u64) {
        if !self.done.contains_key(name) {
            self.order.push(name.to_string());
        }
        *self.done.entry(name.to_string()).or_default() += ms;
    }

    /// Sets a phase's duration as read from elsewhere (the old kernel's, carried over),
    /// replacing what was there.
    pub fn set_named(&mut self, name: &str, ms: u64) {
        if !self.done.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.done.insert(name.to_string(), ms);
    }

    /// The recorded durations.
    pub fn map(&self) -> &BTreeMap<String, u64> {
        &self.done
    }

    /// Phase names in the order they first ran.
    pub fn order(&self) -> &[String] {
        &self.order
    }
}

/// A field of a `/proc/meminfo` text (`key` without the colon), in bytes.
pub fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// `MemTotal - MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_used_bytes(meminfo: &str) -> Option<u64> {
    Some(
        meminfo_field(meminfo, "MemTotal")?.saturating_sub(meminfo_field(meminfo, "MemAvailable")?),
    )
}

/// `MemTotal - MemAvailable` of this machine now, in bytes.
pub fn mem_used_now() -> Option<u64> {
    mem_used_bytes(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_in_use_is_total_minus_available() {
        let text = "MemTotal:        2000 kB\nMemFree:          100 kB\nMemAvailable:     500 kB\n";
        assert_eq!(mem_used_bytes(text), Some(1500 * 1024));
        assert_eq!(mem_used_bytes("MemTotal: 10 kB\n"), None);
    }

    #[test]
    fn phases_keep_their_order_and_the_peak_memory() {
        let mut phases = Phases::default();
        phases.run(Phase::Restore, || ());
        phases.run(Phase::Check, || ());
        phases.record(Phase::Restore, 5);
        assert_eq!(phases.order(), ["restore", "check"]);
        assert!(phases.map()["restore"] >= 5);
        assert!(phases.peak_mem_bytes() > 0, "/proc/meminfo read");
    }
}
