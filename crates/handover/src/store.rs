//! Stores: where a finished Save State Map goes so the new kernel's early userspace can find it,
//! and the kernel command-line parameter that tells it where to look.
//!
//! ```text
//! overboot.handover=<scheme>:<absolute path>
//!     initrd:/overboot/ssm   the map was appended to the initrd as a newc cpio; the kernel
//!                            unpacked it into the rootfs at that path
//!     dir:/var/lib/x/ssm     the map was copied to that persistent directory
//! ```
//!
//! The initrd store's output, the initrd to kexec with:
//!
//! ```text
//! offset 0                 base initrd bytes, unchanged (compressed or not; may be absent)
//! base_len                 zero padding up to the next multiple of 4
//! align4(base_len)         newc cpio (crate::cpio):
//!                            overboot/ (0700), overboot/ssm/ (0700),
//!                            overboot/ssm/HEADER, overboot/ssm/manifest.json,
//!                            parent directories and files of manifest.files (0600), in path order
//!                          TRAILER!!!
//! ```
//!
//! The kernel unpacks every archive concatenated in the initrd, each starting on a 4-byte
//! boundary (zeros in between are skipped), so after boot the map is at the mount point.
//! Every file is hashed while it is written into a store and compared with the manifest: a map
//! damaged since it was finished is not published.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::cpio::{pad4, CpioWriter};
use crate::digest::HashingReader;
use crate::error::HandoverError;
use crate::layout::{
    create_file, make_dir_all, sync_dir, write_file_synced, DIR_MODE, FILE_MODE, HEADER_FILE,
    MANIFEST_FILE,
};
use crate::manifest::FileEntry;
use crate::map::SaveStateMap;

pub use crate::cmdline::{StoreError, StoreKind, CMDLINE_KEY};

/// Where the initrd store puts the map in the new kernel's rootfs.
pub const DEFAULT_INITRD_MOUNT_POINT: &str = "/overboot/ssm";

/// What a store did with a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The parameter to add to the new kernel's command line, e.g.
    /// `overboot.handover=initrd:/overboot/ssm`.
    pub cmdline_param: String,
    /// Bytes of the map as stored (for the initrd store: the cpio archive alone).
    pub bytes: u64,
    /// The initrd to kexec with, when the store made one.
    pub initrd: Option<PathBuf>,
}

/// A place a finished map can be handed to the next kernel through.
pub trait Store {
    /// Short name of the store, as in the command-line scheme (`initrd`, `dir`).
    fn kind(&self) -> &'static str;
    /// Puts the map where the next kernel finds it.
    fn publish(&self, map: &SaveStateMap) -> Result<Published, HandoverError>;
}

/// Appends the map to an initrd as a newc cpio: RAM only, no disk in the new kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdStore {
    /// The new kernel's own initrd, if any; copied unchanged to the front of `out`.
    pub base_initrd: Option<PathBuf>,
    /// The combined initrd to write (mode 0600: it holds process memory).
    pub out: PathBuf,
    /// Where the map appears in the new kernel's rootfs.
    pub mount_point: PathBuf,
}

impl InitrdStore {
    /// A store putting the map at [`DEFAULT_INITRD_MOUNT_POINT`].
    pub fn new(base_initrd: Option<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            base_initrd,
            out: out.into(),
            mount_point: PathBuf::from(DEFAULT_INITRD_MOUNT_POINT),
        }
    }
}

impl Store for InitrdStore {
    fn kind(&self) -> &'static str {
        "initrd"
    }

    fn publish(&self, map: &SaveStateMap) -> Result<Published, HandoverError> {
        let span =
            tracing::info_span!("handover_publish", store = "initrd", out = %self.out.display());
        let _entered = span.enter();
        let mount_point = cmdline_path(&self.mount_point)?;
        let prefix = mount_point.trim_start_matches('/');
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&self.out)
            .map_err(HandoverError::io("create", &self.out))?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(HandoverError::io("set mode of", &self.out))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut base_len = 0u64;
        if let Some(base) = &self.base_initrd {
            let mut input = File::open(base).map_err(HandoverError::io("open", base))?;
            base_len = io::copy(&mut input, &mut out).map_err(HandoverError::io("copy", base))?;
        }
        let pad = [0u8; 4];
        let pad_len = usize::try_from(pad4(base_len)).unwrap_or(0);
        out.write_all(&pad[..pad_len])
            .map_err(HandoverError::io("write", &self.out))?;

        let mut cpio = CpioWriter::new(out);
        let mut dirs = BTreeSet::new();
        append_dirs(&mut cpio, &mut dirs, prefix)?;
        for (name, bytes) in [
            (HEADER_FILE, &map.header_bytes()[..]),
            (MANIFEST_FILE, map.manifest_bytes()),
        ] {
            let len = bytes.len() as u64;
            cpio.append_file(&format!("{prefix}/{name}"), FILE_MODE, len, &mut &bytes[..])?;
        }
        for (rel, entry) in &map.manifest().files {
            if let Some((parent, _)) = rel.rsplit_once('/') {
                append_dirs(&mut cpio, &mut dirs, &format!("{prefix}/{parent}"))?;
            }
            let mut reader = open_listed(map, rel, entry)?;
            cpio.append_file(
                &format!("{prefix}/{rel}"),
                FILE_MODE,
                entry.size,
                &mut reader,
            )?;
            check_digest(rel, entry, reader, map.manifest().file_digest)?;
        }
        let (out, bytes) = cpio.finish()?;
        out.into_inner()
            .map_err(|e| HandoverError::io("write", &self.out)(e.into_error()))?;
        tracing::info!(base_len, bytes, "map appended to initrd");
        Ok(Published {
            cmdline_param: format!("{CMDLINE_KEY}=initrd:{mount_point}"),
            bytes,
            initrd: Some(self.out.clone()),
        })
    }
}

/// Copies the map to a persistent directory (disk): slowest, simplest, survives anything. A map
/// that was written into that very directory is only flushed and checked, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStore {
    /// Absolute path of the copy; must not exist yet.
    pub path: PathBuf,
}

impl DirectoryStore {
    /// The command-line parameter that points the new kernel at this store; refused when the
    /// path cannot ride on a kernel command line.
    pub fn cmdline_param(&self) -> Result<String, HandoverError> {
        Ok(format!("{CMDLINE_KEY}=dir:{}", cmdline_path(&self.path)?))
    }
}

impl Store for DirectoryStore {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn publish(&self, map: &SaveStateMap) -> Result<Published, HandoverError> {
        let span =
            tracing::info_span!("handover_publish", store = "dir", path = %self.path.display());
        let _entered = span.enter();
        let param = self.cmdline_param()?;
        if map.dir() == self.path {
            return publish_in_place(map, param);
        }
        if let Some(parent) = self.path.parent() {
            make_parents(parent)?;
        }
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&self.path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    HandoverError::Store(StoreError::DestinationExists {
                        path: self.path.clone(),
                    })
                }
                _ => HandoverError::io("create directory", &self.path)(e),
            })?;
        make_dir_all(&self.path)?;
        let mut dirs = BTreeSet::new();
        let mut bytes = 0u64;
        for (rel, entry) in &map.manifest().files {
            if let Some((parent, _)) = rel.rsplit_once('/') {
                make_dir_all(&self.path.join(parent))?;
                dirs.insert(parent.to_owned());
            }
            let dst = self.path.join(rel);
            let mut reader = open_listed(map, rel, entry)?;
            let mut output = create_file(&dst)?;
            io::copy(&mut (&mut reader).take(entry.size), &mut output)
                .and_then(|_| output.sync_all())
                .map_err(HandoverError::io("copy to", &dst))?;
            check_digest(rel, entry, reader, map.manifest().file_digest)?;
            bytes += entry.size;
        }
        write_file_synced(&self.path.join(MANIFEST_FILE), map.manifest_bytes())?;
        write_file_synced(&self.path.join(HEADER_FILE), map.header_bytes())?;
        tracing::info!(bytes, "map copied to directory");
        finish_directory(map, &self.path, &dirs, bytes, param)
    }
}

/// A map written straight into the store's directory: nothing to copy. Every file, the
/// directories and the parent are flushed to the device (a kexec does not write the page cache
/// back). Files are checked for presence and size only: they were hashed moments ago by
/// [`crate::MapWriter::finish`], and the new kernel verifies every digest before restoring, so a
/// third pass over the whole map here would only lengthen the blackout.
fn publish_in_place(map: &SaveStateMap, param: String) -> Result<Published, HandoverError> {
    let mut dirs = BTreeSet::new();
    let mut bytes = 0u64;
    for (rel, entry) in &map.manifest().files {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            dirs.insert(parent.to_owned());
        }
        let file = map.path_of(rel);
        let handle = File::open(&file).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HandoverError::ImageMissing {
                path: rel.to_owned(),
            },
            _ => HandoverError::io("open", &file)(e),
        })?;
        let size = handle
            .metadata()
            .map_err(HandoverError::io("stat", &file))?
            .len();
        if size != entry.size {
            return Err(HandoverError::ImageSize {
                path: rel.to_owned(),
                expected: entry.size,
                actual: size,
            });
        }
        handle
            .sync_all()
            .map_err(HandoverError::io("flush", &file))?;
        bytes += entry.size;
    }
    for name in [MANIFEST_FILE, HEADER_FILE] {
        let file = map.dir().join(name);
        File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(HandoverError::io("flush", &file))?;
    }
    tracing::info!(bytes, "map flushed in place");
    finish_directory(map, map.dir(), &dirs, bytes, param)
}

/// Flushes a directory store's directories (deepest first), the store and its parent, and
/// says what was published: `bytes` of images plus the manifest and header.
fn finish_directory(
    map: &SaveStateMap,
    store: &Path,
    dirs: &BTreeSet<String>,
    bytes: u64,
    cmdline_param: String,
) -> Result<Published, HandoverError> {
    for dir in dirs.iter().rev() {
        sync_dir(&store.join(dir))?;
    }
    sync_dir(store)?;
    if let Some(parent) = store.parent() {
        sync_dir(parent)?;
    }
    Ok(Published {
        cmdline_param,
        bytes: bytes + (map.manifest_bytes().len() + map.header_bytes().len()) as u64,
        initrd: None,
    })
}

/// Finds the map's location in a kernel command line (`/proc/cmdline`): the value of the last
/// `overboot.handover=<scheme>:<path>`, or `None` when there is no such parameter.
pub fn locate_from_cmdline(cmdline: &str) -> Result<Option<PathBuf>, HandoverError> {
    Ok(locate_store_from_cmdline(cmdline)?.map(|(_, path)| path))
}

/// As [`locate_from_cmdline`], with the store the map came through.
pub fn locate_store_from_cmdline(
    cmdline: &str,
) -> Result<Option<(StoreKind, PathBuf)>, HandoverError> {
    let Some(value) = cmdline
        .split_whitespace()
        .map(|token| token.trim_matches('"'))
        .filter_map(|token| token.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))
        .next_back()
    else {
        return Ok(None);
    };
    let malformed = |reason| {
        HandoverError::Store(StoreError::MalformedParam {
            value: value.to_owned(),
            reason,
        })
    };
    let (scheme, path) = value
        .split_once(':')
        .ok_or_else(|| malformed("expected <scheme>:<path>"))?;
    let kind = match scheme {
        "initrd" => StoreKind::Initrd,
        "dir" => StoreKind::Dir,
        _ => {
            return Err(StoreError::UnknownScheme {
                scheme: scheme.to_owned(),
            }
            .into())
        }
    };
    let path = Path::new(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(malformed("the path must be absolute, without .."));
    }
    Ok(Some((kind, path.to_path_buf())))
}

/// Checks that `path` can be written as a command-line value and returns it as a string.
fn cmdline_path(path: &Path) -> Result<&str, HandoverError> {
    let unsafe_path = |reason| {
        HandoverError::Store(StoreError::NotCmdlineSafe {
            path: path.to_path_buf(),
            reason,
        })
    };
    let text = path.to_str().ok_or_else(|| unsafe_path("not UTF-8"))?;
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(unsafe_path("must be absolute, without .."));
    }
    if text.len() <= 1 || text.ends_with('/') {
        return Err(unsafe_path(
            "must name a directory below /, without a trailing /",
        ));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c.is_control())
    {
        return Err(unsafe_path(
            "contains whitespace, quotes or control characters",
        ));
    }
    Ok(text)
}

/// Emits `dir` and each of its ancestors not emitted yet, parents first.
fn append_dirs<W: Write>(
    cpio: &mut CpioWriter<W>,
    done: &mut BTreeSet<String>,
    dir: &str,
) -> Result<(), HandoverError> {
    let mut end = 0;
    while end < dir.len() {
        end = dir[end + 1..].find('/').map_or(dir.len(), |i| end + 1 + i);
        let ancestor = &dir[..end];
        if done.insert(ancestor.to_owned()) {
            cpio.append_dir(ancestor, DIR_MODE)?;
        }
    }
    Ok(())
}

/// Creates missing parents of a store destination (0700).
fn make_parents(parent: &Path) -> Result<(), HandoverError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(parent)
        .map_err(HandoverError::io("create directory", parent))
}

/// Opens a listed file for copying, checking its size first.
fn open_listed(
    map: &SaveStateMap,
    rel: &str,
    entry: &FileEntry,
) -> Result<HashingReader<File>, HandoverError> {
    let path = map.path_of(rel);
    let file = File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => HandoverError::ImageMissing {
            path: rel.to_owned(),
        },
        _ => HandoverError::io("open", &path)(e),
    })?;
    let meta = file.metadata().map_err(HandoverError::io("stat", &path))?;
    if !meta.is_file() || meta.len() != entry.size {
        return Err(HandoverError::ImageSize {
            path: rel.to_owned(),
            expected: entry.size,
            actual: meta.len(),
        });
    }
    Ok(HashingReader::new(file, map.manifest().file_digest))
}

/// Compares what went through `reader` with the manifest entry.
fn check_digest(
    rel: &str,
    entry: &FileEntry,
    reader: HashingReader<File>,
    algorithm: crate::manifest::DigestAlgorithm,
) -> Result<(), HandoverError> {
    let digest = reader.finish();
    if digest.hex != entry.digest || digest.size != entry.size {
        return Err(HandoverError::ImageCorrupt {
            path: rel.to_owned(),
            algorithm,
            expected: entry.digest.clone(),
            actual: digest.hex,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_the_map_from_the_command_line() {
        let cmdline =
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 overboot.handover=initrd:/overboot/ssm quiet";
        assert_eq!(
            locate_from_cmdline(cmdline).unwrap(),
            Some(PathBuf::from("/overboot/ssm"))
        );
        assert_eq!(
            locate_from_cmdline("a \"overboot.handover=dir:/var/lib/o/ssm\"\n").unwrap(),
            Some(PathBuf::from("/var/lib/o/ssm"))
        );
        assert_eq!(
            locate_from_cmdline("root=/dev/vda1 overboot.handoverx=1").unwrap(),
            None
        );
        // The last parameter counts, with the store it names.
        assert_eq!(
            locate_store_from_cmdline(
                "overboot.handover=dir:/var/lib/o/ssm/1 overboot.handover=initrd:/overboot/ssm"
            )
            .unwrap(),
            Some((StoreKind::Initrd, PathBuf::from("/overboot/ssm")))
        );
        assert_eq!(
            locate_store_from_cmdline("overboot.handover=dir:/pmem/ssm/2 overboot.rollback")
                .unwrap(),
            Some((StoreKind::Dir, PathBuf::from("/pmem/ssm/2")))
        );
        assert!(matches!(
            locate_from_cmdline("overboot.handover=ram:/x"),
            Err(HandoverError::Store(StoreError::UnknownScheme { scheme })) if scheme == "ram"
        ));
        for bad in [
            "overboot.handover=/x",
            "overboot.handover=dir:x",
            "overboot.handover=dir:/a/../b",
        ] {
            assert!(matches!(
                locate_from_cmdline(bad),
                Err(HandoverError::Store(StoreError::MalformedParam { .. }))
            ));
        }
    }

    #[test]
    fn refuses_paths_the_command_line_cannot_carry() {
        for bad in ["relative", "/with space", "/", "/a/", "/a/../b"] {
            assert!(cmdline_path(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            cmdline_path(Path::new("/overboot/ssm")).unwrap(),
            "/overboot/ssm"
        );
    }

    #[test]
    fn emits_each_ancestor_once_parents_first() {
        let mut cpio = CpioWriter::new(Vec::new());
        let mut done = BTreeSet::new();
        append_dirs(&mut cpio, &mut done, "overboot/ssm").unwrap();
        append_dirs(&mut cpio, &mut done, "overboot/ssm/trees/a").unwrap();
        let (bytes, _) = cpio.finish().unwrap();
        let archive = crate::cpio::read_archive(&bytes).unwrap();
        let names: Vec<_> = archive.entries.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "overboot",
                "overboot/ssm",
                "overboot/ssm/trees",
                "overboot/ssm/trees/a"
            ]
        );
    }
}
