//! Reference counts: the refcount table, refcount blocks of any width
//! (refcount_order 0..6) and cluster allocation.
//!
//! Ordering rule: a refcount block reaches the disk before the table entry that
//! points to it, and all refcount updates reach the disk (with a sync) before any
//! L2/L1 entry that uses the counted clusters (`flush` is called by the owner
//! before it writes tables).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::cache::TableCache;
use super::header::MAX_HOST_OFFSET;
use crate::{Error, Result, io_err};

pub const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

pub struct Refcounts {
    pub table: Vec<u64>,
    pub table_offset: u64,
    pub table_clusters: u32,
    table_dirty: bool,
    blocks: TableCache<Vec<u8>>,
    block_set: HashSet<u64>,
    order: u32,
    cluster_bits: u32,
    /// Allocation scan starts here (cluster index).
    pub free_hint: u64,
    /// One past the highest cluster index ever in use (file end or allocation).
    pub alloc_end: u64,
    /// Set when the table moved: the owner must not cache the old header fields.
    pub table_moved: bool,
    /// `cache=unsafe`: skip syncs.
    pub nosync: bool,
}

/// Reads refcount `i` of a block with 2^order-bit entries.
pub fn rc_get(block: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let pos = i * bits;
            ((block[pos / 8] >> (pos % 8)) as u64) & ((1u64 << bits) - 1)
        }
        3 => block[i] as u64,
        4 => u16::from_be_bytes([block[2 * i], block[2 * i + 1]]) as u64,
        5 => u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().expect("4")) as u64,
        _ => u64::from_be_bytes(block[8 * i..8 * i + 8].try_into().expect("8")),
    }
}

/// Writes refcount `i`; `v` must fit in the width.
pub fn rc_set(block: &mut [u8], i: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let pos = i * bits;
            let mask = (((1u16 << bits) - 1) as u8) << (pos % 8);
            block[pos / 8] = (block[pos / 8] & !mask) | (((v as u8) << (pos % 8)) & mask);
        }
        3 => block[i] = v as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => block[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

pub fn max_refcount(order: u32) -> u64 {
    if order >= 6 { u64::MAX } else { (1u64 << (1u32 << order)) - 1 }
}

impl Refcounts {
    pub fn load(
        file: &File,
        table_offset: u64,
        table_clusters: u32,
        order: u32,
        cluster_bits: u32,
        file_len: u64,
        cache_tables: usize,
    ) -> Result<Self> {
        let cs = 1u64 << cluster_bits;
        let mut raw = vec![0u8; table_clusters as usize * cs as usize];
        crate::raw::read_full(file, &mut raw, table_offset)?;
        let mut table = Vec::with_capacity(raw.len() / 8);
        let mut block_set = HashSet::new();
        let table_end = table_offset + table_clusters as u64 * cs;
        for (i, c) in raw.chunks_exact(8).enumerate() {
            let e = u64::from_be_bytes(c.try_into().expect("8")) & REFTABLE_OFFSET_MASK;
            if e != 0 {
                if !e.is_multiple_of(cs) || e >= MAX_HOST_OFFSET {
                    return Err(Error::Corrupt(format!("refcount table entry {i} ({e:#x}) is not a cluster offset")));
                }
                if e + cs > file_len.next_multiple_of(cs) {
                    return Err(Error::Corrupt(format!("refcount block {i} at {e:#x} lies past the end of the file")));
                }
                if e < cs || (e >= table_offset && e < table_end) {
                    return Err(Error::Corrupt(format!(
                        "refcount block {i} at {e:#x} overlaps the header or the table"
                    )));
                }
                // Two table entries sharing a block would make allocation loop forever.
                if !block_set.insert(e) {
                    return Err(Error::Corrupt(format!("refcount block at {e:#x} is used twice in the table")));
                }
            }
            table.push(e);
        }
        Ok(Refcounts {
            table,
            table_offset,
            table_clusters,
            table_dirty: false,
            blocks: TableCache::new(cache_tables),
            block_set,
            order,
            cluster_bits,
            free_hint: 0,
            alloc_end: file_len.div_ceil(cs),
            table_moved: false,
            nosync: false,
        })
    }

    fn sync(&self, file: &File) -> Result<()> {
        if self.nosync { Ok(()) } else { file.sync_data().map_err(io_err("sync failed")) }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount entries per block.
    pub fn per_block(&self) -> u64 {
        (self.cluster_size() * 8) >> self.order
    }

    pub fn order(&self) -> u32 {
        self.order
    }

    pub fn is_refblock(&self, off: u64) -> bool {
        self.block_set.contains(&off)
    }

    pub fn in_table(&self, off: u64) -> bool {
        off >= self.table_offset && off < self.table_offset + self.table_clusters as u64 * self.cluster_size()
    }

    fn load_block(&mut self, file: &File, off: u64) -> Result<()> {
        if self.blocks.contains(off) {
            return Ok(());
        }
        self.evict(file)?;
        let mut b = vec![0u8; self.cluster_size() as usize];
        file.read_exact_at(&mut b, off).map_err(|e| {
            Error::Corrupt(format!(
                "refcount block at {off:#x} cannot be read ({e}); it may lie past the end of the file"
            ))
        })?;
        self.blocks.insert(off, b, false);
        Ok(())
    }

    fn evict(&mut self, file: &File) -> Result<()> {
        // Writing a refcount block early is always safe: increments may precede
        // their users, and decrements are only applied once their users are gone.
        while let Some((off, dirty)) = self.blocks.victim() {
            if dirty {
                let b = self.blocks.peek(off).expect("victim exists");
                file.write_all_at(b, off).map_err(io_err("refcount block write failed"))?;
            }
            self.blocks.remove(off);
        }
        Ok(())
    }

    /// Refcount of cluster index `c`.
    pub fn get(&mut self, file: &File, c: u64) -> Result<u64> {
        let per = self.per_block();
        let ti = (c / per) as usize;
        let Some(&boff) = self.table.get(ti) else { return Ok(0) };
        if boff == 0 {
            return Ok(0);
        }
        self.load_block(file, boff)?;
        let b = self.blocks.get(boff).expect("loaded");
        Ok(rc_get(b, (c % per) as usize, self.order))
    }

    /// Adds `delta` to the refcount of cluster `c`; returns the new count.
    pub fn update(&mut self, file: &File, c: u64, delta: i64) -> Result<u64> {
        let per = self.per_block();
        let ti = c / per;
        if self.table.get(ti as usize).copied().unwrap_or(0) == 0 {
            if delta < 0 {
                return Err(Error::Corrupt(format!(
                    "freeing cluster {:#x} which has no refcount",
                    c << self.cluster_bits
                )));
            }
            self.create_block(file, ti, 0)?;
        }
        let boff = self.table[ti as usize];
        self.load_block(file, boff)?;
        let order = self.order;
        let b = self.blocks.get_mut(boff).expect("loaded");
        let i = (c % per) as usize;
        let old = rc_get(b, i, order);
        let new = if delta >= 0 {
            old.checked_add(delta as u64)
                .filter(|&n| n <= max_refcount(order))
                .ok_or(Error::RefcountOverflow(c << self.cluster_bits))?
        } else {
            old.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                Error::Corrupt(format!("refcount of cluster {:#x} would drop below zero", c << self.cluster_bits))
            })?
        };
        rc_set(b, i, order, new);
        if new == 0 && c < self.free_hint {
            self.free_hint = c;
        }
        Ok(new)
    }

    /// Finds `n` contiguous free clusters at or after the hint.
    fn find_free(&mut self, file: &File, n: u64) -> Result<u64> {
        let per = self.per_block();
        let mut start = self.free_hint;
        let mut c = start;
        while c - start < n {
            let ti = (c / per) as usize;
            if self.table.get(ti).copied().unwrap_or(0) == 0 {
                // Whole block is free.
                c = (c / per + 1) * per;
                continue;
            }
            if self.get(file, c)? != 0 {
                start = c + 1;
            }
            c += 1;
        }
        if (start + n) << self.cluster_bits >= MAX_HOST_OFFSET {
            return Err(Error::Unsupported("image file would exceed the maximum qcow2 host offset".into()));
        }
        Ok(start)
    }

    /// Creates the refcount block for table index `ti`. `depth` bounds recursion.
    fn create_block(&mut self, file: &File, ti: u64, depth: u32) -> Result<()> {
        if depth > 8 {
            return Err(Error::Corrupt("refcount block allocation does not converge".into()));
        }
        if ti as usize >= self.table.len() {
            self.grow_table(file, ti + 1)?;
            if self.table[ti as usize] != 0 {
                return Ok(());
            }
        }
        let per = self.per_block();
        for _ in 0..64 {
            let c = self.find_free(file, 1)?;
            let cti = c / per;
            let mut block = vec![0u8; self.cluster_size() as usize];
            if cti == ti {
                rc_set(&mut block, (c % per) as usize, self.order, 1);
            } else if self.table.get(cti as usize).copied().unwrap_or(0) == 0 {
                self.create_block(file, cti, depth + 1)?;
                continue;
            } else {
                self.update(file, c, 1)?;
            }
            let off = c << self.cluster_bits;
            self.evict(file)?;
            self.blocks.insert(off, block, true);
            self.block_set.insert(off);
            self.table[ti as usize] = off;
            self.table_dirty = true;
            self.alloc_end = self.alloc_end.max(c + 1);
            return Ok(());
        }
        Err(Error::Corrupt("refcount block allocation does not converge".into()))
    }

    /// Moves the refcount table to a larger one at the end of the image.
    fn grow_table(&mut self, file: &File, min_entries: u64) -> Result<()> {
        let cs = self.cluster_size();
        let per = self.per_block();
        let per_table_cluster = cs / 8;
        let mut new_len = min_entries.max(self.table.len() as u64 * 3 / 2).next_multiple_of(per_table_cluster);
        let p = self.alloc_end;
        let (tc, nblocks, first_ti, last_ti) = loop {
            let tc = new_len * 8 / cs;
            let mut k = 0u64;
            loop {
                let first = p / per;
                let last = (p + tc + k - 1) / per;
                let need =
                    (first..=last).filter(|&t| self.table.get(t as usize).copied().unwrap_or(0) == 0).count() as u64;
                if need == k {
                    break;
                }
                k = need;
            }
            let last = (p + tc + k - 1) / per;
            if last < new_len {
                break (tc, k, p / per, last);
            }
            new_len = (last + 1).next_multiple_of(per_table_cluster);
        };
        if tc * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::Unsupported("refcount table would exceed 8 MiB".into()));
        }
        let mut new_table = self.table.clone();
        new_table.resize(new_len as usize, 0);
        // Place the new blocks after the new table.
        let mut next_block = p + tc;
        let mut fresh = Vec::new();
        for t in first_ti..=last_ti {
            if new_table[t as usize] == 0 {
                new_table[t as usize] = next_block << self.cluster_bits;
                fresh.push((t, next_block));
                next_block += 1;
            }
        }
        debug_assert_eq!(fresh.len() as u64, nblocks);
        let end = p + tc + nblocks;
        // Count every new cluster in its block.
        for c in p..end {
            let t = c / per;
            if let Some(&(_, bc)) = fresh.iter().find(|(ft, _)| *ft == t) {
                let off = bc << self.cluster_bits;
                if !self.blocks.contains(off) {
                    self.evict(file)?;
                    self.blocks.insert(off, vec![0u8; cs as usize], true);
                    self.block_set.insert(off);
                }
                let b = self.blocks.get_mut(off).expect("inserted");
                rc_set(b, (c % per) as usize, self.order, 1);
            } else {
                let boff = new_table[t as usize];
                self.load_block(file, boff)?;
                let b = self.blocks.get_mut(boff).expect("loaded");
                rc_set(b, (c % per) as usize, self.order, 1);
            }
        }
        // Blocks first, then the table, then the header pointer.
        self.write_dirty_blocks(file)?;
        self.sync(file)?;
        let old_off = self.table_offset;
        let old_clusters = self.table_clusters as u64;
        self.table = new_table;
        self.table_offset = p << self.cluster_bits;
        self.table_clusters = tc as u32;
        self.write_table(file)?;
        self.sync(file)?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&self.table_offset.to_be_bytes());
        hdr[8..].copy_from_slice(&(tc as u32).to_be_bytes());
        file.write_all_at(&hdr, 48).map_err(io_err("header write failed"))?;
        self.sync(file)?;
        self.alloc_end = self.alloc_end.max(end);
        self.table_moved = true;
        for i in 0..old_clusters {
            let c = (old_off >> self.cluster_bits) + i;
            self.update(file, c, -1)?;
        }
        Ok(())
    }

    /// Allocates `n` contiguous clusters with refcount 1; returns the host offset.
    pub fn alloc(&mut self, file: &File, n: u64) -> Result<u64> {
        let per = self.per_block();
        let mut rounds = 0u32;
        'retry: loop {
            rounds += 1;
            if rounds > 1000 {
                return Err(Error::Corrupt(
                    "cluster allocation does not converge; the refcounts are inconsistent".into(),
                ));
            }
            let start = self.find_free(file, n)?;
            // Make sure the blocks that count these clusters exist; creating one may
            // take a cluster from our range, in which case we search again.
            let mut t = start / per;
            while t <= (start + n - 1) / per {
                if self.table.get(t as usize).copied().unwrap_or(0) == 0 {
                    self.create_block(file, t, 0)?;
                    continue 'retry;
                }
                t += 1;
            }
            for c in start..start + n {
                if self.get(file, c)? != 0 {
                    continue 'retry;
                }
            }
            for c in start..start + n {
                self.update(file, c, 1)?;
            }
            self.free_hint = start + n;
            self.alloc_end = self.alloc_end.max(start + n);
            return Ok(start << self.cluster_bits);
        }
    }

    fn write_dirty_blocks(&mut self, file: &File) -> Result<()> {
        for off in self.blocks.dirty() {
            let b = self.blocks.peek(off).expect("dirty exists");
            file.write_all_at(b, off).map_err(io_err("refcount block write failed"))?;
            self.blocks.mark_clean(off);
        }
        Ok(())
    }

    fn write_table(&mut self, file: &File) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let mut raw = vec![0u8; self.table_clusters as usize * cs];
        for (i, e) in self.table.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        file.write_all_at(&raw, self.table_offset).map_err(io_err("refcount table write failed"))?;
        self.table_dirty = false;
        Ok(())
    }

    pub fn is_dirty(&self) -> bool {
        self.table_dirty || self.blocks.has_dirty()
    }

    /// Writes dirty blocks, then (if changed) the table. Does not sync at the end.
    pub fn flush(&mut self, file: &File) -> Result<()> {
        self.write_dirty_blocks(file)?;
        if self.table_dirty {
            self.sync(file)?;
            self.write_table(file)?;
        }
        Ok(())
    }

    /// Drops cached blocks (after an external rewrite such as a repair).
    pub fn drop_cache(&mut self) {
        self.blocks.clear();
    }
}
