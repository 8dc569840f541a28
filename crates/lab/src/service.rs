//! A guest that serves Redis to the host through a forwarded port, and `overboot update` driven
//! through it: the shared part of the network tests, the demo and the benchmark.
//!
//! ```text
//! boot_redis ─► start_redis (preserved workload, pid printed) ─► wait_ready (PING, bounded)
//! run_update ─► "jumping into <release>"  (or "@@LAB update-exited rc=N": failed before the jump)
//!            ─► "@@LAB resume-done rc=N"  (the new kernel's agent)
//!            ─► "@@LAB booted"            (the lab's shell is back)
//! agent_report ─► `overboot status --json` in the guest
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::guest::{Guest, GuestError};
use crate::lab::{Lab, LabError, Scenario, BASE_CMDLINE, BOOT_TIMEOUT};
use crate::net::{self, NetError};
use crate::redis::{self, RedisError};

/// Timeout of one guest shell command.
pub const CMD: Duration = Duration::from_secs(120);

/// Errors of a service scenario.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The lab failed.
    #[error("lab")]
    Lab(#[from] LabError),
    /// The guest failed.
    #[error("guest")]
    Guest(#[from] GuestError),
    /// No free port, or the echo server failed.
    #[error("host network")]
    Net(#[from] NetError),
    /// Redis did not answer.
    #[error("redis")]
    Redis(#[from] RedisError),
    /// A workload did not print its pid.
    #[error("{name} did not start: {output}")]
    Start { name: String, output: String },
    /// `overboot update` exited in the old kernel instead of jumping.
    #[error("overboot update failed before the jump (exit {rc}):\n{output}\nconsole log: {log}")]
    UpdateFailed {
        rc: i32,
        output: String,
        log: String,
    },
    /// A step did not finish in time.
    #[error("timed out after {secs}s waiting for {what}; console log: {log}")]
    Timeout {
        what: String,
        secs: u64,
        log: String,
    },
    /// `overboot status --json` printed no report.
    #[error("no agent report from `overboot status --json`: {0}")]
    Report(String),
    /// The Debian 13 profile failed.
    #[error("trixie profile")]
    Trixie(#[source] Box<crate::trixie::TrixieError>),
}

/// A guest on its first kernel with Redis running and reachable from the host.
#[derive(Debug)]
pub struct RedisGuest {
    /// The guest.
    pub guest: Guest,
    /// Redis as the host reaches it (`127.0.0.1:<forwarded port>`).
    pub redis: SocketAddr,
    /// Redis's pid in the guest.
    pub redis_pid: i32,
    /// The release the guest booted.
    pub from: String,
}

/// Boots `label` of `scenario` with `memory_mib`, eth0 on QEMU's user network and a free host
/// port forwarded to Redis; starts Redis (pids from 3000 up, above any early-boot range) and
/// waits until it answers.
pub fn boot_redis(
    lab: &Lab,
    scenario: &Scenario,
    label: &str,
    memory_mib: u32,
) -> Result<RedisGuest, ServiceError> {
    boot_redis_with(lab, scenario, label, memory_mib, &RedisBoot::default())
}

/// Options of [`boot_redis_with`].
#[derive(Debug, Clone, Default)]
pub struct RedisBoot {
    /// A QEMU monitor, so that the guest can be reset.
    pub monitor: bool,
    /// Extra `redis-server` options.
    pub redis_options: String,
    /// RAM reserved as legacy persistent memory (`/pmem` in the guest), MiB, on top of the
    /// guest's memory.
    pub pmem_mib: Option<u32>,
    /// Appended to the guest kernel's command line (empty: nothing).
    pub append: String,
}

/// Like [`boot_redis`], with the options of `boot`.
pub fn boot_redis_with(
    lab: &Lab,
    scenario: &Scenario,
    label: &str,
    memory_mib: u32,
    boot: &RedisBoot,
) -> Result<RedisGuest, ServiceError> {
    let ports = [net::REDIS_GUEST_PORT];
    let (mut config, ports) = match boot.pmem_mib {
        Some(pmem) => lab.guest_config_pmem(scenario, label, &ports, memory_mib, pmem)?,
        None => {
            let (mut config, ports) = lab.guest_config_net(scenario, label, &ports)?;
            config.memory_mib = memory_mib;
            (config, ports)
        }
    };
    config.monitor = boot.monitor;
    if !boot.append.is_empty() {
        config.append = format!("{} {}", config.append, boot.append);
    }
    let port = ports[0];
    let mut guest = lab.boot(&config)?;
    let from = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
    guest.run_ok(
        "mkdir -p /lab/wl && echo 3000 > /proc/sys/kernel/ns_last_pid && ip -4 addr show dev eth0 | grep -q 10.0.2.15",
        CMD,
    )?;
    let redis = net::localhost(port);
    let redis_pid = start_redis(
        &mut guest,
        redis,
        &boot.redis_options,
        Duration::from_secs(120),
    )?;
    Ok(RedisGuest {
        guest,
        redis,
        redis_pid,
        from,
    })
}

/// Starts `redis-server` with extra options in a booted guest and waits up to `ready` until
/// it answers `PING` from the host at `redis`; returns its pid.
pub fn start_redis(
    guest: &mut Guest,
    redis: SocketAddr,
    options: &str,
    ready: Duration,
) -> Result<i32, ServiceError> {
    let out = guest.run_ok(&net::redis_start_command_with(options), CMD)?;
    let pid = net::parse_pid(&out.lines, "redis").ok_or_else(|| ServiceError::Start {
        name: "redis".into(),
        output: out.text(),
    })?;
    if let Err(e) = redis::wait_ready(redis, ready) {
        let log = guest.run(&format!("cat {}", net::REDIS_LOG), CMD)?;
        return Err(ServiceError::Start {
            name: "redis".into(),
            output: format!("{e}; its log:\n{}", log.text()),
        });
    }
    Ok(pid)
}

/// Starts the outbound-connection workload logging to `log`, connected to the host's echo server
/// on `port`; returns its pid.
pub fn start_tcpout(guest: &mut Guest, log: &str, port: u16) -> Result<i32, ServiceError> {
    let out = guest.run_ok(&net::tcpout_start_command(log, port), CMD)?;
    net::parse_pid(&out.lines, "tcpout").ok_or_else(|| ServiceError::Start {
        name: "tcpout".into(),
        output: out.text(),
    })
}

/// The `overboot update` command line of the lab: to kernel `to` with the lab's command line
/// (unless `extra` has `--reuse-cmdline` or `--append`), rollback to A, the given pids
/// preserved, `extra` flags appended.
pub fn update_command(to: &str, preserve: &[i32], extra: &str) -> String {
    let preserve: String = preserve
        .iter()
        .map(|p| format!(" --preserve pid:{p}"))
        .collect();
    // Rollback goes to A unless `extra` names another kernel.
    let rollback = if extra.contains("--rollback-kernel") {
        ""
    } else {
        " --rollback-kernel /lab/boot/A/vmlinuz --rollback-initrd /lab/boot/A/initrd.img"
    };
    let append = if extra.contains("--reuse-cmdline") || extra.contains("--append") {
        String::new()
    } else {
        format!(" --append '{BASE_CMDLINE}'")
    };
    format!(
        "overboot update --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img\
         {append}{rollback}{preserve} {extra}"
    )
}

/// How an update went, seen from the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRun {
    /// The agent's exit status in the new kernel.
    pub resume_rc: i32,
    /// The `@@LAB resume-done` line.
    pub resume_line: String,
    /// Host wall time from sending the command to the jump.
    pub to_jump: Duration,
    /// From the jump to `@@LAB resume-done`.
    pub jump_to_resumed: Duration,
}

/// Waits for a console line containing one of `patterns`, calling `tick` about once a second;
/// returns the line.
pub(crate) fn wait_ticking(
    guest: &mut Guest,
    patterns: &[&str],
    timeout: Duration,
    tick: &mut dyn FnMut(),
) -> Result<String, ServiceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        match guest.wait_until(patterns[0], step, |l| {
            patterns.iter().any(|p| l.contains(p))
        }) {
            Ok(mut lines) => return Ok(lines.pop().unwrap_or_default()),
            Err(GuestError::Timeout { .. }) if Instant::now() < deadline => tick(),
            Err(GuestError::Timeout { .. }) => {
                return Err(ServiceError::Timeout {
                    what: patterns.join(" or "),
                    secs: timeout.as_secs(),
                    log: guest.log_path().display().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `overboot update` to kernel `to` (release `release_to`) and follows it to the new
/// kernel's shell, calling `tick` about once a second. An update that exits in the old kernel
/// is [`ServiceError::UpdateFailed`] with its output; a failed agent is returned in `resume_rc`.
pub fn run_update(
    guest: &mut Guest,
    to: &str,
    release_to: &str,
    preserve: &[i32],
    extra: &str,
    tick: &mut dyn FnMut(),
) -> Result<UpdateRun, ServiceError> {
    let command = update_command(to, preserve, extra);
    run_update_line(guest, &command, release_to, tick)
}

/// Like [`run_update`] with the whole `overboot update` command line given.
pub fn run_update_line(
    guest: &mut Guest,
    command: &str,
    release_to: &str,
    tick: &mut dyn FnMut(),
) -> Result<UpdateRun, ServiceError> {
    let sent_at = guest.history().len();
    let start = Instant::now();
    // The sentinel is split in the command text so that an echoed command never matches.
    guest.send(&format!(
        "{command} 2>&1; echo \"@@LAB\" \"update-exited rc=$?\""
    ))?;
    let jump = format!("jumping into {release_to}");
    let line = wait_ticking(
        guest,
        &[&jump, "@@LAB update-exited"],
        Duration::from_secs(3600),
        tick,
    )?;
    if let Some(rc) = line.split("rc=").nth(1) {
        return Err(ServiceError::UpdateFailed {
            rc: rc.trim().parse().unwrap_or(-1),
            output: guest.history()[sent_at..].join("\n"),
            log: guest.log_path().display().to_string(),
        });
    }
    let to_jump = start.elapsed();
    let jumped = Instant::now();
    let done = wait_ticking(
        guest,
        &["@@LAB resume-done"],
        BOOT_TIMEOUT + Duration::from_secs(600),
        tick,
    )?;
    let jump_to_resumed = jumped.elapsed();
    wait_ticking(guest, &["@@LAB booted"], BOOT_TIMEOUT, tick)?;
    let resume_rc = done
        .split("rc=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(-1);
    Ok(UpdateRun {
        resume_rc,
        resume_line: done,
        to_jump,
        jump_to_resumed,
    })
}

/// The agent's report: `overboot status --json` in the guest.
pub fn agent_report(guest: &mut Guest) -> Result<serde_json::Value, ServiceError> {
    let out = guest.run_ok("overboot status --json", CMD)?;
    let line = out
        .lines
        .iter()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| ServiceError::Report(out.text()))?;
    serde_json::from_str(line).map_err(|e| ServiceError::Report(format!("{e}: {line}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_command_preserves_each_pid() {
        let cmd = update_command("C", &[3001, 3002], "--unsafe-no-network-lock");
        assert!(cmd.contains("/lab/boot/C/vmlinuz"));
        assert!(cmd.contains(" --preserve pid:3001 --preserve pid:3002 "));
        assert!(cmd.ends_with("--unsafe-no-network-lock"));
        assert!(cmd.contains(&format!("--append '{BASE_CMDLINE}'")));
    }
}
