//! Host-side helpers: the Debian packages the lab needs, and where its cache and logs live.
//!
//! The lab installs what it needs itself (`apt-get install`), so that a fresh Debian 12 machine
//! runs the demo and the tests with one command.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the lab uses on the host (binaries copied into guests come from them too).
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "criu",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    "e2fsprogs",
    "redis-server",
    "redis-tools",
    "nftables",
    "iproute2",
];

/// Errors of host preparation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A command could not be started.
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs a command, returning its stdout, or an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<String, HostError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| HostError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the missing host packages with apt (a no-op when all are present).
pub fn ensure_packages(packages: &[&str]) -> Result<(), HostError> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("lab: installing host packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

/// Lazily unmounts every mount at or below `dir`, deepest first: what a killed chroot build
/// (debootstrap's `/proc` and `/sys`, a build's `/dev`) left mounted, since nothing below a
/// mount point may be deleted.
pub fn unmount_below(dir: &Path) -> Result<(), HostError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        run(Command::new("umount").arg("-l").arg(&point))?;
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) in the output of `ldd`.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The lab's cache of kernel packages and built images: `$OVERBOOT_LAB_CACHE`, else
/// `/var/cache/overboot-lab` (outside the repository, kept between runs).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("OVERBOOT_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/overboot-lab"))
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where guest console logs and per-run artefacts go: `target/lab/<name>`.
pub fn run_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("lab").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
