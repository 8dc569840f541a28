//! Small readings of the running kernel, in one place: its release, whether a process exists
//! and its name, `/proc/meminfo` fields, the clocks, the boot id.

use overboot_handover::ClockReadings;

/// The running kernel's release (`uname -r`; empty if unreadable).
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`; empty if unreadable).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether process `pid` exists (0 and negative pids name groups, never one process).
pub fn alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Makes this boot hand out pids above `highest` from now on (`/proc/sys/kernel/ns_last_pid`),
/// so that the preserved trees' pids, all at most `highest`, stay free for their restore while
/// the boot goes on around it. Never lowers the counter. The processes already running keep
/// theirs (the agent checks those); a pid space that wraps around can still reach them.
pub fn reserve_pids(highest: i32) -> std::io::Result<()> {
    const LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    let last: i32 = std::fs::read_to_string(LAST_PID)?
        .trim()
        .parse()
        .map_err(std::io::Error::other)?;
    if last >= highest {
        return Ok(());
    }
    std::fs::write(LAST_PID, highest.to_string())
}

/// Every process's pid, from the numbered entries of `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The name (`comm`) of process `pid`, if it exists.
pub fn comm_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A `/proc/meminfo` field in bytes (0 when unreadable).
pub fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| crate::model::phases::meminfo_field(&text, key))
        .unwrap_or(0)
}

fn ns(ts: nix::sys::time::TimeSpec) -> u64 {
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// Reads a clock in nanoseconds (0 if unavailable).
pub fn clock_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock).map(ns).unwrap_or(0)
}

/// CLOCK_REALTIME, CLOCK_MONOTONIC and CLOCK_BOOTTIME now.
pub fn read_clocks() -> ClockReadings {
    use nix::time::ClockId;
    ClockReadings {
        realtime_ns: clock_ns(ClockId::CLOCK_REALTIME),
        monotonic_ns: clock_ns(ClockId::CLOCK_MONOTONIC),
        boottime_ns: clock_ns(ClockId::CLOCK_BOOTTIME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_named_and_groups_are_not_processes() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(alive(me));
        assert!(comm_of(me).is_some_and(|c| !c.is_empty()));
        assert!(!alive(0) && !alive(-1));
        assert!(!release().is_empty());
        let clocks = read_clocks();
        assert!(clocks.realtime_ns > 0 && clocks.boottime_ns >= clocks.monotonic_ns);
    }
}
