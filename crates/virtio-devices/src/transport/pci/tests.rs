use std::path::Path;
use std::sync::Mutex;

use devices::{BusDevice, IoEventRegistry, MsiInterrupts};
use pci::{PciBarWindow, PciBus, PciConfigEcam, SharedPciBus};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::device::COMMON_FEATURES;
use crate::rng::Rng;
use crate::testing::{TestQueue, guest_memory};

#[derive(Default)]
struct Msi {
    sent: Mutex<Vec<u16>>,
}
impl MsiInterrupts for Msi {
    fn update(&self, _: u16, _: u64, _: u32, _: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, index: u16) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(index);
        Ok(())
    }
}

#[derive(Default)]
struct IoEvents {
    live: Mutex<Vec<u64>>,
}
impl IoEventRegistry for IoEvents {
    fn register_mmio(&self, addr: u64, _: Option<u32>, _: &EventFd) -> std::io::Result<()> {
        self.live.lock().unwrap().push(addr);
        Ok(())
    }
    fn unregister_mmio(&self, addr: u64, _: Option<u32>, _: &EventFd) -> std::io::Result<()> {
        self.live.lock().unwrap().retain(|&a| a != addr);
        Ok(())
    }
}

struct Rig {
    ecam: PciConfigEcam,
    win: PciBarWindow,
    msi: Arc<Msi>,
    io: Arc<IoEvents>,
    mem: GuestMemory,
    intx: Arc<devices::interrupt::CountingLine>,
}

const WIN: u64 = 0xc000_0000;

impl Rig {
    fn new() -> Self {
        let mem = guest_memory();
        let bus: SharedPciBus = Arc::new(Mutex::new(PciBus::new(WIN, 0x1000_0000)));
        let msi = Arc::new(Msi::default());
        let io = Arc::new(IoEvents::default());
        let rng = crate::attach::shared(Rng::new("rng0", Path::new("/dev/urandom")).unwrap());
        let mut dev = VirtioPciDevice::new(rng, mem.clone(), msi.clone(), io.clone()).unwrap();
        let intx = Arc::new(devices::interrupt::CountingLine { gsi: 10, ..Default::default() });
        dev.set_intx(intx.clone());
        assert_eq!(bus.lock().unwrap().add_device(Arc::new(Mutex::new(dev))).unwrap(), 1);
        Self { ecam: PciConfigEcam::new(bus.clone()), win: PciBarWindow::new(bus, WIN), msi, io, mem, intx }
    }
    fn cfg32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ecam.read(1 << 15 | off, &mut b);
        u32::from_le_bytes(b)
    }
    fn cfg_w(&mut self, off: u64, data: &[u8]) {
        self.ecam.write(1 << 15 | off, data);
    }
    fn w(&mut self, off: u64, data: &[u8]) {
        self.win.write(off, data);
    }
    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.win.read(off, &mut b);
        b[0]
    }
    fn r16(&mut self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.win.read(off, &mut b);
        u16::from_le_bytes(b)
    }
}

/// Walk the capability list like a driver: find virtio cap `cfg_type`.
fn find_cap(r: &mut Rig, want: u8) -> Option<(u64, u32)> {
    let mut p = (r.cfg32(0x34) & 0xff) as u64;
    while p != 0 {
        let h = r.cfg32(p);
        if h & 0xff == 0x09 && (h >> 24) as u8 == want {
            return Some((p, r.cfg32(p + 8)));
        }
        p = ((h >> 8) & 0xff) as u64;
    }
    None
}

#[test]
fn linux_style_bring_up_delivers_msix_and_follows_bar_moves() {
    let mut r = Rig::new();
    assert_eq!(r.cfg32(0), 0x1044_1af4, "virtio rng modern id");
    let (_, common) = find_cap(&mut r, 1).unwrap();
    let (notify_cap, notify) = find_cap(&mut r, 2).unwrap();
    assert_eq!(r.cfg32(notify_cap + 16), 4, "notify multiplier");
    assert!(find_cap(&mut r, 3).is_some() && find_cap(&mut r, 4).is_some());
    // No doorbell until memory decoding is on.
    assert!(r.io.live.lock().unwrap().is_empty());
    r.cfg_w(4, &6u16.to_le_bytes());
    assert_eq!(*r.io.live.lock().unwrap(), vec![WIN + notify as u64]);
    // Enable MSI-X and unmask vectors 0 and 1.
    let mut p = (r.cfg32(0x34) & 0xff) as u64;
    while r.cfg32(p) & 0xff != 0x11 {
        p = ((r.cfg32(p) >> 8) & 0xff) as u64;
    }
    r.cfg_w(p + 2, &0x8000u16.to_le_bytes());
    for v in 0..2u64 {
        r.w(0x4000 + 16 * v, &0xfee0_0000u32.to_le_bytes());
        r.w(0x4000 + 16 * v + 12, &0u32.to_le_bytes());
    }
    // Driver init through the common cfg.
    let c = common as u64;
    r.w(c + 0x14, &[1]);
    r.w(c + 0x14, &[3]);
    r.w(c + 0x08, &1u32.to_le_bytes());
    r.w(c + 0x0c, &((COMMON_FEATURES >> 32) as u32).to_le_bytes());
    r.w(c + 0x14, &[11]);
    assert_eq!(r.r8(c + 0x14) & 8, 8, "FEATURES_OK accepted");
    r.w(c + 0x10, &0u16.to_le_bytes());
    r.w(c + 0x16, &0u16.to_le_bytes());
    assert_eq!(r.r16(c + 0x18), 256);
    r.w(c + 0x18, &16u16.to_le_bytes());
    r.w(c + 0x1a, &1u16.to_le_bytes());
    assert_eq!(r.r16(c + 0x1a), 1);
    r.w(c + 0x1a, &9u16.to_le_bytes());
    assert_eq!(r.r16(c + 0x1a), NO_VECTOR, "out-of-range vector refused");
    r.w(c + 0x1a, &1u16.to_le_bytes());
    let mut q = TestQueue::new(0x10000, 16);
    for (off, a) in [(0x20, q.desc), (0x28, q.avail), (0x30, q.used)] {
        r.w(c + off, &(a as u32).to_le_bytes());
        r.w(c + off + 4, &((a >> 32) as u32).to_le_bytes());
    }
    r.w(c + 0x1c, &1u16.to_le_bytes());
    r.w(c + 0x14, &[15]);
    assert_eq!(r.r8(c + 0x14), 15);
    let m = r.mem.memory();
    m.write_slice(&[0u8; 32], GuestAddress(0x100000)).unwrap();
    q.add(&m, &[(0x100000, 32, true)]);
    drop(m);
    // Trapped doorbell write (the ioeventfd path signals the same EventFd).
    r.w(notify as u64, &0u16.to_le_bytes());
    assert_eq!(q.wait_used(&r.mem), Some((0, 32)));
    let t0 = std::time::Instant::now();
    while r.msi.sent.lock().unwrap().is_empty() && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(*r.msi.sent.lock().unwrap(), vec![1], "queue 0 interrupt on vector 1");
    assert_eq!(r.intx.count.load(std::sync::atomic::Ordering::SeqCst), 0, "no INTx while MSI-X is on");
    assert_eq!(r.r8(0x1000), 1, "ISR says used ring");
    assert_eq!(r.r8(0x1000), 0, "ISR read clears it");
    // The guest moves BAR0: doorbells follow.
    r.cfg_w(4, &0u16.to_le_bytes());
    assert!(r.io.live.lock().unwrap().is_empty());
    r.cfg_w(0x10, &(WIN as u32 + 0x10_0000).to_le_bytes());
    r.cfg_w(4, &2u16.to_le_bytes());
    assert_eq!(*r.io.live.lock().unwrap(), vec![WIN + 0x10_0000 + notify as u64]);
    assert_eq!(r.r8(0x10_0000 + c + 0x14), 15, "common cfg at the new place");
}

#[test]
fn odd_accesses_do_not_panic() {
    let mut r = Rig::new();
    r.cfg_w(4, &2u16.to_le_bytes());
    for off in [0u64, 0x13, 0x37, 0x1001, 0x2fff, 0x3ffe, 0x4000 + 16 * 100, 0x6000, 0x7fff] {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = vec![0u8; len];
            r.win.read(off, &mut b);
            r.w(off, &vec![0xffu8; len]);
        }
    }
    // Status 0xff with garbage queue config must not activate a broken queue.
    r.w(0x14, &[0xff]);
}

/// A guest without MSI-X support (Linux without CONFIG_PCI_MSI) gets INTx:
/// pin INTA, the GSI in the Interrupt Line register, ISR says why.
#[test]
fn intx_when_msix_is_off() {
    let mut r = Rig::new();
    assert_eq!(r.cfg32(0x3c) & 0xffff, 0x010a, "INTA#, line 10");
    r.cfg_w(4, &2u16.to_le_bytes());
    let (_, common) = find_cap(&mut r, 1).unwrap();
    let (_, notify) = find_cap(&mut r, 2).unwrap();
    let c = common as u64;
    r.w(c + 0x14, &[3]);
    r.w(c + 0x08, &1u32.to_le_bytes());
    r.w(c + 0x0c, &((COMMON_FEATURES >> 32) as u32).to_le_bytes());
    r.w(c + 0x14, &[11]);
    r.w(c + 0x18, &16u16.to_le_bytes());
    let mut q = TestQueue::new(0x10000, 16);
    for (off, a) in [(0x20, q.desc), (0x28, q.avail), (0x30, q.used)] {
        r.w(c + off, &(a as u32).to_le_bytes());
    }
    r.w(c + 0x1c, &1u16.to_le_bytes());
    r.w(c + 0x14, &[15]);
    q.add(&r.mem.memory(), &[(0x100000, 16, true)]);
    r.w(notify as u64, &0u16.to_le_bytes());
    assert_eq!(q.wait_used(&r.mem), Some((0, 16)));
    let t0 = std::time::Instant::now();
    while r.intx.count.load(std::sync::atomic::Ordering::SeqCst) == 0 && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(r.intx.count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(r.r8(0x1000), 1);
    assert!(r.msi.sent.lock().unwrap().is_empty());
}
