//! libvirt domain XML: `tern import` converts the common subset into a Tern
//! definition and lists everything it skipped; `tern dump --xml` goes back.

use std::fmt::Write as _;
use std::path::PathBuf;

use roxmltree::{Document, Node};

use crate::definition::{Boot, CacheMode, Disk, DiskFormat, IoEngine, MemSize, Nic, SerialMode, VcpuPin, VmDefinition};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("libvirt XML: {0}")]
    Xml(String),
    #[error("libvirt XML element <{element}>: {msg}")]
    Invalid { element: String, msg: String },
}

fn bad(element: &str, msg: impl Into<String>) -> ImportError {
    ImportError::Invalid { element: element.into(), msg: msg.into() }
}

/// The result of an import: the definition plus what could not be carried over.
#[derive(Debug)]
pub struct Imported {
    pub definition: VmDefinition,
    pub skipped: Vec<String>,
}

fn child<'a>(n: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text<'a>(n: Node<'a, 'a>, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// libvirt memory units: KiB by default; k/KiB, M/MiB, ... are binary, KB/MB/GB decimal.
fn memory_bytes(n: Node) -> Result<u64, ImportError> {
    let v: u64 = n.text().unwrap_or("").trim().parse().map_err(|_| bad(n.tag_name().name(), "not a number"))?;
    let mult: u64 = match n.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        u => return Err(bad(n.tag_name().name(), format!("unknown unit `{u}`"))),
    };
    v.checked_mul(mult).ok_or_else(|| bad(n.tag_name().name(), "too large"))
}

/// "0-3,^2,6" -> [0, 1, 3, 6]
pub fn parse_cpuset(s: &str) -> Result<Vec<usize>, String> {
    let mut set = std::collections::BTreeSet::new();
    let mut excluded = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (neg, p) = match part.strip_prefix('^') {
            Some(p) => (true, p),
            None => (false, part),
        };
        let (a, b) = p.split_once('-').unwrap_or((p, p));
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| format!("bad cpuset `{s}`"))?,
            b.trim().parse().map_err(|_| format!("bad cpuset `{s}`"))?,
        );
        if a > b || b > 4095 {
            return Err(format!("bad cpuset range `{part}`"));
        }
        for c in a..=b {
            if neg {
                excluded.push(c)
            } else {
                set.insert(c);
            }
        }
    }
    for c in excluded {
        set.remove(&c);
    }
    Ok(set.into_iter().collect())
}

/// Convert a libvirt domain XML document.
pub fn import(xml: &str) -> Result<Imported, ImportError> {
    let doc = Document::parse(xml).map_err(|e| ImportError::Xml(e.to_string()))?;
    let dom = doc.root_element();
    if !dom.has_tag_name("domain") {
        return Err(ImportError::Xml(format!("root element is <{}>, expected <domain>", dom.tag_name().name())));
    }
    let mut skipped = Vec::new();
    if let Some(t) = dom.attribute("type").filter(|t| *t != "kvm") {
        skipped.push(format!("domain type `{t}` (Tern always uses KVM)"));
    }
    let name = text(dom, "name").ok_or_else(|| bad("name", "missing"))?;
    let memory = child(dom, "memory").ok_or_else(|| bad("memory", "missing"))?;
    let mem_mib = memory_bytes(memory)?.div_ceil(1 << 20);
    let mut def = VmDefinition::new(&name, mem_mib);
    def.balloon = false;
    if let Some(u) = text(dom, "uuid") {
        def.uuid = u.to_ascii_lowercase();
    }
    if let Some(cur) = child(dom, "currentMemory")
        && memory_bytes(cur)?.div_ceil(1 << 20) != mem_mib
    {
        skipped.push("currentMemory (set it after start with `tern setmem`)".into());
    }
    if let Some(v) = child(dom, "vcpu") {
        def.vcpus = v.text().unwrap_or("").trim().parse().map_err(|_| bad("vcpu", "not a number"))?;
        if v.attribute("cpuset").is_some() {
            skipped.push("vcpu cpuset (use per-vCPU <vcpupin>)".into());
        }
    }
    for el in dom.children().filter(Node::is_element) {
        match el.tag_name().name() {
            "name" | "uuid" | "memory" | "currentMemory" | "vcpu" | "os" | "cpu" | "devices" | "cputune"
            | "memoryBacking" => {}
            "features" => {
                let f: Vec<&str> = el.children().filter(Node::is_element).map(|c| c.tag_name().name()).collect();
                let other: Vec<&str> = f.into_iter().filter(|n| !["acpi", "apic"].contains(n)).collect();
                if !other.is_empty() {
                    skipped.push(format!("features {} (acpi and apic are always on)", other.join(", ")));
                }
            }
            "on_poweroff" | "on_crash" | "on_reboot" => {
                let v = el.text().unwrap_or("").trim();
                let expected = if el.tag_name().name() == "on_reboot" { "restart" } else { "destroy" };
                if v != expected {
                    skipped.push(format!(
                        "{} `{v}` (Tern: poweroff stops, reboot restarts, crash is reported)",
                        el.tag_name().name()
                    ));
                }
            }
            other => skipped.push(format!("<{other}>")),
        }
    }
    if let Some(mb) = child(dom, "memoryBacking") {
        def.hugepages = child(mb, "hugepages").is_some();
    }
    if let Some(ct) = child(dom, "cputune") {
        for c in ct.children().filter(Node::is_element) {
            if c.has_tag_name("vcpupin") {
                let vcpu =
                    c.attribute("vcpu").and_then(|v| v.parse().ok()).ok_or_else(|| bad("vcpupin", "bad vcpu"))?;
                let cpus = parse_cpuset(c.attribute("cpuset").unwrap_or("")).map_err(|m| bad("vcpupin", m))?;
                def.vcpu_pins.push(VcpuPin { vcpu, cpus });
            } else {
                skipped.push(format!("cputune <{}>", c.tag_name().name()));
            }
        }
    }
    if let Some(cpu) = child(dom, "cpu") {
        def.cpu_model = match cpu.attribute("mode").unwrap_or("custom") {
            "host-passthrough" | "host-model" | "maximum" => "host".into(),
            _ => {
                let mut m = text(cpu, "model").unwrap_or_else(|| "baseline".into());
                for f in cpu.children().filter(|c| c.has_tag_name("feature")) {
                    let fname = f.attribute("name").unwrap_or("");
                    match f.attribute("policy").unwrap_or("require") {
                        "require" | "force" => write!(m, ",+{fname}").unwrap_or(()),
                        "disable" | "forbid" => write!(m, ",-{fname}").unwrap_or(()),
                        p => skipped.push(format!("cpu feature {fname} policy `{p}`")),
                    }
                }
                m
            }
        };
        if child(cpu, "topology").is_some() {
            skipped.push("cpu topology (vCPUs are presented as one socket)".into());
        }
        if child(cpu, "numa").is_some() {
            skipped.push("cpu numa".into());
        }
    }
    if let Some(os) = child(dom, "os") {
        let kernel = text(os, "kernel").map(PathBuf::from);
        if kernel.is_some() {
            def.boot = Boot { kernel, initrd: text(os, "initrd").map(PathBuf::from), cmdline: text(os, "cmdline") };
        } else {
            skipped.push("os boot from disk/firmware (not supported yet: add boot.kernel)".into());
        }
        for c in os.children().filter(Node::is_element) {
            let n = c.tag_name().name();
            if !["type", "kernel", "initrd", "cmdline", "boot"].contains(&n) {
                skipped.push(format!("os <{n}>"));
            }
        }
    }
    if let Some(devs) = child(dom, "devices") {
        import_devices(devs, &mut def, &mut skipped)?;
    }
    def.fill_defaults();
    def.validate().map_err(|e| ImportError::Xml(format!("converted definition is invalid: {e}")))?;
    Ok(Imported { definition: def, skipped })
}

fn import_devices(devs: Node, def: &mut VmDefinition, skipped: &mut Vec<String>) -> Result<(), ImportError> {
    let mut have_serial = false;
    for d in devs.children().filter(Node::is_element) {
        match d.tag_name().name() {
            "disk" => import_disk(d, def, skipped)?,
            "interface" => import_nic(d, def, skipped)?,
            "serial" | "console" => {
                if !have_serial {
                    def.serial = SerialMode::Console;
                    have_serial = true;
                }
            }
            "memballoon" => def.balloon = d.attribute("model") == Some("virtio"),
            "rng" => def.rng = true,
            "vsock" => {
                def.vsock_cid = child(d, "cid").and_then(|c| c.attribute("address")).and_then(|a| a.parse().ok());
            }
            "emulator" => {}
            "controller" if matches!(d.attribute("type"), Some("pci" | "usb" | "virtio-serial" | "sata" | "ide")) => {}
            other => {
                let t = d.attribute("type").map(|t| format!(" type={t}")).unwrap_or_default();
                skipped.push(format!("device <{other}{t}>"));
            }
        }
    }
    if !have_serial {
        def.serial = SerialMode::None;
    }
    Ok(())
}

fn import_disk(d: Node, def: &mut VmDefinition, skipped: &mut Vec<String>) -> Result<(), ImportError> {
    let device = d.attribute("device").unwrap_or("disk");
    if !matches!(device, "disk" | "cdrom") {
        skipped.push(format!("disk device `{device}`"));
        return Ok(());
    }
    let target = child(d, "target").and_then(|t| t.attribute("dev")).unwrap_or("?").to_string();
    let Some(src) = child(d, "source") else {
        skipped.push(format!("disk {target}: no source (empty cdrom)"));
        return Ok(());
    };
    let mut disk = Disk::default();
    match d.attribute("type").unwrap_or("file") {
        "file" => disk.path = src.attribute("file").map(PathBuf::from),
        "block" => disk.path = src.attribute("dev").map(PathBuf::from),
        "volume" => {
            disk.vol = match (src.attribute("pool"), src.attribute("volume")) {
                (Some(p), Some(v)) => Some(format!("{p}/{v}")),
                _ => None,
            }
        }
        t => {
            skipped.push(format!("disk {target}: type `{t}`"));
            return Ok(());
        }
    }
    if disk.path.is_none() && disk.vol.is_none() {
        skipped.push(format!("disk {target}: source without a file, dev or volume"));
        return Ok(());
    }
    if let Some(drv) = child(d, "driver") {
        disk.format = match drv.attribute("type") {
            Some("raw") => Some(DiskFormat::Raw),
            Some("qcow2") => Some(DiskFormat::Qcow2),
            Some(f) => return Err(bad("driver", format!("disk {target}: format `{f}` is not supported (raw, qcow2)"))),
            None => None,
        };
        disk.cache = match drv.attribute("cache") {
            Some("none" | "directsync") => Some(CacheMode::None),
            Some("writeback" | "writethrough" | "unsafe") => Some(CacheMode::Writeback),
            _ => None,
        };
        disk.io = match drv.attribute("io") {
            Some("threads") => Some(IoEngine::Threads),
            Some("io_uring" | "native") => Some(IoEngine::IoUring),
            _ => None,
        };
    }
    let bus = child(d, "target").and_then(|t| t.attribute("bus")).unwrap_or("virtio");
    if bus != "virtio" {
        skipped.push(format!("disk {target}: bus `{bus}` (attached as virtio-blk)"));
    }
    disk.readonly = child(d, "readonly").is_some() || device == "cdrom";
    disk.serial = text(d, "serial");
    def.disks.push(disk);
    Ok(())
}

fn import_nic(d: Node, def: &mut VmDefinition, skipped: &mut Vec<String>) -> Result<(), ImportError> {
    let mut nic = Nic { model: "virtio".into(), ..Default::default() };
    let src = child(d, "source");
    match d.attribute("type").unwrap_or("") {
        "network" => nic.network = src.and_then(|s| s.attribute("network")).map(String::from),
        "bridge" => nic.bridge = src.and_then(|s| s.attribute("bridge")).map(String::from),
        "ethernet" => nic.tap = child(d, "target").and_then(|t| t.attribute("dev")).map(String::from),
        t => {
            skipped.push(format!("interface type `{t}`"));
            return Ok(());
        }
    }
    if nic.network.is_none() && nic.bridge.is_none() && nic.tap.is_none() {
        skipped.push("interface without a source/target".into());
        return Ok(());
    }
    nic.mac = child(d, "mac").and_then(|m| m.attribute("address")).map(|m| m.to_ascii_lowercase());
    let model = child(d, "model").and_then(|m| m.attribute("type")).unwrap_or("virtio");
    if model != "virtio" {
        skipped.push(format!("interface model `{model}` (attached as virtio-net)"));
    }
    def.nics.push(nic);
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// Render a definition as libvirt domain XML (for `dump --xml`).
pub fn export(def: &VmDefinition) -> String {
    let mut x = String::new();
    let w = &mut x;
    let _ = writeln!(w, "<domain type='kvm'>");
    let _ = writeln!(w, "  <name>{}</name>\n  <uuid>{}</uuid>", esc(&def.name), def.uuid);
    let MemSize(m) = def.memory;
    let _ = writeln!(w, "  <memory unit='MiB'>{m}</memory>\n  <currentMemory unit='MiB'>{m}</currentMemory>");
    if def.hugepages {
        let _ = writeln!(w, "  <memoryBacking>\n    <hugepages/>\n  </memoryBacking>");
    }
    let _ = writeln!(w, "  <vcpu placement='static'>{}</vcpu>", def.vcpus);
    if !def.vcpu_pins.is_empty() {
        let _ = writeln!(w, "  <cputune>");
        for p in &def.vcpu_pins {
            let cpus: Vec<String> = p.cpus.iter().map(ToString::to_string).collect();
            let _ = writeln!(w, "    <vcpupin vcpu='{}' cpuset='{}'/>", p.vcpu, cpus.join(","));
        }
        let _ = writeln!(w, "  </cputune>");
    }
    let _ = writeln!(w, "  <os>\n    <type arch='x86_64'>hvm</type>");
    if let Some(k) = &def.boot.kernel {
        let _ = writeln!(w, "    <kernel>{}</kernel>", esc(&k.display().to_string()));
    }
    if let Some(i) = &def.boot.initrd {
        let _ = writeln!(w, "    <initrd>{}</initrd>", esc(&i.display().to_string()));
    }
    if let Some(c) = &def.boot.cmdline {
        let _ = writeln!(w, "    <cmdline>{}</cmdline>", esc(c));
    }
    let _ = writeln!(w, "  </os>\n  <features>\n    <acpi/>\n    <apic/>\n  </features>");
    let mut parts = def.cpu_model.split(',');
    let model = parts.next().unwrap_or("host");
    if model == "host" {
        let _ = writeln!(w, "  <cpu mode='host-passthrough'/>");
    } else {
        let _ = writeln!(w, "  <cpu mode='custom'>\n    <model>{}</model>", esc(model));
        for f in parts {
            let (policy, name) =
                if let Some(n) = f.strip_prefix('-') { ("disable", n) } else { ("require", f.trim_start_matches('+')) };
            let _ = writeln!(w, "    <feature policy='{policy}' name='{}'/>", esc(name));
        }
        let _ = writeln!(w, "  </cpu>");
    }
    let _ = writeln!(
        w,
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>"
    );
    let _ = writeln!(w, "  <devices>");
    for (i, d) in def.disks.iter().enumerate() {
        let dev = format!("vd{}", (b'a' + (i % 26) as u8) as char);
        let fmt = d.format.map(|f| format!(" type='{f}'")).unwrap_or_default();
        let cache = match d.cache {
            Some(CacheMode::None) => " cache='none'",
            Some(CacheMode::Writeback) => " cache='writeback'",
            None => "",
        };
        let io = match d.io {
            Some(IoEngine::Threads) => " io='threads'",
            Some(IoEngine::IoUring) => " io='io_uring'",
            None => "",
        };
        let source = match (&d.vol, &d.path) {
            (Some(v), _) => {
                let (p, n) = v.split_once('/').unwrap_or(("default", v));
                ("volume", format!("<source pool='{}' volume='{}'/>", esc(p), esc(n)))
            }
            (None, Some(p)) => {
                let s = esc(&p.display().to_string());
                if p.starts_with("/dev") {
                    ("block", format!("<source dev='{s}'/>"))
                } else {
                    ("file", format!("<source file='{s}'/>"))
                }
            }
            _ => continue,
        };
        let _ = writeln!(
            w,
            "    <disk type='{}' device='disk'>\n      <driver name='qemu'{fmt}{cache}{io}/>\n      {}",
            source.0, source.1
        );
        let _ = writeln!(w, "      <target dev='{dev}' bus='virtio'/>");
        if d.readonly {
            let _ = writeln!(w, "      <readonly/>");
        }
        if let Some(s) = &d.serial {
            let _ = writeln!(w, "      <serial>{}</serial>", esc(s));
        }
        let _ = writeln!(w, "    </disk>");
    }
    for n in &def.nics {
        let (t, src) = if let Some(b) = &n.bridge {
            ("bridge", format!("<source bridge='{}'/>", esc(b)))
        } else if let Some(net) = &n.network {
            ("network", format!("<source network='{}'/>", esc(net)))
        } else {
            ("ethernet", format!("<target dev='{}' managed='no'/>", esc(n.tap.as_deref().unwrap_or(""))))
        };
        let _ = writeln!(w, "    <interface type='{t}'>");
        if let Some(m) = &n.mac {
            let _ = writeln!(w, "      <mac address='{m}'/>");
        }
        let _ = writeln!(w, "      {src}\n      <model type='virtio'/>\n    </interface>");
    }
    if def.serial == SerialMode::Console {
        let _ =
            writeln!(w, "    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n    <console type='pty'/>");
    }
    if def.rng {
        let _ =
            writeln!(w, "    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>");
    }
    if let Some(cid) = def.vsock_cid {
        let _ = writeln!(w, "    <vsock model='virtio'>\n      <cid auto='no' address='{cid}'/>\n    </vsock>");
    }
    let _ = writeln!(w, "    <memballoon model='{}'/>", if def.balloon { "virtio" } else { "none" });
    let _ = writeln!(w, "  </devices>\n</domain>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets() {
        assert_eq!(parse_cpuset("0-3,^2,6"), Ok(vec![0, 1, 3, 6]));
        assert_eq!(parse_cpuset("5"), Ok(vec![5]));
        assert!(parse_cpuset("3-1").is_err());
        assert!(parse_cpuset("x").is_err());
    }

    #[test]
    fn export_then_import_is_identity() {
        let mut d = VmDefinition::from_toml(
            "name = \"a\"\nmemory = \"1G\"\nvcpus = 2\ncpu_model = \"EPYC,+pcid,-hle\"\nrng = true\nvsock_cid = 7\n\
             [boot]\nkernel = \"/k\"\ncmdline = \"console=ttyS0 a<b\"\n[[vcpupin]]\nvcpu = 1\ncpus = [2, 3]\n\
             [[disk]]\nvol = \"p/v\"\nformat = \"qcow2\"\ncache = \"none\"\n[[disk]]\npath = \"/dev/vg/x\"\nreadonly = true\n\
             [[nic]]\nbridge = \"br0\"\n[[nic]]\ntap = \"t0\"\n",
        )
        .unwrap();
        d.hugepages = true;
        let back = import(&export(&d)).unwrap();
        assert_eq!(back.definition, d);
        assert!(back.skipped.is_empty(), "{:?}", back.skipped);
    }

    #[test]
    fn errors_name_the_element() {
        let e = import("<domain><name>x</name><memory unit='parsec'>1</memory></domain>").unwrap_err().to_string();
        assert!(e.contains("<memory>") && e.contains("parsec"), "{e}");
        let e = import("<domain><memory>1024</memory></domain>").unwrap_err().to_string();
        assert!(e.contains("<name>"), "{e}");
        let e = import("<domain><name>x</name><memory>65536</memory><devices><disk type='file'><driver type='vmdk'/><source file='/a'/></disk></devices></domain>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmdk"), "{e}");
    }
}
