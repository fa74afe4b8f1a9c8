//! The guest I/O path. Lookups hold the image lock briefly; reads and in-place
//! rewrites of clusters we own (OFLAG_COPIED) run outside it. Allocating writes
//! hold the lock while they allocate, fill and write the new clusters, then
//! point the L2 entries at them (the L2 update reaches the disk at flush time,
//! after the data and the refcounts).

use std::os::unix::fs::FileExt;

use super::Qcow2;
use super::compress;
use super::header::{CompressionType, MAX_HOST_OFFSET};
use super::state::{Cluster, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO, State, compressed_range};
use crate::raw::read_full;
use crate::{BlockBackend, Error, Extent, Result, io_err};

/// Largest run handled per lock acquisition (bounds latency for other queues).
const MAX_RUN_BYTES: u64 = 4 << 20;

#[derive(PartialEq, Eq)]
enum Kind {
    Data(u64),
    Zero,
    Unalloc,
    Compressed,
}

fn kind(c: Cluster) -> Kind {
    match c {
        Cluster::Normal { host, .. } => Kind::Data(host),
        Cluster::Zero { .. } => Kind::Zero,
        Cluster::Unallocated => Kind::Unalloc,
        Cluster::Compressed { .. } => Kind::Compressed,
    }
}

/// Length of the run starting at `off` (at most `max` bytes) whose clusters
/// are stored the same way (contiguous host clusters for data).
fn run_len(st: &mut State, img: &Qcow2, off: u64, max: u64, first: Cluster) -> Result<u64> {
    let cs = st.cluster_size();
    let in_off = off & (cs - 1);
    let mut run = (cs - in_off).min(max);
    let k0 = kind(first);
    if k0 == Kind::Compressed {
        return Ok(run);
    }
    let mut vc = (off >> img.cluster_bits) + 1;
    let mut expect = k0;
    while run < max && run < MAX_RUN_BYTES {
        if let Kind::Data(h) = expect {
            expect = Kind::Data(h + cs);
        }
        if kind(st.lookup(&img.file, vc)?) != expect {
            break;
        }
        run += cs.min(max - run);
        vc += 1;
    }
    Ok(run)
}

fn check_host(host: u64, len: u64) -> Result<()> {
    if host.checked_add(len).is_none_or(|e| e > MAX_HOST_OFFSET) {
        return Err(Error::Corrupt(format!("cluster offset {host:#x} is out of range")));
    }
    Ok(())
}

/// Reads guest bytes that are unallocated here: from the backing file, zero past its end.
fn read_backing(img: &Qcow2, off: u64, buf: &mut [u8]) -> Result<()> {
    match &img.backing {
        Some(b) => {
            let bsize = b.size();
            let n = bsize.saturating_sub(off).min(buf.len() as u64) as usize;
            if n > 0 {
                b.read_at(off, &mut buf[..n])?;
            }
            buf[n..].fill(0);
            Ok(())
        }
        None => {
            buf.fill(0);
            Ok(())
        }
    }
}

fn read_compressed(img: &Qcow2, ct: CompressionType, host: u64, sectors: u64) -> Result<Vec<u8>> {
    let cs = img.cluster_size();
    let (start, len) = compressed_range(host, sectors);
    check_host(start, len)?;
    let skip = (host - start) as usize;
    let mut raw = vec![0u8; len as usize];
    read_full(&img.file, &mut raw, start)?;
    let mut out = vec![0u8; cs as usize];
    compress::decompress(ct, &raw[skip..], &mut out)?;
    Ok(out)
}

pub fn read(img: &Qcow2, offset: u64, buf: &mut [u8]) -> Result<()> {
    let cs = img.cluster_size();
    let len = buf.len() as u64;
    let mut pos = 0u64;
    while pos < len {
        let off = offset + pos;
        let (c, run, ct) = {
            let mut st = img.lock();
            let c = st.lookup(&img.file, off >> img.cluster_bits)?;
            let run = run_len(&mut st, img, off, len - pos, c)?;
            (c, run, st.header.compression_type)
        };
        let out = &mut buf[pos as usize..(pos + run) as usize];
        match c {
            Cluster::Normal { host, .. } => {
                let h = host + (off & (cs - 1));
                check_host(h, run)?;
                read_full(&img.file, out, h)?;
            }
            Cluster::Zero { .. } => out.fill(0),
            Cluster::Unallocated => read_backing(img, off, out)?,
            Cluster::Compressed { host, sectors } => {
                let data = read_compressed(img, ct, host, sectors)?;
                let s = (off & (cs - 1)) as usize;
                out.copy_from_slice(&data[s..s + run as usize]);
            }
        }
        pos += run;
    }
    Ok(())
}

/// Current content of guest cluster `vc` (for copy-on-write of partial writes).
fn old_content(img: &Qcow2, ct: CompressionType, vc: u64, c: Cluster, out: &mut [u8]) -> Result<()> {
    match c {
        Cluster::Normal { host, .. } => {
            check_host(host, out.len() as u64)?;
            read_full(&img.file, out, host)
        }
        Cluster::Zero { .. } => {
            out.fill(0);
            Ok(())
        }
        Cluster::Unallocated => read_backing(img, vc << img.cluster_bits, out),
        Cluster::Compressed { host, sectors } => {
            let d = read_compressed(img, ct, host, sectors)?;
            out.copy_from_slice(&d);
            Ok(())
        }
    }
}

pub fn write(img: &Qcow2, offset: u64, buf: &[u8]) -> Result<()> {
    let cs = img.cluster_size();
    let cb = img.cluster_bits;
    let len = buf.len() as u64;
    let mut pos = 0u64;
    while pos < len {
        let off = offset + pos;
        let vc = off >> cb;
        let in_off = off & (cs - 1);
        let mut st = img.lock();
        let c = st.lookup(&img.file, vc)?;
        if let Cluster::Normal { host, copied: true } = c {
            // In place: extend over following clusters we own contiguously.
            let mut run = (cs - in_off).min(len - pos);
            let mut next = host + cs;
            let mut v = vc + 1;
            while pos + run < len && run < MAX_RUN_BYTES {
                if st.lookup(&img.file, v)? != (Cluster::Normal { host: next, copied: true }) {
                    break;
                }
                run += cs.min(len - pos - run);
                next += cs;
                v += 1;
            }
            let h = host + in_off;
            check_host(h, run)?;
            if st.overlaps_metadata(h, run) {
                return Err(Error::Corrupt(format!("data cluster {host:#x} overlaps metadata; refusing to write")));
            }
            drop(st);
            img.file.write_all_at(&buf[pos as usize..(pos + run) as usize], h).map_err(io_err("write failed"))?;
            pos += run;
            continue;
        }
        // Allocate a run of clusters that cannot be written in place.
        let mut olds = vec![c];
        let mut covered = (cs - in_off).min(len - pos);
        while pos + covered < len && (olds.len() as u64) * cs < MAX_RUN_BYTES {
            let nc = st.lookup(&img.file, vc + olds.len() as u64)?;
            if matches!(nc, Cluster::Normal { copied: true, .. }) {
                break;
            }
            olds.push(nc);
            covered += cs.min(len - pos - covered);
        }
        let k = olds.len() as u64;
        if st.inflight.iter().any(|&(s, n)| s < vc + k && vc < s + n) {
            // Another writer is allocating some of these clusters: wait for it
            // to publish its L2 entries, then look them up again.
            drop(img.alloc_done.wait(st).unwrap_or_else(|p| p.into_inner()));
            continue;
        }
        // Reserve host clusters and the guest range, then fill and write the data
        // without the lock so other queues proceed. The L2 entries are published
        // only after the data is written: a reader or a flush never sees a
        // mapping to unwritten clusters.
        let host = st.alloc_data(&img.file, k)?;
        st.inflight.push((vc, k));
        let ct = st.header.compression_type;
        drop(st);
        let filled = (|| -> Result<()> {
            let src = &buf[pos as usize..(pos + covered) as usize];
            if in_off == 0 && covered == k * cs {
                // Whole clusters: write straight from the caller's buffer.
                return img.file.write_all_at(src, host).map_err(io_err("write failed"));
            }
            let mut data = vec![0u8; (k * cs) as usize];
            if in_off != 0 || (k == 1 && covered < cs) {
                old_content(img, ct, vc, olds[0], &mut data[..cs as usize])?;
            }
            let end_in = (in_off + covered) % cs;
            if k > 1 && end_in != 0 {
                let last = ((k - 1) * cs) as usize;
                old_content(img, ct, vc + k - 1, olds[k as usize - 1], &mut data[last..])?;
            }
            data[in_off as usize..(in_off + covered) as usize].copy_from_slice(src);
            img.file.write_all_at(&data, host).map_err(io_err("write failed"))
        })();
        let mut st = img.lock();
        st.inflight.retain(|&r| r != (vc, k));
        let published = filled.and_then(|_| {
            st.file_len = st.file_len.max(host + k * cs);
            for i in 0..k {
                let old = st.set_l2_entry(&img.file, vc + i, super::normal_entry(host + i * cs))?;
                st.free_entry(old)?;
            }
            Ok(())
        });
        drop(st);
        img.alloc_done.notify_all();
        published?;
        pos += covered;
    }
    Ok(())
}

/// Iterates the clusters fully covered by `[offset, offset+len)` (the last
/// cluster counts as covered when the range reaches the end of the disk), and
/// writes the partial head and tail with `partial`.
fn for_full_clusters(
    img: &Qcow2,
    offset: u64,
    len: u64,
    mut partial: impl FnMut(u64, u64) -> Result<()>,
    mut full: impl FnMut(&mut State, u64) -> Result<()>,
) -> Result<()> {
    let cs = img.cluster_size();
    let size = img.size();
    let end = offset + len;
    let mut off = offset;
    while off < end {
        let cstart = off & !(cs - 1);
        let cend = (cstart + cs).min(size);
        let chunk_end = end.min(cstart + cs);
        if off == cstart && chunk_end >= cend {
            let mut st = img.lock();
            full(&mut st, cstart >> img.cluster_bits)?;
        } else {
            partial(off, chunk_end - off)?;
        }
        off = chunk_end;
    }
    Ok(())
}

pub fn write_zeroes(img: &Qcow2, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
    let v3 = img.lock().header.version >= 3;
    let has_backing = img.backing.is_some();
    let zeros = vec![0u8; img.cluster_size().max(1 << 20) as usize];
    if !v3 && has_backing {
        // v2 has no zero flag and unallocated clusters would show the backing file.
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let n = (end - off).min(zeros.len() as u64);
            write(img, off, &zeros[..n as usize])?;
            off += n;
        }
        return Ok(());
    }
    for_full_clusters(
        img,
        offset,
        len,
        |o, l| write(img, o, &zeros[..l as usize]),
        |st, vc| {
            let c = st.lookup(&img.file, vc)?;
            match c {
                Cluster::Zero { host: None, .. } => return Ok(()),
                Cluster::Unallocated if !has_backing => return Ok(()),
                _ => {}
            }
            if !v3 {
                let old = st.set_l2_entry(&img.file, vc, 0)?;
                return st.free_entry(old);
            }
            let entry = match c {
                Cluster::Normal { host, copied: true } if !may_unmap => host | OFLAG_COPIED | OFLAG_ZERO,
                Cluster::Zero { host: Some(h), copied: true } if !may_unmap => h | OFLAG_COPIED | OFLAG_ZERO,
                _ => OFLAG_ZERO,
            };
            let old = st.set_l2_entry(&img.file, vc, entry)?;
            if entry == OFLAG_ZERO {
                st.free_entry(old)?;
            }
            Ok(())
        },
    )
}

pub fn discard(img: &Qcow2, offset: u64, len: u64) -> Result<()> {
    let v3 = img.lock().header.version >= 3;
    let has_backing = img.backing.is_some();
    for_full_clusters(
        img,
        offset,
        len,
        |_, _| Ok(()),
        |st, vc| {
            let e = st.l2_entry(&img.file, vc)?;
            let new = if has_backing {
                if !v3 {
                    return Ok(());
                }
                OFLAG_ZERO
            } else {
                0
            };
            if e == new {
                return Ok(());
            }
            let old = st.set_l2_entry(&img.file, vc, new)?;
            st.free_entry(old)
        },
    )
}

pub fn block_status(img: &Qcow2, offset: u64, len: u64) -> Result<Extent> {
    let cs = img.cluster_size();
    let (c, run) = {
        let mut st = img.lock();
        let c = st.lookup(&img.file, offset >> img.cluster_bits)?;
        let run = run_len(&mut st, img, offset, len, c)?;
        (c, run)
    };
    let mut ext = Extent {
        start: offset,
        length: run,
        present: true,
        zero: false,
        data: true,
        compressed: false,
        host_offset: None,
        depth: 0,
    };
    match c {
        Cluster::Normal { host, .. } => ext.host_offset = Some(host + (offset & (cs - 1))),
        Cluster::Zero { .. } => {
            ext.zero = true;
            ext.data = false;
        }
        Cluster::Compressed { .. } => ext.compressed = true,
        Cluster::Unallocated => match &img.backing {
            Some(b) if offset < b.size() => {
                let sub = b.block_status(offset, run.min(b.size() - offset))?;
                ext = Extent { start: offset, depth: sub.depth + 1, ..sub };
            }
            Some(_) => {
                ext.present = false;
                ext.zero = true;
                ext.data = false;
                ext.depth = 1;
            }
            None => {
                ext.present = false;
                ext.zero = true;
                ext.data = false;
            }
        },
    }
    Ok(ext)
}

/// Stores an already compressed cluster, packing several into one host cluster.
pub fn write_compressed(img: &Qcow2, vc: u64, data: &[u8]) -> Result<()> {
    if img.readonly {
        return Err(Error::ReadOnly);
    }
    let cs = img.cluster_size();
    let cb = img.cluster_bits;
    if data.is_empty() || data.len() as u64 > cs - 512 {
        return Err(Error::InvalidArgument("compressed cluster is too large".into()));
    }
    let len = data.len() as u64;
    let mut st = img.lock();
    let cur = st.compress_cursor;
    let max_rc = super::refcount::max_refcount(st.rc.order());
    let host = if cur != 0
        && (cur & (cs - 1)) + len <= cs
        && (cur & (cs - 1)) != 0
        && st.rc.get(&img.file, cur >> cb)? < max_rc
    {
        st.rc.update(&img.file, cur >> cb, 1)?;
        cur
    } else {
        st.rc.alloc(&img.file, 1)?
    };
    img.file.write_all_at(data, host).map_err(io_err("write failed"))?;
    st.file_len = st.file_len.max(host + len);
    let x = 62 - (cb - 8);
    let extra_sectors = ((host + len - 1) >> 9) - (host >> 9);
    let entry = OFLAG_COMPRESSED | (extra_sectors << x) | host;
    let old = st.set_l2_entry(&img.file, vc, entry)?;
    st.free_entry(old)?;
    let next = host + len;
    st.compress_cursor = if next & (cs - 1) == 0 { 0 } else { next };
    Ok(())
}
