//! Boots the test guest through the Linux 64-bit boot protocol (ELF
//! e_entry in long mode, rsi = zero page) on /dev/kvm with a minimal
//! in-test loader, so that path is checked without QEMU (which only does
//! PVH for ELF images) and without ACPI (the guest must still finish).

use std::sync::mpsc;
use std::time::Duration;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};

const MEM_SIZE: usize = 64 << 20;
const ZERO_PAGE: u64 = 0x7000;
const CMDLINE: u64 = 0x20000;
const PML4: u64 = 0x9000;
const GDT: u64 = 0x500;

struct Outcome {
    serial: String,
    /// Value written to the test-exit port, or the exit that ended the run.
    end: Result<u32, String>,
}

fn put(mem: &mut [u8], at: u64, bytes: &[u8]) {
    mem[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

fn load_elf(mem: &mut [u8], elf: &[u8]) -> u64 {
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (phoff, phnum) = (u64_at(32) as usize, u16_at(56));
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) != 1 {
            continue;
        }
        let (offset, paddr, filesz) = (u64_at(ph + 8) as usize, u64_at(ph + 24), u64_at(ph + 32) as usize);
        put(mem, paddr, &elf[offset..offset + filesz]);
    }
    u64_at(24)
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn boot_linux64(cmdline: &str) -> Outcome {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    let _ = vm.set_tss_address(0xfffb_d000);
    // SAFETY: a fresh private anonymous mapping, owned by this function and
    // registered with KVM below; unmapped never (the test process ends).
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED);
    // SAFETY: the mapping above is MEM_SIZE bytes and lives for the process.
    let mem = unsafe { std::slice::from_raw_parts_mut(host as *mut u8, MEM_SIZE) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is a valid mapping that outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.expect("set memory region");

    let entry = load_elf(mem, test_guest::GUEST_ELF);
    // Zero page: command line, e820 (no ACPI at all: the guest must cope).
    put(mem, CMDLINE, cmdline.as_bytes());
    put(mem, ZERO_PAGE + 0x228, &(CMDLINE as u32).to_le_bytes());
    let e820 = [(0u64, 0x9fc00u64), (0x10_0000, MEM_SIZE as u64 - 0x10_0000)];
    put(mem, ZERO_PAGE + 0x1e8, &[e820.len() as u8]);
    for (i, (addr, size)) in e820.iter().enumerate() {
        let at = ZERO_PAGE + 0x2d0 + i as u64 * 20;
        put(mem, at, &addr.to_le_bytes());
        put(mem, at + 8, &size.to_le_bytes());
        put(mem, at + 16, &1u32.to_le_bytes());
    }
    // The VMM's identity map of the first GiB and a flat GDT.
    put(mem, PML4, &(PML4 + 0x1000 + 3).to_le_bytes());
    put(mem, PML4 + 0x1000, &(PML4 + 0x2000 + 3).to_le_bytes());
    for i in 0..512u64 {
        put(mem, PML4 + 0x2000 + i * 8, &((i << 21) | 0x83).to_le_bytes());
    }
    for (i, d) in [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff].iter().enumerate() {
        put(mem, GDT + i as u64 * 8, &d.to_le_bytes());
    }

    let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).expect("supported CPUID");
    vcpu.set_cpuid2(&cpuid).expect("set CPUID");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs = segment(0x08, true);
    let data = segment(0x10, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 23;
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20; // PAE
    sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
    sregs.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = entry;
    regs.rsi = ZERO_PAGE;
    regs.rsp = 0x8ff0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();

    let mut serial = Vec::new();
    let end = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x3f8, data)) => serial.extend_from_slice(data),
            Ok(VcpuExit::IoOut(0xf4, data)) => {
                let mut v = [0u8; 4];
                v[..data.len()].copy_from_slice(data);
                break Ok(u32::from_le_bytes(v));
            }
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::IoIn(port, data)) => data.fill(if port == 0x3fd { 0x60 } else { 0xff }),
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0),
            Ok(other) => break Err(format!("{other:?}")),
            Err(e) => break Err(format!("KVM_RUN: {e}")),
        }
    };
    Outcome { serial: String::from_utf8_lossy(&serial).into_owned(), end }
}

/// Run with a deadline: a guest that never exits fails the test instead of
/// hanging it.
fn boot(cmdline: &str) -> Option<Outcome> {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        eprintln!("SKIP: needs a usable /dev/kvm");
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let cmdline = cmdline.to_owned();
    std::thread::spawn(move || tx.send(boot_linux64(&cmdline)));
    Some(rx.recv_timeout(Duration::from_secs(60)).expect("guest did not exit within 60 s"))
}

#[test]
fn demo_boots_through_the_linux_64bit_entry_without_acpi() {
    let Some(out) = boot("tern.test=demo") else { return };
    assert!(out.serial.contains("Tern demo guest\n"), "{}", out.serial);
    assert!(out.serial.contains("TERN boot protocol=linux64 cmdline=\"tern.test=demo\"\n"), "{}", out.serial);
    assert!(out.serial.contains("TERN memory ram_mib=63 regions=2\n"), "{}", out.serial);
    assert!(out.serial.contains("TERN acpi none\n"), "{}", out.serial);
    assert!(out.serial.contains("TERN test=demo result=pass\n"), "{}", out.serial);
    // No ACPI to power off with: the test-exit port with the pass code.
    assert_eq!(out.end, Ok(test_guest::EXIT_PASS), "{}", out.serial);
}

#[test]
fn exit_code_through_the_linux_64bit_entry() {
    let Some(out) = boot("console=ttyS0 tern.test=exit:7") else { return };
    assert_eq!(out.end, Ok(7), "{}", out.serial);
}

#[test]
fn memory_scenario_uses_the_e820_map() {
    let Some(out) = boot("tern.test=memory tern.mem_mib=8") else { return };
    assert!(out.serial.contains("TERN test=memory result=pass bytes=8388608 "), "{}", out.serial);
    assert_eq!(out.end, Ok(test_guest::EXIT_PASS));
}

#[test]
fn cpl3_fault_reaches_the_guest_handler() {
    let Some(out) = boot("tern.test=fault") else { return };
    assert!(out.serial.contains("TERN exception vector=0x000000000000000e "), "{}", out.serial);
    assert_eq!(out.end, Ok(test_guest::EXIT_EXCEPTION), "{}", out.serial);
}
