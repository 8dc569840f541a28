//! Lab tests of `overboot update`: process trees carried from kernel A to B (a stable update)
//! and to C (6.12) through one update each, every workload asserted separately afterwards;
//! and bad input refused before anything is frozen.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use overboot_lab::disk;
use overboot_lab::lab::{Lab, BASE_CMDLINE, BOOT_TIMEOUT};
use overboot_lab::workloads::{self, Workload};
use overboot_lab::Guest;

const CMD: Duration = Duration::from_secs(120);
const HEAP_MIB: u32 = 256;

fn workloads() -> Vec<(Workload, &'static str)> {
    vec![
        (
            Workload::new("mem1", "mem", &format!("{HEAP_MIB} 1")),
            "mem1",
        ),
        (
            Workload::new("mem8", "mem", &format!("{HEAP_MIB} 8")),
            "mem8",
        ),
        (Workload::new("pipes", "pipes", ""), "seq"),
        (Workload::new("unix", "unix", ""), "pong"),
        (Workload::new("clock", "clock", ""), "clock"),
        (
            Workload {
                name: "append".into(),
                args: "append /lab/wl/append.dat".into(),
                log: "/lab/wl/append.dat".into(),
            },
            "rec",
        ),
        (
            Workload {
                name: "tmpfs".into(),
                args: "append /tmp/tmpfs.dat".into(),
                log: "/tmp/tmpfs.dat".into(),
            },
            "rec",
        ),
    ]
}

/// Waits (in the guest, polling the file) until `path` has at least `lines` lines.
fn wait_lines(guest: &mut Guest, path: &str, lines: u64) {
    guest
        .run_ok(
            &format!(
                "timeout 300 sh -c 'until [ \"$(wc -l < {path} 2>/dev/null || echo 0)\" -ge {lines} ]; do sleep 0.2; done'"
            ),
            Duration::from_secs(330),
        )
        .unwrap_or_else(|e| panic!("{path} did not reach {lines} lines: {e}"));
}

fn line_count(guest: &mut Guest, path: &str) -> u64 {
    guest
        .run_ok(&format!("wc -l < {path}"), CMD)
        .expect("wc")
        .text()
        .trim()
        .parse()
        .expect("line count")
}

fn carry_across(to: &str) {
    let lab = Lab::prepare(&["A", to]).expect("prepare lab");
    let name = format!("update-a-to-{}", to.to_lowercase());
    let scenario = lab.scenario(&name, &["A", to], 512).expect("scenario");
    let mut config = lab.guest_config(&scenario, "A").expect("config");
    config.memory_mib = 3072;
    let mut guest = lab.boot(&config).expect("boot A");
    let release_to = lab.kernel(to).expect("kernel").release.clone();

    // Services run with PIDs above the early-boot range of any kernel, as on a real server.
    guest
        .run_ok(
            "mkdir -p /lab/wl && echo 3000 > /proc/sys/kernel/ns_last_pid",
            CMD,
        )
        .expect("setup");
    let mut pids: BTreeMap<String, i32> = BTreeMap::new();
    for (w, _) in workloads() {
        let out = guest
            .run_ok(&w.start_command(), CMD)
            .expect("start workload");
        let pid = out
            .lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("@@PID {} ", w.name)))
            .and_then(|p| p.trim().parse().ok())
            .expect("pid of workload");
        pids.insert(w.name.clone(), pid);
    }
    for (w, _) in workloads() {
        wait_lines(&mut guest, &w.log, 3);
    }
    let before: BTreeMap<String, u64> = workloads()
        .into_iter()
        .map(|(w, _)| (w.name.clone(), line_count(&mut guest, &w.log)))
        .collect();

    let preserve: String = pids
        .values()
        .map(|p| format!(" --preserve pid:{p}"))
        .collect();
    // `plan` changes nothing and predicts the handover size.
    let plan = guest
        .run_ok(
            &format!(
                "overboot --json plan --kernel /lab/boot/{to}/vmlinuz \
                 --initrd /lab/boot/{to}/initrd.img{preserve}"
            ),
            CMD,
        )
        .expect("plan");
    let plan: serde_json::Value = serde_json::from_str(
        plan.lines
            .iter()
            .find(|l| l.starts_with('{'))
            .expect("plan json"),
    )
    .expect("plan json");
    assert_eq!(plan["ok"], true, "plan refused a good update: {plan}");
    let predicted = plan["handover_bytes"].as_u64().expect("predicted bytes");
    guest
        .send(&format!(
            "overboot update --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img \
             --append '{BASE_CMDLINE}' --rollback-kernel /lab/boot/A/vmlinuz \
             --rollback-initrd /lab/boot/A/initrd.img{preserve}"
        ))
        .expect("send update");
    guest
        .wait_for(
            &format!("jumping into {release_to}"),
            Duration::from_secs(600),
        )
        .expect("update reached the jump");
    let done = guest
        .wait_for("@@LAB resume-done", BOOT_TIMEOUT + Duration::from_secs(300))
        .expect("resume agent finished");
    assert!(
        done.contains("rc=0"),
        "resume failed: {done}\nlog: {}",
        guest.log_path().display()
    );
    guest
        .wait_for("@@LAB booted", BOOT_TIMEOUT)
        .expect("booted");
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_to, "not on the new kernel");

    // Every preserved process is alive with its pid, and kept working after the switch.
    for (w, _) in workloads() {
        let pid = pids[&w.name];
        guest
            .run_ok(&format!("kill -0 {pid}"), CMD)
            .unwrap_or_else(|e| {
                panic!("{} (pid {pid}) is not alive after the switch: {e}", w.name)
            });
        wait_lines(&mut guest, &w.log, before[&w.name] + 5);
    }
    let status = guest.run_ok("overboot status --json", CMD).expect("status");
    let report: serde_json::Value = serde_json::from_str(
        status
            .lines
            .iter()
            .find(|l| l.starts_with('{'))
            .expect("json line"),
    )
    .expect("status json");
    for phase in [
        "freeze_dump",
        "write_map",
        "publish",
        "kexec_load",
        "jump_to_agent",
        "new_kernel_boot",
        "verify_map",
        "restore",
        "blackout",
    ] {
        assert!(
            report["phases"][phase].is_u64(),
            "phase {phase} missing in the report: {report}"
        );
    }
    let actual = report["handover_bytes"].as_u64().unwrap_or(0);
    assert!(actual > (2 * u64::from(HEAP_MIB)) << 20);
    let error = predicted.abs_diff(actual) * 100 / actual.max(1);
    assert!(
        error <= 10,
        "plan predicted {predicted} bytes, the map had {actual}"
    );
    assert_eq!(report["outcome"], "resumed");
    let restored: Vec<i64> = report["trees"]
        .as_array()
        .expect("trees")
        .iter()
        .map(|t| t["restored_pid"].as_i64().unwrap_or(0))
        .collect();
    for pid in pids.values() {
        assert!(
            restored.contains(&i64::from(*pid)),
            "pid {pid} not restored as itself"
        );
    }
    // CLOCK_REALTIME is right after resume (the RTC has one-second resolution).
    let guest_now: i64 = guest
        .run_ok("date +%s", CMD)
        .expect("date")
        .text()
        .trim()
        .parse()
        .expect("date");
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    assert!(
        (guest_now - host_now).abs() <= 3,
        "guest realtime off by {}s",
        guest_now - host_now
    );

    // Stop every workload so the logs stop growing, copy the carried tmpfs file to the disk to
    // judge it with the others, and note each file's size as the guest sees it.
    let sizes = guest
        .run_ok(
            "for p in $(pidof lab-workload); do kill -STOP $p; done; \
             cp /tmp/tmpfs.dat /lab/wl/tmpfs.dat && sync && \
             for f in /lab/wl/*.log /lab/wl/*.dat; do echo \"@@SIZE $f $(wc -c < $f)\"; done",
            CMD,
        )
        .expect("stop workloads and sync");
    let sizes: BTreeMap<String, usize> = sizes
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("@@SIZE /lab"))
        .filter_map(|l| {
            let (path, size) = l.split_once(' ')?;
            Some((path.to_string(), size.trim().parse().ok()?))
        })
        .collect();
    guest.kill();

    let read = |path: &str| {
        let mut bytes = disk::read_file(&scenario.disk, path)
            .unwrap_or_else(|e| panic!("read {path} from the data disk: {e}"));
        let size = sizes[path];
        assert!(
            bytes.len() >= size,
            "{path}: {} bytes on disk, {size} in the guest",
            bytes.len()
        );
        bytes.truncate(size);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let check = |name: &str, result: Result<workloads::Verdict, String>| {
        let verdict = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verdict.pid, pids[name], "{name}: records carry another pid");
        assert!(
            verdict.records > before[name],
            "{name}: no record after the switch ({} ≤ {})",
            verdict.records,
            before[name]
        );
        verdict
    };
    check("mem1", workloads::verify_mem(&read("/wl/mem1.log"), 1));
    check("mem8", workloads::verify_mem(&read("/wl/mem8.log"), 8));
    // The pipe sink and the unix ping side are the tree's children/root: pids checked by log.
    let pipes = workloads::verify_sequence(&read("/wl/pipes.log"), "seq")
        .unwrap_or_else(|e| panic!("pipes: {e}"));
    assert!(
        pipes.records > before["pipes"],
        "pipes: nothing after the switch"
    );
    check(
        "unix",
        workloads::verify_sequence(&read("/wl/unix.log"), "pong"),
    );
    check("append", workloads::verify_append(&read("/wl/append.dat")));
    check("tmpfs", workloads::verify_append(&read("/wl/tmpfs.dat")));
    let clock = check("clock", workloads::verify_clock(&read("/wl/clock.log")));
    // At the switch, CLOCK_MONOTONIC jumped forward by about the blackout.
    let real: i64 = clock.facts["max_gap_real_ms"].parse().unwrap_or(0);
    let mono: i64 = clock.facts["max_gap_mono_ms"].parse().unwrap_or(0);
    assert!(
        real > 1000,
        "no blackout visible in the clock log: {:?}",
        clock.facts
    );
    // CRIU records the clocks at the end of the dump and the tree runs again at the end of
    // its restore: the jump is the blackout less those two, never more than the blackout.
    assert!(
        mono <= real + 2000 && mono >= real * 3 / 4,
        "CLOCK_MONOTONIC advanced {mono} ms while CLOCK_REALTIME advanced {real} ms"
    );
}

#[test]
fn update_a_to_b_carries_every_workload() {
    carry_across("B");
}

#[test]
fn update_a_to_c_carries_every_workload() {
    carry_across("C");
}

/// Bad input: each a clear error before anything is frozen, and the process still runs on A.
#[test]
fn update_refuses_bad_targets_before_freezing() {
    let lab = Lab::prepare(&["A", "B"]).expect("prepare lab");
    let scenario = lab
        .scenario("update-bad-input", &["A", "B"], 256)
        .expect("scenario");
    let mut guest = lab
        .boot(&lab.guest_config(&scenario, "A").expect("config"))
        .expect("boot");
    let release_a = lab.kernel("A").expect("A").release.clone();
    guest.run_ok("mkdir -p /lab/wl", CMD).expect("mkdir");
    let uring = Workload::new("uring", "uring", "");
    let out = guest
        .run_ok(&uring.start_command(), CMD)
        .expect("start uring");
    let pid: i32 = out
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("@@PID uring "))
        .and_then(|p| p.trim().parse().ok())
        .expect("pid");
    wait_lines(&mut guest, &uring.log, 2);

    let update = |target: &str| {
        format!(
            "overboot update --kernel /lab/boot/B/vmlinuz --initrd /lab/boot/B/initrd.img \
             --append x --preserve {target}"
        )
    };
    let cases = [
        ("pid:999999".to_string(), "no such process"),
        ("pid:1".to_string(), "pid 1 is this kernel's init"),
        (format!("pid:{pid}"), "io_uring"),
    ];
    for (target, message) in &cases {
        let out = guest.run(&update(target), CMD).expect("run update");
        assert_eq!(out.status, 5, "exit code for {target}: {}", out.text());
        assert!(out.text().contains(message), "{target}: {}", out.text());
        assert!(
            out.text().contains("before anything was frozen"),
            "{}",
            out.text()
        );
    }
    // `plan` names the reason and exits non-zero too, without touching the process.
    let plan = guest
        .run(
            &format!("overboot plan --kernel /lab/boot/B/vmlinuz --preserve pid:{pid}"),
            CMD,
        )
        .expect("plan");
    assert_eq!(plan.status, 5, "plan exit code: {}", plan.text());
    assert!(plan.text().contains("io_uring"), "{}", plan.text());
    assert!(plan.text().contains("update would fail"), "{}", plan.text());
    // The refusal is warranted: CRIU 3.17 itself cannot dump an io_uring (tried with
    // --leave-running, so the process goes on).
    let criu = guest
        .run(
            &format!(
                "criu dump -t {pid} -D /tmp --leave-running -o criu.log; tail -3 /tmp/criu.log"
            ),
            CMD,
        )
        .expect("criu");
    assert!(
        criu.text().contains("Error"),
        "CRIU dumped an io_uring: {}",
        criu.text()
    );
    // Nothing was frozen or stopped: the process still runs and logs, on A.
    let n = line_count(&mut guest, &uring.log);
    guest
        .run_ok(&format!("kill -0 {pid}"), CMD)
        .expect("uring process alive");
    wait_lines(&mut guest, &uring.log, n + 2);
    let state = guest
        .run_ok(&format!("cut -d' ' -f3 /proc/{pid}/stat"), CMD)
        .expect("state");
    assert_ne!(state.text().trim(), "T", "the process was left stopped");
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_a);
    let loaded = guest
        .run_ok("cat /sys/kernel/kexec_loaded", CMD)
        .expect("loaded");
    assert_eq!(loaded.text().trim(), "0", "a kernel was left loaded");
}
