//! `tern check` against the real host: the JSON shape, the text format, the
//! exit status, and that this host's /dev/kvm passes.

use std::process::Command;

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn check_json(extra: &[&str]) -> (serde_json::Value, i32) {
    let out = tern().arg("check").arg("--json").args(extra).output().expect("run tern check");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    (v, out.status.code().expect("exit code"))
}

#[test]
fn json_report_has_the_documented_shape_and_kvm_passes() {
    let (v, code) = check_json(&[]);
    let checks = v["checks"].as_array().expect("checks array");
    assert!(checks.len() >= 15, "expected one entry per check, got {}", checks.len());
    let mut fails = 0;
    for c in checks {
        let status = c["status"].as_str().expect("status string");
        assert!(["PASS", "WARN", "FAIL"].contains(&status), "{c}");
        assert!(!c["check"].as_str().expect("check name").is_empty(), "{c}");
        assert!(!c["detail"].as_str().expect("detail").is_empty(), "{c}");
        match status {
            "PASS" => assert!(c["fix"].is_null(), "a PASS has no fix: {c}"),
            _ => assert!(!c["fix"].as_str().expect("WARN/FAIL carry a fix").is_empty(), "{c}"),
        }
        fails += usize::from(status == "FAIL");
    }
    let find = |name: &str| checks.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no {name} check"));
    assert_eq!(find("/dev/kvm")["status"], "PASS", "this host has a usable /dev/kvm");
    assert_eq!(find("KVM API")["detail"], "version 12");
    assert_eq!(find("KVM_CAP_IRQCHIP")["status"], "PASS");
    assert_eq!(find("KVM_CAP_IRQFD")["status"], "PASS");
    for name in
        ["virtualization backend", "hugepages", "/dev/net/tun", "/dev/vhost-net", "IOMMU", "io_uring", "cgroup v2"]
    {
        find(name);
    }
    // This host is PVM: recognised and reported as the slow software backend.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(v["backend"], "pvm");
        let b = find("virtualization backend");
        assert_eq!(b["status"], "WARN");
        assert!(b["detail"].as_str().unwrap().contains("kernel-mode guest code is emulated"), "{b}");
    }
    let summary = &v["summary"];
    let total: u64 = ["pass", "warn", "fail"].iter().map(|k| summary[k].as_u64().expect("summary count")).sum();
    assert_eq!(total as usize, checks.len());
    assert_eq!(summary["fail"].as_u64(), Some(fails as u64));
    assert_eq!(v["ok"], fails == 0);
    assert_eq!(code, if fails == 0 { 0 } else { 1 });
}

#[test]
fn text_report_is_aligned_lines() {
    let out = tern().arg("check").output().expect("run tern check");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 15, "{text}");
    // Every detail starts in the same column.
    // Every detail starts in the same column: after "STATUS  name:" and padding.
    let detail_col = |l: &str| {
        let colon = 6 + l[6..].find(':').expect("name: detail");
        let rest = &l[colon + 1..];
        colon + 1 + rest.len() - rest.trim_start().len()
    };
    let col = detail_col(lines[0]);
    for l in &lines {
        assert!(["PASS  ", "WARN  ", "FAIL  "].iter().any(|p| l.starts_with(p)), "{l}");
        assert_eq!(detail_col(l), col, "misaligned: {l}");
        assert_eq!(l.starts_with("PASS"), !l.contains(" — fix: "), "{l}");
    }
    assert!(lines.iter().any(|l| l.starts_with("PASS  /dev/kvm:")), "{text}");
}

#[test]
fn unusable_kvm_device_fails_with_fix_and_exit_1() {
    let (v, code) = check_json(&["--kvm-device", "/nonexistent/kvm"]);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    let first = &v["checks"][0];
    assert_eq!(first["check"], "/nonexistent/kvm");
    assert_eq!(first["status"], "FAIL");
    assert!(first["fix"].as_str().unwrap().contains("modprobe"), "{first}");

    // A regular file is not a KVM device either.
    let (v, code) = check_json(&["--kvm-device", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")]);
    assert_eq!(code, 1);
    assert!(v["checks"][0]["detail"].as_str().unwrap().contains("not a character device"));
}
