//! `snapshot -l | -c NAME | -a NAME | -d NAME`.

use super::args::{Spec, parse};
use super::info::snapshot_table;
use super::{ImgError, Res, open_qcow2};

pub fn snapshot(a: &[String]) -> Res<i32> {
    let spec = Spec {
        short_val: "cadf",
        short_flag: "lqhU",
        long_val: &["object"],
        long_flag: &["force-share", "image-opts"],
    };
    let p = parse(a, &spec)?;
    let file = p.pos.first().ok_or_else(|| ImgError::usage("snapshot: expecting a filename"))?;
    let actions = ["l", "c", "a", "d"].iter().filter(|k| p.flag(k)).count();
    if actions != 1 {
        return Err(ImgError::usage("snapshot: give exactly one of -l, -c, -a, -d"));
    }
    let fmt = p.val("f");
    if p.flag("l") {
        let q = open_qcow2(file, fmt, true)?;
        let snaps = q.snapshots();
        if !snaps.is_empty() {
            print!("Snapshot list:\n{}", snapshot_table(&snaps));
        }
        return Ok(0);
    }
    let q = open_qcow2(file, fmt, false)?;
    let (what, r) = if let Some(n) = p.val("c") {
        ("create", q.snapshot_create(n))
    } else if let Some(n) = p.val("a") {
        ("apply", q.snapshot_apply(n))
    } else {
        ("delete", q.snapshot_delete(p.val("d").unwrap_or_default()))
    };
    r.map_err(|e| ImgError::ctx(format!("could not {what} snapshot in '{file}'"), e))?;
    Ok(0)
}
