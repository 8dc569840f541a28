//! Lab tests of rollback: a fault injected in the new kernel (by kernel parameter, inert
//! otherwise) makes the resume agent give up there, and every preserved process ends up
//! running on kernel A again with its state; the report names the cause.

use std::time::Duration;

use overboot_lab::carry::{self, Running};
use overboot_lab::lab::{Lab, BASE_CMDLINE, BOOT_TIMEOUT};

const CMD: Duration = Duration::from_secs(120);

/// Updates A → B with `fault` (a function of the workloads' pids), expects the rollback to A,
/// and checks every workload and the report; `cause` must be in the report's detail.
fn rolls_back(name: &str, fault: impl Fn(&Running) -> String, cause: &str) {
    let lab = Lab::prepare(&["A", "B"]).expect("prepare lab");
    let scenario = lab
        .scenario(&format!("rollback-{name}"), &["A", "B"], 256)
        .expect("scenario");
    let mut config = lab.guest_config(&scenario, "A").expect("config");
    config.memory_mib = 2048;
    let mut guest = lab.boot(&config).expect("boot A");
    let release_a = lab.kernel("A").expect("A").release.clone();
    let release_b = lab.kernel("B").expect("B").release.clone();
    let running = Running::start(&mut guest, carry::small()).expect("workloads");
    let fault = fault(&running);

    guest
        .send(&format!(
            "overboot update --kernel /lab/boot/B/vmlinuz --initrd /lab/boot/B/initrd.img \
             --append '{BASE_CMDLINE} overboot.fault={fault}' --rollback-kernel /lab/boot/A/vmlinuz \
             --rollback-initrd /lab/boot/A/initrd.img{}",
            running.preserve_args()
        ))
        .expect("send update");
    guest
        .wait_for(
            &format!("jumping into {release_b}"),
            Duration::from_secs(600),
        )
        .expect("update reached the jump");
    guest
        .wait_for(&format!("@@LAB init {release_b}"), BOOT_TIMEOUT)
        .expect("B booted");
    guest
        .wait_for("rolling back to", Duration::from_secs(300))
        .expect("the agent on B decided to roll back");
    guest
        .wait_for(&format!("@@LAB init {release_a}"), BOOT_TIMEOUT)
        .expect("A booted again");
    let done = guest
        .wait_for("@@LAB resume-done", Duration::from_secs(300))
        .expect("agent on A finished");
    assert!(done.contains("rc=0"), "restore on A failed: {done}");
    guest
        .wait_for("@@LAB booted", BOOT_TIMEOUT)
        .expect("booted");
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_a, "not back on A");

    let report = overboot_lab::service::agent_report(&mut guest).expect("status --json");
    assert_eq!(report["outcome"], "rolled_back", "{report}");
    let detail = report["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(cause),
        "the report does not name {cause:?}: {detail}"
    );
    assert!(
        detail.contains(&release_b),
        "the report does not name {release_b}: {detail}"
    );
    let human = guest.run_ok("overboot status", CMD).expect("status");
    assert!(human.text().contains("ROLLED BACK"), "{}", human.text());

    running
        .check_alive_and_progressing(&mut guest)
        .unwrap_or_else(|e| panic!("after the rollback: {e}"));
    let sizes = running.stop_and_sync(&mut guest).expect("stop and sync");
    guest.kill();
    running
        .judge(&scenario.disk, &sizes)
        .unwrap_or_else(|e| panic!("after the rollback: {e}"));
}

#[test]
fn rollback_when_a_tree_fails_to_restore() {
    rolls_back(
        "restore-fail",
        |r| format!("restore-fail:pid-{}", r.pids["pipes"]),
        "injected fault",
    );
}

#[test]
fn rollback_when_an_image_is_corrupt() {
    rolls_back(
        "flip-byte",
        |r| format!("flip-byte:pid-{}", r.pids["mem2"]),
        "is corrupt",
    );
}

#[test]
fn rollback_when_the_agent_dies_mid_restore() {
    rolls_back("kill-agent", |_| "kill-agent".into(), "killed by signal 9");
}
