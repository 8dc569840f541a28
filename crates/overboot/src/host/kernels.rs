//! The kernels installed on this machine, as the package manager leaves them in `/boot`
//! (`vmlinuz-<release>` with its `initrd.img-<release>`), against the running one: whether an
//! update is pending (`overboot pending`), and what `update --to` names.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// An installed kernel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    /// Its release (`uname -r` once booted).
    pub release: String,
    /// `/boot/vmlinuz-<release>`.
    pub kernel: PathBuf,
    /// `/boot/initrd.img-<release>`, when there is one.
    pub initrd: Option<PathBuf>,
}

/// Compares two kernel releases the way their version numbers read: each run of digits as a
/// number, the rest as text (`6.1.0-56-cloud-amd64` > `6.1.0-47-cloud-amd64`,
/// `6.12.117+deb13` > `6.12.9`).
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_number(a);
                let (nb, rb) = split_number(b);
                match na.cmp(&nb) {
                    Ordering::Equal => (a, b) = (ra, rb),
                    other => return other,
                }
            }
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => (a, b) = (&a[1..], &b[1..]),
                other => return other,
            },
        }
    }
}

/// The leading number of `s` (saturating) and the rest.
fn split_number(s: &[u8]) -> (u128, &[u8]) {
    let end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    let value = s[..end].iter().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    });
    (value, &s[end..])
}

/// Every kernel in `boot` (`vmlinuz-<release>`), oldest first.
pub fn installed(boot: &Path) -> Vec<Installed> {
    let Ok(entries) = std::fs::read_dir(boot) else {
        return Vec::new();
    };
    let mut kernels: Vec<Installed> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            let initrd = boot.join(format!("initrd.img-{release}"));
            Some(Installed {
                kernel: e.path(),
                initrd: initrd.is_file().then_some(initrd),
                release,
            })
        })
        .collect();
    kernels.sort_by(|a, b| compare_releases(&a.release, &b.release));
    kernels
}

/// The kernel `to` names in `boot`: a release, or `newest`.
pub fn named(boot: &Path, to: &str) -> Option<Installed> {
    let kernels = installed(boot);
    if to == "newest" {
        return kernels.into_iter().last();
    }
    kernels.into_iter().find(|k| k.release == to)
}

/// The newest installed kernel when it is newer than `running`: an update is pending.
pub fn pending(boot: &Path, running: &str) -> Option<Installed> {
    installed(boot)
        .into_iter()
        .last()
        .filter(|newest| compare_releases(&newest.release, running) == Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_as_their_numbers_read() {
        let order = [
            "6.1.0-9-cloud-amd64",
            "6.1.0-47-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "6.12.9+deb13-cloud-amd64",
            "6.12.117+deb13-cloud-amd64",
            "7.3.4+deb13-cloud-amd64",
        ];
        for pair in order.windows(2) {
            assert_eq!(
                compare_releases(pair[0], pair[1]),
                Ordering::Less,
                "{pair:?}"
            );
            assert_eq!(compare_releases(pair[1], pair[0]), Ordering::Greater);
        }
        assert_eq!(compare_releases("6.1.0-56", "6.1.0-56"), Ordering::Equal);
    }

    #[test]
    fn the_newest_installed_kernel_is_pending_when_newer_than_the_running_one() {
        let boot = tempfile::tempdir().unwrap();
        for release in ["6.1.0-47-cloud-amd64", "6.1.0-56-cloud-amd64"] {
            std::fs::write(boot.path().join(format!("vmlinuz-{release}")), b"").unwrap();
        }
        std::fs::write(boot.path().join("initrd.img-6.1.0-56-cloud-amd64"), b"").unwrap();
        std::fs::write(boot.path().join("config-6.1.0-99"), b"").unwrap();
        let newest = pending(boot.path(), "6.1.0-47-cloud-amd64").expect("pending");
        assert_eq!(newest.release, "6.1.0-56-cloud-amd64");
        assert!(newest.initrd.is_some());
        assert_eq!(pending(boot.path(), "6.1.0-56-cloud-amd64"), None);
        assert_eq!(named(boot.path(), "newest"), Some(newest));
        let older = named(boot.path(), "6.1.0-47-cloud-amd64").expect("named");
        assert_eq!(older.initrd, None);
        assert_eq!(named(boot.path(), "6.1.0-1"), None);
    }
}
