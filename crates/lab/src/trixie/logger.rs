//! The journald witness of the trixie tests: `lab-logger.service`, a unit as Debian ships most
//! (standard output and error on journald, nothing of overboot's but the adoption drop-in),
//! whose shell writes `lab-logger line N` once a second with N counting up. Carried across an
//! update, its lines must go on in `journalctl -u lab-logger` under the same unit and PID: on
//! the same boot (an update that failed and restored it here) without a gap or a repeat, and
//! in the new boot from past the last number the old one had.

use std::time::{Duration, Instant};

use crate::guest::Guest;
use crate::service::{ServiceError, CMD};

/// The unit's name.
pub const UNIT: &str = "lab-logger.service";

/// The unit file, escaped for `printf '...'` in the guest's shell (`$$` is systemd's `$`).
const UNIT_FILE: &str = "[Unit]\\nDescription=lab: a service logging to journald\\n\
    [Service]\\nExecStart=/bin/sh -c \"i=0; while :; do i=$$((i+1)); echo lab-logger line $$i; \
    sleep 1; done\"\\n[Install]\\nWantedBy=multi-user.target\\n";

/// How long the first line after an update may take to show in the journal: the unit adopts
/// its restored shell a few seconds into the new boot under TCG.
const FIRST_LINE: Duration = Duration::from_secs(120);

/// Installs, enables and starts the unit.
pub fn install(guest: &mut Guest) -> Result<(), ServiceError> {
    guest.run_ok(
        &format!(
            "printf '{UNIT_FILE}' > /etc/systemd/system/{UNIT} && systemctl daemon-reload && \
             systemctl enable --now {UNIT}"
        ),
        CMD,
    )?;
    Ok(())
}

/// What the journal of the running boot holds of the unit's lines: their numbers in order of
/// arrival, as `journalctl -u` shows them, and how many of them journald attributes to the
/// unit's main process (`_SYSTEMD_UNIT=` and `_PID=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerJournal {
    /// The numbers, first to last.
    pub numbers: Vec<u64>,
    /// Lines with the unit's `_SYSTEMD_UNIT` and its main PID as `_PID`.
    pub attributed: usize,
}

impl LoggerJournal {
    /// Where the numbers do not go up by one: `(before, after)` pairs.
    pub fn breaks(&self) -> Vec<(u64, u64)> {
        self.numbers
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect()
    }

    /// The last number.
    pub fn last(&self) -> Option<u64> {
        self.numbers.last().copied()
    }
}

/// Reads [`LoggerJournal`] for the running boot; `main_pid` is the unit's main PID.
pub fn journal(guest: &mut Guest, main_pid: &str) -> Result<LoggerJournal, ServiceError> {
    let lines = guest.run_ok(
        &format!("journalctl -b -u {UNIT} -o cat --no-pager | sed -n 's/^lab-logger line //p'"),
        CMD,
    )?;
    let numbers = lines
        .lines
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let attributed = guest.run_ok(
        &format!(
            "journalctl -b _SYSTEMD_UNIT={UNIT} _PID={main_pid} -o cat --no-pager | \
             grep -c '^lab-logger line' || true"
        ),
        CMD,
    )?;
    Ok(LoggerJournal {
        numbers,
        attributed: attributed.text().trim().parse().unwrap_or(0),
    })
}

/// Waits until the running boot's journal has a line of the unit numbered past `past`
/// (polling it every two seconds), then returns the journal.
pub fn wait_past(
    guest: &mut Guest,
    main_pid: &str,
    past: u64,
) -> Result<LoggerJournal, ServiceError> {
    let start = Instant::now();
    loop {
        let journal = journal(guest, main_pid)?;
        let done = journal.last().is_some_and(|n| n > past + 2) && journal.attributed > 0;
        if done || start.elapsed() > FIRST_LINE {
            return Ok(journal);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The processes in the unit's cgroup that are neither its shell nor that shell's `sleep`:
/// anything overboot would have left behind (a relay, a helper). A process that ended between
/// the listing and the reading of its name (a `sleep 1`) is not one.
pub fn strangers(guest: &mut Guest) -> Result<Vec<String>, ServiceError> {
    let out = guest.run_ok(
        &format!(
            "for p in $(cat /sys/fs/cgroup$(systemctl show -P ControlGroup {UNIT})/cgroup.procs); \
             do c=$(cat /proc/$p/comm 2>/dev/null) || continue; [ -n \"$c\" ] || continue; \
             [ \"$c\" = sh ] || [ \"$c\" = sleep ] || echo \"$p $c\"; done; true"
        ),
        CMD,
    )?;
    Ok(out
        .lines
        .iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_are_gaps_and_repeats() {
        let j = LoggerJournal {
            numbers: vec![1, 2, 3, 5, 5, 6],
            attributed: 6,
        };
        assert_eq!(j.breaks(), [(3, 5), (5, 5)]);
        assert_eq!(j.last(), Some(6));
    }
}
