//! Internal snapshots: the snapshot table format and create/apply/delete.
//!
//! Refcounts count paths: every L1 table (active or snapshot) that reaches an L2
//! table or data cluster adds one. Creating a snapshot therefore adds one to the
//! whole active tree; the shared tables lose OFLAG_COPIED and get copied on the
//! next write.

use std::fs::File;

use super::Qcow2;
use super::state::{L1E_OFFSET_MASK, OFLAG_COPIED, State};
use crate::{Error, Result, io_err};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
    /// Extra data beyond the fields we know, kept verbatim.
    pub extra_unknown: Vec<u8>,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4"))
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8"))
}

/// Parses `n` snapshot entries from the table bytes.
pub fn parse_table(buf: &[u8], n: u32, cluster_size: u64) -> Result<Vec<Snapshot>> {
    let bad = |m: String| Error::Corrupt(format!("snapshot table: {m}"));
    let mut v = Vec::with_capacity(n as usize);
    let mut off = 0usize;
    for i in 0..n {
        if off + 40 > buf.len() {
            return Err(bad(format!("entry {i} lies past the end of the table")));
        }
        let l1_table_offset = be64(buf, off);
        let l1_size = be32(buf, off + 8);
        let id_len = be16(buf, off + 12) as usize;
        let name_len = be16(buf, off + 14) as usize;
        let extra_len = be32(buf, off + 36) as usize;
        if extra_len > 1024 {
            return Err(bad(format!("entry {i} has {extra_len} bytes of extra data")));
        }
        let body = off + 40;
        let end = body + extra_len + id_len + name_len;
        if end > buf.len() {
            return Err(bad(format!("entry {i} lies past the end of the table")));
        }
        if !l1_table_offset.is_multiple_of(cluster_size) || (l1_size as u64) * 8 > super::header::MAX_L1_BYTES {
            return Err(bad(format!("entry {i} has an invalid L1 table ({l1_table_offset:#x}, {l1_size})")));
        }
        let extra = &buf[body..body + extra_len];
        let vm_state_large = if extra_len >= 8 { Some(be64(extra, 0)) } else { None };
        let disk_size = if extra_len >= 16 { Some(be64(extra, 8)) } else { None };
        let icount = if extra_len >= 24 { Some(be64(extra, 16)) } else { None };
        let text = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
        v.push(Snapshot {
            l1_table_offset,
            l1_size,
            id: text(&buf[body + extra_len..body + extra_len + id_len]),
            name: text(&buf[body + extra_len + id_len..end]),
            date_sec: be32(buf, off + 16),
            date_nsec: be32(buf, off + 20),
            vm_clock_nsec: be64(buf, off + 24),
            vm_state_size: vm_state_large.unwrap_or(be32(buf, off + 32) as u64),
            disk_size,
            icount,
            extra_unknown: if extra_len > 24 { extra[24..].to_vec() } else { Vec::new() },
        });
        off = end.next_multiple_of(8);
    }
    Ok(v)
}

pub fn serialize_table(snaps: &[Snapshot]) -> Vec<u8> {
    let mut b = Vec::new();
    for s in snaps {
        let mut extra = Vec::new();
        extra.extend_from_slice(&s.vm_state_size.to_be_bytes());
        extra.extend_from_slice(&s.disk_size.unwrap_or(0).to_be_bytes());
        extra.extend_from_slice(&s.icount.unwrap_or(u64::MAX).to_be_bytes());
        extra.extend_from_slice(&s.extra_unknown);
        b.extend_from_slice(&s.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&s.l1_size.to_be_bytes());
        b.extend_from_slice(&(s.id.len() as u16).to_be_bytes());
        b.extend_from_slice(&(s.name.len() as u16).to_be_bytes());
        b.extend_from_slice(&s.date_sec.to_be_bytes());
        b.extend_from_slice(&s.date_nsec.to_be_bytes());
        b.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
        b.extend_from_slice(&(s.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        b.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        b.extend_from_slice(&extra);
        b.extend_from_slice(s.id.as_bytes());
        b.extend_from_slice(s.name.as_bytes());
        b.resize(b.len().next_multiple_of(8), 0);
    }
    b
}

/// Total bytes of the table (to bound the read): walks the entry headers.
pub fn table_len(file: &File, offset: u64, n: u32) -> Result<usize> {
    let mut off = 0u64;
    let mut hdr = [0u8; 40];
    for _ in 0..n {
        crate::raw::read_full(file, &mut hdr, offset + off)?;
        let len = 40 + be32(&hdr, 36) as u64 + be16(&hdr, 12) as u64 + be16(&hdr, 14) as u64;
        off += len.next_multiple_of(8);
        if off > 64 << 20 {
            return Err(Error::Corrupt("snapshot table is larger than 64 MiB".into()));
        }
    }
    Ok(off as usize)
}

fn now() -> (u32, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as u32, d.subsec_nanos())
}

impl State {
    /// Writes a new snapshot table and points the header at it; frees the old one.
    fn store_snapshot_table(&mut self, file: &File, snaps: Vec<Snapshot>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let cs = self.cluster_size();
        let old_off = self.header.snapshots_offset;
        let old_len =
            if self.header.nb_snapshots > 0 { table_len(file, old_off, self.header.nb_snapshots)? } else { 0 };
        let bytes = serialize_table(&snaps);
        let new_off = if bytes.is_empty() {
            0
        } else {
            let n = (bytes.len() as u64).div_ceil(cs);
            let off = self.rc.alloc(file, n)?;
            self.rc.flush(file)?;
            self.sync(file)?;
            let mut padded = bytes.clone();
            padded.resize((n * cs) as usize, 0);
            file.write_all_at(&padded, off).map_err(io_err("snapshot table write failed"))?;
            self.sync(file)?;
            off
        };
        self.header.nb_snapshots = snaps.len() as u32;
        self.header.snapshots_offset = new_off;
        self.write_header(file)?;
        self.sync(file)?;
        self.snapshots = snaps;
        if old_len > 0 {
            self.update_range(file, old_off, (old_len as u64).next_multiple_of(cs), -1)?;
        }
        Ok(())
    }
}

impl Qcow2 {
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.lock().snapshots.clone()
    }

    fn find(st: &State, key: &str) -> Result<usize> {
        st.snapshots
            .iter()
            .position(|s| s.id == key)
            .or_else(|| st.snapshots.iter().position(|s| s.name == key))
            .ok_or_else(|| Error::SnapshotNotFound(key.to_string()))
    }

    /// `qemu-img snapshot -c NAME`.
    pub fn snapshot_create(&self, name: &str) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let mut st = self.lock();
        if st.snapshots.iter().any(|s| s.name == name) {
            return Err(Error::InvalidArgument(format!("a snapshot named '{name}' already exists")));
        }
        if st.header.refcount_order == 0 {
            return Err(Error::Unsupported("snapshots need refcounts wider than 1 bit".into()));
        }
        if name.len() > 65535 {
            return Err(Error::InvalidArgument("snapshot name is too long".into()));
        }
        let file = &self.file;
        st.flush(file)?;
        // 1. Every cluster of the active tree gains a reference.
        let l1 = st.l1.clone();
        st.adjust_tree(file, &l1, 1)?;
        // 2. The snapshot's own copy of L1.
        let cs = st.cluster_size();
        let l1_bytes = (l1.len() as u64 * 8).max(8);
        let l1_off = st.rc.alloc(file, l1_bytes.div_ceil(cs))?;
        st.rc.flush(file)?;
        st.sync(file)?;
        let mut raw = Vec::with_capacity(l1.len() * 8);
        for e in &l1 {
            raw.extend_from_slice(&(e & !OFLAG_COPIED).to_be_bytes());
        }
        raw.resize(l1_bytes.next_multiple_of(cs) as usize, 0);
        std::os::unix::fs::FileExt::write_all_at(file, &raw, l1_off).map_err(io_err("snapshot L1 write failed"))?;
        // 3. Shared tables lose OFLAG_COPIED before the snapshot becomes visible.
        st.fix_copied_flags(file)?;
        st.flush(file)?;
        // 4. Publish.
        let next_id = st.snapshots.iter().filter_map(|s| s.id.parse::<u64>().ok()).max().unwrap_or(0) + 1;
        let (sec, nsec) = now();
        let mut snaps = st.snapshots.clone();
        snaps.push(Snapshot {
            l1_table_offset: l1_off,
            l1_size: l1.len() as u32,
            id: next_id.to_string(),
            name: name.to_string(),
            date_sec: sec,
            date_nsec: nsec,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(st.header.size),
            icount: None,
            extra_unknown: Vec::new(),
        });
        st.store_snapshot_table(file, snaps)?;
        st.flush(file)
    }

    /// `qemu-img snapshot -d NAME|ID`.
    pub fn snapshot_delete(&self, key: &str) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let mut st = self.lock();
        let file = &self.file;
        let idx = Self::find(&st, key)?;
        st.flush(file)?;
        let mut snaps = st.snapshots.clone();
        let sn = snaps.remove(idx);
        st.store_snapshot_table(file, snaps)?;
        let l1 = st.read_l1_at(file, sn.l1_table_offset, sn.l1_size)?;
        st.adjust_tree(file, &l1, -1)?;
        let cs = st.cluster_size();
        st.update_range(file, sn.l1_table_offset, (sn.l1_size as u64 * 8).max(8).next_multiple_of(cs), -1)?;
        st.rc.flush(file)?;
        st.sync(file)?;
        st.fix_copied_flags(file)?;
        st.flush(file)
    }

    /// `qemu-img snapshot -a NAME|ID`: the active disk becomes the snapshot's.
    pub fn snapshot_apply(&self, key: &str) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let mut st = self.lock();
        let file = &self.file;
        let idx = Self::find(&st, key)?;
        let sn = st.snapshots[idx].clone();
        st.flush(file)?;
        if sn.l1_size > st.header.l1_size {
            Self::grow_l1(&mut st, file, sn.l1_size as u64)?;
        }
        let snap_l1 = st.read_l1_at(file, sn.l1_table_offset, sn.l1_size)?;
        // New references first, then switch, then drop the old ones.
        st.adjust_tree(file, &snap_l1, 1)?;
        st.rc.flush(file)?;
        st.sync(file)?;
        let old_l1 = std::mem::take(&mut st.l1);
        let mut new_l1: Vec<u64> = snap_l1.iter().map(|e| e & !OFLAG_COPIED).collect();
        new_l1.resize(old_l1.len(), 0);
        st.l1 = new_l1;
        st.l2_tables = st.l1.iter().map(|e| e & L1E_OFFSET_MASK).filter(|&o| o != 0).collect();
        st.l2.clear();
        st.write_l1(file)?;
        if let Some(sz) = sn.disk_size {
            st.header.size = sz;
        }
        st.write_header(file)?;
        st.sync(file)?;
        st.adjust_tree(file, &old_l1, -1)?;
        st.rc.flush(file)?;
        st.sync(file)?;
        st.fix_copied_flags(file)?;
        st.flush(file)?;
        drop(st);
        self.reload_size();
        Ok(())
    }
}
