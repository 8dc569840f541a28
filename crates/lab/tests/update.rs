//! Lab tests of `overboot update`: process trees carried from kernel A to B (a stable update,
//! memory restored lazily) and to C (6.12, every page before the tasks run) through one update
//! each, every workload asserted separately afterwards; and bad input refused before anything
//! is frozen.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use overboot_lab::carry::{self, Running};
use overboot_lab::lab::{Lab, BASE_CMDLINE, BOOT_TIMEOUT};
use overboot_lab::workloads::Workload;
use overboot_lab::Guest;

const CMD: Duration = Duration::from_secs(120);
const HEAP_MIB: u32 = 256;
/// Reserved RAM for the map of the lazy update (the heaps, pre-copied, and their last dump).
const PMEM_MIB: u32 = 1536;

/// Waits (in the guest, polling the file) until `path` has at least `lines` lines.
fn wait_lines(guest: &mut Guest, path: &str, lines: u64) {
    carry::wait_lines(guest, path, lines).unwrap_or_else(|e| panic!("{e}"));
}

fn line_count(guest: &mut Guest, path: &str) -> u64 {
    carry::line_count(guest, path).unwrap_or_else(|e| panic!("{e}"))
}

/// Carries the standard workloads from A to `to`; with `lazy`, their memory comes back
/// through `--lazy-restore` (overboot's page server per tree, until every page is back).
fn carry_across(to: &str, lazy: bool) {
    let lab = Lab::prepare(&["A", to]).expect("prepare lab");
    let name = format!("update-a-to-{}", to.to_lowercase());
    let scenario = lab.scenario(&name, &["A", to], 512).expect("scenario");
    let mut config = lab.guest_config(&scenario, "A").expect("config");
    config.memory_mib = 3072;
    // The lazy update goes through the reserved-RAM store with pre-copy, so that the page
    // servers serve pages of the pre-copy rounds too; the other through the initrd (the default
    // here would be the data disk, which the rollback, network and soak tests take).
    let mut handover = " --handover initrd".to_string();
    let mut append = BASE_CMDLINE.to_string();
    if lazy {
        let (total, offset) = overboot_lab::lab::pmem_layout(config.memory_mib, PMEM_MIB);
        let memmap = format!("memmap={PMEM_MIB}M!{offset}M");
        config.memory_mib = total;
        config.append = format!("{} {memmap}", config.append);
        handover = " --handover dir:/pmem/ssm".into();
        append = format!("{append} {memmap}");
    }
    let mut guest = lab.boot(&config).expect("boot A");
    let release_to = lab.kernel(to).expect("kernel").release.clone();

    let running = Running::start(&mut guest, carry::standard(HEAP_MIB)).expect("workloads");
    let preserve = running.preserve_args();
    let pids = running.pids.clone();
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
             --append '{append}' --rollback-kernel /lab/boot/A/vmlinuz \
             --rollback-initrd /lab/boot/A/initrd.img{preserve}{}",
            if lazy {
                format!(" --lazy-restore{handover}")
            } else {
                handover.clone()
            }
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
    running
        .check_alive_and_progressing(&mut guest)
        .unwrap_or_else(|e| panic!("after the switch: {e}"));
    let report = overboot_lab::service::agent_report(&mut guest).expect("status --json");
    for phase in [
        "freeze_dump",
        "write_map",
        "publish",
        // A map written in place is loaded before the freeze (`kexec_load_early`).
        if lazy {
            "kexec_load_early"
        } else {
            "kexec_load"
        },
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
    let daemons: Vec<i64> = report["trees"]
        .as_array()
        .expect("trees")
        .iter()
        .filter_map(|t| t["lazy_pages"]["pid"].as_i64())
        .collect();
    if lazy {
        // The two heaps come back through page servers; the small trees are restored whole
        // (a server would cost them more of the blackout than it saves).
        let mut served: Vec<i64> = report["trees"]
            .as_array()
            .expect("trees")
            .iter()
            .filter(|t| t["lazy_pages"]["pid"].is_i64())
            .map(|t| t["root_pid"].as_i64().unwrap_or(0))
            .collect();
        served.sort_unstable();
        let mut heaps: Vec<i64> = ["mem1", "mem8"]
            .iter()
            .map(|name| i64::from(pids[*name]))
            .collect();
        heaps.sort_unstable();
        assert_eq!(
            served, heaps,
            "the heaps, and only they, should be restored lazily: {report}"
        );
        // Every server copies the rest in the background and exits once every page is back,
        // its shell then writing its exit code beside its log: 0, every page transferred.
        let status = guest
            .run_ok(
                "for f in /run/overboot/*/*/lazy-pages.log; do s=${f%.log}.status; \
                 while [ ! -e $s ]; do sleep 0.2; done; echo \"$f $(cat $s)\"; done",
                Duration::from_secs(600),
            )
            .expect("lazy-pages daemons finished");
        let finished: Vec<&String> = status
            .lines
            .iter()
            .filter(|l| l.contains(".log "))
            .collect();
        assert_eq!(finished.len(), daemons.len(), "{}", status.text());
        for line in finished {
            assert!(line.ends_with(" 0"), "a lazy-pages daemon failed: {line}");
        }
        let logs = guest
            .run_ok("cat /run/overboot/*/*/lazy-pages.log", CMD)
            .expect("lazy-pages logs");
        // One summary per server, and the memory of the trees really came through them (a
        // server that served nothing would pass every check above with an eager restore).
        let summaries: Vec<&String> = logs
            .lines
            .iter()
            .filter(|l| l.starts_with("every page is back: "))
            .collect();
        assert_eq!(summaries.len(), daemons.len(), "{}", logs.text());
        let served: u64 = summaries
            .iter()
            .filter_map(|l| {
                l.split(" tasks, ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        assert!(
            served * 4096 >= u64::from(HEAP_MIB) << 20,
            "the page servers put in only {served} pages: {}",
            logs.text()
        );
        // Pre-copy weighed a second round for each heap by the pages it wrote after the first
        // (soft-dirty, read from its page tables): a few counters and stacks, so none ran.
        for name in ["mem1", "mem8"] {
            let tree = format!("pid-{}", pids[name]);
            let rounds: Vec<&serde_json::Value> = report["pre_copy"]
                .as_array()
                .expect("pre_copy rounds")
                .iter()
                .filter(|r| r["tree"] == tree.as_str())
                .collect();
            assert_eq!(rounds.len(), 1, "{name}: {rounds:?}");
            let first = rounds[0]["bytes"].as_u64().unwrap_or(0);
            let written = rounds[0]["dirty_after"].as_u64();
            assert!(
                first >= u64::from(HEAP_MIB) << 20,
                "{name}: round 1 wrote {first} bytes"
            );
            assert!(
                written.is_some_and(|w| w > 0 && w < 4 << 20),
                "{name}: written after round 1: {written:?} (the counters and stacks it keeps \
                 writing, under the 4 MiB that is small)"
            );
        }
        // Gone from the record's point of view too: a next update may start.
        running
            .check_alive_and_progressing(&mut guest)
            .unwrap_or_else(|e| panic!("after every page came back: {e}"));
    } else {
        assert!(daemons.is_empty(), "lazy daemons without --lazy-restore");
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

    // Stop every workload, then judge every log from the disk.
    let sizes = running.stop_and_sync(&mut guest).expect("stop and sync");
    guest.kill();
    let verdicts = running
        .judge(&scenario.disk, &sizes)
        .unwrap_or_else(|e| panic!("{e}"));
    let clock = &verdicts["clock"];
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
    carry_across("B", true);
}

#[test]
fn update_a_to_c_carries_every_workload() {
    carry_across("C", false);
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
