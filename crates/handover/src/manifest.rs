//! The manifest of a Save State Map: everything `overboot update` tells the new kernel's early
//! userspace (`overboot resume`) about the state it hands over.
//!
//! It is JSON (`manifest.json` in the map directory, see [`crate::map`]) so an operator can read
//! it with `jq` in an emergency shell. Field names are snake_case and stable: renaming one is a
//! format change. Compatibility rule, as for the binary header:
//!
//! ```text
//! format.major  outside OLDEST_READABLE_MAJOR..=CURRENT_FORMAT.major
//!                     -> refused (ManifestError::UnsupportedMajor), before any other field is read
//! format.minor  >  0  -> accepted; fields this build does not know are ignored
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors reading, writing or checking a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not a manifest of a format this build reads.
    #[error("manifest is not valid JSON of format {CURRENT_FORMAT}")]
    Json(#[source] serde_json::Error),
    /// Serializing failed (not expected with these types).
    #[error("cannot serialize manifest")]
    Serialize(#[source] serde_json::Error),
    /// The manifest was written by an incompatible version of overboot.
    #[error("manifest format {found} is not supported (this build reads {supported_major}.x)")]
    UnsupportedMajor {
        /// Version found in the manifest.
        found: FormatVersion,
        /// The only major version this build reads.
        supported_major: u16,
    },
    /// A relative path inside the map is malformed or escapes the map.
    #[error("path {path:?} in the map is invalid: {reason}")]
    InvalidPath {
        /// The offending path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A carried file's system path is not absolute.
    #[error("carried file {path:?} must have an absolute system path")]
    RelativeCarriedPath {
        /// The offending path.
        path: PathBuf,
    },
    /// The network section is newer than this build.
    #[error("the network section is version {found}; this build reads up to {supported}")]
    NetworkVersion {
        /// Version found.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// A preserved tree entry is inconsistent.
    #[error("preserved tree {name:?}: {reason}")]
    InvalidTree {
        /// Name of the tree.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The manifest format this build writes.
pub const CURRENT_FORMAT: FormatVersion = FormatVersion { major: 3, minor: 2 };

/// Oldest major version this build still reads (format 1: image digests are SHA-256).
const OLDEST_READABLE_MAJOR: u16 = 1;

/// Names at the top of a map directory that belong to the map itself, never to an image.
pub const RESERVED_NAMES: [&str; 2] = ["HEADER", "manifest.json"];

/// Longest relative path accepted inside a map (bytes).
const MAX_MAP_PATH: usize = 1024;

/// Version of the Save State Map format (header and manifest share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FormatVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl FormatVersion {
    /// Whether this build can read a map of this version.
    pub fn is_supported(self) -> bool {
        (OLDEST_READABLE_MAJOR..=CURRENT_FORMAT.major).contains(&self.major)
    }
}

impl Default for FormatVersion {
    fn default() -> Self {
        CURRENT_FORMAT
    }
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A kernel on one side of the switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `uname -r` of that kernel (for the new kernel: read from its image).
    pub release: String,
    /// `/proc/sys/kernel/random/boot_id`; unknown for the new kernel until it boots.
    pub boot_id: String,
}

/// The kernel we switch to: its boot id is only known once it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetKernel {
    /// Release string read from the new kernel image.
    pub release: String,
    /// Filled by the resume agent, if at all.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// Clock readings taken at freeze, so the resume agent can account for the time the tasks slept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReadings {
    /// `CLOCK_REALTIME` in ns since the epoch.
    pub realtime_ns: u64,
    /// `CLOCK_MONOTONIC` in ns.
    pub monotonic_ns: u64,
    /// `CLOCK_BOOTTIME` in ns.
    pub boottime_ns: u64,
}

/// One process tree carried across the switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreservedTree {
    /// Operator-facing name (`redis.service`, `pid:4242`); unique in a manifest.
    pub name: String,
    /// PID of the tree's root task (it must be free in the new kernel).
    pub root_pid: i32,
    /// Every PID of the tree at dump time.
    pub pids: Vec<i32>,
    /// The ids of the tree's other threads at dump time: free in the new kernel too, for the
    /// restore gives each its id back (format 3.2; empty when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<i32>,
    /// Subdirectory of the map holding this tree's CRIU images.
    pub images: String,
    /// Command line of the root task, for reports.
    pub cmdline: String,
    /// CLOCK_REALTIME (ns) when CRIU recorded this tree's CLOCK_MONOTONIC/BOOTTIME (at the end
    /// of its dump): the new kernel advances those clocks by the time elapsed since (format
    /// 1.1; 0 when absent).
    #[serde(default)]
    pub clocks_realtime_ns: u64,
    /// The systemd service this tree belongs to (`unit:NAME.service` targets), so that the new
    /// boot's systemd adopts it as that unit instead of starting a fresh one (format 2; absent
    /// for `pid:` targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<PreservedUnit>,
    /// The tree's stream connections to journald (its standard output and error, as systemd
    /// connects a unit's): CRIU checkpoints only the tree's end; the restore connects a new
    /// stream with the same settings in its place (format 3.2; empty when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal_streams: Vec<JournalStream>,
}

/// A stream connection from a preserved tree to journald's `stdout` socket, with the settings
/// its opening lines gave journald (journald keeps them in `/run/systemd/journal/streams/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStream {
    /// Inode of the tree's end on the old kernel: CRIU's name for the socket.
    pub inode: u64,
    /// `SYSLOG_IDENTIFIER=` of the stream's lines (empty: journald derives it).
    #[serde(default)]
    pub identifier: String,
    /// The unit the stream was opened for (`redis-server.service`; empty when none).
    #[serde(default)]
    pub unit: String,
    /// Default syslog priority of its lines.
    pub priority: i32,
    /// Lines may start with a `<N>` priority prefix.
    pub level_prefix: bool,
    /// journald also forwards the lines to syslog.
    #[serde(default)]
    pub forward_to_syslog: bool,
    /// journald also forwards the lines to the kernel log.
    #[serde(default)]
    pub forward_to_kmsg: bool,
    /// journald also forwards the lines to the console.
    #[serde(default)]
    pub forward_to_console: bool,
}

impl PreservedTree {
    /// Every id the restore gives back: the processes' pids, then the other threads' ids.
    pub fn ids(&self) -> impl Iterator<Item = i32> + '_ {
        self.pids.iter().chain(&self.threads).copied()
    }
}

/// The systemd service a preserved tree belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreservedUnit {
    /// Canonical unit name (`redis-server.service`).
    pub name: String,
    /// The unit's main PID at the freeze: systemd's `MainPID` again after the adoption.
    pub main_pid: i32,
}

/// A file (typically on a tmpfs) whose contents the new kernel would not otherwise have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFile {
    /// Absolute path in the system, where it is put back.
    pub path: PathBuf,
    /// Relative path of its copy in the map.
    pub stored_as: String,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// How to go back to the old kernel if resuming fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecipe {
    /// The old kernel image.
    pub kernel: PathBuf,
    /// Its initrd, if it booted with one.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Its command line.
    pub cmdline: String,
}

/// How the image files of a map are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    /// SHA-256 (format 1).
    #[serde(rename = "sha256")]
    #[default]
    Sha256,
    /// XXH3, 128 bits (format 2): against damage, not tampering; see `digest`.
    #[serde(rename = "xxh3-128")]
    Xxh3_128,
    /// XXH64 (format 3): against damage, not tampering; see `digest`.
    #[serde(rename = "xxh64")]
    Xxh64,
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Xxh3_128 => "xxh3-128",
            DigestAlgorithm::Xxh64 => "xxh64",
        })
    }
}

/// The algorithm this build writes.
pub const CURRENT_DIGEST: DigestAlgorithm = DigestAlgorithm::Xxh64;

/// Size and checksum of one file in the map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Length in bytes.
    pub size: u64,
    /// Digest of the content with the manifest's `file_digest` algorithm, lower-case hex
    /// (format 1 called it `sha256`).
    #[serde(alias = "sha256")]
    pub digest: String,
    /// Format 3.1, files of 1 MiB and more: the XXH64 of each [`crate::CHUNK_BYTES`] piece,
    /// in order (see [`crate::chunk_digest`]). Absent in older maps and for small files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
}

/// The manifest of a Save State Map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format of this manifest; [`crate::MapWriter::finish`] sets it to [`CURRENT_FORMAT`].
    pub format: FormatVersion,
    /// When the map was written, ms since the epoch.
    pub created_unix_ms: u64,
    /// The kernel that wrote the map.
    pub from: KernelInfo,
    /// The kernel the map is for.
    pub to: TargetKernel,
    /// Clocks at freeze.
    pub clocks: ClockReadings,
    /// Preserved process trees.
    pub trees: Vec<PreservedTree>,
    /// Files carried into the new kernel's file systems.
    pub carried_files: Vec<CarriedFile>,
    /// Network configuration to re-apply, with the lock tables (see [`crate::network`]).
    #[serde(default)]
    pub network: Option<crate::network::NetworkState>,
    /// How to go back.
    pub rollback: RollbackRecipe,
    /// Every file of the map by relative path; filled by [`crate::MapWriter::finish`].
    pub files: BTreeMap<String, FileEntry>,
    /// How `files` are checked; set by [`crate::MapWriter::finish`] (absent in format 1:
    /// SHA-256).
    #[serde(default)]
    pub file_digest: DigestAlgorithm,
    /// Phase durations measured in the old kernel, in ms (`freeze`, `dump`, ...).
    #[serde(default)]
    pub phases: BTreeMap<String, u64>,
    /// CRIU's log level (0–4) for the restores of this map, as the dumps had it; absent in
    /// maps written before the option existed (then 4, debug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu_log_level: Option<u8>,
    /// Restore the trees' memory lazily in the new kernel (`overboot update --lazy-restore`);
    /// absent means no.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy_restore: bool,
    /// What the old kernel's checks could not vouch for (e.g. a kernel newer than any the
    /// checkpoint engine was checked against), for the report; absent means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Just enough of a manifest to decide whether the rest can be read.
#[derive(Deserialize)]
struct FormatProbe {
    format: FormatVersion,
}

impl Manifest {
    /// Parses a manifest, refusing an unknown major version before looking at any other field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let probe: FormatProbe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if !probe.format.is_supported() {
            return Err(ManifestError::UnsupportedMajor {
                found: probe.format,
                supported_major: CURRENT_FORMAT.major,
            });
        }
        if probe.format.minor > CURRENT_FORMAT.minor {
            tracing::debug!(format = %probe.format, "manifest from a newer minor version");
        }
        serde_json::from_slice(bytes).map_err(ManifestError::Json)
    }

    /// Serializes the manifest (pretty, so it reads well in an emergency shell).
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        serde_json::to_vec_pretty(self).map_err(ManifestError::Serialize)
    }

    /// The preserved tree called `name`.
    pub fn tree(&self, name: &str) -> Option<&PreservedTree> {
        self.trees.iter().find(|t| t.name == name)
    }

    /// Checks the manifest on its own: paths stay inside the map, trees are well formed.
    /// Cross-checks against the files of a map are done by the map.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if let Some(network) = &self.network {
            if network.version > crate::network::NETWORK_VERSION {
                return Err(ManifestError::NetworkVersion {
                    found: network.version,
                    supported: crate::network::NETWORK_VERSION,
                });
            }
        }
        for (i, tree) in self.trees.iter().enumerate() {
            let invalid = |reason| ManifestError::InvalidTree {
                name: tree.name.clone(),
                reason,
            };
            if tree.name.is_empty() {
                return Err(invalid("empty name"));
            }
            if self.trees[..i].iter().any(|t| t.name == tree.name) {
                return Err(invalid("name used twice"));
            }
            if tree.root_pid <= 0 || tree.pids.iter().any(|&p| p <= 0) {
                return Err(invalid("PIDs must be positive"));
            }
            check_map_path(&tree.images)?;
        }
        for carried in &self.carried_files {
            if !carried.path.is_absolute() {
                return Err(ManifestError::RelativeCarriedPath {
                    path: carried.path.clone(),
                });
            }
            check_map_path(&carried.stored_as)?;
        }
        for rel in self.files.keys() {
            check_map_path(rel)?;
        }
        Ok(())
    }
}

/// Checks that `rel` is a normalized relative path that stays inside a map and does not collide
/// with the map's own files: `a/b/c`, no `.`/`..`/empty components, no leading or trailing `/`.
pub fn check_map_path(rel: &str) -> Result<(), ManifestError> {
    let invalid = |reason| {
        Err(ManifestError::InvalidPath {
            path: rel.to_owned(),
            reason,
        })
    };
    if rel.is_empty() {
        return invalid("empty");
    }
    if rel.len() > MAX_MAP_PATH {
        return invalid("too long");
    }
    if rel.starts_with('/') {
        return invalid("absolute");
    }
    if rel.contains('\0') {
        return invalid("contains NUL");
    }
    for component in rel.split('/') {
        match component {
            "" => return invalid("empty component"),
            "." | ".." => return invalid("dot component"),
            _ => {}
        }
    }
    let first = rel.split('/').next().unwrap_or(rel);
    if RESERVED_NAMES.contains(&first) {
        return invalid("reserved name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: CURRENT_FORMAT,
            created_unix_ms: 1_790_000_000_000,
            from: KernelInfo {
                release: "6.1.0-47-cloud-amd64".into(),
                boot_id: "0b5f3c5e-1111-2222-3333-444455556666".into(),
            },
            to: TargetKernel {
                release: "6.1.0-56-cloud-amd64".into(),
                boot_id: None,
            },
            clocks: ClockReadings {
                realtime_ns: 1,
                monotonic_ns: 2,
                boottime_ns: 3,
            },
            trees: vec![PreservedTree {
                name: "redis.service".into(),
                root_pid: 4242,
                pids: vec![4242, 4243],
                threads: Vec::new(),
                images: "trees/redis".into(),
                cmdline: "redis-server *:6379".into(),
                clocks_realtime_ns: 0,
                unit: Some(PreservedUnit {
                    name: "redis-server.service".into(),
                    main_pid: 4242,
                }),
                journal_streams: vec![JournalStream {
                    inode: 31337,
                    identifier: "redis-server".into(),
                    unit: "redis-server.service".into(),
                    priority: 6,
                    level_prefix: true,
                    ..JournalStream::default()
                }],
            }],
            carried_files: vec![CarriedFile {
                path: "/run/redis/redis.pid".into(),
                stored_as: "files/run/redis/redis.pid".into(),
                mode: 0o644,
                uid: 100,
                gid: 101,
            }],
            network: Some(crate::network::NetworkState {
                locked: true,
                tables: vec![crate::network::NftTable {
                    family: "inet".into(),
                    name: "CRIU-1".into(),
                    rules: "table inet CRIU-1 {}".into(),
                }],
                ..Default::default()
            }),
            rollback: RollbackRecipe {
                kernel: "/boot/vmlinuz-6.1.0-47-cloud-amd64".into(),
                initrd: Some("/boot/initrd.img-6.1.0-47-cloud-amd64".into()),
                cmdline: "root=/dev/vda1 console=ttyS0".into(),
            },
            files: BTreeMap::from([(
                "trees/redis/pages-1.img".into(),
                FileEntry {
                    size: 4096,
                    digest: "00".repeat(16),
                    chunks: vec!["11".repeat(8)],
                },
            )]),
            file_digest: DigestAlgorithm::Xxh64,
            phases: BTreeMap::from([("freeze".into(), 12), ("dump".into(), 340)]),
            criu_log_level: Some(2),
            lazy_restore: true,
            warnings: vec!["the target kernel 7.4.1 is newer than any kernel checked".into()],
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let manifest = sample();
        let json = manifest.to_json().unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
        let text = String::from_utf8(json).unwrap();
        for key in [
            "created_unix_ms",
            "root_pid",
            "stored_as",
            "boottime_ns",
            "digest",
            "xxh64",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }

    #[test]
    fn unknown_major_is_refused_before_the_rest_is_read() {
        let json = br#"{"format": {"major": 4, "minor": 0}, "whatever": "new layout"}"#;
        match Manifest::from_json(json) {
            Err(ManifestError::UnsupportedMajor { found, .. }) => assert_eq!(found.major, 4),
            other => panic!("expected UnsupportedMajor, got {other:?}"),
        }
    }

    #[test]
    fn higher_minor_with_unknown_fields_is_accepted() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["format"]["minor"] = 7.into();
        value["added_in_3_7"] = serde_json::json!({"x": 1});
        let parsed = Manifest::from_json(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(parsed.format, FormatVersion { major: 3, minor: 7 });
    }

    #[test]
    fn a_format_2_manifest_reads_with_xxh3_digests() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["format"] = serde_json::json!({"major": 2, "minor": 0});
        value["file_digest"] = "xxh3-128".into();
        let parsed = Manifest::from_json(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(parsed.file_digest, DigestAlgorithm::Xxh3_128);
    }

    #[test]
    fn a_format_1_manifest_reads_with_sha256_digests() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["format"] = serde_json::json!({"major": 1, "minor": 1});
        value.as_object_mut().unwrap().remove("file_digest");
        let files = value["files"].as_object_mut().unwrap();
        for entry in files.values_mut() {
            let digest = entry["digest"].take();
            let entry = entry.as_object_mut().unwrap();
            entry.remove("digest");
            entry.insert("sha256".into(), digest);
        }
        let parsed = Manifest::from_json(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(parsed.file_digest, DigestAlgorithm::Sha256);
        assert_eq!(
            parsed.files["trees/redis/pages-1.img"].digest,
            "00".repeat(16)
        );
    }

    #[test]
    fn a_manifest_without_a_criu_log_level_reads_as_none() {
        let mut value = serde_json::to_value(sample()).unwrap();
        assert_eq!(value["criu_log_level"], 2);
        value.as_object_mut().unwrap().remove("criu_log_level");
        let back = Manifest::from_json(value.to_string().as_bytes()).unwrap();
        assert_eq!(back.criu_log_level, None);
    }

    #[test]
    fn lazy_restore_is_written_only_when_asked_and_absent_means_no() {
        let mut manifest = sample();
        let value = serde_json::to_value(&manifest).unwrap();
        assert_eq!(value["lazy_restore"], true);
        manifest.lazy_restore = false;
        let value = serde_json::to_value(&manifest).unwrap();
        assert!(value.get("lazy_restore").is_none());
        assert!(
            !Manifest::from_json(value.to_string().as_bytes())
                .unwrap()
                .lazy_restore
        );
    }

    #[test]
    fn truncated_manifest_is_an_error() {
        let json = sample().to_json().unwrap();
        let cut = &json[..json.len() / 2];
        assert!(matches!(
            Manifest::from_json(cut),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn paths_that_escape_the_map_are_refused() {
        for bad in [
            "",
            "/etc/shadow",
            "a/../../b",
            "a//b",
            "./a",
            "a/",
            "HEADER",
            "manifest.json/x",
        ] {
            assert!(check_map_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "trees/redis/pages-1.img", "files/run/x.pid", "HEADERS"] {
            check_map_path(good).unwrap();
        }
        let mut manifest = sample();
        manifest.carried_files[0].stored_as = "../escape".into();
        assert!(manifest.validate().is_err());
        let mut manifest = sample();
        manifest.trees.push(manifest.trees[0].clone());
        assert!(matches!(
            manifest.validate(),
            Err(ManifestError::InvalidTree { .. })
        ));
    }
}
