//! `check`: exit 0 clean, 1 the check could not complete, 2 corruptions,
//! 3 leaks only, 63 the format cannot be checked (qemu-img's codes).

use std::path::Path;

use image::qcow2::Qcow2;
use image::qcow2::check::{CheckResult, Repair};
use image::{Format, OpenOptions};
use serde_json::{Map, Value, json};

use super::args::{Spec, parse};
use super::info::print_json;
use super::{ImgError, Res};

pub fn check(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "fr",
        short_flag: "qhU",
        long_val: &["output", "object"],
        long_flag: &["force-share", "image-opts"],
    };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("check: expecting a filename"))?;
    let json_out = match p.val("output").unwrap_or("human") {
        "json" => true,
        "human" => false,
        o => return Err(ImgError::usage(format!("--output must be human or json, not '{o}'"))),
    };
    let repair = match p.val("r") {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(o) => return Err(ImgError::usage(format!("-r must be 'leaks' or 'all', not '{o}'"))),
    };
    let fmt = match super::parse_format(p.val("f"))? {
        Some(f) => f,
        None => image::probe(Path::new(file)).map_err(|e| super::open_error(file, e))?,
    };
    if fmt != Format::Qcow2 {
        return Err(ImgError::new(format!("'{file}': this image format ({}) does not support checks", fmt.name()))
            .with_code(63));
    }
    let o = OpenOptions {
        format: Some(Format::Qcow2),
        readonly: repair == Repair::None,
        no_backing: true,
        repair: true,
        ..Default::default()
    };
    let q = Qcow2::open_with(Path::new(file), &o).map_err(|e| super::open_error(file, e))?;
    let r =
        image::qcow2::check::check(&q, repair).map_err(|e| ImgError::ctx(format!("check of '{file}' failed"), e))?;
    drop(q);
    let code = if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    };
    if json_out {
        print_json(&to_json(&r, file));
    } else if !p.flag("q") {
        for m in &r.messages {
            eprintln!("{m}");
        }
        print!("{}", human(&r, repair != Repair::None));
    }
    Ok(code)
}

fn to_json(r: &CheckResult, file: &str) -> Value {
    let mut m = Map::new();
    if r.image_end_offset > 0 {
        m.insert("image-end-offset".into(), json!(r.image_end_offset));
    }
    m.insert("total-clusters".into(), json!(r.total_clusters));
    m.insert("check-errors".into(), json!(r.check_errors));
    for (k, v) in [
        ("leaks", r.leaks),
        ("corruptions", r.corruptions),
        ("leaks-fixed", r.leaks_fixed),
        ("corruptions-fixed", r.corruptions_fixed),
    ] {
        if v > 0 {
            m.insert(k.into(), json!(v));
        }
    }
    if r.total_clusters > 0 && r.allocated_clusters > 0 {
        m.insert("allocated-clusters".into(), json!(r.allocated_clusters));
        if r.fragmented_clusters > 0 {
            m.insert("fragmented-clusters".into(), json!(r.fragmented_clusters));
        }
        if r.compressed_clusters > 0 {
            m.insert("compressed-clusters".into(), json!(r.compressed_clusters));
        }
    }
    m.insert("filename".into(), json!(file));
    m.insert("format".into(), json!("qcow2"));
    Value::Object(m)
}

fn human(r: &CheckResult, repaired: bool) -> String {
    let mut s = String::new();
    if repaired && (r.leaks_fixed > 0 || r.corruptions_fixed > 0) {
        s.push_str(&format!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
            r.leaks_fixed, r.corruptions_fixed
        ));
    }
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            s.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            ));
        }
        if r.leaks > 0 {
            s.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            ));
        }
        if r.check_errors > 0 {
            s.push_str(&format!("\n{} internal errors have occurred during the check.\n", r.check_errors));
        }
    }
    if r.total_clusters > 0 && r.allocated_clusters > 0 {
        let a = r.allocated_clusters as f64;
        s.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            a * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / a,
            r.compressed_clusters as f64 * 100.0 / a
        ));
    }
    if r.image_end_offset > 0 {
        s.push_str(&format!("Image end offset: {}\n", r.image_end_offset));
    }
    s
}
