//! Clocks of restored trees. CRIU records CLOCK_MONOTONIC and CLOCK_BOOTTIME at dump time and
//! restores every tree in a new time namespace whose clocks continue from those values, so on
//! its own a tree would see no time pass during the blackout. The resume agent advances the
//! recorded values by the real time elapsed since CRIU recorded them (the end of the dump) (CLOCK_REALTIME, which
//! the new kernel reads from the RTC), so both clocks jump forward by about the blackout and
//! never go backwards. CLOCK_REALTIME itself is not namespaced and is simply right.

/// How far to advance clocks recorded at `recorded_realtime_ns`, given CLOCK_REALTIME now.
/// Never negative: a real-time clock that stepped back must not make the tree's clocks go back.
pub fn elapsed_since(recorded_realtime_ns: u64, now_realtime_ns: u64) -> u64 {
    now_realtime_ns.saturating_sub(recorded_realtime_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_time_is_never_negative() {
        assert_eq!(elapsed_since(10, 25), 15);
        assert_eq!(elapsed_since(25, 10), 0);
    }
}
