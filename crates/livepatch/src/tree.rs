//! The kernel a patch is built for: Debian's `linux-source`, `linux-headers` and `linux-kbuild`
//! packages of one exact release, fetched with `apt-get download` into a cache and unpacked with
//! `dpkg-deb -x` (never installed). Only the source directories a patch touches are taken out of
//! the source tarball; everything else comes from the headers package, which carries the
//! release's `.config`, generated headers and `Module.symvers`.
//!
//! ```text
//! <cache>/debs/*.deb                         downloads, shared between releases
//! <cache>/<release>/root/usr/src/linux-headers-<release>/   kbuild entry (Makefile rewritten)
//! <cache>/<release>/root/usr/src/linux-source-<series>.tar.xz
//! <cache>/<release>/source/linux-source-<series>/<dir>/     directories extracted on demand
//! ```

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while fetching or unpacking a kernel tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The release is not a Debian kernel release the archive knows.
    #[error(
        "no Debian package linux-headers-{release} in the archive (is it a Debian kernel release?)"
    )]
    UnknownRelease { release: String },
    /// The release string does not look like `6.1.0-47-cloud-amd64`.
    #[error("cannot read the kernel series from release {0:?}")]
    BadRelease(String),
    /// A tool (apt-get, dpkg-deb, tar) failed.
    #[error("{command} failed: {stderr}")]
    Tool { command: String, stderr: String },
    /// A tool could not be started.
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The unpacked packages lack a file we need.
    #[error("unpacked packages have no {0}")]
    Layout(PathBuf),
    /// Filesystem error in the cache.
    #[error("cache i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command and returns its stdout, or its stderr as the error.
pub(crate) fn run_tool(cmd: &mut Command) -> Result<String, TreeError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| TreeError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(TreeError::Tool {
            command,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An unpacked Debian kernel build tree for one release.
#[derive(Debug, Clone)]
pub struct KernelTree {
    /// `uname -r` of the kernel, e.g. `6.1.0-47-cloud-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `6.1.170-3`.
    pub version: String,
    /// `linux-headers-<release>`: where `make M=...` runs.
    pub headers: PathBuf,
    /// The top of the (partially) extracted source tree.
    pub source: PathBuf,
    tarball: PathBuf,
}

/// `6.1.0-47-cloud-amd64` → `6.1`.
pub fn series(release: &str) -> Result<String, TreeError> {
    let mut parts = release.split(['.', '-']);
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor))
            if major.chars().all(|c| c.is_ascii_digit())
                && minor.chars().all(|c| c.is_ascii_digit())
                && !major.is_empty()
                && !minor.is_empty() =>
        {
            Ok(format!("{major}.{minor}"))
        }
        _ => Err(TreeError::BadRelease(release.into())),
    }
}

/// The Debian version of `package` (first line of `apt-cache madison`), if the archive has it.
fn archive_version(package: &str) -> Result<Option<String>, TreeError> {
    let out = run_tool(Command::new("apt-cache").args(["madison", package]))?;
    Ok(out
        .lines()
        .filter(|l| l.split('|').next().is_some_and(|p| p.trim() == package))
        .find_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string())))
}

fn archive_has(package: &str, version: &str) -> Result<bool, TreeError> {
    let out = run_tool(Command::new("apt-cache").args(["madison", package]))?;
    Ok(out
        .lines()
        .any(|l| l.split('|').nth(1).is_some_and(|v| v.trim() == version)))
}

/// The packages `linux-headers-<release>` depends on that we need (common headers, kbuild).
fn header_dependencies(release: &str, version: &str) -> Result<Vec<String>, TreeError> {
    let out = run_tool(
        Command::new("apt-cache").args(["show", &format!("linux-headers-{release}={version}")]),
    )?;
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .unwrap_or_default();
    Ok(depends
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .filter(|d| d.starts_with("linux-headers-") || d.starts_with("linux-kbuild-"))
        .map(str::to_string)
        .collect())
}

fn find_deb(
    dir: &Path,
    package: &str,
    version: Option<&str>,
) -> Result<Option<PathBuf>, TreeError> {
    let prefix = match version {
        Some(v) => format!("{package}_{}_", v.replace(':', "%3a")),
        None => format!("{package}_"),
    };
    Ok(fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
}

/// Downloads `package` (at `version` if the archive still has it, else its candidate).
fn download(debs: &Path, package: &str, version: &str) -> Result<PathBuf, TreeError> {
    let exact = archive_has(package, version)?;
    let wanted = exact.then_some(version);
    if let Some(deb) = find_deb(debs, package, wanted)? {
        return Ok(deb);
    }
    let spec = match wanted {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    tracing::info!(package = %spec, "downloading");
    run_tool(
        Command::new("apt-get")
            .current_dir(debs)
            .args(["download", "-q", &spec]),
    )?;
    find_deb(debs, package, wanted)?.ok_or_else(|| TreeError::Layout(debs.join(spec)))
}

impl KernelTree {
    /// Fetches (once) and unpacks the build tree of `release` under `cache`.
    pub fn fetch(release: &str, cache: &Path) -> Result<KernelTree, TreeError> {
        let series = series(release)?;
        let headers_pkg = format!("linux-headers-{release}");
        let version = match archive_version(&headers_pkg)? {
            Some(v) => v,
            None => {
                // A fresh machine may have stale or no package lists.
                run_tool(Command::new("apt-get").args(["update", "-q"]))?;
                archive_version(&headers_pkg)?.ok_or_else(|| TreeError::UnknownRelease {
                    release: release.into(),
                })?
            }
        };
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).map_err(io(&debs))?;
        let dir = cache.join(release);
        let root = dir.join("root");
        let done = dir.join(".unpacked");
        if !done.exists() {
            let mut packages = vec![headers_pkg.clone(), format!("linux-source-{series}")];
            packages.extend(header_dependencies(release, &version)?);
            fs::create_dir_all(&root).map_err(io(&root))?;
            for package in &packages {
                let deb = download(&debs, package, &version)?;
                run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            }
            fs::write(&done, &version).map_err(io(&done))?;
        }
        let headers = root.join("usr/src").join(&headers_pkg);
        // The headers' Makefile includes the common headers by absolute path: point it here.
        let makefile = headers.join("Makefile");
        let text = fs::read_to_string(&makefile).map_err(io(&makefile))?;
        let fixed = text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", root.display()),
        );
        if fixed != text {
            fs::write(&makefile, fixed).map_err(io(&makefile))?;
        }
        let tarball = root.join(format!("usr/src/linux-source-{series}.tar.xz"));
        if !tarball.exists() {
            return Err(TreeError::Layout(tarball));
        }
        Ok(KernelTree {
            release: release.into(),
            version,
            headers,
            source: dir.join("source").join(format!("linux-source-{series}")),
            tarball,
        })
    }

    /// Makes sure the directories holding `files` (paths relative to the source top) are
    /// extracted from the source tarball.
    pub fn extract(&self, files: &[PathBuf]) -> Result<(), TreeError> {
        let top = self
            .source
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("linux-source")
            .to_string();
        let mut wanted: Vec<String> = Vec::new();
        for file in files {
            let dir = file.parent().unwrap_or(Path::new(""));
            let marker = self.source.join(dir).join(".overboot-extracted");
            if !marker.exists() {
                let pattern = format!("{top}/{}/*", dir.display());
                if !wanted.contains(&pattern) {
                    wanted.push(pattern);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let parent = self.source.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io(parent))?;
        tracing::info!(dirs = ?wanted, "extracting source directories");
        run_tool(
            Command::new("tar")
                .arg("-xJf")
                .arg(&self.tarball)
                .arg("-C")
                .arg(parent)
                .arg("--wildcards")
                .args(&wanted),
        )?;
        for file in files {
            let dir = self.source.join(file.parent().unwrap_or(Path::new("")));
            let marker = dir.join(".overboot-extracted");
            fs::write(&marker, b"").map_err(io(&marker))?;
        }
        Ok(())
    }

    /// The symbols the kernel exports to modules (from `Module.symvers`, vmlinux only).
    pub fn exported_symbols(&self) -> Result<HashSet<String>, TreeError> {
        let path = self.headers.join("Module.symvers");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut fields = l.split('\t');
                let name = fields.nth(1)?;
                (fields.next()? == "vmlinux").then(|| name.to_string())
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_debian_releases() {
        assert_eq!(series("6.1.0-47-cloud-amd64").unwrap(), "6.1");
        assert_eq!(series("6.12.111+deb12-cloud-amd64").unwrap(), "6.12");
        assert!(series("cloud").is_err());
    }
}
