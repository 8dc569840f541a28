//! The README's demo: Redis on kernel A in a throwaway QEMU guest; on the host, one client with
//! one persistent connection sending `INCR` every 20 ms, and 50,000 keys written before the
//! update and checked after it; `overboot update` to B (or C) with Redis preserved. While it
//! runs, a line per second of client progress; at the end a human summary and, as the very last
//! line of stdout, one JSON object ([`DemoResult`]).

use std::time::{Duration, Instant};

use crate::incr::{IncrConfig, IncrLoop};
use crate::lab::Lab;
use crate::redis::{self, KeySet};
use crate::service::{self, ServiceError, CMD};

const KEYS: u64 = 50_000;
const IO: Duration = Duration::from_secs(60);

/// What the demo measured (the last line of its stdout).
#[derive(Debug, serde::Serialize)]
pub struct DemoResult {
    /// Release before the update.
    pub from: String,
    /// Release after the update.
    pub to: String,
    /// The client's one connection was never reset and every command was answered.
    pub connection_survived: bool,
    /// The counter's last value.
    pub last_value: i64,
    /// Increments missing from the sequence.
    pub lost: u64,
    /// Replies not greater than the one before.
    pub duplicated: u64,
    /// Keys written before the update and read back after it.
    pub keys_checked: u64,
    /// Of those, missing (or changed: `keys_wrong`).
    pub keys_missing: u64,
    /// Keys whose bytes changed.
    pub keys_wrong: u64,
    /// The longest gap between two replies on the persistent connection (client-observed).
    pub blackout_ms: u64,
    /// Commands sent during that gap, all answered after it when the connection survived.
    pub sent_during_blackout: u64,
    /// A new connection after the update was accepted (the listening socket survived).
    pub new_connection: bool,
    /// The agent's phases (name → ms) from `overboot status --json` in the guest.
    pub phases: serde_json::Value,
    /// The agent's whole report.
    pub report: serde_json::Value,
    /// The guest console log.
    pub console_log: String,
}

/// Runs the demo from kernel A to `to`. Progress goes to stderr, the summary to stdout.
pub fn run(to: &str) -> Result<DemoResult, ServiceError> {
    eprintln!("demo: preparing the lab (kernels A and {to}, guest images with Redis)...");
    let lab = Lab::prepare(&["A", to])?;
    let scenario = lab.scenario("demo", &["A", to], 256)?;
    let release_to = lab.kernel(to)?.release.clone();
    eprintln!("demo: booting a throwaway QEMU guest on kernel A and starting Redis in it...");
    let mut rg = service::boot_redis(&lab, &scenario, "A", 1536)?;
    println!(
        "guest runs {}; Redis (pid {}) is at {} on the host",
        rg.from, rg.redis_pid, rg.redis
    );
    let keys = KeySet::new("demo", KEYS);
    keys.write(rg.redis, IO)?;
    println!("wrote {KEYS} keys");
    let incr = IncrLoop::start(rg.redis, IncrConfig::default())?;
    incr.wait_answered(50, Duration::from_secs(30));
    println!("INCR client: one connection, a command every 20 ms");
    println!(
        "overboot update --to {release_to} --preserve pid:{}",
        rg.redis_pid
    );

    let started = Instant::now();
    let mut tick = || {
        let p = incr.progress();
        println!(
            "  t={:>3}s  last_value={:<6} answered={:<6} sent={:<6} silent={:>6} ms  longest gap={:>6} ms{}",
            started.elapsed().as_secs(),
            p.last_value,
            p.answered,
            p.sent,
            p.silent_ms,
            p.longest_gap_ms,
            if p.failed { "  CONNECTION FAILED" } else { "" }
        );
    };
    let run = service::run_update(
        &mut rg.guest,
        to,
        &release_to,
        &[rg.redis_pid],
        "",
        &mut tick,
    )?;
    // Keep the client going until it is answered steadily on the new kernel.
    let answered = incr.progress().answered;
    for _ in 0..60 {
        if incr.wait_answered(answered + 50, Duration::from_secs(1)) || incr.progress().failed {
            break;
        }
        tick();
    }
    tick();
    let (summary, _) = incr.finish();
    let new_connection = redis::ping_new_connection(rg.redis, Duration::from_secs(30)).is_ok();
    let check = keys.check(rg.redis, IO)?;
    let now_on = rg.guest.run_ok("uname -r", CMD)?.text().trim().to_string();
    let report = service::agent_report(&mut rg.guest).unwrap_or(serde_json::Value::Null);

    println!();
    println!(
        "{} → {now_on}: agent exit status {}",
        rg.from, run.resume_rc
    );
    println!(
        "  connection: {}; counter reached {} with {} lost and {} duplicated",
        if summary.connection_survived {
            "survived (no reset, no reconnect)"
        } else {
            "BROKEN"
        },
        summary.last_value,
        summary.lost,
        summary.duplicated
    );
    println!(
        "  client-observed blackout: {} ms; {} commands sent during it, {} answered after it",
        summary.blackout_ms, summary.sent_during_blackout, summary.answered_after_blackout
    );
    println!(
        "  keys: {} checked, {} missing, {} changed; new connection: {}",
        check.keys_checked,
        check.keys_missing,
        check.keys_wrong,
        if new_connection {
            "accepted"
        } else {
            "REFUSED"
        }
    );
    if let Some(error) = &summary.error {
        println!("  client error: {error}");
    }
    Ok(DemoResult {
        from: rg.from.clone(),
        to: now_on,
        connection_survived: summary.connection_survived,
        last_value: summary.last_value,
        lost: summary.lost,
        duplicated: summary.duplicated,
        keys_checked: check.keys_checked,
        keys_missing: check.keys_missing,
        keys_wrong: check.keys_wrong,
        blackout_ms: summary.blackout_ms,
        sent_during_blackout: summary.sent_during_blackout,
        new_connection,
        phases: report.get("phases").cloned().unwrap_or_default(),
        report,
        console_log: rg.guest.log_path().display().to_string(),
    })
}
