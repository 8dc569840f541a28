//! Phase timings of an update. Each phase runs inside a `tracing` span named `phase` with the
//! phase's name, and its duration is recorded here for the report and the benchmark, together
//! with the machine's memory in use (`MemTotal - MemAvailable`) at the start and end of each
//! phase: the update's peak lies at a phase boundary (the map and the loaded kernel segments
//! only grow until the jump).

use std::collections::BTreeMap;
use std::time::Instant;

/// Durations of the phases run so far, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    done: BTreeMap<String, u64>,
    order: Vec<String>,
    peak_mem: u64,
}

impl Phases {
    /// Runs `f` as phase `name`.
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let span = tracing::info_span!("phase", name);
        let _entered = span.enter();
        self.sample_memory();
        let start = Instant::now();
        let out = f();
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.sample_memory();
        tracing::info!(phase = name, ms, peak_mem = self.peak_mem, "phase done");
        self.record(name, ms);
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

    /// Records a duration measured elsewhere.
    pub fn record(&mut self, name: &str, ms: u64) {
        if !self.done.contains_key(name) {
            self.order.push(name.to_string());
        }
        *self.done.entry(name.to_string()).or_default() += ms;
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
        phases.run("b", || ());
        phases.run("a", || ());
        phases.record("b", 5);
        assert_eq!(phases.order(), ["b", "a"]);
        assert!(phases.map()["b"] >= 5);
        assert!(phases.peak_mem_bytes() > 0, "/proc/meminfo read");
    }
}
