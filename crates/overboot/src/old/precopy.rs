//! Pre-copy: most of a tree's memory is copied while the service still runs, so that the dump
//! after the freeze writes only the pages changed since (the rounds' layout in the map:
//! [`crate::model::rounds`]).
//!
//! Rounds go on while the dirty set shrinks (each round at most [`Policy::shrink`] × the one
//! before) and is not already small, up to [`Policy::max_rounds`]. Small is relative to the
//! memory too ([`Policy::small_fraction`]): each round adds a level to the chain of pagemaps the
//! restore reads in the blackout, and every level lists the whole memory (a 2 GiB Redis: some
//! 130,000 entries a level), while the pages a further round would spare the freeze are few.
//! And before each round after the first, the pages the tree wrote since the last one are
//! counted ([`crate::host::dirty`]): a round that would copy no more than the freeze writes
//! anyway is not run ([`Policy::worth_next`]).
//! Each round freezes the tree only while CRIU collects its pages, then writes them with the
//! tree running; its files are hashed into the map right away
//! ([`overboot_handover::MapWriter::seal_dir`]), so neither the copy nor the hashing of the bulk
//! of the memory falls in the blackout.

use overboot_handover::MapWriter;

use super::effects::Effects;
use super::options::UpdateOptions;
use crate::host::store::Handover;
use crate::host::target::TreeInfo;
use crate::model::phases::{Phase, Phases};
use crate::model::rounds::{drop_parent_link, round_dir, round_parent, Round};

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
    /// bytes since the last one (counted before the round, see [`crate::host::dirty`]): not when
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

/// The pre-copy of an update: rounds for every tree before the freeze, into a directory store
/// when the engine tracks memory changes. Not into the initrd store: its RAM was checked for
/// one dump's worth of map (and its copies are made after the freeze anyway), and pre-copy
/// rounds plus a final dump of a service that rewrites its memory could need up to twice that.
pub fn run(
    effects: &mut dyn Effects,
    options: &UpdateOptions,
    writer: &mut MapWriter,
    trees: &[TreeInfo],
    phases: &mut Phases,
    progress: &mut dyn FnMut(&str),
) -> PreCopy {
    if options.pre_copy_rounds == 0 || options.handover == Handover::Initrd {
        return PreCopy::default();
    }
    if !effects.memory_tracking() {
        tracing::info!("CRIU cannot track memory changes on this kernel: no pre-copy");
        return PreCopy::default();
    }
    phases.run(Phase::PreCopy, || {
        rounds(
            effects,
            writer,
            trees,
            Policy::new(options.pre_copy_rounds),
            progress,
        )
    })
}

/// What pre-copy left for the dump after the freeze.
#[derive(Debug, Default)]
pub struct PreCopy {
    /// Every round, in order.
    pub rounds: Vec<Round>,
}

impl PreCopy {
    /// The last round's directory of tree `name`, relative to its images directory: the
    /// parent of its dump after the freeze.
    pub fn parent_of(&self, name: &str) -> Option<String> {
        self.rounds
            .iter()
            .rev()
            .find(|r| r.tree == name)
            .map(|r| round_dir(r.round))
    }
}

/// Pre-copy rounds for every tree, each into `trees/<name>/pre-<k>` of the map and sealed
/// (hashed) right away. A round that fails ends that tree's pre-copy (its half-written
/// directory is removed; the rounds before it still serve). Never fails the update: without
/// pre-copy the dump writes everything, as it always did.
fn rounds(
    effects: &mut dyn Effects,
    writer: &mut MapWriter,
    trees: &[TreeInfo],
    policy: Policy,
    progress: &mut dyn FnMut(&str),
) -> PreCopy {
    let mut out = PreCopy::default();
    for tree in trees {
        let mut bytes: Vec<u64> = Vec::new();
        let mut k = 0;
        while policy.go_on(&bytes) {
            // A signal asked the update to stop: no further round (the update stops next).
            if k > 0 && effects.interrupted(Phase::PreCopy).is_some() {
                break;
            }
            if let Some(last) = out.rounds.last_mut().filter(|_| k > 0) {
                let start = std::time::Instant::now();
                let dirty = effects.dirty_bytes(tree);
                let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                last.dirty_after = dirty;
                tracing::info!(tree = %tree.name, after_round = k, dirty, ms, "written since the last pre-copy round");
                if !policy.worth_next(dirty) {
                    tracing::info!(tree = %tree.name, rounds = k, "pre-copy stops: the next round would copy little");
                    break;
                }
            }
            k += 1;
            progress(&format!(
                "pre-copy round {k} of {} ({} MiB resident), service running",
                tree.target,
                tree.rss_bytes() >> 20
            ));
            let rel = format!("trees/{}/{}", tree.name, round_dir(k));
            let start = std::time::Instant::now();
            let parent = round_parent(k);
            let round = writer
                .create_dir(&rel)
                .map_err(|e| e.to_string())
                .and_then(|dir| {
                    effects
                        .pre_dump(tree, &dir, parent.as_deref())
                        .map_err(|e| overboot_checkpoint::error_chain(&e))?;
                    drop_parent_link(&dir).map_err(|e| e.to_string())
                })
                .and_then(|()| writer.seal_dir(&rel).map_err(|e| e.to_string()));
            match round {
                Ok(written) => {
                    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(tree = %tree.name, round = k, bytes = written, ms, "pre-copy round");
                    bytes.push(written);
                    out.rounds.push(Round {
                        tree: tree.name.clone(),
                        round: k,
                        bytes: written,
                        ms,
                        dirty_after: None,
                    });
                }
                Err(error) => {
                    tracing::warn!(tree = %tree.name, round = k, %error, "pre-copy round failed: the dump after the freeze writes what it lacks");
                    if let Err(e) = writer.discard_dir(&rel) {
                        tracing::warn!(error = %e, "cannot remove the failed round");
                    }
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
