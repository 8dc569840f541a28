//! Fetching Debian's source package of CRIU and building it: on the host for Debian 12, in a
//! chroot of a copy of the trixie tree for Debian 13.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::host;
use crate::trixie::apt::LabApt;

use super::pin::{io, step, upstream_version, CriuError, BUILD_PACKAGES, SOURCE_SUITE, VERSION};

/// The downloaded source package: its `.dsc`, orig tarball and, when the mirror has it,
/// Debian's packaging (`.debian.tar.*`, whose patch series `dpkg-source -x` applies).
#[derive(Debug, Clone)]
pub(super) struct Source {
    dsc: PathBuf,
    orig: PathBuf,
    packaging: Option<PathBuf>,
}

impl Source {
    fn find(dir: &Path) -> Option<Source> {
        let upstream = upstream_version();
        let files: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        let named = |prefix: &str| {
            files
                .iter()
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .cloned()
        };
        Some(Source {
            dsc: named(&format!("criu_{VERSION}.dsc"))?,
            orig: named(&format!("criu_{upstream}.orig.tar."))?,
            packaging: named(&format!("criu_{VERSION}.debian.tar.")),
        })
    }

    /// Where the tree comes from, as the build records it.
    fn provenance(&self) -> String {
        let package = format!("Debian's source package criu {VERSION} from {SOURCE_SUITE}");
        match &self.packaging {
            Some(_) => format!("{package}, Debian's patches applied"),
            None => format!(
                "{package}, upstream tarball only (the mirror has no criu_{VERSION}.debian.tar.*)"
            ),
        }
    }

    /// Unpacks the tree into `dest` (which must not exist): `dpkg-source -x` with Debian's
    /// packaging, else the orig tarball as it is.
    fn unpack(&self, dest: &Path) -> Result<(), CriuError> {
        if self.packaging.is_some() {
            step(
                "dpkg-source -x (Debian's patches applied)",
                Command::new("dpkg-source")
                    .arg("-x")
                    .arg(&self.dsc)
                    .arg(dest),
            )?;
            return Ok(());
        }
        fs::create_dir_all(dest).map_err(io(dest))?;
        step(
            "unpacking CRIU's orig tarball",
            Command::new("tar")
                .arg("-xf")
                .arg(&self.orig)
                .arg("--strip-components=1")
                .arg("-C")
                .arg(dest),
        )?;
        Ok(())
    }
}

/// The source package of [`VERSION`] in `cache/source-<VERSION>`, downloaded with the lab's
/// `deb-src` list unless it is there.
pub(super) fn source(cache: &Path) -> Result<Source, CriuError> {
    let dir = cache.join(format!("source-{VERSION}"));
    if let Some(source) = Source::find(&dir) {
        return Ok(source);
    }
    let tmp = cache.join(format!("source-{VERSION}.tmp"));
    fresh_dir(&tmp)?;
    eprintln!("lab: fetching Debian's source package criu {VERSION} from {SOURCE_SUITE}");
    let apt =
        LabApt::source_packages(&cache.join("apt"), SOURCE_SUITE).map_err(CriuError::Source)?;
    let fetched = apt.download_source("criu", VERSION, &tmp);
    // apt keeps every file it fetched and checked; a mirror without Debian's packaging still
    // gives the upstream tarball, which builds as it is.
    match (Source::find(&tmp), fetched) {
        (Some(_), Ok(())) => {}
        (Some(_), Err(_)) => eprintln!(
            "lab: warning: apt-get source fetched criu's .dsc and upstream tarball but not \
             Debian's packaging: building the upstream tarball without Debian's patches"
        ),
        (None, Err(err)) => return Err(CriuError::Source(err)),
        (None, Ok(())) => {
            return Err(CriuError::Io {
                path: tmp,
                source: std::io::Error::other("apt fetched no .dsc and orig tarball"),
            })
        }
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    Source::find(&dir).ok_or_else(|| CriuError::Io {
        path: dir,
        source: std::io::Error::other("the source package left its directory"),
    })
}

/// Empties `dir` (unmounting what an interrupted build left mounted below it) and creates it.
pub(super) fn fresh_dir(dir: &Path) -> Result<(), CriuError> {
    if dir.exists() {
        host::unmount_below(dir).map_err(|source| CriuError::Step {
            step: "unmounting what an interrupted build left mounted".into(),
            source,
        })?;
        fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    fs::create_dir_all(dir).map_err(io(dir))
}

fn jobs() -> String {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .to_string()
}

/// Builds CRIU on the host, with the host's (Debian 12's) libraries, in `tmp`; returns the
/// results directory.
pub(super) fn on_host(tmp: &Path, source: &Source) -> Result<PathBuf, CriuError> {
    if nix::unistd::geteuid().is_root() {
        host::ensure_packages(BUILD_PACKAGES).map_err(|source| CriuError::Step {
            step: "installing CRIU's build dependencies".into(),
            source,
        })?;
    }
    let src = tmp.join(format!("criu-{}", upstream_version()));
    source.unpack(&src)?;
    let start = Instant::now();
    eprintln!("lab: building CRIU {VERSION} for bookworm (make criu, a few minutes)");
    step(
        "make criu (bookworm)",
        Command::new("make")
            .arg("-C")
            .arg(&src)
            .arg(format!("-j{}", jobs()))
            .arg("criu"),
    )?;
    let binary = src.join("criu/criu");
    let version = version_line(&step(
        "criu --version",
        Command::new(&binary).arg("--version"),
    )?)?;
    let ldd = step("ldd criu (bookworm)", Command::new("ldd").arg(&binary))?;
    let libraries = host::parse_ldd(&ldd);
    let out = tmp.join("out");
    record(&out, &binary, &version, source, &libraries)?;
    eprintln!(
        "lab: CRIU {VERSION} for bookworm built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Builds CRIU in Debian 13's own userland: a copy of `tree` in `tmp` with the build
/// dependencies installed by its own apt, `make criu` in a chroot of it; returns the results
/// directory. The tree itself is not changed.
pub(super) fn in_tree(tmp: &Path, source: &Source, tree: &Path) -> Result<PathBuf, CriuError> {
    let start = Instant::now();
    let root = tmp.join("root");
    step(
        "copying the trixie tree for the CRIU build",
        Command::new("cp").arg("-a").arg(tree).arg(&root),
    )?;
    let _ = fs::remove_file(root.join(".complete"));
    // The tree's apt reaches the mirror the way the host does.
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).map_err(io(&root))?;
    let mounts = ChrootMounts::mount(&root)?;
    let chroot = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(&root)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    };
    step(
        "apt-get update in the trixie build tree",
        &mut chroot(&["apt-get", "update", "-q"]),
    )?;
    let mut install = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
    install.extend(BUILD_PACKAGES);
    step(
        "installing CRIU's build dependencies in the trixie build tree",
        &mut chroot(&install),
    )?;
    let src_in_root = format!("/usr/src/criu-{}", upstream_version());
    source.unpack(&root.join(src_in_root.trim_start_matches('/')))?;
    let prepared = start.elapsed();
    eprintln!("lab: building CRIU {VERSION} for trixie (make criu in its tree, a few minutes)");
    let jobs = format!("-j{}", jobs());
    step(
        "make criu (trixie)",
        &mut chroot(&["make", "-C", &src_in_root, &jobs, "criu"]),
    )?;
    let binary_in_root = format!("{src_in_root}/criu/criu");
    let version = version_line(&step(
        "criu --version (trixie)",
        &mut chroot(&[&binary_in_root, "--version"]),
    )?)?;
    let ldd = step("ldd criu (trixie)", &mut chroot(&["ldd", &binary_in_root]))?;
    drop(mounts);
    let libraries = host::parse_ldd(&ldd);
    let out = tmp.join("out");
    let binary = root.join(binary_in_root.trim_start_matches('/'));
    record(&out, &binary, &version, source, &libraries)?;
    eprintln!(
        "lab: CRIU {VERSION} for trixie built in {:.0} s (tree copied and build dependencies \
         installed in {:.0} s)",
        start.elapsed().as_secs_f64(),
        prepared.as_secs_f64()
    );
    Ok(out)
}

/// `/proc` mounted in a build tree while apt and make run there (its `/dev` has the nodes
/// debootstrap made; the host's is not bound in, so nothing of the host's lies below the tree
/// when it is deleted).
#[derive(Debug)]
struct ChrootMounts {
    root: PathBuf,
}

impl ChrootMounts {
    fn mount(root: &Path) -> Result<ChrootMounts, CriuError> {
        step(
            "mounting /proc in the build tree",
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(root.join("proc")),
        )?;
        Ok(ChrootMounts { root: root.into() })
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        let _ = host::unmount_below(&self.root);
    }
}

/// The first line of `criu --version`, checked against the pinned release.
fn version_line(output: &str) -> Result<String, CriuError> {
    let line = output.lines().next().unwrap_or_default().trim().to_string();
    if line.split_whitespace().last() != Some(upstream_version()) {
        return Err(CriuError::Version { said: line });
    }
    Ok(line)
}

/// Writes a build's results to `out`: the binary and what it is.
fn record(
    out: &Path,
    binary: &Path,
    version: &str,
    source: &Source,
    libraries: &[PathBuf],
) -> Result<(), CriuError> {
    fs::create_dir_all(out).map_err(io(out))?;
    fs::copy(binary, out.join("criu")).map_err(io(binary))?;
    let libraries: String = libraries
        .iter()
        .map(|l| format!("{}\n", l.display()))
        .collect();
    for (name, text) in [
        ("version", format!("{version}\n")),
        ("source", format!("{}\n", source.provenance())),
        ("libraries", libraries),
    ] {
        let path = out.join(name);
        fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pinned_release_passes_the_version_check() {
        let said = format!("Version: {}\nGitID: v{0}\n", upstream_version());
        assert_eq!(
            version_line(&said).unwrap(),
            format!("Version: {}", upstream_version())
        );
        assert!(version_line("Version: 3.17.1\n").is_err());
        assert!(version_line("").is_err());
    }

    #[test]
    fn the_source_package_is_found_with_or_without_debians_packaging() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Source::find(dir.path()).is_none());
        let upstream = upstream_version();
        fs::write(dir.path().join(format!("criu_{VERSION}.dsc")), "").unwrap();
        fs::write(dir.path().join(format!("criu_{upstream}.orig.tar.xz")), "").unwrap();
        let source = Source::find(dir.path()).unwrap();
        assert!(source.packaging.is_none());
        assert!(source.provenance().contains("upstream tarball only"));
        fs::write(dir.path().join(format!("criu_{VERSION}.debian.tar.xz")), "").unwrap();
        let source = Source::find(dir.path()).unwrap();
        assert!(source.packaging.is_some());
        assert!(source.provenance().contains("Debian's patches applied"));
    }
}
