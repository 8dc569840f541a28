//! Lab tests of the bare kernel switch: `overboot kexec` inside a guest running kernel A boots
//! B (a stable update) and C (a major-version jump) with the command line we pass, and bad
//! input gets its specific error and exit code while the guest keeps running A.

use std::time::Duration;

use overboot_lab::lab::{Lab, Scenario, BASE_CMDLINE, BOOT_TIMEOUT};
use overboot_lab::Guest;

const CMD: Duration = Duration::from_secs(60);

fn boot_a(lab: &Lab, scenario: &Scenario) -> Guest {
    let config = lab.guest_config(scenario, "A").expect("guest config");
    lab.boot(&config).expect("boot A")
}

/// Switches from A to `to` with our loader and checks release and command line in the new kernel;
/// `two_steps`: load with `--load-only`, check A still runs, then jump with `--exec`.
fn switch_and_check(to: &str, two_steps: bool) {
    let lab = Lab::prepare(&["A", to]).expect("prepare lab");
    let scenario = lab
        .scenario(
            &format!("kexec-a-to-{}", to.to_lowercase()),
            &["A", to],
            256,
        )
        .expect("scenario");
    let mut guest = boot_a(&lab, &scenario);
    let release_a = lab.kernel("A").expect("A").release.clone();
    let release_to = lab.kernel(to).expect("to").release.clone();
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_a, "guest did not boot A");

    let token = format!("lab.token={}", std::process::id());
    let append = format!("{BASE_CMDLINE} {token}");
    let load = format!(
        "overboot kexec --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img --append '{append}'"
    );
    if two_steps {
        let loaded = guest
            .run_ok(&format!("{load} --load-only"), CMD)
            .expect("load only");
        assert!(
            loaded.text().contains(&format!("loaded {release_to}")),
            "{}",
            loaded.text()
        );
        let uname = guest.run_ok("uname -r", CMD).expect("uname");
        assert_eq!(
            uname.text().trim(),
            release_a,
            "--load-only switched kernels"
        );
        guest
            .send("overboot kexec --exec")
            .expect("send kexec --exec");
    } else {
        guest.send(&load).expect("send kexec");
    }
    let jumping = if two_steps {
        "jumping into the loaded kernel".to_string()
    } else {
        format!("jumping into {release_to}")
    };
    guest
        .wait_for(&jumping, CMD)
        .expect("overboot loaded the kernel and jumped");
    let booted = guest
        .wait_for("@@LAB booted", BOOT_TIMEOUT)
        .expect("new kernel reached init");
    assert!(
        booted.contains(&release_to),
        "booted line {booted:?} is not {release_to}"
    );
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_to);
    let cmdline = guest.run_ok("cat /proc/cmdline", CMD).expect("cmdline");
    assert_eq!(
        cmdline.text().trim(),
        append,
        "the new kernel got another command line"
    );
    // No kexec-tools anywhere in the guest: the switch was our own loader.
    let kexec = guest
        .run(
            "command -v kexec || find / -xdev -name 'kexec' -type f",
            CMD,
        )
        .expect("find kexec");
    assert!(
        kexec.text().trim().is_empty(),
        "kexec-tools found: {}",
        kexec.text()
    );
}

#[test]
fn kexec_a_to_b_stable_update() {
    switch_and_check("B", false);
}

#[test]
fn kexec_a_to_c_major_jump_loaded_first() {
    switch_and_check("C", true);
}

/// Bad input: each case gets its own message and exit code, and the guest still runs A.
#[test]
fn kexec_bad_input_is_refused_and_a_keeps_running() {
    let lab = Lab::prepare(&["A", "B"]).expect("prepare lab");
    let scenario = lab
        .scenario("kexec-bad-input", &["A", "B"], 256)
        .expect("scenario");
    let mut guest = boot_a(&lab, &scenario);
    let release_a = lab.kernel("A").expect("A").release.clone();
    guest
        .run_ok(
            "head -c 4096 /dev/urandom > /tmp/random.bin; \
             head -c 3000000 /lab/boot/B/vmlinuz > /tmp/truncated; \
             echo 'not a kernel' > /tmp/text",
            CMD,
        )
        .expect("prepare bad files");

    let cases: &[(&str, i32, &str)] = &[
        ("/tmp/random.bin", 5, "not a bzImage"),
        ("/tmp/text", 5, "not a bzImage"),
        ("/nonexistent/vmlinuz", 5, "/nonexistent/vmlinuz"),
        ("/tmp/truncated", 5, "truncated"),
    ];
    for (file, code, message) in cases {
        let out = guest
            .run(&format!("overboot kexec --kernel {file} --append x"), CMD)
            .expect("run overboot");
        assert_eq!(out.status, *code, "exit code for {file}: {}", out.text());
        assert!(
            out.text().contains(message),
            "message for {file} lacks {message:?}: {}",
            out.text()
        );
    }

    // kexec_load_disabled is one-way until reboot: test it last.
    guest
        .run_ok("echo 1 > /proc/sys/kernel/kexec_load_disabled", CMD)
        .expect("disable kexec");
    let out = guest
        .run(
            "overboot kexec --kernel /lab/boot/B/vmlinuz --initrd /lab/boot/B/initrd.img --append x",
            CMD,
        )
        .expect("run overboot");
    assert_eq!(out.status, 4, "exit code when disabled: {}", out.text());
    assert!(out.text().contains("kexec_load_disabled"), "{}", out.text());

    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_a, "the guest left A");
    let loaded = guest
        .run_ok("cat /sys/kernel/kexec_loaded", CMD)
        .expect("loaded");
    assert_eq!(loaded.text().trim(), "0", "a kernel was left loaded");
}
