//! Turning a definition into a `tern run` command line and starting it under
//! its shim in a session of its own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::definition::{CacheMode, DiskFormat, IoEngine, SerialMode, Transport, VmDefinition};
use crate::store::VmFiles;

/// A disk after its volume was resolved to a host path.
#[derive(Debug, Clone)]
pub struct ResolvedDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
    pub cache: Option<CacheMode>,
    pub io: Option<IoEngine>,
    pub serial: Option<String>,
}

/// The `run ...` arguments for a VM (everything after the binary).
pub fn run_args(def: &VmDefinition, vm_dir: &Path, disks: &[ResolvedDisk], taps: &[(String, String)]) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into()];
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v);
    };
    if let Some(k) = &def.boot.kernel {
        push("--kernel", k.display().to_string());
    }
    if let Some(i) = &def.boot.initrd {
        push("--initrd", i.display().to_string());
    }
    if let Some(c) = &def.boot.cmdline {
        push("--cmdline", c.clone());
    }
    push("--cpus", def.vcpus.to_string());
    push("--memory", format!("{}M", def.memory.0));
    push("--cpu-model", def.cpu_model.clone());
    let serial = match def.serial {
        SerialMode::Console => format!("socket={}", vm_dir.join(VmFiles::SERIAL_SOCK).display()),
        SerialMode::None => "none".into(),
    };
    push("--serial", serial);
    push("--api-socket", vm_dir.join(VmFiles::CONTROL_SOCK).display().to_string());
    push("--on-reboot", "restart".into());
    for d in disks {
        let mut s = format!("path={},format={}", d.path.display(), d.format);
        if d.readonly {
            s.push_str(",readonly=on");
        }
        match d.cache {
            Some(CacheMode::None) => s.push_str(",cache=none"),
            Some(CacheMode::Writeback) => s.push_str(",cache=writeback"),
            None => {}
        }
        match d.io {
            Some(IoEngine::Threads) => s.push_str(",io=threads"),
            Some(IoEngine::IoUring) => s.push_str(",io=io_uring"),
            None => {}
        }
        if let Some(id) = &d.serial {
            s.push_str(&format!(",serial={id}"));
        }
        push("--disk", s);
    }
    for (tap, mac) in taps {
        push("--net", format!("tap={tap},mac={mac}"));
    }
    if let Some(t) = def.transport {
        push("--transport", if t == Transport::Pci { "pci".into() } else { "mmio".into() });
    }
    if let Some(cid) = def.vsock_cid {
        push("--vsock", format!("cid={cid},socket={}", vm_dir.join("vsock.sock").display()));
    }
    for p in &def.vcpu_pins {
        let cpus: Vec<String> = p.cpus.iter().map(ToString::to_string).collect();
        push("--pin", format!("{}={}", p.vcpu, cpus.join(",")));
    }
    if def.hugepages {
        a.push("--hugepages".into());
    }
    if def.rng {
        a.push("--rng".into());
    }
    if def.balloon {
        a.push("--balloon".into());
    }
    a
}

/// Start `tern _shim --dir VMDIR -- run ...` in a new session, detached from
/// the daemon's terminal and process group, so the VM outlives the daemon.
pub fn spawn_shim(exe: &Path, vm_dir: &Path, args: &[String]) -> std::io::Result<std::process::Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("_shim").arg("--dir").arg(vm_dir).arg("--").args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).current_dir("/");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.spawn()
}
