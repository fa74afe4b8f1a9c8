//! Disk images for Tern: raw files and qcow2 (versions 2 and 3, as specified by
//! QEMU's `docs/interop/qcow2.txt`).
//!
//! # Using an image from a device model (virtio-blk)
//!
//! ```no_run
//! let disk = image::open("disk.qcow2".as_ref(), None, false).unwrap();
//! let mut sector = [0u8; 512];
//! disk.read_at(0, &mut sector).unwrap();
//! disk.write_at(4096, &[0xaa; 4096]).unwrap();
//! disk.flush().unwrap(); // VIRTIO_BLK_T_FLUSH: everything written before is durable
//! ```
//!
//! [`open`] probes the format (unless told), opens the backing chain and returns a
//! `Box<dyn BlockBackend>`. Every method takes `&self`: the backend is `Send + Sync`
//! and locks internally, so wrap it in an `Arc` and call it from as many queue
//! worker threads as you like. For qcow2, the metadata lookup holds a short mutex;
//! the data transfer itself (`pread`/`pwrite` on the host file) runs outside it, so
//! reads, rewrites of allocated clusters and allocating writes proceed in parallel.
//! An allocating write reserves its guest clusters while it copies and writes the
//! data, and publishes the new L2 entries afterwards; a concurrent write to the same
//! clusters waits for it, so sector writes that share a cluster are never lost.
//! Snapshot operations expect no concurrent guest I/O (pause the VM first).
//!
//! Semantics a device model can rely on:
//! - `read_at`/`write_at` accept any offset and length inside [`BlockBackend::size`];
//!   beyond it they return [`Error::OutOfRange`]. Reads of unallocated space return
//!   the backing file's data or zeroes.
//! - A write is durable only after `flush` returns (`VIRTIO_BLK_T_FLUSH`). The qcow2
//!   metadata is written back in the crash-safe order (data and refcounts, sync,
//!   L2 tables, L1, sync; freed clusters are released only after the tables that
//!   no longer use them are on disk), so a crash leaves at worst leaked clusters.
//! - `discard` is advisory (`VIRTIO_BLK_T_DISCARD`); `write_zeroes` with
//!   `may_unmap` maps to `VIRTIO_BLK_T_WRITE_ZEROES` with the unmap flag.
//! - Errors are [`Error`] values with a one-line `Display`; a corrupt image never
//!   panics the caller. Map `Error::OutOfRange`/`Error::ReadOnly` to
//!   `VIRTIO_BLK_S_IOERR` (or `S_UNSUPP` for read-only writes) as you see fit.
//!
//! Image creation, inspection and repair (used by `tern img`) live in [`qcow2`] and
//! [`raw`]; [`create`] creates an image of either format.

pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Errors of the image engine. `Display` is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("image is opened read-only")]
    ReadOnly,
    #[error("request {offset}+{len} is past the end of the image ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("refcount overflow at host offset {0:#x}: the refcount width is too small")]
    RefcountOverflow(u64),
    #[error("backing chain loop: {0} is its own ancestor")]
    BackingLoop(String),
    #[error("backing chain is deeper than {0} images")]
    ChainTooDeep(usize),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("compression failed: {0}")]
    Compression(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an `io::Error` with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Image formats this crate reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a qemu-img format name (`raw`, `qcow2`).
    pub fn from_name(s: &str) -> Result<Format> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(Error::Unsupported(format!("image format '{other}' (supported: raw, qcow2)"))),
        }
    }
}

/// How a guest range is stored, as reported by [`BlockBackend::block_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset of the extent.
    pub start: u64,
    pub length: u64,
    /// The data comes from this image (not from a backing file).
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Backed by host data (not a hole or a zero marker).
    pub data: bool,
    pub compressed: bool,
    /// Host offset of the data in this image's file, when it is stored plainly.
    pub host_offset: Option<u64>,
    /// How many images down the backing chain the data lives (0 = this one).
    pub depth: u32,
}

/// A virtual disk. Implemented by [`raw::RawImage`] and [`qcow2::Qcow2`].
///
/// All methods take `&self` and are safe to call from several threads at once.
pub trait BlockBackend: Send + Sync {
    /// Virtual disk size in bytes.
    fn size(&self) -> u64;
    fn is_readonly(&self) -> bool;
    fn format(&self) -> Format;
    /// Reads `buf.len()` bytes at guest `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes `buf` at guest `offset` (durable after [`BlockBackend::flush`]).
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Makes `len` bytes at `offset` read as zeroes; with `may_unmap`, host space may be freed.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;
    /// Tells the image the range is unused; afterwards it reads as zeroes or stale data.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Describes how the range starting at `offset` is stored: the returned extent
    /// starts at `offset` and covers at most `len` bytes, all stored the same way.
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent>;
    /// Bytes the image occupies on the host.
    fn allocated_size(&self) -> Result<u64>;
    /// The open backing image, if any.
    fn backing(&self) -> Option<&dyn BlockBackend> {
        None
    }
    /// Path of the image file.
    fn path(&self) -> &Path;
}

pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// Options for [`open_with`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub format: Option<Format>,
    pub readonly: bool,
    /// Open the host file with O_DIRECT (raw only; qcow2 ignores it).
    pub direct: bool,
    /// Do not open the backing file (reads of unallocated clusters return zeroes).
    pub no_backing: bool,
    /// Override the backing file named in the header (used by `rebase`/`commit`).
    pub backing_override: Option<(PathBuf, Option<Format>)>,
    /// Open a qcow2 image even if it is marked corrupt or dirty, for `check -r`.
    pub repair: bool,
    /// Never sync to the disk (qemu's `cache=unsafe`): metadata is still written
    /// in order, but a host crash may lose it. For scratch copies like `convert`.
    pub cache_unsafe: bool,
    /// The image will be read front to back (convert, compare): ask the kernel for
    /// aggressive readahead.
    pub sequential: bool,
    /// qcow2 L2 table cache budget in bytes (QEMU's `l2-cache-size`); default 32 MiB.
    pub l2_cache_bytes: Option<u64>,
    /// qcow2 refcount block cache budget in bytes; default 8 MiB.
    pub refcount_cache_bytes: Option<u64>,
}

/// Maximum length of a backing chain, guards against loops we could not detect by path.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Opens a disk image, probing its format when `format` is `None`.
pub fn open(path: &Path, format: Option<Format>, readonly: bool) -> Result<Box<dyn BlockBackend>> {
    open_with(path, &OpenOptions { format, readonly, ..Default::default() })
}

/// Opens a disk image with explicit options.
pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Box<dyn BlockBackend>> {
    open_chain(path, opts, &mut Vec::new())
}

pub(crate) fn open_chain(path: &Path, opts: &OpenOptions, seen: &mut Vec<PathBuf>) -> Result<Box<dyn BlockBackend>> {
    let canon = std::fs::canonicalize(path).map_err(io_err(format!("could not open '{}'", path.display())))?;
    if seen.contains(&canon) {
        return Err(Error::BackingLoop(path.display().to_string()));
    }
    if seen.len() >= MAX_CHAIN_DEPTH {
        return Err(Error::ChainTooDeep(MAX_CHAIN_DEPTH));
    }
    seen.push(canon);
    let format = match opts.format {
        Some(f) => f,
        None => probe(path)?,
    };
    match format {
        Format::Raw => {
            let mut r = raw::RawImage::open(path, opts.readonly, opts.direct)?;
            r.set_cache_unsafe(opts.cache_unsafe);
            if opts.sequential {
                r.advise_sequential();
            }
            Ok(Box::new(r))
        }
        Format::Qcow2 => Ok(Box::new(qcow2::Qcow2::open_inner(path, opts, seen)?)),
    }
}

/// Guesses the format of an image from its first bytes (qcow2 magic, else raw).
pub fn probe(path: &Path) -> Result<Format> {
    let f = File::open(path).map_err(io_err(format!("could not open '{}'", path.display())))?;
    let mut magic = [0u8; 4];
    match f.read_exact_at(&mut magic, 0) {
        Ok(()) if magic == qcow2::header::QCOW_MAGIC.to_be_bytes() => Ok(Format::Qcow2),
        _ => Ok(Format::Raw),
    }
}

/// Creation options shared by both formats (`qemu-img create -o ...`).
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub size: u64,
    pub preallocation: Preallocation,
    pub qcow2: qcow2::CreateOptions,
}

/// `preallocation=` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    #[default]
    Off,
    Metadata,
    Falloc,
    Full,
}

impl Preallocation {
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            other => return Err(Error::InvalidArgument(format!("preallocation mode '{other}'"))),
        })
    }
}

/// Creates an image file of `format`; existing files are truncated.
pub fn create(path: &Path, format: Format, opts: &CreateOptions) -> Result<()> {
    match format {
        Format::Raw => raw::create(path, opts.size, opts.preallocation),
        Format::Qcow2 => qcow2::create(path, opts.size, opts.preallocation, &opts.qcow2),
    }
}

/// Returns true if every byte of `buf` is zero (fast path used by convert and zero detection).
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets the aligned middle.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}
