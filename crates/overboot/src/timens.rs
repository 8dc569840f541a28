//! Clocks of restored trees. A process that moves to a new kernel would see CLOCK_MONOTONIC
//! and CLOCK_BOOTTIME restart near zero. The resume agent therefore restores every tree inside
//! a new time namespace whose offsets make both clocks continue from their values at freeze,
//! advanced by the blackout (measured with CLOCK_REALTIME, which the new kernel reads from the
//! RTC). CLOCK_REALTIME itself is not namespaced and is simply right.
//!
//! `unshare(CLONE_NEWTIME)` puts only the agent's future children (CRIU, and so the restored
//! trees) into the namespace; its offsets are written to `/proc/self/timens_offsets` before the
//! first child is created.

use std::path::PathBuf;

use overboot_handover::ClockReadings;

/// Errors setting up the time namespace.
#[derive(Debug, thiserror::Error)]
pub enum TimensError {
    /// unshare(CLONE_NEWTIME) failed (kernel without CONFIG_TIME_NS?).
    #[error("cannot create a time namespace")]
    Unshare(#[source] nix::Error),
    /// Writing the offsets failed.
    #[error("cannot write {path}")]
    Offsets {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Offsets (ns) to apply to CLOCK_MONOTONIC and CLOCK_BOOTTIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffsets {
    /// CLOCK_MONOTONIC offset.
    pub monotonic_ns: i64,
    /// CLOCK_BOOTTIME offset.
    pub boottime_ns: i64,
}

fn signed(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

/// The offsets that make the clocks continue from `frozen` plus the elapsed real time.
pub fn offsets(frozen: &ClockReadings, now: &ClockReadings) -> ClockOffsets {
    let elapsed = signed(now.realtime_ns.saturating_sub(frozen.realtime_ns));
    ClockOffsets {
        monotonic_ns: signed(frozen.monotonic_ns) + elapsed - signed(now.monotonic_ns),
        boottime_ns: signed(frozen.boottime_ns) + elapsed - signed(now.boottime_ns),
    }
}

/// `timens_offsets` text: `<clock> <secs> <nanos>` with nanos in 0..1e9.
fn offsets_text(offsets: &ClockOffsets) -> String {
    let line = |name: &str, ns: i64| {
        let secs = ns.div_euclid(1_000_000_000);
        let nanos = ns.rem_euclid(1_000_000_000);
        format!("{name} {secs} {nanos}\n")
    };
    line("monotonic", offsets.monotonic_ns) + &line("boottime", offsets.boottime_ns)
}

/// Creates the time namespace for the agent's children with these offsets.
pub fn enter_for_children(offsets: &ClockOffsets) -> Result<(), TimensError> {
    let flags = nix::sched::CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
    nix::sched::unshare(flags).map_err(TimensError::Unshare)?;
    let path = PathBuf::from("/proc/self/timens_offsets");
    std::fs::write(&path, offsets_text(offsets))
        .map_err(|source| TimensError::Offsets { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_continue_forward_by_the_elapsed_time() {
        let frozen = ClockReadings {
            realtime_ns: 1_000_000_000_000,
            monotonic_ns: 50_000_000_000,
            boottime_ns: 51_000_000_000,
        };
        let now = ClockReadings {
            realtime_ns: 1_000_000_000_000 + 7_000_000_000,
            monotonic_ns: 3_000_000_000,
            boottime_ns: 3_000_000_000,
        };
        let o = offsets(&frozen, &now);
        assert_eq!(now.monotonic_ns as i64 + o.monotonic_ns, 57_000_000_000);
        assert_eq!(now.boottime_ns as i64 + o.boottime_ns, 58_000_000_000);
    }

    #[test]
    fn negative_offsets_keep_nanos_positive() {
        let text = offsets_text(&ClockOffsets {
            monotonic_ns: -1_500_000_000,
            boottime_ns: 2_250_000_000,
        });
        assert_eq!(text, "monotonic -2 500000000\nboottime 2 250000000\n");
    }
}
