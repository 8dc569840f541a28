//! A tree's images as a restore reads them, on either kernel: the map's files linked into a
//! scratch directory CRIU may write to, pre-copy rounds chained back (see [`super::rounds`]),
//! and which of the map's files are raw memory pages.

use std::path::{Path, PathBuf};

use super::rounds::{link_rounds, round_dir, round_of, PARENT_LINK};

/// A directory CRIU restores from: symlinks to the map's images, except the clock record and
/// the TCP stream records, which are copied so they can be edited (clocks advanced, windows of
/// unscaled connections pinned). The map itself stays byte-identical (rollback
/// verifies it again) and CRIU's restore log lands here, not in the map. Pre-copy rounds
/// (`pre-1`, `pre-2`, ... beside the images: [`super::rounds`]) become directories of links
/// too, chained by the `parent` links CRIU follows.
pub fn restore_dir(images: &Path, scratch: &Path) -> std::io::Result<PathBuf> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch)?;
    }
    std::fs::create_dir_all(scratch)?;
    let rounds = link_images(images, scratch)?;
    for k in &rounds {
        let name = round_dir(*k);
        std::fs::create_dir(scratch.join(&name))?;
        link_images(&images.join(&name), &scratch.join(&name))?;
    }
    link_rounds(scratch, &rounds)?;
    Ok(scratch.to_path_buf())
}

/// Links (or copies, for the records a restore edits) the files of `images` into `scratch`;
/// returns the pre-copy rounds found there, which it leaves to the caller.
fn link_images(images: &Path, scratch: &Path) -> std::io::Result<Vec<u32>> {
    let mut rounds = Vec::new();
    for entry in std::fs::read_dir(images)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = scratch.join(&name);
        let round = name.to_str().and_then(round_of);
        if let Some(k) = round.filter(|_| entry.path().is_dir()) {
            rounds.push(k);
        } else if name == PARENT_LINK {
            // Not in a map (dropped after the dump); the chain is rebuilt from the rounds.
        } else if name == "timens-0.img" || name.to_string_lossy().starts_with("tcp-stream-") {
            std::fs::copy(entry.path(), &target)?;
        } else {
            std::os::unix::fs::symlink(entry.path(), &target)?;
        }
    }
    Ok(rounds)
}

/// Whether a map file holds raw memory pages (CRIU's `pages-<n>.img`, in a tree's images or a
/// pre-copy round): bytes copied into the restored processes, never interpreted, so their
/// check can run beside the restore.
pub fn is_memory_pages(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.strip_prefix("pages-")
        .and_then(|rest| rest.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_criu_page_files_are_memory_pages() {
        for rel in [
            "trees/pid-1/pages-1.img",
            "trees/pid-1/pre-2/pages-13.img",
            "pages-7.img",
        ] {
            assert!(is_memory_pages(rel), "{rel}");
        }
        for rel in [
            "trees/pid-1/pagemap-1.img",
            "trees/pid-1/pages-.img",
            "trees/pid-1/pages-1.img.bak",
            "trees/pages-1.img/core-1.img",
            "trees/pid-1/pages-x.img",
            "files/0",
        ] {
            assert!(!is_memory_pages(rel), "{rel}");
        }
    }
}
