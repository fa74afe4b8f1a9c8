//! Raw images: the file is the disk. Reads and writes are `pread`/`pwrite`;
//! discard and zeroing punch holes; block status uses SEEK_DATA/SEEK_HOLE.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{BlockBackend, Error, Extent, Format, Preallocation, Result, check_range, io_err};

/// O_DIRECT needs buffers and offsets aligned to the logical block size; we bounce through this alignment.
const DIRECT_ALIGN: usize = 4096;

pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    readonly: bool,
    direct: bool,
    nosync: bool,
}

impl RawImage {
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!readonly);
        if direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(io_err(format!("could not open '{}'", path.display())))?;
        let meta = file.metadata().map_err(io_err(format!("could not stat '{}'", path.display())))?;
        let size = if meta.file_type().is_block_device() { block_device_size(&file)? } else { meta.len() };
        Ok(RawImage { file, path: path.to_owned(), size, readonly, direct, nosync: false })
    }

    /// Hints sequential access (doubles the kernel's readahead window).
    pub fn advise_sequential(&self) {
        // SAFETY: posix_fadvise only takes integer arguments and a valid fd.
        unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }

    /// `cache=unsafe`: `flush` does not sync.
    pub fn set_cache_unsafe(&mut self, on: bool) {
        self.nosync = on;
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Grows or shrinks the file.
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        self.file.set_len(new_size).map_err(io_err("could not resize image"))?;
        self.size = new_size;
        Ok(())
    }

    fn direct_read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = offset & !(DIRECT_ALIGN as u64 - 1);
        let end = (offset + buf.len() as u64).next_multiple_of(DIRECT_ALIGN as u64);
        let mut bounce = AlignedBuf::new((end - start) as usize);
        read_full(&self.file, bounce.as_mut(), start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_mut()[skip..skip + buf.len()]);
        Ok(())
    }

    fn direct_write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let start = offset & !(DIRECT_ALIGN as u64 - 1);
        let end = (offset + buf.len() as u64).next_multiple_of(DIRECT_ALIGN as u64);
        let mut bounce = AlignedBuf::new((end - start) as usize);
        if start != offset || end != offset + buf.len() as u64 {
            read_full(&self.file, bounce.as_mut(), start)?;
        }
        let skip = (offset - start) as usize;
        bounce.as_mut()[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(bounce.as_mut(), start).map_err(io_err("write failed"))
    }
}

/// Reads `buf` at `offset`; bytes past end of file read as zeroes.
pub(crate) fn read_full(file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io { what: "read failed".into(), source: e }),
        }
    }
    Ok(())
}

struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size; the pointer is checked for null below.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), DIRECT_ALIGN).expect("valid layout");
        // SAFETY: allocated in new() with this same layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

fn block_device_size(file: &File) -> Result<u64> {
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`, which outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r < 0 {
        return Err(Error::Io { what: "BLKGETSIZE64".into(), source: std::io::Error::last_os_error() });
    }
    Ok(size)
}

/// fallocate() wrapper; returns the OS error so callers can fall back.
pub(crate) fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd with integer arguments.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Punches a hole; falls back to writing zeroes when the filesystem cannot.
pub(crate) fn punch_zero(file: &File, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    if fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len).is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; (len as usize).min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done).map_err(io_err("write zeroes failed"))?;
        done += n as u64;
    }
    Ok(())
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on a valid fd has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 { None } else { Some(r as u64) }
}

/// Host-level allocation status of `[offset, offset+len)`: (is_data, length of the run).
pub(crate) fn file_status(file: &File, offset: u64, len: u64) -> (bool, u64) {
    match seek(file, offset, libc::SEEK_DATA) {
        Some(d) if d == offset => {
            let hole = seek(file, offset, libc::SEEK_HOLE).unwrap_or(offset + len);
            (true, (hole.max(offset + 1) - offset).min(len))
        }
        Some(d) => (false, (d - offset).min(len)),
        // ENXIO: no data after offset.
        None => (false, len),
    }
}

impl BlockBackend for RawImage {
    fn size(&self) -> u64 {
        self.size
    }
    fn is_readonly(&self) -> bool {
        self.readonly
    }
    fn format(&self) -> Format {
        Format::Raw
    }
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct { self.direct_read(offset, buf) } else { read_full(&self.file, buf, offset) }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct {
            self.direct_write(offset, buf)
        } else {
            self.file.write_all_at(buf, offset).map_err(io_err("write failed"))
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        if !may_unmap && fallocate(&self.file, libc::FALLOC_FL_ZERO_RANGE, offset, len).is_ok() {
            return Ok(());
        }
        punch_zero(&self.file, offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        // Discard is advisory: ignore filesystems without hole punching.
        let _ = fallocate(&self.file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.readonly || self.nosync {
            return Ok(());
        }
        self.file.sync_data().map_err(io_err("flush failed"))
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range(offset, len, self.size)?;
        let (data, run) = file_status(&self.file, offset, len);
        Ok(Extent {
            start: offset,
            length: run.max(1).min(len),
            present: true,
            zero: !data,
            data,
            compressed: false,
            host_offset: if data { Some(offset) } else { None },
            depth: 0,
        })
    }

    fn allocated_size(&self) -> Result<u64> {
        let m = self.file.metadata().map_err(io_err("stat failed"))?;
        Ok(m.blocks() * 512)
    }
}

/// Creates (or truncates) a raw image of `size` bytes.
pub fn create(path: &Path, size: u64, prealloc: Preallocation) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(format!("could not create '{}'", path.display())))?;
    preallocate(&file, 0, size, prealloc)?;
    file.set_len(size).map_err(io_err(format!("could not resize '{}'", path.display())))
}

/// Extends `file` from `from` to `to` according to `prealloc`.
pub(crate) fn preallocate(file: &File, from: u64, to: u64, prealloc: Preallocation) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    match prealloc {
        Preallocation::Off | Preallocation::Metadata => Ok(()),
        Preallocation::Falloc => fallocate(file, 0, from, to - from).map_err(io_err("fallocate failed")),
        Preallocation::Full => {
            let zeros = vec![0u8; 1 << 20];
            let mut off = from;
            while off < to {
                let n = (to - off).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], off).map_err(io_err("preallocation write failed"))?;
                off += n as u64;
            }
            Ok(())
        }
    }
}
