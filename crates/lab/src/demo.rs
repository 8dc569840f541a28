//! The README's demo: Redis on kernel A in a throwaway QEMU guest; on the host, one client with
//! one persistent connection sending `INCR` every 20 ms, and 50,000 keys written before the
//! update and checked after it; `overboot update` to B (or C) with Redis preserved. While it
//! runs, a line per second of client progress; at the end a human summary and, as the very last
//! line of stdout, one JSON object ([`DemoResult`]).
//!
//! With `--profile trixie` ([`run_trixie`]) the guest is the Debian 13 server instead: systemd
//! as PID 1, Debian's `redis-server.service` made preservable with `overboot systemd prepare`,
//! and `overboot update --preserve unit:redis-server.service` from 6.12 to 7.3; the summary
//! adds the unit's state and main PID before and after.

use std::time::{Duration, Instant};

use crate::incr::{IncrConfig, IncrLoop, IncrSummary};
use crate::lab::Lab;
use crate::redis::{self, KeyCheck, KeySet};
use crate::service::{self, ServiceError, CMD};
use crate::trixie::carry::{self, UnitState};
use crate::trixie::{Trixie, CMDLINE};

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
    /// The systemd unit carried (`--profile trixie`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitCarried>,
}

/// A systemd unit before and after the update.
#[derive(Debug, serde::Serialize)]
pub struct UnitCarried {
    /// The unit.
    pub name: String,
    /// Before the update.
    pub before: UnitState,
    /// After it.
    pub after: UnitState,
    /// Every `redis-server` process after the update.
    pub redis_pids_after: Vec<String>,
}

/// What the host saw after the update.
struct Seen {
    summary: IncrSummary,
    check: KeyCheck,
    new_connection: bool,
    report: serde_json::Value,
}

impl DemoResult {
    fn new(
        (from, to): (String, String),
        seen: Seen,
        console_log: String,
        unit: Option<UnitCarried>,
    ) -> DemoResult {
        let Seen {
            summary,
            check,
            new_connection,
            report,
        } = seen;
        DemoResult {
            from,
            to,
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
            console_log,
            unit,
        }
    }

    /// The demo succeeded: the connection survived, nothing was lost or changed, and a carried
    /// unit is active with the same main PID and no second copy.
    pub fn ok(&self) -> bool {
        let unit_ok = self.unit.as_ref().is_none_or(|u| {
            u.after.active == "active"
                && u.after.main_pid == u.before.main_pid
                && u.redis_pids_after == [u.after.main_pid.clone()]
        });
        self.connection_survived && self.keys_missing == 0 && self.keys_wrong == 0 && unit_ok
    }
}

/// A line per second of the client's progress.
fn ticker(incr: &IncrLoop) -> impl FnMut() + '_ {
    let started = Instant::now();
    move || {
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
    }
}

/// Keeps the client going until it is answered steadily on the new kernel.
fn settle_client(incr: &IncrLoop, tick: &mut dyn FnMut()) {
    let answered = incr.progress().answered;
    for _ in 0..60 {
        if incr.wait_answered(answered + 50, Duration::from_secs(1)) || incr.progress().failed {
            break;
        }
        tick();
    }
    tick();
}

/// Prints what the client saw.
fn print_summary(summary: &IncrSummary, check: &KeyCheck, new_connection: bool) {
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

    let mut tick = ticker(&incr);
    let run = service::run_update(
        &mut rg.guest,
        to,
        &release_to,
        &[rg.redis_pid],
        "",
        &mut tick,
    )?;
    settle_client(&incr, &mut tick);
    drop(tick);
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
    print_summary(&summary, &check, new_connection);
    Ok(DemoResult::new(
        (rg.from.clone(), now_on),
        Seen {
            summary,
            check,
            new_connection,
            report,
        },
        rg.guest.log_path().display().to_string(),
        None,
    ))
}

/// The demo on the Debian 13 profile: `redis-server.service` carried from 6.12 to 7.3.
pub fn run_trixie() -> Result<DemoResult, ServiceError> {
    const UNIT: &str = "redis-server.service";
    eprintln!("demo: preparing the Debian 13 profile (kernels 6.12 and 7.3, root file system)...");
    let trixie = Trixie::prepare().map_err(|e| ServiceError::Trixie(Box::new(e)))?;
    let new = trixie
        .release("7.3")
        .map_err(|e| ServiceError::Trixie(Box::new(e)))?
        .to_string();
    let (config, ports) = trixie
        .guest_config("demo-trixie", "6.12", &[6379])
        .map_err(|e| ServiceError::Trixie(Box::new(e)))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    eprintln!("demo: booting a throwaway Debian 13 guest (systemd) on 6.12...");
    let (mut guest, booted) = trixie
        .boot(&config)
        .map_err(|e| ServiceError::Trixie(Box::new(e)))?;
    let from = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
    println!("{}", booted.trim());
    guest.run(
        "systemctl is-system-running --wait",
        Duration::from_secs(300),
    )?;
    let prepared = guest.run_ok("overboot systemd prepare redis-server --restart", CMD)?;
    println!("{}", prepared.text().trim());
    redis::wait_ready(addr, Duration::from_secs(60))?;
    let before = carry::unit_state(&mut guest, UNIT)?;
    println!(
        "{UNIT} is {} with main PID {}; Redis is at {addr} on the host",
        before.active, before.main_pid
    );
    let keys = KeySet::new("demo", KEYS);
    keys.write(addr, IO)?;
    println!("wrote {KEYS} keys");
    let incr = IncrLoop::start(addr, IncrConfig::default())?;
    incr.wait_answered(50, Duration::from_secs(30));
    println!("INCR client: one connection, a command every 20 ms");
    println!("overboot update --to {new} --preserve unit:{UNIT}");
    let mut tick = ticker(&incr);
    carry::update_units(
        &mut guest,
        &new,
        &format!("{CMDLINE} overboot.demo"),
        &[UNIT],
        &mut tick,
    )?;
    settle_client(&incr, &mut tick);
    drop(tick);
    let (summary, _) = incr.finish();
    let new_connection = redis::ping_new_connection(addr, Duration::from_secs(30)).is_ok();
    let check = keys.check(addr, IO)?;
    let now_on = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
    let after = carry::unit_state(&mut guest, UNIT)?;
    let redis_pids_after = carry::pids_named(&mut guest, "redis-server")?;
    let report = service::agent_report(&mut guest).unwrap_or(serde_json::Value::Null);

    println!();
    println!("{from} → {now_on} (systemd, Debian 13)");
    println!(
        "  {UNIT}: {} with main PID {} (before: {} with {}); redis-server processes: {}",
        after.active,
        after.main_pid,
        before.active,
        before.main_pid,
        redis_pids_after.join(" ")
    );
    print_summary(&summary, &check, new_connection);
    Ok(DemoResult::new(
        (from, now_on),
        Seen {
            summary,
            check,
            new_connection,
            report,
        },
        guest.log_path().display().to_string(),
        Some(UnitCarried {
            name: UNIT.into(),
            before,
            after,
            redis_pids_after,
        }),
    ))
}
