//! The files the trixie profile adds to a plain Debian 13 tree: how it boots (fstab,
//! initramfs-tools settings), its network (eth0 on QEMU's user network), the modules CRIU and
//! the network lock need, and the lab's console protocol as a systemd unit on ttyS0.
//!
//! Everything here is part of the rootfs cache key: change a byte and the tree is rebuilt.

/// `(path, mode, contents)` written into the tree.
pub const PROFILE_FILES: &[(&str, u32, &str)] = &[
    ("/etc/hostname", 0o644, "overboot-trixie\n"),
    (
        "/etc/hosts",
        0o644,
        "127.0.0.1\tlocalhost\n127.0.1.1\toverboot-trixie\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    // The root is the whole virtio disk; no fsck pass: a lab guest is always killed, never shut
    // down, and ext4's journal is what brings it back.
    ("/etc/fstab", 0o644, "/dev/vda / ext4 rw,errors=remount-ro 0 0\n"),
    // The distribution's initramfs with only what a virtio guest needs to find its root.
    (
        "/etc/initramfs-tools/conf.d/overboot-lab.conf",
        0o644,
        "MODULES=list\nRESUME=none\nCOMPRESS=zstd\n",
    ),
    (
        "/etc/initramfs-tools/modules",
        0o644,
        "virtio_pci\nvirtio_blk\next4\n",
    ),
    ("/etc/initramfs-tools/hooks/zz-overboot-lab-slim", 0o755, SLIM_HOOK),
    // Socket diagnostics (CRIU dumps sockets through them) and nftables (the network lock).
    (
        "/etc/modules-load.d/overboot-lab.conf",
        0o644,
        "inet_diag\ntcp_diag\nudp_diag\nunix_diag\nnetlink_diag\naf_packet_diag\nnf_tables\n",
    ),
    ("/usr/local/lib/overboot-lab/net-up", 0o755, NET_UP),
    ("/etc/systemd/system/lab-net.service", 0o644, NET_UNIT),
    ("/usr/local/lib/overboot-lab/console", 0o755, CONSOLE),
    ("/etc/systemd/system/lab-console.service", 0o644, CONSOLE_UNIT),
];

/// `(link, target)` symlinks made in the tree: units enabled, the serial getty masked (the
/// console protocol owns ttyS0).
pub const PROFILE_LINKS: &[(&str, &str)] = &[
    (
        "/etc/systemd/system/multi-user.target.wants/lab-net.service",
        "/etc/systemd/system/lab-net.service",
    ),
    (
        "/etc/systemd/system/multi-user.target.wants/lab-console.service",
        "/etc/systemd/system/lab-console.service",
    ),
    (
        "/etc/systemd/system/serial-getty@ttyS0.service",
        "/dev/null",
    ),
];

/// Enablement links removed from the tree: periodic jobs that would compete with the test for
/// the guest's (emulated) CPU at moments nobody chose.
pub const UNLINKS: &[&str] = &[
    "/etc/systemd/system/timers.target.wants/apt-daily-upgrade.timer",
    "/etc/systemd/system/timers.target.wants/apt-daily.timer",
    "/etc/systemd/system/timers.target.wants/dpkg-db-backup.timer",
    "/etc/systemd/system/timers.target.wants/fstrim.timer",
];

/// An initramfs-tools hook run after udev's: the guests have no hardware to look up, so udev's
/// hardware database (13 MB) stays on the root file system and out of the initramfs, which
/// keeps the kexec segments small.
const SLIM_HOOK: &str = r#"#!/bin/sh
PREREQ="udev"
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs) prereqs; exit 0 ;;
esac
rm -f "$DESTDIR/usr/lib/udev/hwdb.bin"
"#;

/// eth0 on QEMU's user network (10.0.2.15, host 10.0.2.2), as the busybox profile's init does.
/// A kernel booted by `overboot update` leaves it down: `overboot resume` re-applies the carried
/// configuration under the network lock.
const NET_UP: &str = r#"#!/bin/sh
if grep -q 'overboot.handover=' /proc/cmdline; then
  echo "lab-net: eth0 left down (handover)"
  exit 0
fi
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "lab-net: eth0 10.0.2.15/24 via 10.0.2.2"
"#;

const NET_UNIT: &str = "[Unit]
Description=overboot lab: eth0 on QEMU user networking
Wants=network.target sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/overboot-lab/net-up

[Install]
WantedBy=multi-user.target
";

/// The lab's console protocol (see `guest.rs`): once multi-user is reached, print
/// `@@LAB booted <release> uptime=<s> state=<system state>` and read shell commands from ttyS0,
/// without echo or prompt; the host waits on the `@@RC` sentinels its commands print.
const CONSOLE: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb PS1= PS2= PS4=
cd /root
stty -F /dev/ttyS0 -echo
echo "@@LAB booted $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) state=$(systemctl is-system-running)"
while true; do
  sh /dev/ttyS0 </dev/null >/dev/ttyS0 2>&1
  echo "@@LAB shell-exited"
done
"#;

const CONSOLE_UNIT: &str = "[Unit]
Description=overboot lab console protocol on ttyS0
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/lib/overboot-lab/console
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
Restart=always

[Install]
WantedBy=multi-user.target
";
