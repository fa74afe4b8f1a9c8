//! `rebase` (safe and -u unsafe) and `commit`.

use std::path::Path;

use image::qcow2::Qcow2;
use image::{BlockBackend, Format, OpenOptions};

use super::args::{Spec, parse};
use super::{ImgError, Progress, Res};

const STEP: u64 = 1 << 20;

fn open_q(path: &str, o: OpenOptions) -> Res<Qcow2> {
    Qcow2::open_with(Path::new(path), &o).map_err(|e| super::open_error(path, e))
}

pub fn rebase(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "fbFtT",
        short_flag: "pqucUh",
        long_val: &["object"],
        long_flag: &["force-share", "image-opts"],
    };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("rebase: expecting a filename"))?;
    let new_backing =
        p.val("b").ok_or_else(|| ImgError::usage("rebase: expecting -b backing_file (\"\" to remove it)"))?;
    if let Some(f) = p.val("f")
        && f != "qcow2"
    {
        return Err(ImgError::new(format!("rebase: '{f}' images have no backing file")));
    }
    let new_fmt = p.val("F").map(str::to_string);
    if p.flag("u") {
        let q = open_q(file, OpenOptions { no_backing: true, ..Default::default() })?;
        let name = if new_backing.is_empty() { None } else { Some(new_backing) };
        let fmt = match (&new_fmt, name) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(n)) => {
                image::probe(&image::qcow2::resolve_backing(Path::new(file), n)).ok().map(|f| f.name().to_string())
            }
            _ => None,
        };
        q.set_backing(name, fmt.as_deref()).map_err(|e| ImgError::ctx(file, e))?;
        return Ok(0);
    }
    // Safe mode: where the old and the new backing differ, copy the old content into the image.
    let q = open_q(file, OpenOptions::default())?;
    let new_img: Option<Box<dyn BlockBackend>> = if new_backing.is_empty() {
        None
    } else {
        let bp = image::qcow2::resolve_backing(Path::new(file), new_backing);
        let f = super::parse_format(new_fmt.as_deref())?;
        Some(
            image::open(&bp, f, true)
                .map_err(|e| ImgError::ctx(format!("could not open new backing file '{new_backing}'"), e))?,
        )
    };
    let size = q.size();
    let mut progress = Progress::new(p.flag("p") && !p.flag("q"));
    let mut old = vec![0u8; STEP as usize];
    let mut new = vec![0u8; STEP as usize];
    let mut off = 0u64;
    while off < size {
        let st = q.block_status(off, (size - off).min(STEP)).map_err(|e| ImgError::ctx(file, e))?;
        let len = st.length.max(1);
        if st.depth > 0 || !st.present {
            let o = &mut old[..len as usize];
            let n = &mut new[..len as usize];
            q.read_at(off, o).map_err(|e| ImgError::ctx(file, e))?;
            match &new_img {
                Some(b) => {
                    let bs = b.size();
                    let k = bs.saturating_sub(off).min(len) as usize;
                    if k > 0 {
                        b.read_at(off, &mut n[..k]).map_err(|e| ImgError::ctx(new_backing, e))?;
                    }
                    n[k..].fill(0);
                }
                None => n.fill(0),
            }
            if o != n {
                // Copy whole differing clusters.
                let cs = q.cluster_size() as usize;
                let mut i = 0;
                while i < o.len() {
                    let e = (i + cs - (off as usize + i) % cs).min(o.len());
                    if o[i..e] != n[i..e] {
                        q.write_at(off + i as u64, &o[i..e]).map_err(|e| ImgError::ctx(file, e))?;
                    }
                    i = e;
                }
            }
        }
        off += len;
        progress.update(off, size);
    }
    let fmt = match (&new_fmt, &new_img) {
        (Some(f), _) => Some(f.clone()),
        (None, Some(b)) => Some(b.format().name().to_string()),
        _ => None,
    };
    let name = if new_backing.is_empty() { None } else { Some(new_backing) };
    q.set_backing(name, fmt.as_deref()).map_err(|e| ImgError::ctx(file, e))?;
    progress.finish();
    Ok(0)
}

pub fn commit(a: &[String]) -> Res<i32> {
    let spec = Spec { short_val: "ftbr", short_flag: "dpqh", long_val: &["object"], long_flag: &["image-opts"] };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("commit: expecting a filename"))?;
    if p.val("f").is_some_and(|f| f != "qcow2") {
        return Err(ImgError::new("commit: the image has no backing file"));
    }
    let top = open_q(file, OpenOptions { no_backing: true, ..Default::default() })?;
    let h = top.header();
    let b = h.backing_file.clone().ok_or_else(|| ImgError::new(format!("commit: '{file}' has no backing file")))?;
    let bpath = image::qcow2::resolve_backing(Path::new(file), &b);
    if p.val("b").is_some_and(|base| image::qcow2::resolve_backing(Path::new(file), base) != bpath) {
        return Err(ImgError::new("commit: -b must name the immediate backing file"));
    }
    let bfmt = match h.backing_format.as_deref() {
        Some(f) => Some(Format::from_name(f).map_err(|e| ImgError::new(e.to_string()))?),
        None => None,
    };
    let base =
        image::open(&bpath, bfmt, false).map_err(|e| ImgError::ctx(format!("could not open backing file '{b}'"), e))?;
    let size = top.size().min(base.size());
    let mut progress = Progress::new(p.flag("p") && !p.flag("q"));
    let mut buf = vec![0u8; STEP as usize];
    let mut off = 0u64;
    while off < size {
        let st = top.block_status(off, (size - off).min(STEP)).map_err(|e| ImgError::ctx(file, e))?;
        let len = st.length.max(1);
        if st.present && st.depth == 0 {
            if st.zero && !st.data {
                base.write_zeroes(off, len, false).map_err(|e| ImgError::ctx(&b, e))?;
            } else {
                let d = &mut buf[..len as usize];
                top.read_at(off, d).map_err(|e| ImgError::ctx(file, e))?;
                base.write_at(off, d).map_err(|e| ImgError::ctx(&b, e))?;
            }
        }
        off += len;
        progress.update(off, size);
    }
    base.flush().map_err(|e| ImgError::ctx(&b, e))?;
    if !p.flag("d") {
        top.make_empty().map_err(|e| ImgError::ctx(file, e))?;
    }
    progress.finish();
    if !p.flag("q") {
        println!("Image committed.");
    }
    Ok(0)
}
