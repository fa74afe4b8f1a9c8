//! Address-range dispatch for port I/O and MMIO. A [`Bus`] maps
//! non-overlapping ranges to devices; the vCPU loop calls `read`/`write`
//! with the absolute address and the device sees an offset into its range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// Read `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Write `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
    #[error("bus range at {0:#x} has zero length")]
    ZeroLength(u64),
    #[error("no device at bus address {0:#x}")]
    NoDevice(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Maps address ranges to devices. Cloning shares the same devices.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, (Range, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at `[base, base+len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let end = base.checked_add(len - 1).ok_or(BusError::ZeroLength(base))?;
        // The only candidates for overlap are the range starting at or below
        // `end` with the greatest base.
        if let Some((_, (r, _))) = self.devices.range(..=end).next_back()
            && r.base + (r.len - 1) >= base
        {
            return Err(BusError::Overlap { base, len, other: r.base });
        }
        self.devices.insert(base, (Range { base, len }, device));
        Ok(())
    }

    /// Remove the device whose range starts at `base`.
    pub fn remove(&mut self, base: u64) -> Result<SharedDevice, BusError> {
        self.devices.remove(&base).map(|(_, d)| d).ok_or(BusError::NoDevice(base))
    }

    /// The device containing `addr` and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (_, (r, dev)) = self.devices.range(..=addr).next_back()?;
        let off = addr - r.base;
        (off < r.len).then_some((off, dev))
    }

    /// Dispatch a read; returns false (and leaves `data` as all ones, like an
    /// open bus) when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((off, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((off, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f0, 9),
            Err(BusError::Overlap { base: 0x3f0, len: 9, other: 0x3f8 })
        );
        assert!(bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f0, 8).is_ok());
        assert!(bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x400, 1).is_ok());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![0x41])));
        let mut b = [0u8; 2];
        assert!(!bus.read(0x500, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x10, 0).is_err());
        assert!(bus.remove(0x3f8).is_ok());
        assert!(!bus.write(0x3f8, &[0]));
    }
}
