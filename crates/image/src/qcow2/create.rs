//! Creating qcow2 images: header, refcount structures, L1, and (with
//! preallocation) L2 tables and data clusters, laid out in one pass.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{self, CompressionType, Header};
use super::refcount::rc_set;
use super::state::OFLAG_COPIED;
use crate::{Error, Preallocation, Result, io_err};

#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    pub cluster_size: u64,
    pub refcount_bits: u32,
    pub lazy_refcounts: bool,
    pub compression_type: CompressionType,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            lazy_refcounts: false,
            compression_type: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
        }
    }
}

impl CreateOptions {
    pub fn validate(&self) -> Result<(u32, u32)> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
            return Err(Error::InvalidArgument(format!("cluster size {cs} must be a power of two between 512 and 2M")));
        }
        let rb = self.refcount_bits;
        if !rb.is_power_of_two() || rb > 64 {
            return Err(Error::InvalidArgument(format!("refcount_bits {rb} must be a power of two up to 64")));
        }
        if self.version != 2 && self.version != 3 {
            return Err(Error::InvalidArgument(format!("qcow2 version {}", self.version)));
        }
        if self.version == 2 {
            if rb != 16 {
                return Err(Error::InvalidArgument("different refcount widths than 16 bits require compat=1.1".into()));
            }
            if self.lazy_refcounts {
                return Err(Error::InvalidArgument(
                    "lazy refcounts only supported with compatibility level 1.1".into(),
                ));
            }
            if self.compression_type != CompressionType::Zlib {
                return Err(Error::InvalidArgument("compression_type requires compat=1.1".into()));
            }
        }
        if self.backing_format.is_some() && self.backing_file.is_none() {
            return Err(Error::InvalidArgument("backing format cannot be used without backing file".into()));
        }
        Ok((cs.trailing_zeros(), rb.trailing_zeros()))
    }
}

/// Creates (or truncates) a qcow2 image.
pub fn create(path: &Path, size: u64, prealloc: Preallocation, o: &CreateOptions) -> Result<()> {
    let (cluster_bits, refcount_order) = o.validate()?;
    if size > header::MAX_VIRTUAL_SIZE {
        return Err(Error::InvalidArgument(format!("image size {size} is too large")));
    }
    let cs = 1u64 << cluster_bits;
    let l2_entries = cs / 8;
    let l1_entries = Header::l1_entries_for(size, cluster_bits);
    if l1_entries * 8 > header::MAX_L1_BYTES {
        return Err(Error::InvalidArgument(format!(
            "image size {size} is too large for cluster size {cs} (L1 table over 32 MiB)"
        )));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
    let data_clusters = size.div_ceil(cs);
    let (l2_count, nd) = if prealloc == Preallocation::Off { (0, 0) } else { (l1_entries, data_clusters) };
    let per_block = (cs * 8) >> refcount_order;
    // Solve for refcount table (r clusters) and blocks (b) covering everything.
    let (mut r, mut b) = (1u64, 1u64);
    loop {
        let total = 1 + r + b + l1_clusters + l2_count + nd;
        let nb = total.div_ceil(per_block);
        let nr = (nb * 8).div_ceil(cs);
        if nb == b && nr == r {
            break;
        }
        b = nb;
        r = nr;
    }
    if r * cs > header::MAX_REFTABLE_BYTES {
        return Err(Error::InvalidArgument("image too large for these cluster and refcount sizes".into()));
    }
    let reftable_off = cs;
    let blocks_off = reftable_off + r * cs;
    let l1_off = blocks_off + b * cs;
    let l2_off = l1_off + l1_clusters * cs;
    let data_off = l2_off + l2_count * cs;
    let meta_end = data_off;
    let used_clusters = meta_end / cs + nd;

    let mut h = Header {
        version: o.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        crypt_method: 0,
        l1_size: l1_entries as u32,
        l1_table_offset: l1_off,
        refcount_table_offset: reftable_off,
        refcount_table_clusters: r as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: if o.lazy_refcounts { header::COMPAT_LAZY_REFCOUNTS } else { 0 },
        autoclear_features: 0,
        refcount_order,
        header_length: if o.version >= 3 { header::V3_HEADER_LEN_WRITTEN as u32 } else { 72 },
        compression_type: o.compression_type,
        backing_file: o.backing_file.clone(),
        backing_format: o.backing_format.clone(),
        feature_table: if o.version >= 3 { header::default_feature_table() } else { Vec::new() },
        unknown_extensions: Vec::new(),
    };
    // Drop the (optional) feature table if it does not fit the first cluster.
    let hdr = match h.clone().serialize() {
        Ok(b) => b,
        Err(_) => {
            h.feature_table.clear();
            h.serialize()?
        }
    };

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(format!("could not create '{}'", path.display())))?;
    let w = |buf: &[u8], off: u64| file.write_all_at(buf, off).map_err(io_err("could not write image"));

    let mut cluster0 = vec![0u8; cs as usize];
    cluster0[..hdr.len()].copy_from_slice(&hdr);
    w(&cluster0, 0)?;
    let mut table = vec![0u8; (r * cs) as usize];
    for i in 0..b {
        table[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&(blocks_off + i * cs).to_be_bytes());
    }
    w(&table, reftable_off)?;
    for i in 0..b {
        let mut blk = vec![0u8; cs as usize];
        let first = i * per_block;
        for c in first..(first + per_block).min(used_clusters) {
            rc_set(&mut blk, (c - first) as usize, refcount_order, 1);
        }
        w(&blk, blocks_off + i * cs)?;
    }
    let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
    if l2_count > 0 {
        for i in 0..l1_entries {
            let e = (l2_off + i * cs) | OFLAG_COPIED;
            l1[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_be_bytes());
        }
    }
    w(&l1, l1_off)?;
    if l2_count > 0 {
        // L2 tables, written in batches to keep syscalls few.
        let batch = (4 << 20) / cs.max(1);
        let mut t = 0;
        while t < l2_count {
            let n = batch.min(l2_count - t).max(1);
            let mut buf = vec![0u8; (n * cs) as usize];
            for k in 0..n {
                for j in 0..l2_entries {
                    let vc = (t + k) * l2_entries + j;
                    if vc >= nd {
                        break;
                    }
                    let e = (data_off + vc * cs) | OFLAG_COPIED;
                    let p = (k * cs + j * 8) as usize;
                    buf[p..p + 8].copy_from_slice(&e.to_be_bytes());
                }
            }
            w(&buf, l2_off + t * cs)?;
            t += n;
        }
    }
    let end = data_off + nd * cs;
    crate::raw::preallocate(&file, data_off, end, prealloc)?;
    file.set_len(end.max(meta_end)).map_err(io_err("could not resize image"))?;
    file.sync_all().map_err(io_err("sync failed"))?;
    Ok(())
}
