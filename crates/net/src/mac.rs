//! Ethernet MAC addresses: parsing, formatting and random locally
//! administered addresses for guest NICs.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing a MAC address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("invalid MAC address '{0}': expected six hex bytes like 52:54:00:12:34:56")]
    Invalid(String),
}

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const LEN: usize = 6;

    /// A random unicast, locally administered address with QEMU's 52:54:00
    /// prefix, so guests and tools recognise it as a virtual NIC.
    pub fn random_local() -> Self {
        let mut tail = [0u8; 3];
        fill_random(&mut tail);
        MacAddr([0x52, 0x54, 0x00, tail[0], tail[1], tail[2]])
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(MacAddr(b.try_into().ok()?))
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 2 != 0
    }
}

/// Fill `buf` from the kernel's CSPRNG; falls back to time and pid mixing if
/// getrandom is unavailable (MACs need uniqueness, not secrecy).
fn fill_random(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into the valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut x = (nanos as u64) ^ ((std::process::id() as u64) << 32);
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacError::Invalid(s.to_string());
        let parts: Vec<&str> = if s.contains(':') { s.split(':').collect() } else { s.split('-').collect() };
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("02-00-00-00-00-01".parse::<MacAddr>().unwrap().0, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in
            ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "52:54:00:ab:cd:zz", "525:4:00:ab:cd:0f", "52::00:ab:cd:0f"]
        {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("invalid MAC address"), "{bad}");
        }
    }

    #[test]
    fn random_is_local_unicast_and_varies() {
        let a = MacAddr::random_local();
        let b = MacAddr::random_local();
        assert!(a.is_locally_administered() && !a.is_multicast());
        assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
        // Two 24-bit draws colliding has probability 2^-24.
        assert_ne!(a, b);
    }

    #[test]
    fn serde_as_string() {
        let m: MacAddr = "52:54:00:01:02:03".parse().unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"52:54:00:01:02:03\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
    }
}
