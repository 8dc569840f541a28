//! Phase timings of an update. Each phase runs inside a `tracing` span named `phase` with the
//! phase's name, and its duration is recorded here for the report and the benchmark.

use std::collections::BTreeMap;
use std::time::Instant;

/// Durations of the phases run so far, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    done: BTreeMap<String, u64>,
    order: Vec<String>,
}

impl Phases {
    /// Runs `f` as phase `name`.
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let span = tracing::info_span!("phase", name);
        let _entered = span.enter();
        let start = Instant::now();
        let out = f();
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(phase = name, ms, "phase done");
        self.record(name, ms);
        out
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
