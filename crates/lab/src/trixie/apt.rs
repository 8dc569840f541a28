//! Debian 13 (trixie) and trixie-backports for the lab only: an apt configuration of its own
//! (sources list, package lists, package cache) under the lab cache, handed to `apt-get` and
//! `apt-cache` with `-o` options. The machine's own sources, lists and caches are never touched.
//! A second configuration of the same kind lists source packages only (`deb-src` of sid), for
//! the CRIU the lab builds itself ([`crate::criu`]).
//!
//! The mirror is the one the machine's own apt already uses for Debian (read from
//! `apt-cache policy`), so the lab reaches nothing the host does not; `OVERBOOT_LAB_DEBIAN_MIRROR`
//! overrides it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::host::{self, HostError};

/// The suites the lab's apt configuration lists.
pub const SUITES: &[&str] = &["trixie", "trixie-backports"];

/// The keyring that signs trixie (Debian 12's `debian-archive-keyring` carries the 13 keys).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Package lists older than this are refreshed before a lookup that needs them.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Errors of the lab's apt.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// No Debian mirror found in the machine's apt configuration.
    #[error("no Debian mirror in `apt-cache policy` (set OVERBOOT_LAB_DEBIAN_MIRROR)")]
    NoMirror,
    /// apt-get or apt-cache failed.
    #[error("apt with the lab's own sources")]
    Apt(#[source] HostError),
    /// Neither the pinned package nor one of its series is in the archive.
    #[error("{package} is not in trixie or trixie-backports, and no package of its series is")]
    NotInArchive { package: String },
    /// Filesystem error in the lab's apt directory.
    #[error("apt directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AptError + '_ {
    move |source| AptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lab's own apt configuration for trixie and trixie-backports.
#[derive(Debug, Clone)]
pub struct LabApt {
    dir: PathBuf,
    mirror: String,
}

impl LabApt {
    /// The configuration under `dir` (created), using the machine's Debian mirror.
    pub fn new(dir: &Path) -> Result<LabApt, AptError> {
        LabApt::with_lines(dir, |mirror| {
            SUITES
                .iter()
                .map(|suite| format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n"))
                .collect()
        })
    }

    /// A configuration under `dir` (created) that lists the source packages of `suite` only
    /// (`deb-src`), from the same mirror.
    pub fn source_packages(dir: &Path, suite: &str) -> Result<LabApt, AptError> {
        LabApt::with_lines(dir, |mirror| {
            format!("deb-src [signed-by={KEYRING}] {mirror} {suite} main\n")
        })
    }

    fn with_lines(dir: &Path, lines: impl Fn(&str) -> String) -> Result<LabApt, AptError> {
        let mirror = match std::env::var("OVERBOOT_LAB_DEBIAN_MIRROR") {
            Ok(m) if !m.is_empty() => m,
            _ => host_mirror()?,
        };
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let sources = dir.join("sources.list");
        let text = lines(&mirror);
        if fs::read_to_string(&sources).ok().as_deref() != Some(text.as_str()) {
            fs::write(&sources, text).map_err(io(&sources))?;
            // New sources: the old lists no longer describe them.
            let _ = fs::remove_file(dir.join("updated"));
        }
        Ok(LabApt {
            dir: dir.to_path_buf(),
            mirror,
        })
    }

    /// The Debian mirror (also what debootstrap fetches from).
    pub fn mirror(&self) -> &str {
        &self.mirror
    }

    /// The `-o` options that point apt at the lab's sources, lists and cache only.
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oDir::Etc::Preferences=/dev/null".into(),
            "-oDir::Etc::PreferencesParts=/dev/null".into(),
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(self.options());
        cmd
    }

    /// Fetches the package lists when they are missing or older than a day.
    pub fn update_if_stale(&self) -> Result<(), AptError> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        host::run(self.command("apt-get").args(["update", "-q"])).map_err(AptError::Apt)?;
        fs::write(&stamp, b"").map_err(io(&stamp))
    }

    /// Whether the archive has `package`.
    pub fn has(&self, package: &str) -> bool {
        self.command("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    /// Package names starting with `prefix`.
    pub fn names(&self, prefix: &str) -> Result<Vec<String>, AptError> {
        let out = host::run(self.command("apt-cache").args(["pkgnames", prefix]))
            .map_err(AptError::Apt)?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// The pinned package if the archive has it, else the newest of its series (with a warning).
    pub fn resolve(&self, package: &str, series: (&str, &str)) -> Result<String, AptError> {
        self.update_if_stale()?;
        if self.has(package) {
            return Ok(package.to_string());
        }
        let names = self.names(series.0)?;
        let newest = crate::kernels::newest_of_series(names.iter().map(String::as_str), series)
            .ok_or_else(|| AptError::NotInArchive {
                package: package.into(),
            })?;
        eprintln!(
            "lab: warning: {package} has left the archive; using the newest of its series, {newest}"
        );
        Ok(newest)
    }

    /// Downloads the files of source package `name` at `version` (`apt-get source
    /// --download-only`: the `.dsc` and its tarballs, each checked against the signed index)
    /// into `dir`. apt fails when one file could not be fetched; the ones it did fetch stay.
    pub fn download_source(&self, name: &str, version: &str, dir: &Path) -> Result<(), AptError> {
        self.update_if_stale()?;
        fs::create_dir_all(dir).map_err(io(dir))?;
        host::run(
            self.command("apt-get")
                .current_dir(dir)
                .args(["source", "--download-only", "-q"])
                .arg(format!("{name}={version}")),
        )
        .map_err(AptError::Apt)?;
        Ok(())
    }

    /// Downloads `packages` (`apt-get download`) into `dir` and returns the `.deb` files there.
    pub fn download(&self, packages: &[String], dir: &Path) -> Result<Vec<PathBuf>, AptError> {
        self.update_if_stale()?;
        fs::create_dir_all(dir).map_err(io(dir))?;
        host::run(
            self.command("apt-get")
                .current_dir(dir)
                .args(["download", "-q"])
                .args(packages),
        )
        .map_err(AptError::Apt)?;
        let mut debs: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        debs.sort();
        Ok(debs)
    }
}

/// The Debian mirror the machine's apt uses: the first `http(s)://…` origin of a `main`
/// component in `apt-cache policy`, excluding the security archive.
fn host_mirror() -> Result<String, AptError> {
    let out = host::run(Command::new("apt-cache").arg("policy")).map_err(AptError::Apt)?;
    mirror_from_policy(&out).ok_or(AptError::NoMirror)
}

fn mirror_from_policy(policy: &str) -> Option<String> {
    policy.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let _priority: i32 = words.next()?.parse().ok()?;
        let url = words.next()?;
        let dist = words.next()?;
        let debian = url.starts_with("http") && !url.contains("security");
        (debian && dist.ends_with("/main") && !dist.contains("security"))
            .then(|| url.trim_end_matches('/').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_read_from_policy() {
        let policy = "Package files:\n 100 /var/lib/dpkg/status\n     release a=now\n \
             500 http://mirror.example/debian-security bookworm-security/main amd64 Packages\n \
             500 http://mirror.example/debian bookworm/main amd64 Packages\n";
        assert_eq!(
            mirror_from_policy(policy).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_policy("Package files:\n"), None);
    }
}
