//! `overboot plan`: every check `update` makes before freezing — the same list
//! ([`super::check`], in collect-all mode), so `plan` refuses exactly what `update` would —
//! without changing anything; and for each target tree what it holds, whether it can be
//! carried and, if not, exactly why; the handover size and whether memory suffices for it; an
//! estimated blackout; and the live patches applied to the running kernel (they do not survive
//! a kernel switch).

use std::path::{Path, PathBuf};

use super::check::{self, Checked};
use super::effects::Effects;
use super::options::UpdateOptions;
use crate::host::store::Handover;
use crate::model::report::Report;

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
    pub tree: Option<crate::host::target::TreeInfo>,
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
    /// What the checks cannot vouch for (e.g. a kernel newer than the checkpoint engine's
    /// table of known breakages): `update` goes ahead and says so in its report.
    pub warnings: Vec<String>,
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
    pub ram_stores: Vec<crate::host::store::RamStore>,
    /// Which store to hand the map over with, or how to reserve RAM for one.
    pub handover_advice: String,
    /// The store this update would use (`initrd` or `dir:PATH`) and who chose it, or why the
    /// default is this one.
    pub store: String,
    /// The config file the options were read from (`None`: none); the CLI sets it.
    pub config: Option<PathBuf>,
}

/// Builds the plan for `options` from the checks `update` would make.
pub fn make(effects: &mut dyn Effects, options: &UpdateOptions) -> Plan {
    let Checked { findings, refusals } = check::collect_all(effects, options);
    let problems: Vec<String> = refusals
        .iter()
        .map(|e| overboot_checkpoint::error_chain(e))
        .collect();
    let mut trees = Vec::new();
    for target in &options.preserve {
        let name = target.to_string();
        for tree in findings.trees.iter().filter(|t| t.target == *target) {
            trees.push(TreePlan {
                target: name.clone(),
                ok: true,
                reason: None,
                tree: Some(tree.clone()),
                handover_bytes: super::estimate::estimate_handover(tree),
            });
        }
        for (_, reason) in findings.target_refusals.iter().filter(|(t, _)| *t == name) {
            trees.push(TreePlan {
                target: name.clone(),
                ok: false,
                reason: Some(reason.clone()),
                tree: None,
                handover_bytes: 0,
            });
        }
    }
    let handover_bytes = findings.handover_bytes;
    let (memory_needed_bytes, memory_available_bytes) = findings
        .memory
        .unwrap_or((0, crate::host::proc::meminfo("MemAvailable")));
    let engine = match &findings.engine {
        Some(version) => format!("criu {version}"),
        None => "cannot run (see the problems)".into(),
    };
    let ram_stores = crate::host::store::find(
        Path::new("/sys/block"),
        &std::fs::read_to_string("/proc/mounts").unwrap_or_default(),
    );
    // Without reserved RAM a systemd host's map goes to its default directory store.
    let fallback = effects
        .systemd_host()
        .booted
        .then(|| crate::host::systemd::default_store(&options.state_dir));
    let handover_advice =
        crate::host::store::advice(&ram_stores, handover_bytes, fallback.as_deref());
    Plan {
        ok: problems.is_empty(),
        problems,
        warnings: findings.warnings.clone(),
        from: crate::host::proc::release(),
        to: findings.image.as_ref().map(|i| i.release.clone()),
        kexec: kexec_state(),
        engine,
        trees,
        handover_bytes,
        memory_needed_bytes,
        memory_available_bytes,
        estimated_blackout_ms: estimated_blackout(&options.state_dir, handover_bytes),
        livepatches: livepatches(),
        ram_stores,
        handover_advice,
        store: match &findings.store {
            Some(fallback) => format!(
                "{} (the default directory has no room for the map)",
                store_name(fallback)
            ),
            None => format!("{} ({})", store_name(&options.handover), options.store_why),
        },
        config: None,
    }
}

/// A store as `--handover` names it.
fn store_name(handover: &Handover) -> String {
    match handover {
        Handover::Initrd => "initrd".into(),
        Handover::Dir(dir) => format!("dir:{}", dir.display()),
    }
}

/// Root, `kexec_load_disabled` and lockdown, for people.
fn kexec_state() -> String {
    let host = overboot_kexec::host_state();
    format!(
        "root={} kexec_load_disabled={} lockdown={}",
        host.root,
        host.disabled.map_or("unknown".into(), |d| d.to_string()),
        host.lockdown.as_deref().unwrap_or("none")
    )
}

/// From the last update on this machine: its kernel's boot, plus the rest scaled by the bytes
/// handed over.
fn estimated_blackout(state_dir: &Path, handover_bytes: u64) -> Option<u64> {
    let last = Report::last(state_dir).ok()?;
    let boot = last
        .phases
        .get(crate::model::phases::Phase::NewKernelBoot.name())
        .copied()?;
    let scaled = u128::from(last.blackout_ms.saturating_sub(boot)) * u128::from(handover_bytes)
        / u128::from(last.handover_bytes.max(1));
    Some(boot + u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// The running kernel's live patches, with their state.
fn livepatches() -> Vec<String> {
    overboot_livepatch::runtime::list(Path::new("/sys/kernel/livepatch"))
        .map(|patches| {
            patches
                .into_iter()
                .map(|p| format!("{} ({})", p.name, p.state()))
                .collect()
        })
        .unwrap_or_default()
}

impl Plan {
    /// A table for people.
    pub fn human(&self) -> String {
        let mut out = format!(
            "plan: {} → {}\n  config: {}\n  kexec: {}\n  engine: {}\n",
            self.from,
            self.to.as_deref().unwrap_or("(kernel refused)"),
            self.config
                .as_ref()
                .map_or_else(|| "none".into(), |p| p.display().to_string()),
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
        out.push_str(&format!("  store: {}\n", self.store));
        out.push_str(&format!("  reserved RAM: {}\n", self.handover_advice));
        if !self.livepatches.is_empty() {
            out.push_str(&format!(
                "  live patches of the running kernel (not carried): {}\n",
                self.livepatches.join(", ")
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("  WARNING: {w}\n"));
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
