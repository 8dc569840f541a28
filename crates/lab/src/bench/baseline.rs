//! The two methods an update is compared with: the floor (a bare kexec to the new kernel with
//! nothing preserved: the kernel's own boot, which no update can beat) and a restart (a machine
//! reset, then Redis reloading its data from an RDB file: what operators do today).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::dataset::Dataset;
use super::record::Method;
use super::run::{mem_used, ms, Measured, RunContext, BULK};
use super::sizing::guest_memory_mib;
use crate::lab::{BASE_CMDLINE, BOOT_TIMEOUT};
use crate::service::{self, ServiceError, CMD};

impl RunContext<'_> {
    /// floor: a bare kexec A → B, nothing preserved, the lab's command line.
    pub(super) fn floor(&self, log: &mut String) -> Result<Measured, ServiceError> {
        let mut config = self.lab.guest_config(self.scenario, "A")?;
        config.memory_mib = guest_memory_mib(self.dataset_mib);
        let append = format!("{BASE_CMDLINE} {}", self.boot_trace_append())
            .trim_end()
            .to_string();
        config.append = append.clone();
        let mut guest = self.lab.boot(&config)?;
        *log = guest.log_path().display().to_string();
        let from = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        let peak = mem_used(&mut guest)?;
        guest.send(&format!(
            "overboot kexec --kernel /lab/boot/{to}/vmlinuz --initrd /lab/boot/{to}/initrd.img \
             --append '{append}' 2>&1; echo \"@@LAB\" \"kexec-exited rc=$?\"",
            to = self.to
        ))?;
        let jump = format!("jumping into {}", self.release_to);
        let line = guest.wait_until(&jump, Duration::from_secs(600), |l| {
            l.contains(&jump) || l.contains("@@LAB kexec-exited")
        })?;
        if line.last().is_some_and(|l| l.contains("kexec-exited")) {
            return Err(ServiceError::UpdateFailed {
                rc: -1,
                output: line.join("\n"),
                log: log.clone(),
            });
        }
        let jumped = Instant::now();
        guest.wait_for("@@LAB init", BOOT_TIMEOUT)?;
        let at_init = jumped.elapsed();
        guest.wait_for("@@LAB booted", BOOT_TIMEOUT)?;
        let at_shell = jumped.elapsed();
        let to = guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        self.save_boot_trace(&mut guest, Method::Floor);
        Ok(Measured {
            ok: to == self.release_to,
            blackout_ms: ms(at_init),
            // No client: nothing can stall after the blackout that the blackout does not cover.
            recovery_ms: ms(at_init),
            phases: BTreeMap::from([
                ("jump_to_init".to_string(), ms(at_init)),
                ("jump_to_shell".to_string(), ms(at_shell)),
            ]),
            peak_mem_bytes: peak,
            from,
            to,
            ..Measured::default()
        })
    }

    /// restart: Redis on B with its RDB on the data disk, a machine reset, the RDB loaded.
    pub(super) fn restart(&self, log: &mut String) -> Result<Measured, ServiceError> {
        const RDB: &str = "--dir /lab/wl --dbfilename bench.rdb";
        let memory = guest_memory_mib(self.dataset_mib);
        let boot = service::RedisBoot {
            monitor: true,
            redis_options: RDB.into(),
            pmem_mib: None,
            append: String::new(),
        };
        let mut rg = service::boot_redis_with(self.lab, self.scenario, self.to, memory, &boot)?;
        *log = rg.guest.log_path().display().to_string();
        let dataset = self.dataset();
        dataset.write(rg.redis, BULK)?;
        let mut conn = crate::redis::RespConn::connect(rg.redis, BULK)?;
        conn.command(&[b"SAVE"])?;
        rg.guest.run_ok("sync", Duration::from_secs(600))?;
        let reset_at = Instant::now();
        rg.guest.reset()?;
        rg.guest.wait_for("@@LAB booted", BOOT_TIMEOUT)?;
        let at_shell = reset_at.elapsed();
        let out = rg
            .guest
            .run_ok(&crate::net::redis_start_command_with(RDB), CMD)?;
        let _ = out;
        let deadline = Instant::now() + BULK;
        let loaded = loop {
            if Dataset::dbsize(rg.redis, Duration::from_secs(5)).is_some_and(|n| n >= dataset.count)
            {
                break reset_at.elapsed();
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Timeout {
                    what: "Redis to load its RDB file".into(),
                    secs: BULK.as_secs(),
                    log: log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let check = dataset.check(rg.redis, BULK)?;
        let peak = mem_used(&mut rg.guest)?;
        let to = rg.guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        // The next method's guest shares the data disk: the `disk` method needs the room.
        rg.guest
            .run_ok("rm -f /lab/wl/bench.rdb && sync", Duration::from_secs(600))?;
        Ok(Measured {
            ok: check.ok(dataset),
            blackout_ms: ms(loaded),
            // Every connection was lost; the service is back when every key is.
            recovery_ms: ms(loaded),
            phases: BTreeMap::from([
                ("reset_to_shell".to_string(), ms(at_shell)),
                (
                    "redis_load".to_string(),
                    ms(loaded.saturating_sub(at_shell)),
                ),
            ]),
            peak_mem_bytes: peak,
            dataset: Some(check),
            from: rg.from.clone(),
            to,
            ..Measured::default()
        })
    }
}
