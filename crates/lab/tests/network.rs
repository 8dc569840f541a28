//! Lab tests of TCP through `overboot update`: a real Redis in the guest, a real client on the
//! host, one update each from kernel A to B (a stable update) and to C (6.12), every property of
//! the network issue asserted separately; and the proof that the network lock is what saves the
//! client: without it, the client sees a reset or loses data.

use std::time::Duration;

use overboot_lab::incr::{IncrConfig, IncrLoop, IncrSummary};
use overboot_lab::lab::Lab;
use overboot_lab::net::EchoServer;
use overboot_lab::redis::{self, KeySet};
use overboot_lab::service::{self, RedisGuest, ServiceError, CMD};
use overboot_lab::{disk, workloads, Guest};

const KEYS: u64 = 50_000;
const TCPOUT_LOG: &str = "/lab/wl/tcpout.log";
const IO: Duration = Duration::from_secs(60);

/// Waits (in the guest, polling the file) until `path` has at least `lines` lines.
fn wait_lines(guest: &mut Guest, path: &str, lines: u64) {
    guest
        .run_ok(
            &format!(
                "timeout 120 sh -c 'until [ \"$(wc -l < {path} 2>/dev/null || echo 0)\" -ge {lines} ]; do sleep 0.2; done'"
            ),
            Duration::from_secs(150),
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

/// What `overboot update` failing before the jump most likely means while the TCP side is not
/// in: say so instead of a bare timeout.
fn update_failed(e: ServiceError) -> ! {
    match e {
        ServiceError::UpdateFailed { .. } => panic!(
            "{e}\n(`overboot update` could not carry these processes: does this build of \
             overboot support TCP connections yet — CRIU tcp-established, the network lock \
             and the carried network configuration?)"
        ),
        e => panic!("update did not complete: {e}"),
    }
}

fn boot(lab: &Lab, name: &str, to: &str) -> RedisGuest {
    let scenario = lab.scenario(name, &["A", to], 256).expect("scenario");
    service::boot_redis(lab, &scenario, "A", 1536).unwrap_or_else(|e| {
        panic!("Redis on A did not come up (eth0 configured by the lab init, port forward): {e:?}")
    })
}

fn carry_redis_and_tcp(to: &str) {
    let lab = Lab::prepare(&["A", to]).expect("prepare lab");
    let release_to = lab.kernel(to).expect("kernel").release.clone();
    let name = format!("network-a-to-{}", to.to_lowercase());
    let RedisGuest {
        mut guest,
        redis: addr,
        redis_pid,
        ..
    } = boot(&lab, &name, to);

    let keys = KeySet::new("before", KEYS);
    keys.write(addr, IO)
        .expect("write 50,000 keys before the update");
    let echo = EchoServer::start().expect("echo server");
    let tcpout_pid =
        service::start_tcpout(&mut guest, TCPOUT_LOG, echo.port()).expect("start tcpout");
    wait_lines(&mut guest, TCPOUT_LOG, 5);
    let incr = IncrLoop::start(addr, IncrConfig::default()).expect("INCR client connects");
    assert!(
        incr.wait_answered(50, Duration::from_secs(60)),
        "the INCR client got no steady replies before the update: {:?}",
        incr.progress()
    );
    let tcpout_before = line_count(&mut guest, TCPOUT_LOG);

    let run = service::run_update(
        &mut guest,
        to,
        &release_to,
        &[redis_pid, tcpout_pid],
        "",
        &mut || {},
    )
    .unwrap_or_else(|e| update_failed(e));
    assert_eq!(
        run.resume_rc,
        0,
        "resume failed: {}\nlog: {}",
        run.resume_line,
        guest.log_path().display()
    );
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), release_to, "not on the new kernel");

    // Let the client run on the new kernel for a while (50 more replies), then stop it.
    let answered = incr.progress().answered;
    let steady = incr.wait_answered(answered + 50, Duration::from_secs(120));
    let (incr, _samples) = incr.finish();
    eprintln!("INCR client: {incr:?}");
    // Every property is checked, and every failure reported together.
    let mut failures = Vec::new();
    check_incr(&incr, steady, &mut failures);

    // Each tree's connection (the INCR client's to Redis, tcpout's to the echo server) had
    // its peer nudged to resend what the blackout swallowed.
    match overboot_lab::service::agent_report(&mut guest) {
        Ok(report) => {
            for (pid, what) in [(redis_pid, "redis"), (tcpout_pid, "tcpout")] {
                let nudged = report["trees"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["root_pid"].as_i64() == Some(i64::from(pid)))
                    .and_then(|t| t["nudged_connections"].as_u64());
                if nudged.unwrap_or(0) < 1 {
                    failures.push(format!(
                        "{what}: no connection of it was nudged ({nudged:?} in the report)"
                    ));
                }
            }
        }
        Err(e) => failures.push(format!("overboot status --json: {e}")),
    }
    // The listening socket survived: a new connection is accepted.
    if let Err(e) = redis::ping_new_connection(addr, Duration::from_secs(30)) {
        failures.push(format!(
            "a new connection after the update was refused: {e}"
        ));
    }
    // Every key written before is there, byte for byte.
    match keys.check(addr, IO) {
        Ok(c) if c.keys_checked == KEYS && c.keys_missing == 0 && c.keys_wrong == 0 => {}
        Ok(c) => failures.push(format!("keys lost or changed: {c:?}")),
        Err(e) => failures.push(format!("reading the keys back failed: {e}")),
    }
    // The outbound connection kept exchanging lines, from the same process.
    if let Err(e) = guest.run_ok(&format!("kill -0 {redis_pid} && kill -0 {tcpout_pid}"), CMD) {
        failures.push(format!("redis or tcpout is not alive with its pid: {e}"));
    }
    if !log_reaches(&mut guest, TCPOUT_LOG, tcpout_before + 20) {
        failures.push(format!(
            "tcpout: fewer than 20 exchanges after the switch ({TCPOUT_LOG} stuck near {tcpout_before} lines)"
        ));
    }
    match service::agent_report(&mut guest) {
        Ok(report) if report["outcome"] == "resumed" => {}
        Ok(report) => failures.push(format!("agent report: {report}")),
        Err(e) => failures.push(format!("agent report: {e}")),
    }
    // Stop the writer and flush the guest's page cache: the log is read from the disk image.
    if let Err(e) = guest.run_ok(&format!("kill -STOP {tcpout_pid}; sync"), CMD) {
        failures.push(format!("stopping tcpout and syncing: {e}"));
    }
    guest.kill();

    let log = disk::read_file(&guest_disk(&name), "/wl/tcpout.log").expect("tcpout log");
    let log = String::from_utf8_lossy(&log);
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error")).collect();
    if !errors.is_empty() {
        failures.push(format!(
            "the outbound connection broke: {}",
            errors.join("; ")
        ));
    }
    match workloads::verify_sequence(&log, "echo") {
        Ok(v) if v.pid != tcpout_pid => {
            failures.push(format!(
                "tcpout records carry pid {} not {tcpout_pid}",
                v.pid
            ));
        }
        Ok(v) if v.records < tcpout_before + 20 => failures.push(format!(
            "tcpout: {} records, {tcpout_before} before the switch",
            v.records
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("tcpout sequence: {e}")),
    }
    let stats = echo.stats();
    if stats.connections != 1 {
        failures.push(format!(
            "the guest reconnected to the echo server: {stats:?}"
        ));
    }
    assert!(
        failures.is_empty(),
        "A → {to}: {} of the network properties failed:\n- {}\nconsole log: {}",
        failures.len(),
        failures.join("\n- "),
        overboot_lab::host::run_dir(&name)
            .join("console.log")
            .display()
    );
}

/// Whether `path` in the guest reaches `lines` lines within two minutes.
fn log_reaches(guest: &mut Guest, path: &str, lines: u64) -> bool {
    guest
        .run(
            &format!(
                "timeout 120 sh -c 'until [ \"$(wc -l < {path} 2>/dev/null || echo 0)\" -ge {lines} ]; do sleep 0.2; done'"
            ),
            Duration::from_secs(150),
        )
        .is_ok_and(|o| o.status == 0)
}

fn check_incr(incr: &IncrSummary, steady: bool, failures: &mut Vec<String>) {
    if !incr.connection_survived {
        let hint = if incr
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unanswered"))
        {
            " (the connection was not reset but replies crawled after the restore: look at the \
             restored socket's receive window — QEMU's user net never negotiates window scaling)"
        } else {
            ""
        };
        failures.push(format!(
            "the INCR connection did not survive: {:?}{hint}",
            incr.error
        ));
    }
    if !steady {
        failures
            .push("the INCR client did not get 50 replies within 120 s after the resume".into());
    }
    if incr.lost != 0 || incr.duplicated != 0 {
        failures.push(format!(
            "INCR replies: {} lost (gaps or unanswered), {} duplicated",
            incr.lost, incr.duplicated
        ));
    }
    if i64::try_from(incr.answered).unwrap_or(0) != incr.last_value - incr.first_value + 1 {
        failures.push("not every INCR reply was the previous plus one".into());
    }
    if incr.blackout_ms <= 1000 {
        failures.push(format!(
            "no blackout seen by the client ({} ms): was the service really carried?",
            incr.blackout_ms
        ));
    }
    if incr.sent_during_blackout == 0 || incr.answered_after_blackout != incr.sent_during_blackout {
        failures.push(format!(
            "of {} INCR commands sent during the {} ms blackout, {} were answered after it",
            incr.sent_during_blackout, incr.blackout_ms, incr.answered_after_blackout
        ));
    }
}

fn guest_disk(name: &str) -> std::path::PathBuf {
    overboot_lab::host::run_dir(name).join("data.ext4")
}

#[test]
fn network_a_to_b_keeps_redis_clients_and_outbound_tcp() {
    carry_redis_and_tcp("B");
}

#[test]
fn network_a_to_c_keeps_redis_clients_and_outbound_tcp() {
    carry_redis_and_tcp("C");
}

/// Without the network lock the peer sees the socket vanish between the dump and the restore:
/// the client gets a reset or loses data. This proves the lock is what saves it.
#[test]
fn network_without_the_lock_resets_or_loses() {
    let lab = Lab::prepare(&["A", "B"]).expect("prepare lab");
    let release_to = lab.kernel("B").expect("kernel").release.clone();
    let RedisGuest {
        mut guest,
        redis: addr,
        redis_pid,
        ..
    } = boot(&lab, "network-no-lock", "B");
    let incr = IncrLoop::start(
        addr,
        IncrConfig {
            drain: Duration::from_secs(30),
            ..IncrConfig::default()
        },
    )
    .expect("INCR client connects");
    assert!(
        incr.wait_answered(50, Duration::from_secs(60)),
        "no replies before the update"
    );
    let run = service::run_update(
        &mut guest,
        "B",
        &release_to,
        &[redis_pid],
        "--unsafe-no-network-lock",
        &mut || {},
    );
    match &run {
        Err(ServiceError::UpdateFailed { output, .. })
            if output.contains("unsafe-no-network-lock") =>
        {
            panic!("overboot does not know --unsafe-no-network-lock yet:\n{output}")
        }
        Err(e @ ServiceError::UpdateFailed { .. }) => panic!(
            "the update without the lock failed before the jump, so it shows nothing about \
             the lock: {e}"
        ),
        Err(e) => eprintln!("update without the lock did not complete cleanly: {e}"),
        Ok(r) => eprintln!("update without the lock: {}", r.resume_line),
    }
    // Give the client the same time a locked update would need to come back.
    let answered = incr.progress().answered;
    let _ = incr.wait_answered(answered + 50, Duration::from_secs(60));
    let (incr, _) = incr.finish();
    eprintln!("INCR client without the lock: {incr:?}");
    assert!(
        !incr.connection_survived || incr.lost > 0 || incr.duplicated > 0,
        "without the network lock the client neither got a reset nor lost data — the lock \
         test proves nothing: {incr:?}"
    );
}
