//! `overboot update --preserve unit:NAME.service` on the trixie profile, driven over the
//! console: what the lab test asserts and the demo (`--profile trixie`) shows.

use std::time::{Duration, Instant};

use crate::guest::Guest;
use crate::service::{wait_ticking, ServiceError, CMD};

use super::BOOT_TIMEOUT;

/// How long the old kernel may take from the command to the jump (checks, early load, dump).
const TO_JUMP: Duration = Duration::from_secs(900);

/// What systemd says of a unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    /// `systemctl is-active`.
    pub active: String,
    /// `systemctl show -P MainPID`.
    pub main_pid: String,
}

/// `systemctl is-active` and the main PID of `unit`.
pub fn unit_state(guest: &mut Guest, unit: &str) -> Result<UnitState, ServiceError> {
    let active = guest.run(&format!("systemctl is-active {unit}"), CMD)?;
    let main_pid = guest.run_ok(&format!("systemctl show -P MainPID {unit}"), CMD)?;
    Ok(UnitState {
        active: active.text().trim().to_string(),
        main_pid: main_pid.text().trim().to_string(),
    })
}

/// The pids of every process named `comm` (minbase has no procps), in /proc order.
pub fn pids_named(guest: &mut Guest, comm: &str) -> Result<Vec<String>, ServiceError> {
    let out = guest.run(
        &format!(
            "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = {comm} ] && \
             echo ${{p#/proc/}}; done; true"
        ),
        CMD,
    )?;
    Ok(out.lines.iter().map(|l| l.trim().to_string()).collect())
}

/// Sends `overboot update` to the trixie kernel `release` with the command line `append`,
/// preserving `units`, and follows it to the new kernel's multi-user (`@@LAB booted`), calling
/// `tick` about once a second. Returns the booted line and the host time from the jump to it.
/// An update that exits on the old kernel is [`ServiceError::UpdateFailed`] with its output.
pub fn update_units(
    guest: &mut Guest,
    release: &str,
    append: &str,
    units: &[&str],
    tick: &mut dyn FnMut(),
) -> Result<(String, Duration), ServiceError> {
    let preserve: String = units
        .iter()
        .map(|u| format!(" --preserve unit:{u}"))
        .collect();
    let sent_at = guest.history().len();
    // The sentinel is split in the command text so that an echoed command never matches.
    guest.send(&format!(
        "overboot update --kernel /boot/vmlinuz-{release} --initrd /boot/initrd.img-{release} \
         --append '{append}'{preserve} 2>&1; echo \"@@LAB\" \"update-exited rc=$?\""
    ))?;
    let jump = format!("jumping into {release}");
    let line = wait_ticking(guest, &[&jump, "@@LAB update-exited"], TO_JUMP, tick)?;
    if let Some(rc) = line.split("rc=").nth(1) {
        return Err(ServiceError::UpdateFailed {
            rc: rc.trim().parse().unwrap_or(-1),
            output: guest.history()[sent_at..].join("\n"),
            log: guest.log_path().display().to_string(),
        });
    }
    let jumped = Instant::now();
    // A restore that fails rolls back: two kernels boot before multi-user.
    let booted = wait_ticking(guest, &["@@LAB booted"], BOOT_TIMEOUT * 2, tick)?;
    Ok((booted, jumped.elapsed()))
}

/// The path an operator (or a fleet engine) takes with the Debian package: `preserve` and the
/// new kernel's command line `append` in `/etc/overboot/overboot.toml`, `--to newest` in
/// `/etc/default/overboot`, the kernel hook run as dpkg runs it after installing `release`
/// (it plans the update: its plan file is returned), then `systemctl start
/// overboot-update.service`, followed to the new kernel's multi-user as [`update_units`] does.
/// The unit's output goes to the journal, not the console: a refusal is the `systemctl`
/// status, a switch is the new boot's `@@LAB booted`.
pub fn update_through_package(
    guest: &mut Guest,
    release: &str,
    append: &str,
    units: &[&str],
    tick: &mut dyn FnMut(),
) -> Result<(String, String, Duration), ServiceError> {
    let preserve: Vec<String> = units.iter().map(|u| format!("\"unit:{u}\"")).collect();
    guest.run_ok(
        &format!(
            "printf '[update]\\npreserve = [{}]\\nappend = \"{append}\"\\n' \
             > /etc/overboot/overboot.toml && \
             echo 'OVERBOOT_UPDATE_ARGS=\"--to newest\"' > /etc/default/overboot",
            preserve.join(", ")
        ),
        CMD,
    )?;
    let hook = guest.run_ok(
        &format!(
            "/etc/kernel/postinst.d/zz-overboot {release} /boot/vmlinuz-{release} && \
             cat /var/lib/overboot/plan-{release}.txt"
        ),
        Duration::from_secs(300),
    )?;
    let sent_at = guest.history().len();
    guest.send("systemctl start overboot-update.service; echo \"@@LAB\" \"unit-exited rc=$?\"")?;
    let started = Instant::now();
    let line = wait_ticking(
        guest,
        &["@@LAB unit-exited", "@@LAB booted"],
        TO_JUMP + BOOT_TIMEOUT * 2,
        tick,
    )?;
    if line.contains("unit-exited") {
        let journal = guest
            .run(
                "journalctl -b --no-pager -u overboot-update.service | tail -n 40",
                CMD,
            )
            .map(|o| o.text())
            .unwrap_or_default();
        return Err(ServiceError::UpdateFailed {
            rc: line
                .split("rc=")
                .nth(1)
                .and_then(|r| r.trim().parse().ok())
                .unwrap_or(-1),
            output: format!("{}\n{journal}", guest.history()[sent_at..].join("\n")),
            log: guest.log_path().display().to_string(),
        });
    }
    Ok((line, hook.text(), started.elapsed()))
}
