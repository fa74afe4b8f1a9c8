//! Minimal developer harness: boot the built-in test guest with a command line.
//! `cargo run -p vmm --example boot -- "tern.test=demo" [cpus]`
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmdline = args.get(1).cloned().unwrap_or_default();
    let cpus = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
    let cfg = vmm::VmConfig { cmdline, cpus, ..Default::default() };
    let k = vmm::KernelSource::Builtin { name: "test guest", bytes: test_guest::GUEST_ELF };
    match vmm::run_vm(cfg, k, vmm::BootProtocol::Auto) {
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
