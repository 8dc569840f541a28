//! Clocks of restored trees. A process that moves to a new kernel would see CLOCK_MONOTONIC
//! and CLOCK_BOOTTIME restart near zero. The resume agent therefore restores every tree inside
//! a new time namespace whose offsets make both clocks continue from their values at freeze,
//! advanced by the blackout (measured with CLOCK_REALTIME, which the new kernel reads from the
//! RTC). CLOCK_REALTIME itself is not namespaced and is simply right.
//!
//! The namespace is made for CRIU alone, between its fork and exec (see
//! `overboot_checkpoint::Criu::with_time_offsets`): a process that unshared `CLONE_NEWTIME`
//! can no longer create threads, so the agent itself never does.

use overboot_handover::ClockReadings;

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
pub fn offsets_text(offsets: &ClockOffsets) -> String {
    let line = |name: &str, ns: i64| {
        let secs = ns.div_euclid(1_000_000_000);
        let nanos = ns.rem_euclid(1_000_000_000);
        format!("{name} {secs} {nanos}\n")
    };
    line("monotonic", offsets.monotonic_ns) + &line("boottime", offsets.boottime_ns)
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
        assert_eq!(signed(now.monotonic_ns) + o.monotonic_ns, 57_000_000_000);
        assert_eq!(signed(now.boottime_ns) + o.boottime_ns, 58_000_000_000);
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
