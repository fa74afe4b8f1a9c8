//! virtio-drivers' HAL for an identity-mapped guest at CPL3: DMA memory and
//! the heap are bump allocators over fixed RAM (never freed; scenarios are
//! short-lived), physical address == virtual address.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// DMA pages for virtqueues and device buffers: 2 MiB..4 MiB.
pub const DMA_START: u64 = 0x20_0000;
pub const DMA_END: u64 = 0x40_0000;
/// The Rust heap (virtio-drivers allocates with `alloc`): 4 MiB..6 MiB.
pub const HEAP_START: u64 = 0x40_0000;
pub const HEAP_END: u64 = 0x60_0000;
/// Large data buffers for the benchmark scenarios (`blk-bench`,
/// `net-bench`; one runs per boot): 8 MiB..40 MiB, identity mapped. Guests
/// run with at least 64 MiB.
pub const BENCH_START: u64 = 0x80_0000;
pub const BENCH_END: u64 = 0x280_0000;
const PAGE: u64 = 4096;

static DMA_NEXT: AtomicU64 = AtomicU64::new(DMA_START);
static HEAP_NEXT: AtomicU64 = AtomicU64::new(HEAP_START);

fn bump(next: &AtomicU64, end: u64, size: u64, align: u64) -> Option<u64> {
    let mut cur = next.load(Ordering::Relaxed);
    loop {
        let start = cur.next_multiple_of(align);
        let new = start.checked_add(size).filter(|&n| n <= end)?;
        match next.compare_exchange(cur, new, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return Some(start),
            Err(actual) => cur = actual,
        }
    }
}

pub struct GuestHal;

// SAFETY: DMA regions come from RAM reserved for this purpose, are zeroed,
// page aligned, never handed out twice; physical == virtual addresses.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let size = pages as u64 * PAGE;
        let Some(addr) = bump(&DMA_NEXT, DMA_END, size, PAGE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: freshly reserved, identity-mapped RAM of `size` bytes.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, size as usize) };
        (addr, NonNull::new(addr as *mut u8).expect("non-zero DMA address"))
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("non-zero MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

pub struct BumpHeap;

// SAFETY: hands out disjoint, aligned ranges of reserved RAM; never reuses.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match bump(&HEAP_NEXT, HEAP_END, layout.size() as u64, layout.align() as u64) {
            Some(addr) => addr as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: BumpHeap = BumpHeap;
