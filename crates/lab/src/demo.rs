//! The README's demo: a throwaway guest on kernel A is moved onto kernel B by `overboot kexec`
//! (our own loader, no kexec-tools), and the demo prints both releases and how long the switch
//! took, from the jump to the new kernel's init.

use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, BASE_CMDLINE, BOOT_TIMEOUT};

/// What the demo measured.
#[derive(Debug, serde::Serialize)]
pub struct DemoResult {
    /// Release before the switch.
    pub from: String,
    /// Release after the switch.
    pub to: String,
    /// Host wall time from the jump to the new kernel's `/init`.
    pub jump_to_init_ms: u128,
    /// The new kernel's own uptime when its `/init` started (guest time).
    pub new_kernel_uptime_at_init_s: f64,
    /// The guest console log.
    pub console_log: String,
}

/// Runs the demo from kernel A to `to`.
pub fn run(to: &str) -> Result<DemoResult, LabError> {
    let cmd = Duration::from_secs(60);
    eprintln!("demo: preparing the lab (kernels A and {to}, guest images)...");
    let lab = Lab::prepare(&["A", to])?;
    let scenario = lab.scenario("demo", &["A", to], 256)?;
    let release_to = lab.kernel(to)?.release.clone();
    eprintln!("demo: booting a throwaway QEMU guest on kernel A...");
    let mut guest = lab.boot(&lab.guest_config(&scenario, "A")?)?;
    let from = guest.run_ok("uname -r", cmd)?.text().trim().to_string();
    println!("guest is running {from}");
    guest.send(&format!(
        "overboot kexec --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img --append '{BASE_CMDLINE}'"
    ))?;
    guest.wait_for("jumping into", cmd)?;
    let jumped = Instant::now();
    println!("overboot kexec: jumping into {release_to}");
    let init = guest.wait_for("@@LAB init", BOOT_TIMEOUT)?;
    let jump_to_init = jumped.elapsed();
    guest.wait_for("@@LAB booted", BOOT_TIMEOUT)?;
    let to_release = guest.run_ok("uname -r", cmd)?.text().trim().to_string();
    let uptime = init
        .split("uptime=")
        .nth(1)
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or(0.0);
    println!("guest is running {to_release}");
    println!(
        "jump → new kernel's init: {} ms (host wall time; the new kernel's uptime at init: {uptime:.2} s)",
        jump_to_init.as_millis()
    );
    Ok(DemoResult {
        from,
        to: to_release,
        jump_to_init_ms: jump_to_init.as_millis(),
        new_kernel_uptime_at_init_s: uptime,
        console_log: guest.log_path().display().to_string(),
    })
}
