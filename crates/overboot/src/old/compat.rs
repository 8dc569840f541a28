//! The checkpoint engine against the two kernels of an update. The new kernel is newer than the
//! CRIU a distribution ships, by construction, and CRIU breaks on kernels it predates: a table
//! of the known breakages ([`BREAKAGES`]), each with the kernel change, the CRIU release that
//! copes with it and how an older one fails, decides before anything is frozen. A known-bad
//! pair is refused with the version needed; a kernel newer than any this table was checked
//! against ([`CHECKED_UP_TO`]) is a warning, in `plan` and in the report.
//!
//! Both sides run the same CRIU: the restore runs the CRIU of the new kernel's root, which on
//! a real host is the same root file system (and in the lab the same binary in the image), so
//! the CRIU found here is judged against the target kernel too. An operator who updates CRIU
//! updates it for both.

/// A kernel's `major.minor`, from its release (`6.12.117+deb13-cloud-amd64`, `7.3.4-1`,
/// `6.1.0-56-cloud-amd64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// Parses the leading `major.minor` of a release; `None` when it has none.
    pub fn of_release(release: &str) -> Option<KernelVersion> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion(major, minor))
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// CRIU's `major.minor.sublevel` (`3.17.1`, `4.1.1`, `4.2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EngineVersion(pub u32, pub u32, pub u32);

impl EngineVersion {
    /// Parses a version as CRIU reports it; `None` when it is not one.
    pub fn parse(text: &str) -> Option<EngineVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let sublevel = parts.next().map_or(Some(0), |s| s.parse().ok())?;
        Some(EngineVersion(major, minor, sublevel))
    }
}

impl std::fmt::Display for EngineVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{}", self.0, self.1),
            s => write!(f, "{}.{}.{s}", self.0, self.1),
        }
    }
}

/// Where a breakage strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// CRIU does not start at all on such a kernel: both the dump and the restore fail.
    Both,
    /// The dump on such a kernel fails (the restore there works).
    Dump,
}

/// A known breakage of CRIU on newer kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakage {
    /// The first kernel with the change.
    pub since: KernelVersion,
    /// The kernel change.
    pub change: &'static str,
    /// The first CRIU release that copes with it.
    pub fixed_in: EngineVersion,
    /// The fix in CRIU.
    pub fix: &'static str,
    /// How an older CRIU fails.
    pub fails: &'static str,
    /// Where it strikes.
    pub side: Side,
    /// Only trees with TCP sockets are hit.
    pub tcp_only: bool,
}

/// The known breakages, oldest kernel first.
pub const BREAKAGES: &[Breakage] = &[
    Breakage {
        since: KernelVersion(6, 13),
        change: "the vDSO's clock pages moved to a mapping of their own, vvar_vclock \
                 (e93d2521b27f \"x86/vdso: Split virtual clock pages into dedicated mapping\")",
        fixed_in: EngineVersion(4, 1, 0),
        fix: "\"vdso: handle vvar_vclock vma-s\" (criu#2539)",
        fails: "CRIU does not start: \"vdso: Unexpected rt vDSO area bounds\", \"Could not \
                initialize kernel features detection\"",
        side: Side::Both,
        tcp_only: false,
    },
    Breakage {
        since: KernelVersion(6, 16),
        change: "SO_PASSCRED and SO_PASSSEC are restricted to unix, netlink and bluetooth \
                 sockets (7d8d93fdde50b \"net: Restrict SO_PASS{CRED,PIDFD,SEC} to \
                 AF_{UNIX,NETLINK,BLUETOOTH}\")",
        fixed_in: EngineVersion(4, 2, 0),
        fix: "criu/sockets.c reads those options only for unix and netlink sockets (criu#2719)",
        fails: "the dump of any TCP socket fails: \"Can't get 1:16 opt: Operation not supported\"",
        side: Side::Dump,
        tcp_only: true,
    },
];

/// The newest kernel this table was checked against (the lab's newest: Debian's 7.3).
pub const CHECKED_UP_TO: KernelVersion = KernelVersion(7, 3);

/// A pair CRIU is known to fail on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The CRIU found.
    pub engine: EngineVersion,
    /// The kernel it would fail on, and which one (`running`, `target`).
    pub kernel: String,
    /// Which kernel that is.
    pub role: &'static str,
    /// The row of [`BREAKAGES`].
    pub breakage: Breakage,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.breakage;
        write!(
            f,
            "CRIU {} cannot {} on the {} kernel {} (Linux {} and later: {}); how it fails: {}; \
             CRIU {} or newer copes ({})",
            self.engine,
            match b.side {
                Side::Both => "run",
                Side::Dump => "dump these trees",
            },
            self.role,
            self.kernel,
            b.since,
            b.change,
            b.fails,
            b.fixed_in,
            b.fix
        )
    }
}

/// The engine's verdict on an update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Known breakages that would strike.
    pub refusals: Vec<Refusal>,
    /// What is not known: kernels newer than the table, versions that do not parse.
    pub warnings: Vec<String>,
}

/// Whether overboot's lazy restore (its page server under CRIU's `--lazy-pages`) is verified
/// with this CRIU: with 3.x it is; with 4.2.1 the lazy tree's restore failed in CRIU's restorer
/// (`vdso: Invalid ELF magic`, the update rolled back), so 4.0 and later are refused rather than
/// rolled back. An unparsable version is not judged here (the engine's own checks are).
pub fn lazy_restore_verified(engine: &str) -> bool {
    EngineVersion::parse(engine).is_none_or(|v| v < EngineVersion(4, 0, 0))
}

/// Judges CRIU `engine` (as it reports its version) for a dump on `running` and a restore on
/// `target` (kernel releases); `tcp` says whether the trees hold TCP sockets.
pub fn judge(engine: &str, running: &str, target: &str, tcp: bool) -> Verdict {
    let mut verdict = Verdict::default();
    let Some(version) = EngineVersion::parse(engine) else {
        verdict.warnings.push(format!(
            "CRIU reports version {engine:?}, which overboot cannot compare with the known \
             breakages"
        ));
        return verdict;
    };
    for (role, release, dump) in [("running", running, true), ("target", target, false)] {
        let Some(kernel) = KernelVersion::of_release(release) else {
            verdict.warnings.push(format!(
                "the {role} kernel's release {release:?} has no version to compare"
            ));
            continue;
        };
        if kernel > CHECKED_UP_TO {
            verdict.warnings.push(format!(
                "the {role} kernel {release} is newer than any kernel CRIU {version} was \
                 checked against here (up to {CHECKED_UP_TO}): a change CRIU does not know \
                 yet may break the {}",
                if dump { "dump" } else { "restore" }
            ));
        }
        for breakage in BREAKAGES {
            let strikes = kernel >= breakage.since
                && version < breakage.fixed_in
                && (breakage.side == Side::Both || dump)
                && (!breakage.tcp_only || tcp);
            if strikes {
                verdict.refusals.push(Refusal {
                    engine: version,
                    kernel: release.to_string(),
                    role,
                    breakage: *breakage,
                });
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_restore_is_verified_with_criu_3_only() {
        assert!(lazy_restore_verified("3.17.1"));
        assert!(!lazy_restore_verified("4.0"));
        assert!(!lazy_restore_verified("4.2.1"));
        assert!(lazy_restore_verified("not a version"));
    }

    #[test]
    fn versions_parse_from_what_kernels_and_criu_report() {
        assert_eq!(
            KernelVersion::of_release("6.12.117+deb13-cloud-amd64"),
            Some(KernelVersion(6, 12))
        );
        assert_eq!(
            KernelVersion::of_release("6.1.0-56-cloud-amd64"),
            Some(KernelVersion(6, 1))
        );
        assert_eq!(
            KernelVersion::of_release("7.3.4"),
            Some(KernelVersion(7, 3))
        );
        assert_eq!(KernelVersion::of_release("vmlinuz"), None);
        assert_eq!(
            EngineVersion::parse("3.17.1"),
            Some(EngineVersion(3, 17, 1))
        );
        assert_eq!(EngineVersion::parse("4.2"), Some(EngineVersion(4, 2, 0)));
        assert_eq!(
            EngineVersion::parse("4.1.1\n"),
            Some(EngineVersion(4, 1, 1))
        );
        assert_eq!(EngineVersion::parse("4.x"), None);
        assert!(EngineVersion(4, 1, 1) < EngineVersion(4, 2, 0));
        assert!(EngineVersion(3, 17, 1) < EngineVersion(4, 1, 0));
        assert_eq!(EngineVersion(4, 2, 0).to_string(), "4.2");
    }

    #[test]
    fn criu_4_1_cannot_dump_tcp_on_7_3_and_4_2_can() {
        let v = judge(
            "4.1.1",
            "7.3.4+deb13-cloud-amd64",
            "6.12.117+deb13-cloud-amd64",
            true,
        );
        assert_eq!(v.refusals.len(), 1, "{v:?}");
        let text = v.refusals[0].to_string();
        for part in ["CRIU 4.1.1", "running kernel 7.3.4", "4.2 or newer", "1:16"] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        // Without TCP sockets the dump works; the restore on 7.3 works either way.
        assert!(judge("4.1.1", "7.3.4", "6.12.117", false)
            .refusals
            .is_empty());
        assert!(judge("4.1.1", "6.12.117", "7.3.4", true)
            .refusals
            .is_empty());
        assert!(judge("4.2", "7.3.4", "6.12.117", true).refusals.is_empty());
        assert!(judge("4.2.1", "7.3.4", "6.12.117", true)
            .refusals
            .is_empty());
    }

    #[test]
    fn criu_before_4_1_runs_on_neither_kernel_from_6_13() {
        // Debian 12's CRIU to a 6.12 kernel: fine; to 6.13 or from it: refused, naming 4.1.
        assert!(judge("3.17.1", "6.1.0-56", "6.12.111", true)
            .refusals
            .is_empty());
        let to = judge("3.17.1", "6.1.0-56", "6.13.2", false);
        assert_eq!(to.refusals.len(), 1, "{to:?}");
        assert_eq!(to.refusals[0].role, "target");
        assert!(to.refusals[0].to_string().contains("4.1 or newer"));
        let from = judge("3.17.1", "7.3.4", "6.12.117", true);
        // Both rows strike the running kernel; the target is fine.
        assert_eq!(from.refusals.len(), 2, "{from:?}");
        assert!(from.refusals.iter().all(|r| r.role == "running"));
        assert!(judge("4.1", "6.13.2", "6.14.1", true).refusals.is_empty());
    }

    #[test]
    fn kernels_newer_than_the_table_and_unknown_versions_are_warnings() {
        let v = judge("4.2", "7.3.4", "7.4.1", true);
        assert!(v.refusals.is_empty());
        assert_eq!(v.warnings.len(), 1, "{v:?}");
        assert!(v.warnings[0].contains("target kernel 7.4.1") && v.warnings[0].contains("7.3"));
        let odd = judge("unknown", "6.1.0", "6.12.1", true);
        assert!(odd.refusals.is_empty() && odd.warnings.len() == 1);
        assert!(judge("4.2", "6.1.0", "6.12.1", true).warnings.is_empty());
    }

    #[test]
    fn every_row_names_the_change_the_fix_and_the_failure() {
        for b in BREAKAGES {
            assert!(!b.change.is_empty() && !b.fix.is_empty() && !b.fails.is_empty());
            assert!(b.since <= CHECKED_UP_TO);
        }
        assert!(BREAKAGES.windows(2).all(|w| w[0].since <= w[1].since));
    }
}
