//! The CRIU of the lab's guests: one pinned release, built from Debian's source package in each
//! profile's own userland and cached, installed in every guest in place of the distribution's;
//! or, with `OVERBOOT_LAB_CRIU=distro`, the distribution's own (Debian 12: 3.17, Debian 13:
//! 4.1.1), so that the old engine can still be measured.
//!
//! ```text
//!  sid (deb-src, an apt list of the lab's own) ── apt-get source --download-only criu=VERSION
//!    cache/criu/source-<VERSION>/        the .dsc, the orig tarball, Debian's packaging
//!  Debian 12: unpacked (dpkg-source -x), `make criu` on the host, with Debian 12's libraries
//!    cache/criu/<VERSION>-bookworm/      criu, version, source
//!  Debian 13: a copy of the profile's tree, the build dependencies installed there with its
//!  own apt, `make criu` in a chroot of it, so that the binary links Debian 13's libraries
//!    cache/criu/<VERSION>-trixie/        criu, version, source, libraries
//! ```
//!
//! Each is built in a `.tmp` sibling and renamed into place when complete, so an interrupted
//! build is started again, never taken for a finished one.

mod build;
mod pin;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::host;

use self::pin::io;
pub use self::pin::{
    upstream_version, CriuError, BUILD_PACKAGES, ENGINE_VAR, SOURCE_SUITE, VERSION,
};

/// Which CRIU the guests get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// [`VERSION`], built by the lab for the guest's userland.
    Pinned,
    /// The distribution's package.
    Distro,
}

impl Engine {
    /// The engine `OVERBOOT_LAB_CRIU` chooses, `default` when it is unset or empty: the
    /// Debian 13 profile's guests get the pinned CRIU (Debian's 4.1.1 cannot dump TCP on 7.3),
    /// the Debian 12 profile's Debian's 3.17.1 (with 4.2.1 there, overboot's lazy restore
    /// fails in CRIU's restorer: see docs/lab/README.md, "The guests' CRIU").
    pub fn from_env_or(default: Engine) -> Result<Engine, CriuError> {
        Engine::parse(std::env::var(ENGINE_VAR).ok().as_deref(), default)
    }

    fn parse(value: Option<&str>, default: Engine) -> Result<Engine, CriuError> {
        match value.map(str::trim) {
            None | Some("") => Ok(default),
            Some("pinned") => Ok(Engine::Pinned),
            Some("distro") => Ok(Engine::Distro),
            Some(other) => Err(CriuError::UnknownEngine(other.into())),
        }
    }
}

/// The userland a CRIU is built for: the release of a lab profile's guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Userland {
    /// Debian 12, the host's own: the busybox profile's initramfs copies host binaries.
    Bookworm,
    /// Debian 13, the trixie profile's root file system.
    Trixie,
}

impl Userland {
    /// The Debian codename (part of the cache key).
    pub fn codename(self) -> &'static str {
        match self {
            Userland::Bookworm => "bookworm",
            Userland::Trixie => "trixie",
        }
    }

    fn guests(self) -> &'static str {
        match self {
            Userland::Bookworm => "Debian 12 guests",
            Userland::Trixie => "Debian 13 image",
        }
    }
}

/// A built CRIU in the cache.
#[derive(Debug, Clone)]
pub struct PinnedCriu {
    /// The binary.
    pub binary: PathBuf,
    /// The first line of its `criu --version` (`Version: 4.2.1`).
    pub version: String,
    /// Where its source came from.
    pub source: String,
    /// The shared libraries it links, as paths in the userland it was built in (its `ldd`).
    pub libraries: Vec<PathBuf>,
}

impl PinnedCriu {
    fn read(dir: &Path) -> Option<PinnedCriu> {
        let binary = dir.join("criu");
        let text = |name: &str| fs::read_to_string(dir.join(name)).ok();
        binary.exists().then_some(())?;
        Some(PinnedCriu {
            binary,
            version: text("version")?.trim().to_string(),
            source: text("source")?.trim().to_string(),
            libraries: text("libraries")
                .unwrap_or_default()
                .lines()
                .map(PathBuf::from)
                .collect(),
        })
    }
}

/// The pinned CRIU for Debian 12 guests, built on the host unless the lab cache has it.
pub fn for_bookworm() -> Result<PinnedCriu, CriuError> {
    pinned(Userland::Bookworm, build::on_host)
}

/// The pinned CRIU for the trixie profile, built in a copy of its root file system `tree`
/// unless the lab cache has it.
pub fn for_trixie(tree: &Path) -> Result<PinnedCriu, CriuError> {
    pinned(Userland::Trixie, |tmp, source| {
        build::in_tree(tmp, source, tree)
    })
}

/// The cached build for `userland`, or a new one: `build` makes it in a fresh temporary
/// directory and returns the directory holding its results, which is renamed into place.
fn pinned(
    userland: Userland,
    build: impl FnOnce(&Path, &build::Source) -> Result<PathBuf, CriuError>,
) -> Result<PinnedCriu, CriuError> {
    let cache = host::cache_dir().join("criu");
    let dir = cache.join(format!("{VERSION}-{}", userland.codename()));
    if let Some(built) = PinnedCriu::read(&dir) {
        return Ok(built);
    }
    let source = build::source(&cache)?;
    let tmp = cache.join(format!("build-{VERSION}-{}.tmp", userland.codename()));
    build::fresh_dir(&tmp)?;
    let out = build(&tmp, &source)?;
    if dir.exists() {
        // A build that was renamed into place but lacks a file: not one of ours to keep.
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    fs::rename(&out, &dir).map_err(io(&dir))?;
    build::fresh_dir(&tmp)?;
    fs::remove_dir(&tmp).map_err(io(&tmp))?;
    PinnedCriu::read(&dir).ok_or_else(|| CriuError::Io {
        path: dir,
        source: std::io::Error::other("the build left no criu, version or source"),
    })
}

/// Prints, once per userland and process, which CRIU the guests get: `what` (the version and
/// where it comes from). Tests and the demo show it on stderr.
pub fn announce(userland: Userland, what: &str) {
    static SHOWN: Mutex<BTreeSet<Userland>> = Mutex::new(BTreeSet::new());
    let first = SHOWN
        .lock()
        .map(|mut shown| shown.insert(userland))
        .unwrap_or(true);
    if first {
        eprintln!("lab: CRIU in the {}: {what}", userland.guests());
    }
}

/// How [`announce`] describes a pinned build.
pub fn describe(built: &PinnedCriu) -> String {
    format!(
        "{}, pinned: {}; {ENGINE_VAR}=distro for the distribution's",
        built.version, built.source
    )
}

/// How [`announce`] describes the distribution's CRIU, whose package database is at
/// `admindir` (`/var/lib/dpkg` of the host or of a tree).
pub fn describe_distro(admindir: &Path) -> String {
    let version = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["-W", "-f=${Version}", "criu"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "version unknown".into());
    format!("the distribution's criu {version} ({ENGINE_VAR}=distro)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_pinned_unless_distro_is_asked_for() {
        for default in [Engine::Pinned, Engine::Distro] {
            assert_eq!(Engine::parse(None, default).unwrap(), default);
            assert_eq!(Engine::parse(Some(""), default).unwrap(), default);
            assert_eq!(
                Engine::parse(Some("pinned"), default).unwrap(),
                Engine::Pinned
            );
            assert_eq!(
                Engine::parse(Some("distro"), default).unwrap(),
                Engine::Distro
            );
        }
        assert!(matches!(
            Engine::parse(Some("4.3"), Engine::Pinned),
            Err(CriuError::UnknownEngine(v)) if v == "4.3"
        ));
    }

    #[test]
    fn the_upstream_release_is_the_debian_version_without_its_revision() {
        assert!(!upstream_version().contains('-'));
        assert!(VERSION.starts_with(&format!("{}-", upstream_version())));
    }

    #[test]
    fn a_cached_build_is_read_back_and_a_partial_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PinnedCriu::read(dir.path()).is_none());
        fs::write(dir.path().join("criu"), b"").unwrap();
        fs::write(dir.path().join("version"), "Version: 4.2.1\n").unwrap();
        assert!(PinnedCriu::read(dir.path()).is_none(), "no source record");
        fs::write(dir.path().join("source"), "Debian's criu 4.2.1-1\n").unwrap();
        fs::write(
            dir.path().join("libraries"),
            "/usr/lib/a.so\n/usr/lib/b.so\n",
        )
        .unwrap();
        let built = PinnedCriu::read(dir.path()).unwrap();
        assert_eq!(built.version, "Version: 4.2.1");
        assert_eq!(built.libraries.len(), 2);
    }
}
