//! io_uring engine for raw images: reads and writes are submitted as
//! readv/writev straight into guest memory and completed when the ring's
//! EventFd fires, so one worker keeps many requests in flight. Everything
//! else (flush, discard, get-id, malformed requests) and, under O_DIRECT,
//! requests whose offset or buffers are not 4 KiB aligned go through the
//! blocking path of the image backend, which bounces them correctly.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use io_uring::{IoUring, opcode, types};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::BlockHandler;
use super::raw_io::{DIRECT_ALIGN, RawFile};
use super::request::{self, Kind, Request, SECTOR_SHIFT};
use crate::queue::{add_used, drain_queue, notify_used};
use crate::worker::{DeviceBroken, QueueHandler};

/// iovecs pointing into guest memory.
struct IoVecs(#[allow(dead_code)] Vec<libc::iovec>);

// SAFETY: the pointers are into guest memory, which is mapped for the life of
// the VM and shared by every thread; nothing here is thread-affine.
unsafe impl Send for IoVecs {}

struct Inflight {
    req: Request,
    // Kept alive until the kernel is done with the iovec array.
    _iovecs: IoVecs,
}

pub(crate) struct UringHandler {
    inner: BlockHandler,
    ring: IoUring,
    file: File,
    completion: EventFd,
    inflight: HashMap<u64, Inflight>,
    next_id: u64,
    direct: bool,
}

/// The ring and its completion EventFd, set up before the device commits to
/// this engine (so `io=auto` can still fall back to threads).
pub(crate) struct UringParts {
    ring: IoUring,
    completion: EventFd,
}

impl UringParts {
    pub(crate) fn new() -> std::io::Result<Self> {
        let ring = IoUring::new(super::QUEUE_SIZE as u32)?;
        let completion = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(completion.as_raw_fd())?;
        Ok(Self { ring, completion })
    }
}

impl UringHandler {
    /// Submits to `file`, the raw image reopened for zero-copy I/O.
    pub(crate) fn new(inner: BlockHandler, file: RawFile, parts: UringParts) -> Self {
        let (RawFile { file, direct }, UringParts { ring, completion }) = (file, parts);
        Self { inner, ring, file, completion, inflight: HashMap::new(), next_id: 0, direct }
    }

    pub(crate) fn completion_fd(&self) -> RawFd {
        self.completion.as_raw_fd()
    }

    fn process(&mut self) -> Result<(), DeviceBroken> {
        let mem = self.inner.mem.memory();
        let h = &mut self.inner;
        let (disk, limits, serial, counters, scratch) = (&*h.disk, &h.limits, &h.serial, &h.counters, &mut h.scratch);
        let mut to_submit: Vec<(Request, Vec<libc::iovec>)> = Vec::new();
        let this_iovecs = |req: &Request| {
            // iovecs over guest memory, or None when a buffer is not one
            // host range or breaks O_DIRECT alignment (then: blocking path).
            let direct = self.direct;
            if direct && !(req.sector << SECTOR_SHIFT).is_multiple_of(DIRECT_ALIGN) {
                return None;
            }
            let mut v = Vec::with_capacity(req.data.len());
            for b in &req.data {
                if direct && (!b.addr.0.is_multiple_of(DIRECT_ALIGN) || !(b.len as u64).is_multiple_of(DIRECT_ALIGN)) {
                    return None;
                }
                let slice = mem.get_slice(b.addr, b.len as usize).ok()?;
                v.push(libc::iovec { iov_base: slice.ptr_guard_mut().as_ptr().cast(), iov_len: b.len as usize });
            }
            Some(v)
        };
        drain_queue(&mut h.queue, &*mem, &*h.interrupt, h.index, |chain| {
            let Some(req) = super::chain_to_request(chain, counters) else { return Some(0) };
            if matches!(req.kind, Kind::In | Kind::Out)
                && request::validate(&req, limits).is_ok()
                && let Some(iov) = this_iovecs(&req)
            {
                to_submit.push((req, iov));
                return None;
            }
            let (status, written) = request::execute(&*mem, &req, disk, limits, serial, scratch);
            counters.account(req.kind, status, req.data_len);
            request::complete(&*mem, &req, status);
            Some(written + 1)
        })
        .map_err(|e| DeviceBroken(format!("virtio-blk: {e}")))?;
        drop(mem);
        for (req, iov) in to_submit {
            self.submit(req, iov)?;
        }
        self.ring.submit().map_err(|e| DeviceBroken(format!("virtio-blk: io_uring submit: {e}")))?;
        Ok(())
    }

    fn submit(&mut self, req: Request, iov: Vec<libc::iovec>) -> Result<(), DeviceBroken> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let fd = types::Fd(self.file.as_raw_fd());
        let off = req.sector << SECTOR_SHIFT;
        let sqe = match req.kind {
            Kind::In => opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32).offset(off).build(),
            _ => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32).offset(off).build(),
        }
        .user_data(id);
        self.inner.counters.async_ops.fetch_add(1, Ordering::Relaxed);
        self.inflight.insert(id, Inflight { req, _iovecs: IoVecs(iov) });
        loop {
            // SAFETY: the iovec array and the guest buffers it points at stay
            // alive until the completion is reaped: the array is owned by
            // `inflight`, and guest memory outlives the device worker.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Ring full: hand what we have to the kernel and retry.
            self.ring.submit().map_err(|e| DeviceBroken(format!("virtio-blk: io_uring submit: {e}")))?;
        }
    }

    fn reap(&mut self) -> Result<usize, DeviceBroken> {
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        if done.is_empty() {
            return Ok(0);
        }
        let mem = self.inner.mem.memory();
        for (id, res) in &done {
            let Some(f) = self.inflight.remove(id) else { continue };
            let ok = *res >= 0 && *res as u64 == f.req.data_len;
            let status = if ok { request::S_OK } else { request::S_IOERR };
            self.inner.counters.account(f.req.kind, status, f.req.data_len);
            request::complete(&*mem, &f.req, status);
            let written = if f.req.kind == Kind::In && ok { f.req.data_len as u32 } else { 0 };
            add_used(&mut self.inner.queue, &*mem, f.req.head, written + 1)
                .map_err(|e| DeviceBroken(format!("virtio-blk: {e}")))?;
        }
        notify_used(&mut self.inner.queue, &*mem, &*self.inner.interrupt, self.inner.index)
            .map_err(|e| DeviceBroken(format!("virtio-blk: {e}")))?;
        Ok(done.len())
    }
}

impl QueueHandler for UringHandler {
    fn queue_notified(&mut self, _index: usize) -> Result<(), DeviceBroken> {
        self.process()
    }

    fn fd_ready(&mut self, _token: u64, _events: EventSet) -> Result<(), DeviceBroken> {
        let _ = self.completion.read();
        self.reap().map(|_| ())
    }

    fn quiesce(&mut self) {
        while !self.inflight.is_empty() {
            if self.ring.submit_and_wait(1).is_err() || self.reap().is_err() {
                break;
            }
        }
    }
}
