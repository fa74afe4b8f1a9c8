//! `tern import` of real-world libvirt domain XML, `dump --xml` round trips,
//! and the parts of the API scripts rely on (OpenAPI, events, remote proxy,
//! completions).

mod manager_common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use manager::VmDefinition;
use manager::definition::{CacheMode, DiskFormat, IoEngine, SerialMode};
use manager_common::{Env, TERN};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manager_fixtures").join(name)
}

/// `tern import --print`: (definition, skipped lines).
fn import(env: &Env, name: &str) -> (VmDefinition, Vec<String>) {
    let o = env.tern(&["import", "--print", fixture(name).to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let def = VmDefinition::from_toml(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let skipped = String::from_utf8_lossy(&o.stderr).lines().map(String::from).collect();
    (def, skipped)
}

fn has(skipped: &[String], needle: &str) -> bool {
    skipped.iter().any(|s| s.starts_with("skipped: ") && s.contains(needle))
}

#[test]
fn imports_real_world_libvirt_xml() {
    let env = Env::new();

    let (d, sk) = import(&env, "ubuntu-virt-install.xml");
    assert_eq!((d.name.as_str(), d.uuid.as_str()), ("ubuntu22.04", "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"));
    assert_eq!((d.vcpus, d.memory.0, d.cpu_model.as_str()), (2, 4096, "host"));
    assert_eq!(d.disks.len(), 1, "the empty cdrom has no source");
    assert_eq!(d.disks[0].path.as_deref(), Some(std::path::Path::new("/var/lib/libvirt/images/ubuntu22.04.qcow2")));
    assert_eq!(d.disks[0].format, Some(DiskFormat::Qcow2));
    assert_eq!(d.nics[0].network.as_deref(), Some("default"));
    assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:6b:3c:58"));
    assert!(d.balloon && d.rng && d.serial == SerialMode::Console);
    for s in [
        "<graphics",
        "<video",
        "<sound",
        "<channel",
        "<input",
        "<redirdev",
        "vmport",
        "<clock>",
        "<pm>",
        "boot from disk",
        "<metadata>",
    ] {
        assert!(has(&sk, s), "`{s}` not reported as skipped: {sk:?}");
    }

    let (d, sk) = import(&env, "direct-kernel-boot.xml");
    assert_eq!((d.vcpus, d.memory.0, d.hugepages), (4, 2048, true));
    assert_eq!(d.boot.kernel.as_deref(), Some(std::path::Path::new("/var/lib/tern/kernels/vmlinux-6.12")));
    assert_eq!(d.boot.cmdline.as_deref(), Some("console=ttyS0 root=/dev/vda rw quiet"));
    let pins: Vec<(u32, Vec<usize>)> = d.vcpu_pins.iter().map(|p| (p.vcpu, p.cpus.clone())).collect();
    assert_eq!(pins, [(0, vec![2]), (1, vec![3]), (2, vec![4, 5]), (3, vec![6, 9])]);
    let root = &d.disks[0];
    assert_eq!(root.path.as_deref(), Some(std::path::Path::new("/dev/vg0/fc-builder-root")));
    assert_eq!(
        (root.cache, root.io, root.serial.as_deref()),
        (Some(CacheMode::None), Some(IoEngine::IoUring), Some("fcroot01"))
    );
    assert!(d.disks[1].readonly && d.disks[1].io == Some(IoEngine::Threads));
    assert_eq!(d.nics[0].bridge.as_deref(), Some("br0"));
    assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:aa:01:02"));
    assert_eq!(d.nics[1].tap.as_deref(), Some("tap-fc1"));
    assert_eq!((d.balloon, d.vsock_cid), (false, Some(42)));
    for s in ["emulatorpin", "model `e1000`", "on_crash `restart`", "<commandline>"] {
        assert!(has(&sk, s), "`{s}` not reported as skipped: {sk:?}");
    }

    let (d, sk) = import(&env, "openstack-nova.xml");
    assert_eq!((d.name.as_str(), d.memory.0, d.vcpus), ("instance-0000002a", 1024, 2));
    assert_eq!(d.cpu_model, "Skylake-Server-IBRS,+pcid,-hle,-rtm");
    assert_eq!(d.disks.len(), 2);
    assert!(d.disks[1].readonly);
    assert_eq!(d.nics[0].bridge.as_deref(), Some("qbr5d8c21aa-1f"));
    for s in [
        "cpuset",
        "cpu topology",
        "cputune <shares>",
        "<sysinfo>",
        "bus `ide`",
        "<graphics type=vnc>",
        "boot from disk",
    ] {
        assert!(has(&sk, s), "`{s}` not reported as skipped: {sk:?}");
    }

    let (d, _) = import(&env, "pool-volumes.xml");
    let vols: Vec<&str> = d.disks.iter().filter_map(|x| x.vol.as_deref()).collect();
    assert_eq!(vols, ["default/db01-root.qcow2", "fastlvm/db01-data"]);
    assert_eq!((d.cpu_model.as_str(), d.memory.0, d.serial), ("EPYC", 768, SerialMode::None));
    assert_eq!(d.nics[0].tap.as_deref(), Some("tap-db01"));
    assert!(d.nics[0].mac.is_some(), "a MAC is generated");

    // Define through the daemon (import and define both accept XML), then
    // `dump --xml` converts back to XML that imports to the same definition.
    for f in ["ubuntu-virt-install.xml", "direct-kernel-boot.xml", "openstack-nova.xml", "pool-volumes.xml"] {
        let out = env.ok(&["import", fixture(f).to_str().unwrap()]);
        assert!(out.contains("defined"), "{out}");
    }
    for name in ["ubuntu22.04", "fc-builder", "instance-0000002a", "db01"] {
        let toml = env.ok(&["dump", name]);
        let xml = env.ok(&["dump", name, "--xml"]);
        let back = manager::libvirt::import(&xml).unwrap();
        assert_eq!(back.definition, VmDefinition::from_toml(&toml).unwrap(), "{name}: {xml}");
    }
    // Re-defining the same XML updates the VM (same name and UUID).
    env.ok(&["define", fixture("direct-kernel-boot.xml").to_str().unwrap()]);
    assert_eq!(env.json(&["list", "--all"]).as_array().unwrap().len(), 4);

    // Bad XML: one line naming the problem.
    let bad = env.dir.join("bad.xml");
    std::fs::write(&bad, "<network><name>x</name></network>").unwrap();
    assert!(env.fail(&["import", bad.to_str().unwrap()]).contains("expected <domain>"));
    std::fs::write(&bad, "<domain><name>x</name><memory>12</memory><devices><disk").unwrap();
    assert!(env.fail(&["import", bad.to_str().unwrap()]).contains("libvirt XML"));
    std::fs::write(&bad, "<domain><name>x</name></domain>").unwrap();
    assert!(env.fail(&["import", bad.to_str().unwrap()]).contains("<memory>"));
}

#[test]
fn openapi_events_remote_proxy_and_completions() {
    let env = Env::new();
    // The OpenAPI document, served by the daemon.
    let client = manager::Client::new(manager::Endpoint::Unix(env.sock.clone()));
    let doc = client.get("/1.0/openapi.json").unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/1.0/vms/{vm}/state"]["put"].is_object());
    let e = client.get("/1.0/nope").unwrap_err().to_string();
    assert!(e.contains("no route"), "{e}");

    // Events: a start shows up as operation + state changes.
    let mut ev = env.cmd(&["events", "--count", "4"]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.define_guest("e1", "hlt", "");
    env.ok(&["start", "e1"]);
    let lines: Vec<serde_json::Value> = BufReader::new(ev.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let _ = ev.wait();
    assert_eq!(lines[0]["type"], "definition");
    assert!(lines.iter().any(|e| e["type"] == "vm" && e["state"] == "running"), "{lines:?}");
    assert!(lines.iter().any(|e| e["type"] == "operation" && e["status"] == "success"), "{lines:?}");

    // Remote use: `--connect ssh://host/socket` runs `ssh host tern _proxy`.
    // A stand-in ssh runs the remote command locally.
    let fake = env.dir.join("fake-ssh");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nwhile [ \"$1\" != \"--\" ]; do shift; done\nshift 2\nshift\nexec {TERN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("ssh://root@remotehost{}", env.sock.display());
    let o = env
        .cmd(&["list", "--json", "--connect", &uri])
        .env("TERN_SSH", fake.to_str().unwrap())
        .env("TERN_SOCKET", "/nonexistent.sock")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["name"], "e1");
    let o = env.cmd(&["destroy", "e1", "--connect", &uri]).env("TERN_SSH", fake.to_str().unwrap()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.state("e1"), "stopped");

    for shell in ["bash", "zsh", "fish"] {
        let out = env.ok(&["completions", shell]);
        assert!(out.contains("pool-define-as") && out.contains("vol-create-as"), "{shell}");
    }
}
