//! `convert`: copies one or more sources (concatenated) into a new or
//! existing (-n) image. Chunks are processed by `-m` worker threads; zero
//! runs of at least `-S` bytes are detected and left unallocated; `-c`
//! compresses each target cluster in the workers, outside the image lock.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use image::qcow2::Qcow2;
use image::{BlockBackend, CreateOptions, Extent, Format, OpenOptions};

use super::args::{Spec, parse, parse_size};
use super::create::apply_create_opts;
use super::{ImgError, Progress, Res, o_pairs};

const CHUNK: u64 = 2 << 20;

struct Job<'a> {
    sources: Vec<(u64, Box<dyn BlockBackend>)>,
    /// Allocation map of the concatenated sources, computed once up front
    /// (block status per chunk costs lseek calls that contend with the reads).
    map: Vec<Extent>,
    target: &'a dyn BlockBackend,
    qcow2_target: Option<&'a Qcow2>,
    total: u64,
    sparse: u64,
    compress: bool,
    /// Zero runs must be written explicitly (existing target or target with backing).
    must_zero: bool,
    target_has_backing: bool,
    cluster: u64,
}

impl Job<'_> {
    fn source_at(&self, off: u64) -> (&dyn BlockBackend, u64) {
        let mut i = self.sources.partition_point(|(start, _)| *start <= off) - 1;
        while i + 1 < self.sources.len() && self.sources[i + 1].0 <= off {
            i += 1;
        }
        let (start, s) = &self.sources[i];
        (s.as_ref(), off - start)
    }

    fn chunk(&self, off: u64, len: u64, buf: &mut Vec<u8>) -> Res<()> {
        let end = off + len;
        let mut i = self.map.partition_point(|e| e.start + e.length <= off);
        let mut pos = off;
        while pos < end && i < self.map.len() {
            let st = &self.map[i];
            let run = (st.start + st.length).min(end) - pos;
            if self.target_has_backing && !st.present {
                // Unallocated in the source's chain top: the new backing file provides it.
            } else if st.zero && !st.data && st.depth == 0 {
                if self.must_zero {
                    self.target.write_zeroes(pos, run, true).map_err(|e| ImgError::ctx("could not write target", e))?;
                }
            } else {
                let (src, soff) = self.source_at(pos);
                buf.resize(run as usize, 0);
                src.read_at(soff, buf).map_err(|e| ImgError::ctx("error while reading source", e))?;
                self.write_data(pos, buf)?;
            }
            pos += run;
            i += 1;
        }
        Ok(())
    }

    fn write_data(&self, off: u64, data: &[u8]) -> Result<(), ImgError> {
        let werr = |e| ImgError::ctx("error while writing target", e);
        if self.compress {
            let q = self.qcow2_target.expect("compression needs a qcow2 target");
            let cs = self.cluster;
            let ct = q.compression_type();
            let mut i = 0usize;
            while i < data.len() {
                let g = off + i as u64;
                let n = (cs - g % cs).min((data.len() - i) as u64) as usize;
                let piece = &data[i..i + n];
                if image::is_zero(piece) {
                    if self.must_zero {
                        self.target.write_zeroes(g, n as u64, true).map_err(werr)?;
                    }
                } else if g.is_multiple_of(cs) && (n as u64 == cs || g + n as u64 == self.total) {
                    let mut full = piece.to_vec();
                    full.resize(cs as usize, 0);
                    match image::qcow2::compress::compress(ct, &full).map_err(werr)? {
                        Some(c) => q.write_compressed_cluster(g / cs, &c).map_err(werr)?,
                        None => self.target.write_at(g, piece).map_err(werr)?,
                    }
                } else {
                    self.target.write_at(g, piece).map_err(werr)?;
                }
                i += n;
            }
            return Ok(());
        }
        if self.sparse == 0 {
            return self.target.write_at(off, data).map_err(werr);
        }
        // Write non-zero runs; skip (or zero) runs of whole sparse-size granules.
        let g = self.sparse as usize;
        let mut i = 0usize;
        while i < data.len() {
            let a = ((off as usize + i) / g + 1) * g - off as usize;
            let n = a.min(data.len()) - i;
            let zero = image::is_zero(&data[i..i + n]);
            let mut j = i + n;
            while j < data.len() {
                let m = g.min(data.len() - j);
                if image::is_zero(&data[j..j + m]) != zero {
                    break;
                }
                j += m;
            }
            if !zero {
                self.target.write_at(off + i as u64, &data[i..j]).map_err(werr)?;
            } else if self.must_zero {
                self.target.write_zeroes(off + i as u64, (j - i) as u64, true).map_err(werr)?;
            }
            i = j;
        }
        Ok(())
    }
}

pub fn convert(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "fOoBSmtTlsrF",
        short_flag: "cpnqWUhC",
        long_val: &["object", "target-image-opts", "bitmaps", "salvage"],
        long_flag: &["target-is-zero", "force-share", "image-opts", "skip-broken-bitmaps"],
    };
    let p = parse(a, &spec)?;
    if p.pos.len() < 2 {
        return Err(ImgError::usage("convert: expecting a source and a destination"));
    }
    if p.val("l").is_some() || p.val("s").is_some() {
        return Err(ImgError::new("convert: reading from internal snapshots (-l/-s) is not supported"));
    }
    let (srcs, dst) = p.pos.split_at(p.pos.len() - 1);
    let dst = &dst[0];
    let out_fmt = match p.val("O") {
        Some(f) => Format::from_name(f).map_err(|e| ImgError::new(e.to_string()))?,
        None => Format::Raw,
    };
    let compress = p.flag("c");
    if compress && out_fmt != Format::Qcow2 {
        return Err(ImgError::new("convert: compression (-c) needs the qcow2 output format"));
    }
    let sparse = match p.val("S") {
        Some(s) => parse_size(s)?,
        None => 4096,
    };
    let workers: usize = match p.val("m") {
        Some(m) => m
            .parse()
            .ok()
            .filter(|&n| (1..=16).contains(&n))
            .ok_or_else(|| ImgError::usage("-m must be between 1 and 16"))?,
        None => 8,
    };
    let mut sources = Vec::new();
    let mut total = 0u64;
    for s in srcs {
        let o = OpenOptions {
            format: super::parse_format(p.val("f"))?,
            readonly: true,
            sequential: true,
            ..Default::default()
        };
        let img = image::open_with(Path::new(s), &o).map_err(|e| super::open_error(s, e))?;
        let sz = img.size();
        sources.push((total, img));
        total += sz;
    }
    let backing = p.val("B").map(str::to_string);
    let no_create = p.flag("n");
    if !no_create {
        let mut opts = CreateOptions::default();
        apply_create_opts(&mut opts, &o_pairs(&p)?, out_fmt)?;
        opts.size = total;
        if let Some(b) = &backing {
            if out_fmt != Format::Qcow2 {
                return Err(ImgError::new("convert: -B needs the qcow2 output format"));
            }
            opts.qcow2.backing_file = Some(b.clone());
            if opts.qcow2.backing_format.is_none() {
                let bp = image::qcow2::resolve_backing(Path::new(dst), b);
                let bf =
                    image::probe(&bp).map_err(|e| ImgError::ctx(format!("could not open backing file '{b}'"), e))?;
                opts.qcow2.backing_format = Some(bf.name().to_string());
            }
        }
        image::create(Path::new(dst), out_fmt, &opts)
            .map_err(|e| ImgError::ctx(format!("could not create '{dst}'"), e))?;
    }
    // qemu-img converts with cache=unsafe unless told otherwise: no syncs.
    let cache_unsafe = match p.val("t") {
        None | Some("unsafe") => true,
        Some("writeback" | "none" | "writethrough" | "directsync") => false,
        Some(o) => return Err(ImgError::usage(format!("invalid cache mode '{o}'"))),
    };
    // Keep a qcow2 target concrete: compressed clusters need its own API.
    let (qcow2_target, other_target) = if out_fmt == Format::Qcow2 {
        let q = Qcow2::open_with(
            Path::new(dst),
            &OpenOptions { format: Some(Format::Qcow2), cache_unsafe, ..Default::default() },
        )
        .map_err(|e| super::open_error(dst, e))?;
        (Some(q), None)
    } else {
        let o = OpenOptions { format: Some(out_fmt), cache_unsafe, ..Default::default() };
        let t = image::open_with(Path::new(dst), &o).map_err(|e| super::open_error(dst, e))?;
        (None, Some(t))
    };
    let cluster = qcow2_target.as_ref().map(|q| q.cluster_size()).unwrap_or(65536);
    let target_has_backing = qcow2_target.as_ref().is_some_and(|q| q.header().backing_file.is_some());
    let tref: &dyn BlockBackend = match (&qcow2_target, &other_target) {
        (Some(q), _) => q,
        (None, Some(t)) => t.as_ref(),
        (None, None) => unreachable!("one target is always open"),
    };
    if tref.size() < total {
        return Err(ImgError::new(format!(
            "convert: target '{dst}' is smaller ({}) than the source ({total})",
            tref.size()
        )));
    }
    let mut map = Vec::new();
    for (start, img) in &sources {
        let size = img.size();
        let mut off = 0u64;
        while off < size {
            let e = img.block_status(off, size - off).map_err(|e| ImgError::ctx("could not read source", e))?;
            let len = e.length.max(1).min(size - off);
            let e = Extent { start: start + off, length: len, ..e };
            match map.last_mut() {
                Some(l) if same_status(l, &e) => l.length += len,
                _ => map.push(e),
            }
            off += len;
        }
    }
    let job = Job {
        map,
        sources,
        target: tref,
        qcow2_target: qcow2_target.as_ref(),
        total,
        sparse,
        compress,
        must_zero: (no_create && !p.flag("target-is-zero")) || target_has_backing,
        target_has_backing,
        cluster,
    };
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let err: Mutex<Option<ImgError>> = Mutex::new(None);
    let progress = Mutex::new(Progress::new(p.flag("p") && !p.flag("q")));
    let nchunks = total.div_ceil(CHUNK);
    std::thread::scope(|sc| {
        for _ in 0..workers.min(nchunks.max(1) as usize) {
            sc.spawn(|| {
                let mut buf = Vec::with_capacity(CHUNK as usize);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= nchunks || err.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    let off = i * CHUNK;
                    let len = CHUNK.min(total - off);
                    if let Err(e) = job.chunk(off, len, &mut buf) {
                        if let Ok(mut g) = err.lock() {
                            g.get_or_insert(e);
                        }
                        break;
                    }
                    let d = done.fetch_add(len, Ordering::Relaxed) + len;
                    if let Ok(mut pr) = progress.lock() {
                        pr.update(d, total);
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().unwrap_or(None) {
        return Err(e);
    }
    tref.flush().map_err(|e| ImgError::ctx(format!("could not flush '{dst}'"), e))?;
    if let Ok(mut pr) = progress.into_inner() {
        pr.finish();
    }
    Ok(0)
}

fn same_status(a: &Extent, b: &Extent) -> bool {
    a.present == b.present
        && a.zero == b.zero
        && a.data == b.data
        && a.depth == b.depth
        && a.start + a.length == b.start
}
