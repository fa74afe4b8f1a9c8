//! `compare` (exit 0 identical, 1 different, 2 error), `map` and `measure`.

use image::qcow2::header::Header;
use image::{BlockBackend, CreateOptions, Extent, Format};
use serde_json::json;

use super::args::{Spec, parse, parse_size};
use super::create::apply_create_opts;
use super::info::print_json;
use super::{ImgError, Progress, Res, o_pairs, open_image};

const STEP: u64 = 2 << 20;

pub fn compare(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "fFT",
        short_flag: "pqshU",
        long_val: &["object"],
        long_flag: &["force-share", "image-opts"],
    };
    let p = parse(a, &spec).map_err(|e| e.with_code(2))?;
    if p.pos.len() != 2 {
        return Err(ImgError::usage("compare: expecting two filenames").with_code(2));
    }
    let (f1, f2) = (&p.pos[0], &p.pos[1]);
    let a_img = open_image(f1, p.val("f"), true).map_err(|e| e.with_code(2))?;
    let b_img = open_image(f2, p.val("F").or(p.val("f")), true).map_err(|e| e.with_code(2))?;
    let strict = p.flag("s");
    let quiet = p.flag("q");
    let say = |m: String| {
        if !quiet {
            println!("{m}");
        }
    };
    let (sa, sb) = (a_img.size(), b_img.size());
    if sa != sb {
        if strict {
            say("Strict mode: Image size mismatch!".into());
            return Ok(1);
        }
        say("Warning: Image size mismatch!".into());
    }
    let common = sa.min(sb);
    let mut progress = Progress::new(p.flag("p") && !quiet);
    let mut x = vec![0u8; STEP as usize];
    let mut y = vec![0u8; STEP as usize];
    let err2 = |f: &str, e| ImgError::ctx(format!("error while reading '{f}'"), e).with_code(2);
    let mut off = 0u64;
    while off < common {
        let len = (common - off).min(STEP);
        let ea = a_img.block_status(off, len).map_err(|e| err2(f1, e))?;
        let eb = b_img.block_status(off, len).map_err(|e| err2(f2, e))?;
        let run = ea.length.min(eb.length).max(1);
        if strict && (ea.present != eb.present) {
            say(format!("Strict mode: Offset {off} block status mismatch!"));
            return Ok(1);
        }
        let both_zero = ea.zero && !ea.data && eb.zero && !eb.data;
        if !both_zero {
            let (xa, yb) = (&mut x[..run as usize], &mut y[..run as usize]);
            a_img.read_at(off, xa).map_err(|e| err2(f1, e))?;
            b_img.read_at(off, yb).map_err(|e| err2(f2, e))?;
            if xa != yb {
                let i = xa.iter().zip(yb.iter()).position(|(p, q)| p != q).unwrap_or(0) as u64;
                say(format!("Content mismatch at offset {}!", off + i));
                return Ok(1);
            }
        }
        off += run;
        progress.update(off, common);
    }
    // The longer image's tail must read as zeroes.
    let (longer, name) = if sa > sb { (&a_img, f1) } else { (&b_img, f2) };
    let end = sa.max(sb);
    while off < end {
        let len = (end - off).min(STEP);
        let e = longer.block_status(off, len).map_err(|e| err2(name, e))?;
        let run = e.length.max(1);
        if !e.zero || e.data {
            let d = &mut x[..run as usize];
            longer.read_at(off, d).map_err(|e| err2(name, e))?;
            if let Some(i) = d.iter().position(|&b| b != 0) {
                say(format!("Content mismatch at offset {}!", off + i as u64));
                return Ok(1);
            }
        }
        off += run;
    }
    progress.finish();
    say("Images are identical.".into());
    Ok(0)
}

fn same_kind(a: &Extent, b: &Extent) -> bool {
    a.present == b.present
        && a.zero == b.zero
        && a.data == b.data
        && a.compressed == b.compressed
        && a.depth == b.depth
        && match (a.host_offset, b.host_offset) {
            (Some(x), Some(y)) => x + a.length == y,
            (None, None) => true,
            _ => false,
        }
}

fn chain_file(img: &dyn BlockBackend, depth: u32) -> String {
    let mut cur = img;
    for _ in 0..depth {
        match cur.backing() {
            Some(b) => cur = b,
            None => break,
        }
    }
    cur.path().display().to_string()
}

pub fn map(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "f",
        short_flag: "hU",
        long_val: &["output", "object", "start-offset", "max-length"],
        long_flag: &["force-share", "image-opts"],
    };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("map: expecting a filename"))?;
    let json_out = match p.val("output").unwrap_or("human") {
        "json" => true,
        "human" => false,
        o => return Err(ImgError::usage(format!("--output must be human or json, not '{o}'"))),
    };
    let img = open_image(file, p.val("f"), true)?;
    let size = img.size();
    let start = p.val("start-offset").map(parse_size).transpose()?.unwrap_or(0).min(size);
    let end = match p.val("max-length") {
        Some(m) => start.saturating_add(parse_size(m)?).min(size),
        None => size,
    };
    let mut exts: Vec<Extent> = Vec::new();
    let mut off = start;
    while off < end {
        let e = img.block_status(off, (end - off).min(1 << 30)).map_err(|e| ImgError::ctx(file, e))?;
        let e = Extent { length: e.length.max(1), ..e };
        off += e.length;
        match exts.last_mut() {
            Some(last) if same_kind(last, &e) => last.length += e.length,
            _ => exts.push(e),
        }
    }
    if json_out {
        let lines: Vec<String> = exts
            .iter()
            .map(|e| {
                let mut s = format!(
                    "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                    e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
                );
                if let Some(o) = e.host_offset.filter(|_| e.data) {
                    s.push_str(&format!(", \"offset\": {o}"));
                }
                s.push('}');
                s
            })
            .collect();
        println!("[{}]", lines.join(",\n"));
    } else {
        println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
        for e in exts.iter().filter(|e| e.data) {
            if let Some(o) = e.host_offset {
                println!(
                    "{:<16}{:<16}{:<16}{}",
                    format!("{:#x}", e.start),
                    format!("{:#x}", e.length),
                    format!("{o:#x}"),
                    chain_file(img.as_ref(), e.depth)
                );
            }
        }
    }
    Ok(0)
}

/// Refcount table + block clusters needed to count `clusters` clusters (QEMU's formula).
fn refcount_metadata_clusters(clusters: u64, cs: u64, refcount_order: u32) -> u64 {
    let per_table = cs / 8;
    let per_block = cs * 8 / (1 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table);
        n = clusters + blocks + table;
        if n == last {
            return blocks + table;
        }
    }
}

/// Size of a fully preallocated qcow2 image of `size` bytes.
fn qcow2_full_size(size: u64, cs: u64, refcount_order: u32) -> u64 {
    let aligned = size.next_multiple_of(cs);
    let mut meta = cs;
    let nl2e = (aligned / cs).next_multiple_of(cs / 8);
    meta += nl2e * 8;
    let nl1e = (nl2e * 8 / cs).next_multiple_of(cs / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_clusters((meta + aligned) / cs, cs, refcount_order) * cs;
    meta + aligned
}

pub fn measure(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "fOol",
        short_flag: "hU",
        long_val: &["output", "size", "object"],
        long_flag: &["force-share", "image-opts"],
    };
    let p = parse(a, &spec)?;
    let json_out = match p.val("output").unwrap_or("human") {
        "json" => true,
        "human" => false,
        o => return Err(ImgError::usage(format!("--output must be human or json, not '{o}'"))),
    };
    let out_fmt = match p.val("O") {
        Some(f) => Format::from_name(f).map_err(|e| ImgError::new(e.to_string()))?,
        None => Format::Raw,
    };
    let mut opts = CreateOptions::default();
    apply_create_opts(&mut opts, &o_pairs(&p)?, out_fmt)?;
    let (size, data) = match (p.val("size"), p.pos.first()) {
        (Some(_), Some(_)) => return Err(ImgError::usage("measure: --size N cannot be used together with a filename")),
        (Some(s), None) => (parse_size(s)?, None),
        (None, Some(f)) => {
            let img = open_image(f, p.val("f"), true)?;
            let size = img.size();
            let cs = if out_fmt == Format::Qcow2 { opts.qcow2.cluster_size } else { 1 };
            // Data that must be stored: allocated, non-zero extents, rounded out to clusters.
            let mut req = 0u64;
            let mut off = 0u64;
            while off < size {
                let e = img.block_status(off, (size - off).min(1 << 30)).map_err(|e| ImgError::ctx(f, e))?;
                let len = e.length.max(1);
                if e.data && !e.zero {
                    let s = off / cs * cs;
                    let t = (off + len).next_multiple_of(cs).min(size.next_multiple_of(cs));
                    req += t - s;
                }
                off += len;
            }
            (size, Some(req))
        }
        (None, None) => return Err(ImgError::usage("measure: expecting --size N or a filename")),
    };
    let (required, full) = match out_fmt {
        Format::Raw => (data.unwrap_or(size), size),
        Format::Qcow2 => {
            let (cb, ro) = opts.qcow2.validate().map_err(|e| ImgError::new(e.to_string()))?;
            let cs = 1u64 << cb;
            if Header::l1_entries_for(size, cb) * 8 > image::qcow2::header::MAX_L1_BYTES {
                return Err(ImgError::new("measure: image size is too large for this cluster size"));
            }
            let full = qcow2_full_size(size, cs, ro);
            (full - size.next_multiple_of(cs) + data.unwrap_or(0), full)
        }
    };
    if json_out {
        print_json(&json!({"required": required, "fully-allocated": full}));
    } else {
        println!("required size: {required}\nfully allocated size: {full}");
    }
    Ok(0)
}
