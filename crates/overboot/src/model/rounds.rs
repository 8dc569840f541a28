//! The layout of pre-copy rounds in a tree's images: how the old kernel names them, how the
//! restore (on either kernel) chains them back, and the record of each round in the report.
//!
//! ```text
//! trees/<name>/pre-1/     round 1: every page (CRIU pre-dump, soft-dirty tracking from here)
//! trees/<name>/pre-2/     round 2: the pages written during round 1   (parent: ../pre-1)
//! ...
//! trees/<name>/           the dump after the freeze: changed pages only (parent: pre-N),
//!                         and everything else (threads, files, sockets, ...)
//! ```
//!
//! CRIU links each image directory to its parent with a `parent` symlink. A map holds regular
//! files only, so the links are dropped after each CRIU call and put back, from the directory
//! names, in the scratch directory every restore reads ([`link_rounds`]). When rounds are run
//! is `old::precopy`'s business.

use std::path::Path;

/// Prefix of a pre-copy round's directory inside a tree's images directory.
pub const ROUND_PREFIX: &str = "pre-";

/// The name CRIU gives the link to the parent images directory.
pub const PARENT_LINK: &str = "parent";

/// The directory name of round `k` (from 1).
pub fn round_dir(k: u32) -> String {
    format!("{ROUND_PREFIX}{k}")
}

/// The round number of a directory named by [`round_dir`].
pub fn round_of(name: &str) -> Option<u32> {
    let k: u32 = name.strip_prefix(ROUND_PREFIX)?.parse().ok()?;
    (k > 0 && round_dir(k) == name).then_some(k)
}

/// The parent (relative to round `k`'s directory) CRIU is given for round `k`.
pub fn round_parent(k: u32) -> Option<String> {
    (k > 1).then(|| format!("../{}", round_dir(k - 1)))
}

/// Removes CRIU's `parent` link from an images directory (nothing if there is none).
pub fn drop_parent_link(images: &Path) -> std::io::Result<()> {
    let link = images.join(PARENT_LINK);
    match link.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a symlink", link.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Links a restore directory's rounds back into a chain: `scratch/pre-k/parent → ../pre-(k-1)`
/// and `scratch/parent → pre-N`. `rounds` are the round numbers found; they must be 1..=N.
pub fn link_rounds(scratch: &Path, rounds: &[u32]) -> std::io::Result<()> {
    let mut sorted = rounds.to_vec();
    sorted.sort_unstable();
    let contiguous = sorted.iter().zip(1..).all(|(k, want)| *k == want);
    if !contiguous {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "pre-copy rounds {sorted:?} of {} are not 1..N",
                scratch.display()
            ),
        ));
    }
    for k in &sorted {
        if let Some(parent) = round_parent(*k) {
            std::os::unix::fs::symlink(parent, scratch.join(round_dir(*k)).join(PARENT_LINK))?;
        }
    }
    if let Some(last) = sorted.last() {
        std::os::unix::fs::symlink(round_dir(*last), scratch.join(PARENT_LINK))?;
    }
    Ok(())
}

/// One round of one tree, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Round {
    /// The tree's name in the map.
    pub tree: String,
    /// Round number, from 1.
    pub round: u32,
    /// Bytes the round wrote (images, nearly all memory pages).
    pub bytes: u64,
    /// How long the round took, with the hashing of its files (ms).
    pub ms: u64,
    /// Bytes the tree wrote after this round, counted when the next one was weighed (see
    /// `old::precopy::Policy::worth_next`); absent when no next round was weighed or the count failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_after: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_names_round_trip_and_strangers_are_not_rounds() {
        assert_eq!(round_dir(3), "pre-3");
        assert_eq!(round_of("pre-3"), Some(3));
        for name in ["pre-0", "pre-03", "pre-", "pre-x", "parent", "pages-1.img"] {
            assert_eq!(round_of(name), None, "{name}");
        }
        assert_eq!(round_parent(1), None);
        assert_eq!(round_parent(2).as_deref(), Some("../pre-1"));
    }

    #[test]
    fn restore_directories_get_their_chain_back() {
        let tmp = tempfile::tempdir().unwrap();
        for k in 1..=3 {
            std::fs::create_dir(tmp.path().join(round_dir(k))).unwrap();
        }
        link_rounds(tmp.path(), &[3, 1, 2]).unwrap();
        let link = |rel: &str| std::fs::read_link(tmp.path().join(rel)).unwrap();
        assert_eq!(link("parent"), Path::new("pre-3"));
        assert_eq!(link("pre-3/parent"), Path::new("../pre-2"));
        assert_eq!(link("pre-2/parent"), Path::new("../pre-1"));
        assert!(!tmp.path().join("pre-1/parent").exists());
        // Following the links from the top reaches round 1.
        assert!(tmp.path().join("parent/parent/parent").is_dir());
        let err = link_rounds(tmp.path(), &[1, 3]).unwrap_err();
        assert!(err.to_string().contains("not 1..N"), "{err}");
    }

    #[test]
    fn the_parent_link_is_dropped_and_a_real_file_there_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        drop_parent_link(tmp.path()).unwrap();
        std::os::unix::fs::symlink("pre-1", tmp.path().join(PARENT_LINK)).unwrap();
        drop_parent_link(tmp.path()).unwrap();
        assert!(tmp.path().join(PARENT_LINK).symlink_metadata().is_err());
        std::fs::write(tmp.path().join(PARENT_LINK), b"x").unwrap();
        assert!(drop_parent_link(tmp.path()).is_err());
    }
}
