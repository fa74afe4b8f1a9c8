//! `check`: rebuilds the reference counts from the metadata, compares them with
//! the stored ones and verifies OFLAG_COPIED, like QEMU's qcow2 checker.
//! Leaks (stored > real) are harmless; corruptions (stored < real, bad
//! pointers) can lose data. Repair fixes refcounts and flags.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;

use super::Qcow2;
use super::header::INCOMPAT_CORRUPT;
use super::state::{Cluster, L1E_OFFSET_MASK, OFLAG_COPIED, State, compressed_range, decode_l2};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    None,
    Leaks,
    All,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckResult {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub image_end_offset: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// One line per problem, in QEMU's wording.
    pub messages: Vec<String>,
}

struct Walker<'a> {
    img: &'a Qcow2,
    /// Computed refcount per host cluster (within the file).
    refs: Vec<u64>,
    res: CheckResult,
    cs: u64,
    cb: u32,
    version: u32,
    /// L2 tables to walk: offset -> (references, references from the active L1, an L1 index).
    tables: BTreeMap<u64, (u64, u64, usize)>,
}

impl Walker<'_> {
    fn inc(&mut self, start: u64, len: u64, what: &str) {
        self.inc_by(start, len, what, 1)
    }

    fn inc_by(&mut self, start: u64, len: u64, what: &str, k: u64) {
        if len == 0 {
            return;
        }
        let first = start >> self.cb;
        let last = (start + len - 1) >> self.cb;
        for c in first..=last {
            match self.refs.get_mut(c as usize) {
                Some(r) => *r = r.saturating_add(k),
                None => {
                    self.res.corruptions += 1;
                    self.res.messages.push(format!(
                        "ERROR {what} at offset {:#x} is beyond the end of the image file",
                        c << self.cb
                    ));
                }
            }
        }
    }

    fn read_table(&mut self, off: u64, len: u64) -> Option<Vec<u64>> {
        let mut raw = vec![0u8; len as usize];
        if self.img.file.read_exact_at(&mut raw, off).is_err() {
            self.res.check_errors += 1;
            self.res.messages.push(format!("ERROR could not read table at {off:#x}"));
            return None;
        }
        Some(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8"))).collect())
    }

    /// Counts the L2 tables an L1 table references. The tables themselves are
    /// walked once each by [`Walker::walk_tables`], weighted by how many L1
    /// entries reach them: a hostile image whose L1 entries all alias one big
    /// table costs one walk, not millions.
    fn walk_l1(&mut self, l1: &[u64], active: bool) {
        for (i, &l1e) in l1.iter().enumerate() {
            let off = l1e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(self.cs) || (off >> self.cb) as usize >= self.refs.len() {
                self.res.corruptions += 1;
                self.res.messages.push(format!("ERROR L2 table offset {off:#x} (L1 index {i}) is invalid"));
                continue;
            }
            self.inc(off, self.cs, "L2 table");
            let e = self.tables.entry(off).or_insert((0, 0, i));
            e.0 += 1;
            if active {
                e.1 += 1;
            }
        }
    }

    fn walk_tables(&mut self) {
        for (off, (mult, active, i)) in std::mem::take(&mut self.tables) {
            let Some(t) = self.read_table(off, self.cs) else { continue };
            // Like QEMU, contiguity is measured within one L2 table.
            let mut next_contig = 0u64;
            for (j, &e) in t.iter().enumerate() {
                match decode_l2(e, self.cb, self.version) {
                    Err(err) => {
                        self.res.corruptions += 1;
                        self.res.messages.push(format!("ERROR L2 entry {i}/{j}: {err}"));
                    }
                    Ok(Cluster::Normal { host, .. }) | Ok(Cluster::Zero { host: Some(host), .. }) => {
                        self.inc_by(host, self.cs, "data cluster", mult);
                        if active > 0 {
                            self.res.allocated_clusters += active;
                            if next_contig != 0 && host != next_contig {
                                self.res.fragmented_clusters += active;
                            }
                            next_contig = host + self.cs;
                        }
                    }
                    Ok(Cluster::Compressed { host, sectors }) => {
                        if e & OFLAG_COPIED != 0 {
                            self.res.corruptions += 1;
                            self.res.messages.push(format!(
                                "ERROR: coffset={host:#x}: copied flag must never be set for compressed clusters"
                            ));
                        }
                        let (s, l) = compressed_range(host, sectors);
                        self.inc_by(s, l, "compressed cluster", mult);
                        if active > 0 {
                            self.res.allocated_clusters += active;
                            self.res.compressed_clusters += active;
                            self.res.fragmented_clusters += active;
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Checks (and optionally repairs) a qcow2 image. The image must be opened
/// writable for repairs.
pub fn check(img: &Qcow2, repair: Repair) -> Result<CheckResult> {
    if repair != Repair::None && img.readonly {
        return Err(Error::ReadOnly);
    }
    let mut res = check_once(img)?;
    if repair == Repair::None || (res.leaks == 0 && res.corruptions == 0) {
        return Ok(res);
    }
    let fix_corrupt = repair == Repair::All;
    apply_repair(img, fix_corrupt)?;
    let after = check_once(img)?;
    res.leaks_fixed = res.leaks.saturating_sub(after.leaks);
    res.corruptions_fixed = res.corruptions.saturating_sub(after.corruptions);
    let mut out = after;
    out.leaks_fixed = res.leaks_fixed;
    out.corruptions_fixed = res.corruptions_fixed;
    let mut msgs = res.messages;
    msgs.append(&mut out.messages);
    out.messages = msgs;
    Ok(out)
}

/// Computed reference counts of every host cluster.
fn compute<'a>(img: &'a Qcow2, st: &mut State) -> Result<Walker<'a>> {
    let h = st.header.clone();
    let cs = h.cluster_size();
    let file_len = img.file_length()?;
    let nclusters = file_len.div_ceil(cs);
    let mut w = Walker {
        img,
        refs: vec![0u64; nclusters as usize],
        res: CheckResult::default(),
        cs,
        cb: h.cluster_bits,
        version: h.version,
        tables: BTreeMap::new(),
    };
    w.res.total_clusters = h.size.div_ceil(cs);
    w.inc(0, cs, "header");
    w.inc(h.l1_table_offset, h.l1_size as u64 * 8, "L1 table");
    let l1 = st.l1.clone();
    w.walk_l1(&l1, true);
    if h.nb_snapshots > 0 {
        let len = super::snapshot::table_len(&img.file, h.snapshots_offset, h.nb_snapshots)?;
        w.inc(h.snapshots_offset, len as u64, "snapshot table");
        for sn in st.snapshots.clone() {
            w.inc(sn.l1_table_offset, sn.l1_size as u64 * 8, "snapshot L1 table");
            if let Some(l1) = w.read_table(sn.l1_table_offset, sn.l1_size as u64 * 8) {
                w.walk_l1(&l1, false);
            }
        }
    }
    w.walk_tables();
    w.inc(st.rc.table_offset, st.rc.table_clusters as u64 * cs, "refcount table");
    for &b in st.rc.table.clone().iter() {
        if b != 0 {
            w.inc(b, cs, "refcount block");
        }
    }
    Ok(w)
}

fn check_once(img: &Qcow2) -> Result<CheckResult> {
    let mut st = img.lock();
    if !img.readonly {
        st.flush(&img.file)?;
    }
    let mut w = compute(img, &mut st)?;
    let file = &img.file;
    let per = st.rc.per_block();
    let covered = st.rc.table.len() as u64 * per;
    // Like QEMU, refcounts of clusters past the end of the file are not compared.
    let n = w.refs.len() as u64;
    let mut last_used = 0u64;
    for c in 0..n {
        let real = w.refs.get(c as usize).copied().unwrap_or(0);
        let stored = if c < covered { st.rc.get(file, c)? } else { 0 };
        if real != 0 {
            last_used = c + 1;
        }
        if real == stored {
            continue;
        }
        if stored > real {
            w.res.leaks += 1;
            w.res.messages.push(format!("Leaked cluster {c} refcount={stored} reference={real}"));
        } else {
            w.res.corruptions += 1;
            w.res.messages.push(format!("ERROR cluster {c} refcount={stored} reference={real}"));
        }
    }
    // OFLAG_COPIED must be set exactly where the stored refcount is 1.
    let cb = st.cluster_bits();
    let mut checked = HashSet::new();
    for (i, &l1e) in st.l1.clone().iter().enumerate() {
        let off = l1e & L1E_OFFSET_MASK;
        if off == 0 || (off >> cb) as usize >= w.refs.len() || !off.is_multiple_of(st.cluster_size()) {
            continue;
        }
        let rc = st.rc.get(file, off >> cb)?;
        if (rc == 1) != (l1e & OFLAG_COPIED != 0) {
            w.res.corruptions += 1;
            w.res.messages.push(format!("ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}"));
        }
        if !checked.insert(off) {
            continue;
        }
        let Some(t) = w.read_table(off, st.cluster_size()) else { continue };
        for &e in &t {
            if let Ok(Cluster::Normal { host, copied } | Cluster::Zero { host: Some(host), copied }) =
                decode_l2(e, cb, st.header.version)
            {
                if (host >> cb) as usize >= w.refs.len() {
                    continue;
                }
                let rc = st.rc.get(file, host >> cb)?;
                if (rc == 1) != copied {
                    w.res.corruptions += 1;
                    w.res.messages.push(format!("ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"));
                }
            }
        }
    }
    w.res.image_end_offset = last_used * st.cluster_size();
    Ok(w.res)
}

/// Sets stored refcounts to the computed ones (only downwards for leaks-only
/// repairs), then fixes OFLAG_COPIED and clears the corrupt bit.
fn apply_repair(img: &Qcow2, fix_corrupt: bool) -> Result<()> {
    // New refcount blocks allocated during the repair change the real counts, so iterate.
    for _round in 0..4 {
        let mut st = img.lock();
        let w = compute(img, &mut st)?;
        let refs = w.refs;
        let file = &img.file;
        let per = st.rc.per_block();
        let covered = st.rc.table.len() as u64 * per;
        let n = refs.len() as u64;
        let mut changed = false;
        for c in 0..n {
            let real = refs.get(c as usize).copied().unwrap_or(0);
            let stored = if c < covered { st.rc.get(file, c)? } else { 0 };
            if real == stored || (stored < real && !fix_corrupt) {
                continue;
            }
            changed = true;
            st.rc.update(file, c, real as i64 - stored as i64)?;
        }
        st.rc.flush(file)?;
        st.sync(file)?;
        if !changed {
            break;
        }
    }
    if fix_corrupt {
        let mut st = img.lock();
        st.fix_copied_flags(&img.file)?;
        st.flush(&img.file)?;
        if st.header.incompatible_features & INCOMPAT_CORRUPT != 0 {
            st.header.incompatible_features &= !INCOMPAT_CORRUPT;
            st.write_header(&img.file)?;
            st.sync(&img.file)?;
        }
    }
    Ok(())
}
