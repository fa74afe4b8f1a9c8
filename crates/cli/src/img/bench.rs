//! `bench`: qemu-img's I/O benchmark (sequential by default, `--random` for
//! uniformly random aligned offsets). `-d` requests are kept in flight by as
//! many worker threads (capped at 16).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use image::{BlockBackend, OpenOptions};

use super::args::{Spec, parse, parse_size};
use super::{ImgError, Res};

pub fn bench(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "cdfosStil",
        short_flag: "nqwhU",
        long_val: &["flush-interval", "pattern", "object"],
        long_flag: &["no-drain", "random", "force-share", "image-opts"],
    };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("bench: expecting a filename"))?;
    let num = |k: &str, d: u64| -> Res<u64> { p.val(k).map(parse_size).transpose().map(|v| v.unwrap_or(d)) };
    let count = num("c", 75000)?;
    let depth = num("d", 64)?.clamp(1, 1024);
    let bufsize = num("s", 4096)?.max(1);
    let step = num("S", bufsize)?;
    let start = num("o", 0)?;
    let flush_interval = num("flush-interval", 0)?;
    let write = p.flag("w");
    let random = p.flag("random");
    let pattern = num("pattern", 0xa5)? as u8;
    let direct = matches!(p.val("t"), Some("none") | Some("directsync"));
    let fmt = super::parse_format(p.val("f"))?;
    let o = OpenOptions { format: fmt, readonly: !write, direct, ..Default::default() };
    let img = image::open_with(Path::new(file), &o).map_err(|e| super::open_error(file, e))?;
    let size = img.size();
    if size < bufsize {
        return Err(ImgError::new("bench: the image is smaller than one request"));
    }
    if !p.flag("q") {
        println!(
            "Sending {count} {} requests, {bufsize} bytes each, {depth} in parallel (starting at offset {start}, step size {step})",
            if write { "write" } else { "read" }
        );
    }
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    let threads = depth.min(16) as usize;
    let err = std::sync::Mutex::new(None::<ImgError>);
    std::thread::scope(|sc| {
        for t in 0..threads {
            let (img, next, err) = (&img, &next, &err);
            sc.spawn(move || {
                let mut buf = vec![pattern; bufsize as usize];
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((t as u64 + 1) << 32);
                let slots = (size - bufsize) / bufsize.max(512) + 1;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let off = if random {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        (rng % slots) * bufsize.max(512)
                    } else {
                        (start + i * step) % (size - bufsize + 1)
                    };
                    let r = if write { img.write_at(off, &buf) } else { img.read_at(off, &mut buf) };
                    let r = r.and_then(|_| {
                        if write && flush_interval > 0 && (i + 1) % flush_interval == 0 { img.flush() } else { Ok(()) }
                    });
                    if let Err(e) = r {
                        if let Ok(mut g) = err.lock() {
                            g.get_or_insert(ImgError::ctx(format!("request at offset {off} failed"), e));
                        }
                        next.store(count, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().unwrap_or(None) {
        return Err(e);
    }
    if write {
        img.flush().map_err(|e| ImgError::ctx(file, e))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    if !p.flag("q") {
        println!("Run completed in {secs:.3} seconds.");
    }
    drop::<Box<dyn BlockBackend>>(img);
    Ok(0)
}
