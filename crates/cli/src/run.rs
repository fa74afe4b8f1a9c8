//! `tern run`: boot one VM in the foreground, console on the terminal.

use std::path::PathBuf;

use vmm::{BootProtocol, KernelSource, OnReboot, VmConfig, VmOutcome, exit_status};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kernel to boot: ELF vmlinux (PVH or 64-bit entry) or bzImage. Without it, the built-in demo guest boots.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory, with a unit (512M, 2G).
    #[arg(long, default_value = "128M")]
    pub memory: String,
    /// CPU model: host, baseline, x86-64-v1..v4, then ,+feat,-feat.
    #[arg(long = "cpu-model", default_value = "host")]
    pub cpu_model: String,
    /// Serial console (COM1): stdio, file=PATH, socket=PATH or none.
    #[arg(long, default_value = "stdio")]
    pub serial: String,
    /// Back guest memory with 2 MiB huge pages.
    #[arg(long)]
    pub hugepages: bool,
    /// Control socket (JSON lines) for info, pause, resume, power-button, stop, counters.
    #[arg(long = "api-socket")]
    pub api_socket: Option<PathBuf>,
    /// What a guest reboot does: exit the VMM, or restart the guest.
    #[arg(long = "on-reboot", value_parser = ["exit", "restart"], default_value = "exit")]
    pub on_reboot: String,
    /// Pin a vCPU to host CPUs: VCPU=CPU[,CPU...] (repeatable).
    #[arg(long = "pin")]
    pub pins: Vec<String>,
    /// A virtio-blk disk: path=PATH[,format=raw|qcow2][,readonly=on][,cache=none|writeback][,io=auto|threads|io_uring][,serial=ID] (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// A virtio-net NIC on a TAP device: tap=NAME[,mac=MAC] (repeatable; the TAP is created when missing).
    #[arg(long = "net")]
    pub nets: Vec<String>,
    /// virtio transport: pci (modern virtio-pci with MSI-X) or mmio (announced on the command line).
    #[arg(long, value_parser = ["pci", "mmio"], default_value = "pci")]
    pub transport: String,
    /// Add a virtio-rng device fed from the host's /dev/urandom.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-vsock device: cid=N,socket=PATH (host side on a Unix socket).
    #[arg(long)]
    pub vsock: Option<String>,
    /// A virtio-balloon device: [size=MIB][,deflate_on_oom=on|off][,stats=SECS]; the target is set through the control socket.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub balloon: Option<String>,
    /// A virtio-console (hvc0) as a second console: stdio, file=PATH, socket=PATH or none.
    #[arg(long)]
    pub console: Option<String>,
    /// Write the built-in test guest (a PVH/Linux-bootable ELF) to PATH and exit, e.g. to boot it under another VMM.
    #[arg(long = "export-guest", hide = true)]
    pub export_guest: Option<PathBuf>,
    /// Entry protocol for ELF kernels with a PVH note: auto, pvh or linux (64-bit boot protocol).
    #[arg(long, value_parser = ["auto", "pvh", "linux"], default_value = "auto")]
    pub boot: String,
}

fn config_from(a: &RunArgs) -> Result<(VmConfig, KernelSource, BootProtocol), String> {
    let memory_bytes = vmm::parse_size(&a.memory).map_err(|e| e.to_string())?;
    let cpu_model = a.cpu_model.parse::<vmm::config::CpuModel>().map_err(|e| e.to_string())?;
    let serial = a.serial.parse::<vmm::config::SerialConfig>().map_err(|e| e.to_string())?;
    let pins =
        a.pins.iter().map(|p| vmm::config::parse_pin(p)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let virtio = vmm::virtio::VirtioConfig {
        transport: a.transport.parse()?,
        disks: a.disks.iter().map(|d| d.parse().map_err(|e| format!("--disk {d}: {e}"))).collect::<Result<_, _>>()?,
        nets: a.nets.iter().map(|n| n.parse().map_err(|e| format!("--net {n}: {e}"))).collect::<Result<_, _>>()?,
        rng: a.rng,
        vsock: a.vsock.as_ref().map(|v| v.parse().map_err(|e| format!("--vsock {v}: {e}"))).transpose()?,
        balloon: a.balloon.as_ref().map(|b| b.parse().map_err(|e| format!("--balloon {b}: {e}"))).transpose()?,
        console: a.console.as_ref().map(|c| c.parse().map_err(|e| format!("--console {c}: {e}"))).transpose()?,
    };
    let kernel = match &a.kernel {
        Some(p) => KernelSource::Path(p.clone()),
        None => KernelSource::Builtin { name: "demo guest", bytes: test_guest::GUEST_ELF },
    };
    let proto = match a.boot.as_str() {
        "pvh" => BootProtocol::Pvh,
        "linux" => BootProtocol::Linux,
        _ => BootProtocol::Auto,
    };
    let config = VmConfig {
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.cmdline.clone(),
        cpus: a.cpus,
        memory_bytes,
        cpu_model,
        serial,
        hugepages: a.hugepages,
        api_socket: a.api_socket.clone(),
        on_reboot: if a.on_reboot == "restart" { OnReboot::Restart } else { OnReboot::Exit },
        pins,
        pci: true,
        virtio,
    };
    Ok((config, kernel, proto))
}

pub fn main(args: RunArgs) -> i32 {
    if let Some(p) = &args.export_guest {
        return match test_guest::write_guest(p) {
            Ok(()) => exit_status::OK,
            Err(e) => {
                eprintln!("tern run: cannot write the test guest to {}: {e}", p.display());
                exit_status::ERROR
            }
        };
    }
    let (config, kernel, proto) = match config_from(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern run: {e}");
            return exit_status::ERROR;
        }
    };
    match vmm::run_vm(config, kernel, proto) {
        Ok(outcome) => {
            match &outcome {
                VmOutcome::Fault(report) => eprintln!("tern run: guest fault: {report}"),
                VmOutcome::Rebooted => eprintln!("tern run: guest requested a reboot; exiting (--on-reboot exit)"),
                VmOutcome::Restart => return restart(),
                _ => {}
            }
            outcome.status()
        }
        Err(e) => {
            eprintln!("tern run: {e}");
            exit_status::ERROR
        }
    }
}

/// `--on-reboot restart`: start over with a fresh VM by re-executing this
/// process (same pid, so a supervisor keeps tracking it).
fn restart() -> i32 {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tern run: cannot restart the guest: {e}");
            return exit_status::ERROR;
        }
    };
    let n: u32 = std::env::var("TERN_RESTARTS").ok().and_then(|v| v.parse().ok()).unwrap_or(0) + 1;
    eprintln!("tern run: guest requested a reboot; restarting (restart #{n})");
    let err =
        std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("TERN_RESTARTS", n.to_string()).exec();
    eprintln!("tern run: cannot restart the guest: {err}");
    exit_status::ERROR
}
