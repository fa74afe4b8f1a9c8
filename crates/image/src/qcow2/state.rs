//! Mutable qcow2 metadata (L1, cached L2 tables, refcounts) and the operations
//! on it that must run under the image lock: lookups, cluster allocation,
//! copy-on-write of shared tables, deferred frees and the ordered flush.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::cache::TableCache;
use super::header::{Header, MAX_HOST_OFFSET};
use super::refcount::Refcounts;
use super::snapshot::Snapshot;
use crate::{Error, Result, io_err};

pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;

/// A decoded L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    Unallocated,
    /// Reads as zeroes; may keep a preallocated host cluster.
    Zero {
        host: Option<u64>,
        copied: bool,
    },
    Normal {
        host: u64,
        copied: bool,
    },
    /// Compressed data at byte offset `host`, occupying `sectors` 512-byte sectors from `host & !511`.
    Compressed {
        host: u64,
        sectors: u64,
    },
}

pub fn decode_l2(e: u64, cluster_bits: u32, version: u32) -> Result<Cluster> {
    if e & OFLAG_COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let host = e & ((1u64 << x) - 1);
        let sectors = ((e >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        return Ok(Cluster::Compressed { host, sectors });
    }
    let host = e & L2E_OFFSET_MASK;
    let copied = e & OFLAG_COPIED != 0;
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(Error::Corrupt(format!("L2 entry {e:#x} points to an unaligned cluster")));
    }
    if e & OFLAG_ZERO != 0 {
        if version < 3 {
            return Err(Error::Corrupt(format!("L2 entry {e:#x} has the zero flag in a version 2 image")));
        }
        return Ok(Cluster::Zero { host: if host != 0 { Some(host) } else { None }, copied });
    }
    if host == 0 { Ok(Cluster::Unallocated) } else { Ok(Cluster::Normal { host, copied }) }
}

/// Host byte ranges (start, len) a compressed cluster occupies, for refcounting.
pub fn compressed_range(host: u64, sectors: u64) -> (u64, u64) {
    (host & !511, sectors * 512)
}

pub struct State {
    pub header: Header,
    pub l1: Vec<u64>,
    pub l1_dirty: bool,
    pub l2: TableCache<Vec<u64>>,
    pub rc: Refcounts,
    pub snapshots: Vec<Snapshot>,
    /// Host ranges whose refcount drops by one once the tables no longer using them are on disk.
    pub pending_frees: Vec<(u64, u64)>,
    /// L2 tables reachable from the active L1 (protects them from data writes).
    pub l2_tables: HashSet<u64>,
    pub file_len: u64,
    /// Next free byte for packing compressed clusters (0 = none open).
    pub compress_cursor: u64,
    /// `cache=unsafe`: skip every sync.
    pub nosync: bool,
    /// Guest cluster ranges (start, count) whose allocating write is in flight.
    pub inflight: Vec<(u64, u64)>,
}

impl State {
    pub fn cluster_bits(&self) -> u32 {
        self.header.cluster_bits
    }
    pub fn cluster_size(&self) -> u64 {
        1 << self.header.cluster_bits
    }
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    pub fn load_l1(file: &File, h: &Header) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; h.l1_size as usize * 8];
        file.read_exact_at(&mut raw, h.l1_table_offset)
            .map_err(|e| Error::Corrupt(format!("L1 table cannot be read: {e}")))?;
        let cs = h.cluster_size();
        let mut l1 = Vec::with_capacity(h.l1_size as usize);
        for (i, c) in raw.chunks_exact(8).enumerate() {
            let e = u64::from_be_bytes(c.try_into().expect("8"));
            let off = e & L1E_OFFSET_MASK;
            if !off.is_multiple_of(cs) {
                return Err(Error::Corrupt(format!("L1 entry {i} ({e:#x}) is not cluster aligned")));
            }
            l1.push(e);
        }
        Ok(l1)
    }

    /// Is the host range used by metadata we know of? Guards data writes
    /// against hostile L2 entries pointing into tables.
    pub fn overlaps_metadata(&self, host: u64, len: u64) -> bool {
        let cs = self.cluster_size();
        let end = host + len;
        let hit = |start: u64, l: u64| start < end && host < start + l;
        if host < cs {
            return true;
        }
        if hit(self.header.l1_table_offset, self.header.l1_size as u64 * 8)
            || hit(self.rc.table_offset, self.rc.table_clusters as u64 * cs)
        {
            return true;
        }
        if self.header.nb_snapshots > 0 && hit(self.header.snapshots_offset, cs) {
            return true;
        }
        let mut c = host & !(cs - 1);
        while c < end {
            if self.rc.is_refblock(c) || self.l2_tables.contains(&c) {
                return true;
            }
            c += cs;
        }
        false
    }

    fn read_l2_table(&self, file: &File, off: u64) -> Result<Vec<u64>> {
        let cs = self.cluster_size();
        if !off.is_multiple_of(cs) || off == 0 || off + cs > MAX_HOST_OFFSET {
            return Err(Error::Corrupt(format!("L2 table offset {off:#x} is invalid")));
        }
        if off + cs > self.file_len.next_multiple_of(cs) {
            return Err(Error::Corrupt(format!("L2 table at {off:#x} lies past the end of the file")));
        }
        let mut raw = vec![0u8; cs as usize];
        file.read_exact_at(&mut raw, off)
            .map_err(|e| Error::Corrupt(format!("L2 table at {off:#x} cannot be read: {e}")))?;
        Ok(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8"))).collect())
    }

    /// Makes room in the L2 cache. A dirty victim may reference freshly
    /// allocated clusters, so refcounts go to disk (and are synced) first.
    fn evict_l2(&mut self, file: &File) -> Result<()> {
        while let Some((off, dirty)) = self.l2.victim() {
            if dirty {
                // Write back every dirty table at once: one sync instead of one per eviction.
                self.rc.flush(file)?;
                self.sync(file)?;
                for d in self.l2.dirty() {
                    self.write_l2(file, d)?;
                }
            }
            self.l2.remove(off);
        }
        Ok(())
    }

    fn write_l2(&mut self, file: &File, off: u64) -> Result<()> {
        let t = self.l2.peek(off).expect("cached");
        let mut raw = Vec::with_capacity(t.len() * 8);
        for e in t {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        file.write_all_at(&raw, off).map_err(io_err("L2 table write failed"))?;
        self.file_len = self.file_len.max(off + raw.len() as u64);
        self.l2.mark_clean(off);
        Ok(())
    }

    /// Ensures the L2 table at `off` is cached.
    pub fn cache_l2(&mut self, file: &File, off: u64) -> Result<()> {
        if !self.l2.contains(off) {
            let t = self.read_l2_table(file, off)?;
            self.evict_l2(file)?;
            self.l2.insert(off, t, false);
        }
        Ok(())
    }

    /// The L2 entry of virtual cluster `vc` (0 when unallocated).
    pub fn l2_entry(&mut self, file: &File, vc: u64) -> Result<u64> {
        let n = self.l2_entries();
        let Some(&l1e) = self.l1.get((vc / n) as usize) else { return Ok(0) };
        let off = l1e & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        self.cache_l2(file, off)?;
        Ok(self.l2.get(off).expect("cached")[(vc % n) as usize])
    }

    pub fn lookup(&mut self, file: &File, vc: u64) -> Result<Cluster> {
        let e = self.l2_entry(file, vc)?;
        decode_l2(e, self.cluster_bits(), self.header.version)
    }

    /// Returns the offset of a writable (refcount 1) L2 table for L1 index `i`,
    /// allocating a new one or copying a shared one.
    pub fn writable_l2(&mut self, file: &File, i: usize) -> Result<u64> {
        let l1e = *self.l1.get(i).ok_or_else(|| Error::Corrupt(format!("L1 index {i} out of range")))?;
        let old = l1e & L1E_OFFSET_MASK;
        if old != 0 && l1e & OFLAG_COPIED != 0 {
            self.cache_l2(file, old)?;
            return Ok(old);
        }
        let table =
            if old == 0 { vec![0u64; self.l2_entries() as usize] } else { self.read_cached_or_disk(file, old)? };
        let new = self.rc.alloc(file, 1)?;
        self.evict_l2(file)?;
        self.l2.insert(new, table, true);
        self.l2_tables.insert(new);
        self.l1[i] = new | OFLAG_COPIED;
        self.l1_dirty = true;
        if old != 0 {
            self.l2_tables.remove(&old);
            self.pending_frees.push((old, self.cluster_size()));
        }
        Ok(new)
    }

    fn read_cached_or_disk(&mut self, file: &File, off: u64) -> Result<Vec<u64>> {
        match self.l2.peek(off) {
            Some(t) => Ok(t.clone()),
            None => self.read_l2_table(file, off),
        }
    }

    /// Sets the L2 entry of `vc`, returning the old entry (whose clusters the
    /// caller frees with [`State::free_entry`]).
    pub fn set_l2_entry(&mut self, file: &File, vc: u64, entry: u64) -> Result<u64> {
        let n = self.l2_entries();
        let off = self.writable_l2(file, (vc / n) as usize)?;
        let t = self.l2.get_mut(off).expect("cached");
        Ok(std::mem::replace(&mut t[(vc % n) as usize], entry))
    }

    /// Schedules the release of the host clusters an old L2 entry used.
    pub fn free_entry(&mut self, old: u64) -> Result<()> {
        match decode_l2(old, self.cluster_bits(), self.header.version)? {
            Cluster::Normal { host, .. } | Cluster::Zero { host: Some(host), .. } => {
                self.pending_frees.push((host, self.cluster_size()))
            }
            Cluster::Compressed { host, sectors } => self.pending_frees.push(compressed_range(host, sectors)),
            _ => {}
        }
        Ok(())
    }

    /// Allocates `n` contiguous clusters for data.
    pub fn alloc_data(&mut self, file: &File, n: u64) -> Result<u64> {
        // A fresh run must not continue a partly used compressed cluster.
        self.compress_cursor = 0;
        self.rc.alloc(file, n)
    }

    /// Adds `delta` to the refcount of every cluster in the host range.
    pub fn update_range(&mut self, file: &File, start: u64, len: u64, delta: i64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let cb = self.cluster_bits();
        for c in (start >> cb)..=((start + len - 1) >> cb) {
            let n = self.rc.update(file, c, delta)?;
            if n == 0 {
                self.l2_tables.remove(&(c << cb));
            }
        }
        Ok(())
    }

    pub fn write_l1(&mut self, file: &File) -> Result<()> {
        let mut raw = Vec::with_capacity(self.l1.len() * 8);
        for e in &self.l1 {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        file.write_all_at(&raw, self.header.l1_table_offset).map_err(io_err("L1 table write failed"))?;
        self.l1_dirty = false;
        Ok(())
    }

    pub fn write_header(&mut self, file: &File) -> Result<()> {
        self.header.refcount_table_offset = self.rc.table_offset;
        self.header.refcount_table_clusters = self.rc.table_clusters;
        let b = self.header.serialize()?;
        file.write_all_at(&b, 0).map_err(io_err("header write failed"))?;
        // Clear stale bytes of a previously longer header area.
        let cs = self.cluster_size() as usize;
        let mut zeros = vec![0u8; cs - b.len()];
        let mut old = vec![0u8; cs - b.len()];
        crate::raw::read_full(file, &mut old, b.len() as u64)?;
        if old != zeros {
            zeros.truncate(cs - b.len());
            file.write_all_at(&zeros, b.len() as u64).map_err(io_err("header write failed"))?;
        }
        Ok(())
    }

    pub fn sync(&self, file: &File) -> Result<()> {
        if self.nosync {
            return Ok(());
        }
        file.sync_data().map_err(io_err("sync failed"))
    }

    /// Crash-safe write-back: refcounts (and data) first and synced, then L2
    /// tables, then L1, synced; only then are freed clusters released.
    pub fn flush(&mut self, file: &File) -> Result<()> {
        let tables_dirty = self.l2.has_dirty() || self.l1_dirty;
        if self.rc.is_dirty() || tables_dirty {
            self.rc.flush(file)?;
            self.sync(file)?;
        }
        if tables_dirty {
            for off in self.l2.dirty() {
                self.write_l2(file, off)?;
            }
            if self.l1_dirty {
                self.write_l1(file)?;
            }
            self.sync(file)?;
        }
        if !self.pending_frees.is_empty() {
            for (start, len) in std::mem::take(&mut self.pending_frees) {
                self.update_range(file, start, len, -1)?;
            }
            self.rc.flush(file)?;
        }
        if self.rc.table_moved {
            self.header.refcount_table_offset = self.rc.table_offset;
            self.header.refcount_table_clusters = self.rc.table_clusters;
            self.rc.table_moved = false;
        }
        self.sync(file)
    }

    /// Reads an L1 table stored somewhere (snapshots).
    pub fn read_l1_at(&self, file: &File, off: u64, n: u32) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; n as usize * 8];
        file.read_exact_at(&mut raw, off)
            .map_err(|e| Error::Corrupt(format!("L1 table at {off:#x} cannot be read: {e}")))?;
        Ok(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8"))).collect())
    }

    /// Adds `delta` to the refcounts of every table and cluster reachable from `l1`
    /// (snapshot create/delete/apply). Uses cached L2 tables where present.
    pub fn adjust_tree(&mut self, file: &File, l1: &[u64], delta: i64) -> Result<()> {
        let cs = self.cluster_size();
        for &l1e in l1 {
            let off = l1e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let t = self.read_cached_or_disk(file, off)?;
            for e in t {
                match decode_l2(e, self.cluster_bits(), self.header.version)? {
                    Cluster::Normal { host, .. } | Cluster::Zero { host: Some(host), .. } => {
                        self.update_range(file, host, cs, delta)?
                    }
                    Cluster::Compressed { host, sectors } => {
                        let (s, l) = compressed_range(host, sectors);
                        self.update_range(file, s, l, delta)?
                    }
                    _ => {}
                }
            }
            self.update_range(file, off, cs, delta)?;
        }
        Ok(())
    }

    /// Sets OFLAG_COPIED on active L1/L2 entries exactly where the refcount is 1.
    pub fn fix_copied_flags(&mut self, file: &File) -> Result<()> {
        let cb = self.cluster_bits();
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let off = l1e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let rc = self.rc.get(file, off >> cb)?;
            let want = if rc == 1 { off | OFLAG_COPIED } else { off };
            if want != l1e {
                self.l1[i] = want;
                self.l1_dirty = true;
            }
            // Shared tables too: their entries' flags must match the data refcounts.
            self.cache_l2(file, off)?;
            let t = self.l2.peek(off).expect("cached").clone();
            let mut changed = false;
            let mut nt = t.clone();
            for (j, &e) in t.iter().enumerate() {
                let host = match decode_l2(e, cb, self.header.version)? {
                    Cluster::Normal { host, .. } | Cluster::Zero { host: Some(host), .. } => host,
                    _ => continue,
                };
                let one = self.rc.get(file, host >> cb)? == 1;
                let ne = if one { e | OFLAG_COPIED } else { e & !OFLAG_COPIED };
                if ne != e {
                    nt[j] = ne;
                    changed = true;
                }
            }
            if changed {
                self.cache_l2(file, off)?;
                *self.l2.get_mut(off).expect("cached") = nt;
            }
        }
        Ok(())
    }
}
