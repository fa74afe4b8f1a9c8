//! `info`: the same fields, names and layout as qemu-img.

use std::path::Path;

use image::qcow2::Qcow2;
use image::qcow2::snapshot::Snapshot;
use image::{BlockBackend, Format, OpenOptions};
use serde_json::{Map, Value, json};

use super::args::{Spec, parse};
use super::{ImgError, Res, human_size};

pub fn print_json(v: &Value) {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("serialising JSON to memory cannot fail");
    println!("{}", String::from_utf8_lossy(&buf));
}

struct ImageInfo {
    json: Map<String, Value>,
    human: String,
    backing: Option<(String, Option<String>)>,
}

fn open_no_backing(path: &str, fmt: Option<Format>) -> Res<Box<dyn BlockBackend>> {
    let o = OpenOptions { format: fmt, readonly: true, no_backing: true, repair: true, ..Default::default() };
    image::open_with(Path::new(path), &o).map_err(|e| super::open_error(path, e))
}

pub fn vm_clock(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let secs = ms / 1000;
    format!("{:04}:{:02}:{:02}.{:03}", secs / 3600, (secs / 60) % 60, secs % 60, ms % 1000)
}

pub fn local_date(sec: u32) -> String {
    let t = sec as libc::time_t;
    // SAFETY: zeroed tm is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

pub fn snapshot_table(snaps: &[Snapshot]) -> String {
    let mut s =
        format!("{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n", "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT");
    for sn in snaps {
        let icount = sn.icount.filter(|&i| i != u64::MAX).map(|i| i.to_string()).unwrap_or_default();
        s.push_str(&format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            sn.id,
            sn.name,
            human_size(sn.vm_state_size),
            local_date(sn.date_sec),
            vm_clock(sn.vm_clock_nsec),
            icount
        ));
    }
    s
}

pub fn snapshot_json(sn: &Snapshot) -> Value {
    let mut m = Map::new();
    if let Some(i) = sn.icount.filter(|&i| i != u64::MAX) {
        m.insert("icount".into(), json!(i));
    }
    m.insert("vm-clock-nsec".into(), json!(sn.vm_clock_nsec % 1_000_000_000));
    m.insert("name".into(), json!(sn.name));
    m.insert("date-sec".into(), json!(sn.date_sec));
    m.insert("date-nsec".into(), json!(sn.date_nsec));
    m.insert("vm-clock-sec".into(), json!(sn.vm_clock_nsec / 1_000_000_000));
    m.insert("id".into(), json!(sn.id));
    m.insert("vm-state-size".into(), json!(sn.vm_state_size));
    Value::Object(m)
}

fn gather(path: &str, fmt: Option<Format>) -> Res<ImageInfo> {
    let img = open_no_backing(path, fmt)?;
    let size = img.size();
    let actual = img.allocated_size().map_err(|e| ImgError::ctx(path, e))?;
    let mut j = Map::new();
    let mut h = format!(
        "image: {path}\nfile format: {}\nvirtual size: {} ({size} bytes)\ndisk size: {}\n",
        img.format().name(),
        human_size(size),
        human_size(actual)
    );
    j.insert("virtual-size".into(), json!(size));
    j.insert("filename".into(), json!(path));
    let mut backing = None;
    if img.format() == Format::Qcow2 {
        drop(img);
        let o = OpenOptions {
            format: Some(Format::Qcow2),
            readonly: true,
            no_backing: true,
            repair: true,
            ..Default::default()
        };
        let q = Qcow2::open_with(Path::new(path), &o).map_err(|e| super::open_error(path, e))?;
        let hd = q.header();
        j.insert("cluster-size".into(), json!(hd.cluster_size()));
        h.push_str(&format!("cluster_size: {}\n", hd.cluster_size()));
        if let Some(b) = &hd.backing_file {
            let full = image::qcow2::resolve_backing(Path::new(path), b);
            j.insert("backing-filename".into(), json!(b));
            j.insert("full-backing-filename".into(), json!(full.to_string_lossy()));
            h.push_str(&format!("backing file: {b}"));
            if full.to_string_lossy() != b.as_str() {
                h.push_str(&format!(" (actual path: {})", full.display()));
            }
            h.push('\n');
            if let Some(f) = &hd.backing_format {
                j.insert("backing-filename-format".into(), json!(f));
                h.push_str(&format!("backing file format: {f}\n"));
            }
            backing = Some((full.to_string_lossy().into_owned(), hd.backing_format.clone()));
        }
        let snaps = q.snapshots();
        if !snaps.is_empty() {
            j.insert("snapshots".into(), Value::Array(snaps.iter().map(snapshot_json).collect()));
            h.push_str("Snapshot list:\n");
            h.push_str(&snapshot_table(&snaps));
        }
        j.insert("format".into(), json!("qcow2"));
        j.insert("actual-size".into(), json!(actual));
        let mut d = Map::new();
        h.push_str("Format specific information:\n");
        if hd.version >= 3 {
            d.insert("compat".into(), json!("1.1"));
            d.insert("compression-type".into(), json!(hd.compression_type.name()));
            d.insert("lazy-refcounts".into(), json!(hd.lazy_refcounts()));
            d.insert("refcount-bits".into(), json!(hd.refcount_bits()));
            d.insert("corrupt".into(), json!(hd.is_corrupt()));
            d.insert("extended-l2".into(), json!(false));
            h.push_str(&format!(
                "    compat: 1.1\n    compression type: {}\n    lazy refcounts: {}\n    refcount bits: {}\n    corrupt: {}\n    extended l2: false\n",
                hd.compression_type.name(),
                hd.lazy_refcounts(),
                hd.refcount_bits(),
                hd.is_corrupt()
            ));
        } else {
            d.insert("compat".into(), json!("0.10"));
            d.insert("compression-type".into(), json!("zlib"));
            d.insert("refcount-bits".into(), json!(hd.refcount_bits()));
            h.push_str(&format!(
                "    compat: 0.10\n    compression type: zlib\n    refcount bits: {}\n",
                hd.refcount_bits()
            ));
        }
        j.insert("format-specific".into(), json!({"type": "qcow2", "data": Value::Object(d)}));
        j.insert("dirty-flag".into(), json!(hd.is_dirty()));
    } else {
        j.insert("format".into(), json!("raw"));
        j.insert("actual-size".into(), json!(actual));
        j.insert("dirty-flag".into(), json!(false));
    }
    Ok(ImageInfo { json: j, human: h, backing })
}

pub fn info(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "f",
        short_flag: "hU",
        long_val: &["output", "object"],
        long_flag: &["backing-chain", "force-share", "image-opts", "limits"],
    };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("info: expecting a filename"))?;
    let json_out = match p.val("output").unwrap_or("human") {
        "json" => true,
        "human" => false,
        o => return Err(ImgError::usage(format!("--output must be human or json, not '{o}'"))),
    };
    let mut fmt = super::parse_format(p.val("f"))?;
    let mut cur = file.clone();
    let mut infos = Vec::new();
    let mut seen = Vec::new();
    loop {
        let canon = std::fs::canonicalize(&cur).map_err(|e| ImgError::new(format!("could not open '{cur}': {e}")))?;
        if seen.contains(&canon) {
            return Err(ImgError::new(format!("backing chain loop: '{cur}' is its own ancestor")));
        }
        seen.push(canon);
        let i = gather(&cur, fmt)?;
        let next = i.backing.clone();
        infos.push(i);
        match next {
            Some((b, f)) if p.flag("backing-chain") => {
                cur = b;
                fmt = super::parse_format(f.as_deref())?;
                if seen.len() > image::MAX_CHAIN_DEPTH {
                    return Err(ImgError::new("backing chain is too deep"));
                }
            }
            _ => break,
        }
    }
    if json_out {
        if p.flag("backing-chain") {
            print_json(&Value::Array(infos.into_iter().map(|i| Value::Object(i.json)).collect()));
        } else {
            print_json(&Value::Object(infos.remove(0).json));
        }
    } else {
        let parts: Vec<String> = infos.into_iter().map(|i| i.human).collect();
        print!("{}", parts.join("\n"));
    }
    Ok(0)
}
