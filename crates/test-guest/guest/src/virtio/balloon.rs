//! `virtio-balloon` (virtio-drivers has no balloon driver, so this one is
//! built on its transport and virtqueue): inflate by `tern.balloon_pages`
//! (default: the device's `num_pages` request, else 256) 4 KiB pages taken
//! from the top of RAM below 4 GiB, report them on the inflate queue and
//! update `actual`.

use super::{GuestHal, num, transport_for};
use crate::boot::{BootInfo, E820_RAM};
use crate::cpu::{rdtsc, tsc_hz};
use crate::{finish, tern};
use bitflags::bitflags;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceType, Transport};

bitflags! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const VERSION_1 = 1 << 32;
    }
}

const INFLATE_QUEUE: u16 = 0;
const DEFLATE_QUEUE: u16 = 1;
const CONFIG_NUM_PAGES: usize = 0;
const CONFIG_ACTUAL: usize = 4;
const PFNS_PER_REQUEST: usize = 256;

pub fn run(boot: &BootInfo) -> ! {
    let (mut transport, via) = transport_for(DeviceType::MemoryBallooning, boot);
    transport.begin_init(Features::VERSION_1);
    // Both queues are mandatory for the device, even if we only inflate.
    let mut inflate = match VirtQueue::<GuestHal, 16>::new(&mut transport, INFLATE_QUEUE, false, false) {
        Ok(q) => q,
        Err(e) => finish(false, format_args!(" reason=queue error=\"{}\"", e)),
    };
    let _deflate = match VirtQueue::<GuestHal, 16>::new(&mut transport, DEFLATE_QUEUE, false, false) {
        Ok(q) => q,
        Err(e) => finish(false, format_args!(" reason=queue error=\"{}\"", e)),
    };
    transport.finish_init();
    let timeout_ms = num(boot, "tern.balloon_timeout_ms", 5000);
    let requested: u32 = transport.read_config_space(CONFIG_NUM_PAGES).unwrap_or(0);
    let pages = num(boot, "tern.balloon_pages", if requested != 0 { requested as u64 } else { 256 });
    tern!("virtio-balloon transport={} num_pages={} inflating={}", via, requested, pages);

    // Give away the highest RAM pages below 4 GiB (far from the image and
    // the DMA/heap areas at 2..6 MiB).
    let Some(top) = boot
        .regions()
        .iter()
        .filter(|r| r.kind == E820_RAM)
        .map(|r| (r.addr + r.size).min(crate::cpu::MAPPED_LIMIT))
        .max()
    else {
        finish(false, format_args!(" reason=no-ram"));
    };
    let first_pfn = (top >> 12).saturating_sub(pages);
    if first_pfn < 0x1000 {
        finish(false, format_args!(" reason=too-many-pages pages={}", pages));
    }
    let mut done = 0u64;
    let mut pfns = [0u32; PFNS_PER_REQUEST];
    while done < pages {
        let n = (pages - done).min(PFNS_PER_REQUEST as u64) as usize;
        for (i, pfn) in pfns[..n].iter_mut().enumerate() {
            *pfn = (first_pfn + done + i as u64) as u32;
        }
        // SAFETY: u32 slice viewed as bytes for the device (read-only for it).
        let bytes = unsafe { core::slice::from_raw_parts(pfns.as_ptr() as *const u8, n * 4) };
        // Not add_notify_wait_pop: a device that never answers must give a
        // result line, not a hang.
        // SAFETY: `bytes` stays alive and untouched until popped below.
        let token = match unsafe { inflate.add(&[bytes], &mut []) } {
            Ok(t) => t,
            Err(e) => finish(false, format_args!(" reason=inflate error=\"{}\" done={}", e, done)),
        };
        if inflate.should_notify() {
            transport.notify(INFLATE_QUEUE);
        }
        let end = rdtsc() + tsc_hz() / 1000 * timeout_ms;
        while !inflate.can_pop() {
            if rdtsc() > end {
                finish(false, format_args!(" reason=timeout done={}", done));
            }
            core::hint::spin_loop();
        }
        // SAFETY: the same buffer as added with `token`.
        if let Err(e) = unsafe { inflate.pop_used(token, &[bytes], &mut []) } {
            finish(false, format_args!(" reason=inflate error=\"{}\" done={}", e, done));
        }
        done += n as u64;
    }
    if let Err(e) = transport.write_config_space(CONFIG_ACTUAL, done as u32) {
        finish(false, format_args!(" reason=actual error=\"{}\"", e));
    }
    finish(true, format_args!(" pages={} transport={}", done, via))
}
