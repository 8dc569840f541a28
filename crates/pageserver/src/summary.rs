//! What the page server did, for its log: the progress lines every few seconds after the
//! restore finished, and the closing line.

use std::time::Duration;

use overboot_checkpoint::pagemap::PAGE_SIZE;

/// What the server did, for its log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Tasks served (forked children included).
    pub tasks: usize,
    /// Pages the images left to the server.
    pub pages: u64,
    /// Pages put in at a fault (its window included).
    pub fault_pages: u64,
    /// Faults answered.
    pub faults: u64,
    /// Faults answered with a zero page.
    pub zero_faults: u64,
    /// The longest a fault waited, from its reading to its answer, in microseconds.
    pub slowest_fault_us: u64,
    /// Pages put in by the background copy.
    pub background_pages: u64,
    /// Pages dropped (unmapped or discarded by the task before they were put in).
    pub dropped_pages: u64,
    /// Bytes of the page files checked against their piece digests.
    pub checked_bytes: u64,
    /// Milliseconds from the restore's finish to the last page.
    pub after_restore_ms: u64,
    /// Milliseconds from the server's start to listening (reading and indexing the images).
    pub index_ms: u64,
    /// The restore reads no pre-copy round: each task's pagemap was written anew, with the
    /// pages CRIU puts back in a file of the restore's own
    /// ([`overboot_checkpoint::pagemap::prepare_lazy_flat`]).
    pub flat: bool,
}

impl Summary {
    /// The server's closing line (its log's last), `elapsed` since it started.
    pub fn line(&self, elapsed: std::time::Duration) -> String {
        format!(
            "every page is back: {} tasks, {} pages ({} in at {} faults, {} zero-page faults, the \
             slowest answered in {:.1} ms, {} in the background, {} dropped by the tasks; {} MiB \
             checked), images indexed in {} ms{}, {} ms after the restore finished, {} ms in all",
            self.tasks,
            self.pages,
            self.fault_pages,
            self.faults,
            self.zero_faults,
            self.slowest_fault_us as f64 / 1000.0,
            self.background_pages,
            self.dropped_pages,
            self.checked_bytes >> 20,
            self.index_ms,
            if self.flat {
                " (the restore read no pre-copy round)"
            } else {
                ""
            },
            self.after_restore_ms,
            elapsed.as_millis()
        )
    }
}

/// A line of the server's progress (see `Server::log_progress`): `now` is `since` the restore
/// finished, `before` the summary at the last line, `left` the pages still missing.
pub(crate) fn progress_line(since: Duration, before: &Summary, now: &Summary, left: u64) -> String {
    let mib = |pages: u64| (pages * PAGE_SIZE) >> 20;
    format!(
        "{} s after the restore: {} faults ({} pages) and {} MiB in the background since the \
         last line, {} MiB left",
        since.as_secs(),
        now.faults - before.faults,
        now.fault_pages - before.fault_pages,
        mib(now.background_pages - before.background_pages),
        mib(left)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_counts_since_the_last_one_and_what_is_left() {
        let before = Summary {
            faults: 10,
            fault_pages: 100,
            background_pages: 256,
            ..Summary::default()
        };
        let now = Summary {
            faults: 15,
            fault_pages: 180,
            background_pages: 256 + 2 * 256,
            ..before.clone()
        };
        assert_eq!(
            progress_line(Duration::from_millis(10_400), &before, &now, 1024),
            "10 s after the restore: 5 faults (80 pages) and 2 MiB in the background since the \
             last line, 4 MiB left"
        );
        let line = Summary {
            slowest_fault_us: 2_350,
            ..now
        }
        .line(Duration::from_secs(1));
        assert!(line.contains("the slowest answered in 2.4 ms"), "{line}");
    }
}
