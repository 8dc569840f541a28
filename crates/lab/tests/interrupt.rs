//! Lab test of interrupted updates (Debian 12 profile, kernel A): `overboot update` receives
//! SIGINT, SIGTERM or SIGKILL at each of pre-copy, dump, map writing and kexec load (the phase
//! chosen by a test hook, `OVERBOOT_TEST_SIGNAL=<SIGNAL>@<phase>`, that makes the update signal
//! itself there). Every run must end with every preserved process running on A with its pid
//! and its state (the logs judged whole at the end), no kernel left loaded, and a report that
//! names the interruption: SIGINT and SIGTERM stop the update at that boundary (exit 11);
//! after SIGKILL its guardian brings the trees back.

use std::time::Duration;

use overboot_lab::carry::{self, Running};
use overboot_lab::lab::{Lab, BASE_CMDLINE};
use overboot_lab::Guest;

const CMD: Duration = Duration::from_secs(120);

/// The report `overboot status --json` shows once it names an interruption (the guardian may
/// still be at work after a SIGKILL: polled).
fn interrupted_report(guest: &mut Guest) -> serde_json::Value {
    guest
        .run_ok(
            "timeout 300 sh -c 'until overboot status --json 2>/dev/null \
             | grep -q \"\\\"outcome\\\":\\\"interrupted\\\"\"; do sleep 1; done'",
            Duration::from_secs(330),
        )
        .expect("a report of the interruption");
    overboot_lab::service::agent_report(guest).expect("status --json")
}

#[test]
fn interrupted_updates_leave_every_tree_running_on_the_old_kernel() {
    let lab = Lab::prepare(&["A", "B"]).expect("prepare lab");
    let scenario = lab
        .scenario("interrupt", &["A", "B"], 256)
        .expect("scenario");
    let mut config = lab.guest_config(&scenario, "A").expect("config");
    config.memory_mib = 2048;
    let mut guest = lab.boot(&config).expect("boot A");
    let release_a = lab.kernel("A").expect("A").release.clone();
    let mut running = Running::start(&mut guest, carry::small()).expect("workloads");
    let update = format!(
        "overboot update --kernel /lab/boot/B/vmlinuz --initrd /lab/boot/B/initrd.img \
         --append '{BASE_CMDLINE}' --rollback-kernel /lab/boot/A/vmlinuz \
         --rollback-initrd /lab/boot/A/initrd.img{}",
        running.preserve_args()
    );
    // Pre-copy runs into a directory store only (the data disk); the other phases are
    // reached through the initrd store, whose kernel is loaded after the freeze.
    let phases = [
        ("pre_copy", " --handover dir:/lab/ssm"),
        ("freeze_dump", " --handover initrd"),
        ("write_map", " --handover initrd"),
        ("kexec_load", " --handover initrd"),
    ];
    let mut failures = Vec::new();
    for signal in ["SIGINT", "SIGTERM", "SIGKILL"] {
        for (phase, store) in phases {
            let case = format!("{signal} at {phase}");
            guest
                .run_ok("rm -f /var/lib/overboot/last-report.json", CMD)
                .expect("clear the last report");
            let out = guest
                .run(
                    &format!("OVERBOOT_TEST_SIGNAL={signal}@{phase} {update}{store}"),
                    Duration::from_secs(600),
                )
                .expect("overboot update");
            let expected = if signal == "SIGKILL" { 137 } else { 11 };
            if out.status != expected {
                failures.push(format!("{case}: exit {}: {}", out.status, out.text()));
            }
            let report = interrupted_report(&mut guest);
            let detail = report["detail"].as_str().unwrap_or_default().to_string();
            let named = if signal == "SIGKILL" {
                detail.contains("died") && detail.contains(&phase.replace('_', " "))
            } else {
                detail.contains(&format!("interrupted by {signal} at {phase}"))
            };
            if !named {
                failures.push(format!("{case}: the report does not name it: {detail}"));
            }
            eprintln!("interrupt: {case}: {detail}");
            let loaded = guest
                .run_ok("cat /sys/kernel/kexec_loaded", CMD)
                .expect("kexec_loaded");
            if loaded.text().trim() != "0" {
                failures.push(format!("{case}: a kernel was left loaded"));
            }
            if let Err(e) = running.check_alive_and_progressing(&mut guest) {
                failures.push(format!("{case}: {e}"));
                break;
            }
            running.mark(&mut guest).expect("mark");
        }
    }
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_a, "not on A any more");
    let leftovers = guest
        .run("pidof criu; ls /var/lib/overboot/inflight.json", CMD)
        .expect("leftovers")
        .text();
    if leftovers.contains("inflight.json") && !leftovers.contains("No such file") {
        failures.push(format!("left behind: {leftovers}"));
    }
    assert!(failures.is_empty(), "- {}", failures.join("\n- "));
    let sizes = running.stop_and_sync(&mut guest).expect("stop and sync");
    guest.kill();
    running
        .judge(&scenario.disk, &sizes)
        .unwrap_or_else(|e| panic!("after the interruptions: {e}"));
}
