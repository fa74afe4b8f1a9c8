//! `net-bench`: virtio-net guest->host and host->guest throughput (benchmark scenario).

use crate::boot::BootInfo;
use crate::finish;

pub fn run(_boot: &BootInfo) -> ! {
    finish(false, format_args!(" reason=not-built-yet"))
}
