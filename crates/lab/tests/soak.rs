//! Soak: consecutive updates alternating A → B → A → B … under Redis and one client doing
//! `INCR` on one connection all along. No increment may be lost or duplicated over all of them,
//! and the guest's MemAvailable after each update stays within 5% of that after the first (no
//! leak across updates). CI runs 4 updates; `OVERBOOT_SOAK_UPDATES=20` runs the long mode.

use std::time::Duration;

use overboot_lab::incr::{IncrConfig, IncrLoop};
use overboot_lab::lab::{Lab, BASE_CMDLINE};
use overboot_lab::service::{self, agent_report};

const CMD: Duration = Duration::from_secs(60);

fn updates() -> usize {
    std::env::var("OVERBOOT_SOAK_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[test]
fn soak_alternating_updates_under_redis() {
    let lab = Lab::prepare(&["A", "B"]).expect("prepare lab");
    let scenario = lab.scenario("soak", &["A", "B"], 256).expect("scenario");
    let mut rg = service::boot_redis(&lab, &scenario, "A", 1536).expect("boot redis on A");
    let client = IncrLoop::start(
        rg.redis,
        IncrConfig {
            max_duration: Duration::from_secs(3600),
            ..IncrConfig::default()
        },
    )
    .expect("client");
    assert!(
        client.wait_answered(10, Duration::from_secs(60)),
        "client never got going"
    );

    let mut mem_after = Vec::new();
    let mut on = "A";
    for i in 0..updates() {
        let to = if on == "A" { "B" } else { "A" };
        let release_to = lab.kernel(to).expect("kernel").release.clone();
        let before = client.progress().answered;
        // Roll back to the kernel we are leaving, not always A.
        let extra = format!(
            "--rollback-kernel /lab/boot/{on}/vmlinuz --rollback-initrd /lab/boot/{on}/initrd.img"
        );
        let command = service::update_command(to, &[rg.redis_pid], &extra);
        assert!(command.contains(&format!("--append '{BASE_CMDLINE}'")));
        let run = service::run_update(
            &mut rg.guest,
            to,
            &release_to,
            &[rg.redis_pid],
            &extra,
            &mut || {},
        )
        .unwrap_or_else(|e| panic!("update {i} ({on} → {to}): {e}"));
        assert_eq!(run.resume_rc, 0, "update {i}: {}", run.resume_line);
        let report = agent_report(&mut rg.guest).expect("report");
        assert_eq!(report["outcome"], "resumed", "update {i}: {report}");
        assert!(
            client.wait_answered(before + 10, Duration::from_secs(120)),
            "update {i}: the client is not answered on {to}"
        );
        let mem: u64 = rg
            .guest
            .run_ok("awk '/MemAvailable/ {print $2}' /proc/meminfo", CMD)
            .expect("meminfo")
            .text()
            .trim()
            .parse()
            .expect("MemAvailable");
        eprintln!(
            "soak: update {i} {on} → {to}: blackout {:?}, MemAvailable {mem} kB",
            run.jump_to_resumed
        );
        mem_after.push(mem);
        on = to;
    }
    let (summary, _) = client.finish();
    assert!(
        summary.connection_survived,
        "the connection broke: {summary:?}"
    );
    assert_eq!(summary.lost, 0, "increments lost: {summary:?}");
    assert_eq!(summary.duplicated, 0, "increments duplicated: {summary:?}");
    let first = mem_after[0] as f64;
    for (i, mem) in mem_after.iter().enumerate() {
        let drift = (*mem as f64 - first).abs() / first;
        assert!(
            drift <= 0.05,
            "MemAvailable after update {i} is {mem} kB, {:.1}% off the first ({first} kB)",
            drift * 100.0
        );
    }
}
