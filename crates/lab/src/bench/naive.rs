//! The `naive` method: the simplest thing an operator could script instead of overboot, and so
//! the peer overboot's defaults must beat. Plain CRIU and kexec-tools, run in the same guest
//! image against the same client as the update methods:
//!
//! ```text
//! old kernel   criu dump --tcp-established --network-lock nftables   (the tree, to /tmp)
//!              nft list table inet CRIU-<pid>, ip addr, ip route      (to re-apply)
//!              cpio of all that, appended to a copy of the new initrd (padded to 4 bytes)
//!              kexec -s -l NEW --initrd COPY --append "$(cat /proc/cmdline) lab.naive"
//!              kexec -e
//! new kernel   (the lab's init leaves eth0 down for `lab.naive`; its boot hook runs the
//!              appended restore.sh) nft -f the lock table, ip link/addr/route,
//!              criu restore --tcp-established -d   (CRIU drops its lock table when done)
//! ```
//!
//! kexec-tools is Debian's package (and the Xen libraries it links), fetched into the lab's
//! cache and put on the data disk at `/lab/naive/`, not in the guest image: the image's own
//! switch is overboot's loader, and the kexec test checks that no kexec-tools is in it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::record::Method;
use super::run::{mem_used, ms, Measured, RunContext, Started, BULK};
use crate::host::{self, HostError};
use crate::lab::BOOT_TIMEOUT;
use crate::service::{wait_ticking, ServiceError, CMD};

/// The old kernel's half: `sh /lab/naive/dump.sh PID LABEL` dumps the tree of PID and jumps
/// into `/lab/boot/LABEL/`. Prints `@@LAB naive STEP uptime=S` after each step.
pub const DUMP_SCRIPT: &str = r#"#!/bin/sh
# Plain CRIU + kexec-tools: dump one tree with its TCP connections, hand the images to the new
# kernel appended to its initrd, jump. Usage: dump.sh PID LABEL (kernel in /lab/boot/LABEL).
set -e
pid=$1; boot=/lab/boot/$2; w=/tmp/naive
up() { cut -d' ' -f1 /proc/uptime; }
echo "@@LAB naive dump-start uptime=$(up)"
rm -rf $w && mkdir -p $w/naive/img
ip -4 -o addr show dev eth0 | awk '{print $4}' > $w/naive/addr
ip route show default | awk '{print $3; exit}' > $w/naive/gateway
criu dump -t "$pid" -D $w/naive/img --tcp-established --network-lock nftables -o dump.log
echo "@@LAB naive dumped uptime=$(up)"
# CRIU keeps the connections locked with this table: the new kernel loads it before eth0 is up.
nft list table inet "CRIU-$pid" > $w/naive/lock.nft
cp /lab/naive/restore.sh $w/naive/restore.sh
# The kernel reads an archive appended to an initrd only from a 4-byte boundary.
cp $boot/initrd.img $w/initrd.img
size=$(stat -c %s $w/initrd.img)
head -c $(( (4 - size % 4) % 4 )) /dev/zero >> $w/initrd.img
(cd $w && find naive | cpio -o -H newc) >> $w/initrd.img
echo "@@LAB naive packed bytes=$(du -sb $w/naive | cut -f1) uptime=$(up)"
rm -rf $w/naive
LD_LIBRARY_PATH=/lab/naive/lib /lab/naive/kexec -s -l $boot/vmlinuz --initrd $w/initrd.img \
  --append "$(cat /proc/cmdline) lab.naive"
echo "@@LAB naive loaded uptime=$(up)"
echo "@@LAB naive jumping"
LD_LIBRARY_PATH=/lab/naive/lib /lab/naive/kexec -e
"#;

/// The new kernel's half, in the appended archive at `/naive/restore.sh`: the lock table, the
/// network, the tree. Prints `@@LAB naive restore-done rc=N uptime=S`.
pub const RESTORE_SCRIPT: &str = r#"#!/bin/sh
up() { cut -d' ' -f1 /proc/uptime; }
echo "@@LAB naive restore-start uptime=$(up)"
nft -f /naive/lock.nft && ip link set eth0 up && ip addr add "$(cat /naive/addr)" dev eth0 \
  && ip route add default via "$(cat /naive/gateway)" \
  && criu restore -D /naive/img --tcp-established --network-lock nftables -d -o restore.log
rc=$?
[ $rc = 0 ] || tail -n 20 /naive/img/restore.log
echo "@@LAB naive restore-done rc=$rc uptime=$(up)"
"#;

/// Errors while fetching kexec-tools for the guests.
#[derive(Debug, thiserror::Error)]
pub enum NaiveError {
    /// apt-get, dpkg-deb or ldd failed.
    #[error("fetching kexec-tools for the naive method")]
    Host(#[from] HostError),
    /// A file of the cache could not be read or written.
    #[error("kexec-tools cache at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// kexec still lacks a library after its package's dependencies were unpacked.
    #[error("kexec from Debian's kexec-tools needs libraries the lab could not find: {missing}")]
    Libraries { missing: String },
}

/// The files the naive method puts on the data disk, as `(host path, path under /lab)`:
/// Debian's kexec with every library it needs that the guest image lacks, and both scripts.
/// kexec-tools and its Xen libraries are downloaded once into `cache/naive/` (not installed).
pub fn data_disk_files(cache: &Path) -> Result<Vec<(PathBuf, String)>, NaiveError> {
    let dir = cache.join("naive");
    let root = dir.join("root");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NaiveError::Io { path, source }
    };
    let kexec = root.join("sbin/kexec");
    if !dir.join(".unpacked").exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut packages = vec!["kexec-tools".to_string()];
        packages.extend(xen_dependencies()?);
        download(&dir, &packages)?;
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let deb = entry.map_err(io(&dir))?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                host::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            }
        }
        fs::write(dir.join(".unpacked"), b"").map_err(io(&dir))?;
    }
    let libs = root.join("usr/lib/x86_64-linux-gnu");
    let ldd = host::run(
        Command::new("ldd")
            .arg(&kexec)
            .env("LD_LIBRARY_PATH", &libs),
    )?;
    let missing: Vec<&str> = ldd.lines().filter(|l| l.contains("not found")).collect();
    if !missing.is_empty() {
        return Err(NaiveError::Libraries {
            missing: missing.join("; "),
        });
    }
    let mut files = vec![(kexec, "naive/kexec".to_string())];
    for lib in crate::host::parse_ldd(&ldd)
        .into_iter()
        .filter(|l| l.starts_with(&root))
    {
        if let Some(name) = lib.file_name() {
            files.push((lib.clone(), format!("naive/lib/{}", name.to_string_lossy())));
        }
    }
    for (name, text) in [("dump.sh", DUMP_SCRIPT), ("restore.sh", RESTORE_SCRIPT)] {
        let path = dir.join(name);
        fs::write(&path, text).map_err(io(&path))?;
        files.push((path, format!("naive/{name}")));
    }
    Ok(files)
}

/// The Xen libraries' packages kexec-tools depends on (Debian builds it with Xen support).
fn xen_dependencies() -> Result<Vec<String>, HostError> {
    let out = host::run(Command::new("apt-cache").args([
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        "kexec-tools",
    ]))?;
    let mut packages: Vec<String> = out
        .lines()
        .filter(|l| !l.starts_with(' ') && l.starts_with("libxen"))
        .map(str::to_owned)
        .collect();
    packages.sort();
    packages.dedup();
    Ok(packages)
}

/// `apt-get download` into `dir`, refreshing the package lists once if that fails.
fn download(dir: &Path, packages: &[String]) -> Result<(), HostError> {
    let fetch = || {
        host::run(
            Command::new("apt-get")
                .current_dir(dir)
                .args(["download", "-q"])
                .args(packages),
        )
    };
    if fetch().is_err() {
        host::run(Command::new("apt-get").args(["update", "-q"]))?;
        fetch()?;
    }
    Ok(())
}

/// The guest's uptime (s) on the console line `@@LAB naive STEP ... uptime=S`, the last such
/// line of `lines`.
fn stamp(lines: &[String], step: &str) -> Option<f64> {
    let head = format!("@@LAB naive {step} ");
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with(&head))?
        .split("uptime=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Seconds (a guest's uptime, or a difference of two) in whole milliseconds; 0 when negative.
fn secs_to_ms(secs: f64) -> u64 {
    Duration::try_from_secs_f64(secs).map_or(0, ms)
}

/// The milliseconds between two stamps of `lines` (one kernel's uptime).
fn between(lines: &[String], from: &str, to: &str) -> Option<u64> {
    let (a, b) = (stamp(lines, from)?, stamp(lines, to)?);
    Some(secs_to_ms(b - a))
}

/// Whether the client's connection ended for good (reset, EOF, a protocol error), as opposed
/// to commands still unanswered when the run ended: a connection that stalled.
fn reset(client_error: &Option<String>) -> bool {
    client_error
        .as_deref()
        .is_some_and(|e| !e.contains("unanswered"))
}

/// The `bytes=N` of the `packed` line: what the new kernel got beside its initrd.
fn packed_bytes(lines: &[String]) -> u64 {
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("@@LAB naive packed "))
        .and_then(|l| {
            l.split("bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

impl RunContext<'_> {
    /// naive: Redis on A with the data set, the client on one connection, the scripts above.
    pub(super) fn naive(&self, log: &mut String) -> Result<Measured, ServiceError> {
        let Started {
            mut rg,
            dataset,
            incr,
        } = self.start_redis(None, log)?;
        let peak = mem_used(&mut rg.guest)?;
        let sent_at = rg.guest.history().len();
        // The sentinel is split in the command text so that an echoed command never matches.
        rg.guest.send(&format!(
            "sh /lab/naive/dump.sh {} {} 2>&1; echo \"@@LAB\" \"naive-exited rc=$?\"",
            rg.redis_pid, self.to
        ))?;
        let line = wait_ticking(
            &mut rg.guest,
            &["@@LAB naive jumping", "@@LAB naive-exited"],
            Duration::from_secs(3600),
            &mut || {},
        )?;
        if let Some(rc) = line.split("rc=").nth(1) {
            return Err(ServiceError::UpdateFailed {
                rc: rc.trim().parse().unwrap_or(-1),
                output: rg.guest.history()[sent_at..].join("\n"),
                log: log.clone(),
            });
        }
        let old_side = rg.guest.history()[sent_at..].to_vec();
        let jumped = Instant::now();
        let done = wait_ticking(
            &mut rg.guest,
            &["@@LAB naive restore-done"],
            BOOT_TIMEOUT + Duration::from_secs(600),
            &mut || {},
        )?;
        let jump_to_restored = jumped.elapsed();
        wait_ticking(&mut rg.guest, &["@@LAB booted"], BOOT_TIMEOUT, &mut || {})?;
        let restored = done.contains("rc=0 ");
        let new_side = rg.guest.history()[sent_at + old_side.len()..].to_vec();
        let answered = incr.progress().answered;
        incr.wait_answered(answered + 50, Duration::from_secs(120));
        let (summary, samples) = incr.finish();
        // What is left of the lock and the connection's state, in the kept console.
        let _ = rg.guest.run("nft list tables; cat /proc/net/tcp", CMD);
        let check = dataset.check(rg.redis, BULK)?;
        self.save_boot_trace(&mut rg.guest, Method::Naive);
        self.keep_latency(Method::Naive, &summary, &samples);
        let to = rg.guest.run_ok("uname -r", CMD)?.text().trim().to_string();
        let mut phases = BTreeMap::from([("jump_to_restored".to_string(), ms(jump_to_restored))]);
        for (name, from, until, lines) in [
            ("dump", "dump-start", "dumped", &old_side),
            ("pack", "dumped", "packed", &old_side),
            ("kexec_load", "packed", "loaded", &old_side),
            ("restore", "restore-start", "restore-done", &new_side),
        ] {
            if let Some(v) = between(lines, from, until) {
                phases.insert(name.to_string(), v);
            }
        }
        // The server's own blackout, whatever the peer's TCP does after: from the freeze (the
        // dump's start, guest clock) to the restored tree (host clock after the jump). The
        // update methods' agent reports the same span as `blackout`.
        if let Some(old) = between(&old_side, "dump-start", "loaded") {
            phases.insert("freeze_to_restored".into(), old + ms(jump_to_restored));
        }
        if let Some(s) = stamp(&new_side, "restore-start") {
            phases.insert("new_kernel_uptime_at_restore".into(), secs_to_ms(s));
        }
        Ok(Measured {
            // What the script promises: the tree is back with its data and its connection, not
            // reset and nothing applied twice. Whether the client was answered again in time is
            // measured (blackout, recovery, `client_error`), not required: the peer may still be
            // backing off (see the module doc).
            ok: restored && !reset(&summary.error) && summary.duplicated == 0 && check.ok(dataset),
            blackout_ms: summary.blackout_ms,
            recovery_ms: summary.recovery_ms,
            phases,
            handover_bytes: packed_bytes(&old_side),
            peak_mem_bytes: peak,
            connection_survived: Some(summary.connection_survived),
            lost: summary.lost,
            duplicated: summary.duplicated,
            dataset: Some(check),
            from: rg.from.clone(),
            to,
            client_error: summary.error.clone(),
            ..Measured::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn steps_are_timed_from_the_guest_uptime_stamps() {
        let old = lines(
            "@@LAB naive dump-start uptime=10.50\n\
             criu noise\n\
             @@LAB naive dumped uptime=11.75\n\
             @@LAB naive packed bytes=17825792 uptime=12.00\n\
             @@LAB naive loaded uptime=12.80\n",
        );
        assert_eq!(between(&old, "dump-start", "dumped"), Some(1250));
        assert_eq!(between(&old, "dumped", "packed"), Some(250));
        assert_eq!(between(&old, "packed", "loaded"), Some(800));
        assert_eq!(between(&old, "loaded", "restore-done"), None);
        assert_eq!(packed_bytes(&old), 17_825_792);
        assert_eq!(packed_bytes(&old[..2]), 0);
    }

    #[test]
    fn a_stalled_connection_is_not_a_reset() {
        assert!(!reset(&None));
        assert!(!reset(&Some(
            "1158 commands unanswered after the drain time".into()
        )));
        assert!(reset(&Some("connection reset by peer".into())));
        assert!(reset(&Some("connection closed by the server (EOF)".into())));
    }

    #[test]
    fn the_scripts_lock_before_the_network_and_pad_the_initrd() {
        // The lock table must be loaded before eth0 comes up, or the peers' segments meet a
        // closed port and the connection is reset.
        let lock = RESTORE_SCRIPT.find("nft -f").unwrap();
        let up = RESTORE_SCRIPT.find("ip link set eth0 up").unwrap();
        let restore = RESTORE_SCRIPT.find("criu restore").unwrap();
        assert!(lock < up && up < restore);
        assert!(DUMP_SCRIPT.contains("% 4"));
        assert!(DUMP_SCRIPT.contains("lab.naive"));
    }
}
