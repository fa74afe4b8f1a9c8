//! Boot-time structures handed to the guest kernel: the Linux zero page
//! (`boot_params`) and the PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use crate::layout::{PVH_INFO_START, ZERO_PAGE_START};
use crate::memory::E820Entry;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the e820 map has {0} entries, more than the zero page holds")]
    TooManyE820(usize),
    #[error("cannot write {what} to guest memory at {addr:#x}: {source}")]
    Write { what: &'static str, addr: u64, source: vm_memory::GuestMemoryError },
}

/// Magic values from the boot protocols.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

// Newtypes so the loader's plain-old-data structs can be written with
// vm-memory (the orphan rule keeps us from implementing ByteValued on them).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: hvm_start_info is repr(C), has only integer fields and no padding
// the guest could misread; any byte pattern is a valid value.
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: repr(C) integers only, 24 bytes without padding (asserted by the loader crate).
unsafe impl ByteValued for MemmapEntry {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: repr(C) integers only, 32 bytes without padding.
unsafe impl ByteValued for ModlistEntry {}

/// Where the initrd, command line and firmware tables are.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInfo {
    pub cmdline_addr: u64,
    pub cmdline_len: usize,
    pub initrd: Option<(u64, u64)>,
    pub rsdp_addr: u64,
}

/// Fill the Linux zero page. `header` is the bzImage's own setup header, or
/// None for an ELF vmlinux.
pub fn write_zero_page<M: GuestMemory>(
    mem: &M,
    header: Option<setup_header>,
    info: &BootInfo,
    e820: &[E820Entry],
) -> Result<u64, BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp_addr;
    if e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820(e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START)).map_err(|source| BootError::Write {
        what: "zero page",
        addr: ZERO_PAGE_START,
        source,
    })?;
    Ok(ZERO_PAGE_START)
}

/// Fill the PVH start info, its memory map and module list (the initrd).
/// Returns the start info's address, which goes in %ebx.
pub fn write_pvh_start_info<M: GuestMemory>(mem: &M, info: &BootInfo, e820: &[E820Entry]) -> Result<u64, BootError> {
    let start = PVH_INFO_START;
    let memmap_addr = start + std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = memmap_addr + (e820.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let w = |what, addr: u64, r: Result<(), vm_memory::GuestMemoryError>| {
        r.map_err(|source| BootError::Write { what, addr, source })
    };
    for (i, e) in e820.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind, reserved: 0 });
        let at = memmap_addr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        w("PVH memory map", at, mem.write_obj(entry, GuestAddress(at)))?;
    }
    let mut si = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: info.cmdline_addr,
        rsdp_paddr: info.rsdp_addr,
        memmap_paddr: memmap_addr,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = info.initrd {
        let m = ModlistEntry(hvm_modlist_entry { paddr, size, ..Default::default() });
        w("PVH module list", modlist_addr, mem.write_obj(m, GuestAddress(modlist_addr)))?;
        si.nr_modules = 1;
        si.modlist_paddr = modlist_addr;
    }
    w("PVH start info", start, mem.write_obj(StartInfo(si), GuestAddress(start)))?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::e820_map;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    #[test]
    fn zero_page_has_magic_cmdline_and_e820() {
        let m: GuestMemoryMmap = mem();
        let e820 = e820_map(32 << 20).unwrap();
        let info =
            BootInfo { cmdline_addr: 0x20000, cmdline_len: 10, initrd: Some((0x100_0000, 4096)), rsdp_addr: 0xe0000 };
        write_zero_page(&m, None, &info, &e820).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x100_0000);
        assert_eq!(p.e820_entries as usize, e820.len());
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        // Raw offsets from Documentation/arch/x86/zero-page.rst.
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(ZERO_PAGE_START + 0x228)).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x20000);
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_modules() {
        let m: GuestMemoryMmap = mem();
        let e820 = e820_map(32 << 20).unwrap();
        let info =
            BootInfo { cmdline_addr: 0x20000, cmdline_len: 5, initrd: Some((0x100_0000, 8192)), rsdp_addr: 0xe0000 };
        let at = write_pvh_start_info(&m, &info, &e820).unwrap();
        let si: StartInfo = m.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(si.0.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.0.memmap_entries as usize, e820.len());
        assert_eq!(si.0.nr_modules, 1);
        let first: MemmapEntry = m.read_obj(GuestAddress(si.0.memmap_paddr)).unwrap();
        assert_eq!(first.0.size, e820[0].size);
        let module: ModlistEntry = m.read_obj(GuestAddress(si.0.modlist_paddr)).unwrap();
        assert_eq!(module.0.size, 8192);
    }
}
