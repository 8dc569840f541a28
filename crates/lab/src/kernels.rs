//! Debian kernel packages for the lab: fetched with `apt-get download` into the cache and
//! unpacked with `dpkg-deb -x` (never installed on the host).
//!
//! Three kernels are pinned: A (6.1.0-47, 6.1.170) → B (6.1.0-56, 6.1.192) is a real stable
//! security update, A → C (6.12.111) a major-version jump. When a pinned package has left the
//! archive, the newest package of the same series is used instead, and the lab says so.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{self, HostError};

/// A kernel the lab can boot: which package, and the series to fall back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// Short label used by tests and the CLI (`A`, `B`, `C`).
    pub label: &'static str,
    /// The pinned Debian package.
    pub package: &'static str,
    /// Package-name prefix and suffix of the series, for the fallback.
    pub series: (&'static str, &'static str),
}

/// A: the "old" kernel, 6.1.170.
pub const A: KernelSpec = KernelSpec {
    label: "A",
    package: "linux-image-6.1.0-47-cloud-amd64-unsigned",
    series: ("linux-image-6.1.0-", "-cloud-amd64-unsigned"),
};
/// B: the stable security update of A, 6.1.192.
pub const B: KernelSpec = KernelSpec {
    label: "B",
    package: "linux-image-6.1.0-56-cloud-amd64-unsigned",
    series: ("linux-image-6.1.0-", "-cloud-amd64-unsigned"),
};
/// C: a major-version jump, 6.12.
pub const C: KernelSpec = KernelSpec {
    label: "C",
    package: "linux-image-6.12.111+deb12-cloud-amd64-unsigned",
    series: ("linux-image-6.12.", "+deb12-cloud-amd64-unsigned"),
};

impl KernelSpec {
    /// Looks a spec up by label (`A`, `B`, `C`, case-insensitive).
    pub fn by_label(label: &str) -> Option<KernelSpec> {
        [A, B, C]
            .into_iter()
            .find(|k| k.label.eq_ignore_ascii_case(label))
    }
}

/// Errors while fetching or reading a kernel package.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// apt or dpkg failed.
    #[error("cannot fetch {package}")]
    Fetch {
        package: String,
        #[source]
        source: HostError,
    },
    /// Neither the pinned package nor any of its series is in the archive.
    #[error("{package} is not in the archive and no package of its series is")]
    NotInArchive { package: String },
    /// The unpacked package does not look like a kernel package.
    #[error("unpacked {package} has no {what}")]
    Layout { package: String, what: String },
    /// Filesystem error in the cache.
    #[error("cache i/o at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The label of the spec it was fetched for.
    pub label: String,
    /// The package actually used (differs from the spec after a fallback).
    pub package: String,
    /// `uname -r` of this kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules_dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fetches (once) and unpacks a kernel package into `cache/kernels/`.
pub fn fetch(spec: &KernelSpec, cache: &Path) -> Result<Kernel, KernelError> {
    let package = resolve_package(spec)?;
    let dir = cache.join("kernels").join(&package);
    let unpacked = dir.join("root");
    let done = dir.join(".unpacked");
    if !done.exists() {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let fetch_err = |source| KernelError::Fetch {
            package: package.clone(),
            source,
        };
        let mut download = Command::new("apt-get");
        download
            .current_dir(&dir)
            .args(["download", "-q", &package]);
        if host::run(&mut download).is_err() {
            // A fresh machine may have stale or no package lists.
            host::run(Command::new("apt-get").args(["update", "-q"])).map_err(fetch_err)?;
            let mut again = Command::new("apt-get");
            again.current_dir(&dir).args(["download", "-q", &package]);
            host::run(&mut again).map_err(fetch_err)?;
        }
        let deb = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| KernelError::Layout {
                package: package.clone(),
                what: "downloaded .deb".into(),
            })?;
        let _ = fs::remove_dir_all(&unpacked);
        host::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))
            .map_err(fetch_err)?;
        // Packages ship no modules.dep: the postinst makes it. Make it the same way, offline.
        let release = read_release(&package, &unpacked)?;
        host::run(
            Command::new("depmod")
                .arg("-b")
                .arg(&unpacked)
                .arg(&release),
        )
        .map_err(fetch_err)?;
        fs::write(&done, b"").map_err(io(&done))?;
    }
    read_unpacked(spec.label, &package, &unpacked)
}

fn read_release(package: &str, root: &Path) -> Result<String, KernelError> {
    let vmlinuz = find_vmlinuz(package, root)?;
    Ok(vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default())
}

fn find_vmlinuz(package: &str, root: &Path) -> Result<PathBuf, KernelError> {
    let boot = root.join("boot");
    fs::read_dir(&boot)
        .map_err(io(&boot))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| KernelError::Layout {
            package: package.into(),
            what: "boot/vmlinuz-*".into(),
        })
}

fn read_unpacked(label: &str, package: &str, root: &Path) -> Result<Kernel, KernelError> {
    let vmlinuz = find_vmlinuz(package, root)?;
    let release = read_release(package, root)?;
    let modules_dir = root.join("lib/modules").join(&release);
    if !modules_dir.join("modules.dep").exists() {
        return Err(KernelError::Layout {
            package: package.into(),
            what: format!("lib/modules/{release}/modules.dep"),
        });
    }
    Ok(Kernel {
        label: label.into(),
        package: package.into(),
        release,
        vmlinuz,
        modules_dir,
    })
}

/// The pinned package if the archive has it, else the newest of its series (with a warning).
fn resolve_package(spec: &KernelSpec) -> Result<String, KernelError> {
    let show = Command::new("apt-cache")
        .args(["show", "--no-all-versions", spec.package])
        .output();
    if show.is_ok_and(|o| o.status.success() && !o.stdout.is_empty()) {
        return Ok(spec.package.to_string());
    }
    let names = host::run(Command::new("apt-cache").args(["pkgnames", spec.series.0])).map_err(
        |source| KernelError::Fetch {
            package: spec.package.into(),
            source,
        },
    )?;
    let newest = newest_of_series(names.lines(), spec.series).ok_or(KernelError::NotInArchive {
        package: spec.package.into(),
    })?;
    eprintln!(
        "lab: warning: {} has left the archive; using the newest of its series, {}",
        spec.package, newest
    );
    Ok(newest)
}

/// Picks the newest package name of a series by comparing the numeric parts of its middle.
pub(crate) fn newest_of_series<'a>(
    names: impl Iterator<Item = &'a str>,
    (prefix, suffix): (&str, &str),
) -> Option<String> {
    let mut by_key: BTreeMap<Vec<u64>, String> = BTreeMap::new();
    for name in names {
        let Some(middle) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
        else {
            continue;
        };
        let key: Option<Vec<u64>> = middle.split(['.', '-']).map(|p| p.parse().ok()).collect();
        if let Some(key) = key {
            by_key.insert(key, name.to_string());
        }
    }
    by_key.into_values().next_back()
}

/// A loadable module of a kernel package and what it depends on.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// Path of the `.ko`, `.ko.xz` or `.ko.zst` in the unpacked package.
    pub path: PathBuf,
    /// Names of the modules it needs (transitively, as modules.dep lists them).
    pub deps: Vec<String>,
}

/// The modules of a kernel: loadable ones from `modules.dep`, built-in ones from
/// `modules.builtin`.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    loadable: HashMap<String, ModuleInfo>,
    builtin: std::collections::HashSet<String>,
}

/// The canonical name of a module from its file name or user spelling (`-` → `_`).
pub fn module_name(file_or_name: &str) -> String {
    let base = file_or_name.rsplit('/').next().unwrap_or(file_or_name);
    let base = base
        .trim_end_matches(".xz")
        .trim_end_matches(".zst")
        .trim_end_matches(".gz")
        .trim_end_matches(".ko");
    base.replace('-', "_")
}

impl ModuleIndex {
    /// Reads the index of an unpacked kernel.
    pub fn read(kernel: &Kernel) -> Result<ModuleIndex, KernelError> {
        let dep_path = kernel.modules_dir.join("modules.dep");
        let dep = fs::read_to_string(&dep_path).map_err(io(&dep_path))?;
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            index.loadable.insert(
                module_name(path),
                ModuleInfo {
                    path: kernel.modules_dir.join(path),
                    deps: deps.split_whitespace().map(module_name).collect(),
                },
            );
        }
        let builtin_path = kernel.modules_dir.join("modules.builtin");
        if let Ok(text) = fs::read_to_string(&builtin_path) {
            index.builtin = text.lines().map(module_name).collect();
        }
        Ok(index)
    }

    /// The modules to insert, dependencies first, for the wanted names. Built-in modules are
    /// skipped; names this kernel does not have at all are returned in the second list.
    pub fn load_order(&self, wanted: &[&str]) -> (Vec<(String, PathBuf)>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut unknown = Vec::new();
        for name in wanted {
            let name = module_name(name);
            if self.builtin.contains(&name) {
                continue;
            }
            if !self.loadable.contains_key(&name) {
                unknown.push(name);
                continue;
            }
            self.visit(&name, &mut seen, &mut order);
        }
        (order, unknown)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut std::collections::HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some(info) = self.loadable.get(name) else {
            return;
        };
        // modules.dep lists the closure with the most basic dependency last.
        for dep in info.deps.iter().rev() {
            self.visit(dep, seen, order);
        }
        order.push((name.to_string(), info.path.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_of_series_compares_numerically() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-47-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "linux-image-6.1.0-56-amd64-unsigned",
        ];
        assert_eq!(
            newest_of_series(names.into_iter(), A.series).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64-unsigned")
        );
        let names = [
            "linux-image-6.12.107+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.111+deb12-cloud-amd64-unsigned",
        ];
        assert_eq!(
            newest_of_series(names.into_iter(), C.series).as_deref(),
            Some("linux-image-6.12.111+deb12-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn module_names_are_canonical() {
        assert_eq!(module_name("kernel/net/af-key.ko.xz"), "af_key");
        assert_eq!(module_name("virtio-pci"), "virtio_pci");
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let mut index = ModuleIndex::default();
        let mk = |deps: &[&str]| ModuleInfo {
            path: PathBuf::from("x.ko"),
            deps: deps.iter().map(|d| d.to_string()).collect(),
        };
        index
            .loadable
            .insert("virtio_net".into(), mk(&["net_failover", "failover"]));
        index
            .loadable
            .insert("net_failover".into(), mk(&["failover"]));
        index.loadable.insert("failover".into(), mk(&[]));
        index.builtin.insert("virtio_pci".into());
        let (order, unknown) = index.load_order(&["virtio_pci", "virtio-net", "nope"]);
        let names: Vec<_> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["failover", "net_failover", "virtio_net"]);
        assert_eq!(unknown, ["nope"]);
    }
}
