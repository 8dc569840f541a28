//! One run of one method at one size: what it knows (the lab, the scenario, the size, the
//! options that apply), what a method measured, and what the methods share on the guest: the
//! data set, the kernel boot trace and the memory in use.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use super::dataset::{Dataset, DatasetCheck};
use super::record::Method;
use super::sizing::guest_memory_mib;
use crate::guest::Guest;
use crate::incr::{IncrConfig, IncrLoop};
use crate::lab::{Lab, Scenario};
use crate::service::{self, ServiceError, CMD};

/// One run of one method at one size, with the options that apply to it.
pub(super) struct RunContext<'a> {
    pub(super) lab: &'a Lab,
    pub(super) scenario: &'a Scenario,
    pub(super) to: &'a str,
    pub(super) release_to: &'a str,
    pub(super) dataset_mib: u32,
    pub(super) run: u32,
    pub(super) out: &'a Path,
    pub(super) pre_copy_rounds: Option<u32>,
    pub(super) lazy_restore: bool,
    pub(super) criu_log_level: Option<u8>,
    pub(super) boot_trace: bool,
}

/// What a method measured.
#[derive(Default)]
pub(super) struct Measured {
    pub(super) ok: bool,
    pub(super) blackout_ms: u64,
    pub(super) recovery_ms: u64,
    pub(super) phases: BTreeMap<String, u64>,
    pub(super) handover_bytes: u64,
    pub(super) peak_mem_bytes: u64,
    pub(super) connection_survived: Option<bool>,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) dataset: Option<DatasetCheck>,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) pre_copy_bytes: Vec<u64>,
    pub(super) frozen_dump_bytes: u64,
    pub(super) memory_back_ms: Option<u64>,
    pub(super) slowest_fault_ms: Option<f64>,
    pub(super) client_error: Option<String>,
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Timeout for bulk Redis I/O (writing or checking gigabytes under TCG).
pub(super) const BULK: Duration = Duration::from_secs(1800);

/// The new kernel's log lines a boot trace keeps: everything but initcall_debug's `calling`
/// lines and the initcalls that returned within a millisecond.
const BOOT_TRACE_DMESG: &str =
    "dmesg | awk '/ calling / { next } /returned .* after [0-9]+ usecs/ && $(NF-1) < 1000 { next } { print }'";

/// What every method that carries Redis starts from: the guest on A with Redis holding the
/// data set, and the client answered steadily on its one connection.
pub(super) struct Started {
    pub(super) rg: service::RedisGuest,
    pub(super) dataset: Dataset,
    pub(super) incr: IncrLoop,
}

impl RunContext<'_> {
    pub(super) fn dataset(&self) -> Dataset {
        Dataset::of_mib(self.dataset_mib)
    }

    /// Boots A with `pmem_mib` of reserved RAM (if any), writes the data set into Redis and
    /// starts the INCR client; `log` gets the console's path.
    pub(super) fn start_redis(
        &self,
        pmem_mib: Option<u32>,
        log: &mut String,
    ) -> Result<Started, ServiceError> {
        let boot = service::RedisBoot {
            pmem_mib,
            append: self.boot_trace_append().into(),
            ..service::RedisBoot::default()
        };
        let memory = guest_memory_mib(self.dataset_mib);
        let rg = service::boot_redis_with(self.lab, self.scenario, "A", memory, &boot)?;
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
        Ok(Started { rg, dataset, incr })
    }

    /// What `--boot-trace` adds to the kernel command line.
    pub(super) fn boot_trace_append(&self) -> &'static str {
        if self.boot_trace {
            "initcall_debug"
        } else {
            ""
        }
    }

    /// With `--boot-trace`, saves the new kernel's log (initcalls of 1 ms or more, every other
    /// line) as `dmesg-<method>-<MiB>-<run>.txt` in the output directory. A diagnostic: a
    /// failure to read or write it is reported, not fatal.
    pub(super) fn save_boot_trace(&self, guest: &mut Guest, method: Method) {
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
pub(super) fn mem_used(guest: &mut Guest) -> Result<u64, ServiceError> {
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
