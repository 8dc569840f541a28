//! The page server's bookkeeping of what one task still misses: disjoint extents by address,
//! cut when pages go in or the task unmaps them, moved when it remaps them (see
//! [`super`]).

use std::collections::BTreeMap;

use overboot_checkpoint::pagemap::{Extent, PAGE_SIZE};

/// The pages of one task still to put in, by start address: disjoint extents.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Missing {
    extents: BTreeMap<u64, Extent>,
    /// The pages the extents hold, kept as they change: a task may miss many thousands of
    /// extents, and the server asks after every copy.
    pages: u64,
}

impl Missing {
    /// The extents of `lazy`.
    pub fn new(extents: impl IntoIterator<Item = Extent>) -> Missing {
        let mut missing = Missing::default();
        for e in extents {
            missing.put(e);
        }
        missing
    }

    /// Whether every page is in.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Pages still missing.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The extent holding `addr`.
    pub fn find(&self, addr: u64) -> Option<Extent> {
        let (_, e) = self.extents.range(..=addr).next_back()?;
        (addr < e.end).then_some(*e)
    }

    /// The lowest extent.
    pub fn first(&self) -> Option<Extent> {
        self.extents.values().next().copied()
    }

    /// Puts back an extent (disjoint from every other).
    pub fn put(&mut self, e: Extent) {
        if !e.is_empty() {
            self.pages += e.len() / PAGE_SIZE;
            if let Some(old) = self.extents.insert(e.start, e) {
                self.pages -= old.len() / PAGE_SIZE;
            }
        }
    }

    /// Removes `[start, end)` and returns what of it was missing, by address.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<Extent> {
        let mut keys: Vec<u64> = self.extents.range(start..end).map(|(k, _)| *k).collect();
        if let Some((k, e)) = self.extents.range(..start).next_back() {
            if e.end > start {
                keys.insert(0, *k);
            }
        }
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(e) = self.extents.remove(&key) else {
                continue;
            };
            self.pages -= e.len() / PAGE_SIZE;
            let at = |addr: u64| Extent {
                start: addr,
                end: e.end,
                file: e.file,
                offset: e.offset + (addr - e.start),
            };
            if e.start < start {
                self.put(Extent { end: start, ..e });
            }
            if e.end > end {
                self.put(at(end));
            }
            let mid = at(e.start.max(start));
            taken.push(Extent {
                end: e.end.min(end),
                ..mid
            });
        }
        taken
    }

    /// Moves what is missing in `[from, from + len)` to `to` (mremap).
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        for e in self.take(from, from.saturating_add(len)) {
            let start = to.wrapping_add(e.start - from);
            self.put(Extent {
                start,
                end: start + e.len(),
                ..e
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(start: u64, end: u64, offset: u64) -> Extent {
        Extent {
            start: start * PAGE_SIZE,
            end: end * PAGE_SIZE,
            file: 3,
            offset: offset * PAGE_SIZE,
        }
    }

    fn extents(m: &Missing) -> Vec<Extent> {
        let pages: u64 = m.extents.values().map(|e| e.len() / PAGE_SIZE).sum();
        assert_eq!(m.pages(), pages, "the count kept should match the extents");
        m.extents.values().copied().collect()
    }

    #[test]
    fn taking_a_range_splits_the_extents_it_cuts() {
        let mut m = Missing::new([x(0, 4, 100), x(6, 10, 200), x(12, 13, 300)]);
        assert_eq!(m.pages(), 9);
        assert_eq!(m.find(3 * PAGE_SIZE), Some(x(0, 4, 100)));
        assert_eq!(m.find(4 * PAGE_SIZE), None);
        assert_eq!(m.find(9 * PAGE_SIZE + 5), Some(x(6, 10, 200)));
        let taken = m.take(2 * PAGE_SIZE, 8 * PAGE_SIZE);
        assert_eq!(taken, [x(2, 4, 102), x(6, 8, 200)]);
        assert_eq!(extents(&m), [x(0, 2, 100), x(8, 10, 202), x(12, 13, 300)]);
        // Inside one extent: both ends stay.
        m.put(x(20, 30, 400));
        assert_eq!(m.take(22 * PAGE_SIZE, 25 * PAGE_SIZE), [x(22, 25, 402)]);
        assert_eq!(m.take(9 * PAGE_SIZE, 10 * PAGE_SIZE), [x(9, 10, 203)]);
        assert_eq!(
            extents(&m),
            [
                x(0, 2, 100),
                x(8, 9, 202),
                x(12, 13, 300),
                x(20, 22, 400),
                x(25, 30, 405)
            ]
        );
        // Nothing there.
        assert!(m.take(40 * PAGE_SIZE, 50 * PAGE_SIZE).is_empty());
        assert_eq!(m.pages(), 11);
    }

    #[test]
    fn remapped_pages_move_with_their_source() {
        let mut m = Missing::new([x(0, 4, 100), x(10, 12, 50)]);
        // mremap of pages 2-11 to 100-109: pages 2-3 and 10-11 move, keeping their bytes.
        m.remap(2 * PAGE_SIZE, 100 * PAGE_SIZE, 10 * PAGE_SIZE);
        assert_eq!(
            extents(&m),
            [x(0, 2, 100), x(100, 102, 102), x(108, 110, 50)]
        );
        // And back down.
        m.remap(100 * PAGE_SIZE, 20 * PAGE_SIZE, 2 * PAGE_SIZE);
        assert_eq!(extents(&m), [x(0, 2, 100), x(20, 22, 102), x(108, 110, 50)]);
    }
}
