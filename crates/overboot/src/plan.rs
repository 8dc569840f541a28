//! `overboot plan`: every check `update` makes before freezing, without changing anything, and
//! for each target tree what it holds, whether it can be carried and, if not, exactly why; the
//! handover size and whether memory suffices for it; an estimated blackout; and the live
//! patches applied to the running kernel (they do not survive a kernel switch).

use std::path::Path;

use overboot_kexec::KernelImage;

use crate::report::{state_dir, Report};
use crate::target::{self, Target, TreeInfo};

/// Per-process overhead of a CRIU image set beyond its memory pages (metadata, log), bytes.
const IMAGE_OVERHEAD_PER_PROCESS: u64 = 512 * 1024;

/// One tree in the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TreePlan {
    /// The target as given.
    pub target: String,
    /// Whether it can be carried.
    pub ok: bool,
    /// Why not.
    pub reason: Option<String>,
    /// What it holds, when it could be inspected.
    pub tree: Option<TreeInfo>,
    /// Estimated bytes of its images in the Save State Map.
    pub handover_bytes: u64,
}

/// The whole plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// Whether `update` would go ahead.
    pub ok: bool,
    /// Every reason it would not.
    pub problems: Vec<String>,
    /// The running kernel's release.
    pub from: String,
    /// The new kernel, when it passed inspection.
    pub to: Option<String>,
    /// Root, `kexec_load_disabled`, lockdown.
    pub kexec: String,
    /// CRIU version, or why it cannot run.
    pub engine: String,
    /// Trees.
    pub trees: Vec<TreePlan>,
    /// Estimated Save State Map size.
    pub handover_bytes: u64,
    /// Memory the switch needs beyond what the trees use now.
    pub memory_needed_bytes: u64,
    /// MemAvailable now.
    pub memory_available_bytes: u64,
    /// Estimated blackout, from the last update on this machine (None without one).
    pub estimated_blackout_ms: Option<u64>,
    /// Live patches of the running kernel (not carried: the new kernel must contain the fixes).
    pub livepatches: Vec<String>,
    /// Reserved-RAM stores (legacy persistent memory) found.
    pub ram_stores: Vec<crate::store::RamStore>,
    /// Which store to hand the map over with, or how to reserve RAM for one.
    pub handover_advice: String,
}

/// Memory the initrd store needs beyond what is in use now, for a map of `map` bytes, a base
/// initrd of `initrd` bytes and a kernel image of `kernel` bytes, with a tenth of margin. On the
/// old kernel, at the peak (inside `kexec_file_load`): the map in the work directory, the initrd
/// copy with the map appended, and the kernel's two copies of that initrd and of the kernel (the
/// file read into a buffer, then copied into the segments). The dumped trees' memory, about
/// `map`, is freed when CRIU ends them. Measured: a 659 MiB map in a 3 GiB guest ran out of
/// memory inside `kexec_file_load`, which this refuses beforehand.
pub fn initrd_handover_memory(map: u64, initrd: u64, kernel: u64) -> u64 {
    let peak = 4 * map + 3 * initrd + 2 * kernel;
    let needed = peak.saturating_sub(map);
    needed + needed / 10
}

/// A `/proc/meminfo` field in bytes (0 when unreadable).
pub fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| crate::phases::meminfo_field(&text, key))
        .unwrap_or(0)
}

/// Bytes of a process's memory CRIU writes: anonymous (incl. private copies of file pages)
/// and swapped pages, from `/proc/<pid>/smaps_rollup`.
fn dumped_memory(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    field("Anonymous") + field("Swap")
}

/// Estimated map bytes for a tree.
pub fn estimate_handover(tree: &TreeInfo) -> u64 {
    let pages: u64 = tree.processes.iter().map(|p| dumped_memory(p.pid)).sum();
    let files: u64 = tree
        .tmpfs_files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let processes = u64::try_from(tree.processes.len()).unwrap_or(0);
    pages + files + processes * IMAGE_OVERHEAD_PER_PROCESS
}

/// Builds the plan. `kernel` is the result of inspecting the new kernel.
pub fn make(
    kernel: Result<KernelImage, overboot_kexec::KexecError>,
    initrd: Option<&Path>,
    targets: &[Target],
    engine: Result<String, String>,
) -> Plan {
    let mut problems = Vec::new();
    let host = overboot_kexec::host_state();
    let kexec = format!(
        "root={} kexec_load_disabled={} lockdown={}",
        host.root,
        host.disabled.map_or("unknown".into(), |d| d.to_string()),
        host.lockdown.as_deref().unwrap_or("none")
    );
    if let Err(e) = overboot_kexec::preflight() {
        problems.push(e.to_string());
    }
    let to = match &kernel {
        Ok(image) => Some(image.release.clone()),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let initrd_bytes = match initrd {
        Some(path) => match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(_) => {
                problems.push(format!("initrd {} does not exist", path.display()));
                0
            }
        },
        None => 0,
    };
    let engine = match engine {
        Ok(version) => format!("criu {version}"),
        Err(reason) => {
            problems.push(format!("CRIU cannot run: {reason}"));
            reason
        }
    };
    let me = nix::unistd::getpid().as_raw();
    let mut trees = Vec::new();
    for t in targets {
        match target::inspect(t, me) {
            Ok(found) => {
                for tree in found {
                    let bytes = estimate_handover(&tree);
                    trees.push(TreePlan {
                        target: t.to_string(),
                        ok: true,
                        reason: None,
                        tree: Some(tree),
                        handover_bytes: bytes,
                    });
                }
            }
            Err(e) => {
                problems.push(e.to_string());
                trees.push(TreePlan {
                    target: t.to_string(),
                    ok: false,
                    reason: Some(e.to_string()),
                    tree: None,
                    handover_bytes: 0,
                });
            }
        }
    }
    if targets.is_empty() {
        problems.push("nothing to preserve: give at least one --preserve".into());
    }
    let handover_bytes: u64 = trees.iter().map(|t| t.handover_bytes).sum();
    let kernel_bytes = kernel.as_ref().map_or(0, |k| k.size);
    let memory_needed_bytes = initrd_handover_memory(handover_bytes, initrd_bytes, kernel_bytes);
    let memory_available_bytes = meminfo("MemAvailable");
    // With systemd as PID 1 the map goes to a directory store (the initrd's files are gone
    // after switch_root), and only overboot's generator restores anything in the new boot.
    let systemd = crate::systemd::Host::detect();
    if systemd.booted && systemd.generator.is_none() {
        problems.push(
            "systemd is PID 1 but overboot's generator is not installed: the new boot would not \
             restore anything (run `overboot systemd install`)"
                .into(),
        );
    }
    if !systemd.booted && memory_needed_bytes > memory_available_bytes {
        problems.push(format!(
            "not enough memory for the handover: {} MiB needed, {} MiB available",
            memory_needed_bytes >> 20,
            memory_available_bytes >> 20
        ));
    }
    let estimated_blackout_ms = Report::last(&state_dir()).ok().and_then(|last| {
        let boot = last.phases.get("new_kernel_boot").copied()?;
        // Everything but the kernel's boot scales with the bytes handed over.
        let scaled = u128::from(last.blackout_ms.saturating_sub(boot)) * u128::from(handover_bytes)
            / u128::from(last.handover_bytes.max(1));
        Some(boot + u64::try_from(scaled).unwrap_or(u64::MAX))
    });
    let livepatches = overboot_livepatch::runtime::list(Path::new("/sys/kernel/livepatch"))
        .map(|patches| {
            patches
                .into_iter()
                .map(|p| format!("{} ({})", p.name, p.state()))
                .collect()
        })
        .unwrap_or_default();
    let ram_stores = crate::store::find(
        Path::new("/sys/block"),
        &std::fs::read_to_string("/proc/mounts").unwrap_or_default(),
    );
    let fallback = systemd
        .booted
        .then(|| crate::systemd::default_store(&state_dir()));
    let handover_advice = crate::store::advice(&ram_stores, handover_bytes, fallback.as_deref());
    Plan {
        ok: problems.is_empty(),
        problems,
        from: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        to,
        kexec,
        engine,
        trees,
        handover_bytes,
        memory_needed_bytes,
        memory_available_bytes,
        estimated_blackout_ms,
        livepatches,
        ram_stores,
        handover_advice,
    }
}

impl Plan {
    /// A table for people.
    pub fn human(&self) -> String {
        let mut out = format!(
            "plan: {} → {}\n  kexec: {}\n  engine: {}\n",
            self.from,
            self.to.as_deref().unwrap_or("(kernel refused)"),
            self.kexec,
            self.engine
        );
        out.push_str(&format!(
            "  {:<14} {:>5} {:>7} {:>9} {:>10}  {}\n",
            "TARGET", "PROCS", "THREADS", "RSS MiB", "MAP MiB", "VERDICT"
        ));
        for t in &self.trees {
            let (procs, threads, rss, fds) =
                t.tree.as_ref().map_or((0, 0, 0, String::new()), |tree| {
                    let fds: Vec<String> =
                        tree.fds.iter().map(|(k, n)| format!("{k}={n}")).collect();
                    (
                        tree.processes.len(),
                        tree.threads(),
                        tree.rss_bytes() >> 20,
                        fds.join(" "),
                    )
                });
            out.push_str(&format!(
                "  {:<14} {:>5} {:>7} {:>9} {:>10}  {}\n",
                t.target,
                procs,
                threads,
                rss,
                t.handover_bytes >> 20,
                t.reason.as_deref().unwrap_or("can be carried")
            ));
            if !fds.is_empty() {
                out.push_str(&format!("  {:<14} fds: {fds}\n", ""));
            }
        }
        out.push_str(&format!(
            "  handover {} MiB; memory needed {} MiB of {} MiB available\n",
            self.handover_bytes >> 20,
            self.memory_needed_bytes >> 20,
            self.memory_available_bytes >> 20
        ));
        out.push_str(&match self.estimated_blackout_ms {
            Some(ms) => format!("  estimated blackout {ms} ms (from the last update here)\n"),
            None => "  estimated blackout: unknown (no earlier update on this machine)\n".into(),
        });
        out.push_str(&format!("  handover store: {}\n", self.handover_advice));
        if !self.livepatches.is_empty() {
            out.push_str(&format!(
                "  live patches of the running kernel (not carried): {}\n",
                self.livepatches.join(", ")
            ));
        }
        if self.ok {
            out.push_str("  verdict: update can proceed\n");
        } else {
            for p in &self.problems {
                out.push_str(&format!("  PROBLEM: {p}\n"));
            }
            out.push_str("  verdict: update would fail\n");
        }
        out
    }
}
