//! Scenario dispatch: `tern.test=<name>` selects one.

use crate::boot::BootInfo;

pub mod demo;
pub mod memory;
pub mod misc;
pub mod smp;

pub fn run(name: &[u8], boot: &BootInfo) -> ! {
    match name {
        b"demo" => demo::run(boot),
        b"smp" => smp::run(boot),
        b"memory" => memory::run(boot),
        b"reboot" => misc::reboot(boot),
        b"spin" => misc::spin(boot),
        b"poweroff" => misc::poweroff(boot),
        b"fault" => misc::fault(),
        b"cpuid" => misc::cpuid(),
        b"virtio-blk" => crate::virtio::blk(boot),
        b"virtio-net" => crate::virtio::net(boot),
        b"virtio-rng" => crate::virtio::rng(boot),
        b"virtio-console" => crate::virtio::console(boot),
        b"virtio-vsock" => crate::virtio::vsock(boot),
        b"virtio-balloon" => crate::virtio::balloon(boot),
        b"blk-bench" => crate::virtio::blk_bench::run(boot),
        b"net-bench" => crate::virtio::net_bench::run(boot),
        _ if name.starts_with(b"exit:") => misc::exit_with(&name[5..]),
        _ => crate::finish(false, format_args!(" reason=unknown-scenario")),
    }
}
