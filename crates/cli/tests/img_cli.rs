//! `tern img` against the real qemu-img: same JSON fields, same exit codes,
//! images each tool makes are accepted by the other.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tern-img-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn p(&self, n: &str) -> String {
        self.0.join(n).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (exit code, stdout, stderr)
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(bin);
    if bin.ends_with("tern") {
        c.arg("img");
    }
    let o = c.args(args).output().unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn tern(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_tern"), args)
}

fn qemu(args: &[&str]) -> (i32, String, String) {
    run("qemu-img", args)
}

fn qemu_io(args: &[&str]) -> (i32, String, String) {
    run("qemu-io", args)
}

fn ok(r: (i32, String, String)) -> String {
    assert_eq!(r.0, 0, "failed: {}{}", r.1, r.2);
    r.1
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn write_file(path: &str, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 16 MiB raw file: random, zeroes, compressible text.
fn sample_raw(d: &Dir) -> String {
    let mut v = pattern(1, 4 << 20);
    v.resize(8 << 20, 0);
    for i in 0..(4 << 20) / 16 {
        v.extend_from_slice(format!("line {i:010}\n").as_bytes());
    }
    v.resize(16 << 20, 0);
    let p = d.p("sample.raw");
    write_file(&p, &v);
    p
}

#[test]
fn create_info_json_matches_qemu_img() {
    let d = Dir::new("info");
    for opts in [
        "",
        "cluster_size=4096",
        "compat=0.10",
        "lazy_refcounts=on",
        "refcount_bits=1",
        "compression_type=zstd",
        "cluster_size=2M,refcount_bits=64",
    ] {
        let (a, b) = (d.p("t.qcow2"), d.p("q.qcow2"));
        let mut ta = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            ta.extend(["-o", opts]);
        }
        let mut qa = ta.clone();
        ta.extend([a.as_str(), "100M"]);
        qa.extend([b.as_str(), "100M"]);
        ok(tern(&ta));
        ok(qemu(&qa));
        let jt = json(&ok(qemu(&["info", "--output", "json", &a])));
        let jq = json(&ok(qemu(&["info", "--output", "json", &b])));
        let ours = json(&ok(tern(&["info", "--output", "json", &a])));
        for k in ["virtual-size", "cluster-size", "format", "format-specific", "dirty-flag"] {
            assert_eq!(jt[k], jq[k], "{opts}: qemu-img sees {k} differently on our image");
            assert_eq!(ours[k], jt[k], "{opts}: our info {k} differs from qemu-img's");
        }
        ok(qemu(&["check", &a]));
    }
}

#[test]
fn backing_chain_info_and_snapshots() {
    let d = Dir::new("chain");
    let (base, top) = (d.p("base.qcow2"), d.p("top.qcow2"));
    ok(tern(&["create", "-q", "-f", "qcow2", &base, "64M"]));
    ok(tern(&["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", &top]));
    ok(tern(&["snapshot", "-c", "snap1", &top]));
    let ours = json(&ok(tern(&["info", "--output=json", "--backing-chain", &top])));
    let theirs = json(&ok(qemu(&["info", "--output=json", "--backing-chain", &top])));
    assert_eq!(ours.as_array().unwrap().len(), 2);
    for i in 0..2 {
        for k in ["virtual-size", "backing-filename", "backing-filename-format", "full-backing-filename", "format"] {
            assert_eq!(ours[i][k], theirs[i][k], "chain[{i}].{k}");
        }
    }
    assert_eq!(ours[0]["snapshots"][0]["name"], theirs[0]["snapshots"][0]["name"]);
    assert_eq!(ours[0]["snapshots"][0]["date-sec"], theirs[0]["snapshots"][0]["date-sec"]);
    let list = ok(tern(&["snapshot", "-l", &top]));
    assert!(list.contains("snap1"), "{list}");
    ok(qemu(&["check", &top]));
}

/// Reads the stored refcount table and returns the offset of the first block.
fn first_refblock(path: &str) -> u64 {
    let b = std::fs::read(path).unwrap();
    let rt = u64::from_be_bytes(b[48..56].try_into().unwrap()) as usize;
    u64::from_be_bytes(b[rt..rt + 8].try_into().unwrap())
}

fn set_refcount16(path: &str, cluster: u64, v: u16) {
    use std::os::unix::fs::FileExt;
    let blk = first_refblock(path);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&v.to_be_bytes(), blk + 2 * cluster).unwrap();
}

#[test]
fn check_exit_codes_and_repairs_agree_with_qemu_img() {
    let d = Dir::new("check");
    let img = d.p("c.qcow2");
    ok(qemu(&["create", "-q", "-f", "qcow2", &img, "16M"]));
    ok(qemu_io(&["-c", "write -P 1 0 1M", &img]));
    assert_eq!(tern(&["check", &img]).0, 0);
    // A leak: an unused cluster at the end of the file with refcount 1.
    let len = std::fs::metadata(&img).unwrap().len().next_multiple_of(65536);
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(len + 65536).unwrap();
    set_refcount16(&img, len / 65536, 1);
    assert_eq!(qemu(&["check", &img]).0, 3);
    let (rc, out, _) = tern(&["check", "--output", "json", &img]);
    assert_eq!(rc, 3, "{out}");
    assert_eq!(json(&out)["leaks"], 1);
    let (rc, out, _) = tern(&["check", "-r", "leaks", &img]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(qemu(&["check", &img]).0, 0);
    // A corruption: the L1 table's cluster (3) has refcount 0.
    set_refcount16(&img, 3, 0);
    assert_eq!(qemu(&["check", &img]).0, 2);
    let (rc, out, _) = tern(&["check", "--output=json", &img]);
    assert_eq!(rc, 2, "{out}");
    assert!(json(&out)["corruptions"].as_u64().unwrap() >= 1);
    assert_eq!(tern(&["check", "-r", "leaks", &img]).0, 2, "leak repair must not hide corruption");
    let (rc, out, err) = tern(&["check", "-r", "all", &img]);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("found and repaired"), "{out}");
    assert_eq!(qemu(&["check", &img]).0, 0);
    // Raw images cannot be checked: 63, like qemu-img.
    let raw = d.p("r.raw");
    write_file(&raw, &[0u8; 4096]);
    assert_eq!(tern(&["check", "-f", "raw", &raw]).0, 63);
}

#[test]
fn convert_plain_and_compressed_interoperate() {
    let d = Dir::new("convert");
    let raw = sample_raw(&d);
    for (extra, name) in [
        (vec![], "plain.qcow2"),
        (vec!["-c"], "zlib.qcow2"),
        (vec!["-c", "-o", "compression_type=zstd"], "zstd.qcow2"),
        (vec!["-o", "cluster_size=512"], "c512.qcow2"),
        (vec!["-m", "1", "-S", "0"], "full.qcow2"),
        (vec!["-o", "compat=0.10", "-c"], "v2c.qcow2"),
    ] {
        let out = d.p(name);
        let mut a = vec!["convert", "-p", "-f", "raw", "-O", "qcow2"];
        a.extend(extra.iter());
        a.extend([raw.as_str(), out.as_str()]);
        ok(tern(&a));
        ok(qemu(&["check", &out]));
        ok(qemu(&["compare", "-f", "raw", "-F", "qcow2", &raw, &out]));
        assert_eq!(tern(&["compare", &raw, &out]).0, 0);
    }
    let zi = json(&ok(qemu(&["check", "--output=json", &d.p("zlib.qcow2")])));
    assert!(zi["compressed-clusters"].as_u64().unwrap() > 0, "{zi}");
    // qemu-img's compressed image, converted back by us.
    let qc = d.p("qc.qcow2");
    ok(qemu(&["convert", "-c", "-O", "qcow2", &raw, &qc]));
    let back = d.p("back.raw");
    ok(tern(&["convert", "-O", "raw", &qc, &back]));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&raw).unwrap());
    // Existing target (-n) and a target with a backing file (-B).
    let tgt = d.p("n.qcow2");
    ok(qemu(&["create", "-q", "-f", "qcow2", &tgt, "16M"]));
    ok(qemu_io(&["-c", "write -P 0x55 0 16M", &tgt]));
    ok(tern(&["convert", "-n", "-O", "qcow2", &raw, &tgt]));
    ok(qemu(&["compare", &raw, &tgt]));
    let ovl = d.p("ovl.qcow2");
    ok(tern(&["convert", "-O", "qcow2", "-B", &d.p("plain.qcow2"), &raw, &ovl]));
    ok(qemu(&["compare", &raw, &ovl]));
    ok(qemu(&["check", &ovl]));
}

#[test]
fn compare_exit_codes() {
    let d = Dir::new("compare");
    let (a, b) = (d.p("a.raw"), d.p("b.qcow2"));
    write_file(&a, &pattern(3, 1 << 20));
    ok(tern(&["convert", "-O", "qcow2", &a, &b]));
    assert_eq!(tern(&["compare", &a, &b]).0, 0);
    ok(qemu_io(&["-c", "write -P 1 4096 1", &b]));
    let (rc, out, _) = tern(&["compare", &a, &b]);
    assert_eq!(rc, 1);
    assert!(out.contains("Content mismatch at offset 4096!"), "{out}");
    assert_eq!(tern(&["compare", &a, &d.p("missing")]).0, 2);
    // Size mismatch with a zero tail: same unless strict.
    let c = d.p("c.raw");
    let mut v = pattern(3, 1 << 20);
    v.resize(2 << 20, 0);
    write_file(&c, &v);
    assert_eq!(tern(&["compare", &a, &c]).0, 0);
    assert_eq!(tern(&["compare", "-s", &a, &c]).0, 1);
}

#[test]
fn map_and_measure_match_qemu_img() {
    let d = Dir::new("map");
    let raw = sample_raw(&d);
    let q = d.p("m.qcow2");
    ok(qemu(&["convert", "-O", "qcow2", &raw, &q]));
    let strip = |v: Value| -> Vec<(u64, u64, bool, bool, bool)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["present"].as_bool().unwrap(),
                    e["zero"].as_bool().unwrap(),
                    e["data"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let ours = strip(json(&ok(tern(&["map", "--output=json", &q]))));
    let theirs = strip(json(&ok(qemu(&["map", "--output=json", &q]))));
    assert_eq!(ours, theirs);
    for args in [
        vec!["-O", "qcow2", "--size", "1G"],
        vec!["-O", "qcow2", "-o", "cluster_size=4096", "--size", "10G"],
        vec!["-O", "qcow2", raw.as_str()],
        vec!["-O", "raw", "--size", "1G"],
    ] {
        let mut a = vec!["measure", "--output=json"];
        a.extend(args.iter());
        assert_eq!(json(&ok(tern(&a))), json(&ok(qemu(&a))), "measure {args:?}");
    }
}

#[test]
fn resize_amend_rebase_commit() {
    let d = Dir::new("misc");
    let (base, top) = (d.p("base.qcow2"), d.p("top.qcow2"));
    ok(tern(&["create", "-q", "-f", "qcow2", &base, "8M"]));
    ok(qemu_io(&["-c", "write -P 1 0 4M", &base]));
    ok(tern(&["create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top]));
    ok(qemu_io(&["-c", "write -P 2 1M 1M", &top]));
    let flat = d.p("flat.raw");
    ok(qemu(&["convert", "-O", "raw", &top, &flat]));
    // Safe rebase onto nothing: the top becomes standalone with the same content.
    ok(tern(&["rebase", "-b", "", &top]));
    ok(qemu(&["compare", &flat, &top]));
    ok(qemu(&["check", &top]));
    // Unsafe rebase back, then commit into the base.
    ok(tern(&["rebase", "-u", "-b", &base, "-F", "qcow2", &top]));
    ok(tern(&["commit", &top]));
    ok(qemu(&["compare", &flat, &base]));
    ok(qemu(&["check", &base]));
    // Resize: grow, refuse shrink without --shrink, shrink.
    ok(tern(&["resize", &base, "+8M"]));
    assert_eq!(tern(&["resize", &base, "4M"]).0, 1);
    ok(tern(&["resize", "--shrink", &base, "4M"]));
    let j = json(&ok(qemu(&["info", "--output=json", &base])));
    assert_eq!(j["virtual-size"], 4 << 20);
    ok(qemu(&["check", &base]));
    // Amend to v2 and lazy refcounts back on v3.
    ok(tern(&["amend", "-o", "compat=0.10", &base]));
    assert_eq!(json(&ok(qemu(&["info", "--output=json", &base])))["format-specific"]["data"]["compat"], "0.10");
    ok(tern(&["amend", "-o", "compat=1.1,lazy_refcounts=on", &base]));
    assert_eq!(json(&ok(qemu(&["info", "--output=json", &base])))["format-specific"]["data"]["lazy-refcounts"], true);
    ok(qemu(&["check", &base]));
    let (rc, _, err) = tern(&["amend", "-o", "cluster_size=4096", &base]);
    assert_eq!(rc, 1);
    assert!(err.starts_with("tern img: ") && err.lines().count() == 1, "{err}");
}

#[test]
fn errors_are_one_line_with_exit_1() {
    let d = Dir::new("errors");
    for args in [
        vec!["info", "/nonexistent/x.qcow2"],
        vec!["create", "-f", "qcow2", "x"],
        vec!["create", "-f", "vmdk", "x", "1M"],
        vec!["create", "-f", "qcow2", "-o", "cluster_size=3000", "y", "1M"],
        vec!["frobnicate"],
        vec!["snapshot", "-a", "nope", "/nonexistent"],
    ] {
        let a: Vec<&str> = args
            .iter()
            .map(|s| if *s == "x" || *s == "y" { Box::leak(d.p(s).into_boxed_str()) as &str } else { s })
            .collect();
        let (rc, _, err) = tern(&a);
        assert_eq!(rc, 1, "{args:?}: {err}");
        assert!(err.starts_with("tern img: ") && err.trim_end().lines().count() == 1, "{args:?}: {err}");
    }
    assert!(!Path::new(&d.p("y")).exists());
}

#[test]
fn bench_runs_and_reports() {
    let d = Dir::new("bench");
    let q = d.p("b.qcow2");
    ok(tern(&["create", "-q", "-f", "qcow2", &q, "64M"]));
    let out = ok(tern(&["bench", "-w", "-c", "2000", "-s", "4k", "--random", &q]));
    assert!(out.contains("Run completed in"), "{out}");
    let out = ok(tern(&["bench", "-c", "2000", "-d", "4", &q]));
    assert!(out.contains("Sending 2000 read requests, 4096 bytes each, 4 in parallel"), "{out}");
    ok(qemu(&["check", &q]));
}
