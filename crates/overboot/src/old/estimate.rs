//! Estimates made before anything is frozen: the bytes of a tree's images in the map, and the
//! memory the initrd store needs for a map of that size.

use crate::host::target::TreeInfo;

/// Per-process overhead of a CRIU image set beyond its memory pages (metadata, log), bytes.
const IMAGE_OVERHEAD_PER_PROCESS: u64 = 512 * 1024;

/// Memory the initrd store needs beyond what is in use now, for a map of `map` bytes, a base
/// initrd of `initrd` bytes and a kernel image of `kernel` bytes, with a tenth of margin. On the
/// old kernel, at the peak (inside `kexec_file_load`): the map in the work directory, the initrd
/// copy with the map appended, and the kernel's two copies of that initrd and of the kernel (the
/// file read into a buffer, then copied into the segments). The dumped trees' memory, about
/// `map`, is freed when CRIU ends them. Measured: a 659 MiB map in a 3 GiB guest ran out of
/// memory inside `kexec_file_load`, which this refuses beforehand.
pub fn initrd_handover_memory(map: u64, initrd: u64, kernel: u64) -> u64 {
    let peak = 4 * map + 3 * initrd + 2 * kernel;
    let needed = peak.saturating_sub(map);
    needed + needed / 10
}

/// Bytes of a process's memory CRIU writes: anonymous (incl. private copies of file pages)
/// and swapped pages, from `/proc/<pid>/smaps_rollup`.
fn dumped_memory(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    field("Anonymous") + field("Swap")
}

/// Estimated map bytes for a tree.
pub fn estimate_handover(tree: &TreeInfo) -> u64 {
    let pages: u64 = tree.processes.iter().map(|p| dumped_memory(p.pid)).sum();
    let files: u64 = tree
        .tmpfs_files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let processes = u64::try_from(tree.processes.len()).unwrap_or(0);
    pages + files + processes * IMAGE_OVERHEAD_PER_PROCESS
}
