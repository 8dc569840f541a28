//! Pre-copy: most of a tree's memory is copied while the service still runs, so that the dump
//! after the freeze writes only the pages changed since.
//!
//! ```text
//! trees/<name>/pre-1/     round 1: every page (CRIU pre-dump, soft-dirty tracking from here)
//! trees/<name>/pre-2/     round 2: the pages written during round 1   (parent: ../pre-1)
//! ...
//! trees/<name>/           the dump after the freeze: changed pages only (parent: pre-N),
//!                         and everything else (threads, files, sockets, ...)
//! ```
//!
//! Rounds go on while the dirty set shrinks (each round at most [`Policy::shrink`] × the one
//! before) and is not already small, up to [`Policy::max_rounds`]. Small is relative to the
//! memory too ([`Policy::small_fraction`]): each round adds a level to the chain of pagemaps the
//! restore reads in the blackout, and every level lists the whole memory (a 2 GiB Redis: some
//! 130,000 entries a level), while the pages a further round would spare the freeze are few.
//! And before each round after the first, the pages the tree wrote since the last one are
//! counted ([`crate::dirty`]): a round that would copy no more than the freeze writes anyway
//! is not run ([`Policy::worth_next`]).
//! Each round freezes the tree only while CRIU collects its pages, then writes them with the
//! tree running; its files are hashed into the map right away
//! ([`overboot_handover::MapWriter::seal_dir`]), so neither the copy nor the hashing of the bulk
//! of the memory falls in the blackout.
//!
//! CRIU links each image directory to its parent with a `parent` symlink. A map holds regular
//! files only, so the links are dropped after each CRIU call and put back, from the directory
//! names, in the scratch directory every restore reads ([`link_rounds`]).

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

/// When to stop iterating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Rounds at most (0: no pre-copy).
    pub max_rounds: u32,
    /// Go on only while a round wrote at most this fraction of the round before.
    pub shrink: f64,
    /// Stop once a round wrote no more than this (the freeze writes that much anyway).
    pub small_bytes: u64,
    /// Or no more than this fraction of the first round (about the memory): another level of
    /// the chain then costs the restore more than the pages it spares the freeze.
    pub small_fraction: f64,
}

impl Policy {
    /// `max_rounds` rounds at most, going on while the dirty set halves and exceeds both 4 MiB
    /// and 1 % of the first round.
    pub fn new(max_rounds: u32) -> Policy {
        Policy {
            max_rounds,
            shrink: 0.5,
            small_bytes: 4 << 20,
            small_fraction: 0.01,
        }
    }

    /// What counts as small after a first round of `first` bytes.
    fn small(&self, first: u64) -> u64 {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let relative = (first as f64 * self.small_fraction) as u64;
        self.small_bytes.max(relative)
    }

    /// Whether the next round (after a first) is worth running when the tree wrote `dirty`
    /// bytes since the last one (counted before the round, see [`crate::dirty`]): not when
    /// that is [`Policy::small_bytes`] or less — the freeze writes about that much anyway
    /// (what the service writes during the last round), so the round would spare it nothing
    /// and add a level to the chain. Not the fraction of the memory that stops rounds after
    /// the fact: at 2 GiB a second round of 11 MiB (0.4 %) still spared the freeze 8 MiB and
    /// its restore 0.3 s in the lab. With no count, it is.
    pub fn worth_next(&self, dirty: Option<u64>) -> bool {
        dirty.is_none_or(|dirty| dirty > self.small_bytes)
    }

    /// Whether another round is worth it after rounds that wrote `bytes` (in order).
    pub fn go_on(&self, bytes: &[u64]) -> bool {
        let done = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        if done >= self.max_rounds {
            return false;
        }
        match bytes {
            [] => true,
            [first, .., last] if *last <= self.small(*first) => false,
            [last] if *last <= self.small_bytes => false,
            [_] => true,
            [.., before, last] => {
                #[allow(clippy::cast_precision_loss)]
                let shrunk = (*last as f64) <= self.shrink * (*before as f64);
                shrunk
            }
        }
    }
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
    /// [`Policy::worth_next`]); absent when no next round was weighed or the count failed.
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
    fn rounds_go_on_while_the_dirty_set_halves_and_is_not_small_against_4_mib_or_the_memory() {
        let p = Policy::new(4);
        let mib = 1 << 20;
        assert!(p.go_on(&[]));
        assert!(p.go_on(&[512 * mib]));
        assert!(!p.go_on(&[3 * mib]), "a small first round is enough");
        assert!(p.go_on(&[512 * mib, 40 * mib]));
        assert!(!p.go_on(&[512 * mib, 300 * mib]), "not shrinking");
        assert!(!p.go_on(&[512 * mib, 40 * mib, 2 * mib]), "small");
        // Small against the memory: 1 % of the first round (a 2.6 GiB Redis, 12 MiB dirty).
        assert!(!p.go_on(&[2600 * mib, 12 * mib]), "under 1 % of the memory");
        assert!(p.go_on(&[2600 * mib, 40 * mib]), "over 1 %, and halved");
        assert!(
            p.go_on(&[64 * mib, 5 * mib]),
            "4 MiB is the least that is small"
        );
        assert!(
            !p.go_on(&[512 * mib, 256 * mib, 100 * mib, 40 * mib]),
            "at most 4"
        );
        assert!(!Policy::new(0).go_on(&[]));
    }

    #[test]
    fn a_round_is_not_run_when_what_it_would_copy_is_small_already() {
        let p = Policy::new(3);
        let mib = 1 << 20;
        // A 512 MiB Redis that wrote 2 MiB during its first round: the freeze writes that
        // much anyway.
        assert!(!p.worth_next(Some(2 * mib)));
        assert!(!p.worth_next(Some(4 * mib)));
        // A 2.6 GiB one that wrote 11 MiB: under 1 % of it, and still worth a round.
        assert!(p.worth_next(Some(11 * mib)));
        assert!(p.worth_next(Some(5 * mib)));
        // No count: the rounds' own sizes decide, as without it.
        assert!(p.worth_next(None));
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
