//! `blk-bench`: virtio-blk throughput and IOPS at queue depth (benchmark scenario).

use crate::boot::BootInfo;
use crate::finish;

pub fn run(_boot: &BootInfo) -> ! {
    finish(false, format_args!(" reason=not-built-yet"))
}
