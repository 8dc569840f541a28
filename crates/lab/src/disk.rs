//! The guest's data disk: an ext4 image built from a host directory with `mkfs.ext4 -d` (no
//! mount, no root needed on the host). Both kernels of a scenario mount it at `/lab`: it holds
//! the kernels and initrds to switch to, and files that preserved processes keep open.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::host::{self, HostError};

/// Errors while building a data disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// mkfs.ext4 failed.
    #[error("cannot build the data disk {path}")]
    Mkfs {
        path: String,
        #[source]
        source: HostError,
    },
    /// The old image could not be removed.
    #[error("cannot replace {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Builds a sparse ext4 image of `size_mib` at `image`, populated from `contents`.
pub fn build(image: &Path, contents: &Path, size_mib: u64) -> Result<(), DiskError> {
    build_labelled(image, contents, size_mib, "overboot-lab")
}

/// Like [`build`], with the file system label `label`.
pub fn build_labelled(
    image: &Path,
    contents: &Path,
    size_mib: u64,
    label: &str,
) -> Result<(), DiskError> {
    if image.exists() {
        fs::remove_file(image).map_err(|source| DiskError::Io {
            path: image.display().to_string(),
            source,
        })?;
    }
    host::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d"])
            .arg(contents)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )
    .map_err(|source| DiskError::Mkfs {
        path: image.display().to_string(),
        source,
    })?;
    Ok(())
}

/// Replays the ext4 journal of an image whose guest was killed without unmounting it (as every
/// lab guest is): until then the newest metadata lives only in the journal, which debugfs
/// does not read.
pub fn replay_journal(image: &Path) -> Result<(), DiskError> {
    let status = output(
        Command::new("e2fsck")
            .args(["-p", "-E", "journal_only"])
            .arg(image),
        image,
    )?;
    // 0: clean, 1: errors corrected (the journal was replayed).
    match status.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(DiskError::Io {
            path: image.display().to_string(),
            source: std::io::Error::other(format!(
                "e2fsck journal replay failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            )),
        }),
    }
}

/// Reads a file from an ext4 image without mounting it (`debugfs -R cat`), e.g. a workload's
/// log after the guest is gone. The guest must be dead; its journal is replayed first.
pub fn read_file(image: &Path, path: &str) -> Result<Vec<u8>, DiskError> {
    replay_journal(image)?;
    read_replayed(image, path)
}

/// Reads a file from an ext4 image whose journal [`replay_journal`] already replayed (to read
/// many files with one replay).
pub fn read_replayed(image: &Path, path: &str) -> Result<Vec<u8>, DiskError> {
    let out = output(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(image),
        image,
    )?;
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("File not found") {
        return Err(DiskError::Io {
            path: format!("{}:{path}", image.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ),
        });
    }
    Ok(out.stdout)
}

/// Runs `cmd`, a tool that reads `image`, to its end: its output, whatever its status.
fn output(cmd: &mut Command, image: &Path) -> Result<Output, DiskError> {
    cmd.output().map_err(|source| DiskError::Io {
        path: image.display().to_string(),
        source,
    })
}
