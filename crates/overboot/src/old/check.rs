//! Every check `update` makes before anything is frozen, as one list that serves both verbs:
//! `update` stops at the first refusal ([`first_refusal`]), `plan` runs the whole list and
//! shows every refusal ([`collect_all`]). Neither freezes, stops or writes anything (a
//! directory store's place is created by `update` only).
//!
//! ```text
//!  targets given ─► no lazy server still serving ─► kexec allowed ─► kernel image ─► initrd
//!    ─► targets (each tree) ─► systemd host: directory store, generator, no shutdown
//!       inhibitor ─► store: room
//!       (directory) or memory (initrd) ─► network lock ─► checkpoint engine, and its version
//!       against both kernels ([`super::compat`]) ─► lazy pages
//! ```

use overboot_kexec::KernelImage;

use super::effects::Effects;
use super::error::UpdateError;
use super::estimate::{estimate_handover, initrd_handover_memory};
use super::options::UpdateOptions;
use crate::host::store::Handover;
use crate::host::target::TreeInfo;

/// How far the list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stop at the first refusal (`update`).
    FirstRefusal,
    /// Run every check and collect every refusal (`plan`).
    CollectAll,
}

/// What the checks found, refusals aside.
#[derive(Debug, Default)]
pub struct Findings {
    /// The new kernel, when it passed inspection.
    pub image: Option<KernelImage>,
    /// The trees of every target that could be inspected, in order.
    pub trees: Vec<TreeInfo>,
    /// Per target, in the order given: the refusal of a target that could not be inspected.
    pub target_refusals: Vec<(String, String)>,
    /// The checkpoint engine's version, when it runs.
    pub engine: Option<String>,
    /// Estimated bytes of the map.
    pub handover_bytes: u64,
    /// With the initrd store: memory needed beyond what is in use now, and what is available.
    pub memory: Option<(u64, u64)>,
    /// What is not known to work (kernels newer than the engine's table): said, not refused.
    pub warnings: Vec<String>,
    /// The store the update uses when it is not the one in the options: a default directory
    /// store without room for the map falls back to the initrd.
    pub store: Option<Handover>,
}

/// The list's outcome.
#[derive(Debug, Default)]
pub struct Checked {
    /// What was found.
    pub findings: Findings,
    /// Every refusal, in the list's order (at most one in [`Mode::FirstRefusal`]).
    pub refusals: Vec<UpdateError>,
}

impl Checked {
    fn refuse(&mut self, mode: Mode, error: UpdateError) -> Result<(), ()> {
        self.refusals.push(error);
        match mode {
            Mode::FirstRefusal => Err(()),
            Mode::CollectAll => Ok(()),
        }
    }
}

/// What `update` goes on with once every check passed.
#[derive(Debug)]
pub struct Passed {
    /// The new kernel.
    pub image: KernelImage,
    /// The trees to carry.
    pub trees: Vec<TreeInfo>,
    /// The checkpoint engine's version.
    pub engine: String,
    /// What is not known to work, for the report.
    pub warnings: Vec<String>,
    /// The store to hand the map over with (the options', or the initrd a default directory
    /// store without room fell back to).
    pub store: Handover,
}

/// `update`'s checks: what it goes on with when all pass, the first refusal otherwise.
pub fn first_refusal(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
) -> Result<Passed, UpdateError> {
    let mut checked = run(effects, options, Mode::FirstRefusal);
    if let Some(error) = checked.refusals.pop() {
        return Err(error);
    }
    let Findings {
        image,
        trees,
        engine,
        warnings,
        store,
        ..
    } = checked.findings;
    match (image, engine) {
        (Some(image), Some(engine)) => Ok(Passed {
            image,
            trees,
            engine,
            warnings,
            store: store.unwrap_or_else(|| options.handover.clone()),
        }),
        // Every check that leaves these empty refuses.
        _ => Err(UpdateError::NoTargets),
    }
}

/// `plan`'s checks: the whole list, every refusal.
pub fn collect_all(effects: &mut dyn Effects, options: &UpdateOptions) -> Checked {
    run(effects, options, Mode::CollectAll)
}

/// Runs the list.
pub fn run(effects: &mut dyn Effects, options: &UpdateOptions, mode: Mode) -> Checked {
    let mut checked = Checked::default();
    let _ = run_into(effects, options, mode, &mut checked);
    checked
}

fn run_into(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    mode: Mode,
    checked: &mut Checked,
) -> Result<(), ()> {
    if options.preserve.is_empty() {
        checked.refuse(mode, UpdateError::NoTargets)?;
    }
    // CRIU cannot dump a task whose memory a lazy restore still fills.
    if let Some((tree, pid)) = effects.lazy_still_serving(&options.work_dir) {
        checked.refuse(mode, UpdateError::LazyStillServing { tree, pid })?;
    }
    kernel(effects, options, mode, checked)?;
    targets(effects, options, mode, checked)?;
    systemd(effects, options, mode, checked)?;
    // logind's block-mode shutdown inhibitors (none where logind does not run).
    if !options.ignore_inhibitors {
        let inhibitors = effects.shutdown_inhibitors();
        if !inhibitors.is_empty() {
            checked.refuse(mode, UpdateError::Inhibited { inhibitors })?;
        }
    }
    store(effects, options, mode, checked)?;
    if options.network_lock {
        if let Err(e) = effects.check_network(&checked.findings.trees) {
            checked.refuse(mode, UpdateError::NetworkCheck(e))?;
        }
    }
    match effects.probe_engine() {
        Ok(version) => {
            engine_against_kernels(effects, &version, mode, checked)?;
            checked.findings.engine = Some(version);
        }
        Err(e) => checked.refuse(mode, UpdateError::Engine(Box::new(e)))?,
    }
    if options.lazy_restore && !effects.lazy_pages() {
        checked.refuse(mode, UpdateError::LazyUnsupported)?;
    }
    if options.lazy_restore {
        if let Some(engine) = checked.findings.engine.as_deref() {
            if !super::compat::lazy_restore_verified(engine) {
                let engine = engine.to_string();
                checked.refuse(mode, UpdateError::LazyEngine { engine })?;
            }
        }
    }
    Ok(())
}

/// kexec allowed, the image a kernel it can load, the initrd there.
fn kernel(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    mode: Mode,
    checked: &mut Checked,
) -> Result<(), ()> {
    let kernel_err = |source| UpdateError::Kernel {
        path: options.kernel.clone(),
        source,
    };
    if let Err(e) = effects.kexec_preflight() {
        checked.refuse(mode, kernel_err(e))?;
    }
    match effects.inspect_kernel(&options.kernel) {
        Ok(image) => checked.findings.image = Some(image),
        Err(e) => checked.refuse(mode, kernel_err(e))?,
    }
    if let Some(initrd) = &options.initrd {
        if !initrd.is_file() {
            checked.refuse(mode, UpdateError::MissingInitrd(initrd.clone()))?;
        }
    }
    Ok(())
}

/// Every target's trees: all at once for `update`, one target at a time for `plan`, so that
/// each refusal is listed with its target.
fn targets(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    mode: Mode,
    checked: &mut Checked,
) -> Result<(), ()> {
    if mode == Mode::FirstRefusal {
        match effects.inspect_targets(&options.preserve) {
            Ok(trees) => checked.findings.trees = trees,
            Err(e) => checked.refuse(mode, UpdateError::Target(e))?,
        }
        return Ok(());
    }
    for target in &options.preserve {
        match effects.inspect_targets(std::slice::from_ref(target)) {
            Ok(trees) => checked.findings.trees.extend(trees),
            Err(e) => {
                checked
                    .findings
                    .target_refusals
                    .push((target.to_string(), e.to_string()));
                checked.refuse(mode, UpdateError::Target(e))?;
            }
        }
    }
    Ok(())
}

/// With systemd as PID 1 the map goes to a directory store (the initrd's files are gone after
/// switch_root), and only overboot's generator restores anything in the new boot.
fn systemd(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    mode: Mode,
    checked: &mut Checked,
) -> Result<(), ()> {
    let systemd = effects.systemd_host();
    if !systemd.booted {
        return Ok(());
    }
    if options.handover == Handover::Initrd {
        let default = crate::host::systemd::default_store(&options.state_dir);
        checked.refuse(
            mode,
            UpdateError::SystemdInitrd {
                default: format!("dir:{}", default.display()),
            },
        )?;
    }
    if systemd.generator.is_none() {
        checked.refuse(mode, UpdateError::NoGenerator)?;
    }
    Ok(())
}

/// Room for the map: in the directory store's file system, or in memory for the initrd store.
fn store(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    mode: Mode,
    checked: &mut Checked,
) -> Result<(), ()> {
    let estimate: u64 = checked.findings.trees.iter().map(estimate_handover).sum();
    checked.findings.handover_bytes = estimate;
    if let Handover::Dir(dir) = &options.handover {
        // The estimate plus a tenth for file system overhead and growth until the freeze.
        let create = mode == Mode::FirstRefusal;
        match crate::host::store::check_dir(dir, estimate + estimate / 10, create) {
            Ok(()) => return Ok(()),
            // A store nobody named, on a host whose new boot can take the map from its
            // initrd (not systemd's: its initrd is gone after switch_root): the initrd.
            Err(e) if options.store_default && !effects.systemd_host().booted => {
                checked.findings.warnings.push(format!(
                    "the default store {} cannot hold the map ({}): it rides in the new \
                     kernel's initrd instead",
                    dir.display(),
                    e.reason
                ));
                checked.findings.store = Some(Handover::Initrd);
            }
            Err(e) => return checked.refuse(mode, UpdateError::HandoverDir(e)),
        }
    }
    // The initrd store (asked for, or the fallback): memory for the map's copies.
    let initrd = options
        .initrd
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let kernel = checked.findings.image.as_ref().map_or(0, |i| i.size);
    let needed = initrd_handover_memory(estimate, initrd, kernel);
    let available = effects.memory_available();
    checked.findings.memory = Some((needed, available));
    if needed > available {
        checked.refuse(mode, UpdateError::Memory { needed, available })?;
    }
    Ok(())
}

/// The engine's version against the running kernel (the dump) and the new one (the restore).
fn engine_against_kernels(
    effects: &mut dyn Effects,
    version: &str,
    mode: Mode,
    checked: &mut Checked,
) -> Result<(), ()> {
    let Some(target) = checked.findings.image.as_ref().map(|i| i.release.clone()) else {
        return Ok(());
    };
    let running = effects.running_release();
    let tcp = checked
        .findings
        .trees
        .iter()
        .any(|t| t.fds.keys().any(|k| k.starts_with("socket:tcp")));
    let verdict = super::compat::judge(version, &running, &target, tcp);
    checked.findings.warnings.extend(verdict.warnings);
    for refusal in verdict.refusals {
        checked.refuse(mode, UpdateError::EngineTooOld(Box::new(refusal)))?;
    }
    Ok(())
}
