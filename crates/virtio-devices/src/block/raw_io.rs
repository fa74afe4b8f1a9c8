//! Zero-copy reads and writes for raw images on the blocking engine: pread
//! and pwrite straight between the image file and guest memory, skipping
//! the bounce buffer of the generic backend path. Under O_DIRECT a request
//! whose offset or buffers are not 4 KiB aligned is left to the backend
//! (which bounces it).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::GuestMemoryBackend;

use super::config::{CacheMode, DiskConfig};
use super::request::{Kind, Request, SECTOR_SHIFT};

pub(crate) const DIRECT_ALIGN: u64 = 4096;

pub(crate) struct RawFile {
    pub file: File,
    pub direct: bool,
}

impl RawFile {
    pub(crate) fn open(cfg: &DiskConfig, readonly: bool) -> io::Result<Self> {
        let direct = cfg.cache == CacheMode::None;
        let mut oo = OpenOptions::new();
        oo.read(true).write(!readonly);
        if direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        Ok(Self { file: oo.open(&cfg.path)?, direct })
    }

    /// Whether `req`'s offset and buffers satisfy O_DIRECT (always true
    /// without it).
    pub(crate) fn aligned(&self, req: &Request) -> bool {
        !self.direct
            || ((req.sector << SECTOR_SHIFT).is_multiple_of(DIRECT_ALIGN)
                && req
                    .data
                    .iter()
                    .all(|b| b.addr.0.is_multiple_of(DIRECT_ALIGN) && (b.len as u64).is_multiple_of(DIRECT_ALIGN)))
    }

    /// Do a validated In/Out request. `None`: not handled here (use the
    /// backend); `Some(ok)` otherwise.
    pub(crate) fn rw<M: GuestMemoryBackend>(&self, mem: &M, req: &Request) -> Option<bool> {
        if !matches!(req.kind, Kind::In | Kind::Out) || !self.aligned(req) {
            return None;
        }
        let fd = self.file.as_raw_fd();
        let mut off = req.sector << SECTOR_SHIFT;
        for b in &req.data {
            let slice = mem.get_slice(b.addr, b.len as usize).ok()?;
            let guard = slice.ptr_guard_mut();
            let base = guard.as_ptr();
            let mut done = 0usize;
            while done < b.len as usize {
                let left = b.len as usize - done;
                let r = if req.kind == Kind::In {
                    // SAFETY: `base..base+len` is a live mapping of guest
                    // memory (checked by get_slice) and we write at most
                    // `left` bytes past `done`.
                    unsafe { libc::pread(fd, base.add(done).cast(), left, (off + done as u64) as libc::off_t) }
                } else {
                    // SAFETY: as above, reading at most `left` bytes.
                    unsafe { libc::pwrite(fd, base.add(done).cast(), left, (off + done as u64) as libc::off_t) }
                };
                if r < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Some(false);
                }
                if r == 0 {
                    // End of file inside the advertised capacity: the file shrank.
                    return Some(false);
                }
                done += r as usize;
            }
            off += b.len as u64;
        }
        Some(true)
    }
}
