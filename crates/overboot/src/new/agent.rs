//! What the agent does to the new kernel's machine, behind one narrow trait, so that its
//! decisions (a preserved pid taken, which failure is reported, the rollback record, the lazy
//! restore's fallback) are unit-tested without root or QEMU (`tests/agent_decisions.rs`).
//! [`HostAgent`] is the real machine. Reading and checking the map itself is not behind it:
//! the tests write real maps in temporary directories.

use std::path::Path;

use overboot_handover::{ClockReadings, HandoverError, PreservedTree};

use super::lazy::Daemon;
use super::nudge::{NudgeError, Nudged};
use super::restore::{Gate, TreeJob, TreeResult};
use crate::host::network::{NetworkError, NetworkState};

/// The side effects of the agent.
pub trait Agent {
    /// CLOCK_REALTIME, CLOCK_MONOTONIC and CLOCK_BOOTTIME now.
    fn clocks(&mut self) -> ClockReadings;
    /// The name of process `pid` in this kernel, if one has it.
    fn process_name(&mut self, pid: i32) -> Option<String>;
    /// New processes of this boot get pids above `highest` from now on (best effort).
    fn reserve_pids(&mut self, highest: i32);
    /// Whether process `pid` runs.
    fn alive(&mut self, pid: i32) -> bool;
    /// The running kernel's release.
    fn release(&mut self) -> String;
    /// Loads the lock tables, then brings up the interfaces with their addresses and routes.
    fn apply_network(&mut self, state: &NetworkState) -> Result<(), NetworkError>;
    /// Lets new connections in again (every socket is back).
    fn release_network(&mut self, state: &NetworkState);
    /// Starts the page server of a lazy tree (the map at `map`); `None` when it cannot serve
    /// (the tree is then restored whole).
    fn start_page_server(&mut self, job: &TreeJob, map: &Path) -> Option<Daemon>;
    /// Restores every job at once, all or nothing (see [`super::restore::restore_all`]).
    fn restore_all(
        &mut self,
        jobs: &[TreeJob],
        daemons: Vec<Option<Daemon>>,
        gate: Option<Gate<'_>>,
        on_first_arrival: &(dyn Fn() + Sync),
    ) -> (Vec<TreeResult>, Option<Result<(), HandoverError>>);
    /// Makes the peers of a restored tree's connections resend now.
    fn nudge(&mut self, pids: &[i32]) -> Result<Nudged, NudgeError>;
    /// Further rounds for the peers still silent, once the update is done.
    fn follow_up(&mut self, nudged: &[(&[i32], Nudged)]);
    /// The time namespace of process `pid`.
    fn time_namespace(&mut self, pid: i32) -> Option<String>;
    /// Records the restored trees of systemd units, so their units adopt them.
    fn record_units(&mut self, work_dir: &Path, trees: &[PreservedTree]);
    /// After a rollback: the machine still needs the new kernel (`/run/reboot-required`, as
    /// Debian's packages say so), and the update stays pending.
    fn mark_reboot_required(&mut self);
}

/// The real machine.
#[derive(Debug, Default)]
pub struct HostAgent;

impl Agent for HostAgent {
    fn clocks(&mut self) -> ClockReadings {
        crate::host::proc::read_clocks()
    }

    fn process_name(&mut self, pid: i32) -> Option<String> {
        crate::host::proc::comm_of(pid)
    }

    fn reserve_pids(&mut self, highest: i32) {
        if let Err(e) = crate::host::proc::reserve_pids(highest) {
            tracing::warn!(highest, error = %e, "cannot keep new processes above the preserved pids");
        }
    }

    fn alive(&mut self, pid: i32) -> bool {
        crate::host::proc::alive(pid)
    }

    fn release(&mut self) -> String {
        crate::host::proc::release()
    }

    fn apply_network(&mut self, state: &NetworkState) -> Result<(), NetworkError> {
        crate::host::network::apply(state)
    }

    fn release_network(&mut self, state: &NetworkState) {
        crate::host::network::release(state);
    }

    fn start_page_server(&mut self, job: &TreeJob, map: &Path) -> Option<Daemon> {
        std::env::current_exe()
            .map_err(|source| super::lazy::LazyError::Spawn {
                shell: "/proc/self/exe".into(),
                source,
            })
            .and_then(|program| super::lazy::start(&program, &job.images, map))
            .map_err(|e| {
                let error = overboot_checkpoint::error_chain(&e);
                tracing::warn!(tree = %job.name, %error, "no lazy restore: restoring every page now");
            })
            .ok()
    }

    fn restore_all(
        &mut self,
        jobs: &[TreeJob],
        daemons: Vec<Option<Daemon>>,
        gate: Option<Gate<'_>>,
        on_first_arrival: &(dyn Fn() + Sync),
    ) -> (Vec<TreeResult>, Option<Result<(), HandoverError>>) {
        super::restore::restore_all(jobs, daemons, gate, on_first_arrival)
    }

    fn nudge(&mut self, pids: &[i32]) -> Result<Nudged, NudgeError> {
        super::nudge::nudge_tree(pids)
    }

    fn follow_up(&mut self, nudged: &[(&[i32], Nudged)]) {
        super::nudge::follow_up(nudged);
    }

    fn time_namespace(&mut self, pid: i32) -> Option<String> {
        std::fs::read_link(format!("/proc/{pid}/ns/time"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned())
    }

    fn mark_reboot_required(&mut self) {
        if let Err(e) = std::fs::write("/run/reboot-required", "*** System restart required ***\n")
        {
            tracing::warn!(error = %e, "cannot write /run/reboot-required");
        }
    }

    fn record_units(&mut self, work_dir: &Path, trees: &[PreservedTree]) {
        if let Err(e) = crate::host::systemd::write_records(work_dir, trees) {
            tracing::error!(error = %e, "cannot record the restored units: they will not adopt their processes");
        }
    }
}
