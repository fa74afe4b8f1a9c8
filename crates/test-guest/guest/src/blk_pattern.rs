//! The virtio-blk data pattern, identical in ../../src/lib.rs so host tests
//! can check what the guest wrote: each 512-byte sector starts with
//! `TERNBLK\0`, its sector number (u64 LE), then bytes `(sector * 7 + i) as u8`.

pub fn sector_pattern(sector: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..8].copy_from_slice(b"TERNBLK\0");
    s[8..16].copy_from_slice(&sector.to_le_bytes());
    for (i, b) in s.iter_mut().enumerate().skip(16) {
        *b = (sector.wrapping_mul(7).wrapping_add(i as u64)) as u8;
    }
    s
}

/// FNV-1a 64 over `bytes`, continuing from `hash` (0 starts a new one).
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = if hash == 0 { 0xcbf2_9ce4_8422_2325 } else { hash };
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
