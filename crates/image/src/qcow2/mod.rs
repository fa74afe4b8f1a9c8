//! qcow2 images (docs/interop/qcow2.txt), versions 2 and 3.
//!
//! Layout of this module: [`header`] parses/serialises the header, [`state`]
//! holds the mutable metadata behind the image lock, [`refcount`] allocates,
//! [`io`] is the guest read/write path, [`snapshot`], [`check`], [`create`] and
//! [`compress`] implement the rest.

pub mod cache;
pub mod check;
pub mod compress;
pub mod create;
pub mod header;
mod io;
pub mod refcount;
pub mod snapshot;
pub mod state;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

pub use create::{CreateOptions, create};
use header::{AUTOCLEAR_BITMAPS, Header, INCOMPAT_DIRTY};
use refcount::Refcounts;
use state::{L1E_OFFSET_MASK, OFLAG_COPIED, State};

use crate::{BlockBackend, Error, Extent, Format, OpenOptions as ImgOpen, Result, io_err};

/// Metadata cache budgets (bytes), QEMU's defaults: up to 32 MiB of L2 tables
/// (all of a 256 GiB image with 64 KiB clusters) and a quarter of that for refcounts.
/// Tables are cached as they are used, so small images use little memory.
const L2_CACHE_BYTES: u64 = 32 << 20;
const RC_CACHE_BYTES: u64 = 8 << 20;

pub struct Qcow2 {
    pub(crate) file: File,
    path: PathBuf,
    pub(crate) readonly: bool,
    pub(crate) cluster_bits: u32,
    size: AtomicU64,
    pub(crate) backing: Option<Box<dyn BlockBackend>>,
    state: Mutex<State>,
    /// Signalled when an allocating write publishes its clusters.
    pub(crate) alloc_done: Condvar,
}

impl Qcow2 {
    /// Opens a qcow2 image and its backing chain.
    pub fn open(path: &Path, readonly: bool) -> Result<Self> {
        Self::open_inner(path, &ImgOpen { readonly, ..Default::default() }, &mut Vec::new())
    }

    /// Opens with explicit options (no backing, repair mode, backing override).
    pub fn open_with(path: &Path, opts: &ImgOpen) -> Result<Self> {
        Self::open_inner(path, opts, &mut Vec::new())
    }

    pub(crate) fn open_inner(path: &Path, opts: &ImgOpen, seen: &mut Vec<PathBuf>) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.readonly)
            .open(path)
            .map_err(io_err(format!("could not open '{}'", path.display())))?;
        let file_len = file.metadata().map_err(io_err("stat failed"))?.len();
        let mut first = vec![0u8; (file_len.min(1 << header::MAX_CLUSTER_BITS)) as usize];
        crate::raw::read_full(&file, &mut first, 0)?;
        let header = Header::parse(&first, file_len)?;
        if header.is_corrupt() && !opts.readonly && !opts.repair {
            return Err(Error::Corrupt(
                "the image is marked corrupt; open it read-only or repair it with 'check -r all'".into(),
            ));
        }
        let cs = header.cluster_size();
        let l1 = State::load_l1(&file, &header)?;
        let mut rc = Refcounts::load(
            &file,
            header.refcount_table_offset,
            header.refcount_table_clusters,
            header.refcount_order,
            header.cluster_bits,
            file_len,
            (opts.refcount_cache_bytes.unwrap_or(RC_CACHE_BYTES) / cs).max(4) as usize,
        )?;
        rc.nosync = opts.cache_unsafe;
        let snapshots = if header.nb_snapshots > 0 {
            let len = snapshot::table_len(&file, header.snapshots_offset, header.nb_snapshots)?;
            let mut buf = vec![0u8; len];
            crate::raw::read_full(&file, &mut buf, header.snapshots_offset)?;
            snapshot::parse_table(&buf, header.nb_snapshots, cs)?
        } else {
            Vec::new()
        };
        let backing = match (&opts.backing_override, &header.backing_file) {
            _ if opts.no_backing => None,
            (Some((p, f)), _) => {
                let o = ImgOpen { format: *f, readonly: true, ..Default::default() };
                Some(crate::open_chain(p, &o, seen)?)
            }
            (None, Some(name)) => {
                let p = resolve_backing(path, name);
                let format = match header.backing_format.as_deref() {
                    Some(f) => Some(Format::from_name(f)?),
                    None => None,
                };
                let o = ImgOpen { format, readonly: true, ..Default::default() };
                Some(crate::open_chain(&p, &o, seen).map_err(|e| match e {
                    Error::Io { source, .. } => {
                        Error::Io { what: format!("could not open backing file '{}'", p.display()), source }
                    }
                    other => other,
                })?)
            }
            (None, None) => None,
        };
        let l2_tables = l1.iter().map(|e| e & L1E_OFFSET_MASK).filter(|&o| o != 0).collect();
        let size = header.size;
        let cluster_bits = header.cluster_bits;
        let st = State {
            header,
            l1,
            l1_dirty: false,
            l2: cache::TableCache::new((opts.l2_cache_bytes.unwrap_or(L2_CACHE_BYTES) / cs).max(4) as usize),
            rc,
            snapshots,
            pending_frees: Vec::new(),
            l2_tables,
            file_len,
            compress_cursor: 0,
            nosync: opts.cache_unsafe,
            inflight: Vec::new(),
        };
        let img = Qcow2 {
            file,
            path: path.to_owned(),
            readonly: opts.readonly,
            cluster_bits,
            size: AtomicU64::new(size),
            backing,
            state: Mutex::new(st),
            alloc_done: Condvar::new(),
        };
        if !opts.readonly {
            let mut st = img.lock();
            if st.header.is_dirty() && !opts.repair {
                // Refcounts may be stale (lazy refcounts): rebuild them before writing.
                drop(st);
                check::check(&img, check::Repair::All)?;
                st = img.lock();
                st.header.incompatible_features &= !INCOMPAT_DIRTY;
                st.write_header(&img.file)?;
                st.sync(&img.file)?;
            }
            if st.header.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
                // We do not maintain persistent bitmaps; the autoclear bit tells QEMU they are stale.
                st.header.autoclear_features = 0;
                st.write_header(&img.file)?;
                st.sync(&img.file)?;
            }
        }
        Ok(img)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock poisons it; the metadata is still the
        // best we have, so keep going rather than propagating the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reload_size(&self) {
        let s = self.lock().header.size;
        self.size.store(s, Ordering::Release);
    }

    pub fn header(&self) -> Header {
        self.lock().header.clone()
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Marks the image dirty on first write when lazy refcounts are on (QEMU semantics).
    fn mark_dirty(&self, st: &mut State) -> Result<()> {
        if st.header.lazy_refcounts() && !st.header.is_dirty() {
            st.header.incompatible_features |= INCOMPAT_DIRTY;
            st.write_header(&self.file)?;
            st.sync(&self.file)?;
        }
        Ok(())
    }

    /// Replaces the L1 table with a larger one (resize, snapshot apply).
    pub(crate) fn grow_l1(st: &mut State, file: &File, entries: u64) -> Result<()> {
        let cs = st.cluster_size();
        if entries * 8 > header::MAX_L1_BYTES {
            return Err(Error::InvalidArgument("the disk would need an L1 table larger than 32 MiB".into()));
        }
        st.flush(file)?;
        let bytes = (entries * 8).next_multiple_of(cs);
        let new_off = st.rc.alloc(file, bytes / cs)?;
        st.rc.flush(file)?;
        let old_off = st.header.l1_table_offset;
        let old_bytes = (st.header.l1_size as u64 * 8).next_multiple_of(cs);
        st.l1.resize(entries as usize, 0);
        let mut raw = vec![0u8; bytes as usize];
        for (i, e) in st.l1.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        file.write_all_at(&raw, new_off).map_err(io_err("L1 table write failed"))?;
        st.sync(file)?;
        st.header.l1_table_offset = new_off;
        st.header.l1_size = entries as u32;
        st.write_header(file)?;
        st.sync(file)?;
        if old_bytes > 0 {
            st.update_range(file, old_off, old_bytes, -1)?;
        }
        st.flush(file)
    }

    /// Changes the virtual size. Shrinking drops the clusters past the new end.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        if new_size > header::MAX_VIRTUAL_SIZE {
            return Err(Error::InvalidArgument(format!("size {new_size} is too large")));
        }
        let mut st = self.lock();
        let file = &self.file;
        let old = st.header.size;
        let cs = st.cluster_size();
        if new_size < old {
            if !st.snapshots.is_empty() {
                return Err(Error::Unsupported("shrinking an image that has internal snapshots".into()));
            }
            let first = new_size.div_ceil(cs);
            let last = old.div_ceil(cs);
            for vc in first..last {
                if st.l2_entry(file, vc)? != 0 {
                    let old_e = st.set_l2_entry(file, vc, 0)?;
                    st.free_entry(old_e)?;
                }
            }
            // The tail of a partial last cluster must read as zeroes if the disk grows again.
            st.flush(file)?;
        }
        let need = Header::l1_entries_for(new_size, st.cluster_bits());
        if need > st.header.l1_size as u64 {
            Self::grow_l1(&mut st, file, need)?;
        }
        st.flush(file)?;
        st.header.size = new_size;
        st.write_header(file)?;
        st.sync(file)?;
        drop(st);
        if new_size < old && !new_size.is_multiple_of(cs) {
            let tail = cs - new_size % cs;
            self.size.store(new_size + tail.min(old - new_size), Ordering::Release);
            let _ = self.write_zeroes(new_size, tail.min(old - new_size), true);
        }
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Rewrites the backing file name and format in the header (`rebase -u`, `amend`).
    pub fn set_backing(&self, name: Option<&str>, fmt: Option<&str>) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let mut st = self.lock();
        st.flush(&self.file)?;
        st.header.backing_file = name.map(str::to_string);
        st.header.backing_format = if name.is_some() { fmt.map(str::to_string) } else { None };
        st.write_header(&self.file)?;
        st.sync(&self.file)
    }

    /// Changes compat level and lazy refcounts (`amend`).
    pub fn amend(&self, version: Option<u32>, lazy_refcounts: Option<bool>) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let mut st = self.lock();
        let file = &self.file;
        st.flush(file)?;
        if let Some(v) = version {
            if v == 2 && st.header.version == 3 {
                if st.header.refcount_order != 4 {
                    return Err(Error::Unsupported("compat=0.10 requires refcount_bits=16".into()));
                }
                if st.header.compression_type != header::CompressionType::Zlib {
                    return Err(Error::Unsupported("compat=0.10 requires compression_type=zlib".into()));
                }
                if st.header.lazy_refcounts() && lazy_refcounts != Some(false) {
                    return Err(Error::Unsupported("compat=0.10 does not support lazy refcounts".into()));
                }
                // v2 has no zero flag: zero clusters become allocated zeroes or holes.
                let size = st.header.size;
                let cs = st.cluster_size();
                drop(st);
                self.expand_zero_clusters(size, cs)?;
                st = self.lock();
                st.flush(file)?;
                st.header.feature_table.clear();
                st.header.compatible_features = 0;
                st.header.incompatible_features = 0;
                st.header.autoclear_features = 0;
            }
            st.header.version = v;
        }
        if let Some(l) = lazy_refcounts {
            if l && st.header.version < 3 {
                return Err(Error::Unsupported("lazy refcounts need compat=1.1".into()));
            }
            if l {
                st.header.compatible_features |= header::COMPAT_LAZY_REFCOUNTS;
            } else {
                st.header.compatible_features &= !header::COMPAT_LAZY_REFCOUNTS;
            }
        }
        st.write_header(file)?;
        st.sync(file)
    }

    fn expand_zero_clusters(&self, size: u64, cs: u64) -> Result<()> {
        if !self.lock().snapshots.is_empty() {
            return Err(Error::Unsupported("downgrading an image with snapshots".into()));
        }
        let zeros = vec![0u8; cs as usize];
        for vc in 0..size.div_ceil(cs) {
            let c = self.lock().lookup(&self.file, vc)?;
            if let state::Cluster::Zero { .. } = c {
                {
                    let mut st = self.lock();
                    let old = st.set_l2_entry(&self.file, vc, 0)?;
                    st.free_entry(old)?;
                }
                let off = vc * cs;
                let len = cs.min(size - off) as usize;
                if self.backing.is_some() {
                    self.write_at(off, &zeros[..len])?;
                }
            }
        }
        Ok(())
    }

    /// Makes every guest cluster unallocated again (`commit` without `-d`).
    pub fn make_empty(&self) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let cs = self.cluster_size();
        let n = self.size().div_ceil(cs);
        let mut st = self.lock();
        for vc in 0..n {
            if st.l2_entry(&self.file, vc)? != 0 {
                let old = st.set_l2_entry(&self.file, vc, 0)?;
                st.free_entry(old)?;
            }
        }
        st.flush(&self.file)
    }

    /// Writes a compressed cluster for guest cluster `vc` (`convert -c`).
    /// `data` is the compressed stream; the target cluster must be unallocated.
    pub fn write_compressed_cluster(&self, vc: u64, data: &[u8]) -> Result<()> {
        io::write_compressed(self, vc, data)
    }

    pub fn compression_type(&self) -> header::CompressionType {
        self.lock().header.compression_type
    }

    /// Clusters currently allocated in the host file (for `info`/`check`).
    pub fn file_length(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(io_err("stat failed"))?.len())
    }
}

/// A relative backing name is relative to the directory of the image naming it.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_owned();
    }
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_owned(),
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if self.readonly {
            return;
        }
        let mut st = self.lock();
        if st.flush(&self.file).is_ok() && st.header.is_dirty() {
            st.header.incompatible_features &= !INCOMPAT_DIRTY;
            let _ = st.write_header(&self.file);
            let _ = st.sync(&self.file);
        }
    }
}

impl BlockBackend for Qcow2 {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn is_readonly(&self) -> bool {
        self.readonly
    }
    fn format(&self) -> Format {
        Format::Qcow2
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn backing(&self) -> Option<&dyn BlockBackend> {
        self.backing.as_deref()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        crate::check_range(offset, buf.len() as u64, self.size())?;
        io::read(self, offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        crate::check_range(offset, buf.len() as u64, self.size())?;
        {
            let mut st = self.lock();
            self.mark_dirty(&mut st)?;
        }
        io::write(self, offset, buf)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        crate::check_range(offset, len, self.size())?;
        io::write_zeroes(self, offset, len, may_unmap)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        crate::check_range(offset, len, self.size())?;
        io::discard(self, offset, len)
    }

    fn flush(&self) -> Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.lock().flush(&self.file)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        crate::check_range(offset, len, self.size())?;
        io::block_status(self, offset, len)
    }

    fn allocated_size(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(io_err("stat failed"))?.blocks() * 512)
    }
}

/// Entry value for a freshly allocated plain cluster.
pub(crate) fn normal_entry(host: u64) -> u64 {
    host | OFLAG_COPIED
}
