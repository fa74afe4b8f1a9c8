//! Storage pools and volumes through the daemon, used as VM disks.

mod manager_common;

use std::time::Duration;

use manager_common::Env;

const T: Duration = Duration::from_secs(30);

fn sector0(path: &str) -> Vec<u8> {
    let data = std::fs::read(path).unwrap();
    data[..512].to_vec()
}

#[test]
fn dir_pool_volumes_as_disks() {
    let env = Env::new();
    let pools = env.json(&["pool-list"]);
    assert_eq!(pools[0]["name"], "default");
    assert_eq!(pools[0]["active"], true);

    let target = env.dir.join("imgs");
    env.ok(&["pool-define-as", "imgs", "dir", "--target", target.to_str().unwrap()]);
    assert!(env.fail(&["vol-list", "imgs"]).contains("not active"));
    env.ok(&["pool-start", "imgs"]);
    env.ok(&["pool-autostart", "imgs"]);
    assert_eq!(env.json(&["pool-info", "imgs"])["autostart"], true);

    env.ok(&["vol-create-as", "imgs", "base.raw", "16M", "--format", "raw"]);
    env.ok(&["vol-create-as", "imgs", "data.qcow2", "16M", "--format", "qcow2"]);
    env.ok(&["vol-create-as", "imgs", "top.qcow2", "0", "--backing-vol", "base.raw", "--backing-vol-format", "raw"]);
    let info = env.json(&["vol-info", "imgs/data.qcow2"]);
    assert_eq!((info["format"].as_str(), info["capacity"].as_u64()), (Some("qcow2"), Some(16 << 20)));
    let top = env.json(&["vol-info", "top.qcow2", "--pool", "imgs"]);
    assert_eq!((top["format"].as_str(), top["capacity"].as_u64()), (Some("qcow2"), Some(16 << 20)));
    assert!(env.fail(&["vol-create-as", "imgs", "base.raw", "1M"]).contains("already exists"));

    env.ok(&["vol-resize", "data.qcow2", "32M", "--pool", "imgs"]);
    assert_eq!(env.json(&["vol-info", "imgs/data.qcow2"])["capacity"], 32 << 20);
    assert!(env.fail(&["vol-resize", "imgs/data.qcow2", "1M"]).contains("shrinking"));
    env.ok(&["vol-resize", "imgs/base.raw", "20M"]);
    assert_eq!(std::fs::metadata(target.join("base.raw")).unwrap().len(), 20 << 20);

    // Each volume backs a VM whose guest writes and reads back 64 sectors.
    for (vm, vol) in [("raw", "imgs/base.raw"), ("q", "imgs/data.qcow2"), ("chain", "imgs/top.qcow2")] {
        env.define_guest(vm, "virtio-blk", &format!("[[disk]]\nvol = \"{vol}\""));
        env.ok(&["start", vm]);
        env.wait_console(vm, "TERN test=virtio-blk result=pass", T);
    }
    assert_eq!(sector0(target.join("base.raw").to_str().unwrap()), test_guest::blk_sector_pattern(0));
    // The qcow2 volumes the daemon made are valid for QEMU's tools too.
    for q in ["data.qcow2", "top.qcow2"] {
        if let Ok(o) = std::process::Command::new("qemu-img").arg("check").arg(target.join(q)).output() {
            assert!(o.status.success(), "qemu-img check {q}: {}", String::from_utf8_lossy(&o.stdout));
        }
    }

    env.ok(&["vol-clone", "imgs/base.raw", "copy.raw"]);
    assert_eq!(sector0(target.join("copy.raw").to_str().unwrap()), test_guest::blk_sector_pattern(0));
    let vols = env.json(&["vol-list", "imgs"]);
    let names: Vec<&str> = vols.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base.raw", "copy.raw", "data.qcow2", "top.qcow2"]);
    // Names cannot escape the pool directory.
    std::fs::write(env.dir.join("victim"), b"x").unwrap();
    let client = manager::Client::new(manager::Endpoint::Unix(env.sock.clone()));
    let e = client.request("DELETE", "/1.0/pools/imgs/volumes/..%2Fvictim", None).unwrap_err().to_string();
    assert!(e.contains("`name`"), "{e}");
    assert!(env.dir.join("victim").exists());
    env.ok(&["vol-delete", "imgs/copy.raw"]);
    assert!(!target.join("copy.raw").exists());

    // A running VM's volume cannot be deleted; undefine --remove-storage deletes it.
    env.define_guest("holder", "hlt", "[[disk]]\nvol = \"imgs/data.qcow2\"");
    env.ok(&["start", "holder"]);
    assert!(env.fail(&["vol-delete", "imgs/data.qcow2"]).contains("in use"));
    env.ok(&["destroy", "holder"]);
    env.ok(&["undefine", "holder", "--remove-storage"]);
    assert!(!target.join("data.qcow2").exists());

    // virt-install style: a new volume in the default pool.
    let out = env.ok(&[
        "create",
        "--name",
        "vi",
        "--memory",
        "64",
        "--disk",
        "size=1,format=raw",
        "--kernel",
        env.guest.to_str().unwrap(),
        "--cmdline",
        "tern.test=virtio-blk",
    ]);
    assert!(out.contains("started"), "{out}");
    env.wait_console("vi", "result=pass", T);
    let v = env.json(&["vol-info", "default/vi-disk0.raw"]);
    assert_eq!(v["capacity"], 1u64 << 30);

    env.ok(&["pool-destroy", "imgs"]);
    assert!(env.fail(&["pool-undefine", "default"]).contains("active"));
    env.ok(&["pool-undefine", "imgs"]);
}

/// Removes the test VG and loop device even when the test fails.
struct LoopVg {
    dev: String,
    vg: String,
}

impl Drop for LoopVg {
    fn drop(&mut self) {
        let sh = |args: &[&str]| {
            let _ = std::process::Command::new(args[0]).args(&args[1..]).env("LVM_SUPPRESS_FD_WARNINGS", "1").output();
        };
        // Loop devices the pool mapped over the PV (hosts without device-mapper).
        let out = std::process::Command::new("losetup").args(["-n", "-l", "-O", "NAME,BACK-FILE"]).output();
        for line in String::from_utf8_lossy(&out.map(|o| o.stdout).unwrap_or_default()).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 2 && f[1] == self.dev {
                sh(&["losetup", "-d", f[0]]);
            }
        }
        sh(&["vgremove", "-f", "-q", "--driverloaded", "n", &self.vg]);
        sh(&["vgremove", "-f", "-q", &self.vg]);
        sh(&["pvremove", "-q", &self.dev]);
        sh(&["losetup", "-d", &self.dev]);
    }
}

#[test]
fn lvm_pool_on_a_loop_device_volumes_as_disks() {
    if std::process::Command::new("vgcreate").arg("--version").output().is_err() {
        panic!("lvm2 is not installed (apt-get install lvm2)");
    }
    let env = Env::new();
    let img = env.dir.join("pv.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&img).output().unwrap();
    assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let vg = format!("tern{}", env.dir.file_name().unwrap().to_str().unwrap().replace('-', "x"));
    let _guard = LoopVg { dev: dev.clone(), vg: vg.clone() };

    env.ok(&["pool-define-as", "lv", "logical", "--source-name", &vg, "--source-dev", &dev]);
    env.ok(&["pool-start", "lv"]);
    let info = env.json(&["pool-info", "lv"]);
    assert_eq!(info["type"], "logical");
    assert!(info["capacity"].as_u64().unwrap() >= 56 << 20, "{info}");
    env.ok(&["vol-create-as", "lv", "d1", "16M"]);
    assert!(env.fail(&["vol-create-as", "lv", "q", "16M", "--format", "qcow2"]).contains("raw"));
    assert_eq!(env.json(&["vol-info", "lv/d1"])["capacity"], 16 << 20);

    env.define_guest("lvm", "virtio-blk", "[[disk]]\nvol = \"lv/d1\"");
    env.ok(&["start", "lvm"]);
    let log = env.wait_console("lvm", "mismatches=0 transport=pci\n", T);
    assert!(log.contains("capacity=32768"), "{log}");
    // The guest's writes landed in the LV's extents on the PV (after the 1 MiB PV header).
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[1 << 20..(1 << 20) + 512], &test_guest::blk_sector_pattern(0)[..]);

    // A clone reads back the same data.
    env.ok(&["vol-clone", "lv/d1", "d2"]);
    env.define_guest("lvm2", "virtio-blk tern.blk_mode=read", "[[disk]]\nvol = \"lv/d2\"\nreadonly = true");
    env.ok(&["start", "lvm2"]);
    let log2 = env.wait_console("lvm2", "mismatches=0 transport=pci\n", T);
    assert!(log2.contains("result=pass"), "{log2}");
    let checksum = |l: &str| l.split_whitespace().find(|w| w.starts_with("checksum=")).map(String::from);
    assert_eq!(checksum(&log2), checksum(&log), "clone differs");

    env.ok(&["vol-resize", "lv/d2", "24M"]);
    assert_eq!(env.json(&["vol-info", "lv/d2"])["capacity"], 24 << 20);
    let names: Vec<String> = env
        .json(&["vol-list", "lv"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["d1", "d2"]);
    env.ok(&["vol-delete", "lv/d2"]);
    env.ok(&["undefine", "lvm", "--remove-storage"]);
    assert_eq!(env.json(&["vol-list", "lv"]).as_array().unwrap().len(), 0);
    env.ok(&["pool-destroy", "lv"]);
}
