//! What the VMM handed us: PVH `hvm_start_info` or the Linux zero page.

use crate::cpu::{phys_slice, read8, read32u, read64u};

pub const BOOT_KIND_PVH: u64 = 1;
pub const BOOT_KIND_LINUX64: u64 = 2;

const PVH_MAGIC: u32 = 0x336e_c578;
pub const E820_RAM: u32 = 1;
const MAX_REGIONS: usize = 64;

#[derive(Clone, Copy)]
pub struct Region {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub protocol: &'static str,
    pub cmdline: &'static [u8],
    /// RSDP address handed over by the loader (0: scan for it).
    pub rsdp: u64,
    pub regions: [Region; MAX_REGIONS],
    pub region_count: usize,
}

impl BootInfo {
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.region_count]
    }

    /// Bytes of usable RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.regions().iter().filter(|r| r.kind == E820_RAM).map(|r| r.size).sum()
    }

    fn push(&mut self, addr: u64, size: u64, kind: u32) {
        if self.region_count < MAX_REGIONS {
            self.regions[self.region_count] = Region { addr, size, kind };
            self.region_count += 1;
        }
    }
}

fn c_string(addr: u64) -> &'static [u8] {
    if addr == 0 || addr >= crate::cpu::MAPPED_LIMIT {
        return &[];
    }
    let mut len = 0;
    while len < 4096 && read8(addr + len as u64) != 0 {
        len += 1;
    }
    phys_slice(addr, len)
}

pub fn parse(info: u64, kind: u64) -> BootInfo {
    let mut boot = BootInfo {
        protocol: "unknown",
        cmdline: &[],
        rsdp: 0,
        regions: [Region { addr: 0, size: 0, kind: 0 }; MAX_REGIONS],
        region_count: 0,
    };
    if info == 0 || info >= crate::cpu::MAPPED_LIMIT {
        return boot;
    }
    match kind {
        BOOT_KIND_PVH if read32u(info) == PVH_MAGIC => {
            boot.protocol = "pvh";
            let version = read32u(info + 4);
            boot.cmdline = c_string(read64u(info + 24));
            boot.rsdp = read64u(info + 32);
            if version >= 1 {
                let map = read64u(info + 40);
                let entries = read32u(info + 48) as u64;
                if map != 0 && map < crate::cpu::MAPPED_LIMIT {
                    for i in 0..entries.min(MAX_REGIONS as u64) {
                        let e = map + i * 24;
                        boot.push(read64u(e), read64u(e + 8), read32u(e + 16));
                    }
                }
            }
        }
        BOOT_KIND_LINUX64 => {
            boot.protocol = "linux64";
            let ptr = read32u(info + 0x228) as u64 | ((read32u(info + 0xc8) as u64) << 32);
            boot.cmdline = c_string(ptr);
            boot.rsdp = read64u(info + 0x70);
            let entries = read8(info + 0x1e8) as u64;
            for i in 0..entries.min(128) {
                let e = info + 0x2d0 + i * 20;
                boot.push(read64u(e), read64u(e + 8), read32u(e + 16));
            }
        }
        _ => {}
    }
    boot
}

/// `key=value` lookup on the command line (first match; `key` alone gives "").
pub fn param<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a [u8]> {
    for word in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
        if let Some(rest) = word.strip_prefix(key.as_bytes()) {
            if rest.is_empty() {
                return Some(rest);
            }
            if let Some(value) = rest.strip_prefix(b"=") {
                return Some(value);
            }
        }
    }
    None
}

/// Decimal or 0x-hex number, with an optional K/M/G (binary) suffix.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    let (digits, shift) = match text.last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let (digits, radix) = match digits.strip_prefix(b"0x") {
        Some(hex) => (hex, 16),
        None => (digits, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(radix)? as u64;
        value = value.checked_mul(radix as u64)?.checked_add(v)?;
    }
    value.checked_shl(shift).filter(|v| v >> shift == value)
}
