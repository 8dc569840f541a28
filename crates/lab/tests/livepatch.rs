//! Lab test of live patching on kernel A (Debian 6.1.0-47, 6.1.170): modules are built on the
//! host by `overboot patch build` from Debian's source of that exact release, then applied,
//! listed, reverted and replaced by `overboot patch` inside one guest running A. Each step
//! checks what userspace sees (`/proc/version`, `/proc/stat`), so the test fails if a patch
//! does not change behaviour or a revert does not restore it. Refusals (a structure layout
//! change, a module built for another release) are checked too.
//!
//! One patch is a real stable fix between A and B (6.1.192): "time/namespace: Validate
//! nanosecond field in proc_timens_set_offset()". A probe (`lab-workload timens`) writes a
//! nanosecond offset of 2^64-1 to `/proc/self/timens_offsets` of a new time namespace: A takes
//! it and keeps an offset of -1 ns; with the livepatch applied, as on B, the write fails with
//! EINVAL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use overboot_lab::lab::Lab;
use overboot_lab::Guest;

const CMD: Duration = Duration::from_secs(120);
const MARKER: &str = "[overboot livepatch]";
const STAT_LINE: &str = "livepatched_iowait ";
/// A monotonic offset whose nanoseconds (2^64-1) the kernel parses into a negative `tv_nsec`.
const BAD_NSEC: &str = "monotonic 0 18446744073709551615";

/// What `lab-workload timens OFFSETS` reports: the kernel's answer to the write (`accepted`
/// or `rejected <errno>`) and the offsets it keeps as (clock, seconds, nanoseconds).
#[derive(Debug, PartialEq)]
struct TimensProbe {
    write: String,
    kept: Vec<(String, i64, i64)>,
}

impl TimensProbe {
    fn parse(text: &str) -> TimensProbe {
        let write = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("write: "))
            .unwrap_or_else(|| panic!("no write result from the probe: {text}"))
            .to_string();
        let kept = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let clock = f.next().filter(|c| *c == "monotonic" || *c == "boottime")?;
                let secs = f.next()?.parse().ok()?;
                let nsecs = f.next()?.parse().ok()?;
                Some((clock.to_string(), secs, nsecs))
            })
            .collect();
        TimensProbe { write, kept }
    }

    fn monotonic(&self) -> (i64, i64) {
        self.kept
            .iter()
            .find(|(clock, _, _)| clock == "monotonic")
            .map(|&(_, s, ns)| (s, ns))
            .unwrap_or_else(|| panic!("no monotonic offset: {self:?}"))
    }
}

fn timens_probe(guest: &mut Guest, offsets: &str) -> TimensProbe {
    let cmd = format!("lab-workload timens '{offsets}'");
    TimensProbe::parse(&guest.run_ok(&cmd, CMD).expect("probe").text())
}

fn patches_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../livepatch/patches")
}

/// Runs `overboot patch build` on the host; returns (exit code, stdout + stderr).
fn build(
    overboot: &Path,
    release: &str,
    patch: &Path,
    out: &Path,
    extra: &[&str],
) -> (i32, String) {
    let cache = overboot_lab::host::cache_dir().join("livepatch");
    let output = Command::new(overboot)
        .args([
            "patch",
            "build",
            "--kernel-release",
            release,
            "--source-patch",
        ])
        .arg(patch)
        .arg("--output")
        .arg(out)
        .arg("--cache")
        .arg(&cache)
        .args(extra)
        .output()
        .expect("run overboot patch build");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn build_ok(overboot: &Path, release: &str, patch: &Path, out: &Path, extra: &[&str]) -> String {
    let (code, text) = build(overboot, release, patch, out, extra);
    assert_eq!(code, 0, "patch build {} failed: {text}", patch.display());
    text
}

#[test]
fn livepatch_build_apply_list_revert_replace_on_a() {
    let lab = Lab::prepare(&["A"]).expect("prepare lab");
    let release = lab.kernel("A").expect("A").release.clone();
    let overboot = lab.binaries().overboot.clone();
    let work = overboot_lab::host::run_dir("livepatch-modules");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");

    // Host: build the modules from source patches.
    let version_ko = work.join("version.ko");
    let text = build_ok(
        &overboot,
        &release,
        &patches_dir().join("proc-version-banner.patch"),
        &version_ko,
        &[],
    );
    assert!(text.contains("patches version_proc_show"), "{text}");
    assert!(
        text.contains("linux_proc_banner"),
        "no livepatch relocation: {text}"
    );
    let stat_ko = work.join("stat.ko");
    let text = build_ok(
        &overboot,
        &release,
        &patches_dir().join("stat-static-call.patch"),
        &stat_ko,
        &[],
    );
    assert!(text.contains("patches show_stat"), "{text}");
    assert!(
        text.contains("get_iowait_time"),
        "the static callee is not reached through a livepatch relocation: {text}"
    );
    // The real stable fix from 6.1.192.
    let timens_ko = work.join("timens.ko");
    let text = build_ok(
        &overboot,
        &release,
        &patches_dir().join("timens-offset-nsec.patch"),
        &timens_ko,
        &[],
    );
    assert!(text.contains("patches proc_timens_set_offset"), "{text}");
    // A cumulative patch carrying both fixes.
    let cumulative = work.join("cumulative.patch");
    let both = [
        std::fs::read_to_string(patches_dir().join("proc-version-banner.patch")).expect("read"),
        std::fs::read_to_string(patches_dir().join("stat-static-call.patch")).expect("read"),
    ]
    .join("");
    std::fs::write(&cumulative, both).expect("write cumulative");
    let cumulative_ko = work.join("cumulative.ko");
    build_ok(
        &overboot,
        &release,
        &cumulative,
        &cumulative_ko,
        &["--replace", "--name", "livepatch_cumulative"],
    );

    // Host: refusals.
    let (code, text) = build(
        &overboot,
        &release,
        &patches_dir().join("refused-struct-layout.patch"),
        &work.join("refused.ko"),
        &[],
    );
    assert_eq!(code, 5, "struct layout change not refused: {text}");
    assert!(
        text.contains("layout of `struct mem_size_stats`"),
        "unclear refusal: {text}"
    );
    // The version module, claiming another release in its vermagic.
    let mut other = std::fs::read(&version_ko).expect("read module");
    let from = format!("vermagic={release}");
    let to = from.replace("6.1.0-47", "6.1.0-56");
    let at = other
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("vermagic in module");
    other[at..at + to.len()].copy_from_slice(to.as_bytes());
    let other_ko = work.join("other-release.ko");
    std::fs::write(&other_ko, other).expect("write module");

    let scenario = lab
        .scenario_with(
            "livepatch-a",
            &["A"],
            256,
            &[
                (version_ko, "lp/version.ko".into()),
                (stat_ko, "lp/stat.ko".into()),
                (cumulative_ko, "lp/cumulative.ko".into()),
                (other_ko, "lp/other-release.ko".into()),
                (timens_ko, "lp/timens.ko".into()),
            ],
        )
        .expect("scenario");
    let config = lab.guest_config(&scenario, "A").expect("config");
    let mut guest = lab.boot(&config).expect("boot A");
    let mut sh = |cmd: &str| guest.run_ok(cmd, CMD).expect(cmd).text();

    assert!(
        !sh("cat /proc/version").contains(MARKER),
        "marker before patching"
    );
    assert!(!sh("cat /proc/stat").contains(STAT_LINE));
    assert!(sh("overboot patch list").contains("no live patches"));

    // apply: behaviour changes at once; list says so.
    let out = sh("overboot patch apply /lab/lp/version.ko");
    assert!(
        out.contains("applied livepatch_proc_version_banner"),
        "{out}"
    );
    let version = sh("cat /proc/version");
    assert!(
        version.starts_with(MARKER),
        "/proc/version not patched: {version}"
    );
    assert!(version.contains("6.1.170"), "{version}");
    let list = sh("overboot patch list");
    assert!(
        list.contains("livepatch_proc_version_banner enabled vmlinux:version_proc_show"),
        "{list}"
    );

    // A patched function calling a static function of its file.
    sh("overboot patch apply /lab/lp/stat.ko");
    let stat = sh("cat /proc/stat");
    let line = stat
        .lines()
        .find(|l| l.starts_with(STAT_LINE))
        .unwrap_or_else(|| panic!("/proc/stat not patched: {stat}"));
    let value: u64 = line[STAT_LINE.len()..].trim().parse().expect("a number");
    let cpu0_iowait: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu0 "))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|v| v.parse().ok())
        .expect("cpu0 iowait");
    assert!(
        value.abs_diff(cpu0_iowait) <= 2,
        "get_iowait_time gave {value}, cpu0 shows {cpu0_iowait}"
    );
    let list = sh("overboot patch list");
    assert!(
        list.contains("livepatch_stat_static_call enabled vmlinux:show_stat"),
        "{list}"
    );

    // A module built for another release is refused before loading.
    let out = guest
        .run("overboot patch apply /lab/lp/other-release.ko", CMD)
        .expect("run");
    assert_eq!(out.status, 5, "{}", out.text());
    assert!(
        out.text().contains("was built for 6.1.0-56-cloud-amd64"),
        "{}",
        out.text()
    );
    let mut sh = |cmd: &str| guest.run_ok(cmd, CMD).expect(cmd).text();

    // revert: behaviour restored, module gone, list right.
    sh("overboot patch revert livepatch_proc_version_banner");
    assert!(
        !sh("cat /proc/version").contains(MARKER),
        "revert did not restore"
    );
    assert!(
        sh("cat /proc/stat").contains(STAT_LINE),
        "the other patch went too"
    );
    assert!(!sh("cat /proc/modules").contains("livepatch_proc_version_banner"));
    let list = sh("overboot patch list");
    assert!(!list.contains("livepatch_proc_version_banner"), "{list}");

    // replace: one cumulative patch takes over atomically; the replaced module is unloaded.
    let out = sh("overboot patch replace /lab/lp/cumulative.ko");
    assert!(
        out.contains("replacing livepatch_stat_static_call"),
        "{out}"
    );
    assert!(sh("cat /proc/version").starts_with(MARKER));
    assert!(sh("cat /proc/stat").contains(STAT_LINE));
    let list = sh("overboot patch list");
    assert!(list.contains("livepatch_cumulative enabled"), "{list}");
    assert!(!list.contains("livepatch_stat_static_call"), "{list}");
    assert!(!sh("cat /proc/modules").contains("livepatch_stat_static_call"));

    sh("overboot patch revert livepatch_cumulative");
    assert!(!sh("cat /proc/version").contains(MARKER));
    assert!(!sh("cat /proc/stat").contains(STAT_LINE));
    assert!(sh("overboot patch list").contains("no live patches"));

    // The stable fix: A keeps a negative nanosecond offset; patched, it refuses it at once.
    let buggy = timens_probe(&mut guest, BAD_NSEC);
    assert_eq!(buggy.write, "accepted", "A should have the bug: {buggy:?}");
    assert_eq!(buggy.monotonic(), (0, -1), "{buggy:?}");
    let out = guest
        .run_ok("overboot patch apply /lab/lp/timens.ko", CMD)
        .expect("apply")
        .text();
    assert!(
        out.contains("applied livepatch_timens_offset_nsec"),
        "{out}"
    );
    let fixed = timens_probe(&mut guest, BAD_NSEC);
    assert_eq!(fixed.write, "rejected EINVAL", "not fixed: {fixed:?}");
    assert_eq!(fixed.monotonic(), (0, 0), "{fixed:?}");
    // Valid offsets are still taken.
    let valid = timens_probe(&mut guest, "monotonic 5 500000000");
    assert_eq!(valid.write, "accepted", "{valid:?}");
    assert_eq!(valid.monotonic(), (5, 500_000_000), "{valid:?}");
    let list = guest
        .run_ok("overboot patch list", CMD)
        .expect("list")
        .text();
    assert!(
        list.contains("livepatch_timens_offset_nsec enabled vmlinux:proc_timens_set_offset"),
        "{list}"
    );
    guest
        .run_ok("overboot patch revert livepatch_timens_offset_nsec", CMD)
        .expect("revert");
    let again = timens_probe(&mut guest, BAD_NSEC);
    assert_eq!(again, buggy, "revert did not bring the old behaviour back");
    let mut sh = |cmd: &str| guest.run_ok(cmd, CMD).expect(cmd).text();
    assert!(sh("overboot patch list").contains("no live patches"));
    let taint = sh("cat /proc/sys/kernel/tainted");
    eprintln!("tainted after the run: {}", taint.trim());
}

/// Kernel B (6.1.192) carries the stable fix the livepatch backports: the probe that A fails
/// shows there what the patched A shows.
#[test]
fn stable_fix_behaves_as_on_b() {
    let lab = Lab::prepare(&["B"]).expect("prepare lab");
    let scenario = lab.scenario("livepatch-b", &["B"], 256).expect("scenario");
    let config = lab.guest_config(&scenario, "B").expect("config");
    let mut guest = lab.boot(&config).expect("boot B");
    let probe = timens_probe(&mut guest, BAD_NSEC);
    assert_eq!(probe.write, "rejected EINVAL", "B lacks the fix: {probe:?}");
    assert_eq!(probe.monotonic(), (0, 0), "{probe:?}");
}
