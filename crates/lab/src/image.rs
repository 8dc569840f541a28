//! Guest initramfs images: busybox, the kernel's modules (decompressed, in load order), our
//! binaries with their shared libraries, CRIU (the lab's pinned build, or Debian 12's with
//! `OVERBOOT_LAB_CRIU=distro`), workloads, and the lab's `/init`.
//!
//! The image is staged in a directory and packed as an uncompressed newc cpio: the kexec
//! purgatory hashes every segment and TCG decompresses slowly, so small and plain is fastest.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::criu::{self, CriuError, Engine, Userland};
use crate::kernels::{Kernel, KernelError, ModuleIndex};

/// The lab's init (PID 1 of every guest). It mounts the pseudo filesystems, loads the modules
/// listed in `/etc/lab/modules`, mounts the data disk at `/lab`, runs the boot hooks in
/// `/etc/lab/boot.d`, loads the modules of `/etc/lab/modules.late`, prints the `@@LAB booted`
/// sentinel and then serves a shell on the console for the host to drive (no echo, no prompt:
/// the host reads `@@RC` sentinels).
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root PS1= PS2= PS4=
mkdir -p /proc /sys /dev /run /tmp /root /lab
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
echo "@@LAB init $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
# The release once: a command substitution per module is a fork each (5 ms under TCG).
release=$(uname -r)
load_modules() {
  [ -f "$1" ] || return 0
  while read -r m; do
    insmod "/lib/modules/$release/$m" 2>/tmp/insmod.err || echo "@@LAB insmod-failed $m: $(cat /tmp/insmod.err)"
  done < "$1"
}
load_modules /etc/lab/modules
ip link set lo up
# QEMU user networking: the guest is 10.0.2.15, the host (and the gateway) 10.0.2.2. A kernel
# booted by `overboot update` leaves eth0 down: `overboot resume` re-applies the carried
# configuration under the network lock, before the preserved sockets come back.
if [ -e /sys/class/net/eth0 ]; then
  if grep -qE 'overboot.handover=|lab.naive' /proc/cmdline; then
    echo "@@LAB net eth0 left-down (handover)"
  elif ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; then
    echo "@@LAB net eth0 10.0.2.15/24 via 10.0.2.2"
  else
    echo "@@LAB net-failed eth0"
  fi
fi
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.1; done
if [ -b /dev/vda ]; then
  mount -t ext4 /dev/vda /lab || echo "@@LAB mount-failed /dev/vda"
  # overboot's state directory is persistent, as /var/lib is on a real server.
  mkdir -p /lab/var/lib/overboot /var/lib/overboot
  mount --bind /lab/var/lib/overboot /var/lib/overboot
fi
# Reserved RAM (legacy persistent memory from `memmap=SIZE!OFFSET`), overboot's RAM store,
# mounted at /pmem. A kernel booted with a Save State Map only mounts it (the map is on it); a
# fresh boot formats it when it holds no file system yet.
if grep -q 'memmap=[^ ]*!' /proc/cmdline; then
  for i in $(seq 1 50); do [ -b /dev/pmem0 ] && break; sleep 0.1; done
  mkdir -p /pmem
  # DAX: reads and writes go straight to the reserved RAM, no page cache copy.
  pmem_mount() { mount -t ext4 -o dax /dev/pmem0 /pmem 2>/dev/null || mount -t ext4 /dev/pmem0 /pmem 2>/dev/null; }
  if pmem_mount; then
    echo "@@LAB pmem mounted"
  elif grep -q 'overboot.handover=' /proc/cmdline; then
    echo "@@LAB pmem-mount-failed"
  elif /usr/lib/lab/mke2fs -q -t ext4 -b 4096 -O ^has_journal /dev/pmem0 && pmem_mount; then
    echo "@@LAB pmem formatted"
  else
    echo "@@LAB pmem-mount-failed"
  fi
fi
for hook in /etc/lab/boot.d/*; do
  [ -x "$hook" ] && "$hook"
done
# What the resume agent does not need comes after the hooks: it does not wait for it.
load_modules /etc/lab/modules.late
stty -echo -F /dev/console 2>/dev/null
echo "@@LAB booted $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
while true; do
  # The console is read as a script, not as stdin: no prompt, no job control, and commands
  # get /dev/null as stdin so that none of them eats the host's next command.
  sh /dev/console </dev/null >/dev/console 2>&1
  echo "@@LAB shell-exited"
done
"#;

/// The lab's early-userspace hook for the resume agent. It prints `@@LAB resume-done rc=N`
/// so that tests wait on it.
pub const RESUME_HOOK: &str = r#"#!/bin/sh
if grep -q 'overboot.handover=' /proc/cmdline; then
  echo "@@LAB resume-start uptime=$(cut -d' ' -f1 /proc/uptime)"
  # Straight to the console: a rollback kexecs away before the agent returns.
  overboot resume
  rc=$?
  echo "@@LAB resume-done rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
fi
"#;

/// The benchmark's `naive` method (plain CRIU + kexec-tools, `bench/naive.rs`): its dump
/// appends the restore script to the new kernel's initrd, and this hook runs it.
pub const NAIVE_HOOK: &str = r#"#!/bin/sh
[ -f /naive/restore.sh ] && sh /naive/restore.sh
exit 0
"#;

/// The kernel modules every lab guest loads before its boot hooks when its kernel has them
/// (virtio devices, nftables for the network lock, the reserved-RAM store): what the resume
/// agent needs; the socket diagnostics CRIU dumps sockets through are [`DUMP_MODULES`].
/// Dependencies come from `modules.dep` (e.g. `failover` and `net_failover` before
/// `virtio_net` on 6.1).
///
/// CRIU 3.17's lock of TCP connections in the root network namespace is a table
/// `inet CRIU-<pid>` with `filter` chains on `input`/`output`, a `meta mark` accept rule and a
/// concatenated set (`ipv4_addr . inet_service . ipv4_addr . inet_service`) looked up with
/// `drop`: all of that is in `nf_tables` itself (sets, lookup, meta, payload are built in), and
/// so is overboot's SYN block (`tcp flags` … `drop`). `nd_e820` and `nd_pmem` turn RAM reserved
/// with `memmap=SIZE!OFFSET` into `/dev/pmem0`, the RAM store of the benchmark.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "nf_tables",
    "nd_e820",
    "nd_pmem",
];

/// The modules only a dump needs (the socket diagnostics CRIU dumps sockets through), or no
/// carried rule uses (connection tracking and `reject` for firewall rules of one's own, the
/// console channel), loaded after the boot hooks so that the resume agent, which restores and
/// never dumps, starts without waiting for them (about 35 ms an `insmod` under TCG). Every
/// guest has them by its `@@LAB booted`.
pub const DUMP_MODULES: &[&str] = &[
    "virtio_console",
    "nf_conntrack",
    "nft_ct",
    "nft_reject_inet",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "unix_diag",
    "netlink_diag",
    "af_packet_diag",
    "packet_diag",
];

/// Errors while building a guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Filesystem error in the staging directory.
    #[error("image staging at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tool (ldd, xz, zstd, cpio) failed.
    #[error("{tool} failed for {path}: {stderr}")]
    Tool {
        tool: String,
        path: PathBuf,
        stderr: String,
    },
    /// The kernel package could not be read.
    #[error("kernel modules")]
    Kernel(#[from] KernelError),
    /// The lab's CRIU could not be built.
    #[error("the guests' CRIU")]
    Criu(#[from] CriuError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A guest initramfs being assembled in a staging directory.
#[derive(Debug)]
pub struct GuestImage {
    staging: PathBuf,
    release: String,
    libs: BTreeSet<PathBuf>,
}

impl GuestImage {
    /// Starts an image for `kernel` in the (emptied) staging directory, with busybox and the init.
    pub fn new(staging: &Path, kernel: &Kernel) -> Result<GuestImage, ImageError> {
        if staging.exists() {
            fs::remove_dir_all(staging).map_err(io(staging))?;
        }
        fs::create_dir_all(staging).map_err(io(staging))?;
        let mut image = GuestImage {
            staging: staging.to_path_buf(),
            release: kernel.release.clone(),
            libs: BTreeSet::new(),
        };
        image.add_file(Path::new("/bin/busybox"), "/bin/busybox", 0o755)?;
        image.add_bytes("/init", INIT.as_bytes(), 0o755)?;
        image.add_bytes("/etc/lab/release", kernel.release.as_bytes(), 0o644)?;
        Ok(image)
    }

    fn guest_path(&self, guest: &str) -> PathBuf {
        self.staging.join(guest.trim_start_matches('/'))
    }

    /// Writes `bytes` at `guest` with `mode`.
    pub fn add_bytes(&mut self, guest: &str, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
        let path = self.guest_path(guest);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::write(&path, bytes).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))
    }

    /// Copies a host file (following symlinks) to `guest` with `mode`.
    pub fn add_file(&mut self, host: &Path, guest: &str, mode: u32) -> Result<(), ImageError> {
        let bytes = fs::read(host).map_err(io(host))?;
        self.add_bytes(guest, &bytes, mode)
    }

    /// Copies a dynamic executable and every shared library it needs (as `ldd` lists them).
    pub fn add_binary(&mut self, host: &Path, guest: &str) -> Result<(), ImageError> {
        self.add_file(host, guest, 0o755)?;
        for lib in shared_libraries(host)? {
            if self.libs.insert(lib.clone()) {
                let guest_lib = lib.to_string_lossy().into_owned();
                self.add_file(&lib, &guest_lib, 0o755)?;
            }
        }
        Ok(())
    }

    /// Adds CRIU as `/usr/sbin/criu` with its libraries: the lab's pinned build for Debian 12
    /// (built and cached on first use), or the host's own package with `OVERBOOT_LAB_CRIU=distro`.
    pub fn add_criu(&mut self) -> Result<(), ImageError> {
        match Engine::from_env_or(Engine::Distro)? {
            Engine::Pinned => {
                let built = criu::for_bookworm()?;
                criu::announce(Userland::Bookworm, &criu::describe(&built));
                self.add_binary(&built.binary, "/usr/sbin/criu")
            }
            Engine::Distro => {
                let what = criu::describe_distro(Path::new("/var/lib/dpkg"));
                criu::announce(Userland::Bookworm, &what);
                self.add_binary(Path::new("/usr/sbin/criu"), "/usr/sbin/criu")
            }
        }
    }

    /// Adds the wanted modules of this image's kernel (decompressed) and their load order in
    /// `/etc/lab/modules`. Modules the kernel has built in or lacks are skipped.
    pub fn add_modules(&mut self, kernel: &Kernel, wanted: &[&str]) -> Result<(), ImageError> {
        self.add_module_list(kernel, wanted, "/etc/lab/modules")
    }

    /// Adds `wanted` (with the dependencies the early list does not load) to
    /// `/etc/lab/modules.late`, which init loads after the boot hooks.
    pub fn add_late_modules(&mut self, kernel: &Kernel, wanted: &[&str]) -> Result<(), ImageError> {
        self.add_module_list(kernel, wanted, "/etc/lab/modules.late")
    }

    fn add_module_list(
        &mut self,
        kernel: &Kernel,
        wanted: &[&str],
        list_file: &str,
    ) -> Result<(), ImageError> {
        let index = ModuleIndex::read(kernel)?;
        let (order, _absent) = index.load_order(wanted);
        // A module either list already loads is not loaded twice.
        let listed: BTreeSet<String> = ["/etc/lab/modules", "/etc/lab/modules.late"]
            .iter()
            .filter_map(|f| fs::read_to_string(self.guest_path(f)).ok())
            .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let mut list = String::new();
        for (name, path) in order {
            let file = format!("{name}.ko");
            if listed.contains(&file) {
                continue;
            }
            let bytes = decompress_module(&path)?;
            let guest = format!("/lib/modules/{}/{file}", self.release);
            self.add_bytes(&guest, &bytes, 0o644)?;
            list.push_str(&file);
            list.push('\n');
        }
        let mut existing = fs::read_to_string(self.guest_path(list_file)).unwrap_or_default();
        existing.push_str(&list);
        self.add_bytes(list_file, existing.as_bytes(), 0o644)
    }

    /// Adds the resume hook: when the command line carries a Save State Map, init runs
    /// `overboot resume` (the agent) before anything else of the lab's userspace.
    pub fn add_resume_hook(&mut self) -> Result<(), ImageError> {
        self.add_boot_hook("10-overboot-resume", RESUME_HOOK)
    }

    /// Adds the hook that runs the benchmark's `naive` restore when its dump appended one.
    pub fn add_naive_hook(&mut self) -> Result<(), ImageError> {
        self.add_boot_hook("10-naive-restore", NAIVE_HOOK)
    }

    /// Adds a boot hook: a script run by init after modules and disk, before the shell.
    pub fn add_boot_hook(&mut self, name: &str, script: &str) -> Result<(), ImageError> {
        self.add_bytes(&format!("/etc/lab/boot.d/{name}"), script.as_bytes(), 0o755)
    }

    /// Packs the staged tree as a newc cpio compressed with zstd at `out`, as distributions
    /// ship their initramfs (Debian's initramfs-tools: zstd).
    ///
    /// Compressed because `kexec_file_load`'s purgatory checks the SHA-256 of every segment
    /// before the new kernel runs: sampled in the lab, 2.0–2.7 s of each kernel switch went
    /// there with the 40 MB uncompressed cpio (docs/bench/README.md, "Every size and method in one run").
    /// zstd, not lz4: the kernel's lz4 reader cannot tell where a legacy lz4 archive ends, so
    /// the initrd store's cpio appended after it would not unpack.
    pub fn build(&self, out: &Path) -> Result<u64, ImageError> {
        let mut names = Vec::new();
        collect(&self.staging, &self.staging, &mut names)?;
        names.sort();
        let file = fs::File::create(out).map_err(io(out))?;
        let mut zstd = Command::new("zstd")
            .args(["-q", "-3", "-T0", "-c"])
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(Path::new("zstd")))?;
        let compress_in = zstd.stdin.take().ok_or_else(|| ImageError::Tool {
            tool: "zstd".into(),
            path: out.into(),
            stderr: "no stdin".into(),
        })?;
        let mut child = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc", "--owner=0:0"])
            .current_dir(&self.staging)
            .stdin(Stdio::piped())
            .stdout(compress_in)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(Path::new("cpio")))?;
        {
            let mut stdin = child.stdin.take().ok_or_else(|| ImageError::Tool {
                tool: "cpio".into(),
                path: out.into(),
                stderr: "no stdin".into(),
            })?;
            for name in &names {
                writeln!(stdin, "{name}").map_err(io(out))?;
            }
        }
        let status = child.wait_with_output().map_err(io(out))?;
        let compressed = zstd.wait_with_output().map_err(io(out))?;
        for (tool, output) in [("cpio", &status), ("zstd", &compressed)] {
            if !output.status.success() {
                return Err(ImageError::Tool {
                    tool: tool.into(),
                    path: out.into(),
                    stderr: String::from_utf8_lossy(&output.stderr).into(),
                });
            }
        }
        Ok(fs::metadata(out).map_err(io(out))?.len())
    }
}

fn collect(root: &Path, dir: &Path, names: &mut Vec<String>) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        names.push(rel);
        if entry.file_type().map_err(io(&path))?.is_dir() {
            collect(root, &path, names)?;
        }
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) a host executable needs, from `ldd`.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io(binary))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !text.contains("not a dynamic executable") {
        return Err(ImageError::Tool {
            tool: "ldd".into(),
            path: binary.into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(crate::host::parse_ldd(&text))
}

fn decompress_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).map_err(io(path)),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(io(path))?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool: tool.into(),
            path: path.into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(out.stdout)
}
