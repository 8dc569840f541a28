//! A QEMU guest driven over its serial console.
//!
//! The guest's init prints `@@LAB booted <release>` when it is ready and then reads shell
//! commands from the console. [`Guest::run`] sends one command followed by an `@@RC <id> $?`
//! sentinel and collects the lines up to it; every wait has a timeout, never a fixed sleep.
//! Every console line is also appended to `console.log` in the run directory, whose path errors
//! print, and with the host's time since QEMU started to `console.timed.log`. QEMU is killed
//! when the [`Guest`] is dropped, and also if the test process dies (parent-death signal).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How the guest is booted.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Name of the run: logs go to `target/lab/<name>/`.
    pub name: String,
    /// The bzImage to boot.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Kernel command line (the console is added when absent).
    pub append: String,
    /// Guest memory.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// A disk attached as virtio-blk (`/dev/vda`): the busybox profile's ext4 data disk (mounted
    /// at `/lab`) or the trixie profile's root. A `.qcow2` file is attached as qcow2 (an overlay),
    /// anything else as raw.
    pub disk: Option<PathBuf>,
    /// User-mode networking with these `(host_port, guest_port)` TCP forwards.
    pub net: Option<Vec<(u16, u16)>>,
    /// A QEMU monitor on a unix socket in the run directory; it also lets the guest reboot
    /// (without it QEMU runs with `-no-reboot`: a reboot ends the run). See [`Guest::reset`].
    /// `OVERBOOT_LAB_MONITOR=1` gives every guest one, e.g. to sample where its vCPUs are
    /// (`info registers -a`) while a benchmark runs.
    pub monitor: bool,
}

impl GuestConfig {
    /// A config with the lab's defaults: 1 GiB, 2 vCPUs, no disk, no network.
    pub fn new(name: &str, kernel: &Path, initrd: &Path) -> GuestConfig {
        GuestConfig {
            name: name.into(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            append: String::new(),
            memory_mib: 1024,
            cpus: 2,
            disk: None,
            net: None,
            monitor: false,
        }
    }
}

/// Errors of a guest run. Each names the console log to read.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// QEMU could not be started.
    #[error("cannot start qemu")]
    Spawn(#[source] std::io::Error),
    /// A sentinel did not arrive in time.
    #[error("timed out after {secs}s waiting for {what:?}; last console lines:\n{tail}\nconsole log: {log}")]
    Timeout {
        what: String,
        secs: u64,
        tail: String,
        log: PathBuf,
    },
    /// QEMU exited (the guest powered off, crashed or panicked).
    #[error(
        "qemu exited while waiting for {what:?}; last console lines:\n{tail}\nconsole log: {log}"
    )]
    Exited {
        what: String,
        tail: String,
        log: PathBuf,
    },
    /// Writing to the console or the log failed.
    #[error("console i/o")]
    Io(#[from] std::io::Error),
}

/// The result of a command run in the guest.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status of the command in the guest shell.
    pub status: i32,
    /// Its stdout and stderr, line by line.
    pub lines: Vec<String>,
}

impl Output {
    /// All lines joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A running guest.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    history: Vec<String>,
    dir: PathBuf,
    seq: u64,
}

/// Which accelerator to use: TCG unless `OVERBOOT_LAB_ACCEL=kvm` asks for KVM. There is no
/// probe: a short one cannot tell. On some hosts `/dev/kvm` opens but QEMU aborts when it
/// programs the vCPU; on others (a `kvm-pvm` host) the firmware runs fine under KVM and the
/// guest's kernel then dies early in its boot (`kvm-pvm: INTERNAL_ERROR in batch emul` in the
/// host's log, nothing on the guest's console), so a probe that ran QEMU for half a second
/// chose KVM and every guest hung. The lab's measurements are all TCG's.
fn accelerator() -> &'static str {
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| match std::env::var("OVERBOOT_LAB_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        _ => "tcg",
    })
}

/// QEMU's cache of translated guest code under TCG (`tb-size`, MiB); `OVERBOOT_LAB_TB_SIZE`
/// overrides it (QEMU's own default is 1024).
///
/// QEMU keeps a translated block until the guest writes to the page its code is in, or the cache
/// is full. A kernel booted by kexec allocates memory much as the old one did, so its initramfs
/// unpacks into the pages where the old kernel's initramfs, and so the code its userspace ran,
/// used to be. Every block found there is invalidated on the first write, and in QEMU 7.2 each
/// invalidation clears the vCPU's whole jump cache (x86 blocks are PC-relative since 7.2). With
/// the default cache, a kernel booted by `overboot update` (after CRIU, Redis and overboot had
/// run) took 0.84–1.65 s to unpack the same 38 MiB initramfs a bare kexec's kernel unpacked in
/// 0.19–0.24 s: `perf` on QEMU put half the vCPU thread in `tcg_flush_jmp_cache` and
/// `page_collection_lock` over those seconds. A bounded cache is flushed whole when it fills and
/// keeps few blocks to invalidate one by one: the same unpacking took 0.12–0.29 s against
/// 0.12–0.13 s, and the new kernel ran `/init` 0.16–0.47 s after the floor's instead of 2 s. A
/// boot's cost should not depend on how much code ran before it; on hardware it does not. Of
/// 32, 64, 128 and 256 MiB, 64 gave the shortest blackouts at 512 MiB, the floor's included
/// (docs/lab/README.md, "The lab kernels").
const TB_SIZE_MIB: u32 = 64;

fn tb_size_mib() -> String {
    std::env::var("OVERBOOT_LAB_TB_SIZE")
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| TB_SIZE_MIB.to_string())
}

/// The `-accel` argument. Under TCG the vCPUs share one host thread (`thread=single`) unless
/// `OVERBOOT_LAB_TCG_THREAD=multi`: QEMU 7.2's multi-threaded TCG (Debian 12's) can translate a
/// block of kernel text while another vCPU rewrites it, and keep the stale block. A guest
/// kernel patching a static key (`text_poke_bp`) then executes an `int3` after the patch is
/// done and dies ("Oops: int3" in `sched_clock_cpu` at a late initcall; fixed upstream in QEMU
/// 8.1, "accel/tcg: Always lock pages before translation"). One thread costs about a fifth more
/// wall time in the lab tests. The code cache is [`TB_SIZE_MIB`].
fn accel_arg() -> String {
    match accelerator() {
        "tcg" if std::env::var("OVERBOOT_LAB_TCG_THREAD").as_deref() == Ok("multi") => {
            format!("tcg,thread=multi,tb-size={}", tb_size_mib())
        }
        "tcg" => format!("tcg,thread=single,tb-size={}", tb_size_mib()),
        accel => accel.to_owned(),
    }
}

/// The `-cpu` argument; `OVERBOOT_LAB_CPU` overrides it. Under TCG: `max` without ERMS and FSRM.
/// TCG runs `rep movsb`/`rep stosb` one byte per emulated iteration, so with ERMS advertised
/// every kernel copy and page clear (`copy_to_user`, `clear_page_erms`, initramfs unpacking) and
/// glibc's large `memcpy` crawl at about 50 MB/s, several times slower than the rest of the
/// emulation. Without it the kernel takes its `rep movsq` routines (REP_GOOD): in a lab guest,
/// reading 512 MiB of /dev/zero took 0.27 s instead of 1.81 s and 256 MiB from tmpfs 0.31 s
/// instead of 1.11 s. Copies then cost, relative to everything else, closer to what they cost
/// on hardware.
fn cpu_model() -> String {
    if let Ok(model) = std::env::var("OVERBOOT_LAB_CPU") {
        return model;
    }
    match accelerator() {
        "tcg" => "max,erms=off,fsrm=off".to_owned(),
        _ => "max".to_owned(),
    }
}

impl Guest {
    /// Boots a guest and waits for its `@@LAB booted` sentinel.
    pub fn boot(config: &GuestConfig, timeout: Duration) -> Result<(Guest, String), GuestError> {
        let mut guest = Guest::start(config)?;
        let line = guest.wait_for("@@LAB booted", timeout)?;
        Ok((guest, line))
    }

    /// Starts QEMU without waiting for anything.
    pub fn start(config: &GuestConfig) -> Result<Guest, GuestError> {
        let dir = crate::host::run_dir(&config.name);
        fs::create_dir_all(&dir)?;
        let mut append = config.append.clone();
        if !append.contains("console=") {
            append = format!("console=ttyS0 {append}");
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", &accel_arg()])
            .args(["-cpu", &cpu_model(), "-machine", "q35"])
            .args(["-m", &config.memory_mib.to_string()])
            .args(["-smp", &config.cpus.to_string()])
            .args(["-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&config.kernel)
            .arg("-initrd")
            .arg(&config.initrd)
            .args(["-append", append.trim()]);
        if config.monitor || std::env::var_os("OVERBOOT_LAB_MONITOR").is_some() {
            cmd.arg("-monitor").arg(format!(
                "unix:{},server,nowait",
                dir.join("monitor.sock").display()
            ));
        } else {
            cmd.args(["-monitor", "none", "-no-reboot"]);
        }
        if let Some(disk) = &config.disk {
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            cmd.arg("-drive").arg(format!(
                "file={},format={format},if=virtio,cache=unsafe",
                disk.display()
            ));
        }
        match &config.net {
            Some(forwards) => {
                let mut netdev = String::from("user,id=n0");
                for (host, guest) in forwards {
                    netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                }
                cmd.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
                // Every frame between the guest and QEMU's user network, for reading a TCP
                // connection's recovery after an update (tshark, or any pcap reader).
                if std::env::var_os("OVERBOOT_LAB_PCAP").is_some() {
                    cmd.arg("-object").arg(format!(
                        "filter-dump,id=pcap0,netdev=n0,file={}",
                        dir.join("net.pcap").display()
                    ));
                }
            }
            None => {
                cmd.args(["-nic", "none"]);
            }
        }
        let stderr = File::create(dir.join("qemu.stderr"))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
        // is async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        fs::write(dir.join("qemu.cmdline"), format!("{cmd:?}\n"))?;
        let mut child = cmd.spawn().map_err(GuestError::Spawn)?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| GuestError::Spawn(std::io::Error::other("qemu has no stdin pipe")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| GuestError::Spawn(std::io::Error::other("qemu has no stdout pipe")))?;
        let (tx, rx) = mpsc::channel();
        let mut log = File::create(dir.join("console.log"))?;
        // The same lines with the host's clock (seconds since QEMU started): where a kernel
        // switch spends its time, read from outside the guest.
        let mut timed = File::create(dir.join("console.timed.log"))?;
        let started = Instant::now();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log.write_all(&buf);
                        let _ = write!(timed, "{:10.3} ", started.elapsed().as_secs_f64());
                        let _ = timed.write_all(&buf);
                        let line = clean_line(&buf);
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Guest {
            child,
            stdin,
            lines: rx,
            history: Vec::new(),
            dir,
            seq: 0,
        })
    }

    /// Resets the machine through the QEMU monitor (`system_reset`: firmware and all, as a
    /// power cycle). Needs [`GuestConfig::monitor`].
    pub fn reset(&mut self) -> Result<(), GuestError> {
        let path = self.dir.join("monitor.sock");
        let mut monitor = std::os::unix::net::UnixStream::connect(&path)?;
        monitor.write_all(b"system_reset\n")?;
        monitor.flush()?;
        // Read the monitor's answer so the command is surely taken before we return.
        monitor.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("system_reset") {
            match std::io::Read::read(&mut monitor, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        Ok(())
    }

    /// The run directory holding `console.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The console log of this guest.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Every console line seen so far.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    fn tail(&self) -> String {
        let start = self.history.len().saturating_sub(25);
        self.history[start..].join("\n")
    }

    /// Waits for the next console line containing `pattern` and returns it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, GuestError> {
        self.wait_until(pattern, timeout, |line| line.contains(pattern))
            .map(|mut lines| lines.pop().unwrap_or_default())
    }

    /// Waits for a line satisfying `done`; returns every line read, the matching one last.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, GuestError> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.history.push(line.clone());
                    let hit = done(&line);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(GuestError::Timeout {
                        what: what.into(),
                        secs: timeout.as_secs(),
                        tail: self.tail(),
                        log: self.log_path(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(GuestError::Exited {
                        what: what.into(),
                        tail: self.tail(),
                        log: self.log_path(),
                    })
                }
            }
        }
    }

    /// Sends a raw line to the guest shell without waiting.
    pub fn send(&mut self, line: &str) -> Result<(), GuestError> {
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Runs a shell command in the guest and returns its status and output.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<Output, GuestError> {
        self.seq += 1;
        let id = self.seq;
        let sentinel = format!("@@RC {id} ");
        // The sentinel is split in the command text so that an echoed command never matches.
        self.send(&format!(
            "{{ {command}\n}} 2>&1; echo \"@@RC\" \"{id}\" \"$?\""
        ))?;
        let mut lines = self.wait_until(&format!("exit status of `{command}`"), timeout, |l| {
            l.contains(&sentinel)
        })?;
        let last = lines.pop().unwrap_or_default();
        let status = last
            .rsplit(' ')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        Ok(Output { status, lines })
    }

    /// Runs a command that must succeed; a non-zero status is an error carrying its output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<Output, GuestError> {
        let out = self.run(command, timeout)?;
        if out.status != 0 {
            return Err(GuestError::Io(std::io::Error::other(format!(
                "`{command}` exited {} in the guest:\n{}\nconsole log: {}",
                out.status,
                out.text(),
                self.log_path().display()
            ))));
        }
        Ok(out)
    }

    /// Kills QEMU (idempotent).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A console line without carriage returns and terminal escape sequences.
fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: ESC [ params final-byte
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ESC ] text, ended by BEL or ESC \ (systemd resets the palette this way
                // when it hands a service the console).
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(
            clean_line(b"\x1b[?7l\x1b[2J@@LAB booted 6.1\r\n"),
            "@@LAB booted 6.1"
        );
        assert_eq!(
            clean_line(b"\x1b[!p\x1b]104\x07\x1b[?7h@@LAB booted 7.3\r\n"),
            "@@LAB booted 7.3"
        );
        assert_eq!(clean_line(b"\x1b]0;title\x1b\\ok\n"), "ok");
    }
}
