//! The report printed when a guest stops on a fault: the reason, the
//! registers, and the bytes of the instruction at RIP.

use hypervisor::Vcpu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A multi-line report for `vcpu` stopped because of `what`.
pub fn fault_report(vcpu: &Vcpu, mem: &GuestMemoryMmap, what: &str) -> String {
    let mut s = format!("vCPU {} stopped: {what}", vcpu.id());
    if let (Ok(r), Ok(sr)) = (vcpu.regs(), vcpu.sregs()) {
        s += &format!(
            "\n  rip={:#018x} rsp={:#018x} rflags={:#010x} cpl={}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x}\n  cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            sr.cs.dpl,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            sr.cr0,
            sr.cr3,
            sr.cr4,
            sr.efer,
            sr.cs.selector
        );
        let linear = sr.cs.base.wrapping_add(r.rip);
        let gpa = if sr.cr0 & 0x8000_0000 != 0 { vcpu.translate_gva(linear) } else { Some(linear) };
        match gpa {
            Some(gpa) => {
                let mut bytes = [0u8; 16];
                match mem.read_slice(&mut bytes, GuestAddress(gpa)) {
                    Ok(()) => s += &format!("\n  code at {gpa:#x}: {}", hex(&bytes)),
                    Err(_) => s += &format!("\n  code at {gpa:#x}: (outside guest memory)"),
                }
            }
            None => s += "\n  code: (RIP not mapped)",
        }
    }
    s
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}
