//! Minimal developer harness: boot the built-in test guest with a command line.
//! `cargo run -p vmm --example boot -- "tern.test=demo" [cpus]`
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmdline = args.get(1).cloned().unwrap_or_default();
    let cpus = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
    let memory_bytes = std::env::var("MEM_MIB").ok().and_then(|m| m.parse::<u64>().ok()).unwrap_or(128) << 20;
    let api_socket = std::env::var("API_SOCKET").ok().map(Into::into);
    let cfg = vmm::VmConfig { cmdline, cpus, memory_bytes, api_socket, ..Default::default() };
    let k = match std::env::var("KERNEL") {
        Ok(p) => vmm::KernelSource::Path(p.into()),
        Err(_) => vmm::KernelSource::Builtin { name: "test guest", bytes: test_guest::GUEST_ELF },
    };
    let proto = if std::env::var("BOOT_LINUX").is_ok() { vmm::BootProtocol::Linux } else { vmm::BootProtocol::Auto };
    match vmm::run_vm(cfg, k, proto) {
        Ok(o) => {
            eprintln!("outcome: {o:?}");
            std::process::exit(o.status())
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}
