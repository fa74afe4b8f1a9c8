//! PCI segment 0, bus 0: a host bridge at 00:00.0 and up to 31 devices.
//! Configuration space is reachable through port 0xcf8/0xcfc
//! ([`PciConfigIo`]) and ECAM ([`PciConfigEcam`]); BAR accesses in the
//! 32-bit window are routed by [`PciBarWindow`], which looks the BAR up at
//! access time, so a BAR the guest moves keeps working without touching the
//! MMIO bus. Devices hear about moves through [`PciDevice::bar_moved`] (to
//! move their ioeventfds).

use std::sync::{Arc, Mutex};

use devices::BusDevice;

use crate::config::{COMMAND_MEMORY, NUM_BARS, PciConfig, PciIdentity};

pub const MAX_DEVICES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI bus 0 is full (at most {MAX_DEVICES} slots)")]
    BusFull,
    #[error("no room for a {size:#x}-byte BAR in the PCI window {start:#x}+{len:#x}")]
    NoBarSpace { size: u64, start: u64, len: u64 },
}

/// A function on the bus.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;
    /// Config space write; devices override it to watch their capabilities.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    /// `bar` is now decoded at `new` (None: memory decoding off); it was at `old`.
    fn bar_moved(&mut self, _bar: usize, _old: Option<u64>, _new: Option<u64>) {}
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

struct HostBridge {
    config: PciConfig,
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}

struct Slot {
    dev: SharedPciDevice,
    mapped: [Option<u64>; NUM_BARS],
}

pub struct PciBus {
    slots: Vec<Option<Slot>>,
    window_start: u64,
    window_len: u64,
    next_bar: u64,
}

fn lock(d: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciBus {
    /// A bus whose BARs are allocated in `[window_start, window_start + window_len)`.
    pub fn new(window_start: u64, window_len: u64) -> Self {
        let bridge = HostBridge {
            config: PciConfig::new(PciIdentity {
                vendor: 0x8086,
                device: 0x0d57,
                class: 0x06,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        };
        let mut slots: Vec<Option<Slot>> = (0..MAX_DEVICES).map(|_| None).collect();
        slots[0] = Some(Slot { dev: Arc::new(Mutex::new(bridge)), mapped: [None; NUM_BARS] });
        Self { slots, window_start, window_len, next_bar: window_start }
    }

    /// Put `dev` in the first free slot and assign its BARs. Returns the
    /// device number (bus 0, function 0).
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self.slots.iter().position(|s| s.is_none()).ok_or(PciError::BusFull)?;
        {
            let mut d = lock(&dev);
            let mut next = self.next_bar;
            let mut assigned = Vec::new();
            for bar in 0..NUM_BARS {
                let Some(b) = d.config().bar(bar) else { continue };
                if d.config().bar_addr(bar) != 0 || assigned.contains(&bar) {
                    continue;
                }
                let addr = next.next_multiple_of(b.size);
                if addr + b.size > self.window_start + self.window_len {
                    return Err(PciError::NoBarSpace { size: b.size, start: self.window_start, len: self.window_len });
                }
                d.config_mut().set_bar_addr(bar, addr);
                assigned.push(bar);
                next = addr + b.size;
            }
            self.next_bar = next;
        }
        self.slots[slot] = Some(Slot { dev, mapped: [None; NUM_BARS] });
        self.update_mappings(slot);
        Ok(slot as u8)
    }

    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots.get(slot as usize)?.as_ref().map(|s| s.dev.clone())
    }

    pub fn config_read(&self, dev: u8, func: u8, reg: usize) -> u32 {
        match self.slots.get(dev as usize) {
            Some(Some(s)) if func == 0 => lock(&s.dev).config().read_reg(reg),
            _ => 0xffff_ffff,
        }
    }

    pub fn config_write(&mut self, dev: u8, func: u8, offset: usize, data: &[u8]) {
        let Some(Some(s)) = self.slots.get(dev as usize) else { return };
        if func != 0 {
            return;
        }
        lock(&s.dev).write_config(offset, data);
        self.update_mappings(dev as usize);
    }

    /// Recompute where each BAR of `slot` is decoded and tell the device.
    fn update_mappings(&mut self, slot: usize) {
        let Some(Some(s)) = self.slots.get_mut(slot) else { return };
        let mut d = lock(&s.dev);
        let mem_on = d.config().command() & COMMAND_MEMORY != 0;
        for bar in 0..NUM_BARS {
            let Some(b) = d.config().bar(bar) else { continue };
            let addr = d.config().bar_addr(bar);
            // An all-ones probe value or a BAR past the address space is not a mapping.
            let valid = addr != 0 && addr.checked_add(b.size).is_some() && addr & (b.size - 1) == 0;
            let new = (mem_on && valid).then_some(addr);
            if new != s.mapped[bar] {
                let old = s.mapped[bar];
                s.mapped[bar] = new;
                if new.is_some_and(|a| a < self.window_start || a + b.size > self.window_start + self.window_len) {
                    tracing::warn!("pci: 00:{slot:02x}.0 BAR{bar} moved outside the PCI window to {addr:#x}");
                }
                d.bar_moved(bar, old, new);
            }
        }
    }

    /// The device, BAR and offset decoding `addr`.
    fn resolve(&self, addr: u64) -> Option<(SharedPciDevice, usize, u64)> {
        for s in self.slots.iter().flatten() {
            for (bar, m) in s.mapped.iter().enumerate() {
                let Some(base) = *m else { continue };
                let size = lock(&s.dev).config().bar(bar).map_or(0, |b| b.size);
                if addr >= base && addr - base < size {
                    return Some((s.dev.clone(), bar, addr - base));
                }
            }
        }
        None
    }

    pub fn bar_read(&self, addr: u64, data: &mut [u8]) {
        match self.resolve(addr) {
            Some((d, bar, off)) => lock(&d).bar_read(bar, off, data),
            None => data.fill(0xff),
        }
    }

    pub fn bar_write(&self, addr: u64, data: &[u8]) {
        if let Some((d, bar, off)) = self.resolve(addr) {
            lock(&d).bar_write(bar, off, data);
        }
    }
}

pub type SharedPciBus = Arc<Mutex<PciBus>>;

fn bus(b: &SharedPciBus) -> std::sync::MutexGuard<'_, PciBus> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_sub(bus: &PciBus, dev: u8, func: u8, off: usize, data: &mut [u8]) {
    let v = bus.config_read(dev, func, off / 4).to_le_bytes();
    let s = off % 4;
    for (i, b) in data.iter_mut().enumerate() {
        *b = v.get(s + i).copied().unwrap_or(0xff);
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc.
pub struct PciConfigIo {
    bus: SharedPciBus,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: SharedPciBus) -> Self {
        Self { bus, address: 0 }
    }

    fn target(&self) -> Option<(u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        Some((((self.address >> 11) & 0x1f) as u8, ((self.address >> 8) & 7) as u8, (self.address & 0xfc) as usize))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let v = self.address.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(offset as usize + i).copied().unwrap_or(0);
                }
            }
            4..=7 => match self.target() {
                Some((d, f, reg)) => read_sub(&bus(&self.bus), d, f, reg + (offset as usize - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            4..=7 => {
                if let Some((d, f, reg)) = self.target() {
                    bus(&self.bus).config_write(d, f, reg + (offset as usize - 4), data);
                }
            }
            _ => {}
        }
    }
}

/// PCI Express enhanced configuration access (MCFG), bus 0 only.
pub struct PciConfigEcam {
    bus: SharedPciBus,
}

impl PciConfigEcam {
    pub fn new(bus: SharedPciBus) -> Self {
        Self { bus }
    }
}

fn ecam_split(offset: u64) -> Option<(u8, u8, usize)> {
    if offset >> 20 != 0 {
        return None;
    }
    Some((((offset >> 15) & 0x1f) as u8, ((offset >> 12) & 7) as u8, (offset & 0xfff) as usize))
}

impl BusDevice for PciConfigEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match ecam_split(offset) {
            Some((d, f, off)) if off % 4 + data.len() <= 4 => read_sub(&bus(&self.bus), d, f, off, data),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((d, f, off)) = ecam_split(offset)
            && off % 4 + data.len() <= 4
        {
            bus(&self.bus).config_write(d, f, off, data);
        }
    }
}

/// The BAR window on the MMIO bus; routes each access to the BAR that
/// currently decodes it.
pub struct PciBarWindow {
    bus: SharedPciBus,
    base: u64,
}

impl PciBarWindow {
    pub fn new(bus: SharedPciBus, base: u64) -> Self {
        Self { bus, base }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        bus(&self.bus).bar_read(self.base + offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        bus(&self.bus).bar_write(self.base + offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Moves = Arc<Mutex<Vec<(usize, Option<u64>, Option<u64>)>>>;

    struct Dev {
        config: PciConfig,
        moves: Moves,
        last: Option<(usize, u64, Vec<u8>)>,
    }
    impl PciDevice for Dev {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 + offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last = Some((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
            self.moves.lock().unwrap().push((bar, old, new));
        }
    }

    fn cfg_write(io: &mut PciConfigIo, dev: u32, reg: u32, v: u32) {
        io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
        io.write(4, &v.to_le_bytes());
    }

    fn cfg_read(io: &mut PciConfigIo, dev: u32, reg: u32) -> u32 {
        io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
        let mut b = [0u8; 4];
        io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn enumerates_assigns_bars_and_follows_moves() {
        let bus: SharedPciBus = Arc::new(Mutex::new(PciBus::new(0xc000_0000, 0x1000_0000)));
        let moves = Arc::new(Mutex::new(Vec::new()));
        let mut config = PciConfig::new(PciIdentity {
            vendor: 0x1af4,
            device: 0x1044,
            class: 0xff,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.add_mem_bar(0, 0x4000, true).unwrap();
        let dev = Arc::new(Mutex::new(Dev { config, moves: moves.clone(), last: None }));
        assert_eq!(bus.lock().unwrap().add_device(dev.clone()).unwrap(), 1);
        let mut io = PciConfigIo::new(bus.clone());
        let mut ecam = PciConfigEcam::new(bus.clone());
        assert_eq!(cfg_read(&mut io, 0, 0), 0x0d57_8086);
        assert_eq!(cfg_read(&mut io, 1, 0), 0x1044_1af4);
        assert_eq!(cfg_read(&mut io, 2, 0), 0xffff_ffff, "empty slot");
        let mut b = [0u8; 2];
        ecam.read(1 << 15 | 2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x1044);
        assert_eq!(cfg_read(&mut io, 1, 0x10), 0xc000_0004);
        // Nothing decoded until memory decoding is on.
        assert!(moves.lock().unwrap().is_empty());
        cfg_write(&mut io, 1, 4, 2);
        assert_eq!(*moves.lock().unwrap(), vec![(0, None, Some(0xc000_0000))]);
        let mut win = PciBarWindow::new(bus.clone(), 0xc000_0000);
        let mut r = [0u8; 1];
        win.read(0x10, &mut r);
        assert_eq!(r, [0x10]);
        // The guest moves the BAR (with decoding off, as Linux does).
        cfg_write(&mut io, 1, 4, 0);
        cfg_write(&mut io, 1, 0x10, 0xffff_ffff);
        assert_eq!(cfg_read(&mut io, 1, 0x10), 0xffff_c004);
        cfg_write(&mut io, 1, 0x10, 0xc010_0000);
        cfg_write(&mut io, 1, 4, 2);
        assert_eq!(moves.lock().unwrap().last(), Some(&(0, None, Some(0xc010_0000))));
        win.write(0x10_0008, &[7]);
        assert_eq!(dev.lock().unwrap().last, Some((0, 8, vec![7])));
        win.read(0x0, &mut r);
        assert_eq!(r, [0xff], "old location no longer decodes");
    }

    #[test]
    fn bus_fills_up() {
        let mut bus = PciBus::new(0xc000_0000, 0x1000);
        let mk = |size| {
            let mut c = PciConfig::new(PciIdentity {
                vendor: 1,
                device: 2,
                class: 0,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            });
            c.add_mem_bar(0, size, false).unwrap();
            Arc::new(Mutex::new(Dev { config: c, moves: Arc::default(), last: None }))
        };
        assert!(bus.add_device(mk(0x1000)).is_ok());
        assert!(matches!(bus.add_device(mk(0x1000)), Err(PciError::NoBarSpace { .. })));
    }
}
