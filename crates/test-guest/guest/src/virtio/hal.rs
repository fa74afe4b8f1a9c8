//! virtio-drivers' HAL for an identity-mapped guest at CPL3: DMA memory is a
//! bump allocator over fixed RAM (never freed; scenarios are short-lived),
//! the heap reuses small blocks; physical address == virtual address.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The heap: a bump allocator with per-size-class free lists, so the small
/// blocks virtio-drivers allocates and frees for every request (indirect
/// descriptor tables) are reused and long benchmark runs do not run it dry.
/// Blocks above [`MAX_CLASS`] bytes are never reused.
pub struct Heap;

const MIN_CLASS_SHIFT: u32 = 4;
const MAX_CLASS: usize = 4096;
const CLASSES: usize = (MAX_CLASS.trailing_zeros() - MIN_CLASS_SHIFT + 1) as usize;

/// Heads of the free lists (0 = empty); a free block's first word links to
/// the next. The guest drives virtio from one CPU, but a lock keeps this
/// correct if another ever allocates.
static FREE: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];
static LOCK: AtomicBool = AtomicBool::new(false);

fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS_SHIFT).next_power_of_two();
    (size <= MAX_CLASS).then(|| (size.trailing_zeros() - MIN_CLASS_SHIFT) as usize)
}

fn with_lock<R>(f: impl FnOnce() -> R) -> R {
    while LOCK.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    let r = f();
    LOCK.store(false, Ordering::Release);
    r
}

// SAFETY: hands out disjoint, aligned ranges of reserved RAM; a block is
// reused only after `dealloc` returned it, and always for its own size class
// (class size >= the layout's size and alignment; bump blocks of a class are
// aligned to the class size).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return match bump(&HEAP_NEXT, HEAP_END, layout.size() as u64, layout.align() as u64) {
                Some(addr) => addr as *mut u8,
                None => core::ptr::null_mut(),
            };
        };
        let reused = with_lock(|| {
            let head = FREE[class].load(Ordering::Relaxed);
            if head != 0 {
                // SAFETY: `head` is a freed block of this class; its first word is the link.
                let next = unsafe { (head as *const u64).read() };
                FREE[class].store(next, Ordering::Relaxed);
            }
            head
        });
        if reused != 0 {
            return reused as *mut u8;
        }
        let size = 1u64 << (class as u32 + MIN_CLASS_SHIFT);
        match bump(&HEAP_NEXT, HEAP_END, size, size) {
            Some(addr) => addr as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else { return };
        with_lock(|| {
            let head = FREE[class].load(Ordering::Relaxed);
            // SAFETY: the caller gives back a block it owned, at least 16 bytes long and aligned.
            unsafe { (ptr as *mut u64).write(head) };
            FREE[class].store(ptr as u64, Ordering::Relaxed);
        });
    }
}

#[global_allocator]
static HEAP: Heap = Heap;
