//! How big the guests and disks of the benchmark are for a dataset: RAM for every copy of the
//! data that exists at once during an update, the reserved RAM of the `overboot` method's
//! store, and the data disk the guests of one size share.

/// Guest RAM for a dataset: Redis itself, the map in RAM, the initrd copy with the map and
/// the kexec segments all exist at once on the old kernel (about 4 × the data), plus the base.
pub fn guest_memory_mib(dataset_mib: u32) -> u32 {
    1024 + 4 * dataset_mib
}

/// Reserved RAM for the `overboot` method's store: the map (about Redis's resident memory, up to
/// 1.4 × the data) plus file system overhead, in 128 MiB steps.
pub fn pmem_mib(dataset_mib: u32) -> u32 {
    (dataset_mib * 3 / 2 + 128).div_ceil(128) * 128
}

/// Data disk for a dataset: kernels and initrds, plus an RDB file or a map on disk (the map is
/// about 1.4 × the data, its pre-copy rounds a little more; `update` wants 1.1 × its estimate
/// free). The guests of one size share the disk: `restart` removes its RDB file when done.
pub(super) fn disk_mib(dataset_mib: u32) -> u64 {
    512 + 3 * u64::from(dataset_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_get_room_for_four_copies_of_the_data() {
        assert_eq!(guest_memory_mib(64), 1280);
        assert_eq!(guest_memory_mib(2048), 9216);
        assert_eq!(pmem_mib(64), 256);
        assert_eq!(pmem_mib(512), 896);
        assert_eq!(pmem_mib(2048), 3200);
    }
}
