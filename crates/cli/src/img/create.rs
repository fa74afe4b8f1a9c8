//! `create`, `resize` and `amend`.

use std::path::Path;

use image::qcow2::header::CompressionType;
use image::{CreateOptions, Format, Preallocation};

use super::args::{Spec, parse, parse_bool, parse_size};
use super::{ImgError, Res, o_pairs, open_image, open_qcow2};

/// Builds engine creation options from `-o` pairs (shared with convert).
pub fn apply_create_opts(opts: &mut CreateOptions, pairs: &[(String, String)], fmt: Format) -> Res<()> {
    for (k, v) in pairs {
        let q = &mut opts.qcow2;
        match k.as_str() {
            "size" => opts.size = parse_size(v)?,
            "preallocation" => {
                opts.preallocation = Preallocation::from_name(v).map_err(|e| ImgError::new(e.to_string()))?
            }
            "cluster_size" if fmt == Format::Qcow2 => q.cluster_size = parse_size(v)?,
            "compat" if fmt == Format::Qcow2 => {
                q.version = match v.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => return Err(ImgError::new(format!("invalid compatibility level '{v}' (use 0.10 or 1.1)"))),
                }
            }
            "lazy_refcounts" if fmt == Format::Qcow2 => q.lazy_refcounts = parse_bool(k, v)?,
            "refcount_bits" if fmt == Format::Qcow2 => {
                q.refcount_bits = v.parse().map_err(|_| ImgError::new(format!("invalid refcount_bits '{v}'")))?
            }
            "compression_type" if fmt == Format::Qcow2 => {
                q.compression_type = CompressionType::from_name(v).map_err(|e| ImgError::new(e.to_string()))?
            }
            "backing_file" if fmt == Format::Qcow2 => q.backing_file = Some(v.clone()),
            "backing_fmt" if fmt == Format::Qcow2 => q.backing_format = Some(v.clone()),
            "extended_l2" if fmt == Format::Qcow2 => {
                if parse_bool(k, v)? {
                    return Err(ImgError::new("extended_l2=on is not supported"));
                }
            }
            "encryption" | "encrypt.format" => return Err(ImgError::new("encrypted images are not supported")),
            "help" | "?" => {
                return Err(ImgError::new(format!("supported options for {}: {}", fmt.name(), supported(fmt))));
            }
            _ => return Err(ImgError::new(format!("invalid parameter '{k}' for format {}", fmt.name()))),
        }
    }
    Ok(())
}

fn supported(fmt: Format) -> &'static str {
    match fmt {
        Format::Raw => "size, preallocation",
        Format::Qcow2 => {
            "size, compat, backing_file, backing_fmt, cluster_size, preallocation, lazy_refcounts, refcount_bits, compression_type"
        }
    }
}

pub fn create(a: &[String]) -> Res<i32> {
    let spec = Spec { short_val: "foBbF", short_flag: "quh", long_val: &["object"], long_flag: &["help"] };
    let p = parse(a, &spec)?;
    let fmt = match p.val("f") {
        Some(f) => Format::from_name(f).map_err(|e| ImgError::new(e.to_string()))?,
        None => Format::Raw,
    };
    let file = p.pos.first().ok_or_else(|| ImgError::usage("create: expecting a filename"))?;
    let mut opts = CreateOptions::default();
    apply_create_opts(&mut opts, &o_pairs(&p)?, fmt)?;
    if let Some(b) = p.val("b").or(p.val("B")) {
        opts.qcow2.backing_file = Some(b.to_string());
    }
    if let Some(f) = p.val("F") {
        opts.qcow2.backing_format = Some(f.to_string());
    }
    let mut size_given = opts.size != 0 || o_pairs(&p)?.iter().any(|(k, _)| k == "size");
    if let Some(s) = p.pos.get(1) {
        opts.size = parse_size(s)?;
        size_given = true;
    }
    if p.pos.len() > 2 {
        return Err(ImgError::usage(format!("create: unexpected argument '{}'", p.pos[2])));
    }
    if opts.qcow2.backing_file.is_some() && fmt != Format::Qcow2 {
        return Err(ImgError::new(format!("'{}' does not support backing files", fmt.name())));
    }
    if let Some(b) = opts.qcow2.backing_file.clone() {
        let bpath = image::qcow2::resolve_backing(Path::new(file), &b);
        if !p.flag("u") || !size_given {
            let bimg = open_image(bpath.to_str().unwrap_or(&b), opts.qcow2.backing_format.as_deref(), true)
                .map_err(|e| ImgError::new(format!("could not open backing file: {}", e.msg)))?;
            if opts.qcow2.backing_format.is_none() {
                opts.qcow2.backing_format = Some(bimg.format().name().to_string());
            }
            if !size_given {
                opts.size = bimg.size();
                size_given = true;
            }
        }
    }
    if !size_given {
        return Err(ImgError::usage("create: image size must be specified"));
    }
    // Like QEMU, sizes are whole 512-byte sectors.
    opts.size = opts.size.next_multiple_of(512);
    if !p.flag("q") {
        println!("{}", formatting_line(file, fmt, &opts));
    }
    image::create(Path::new(file), fmt, &opts).map_err(|e| ImgError::ctx(file, e))?;
    Ok(0)
}

fn formatting_line(file: &str, fmt: Format, o: &CreateOptions) -> String {
    let prealloc = match o.preallocation {
        Preallocation::Off => "off",
        Preallocation::Metadata => "metadata",
        Preallocation::Falloc => "falloc",
        Preallocation::Full => "full",
    };
    let onoff = |b: bool| if b { "on" } else { "off" };
    match fmt {
        Format::Raw => {
            let mut s = format!("Formatting '{file}', fmt=raw size={}", o.size);
            if o.preallocation != Preallocation::Off {
                s.push_str(&format!(" preallocation={prealloc}"));
            }
            s
        }
        Format::Qcow2 => {
            let q = &o.qcow2;
            let mut s = format!("Formatting '{file}', fmt=qcow2 cluster_size={}", q.cluster_size);
            if q.version == 2 {
                s.push_str(" compat=0.10");
            }
            if o.preallocation != Preallocation::Off {
                s.push_str(&format!(" preallocation={prealloc}"));
            }
            s.push_str(&format!(" extended_l2=off compression_type={} size={}", q.compression_type.name(), o.size));
            if let Some(b) = &q.backing_file {
                s.push_str(&format!(" backing_file={b}"));
            }
            if let Some(f) = &q.backing_format {
                s.push_str(&format!(" backing_fmt={f}"));
            }
            s.push_str(&format!(" lazy_refcounts={} refcount_bits={}", onoff(q.lazy_refcounts), q.refcount_bits));
            s
        }
    }
}

pub fn resize(a: &[String]) -> Res<i32> {
    // A size like "-1G" would look like an option: take the last argument first.
    let mut a = a.to_vec();
    let size_arg = a.pop().ok_or_else(|| ImgError::usage("resize: expecting a filename and a size"))?;
    let spec = Spec {
        short_val: "f",
        short_flag: "qh",
        long_val: &["object", "preallocation"],
        long_flag: &["shrink", "image-opts"],
    };
    let p = parse(&a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("resize: expecting a filename"))?;
    let img = open_image(file, p.val("f"), true)?;
    let cur = img.size();
    let fmt = img.format();
    drop(img);
    let new = if let Some(r) = size_arg.strip_prefix('+') {
        cur.checked_add(parse_size(r)?).ok_or_else(|| ImgError::new("resize: size overflows"))?
    } else if let Some(r) = size_arg.strip_prefix('-') {
        cur.checked_sub(parse_size(r)?).ok_or_else(|| ImgError::new("resize: new size would be negative"))?
    } else {
        parse_size(&size_arg)?
    };
    let new = new.next_multiple_of(512);
    if new < cur && !p.flag("shrink") {
        return Err(ImgError::new("resize: use the --shrink option to perform a shrink operation"));
    }
    let prealloc = match p.val("preallocation") {
        Some(v) => Preallocation::from_name(v).map_err(|e| ImgError::new(e.to_string()))?,
        None => Preallocation::Off,
    };
    match fmt {
        Format::Raw => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .map_err(|e| ImgError::new(format!("could not open '{file}': {e}")))?;
            if new > cur {
                preallocate_tail(file, cur, new, prealloc)?;
            }
            f.set_len(new).map_err(|e| ImgError::new(format!("{file}: could not resize: {e}")))?;
        }
        Format::Qcow2 => {
            if prealloc != Preallocation::Off {
                return Err(ImgError::new("resize: preallocation is only supported for raw images"));
            }
            let q = open_qcow2(file, Some("qcow2"), false)?;
            q.resize(new).map_err(|e| ImgError::ctx(file, e))?;
        }
    }
    if !p.flag("q") {
        println!("Image resized.");
    }
    Ok(0)
}

fn preallocate_tail(file: &str, from: u64, to: u64, prealloc: Preallocation) -> Res<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).map_err(|e| ImgError::new(format!("{file}: {e}")))?;
    if prealloc == Preallocation::Full || prealloc == Preallocation::Falloc {
        let zeros = vec![0u8; 1 << 20];
        let mut off = from;
        while off < to {
            let n = (to - off).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], off).map_err(|e| ImgError::new(format!("{file}: {e}")))?;
            off += n as u64;
        }
    }
    Ok(())
}

pub fn amend(a: &[String]) -> Res<i32> {
    let spec = Spec { short_val: "fot", short_flag: "qph", long_val: &["object"], long_flag: &["force", "image-opts"] };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("amend: expecting a filename"))?;
    let pairs = o_pairs(&p)?;
    if pairs.is_empty() {
        return Err(ImgError::usage("amend: expecting -o options"));
    }
    let q = open_qcow2(file, p.val("f"), false)?;
    let h = q.header();
    let (mut version, mut lazy) = (None, None);
    for (k, v) in &pairs {
        match k.as_str() {
            "compat" => {
                version = Some(match v.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => return Err(ImgError::new(format!("invalid compatibility level '{v}'"))),
                })
            }
            "lazy_refcounts" => lazy = Some(parse_bool(k, v)?),
            "cluster_size" if parse_size(v)? == h.cluster_size() => {}
            "refcount_bits" if v.parse::<u32>().ok() == Some(h.refcount_bits()) => {}
            "backing_file" => {
                q.set_backing(Some(v), h.backing_format.as_deref()).map_err(|e| ImgError::ctx(file, e))?
            }
            "backing_fmt" => q.set_backing(h.backing_file.as_deref(), Some(v)).map_err(|e| ImgError::ctx(file, e))?,
            _ => return Err(ImgError::new(format!("amend: changing '{k}' is not supported"))),
        }
    }
    q.amend(version, lazy).map_err(|e| ImgError::ctx(file, e))?;
    Ok(0)
}
