use std::path::Path;
use std::sync::Mutex;

use devices::interrupt::{CountingLine, SharedLine};
use devices::{Bus, InterruptManager, IoEventRegistry, MsiInterrupts};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::device::COMMON_FEATURES;
use crate::rng::Rng;
use crate::testing::{TestQueue, guest_memory};

#[derive(Default)]
struct Irqs {
    lines: Mutex<Vec<Arc<CountingLine>>>,
    msi_groups: Mutex<Vec<u16>>,
}
struct NoMsi;
impl MsiInterrupts for NoMsi {
    fn update(&self, _: u16, _: u64, _: u32, _: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _: u16) -> std::io::Result<()> {
        Ok(())
    }
}
impl InterruptManager for Irqs {
    fn legacy_line(&self, gsi: u32) -> std::io::Result<SharedLine> {
        let l = Arc::new(CountingLine { gsi, ..Default::default() });
        self.lines.lock().unwrap().push(l.clone());
        Ok(l)
    }
    fn msi_group(&self, count: u16) -> std::io::Result<Arc<dyn MsiInterrupts>> {
        self.msi_groups.lock().unwrap().push(count);
        Ok(Arc::new(NoMsi))
    }
}

#[derive(Default)]
struct IoEvents {
    regs: Mutex<Vec<(u64, Option<u32>)>>,
}
impl IoEventRegistry for IoEvents {
    fn register_mmio(&self, addr: u64, dm: Option<u32>, _: &EventFd) -> std::io::Result<()> {
        self.regs.lock().unwrap().push((addr, dm));
        Ok(())
    }
    fn unregister_mmio(&self, addr: u64, dm: Option<u32>, _: &EventFd) -> std::io::Result<()> {
        self.regs.lock().unwrap().retain(|r| *r != (addr, dm));
        Ok(())
    }
}

fn rng(id: &str) -> SharedDevice {
    shared(Rng::new(id, Path::new("/dev/urandom")).unwrap())
}

fn rd(bus: &Bus, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(addr, &mut b));
    u32::from_le_bytes(b)
}

fn wr(bus: &Bus, addr: u64, v: u32) {
    assert!(bus.write(addr, &v.to_le_bytes()));
}

#[test]
fn attach_mmio_places_announces_and_registers_doorbells() {
    let (mut mmio, mut pio, mut cmdline) = (Bus::new(), Bus::new(), Vec::new());
    let irqs = Arc::new(Irqs::default());
    let io = Arc::new(IoEvents::default());
    let mut ctx = DeviceContext {
        mem: guest_memory(),
        mmio_bus: &mut mmio,
        pio_bus: &mut pio,
        interrupts: irqs.clone(),
        ioevents: io.clone(),
        cmdline_extra: &mut cmdline,
    };
    let a = attach_mmio(&mut ctx, rng("rng0"), 0).unwrap();
    let b = attach_mmio(&mut ctx, rng("rng1"), 1).unwrap();
    assert!(matches!(attach_mmio(&mut ctx, rng("rngX"), 15), Err(AttachError::NoSlot { .. })));
    assert_eq!(a.location, "mmio@0xd0000000 irq 5");
    assert_eq!(b.id(), "rng1");
    assert_eq!(cmdline, vec!["virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6"]);
    assert_eq!(*io.regs.lock().unwrap(), vec![(0xd000_0050, Some(0)), (0xd000_1050, Some(0))]);
    assert_eq!(rd(&mmio, 0xd000_1000), 0x7472_6976);
    assert_eq!(rd(&mmio, 0xd000_1008), 4);
    let _ = pio;
}

/// Bring an mmio rng up, use it, snapshot it paused, restore into a fresh
/// attachment on the same memory, and check it continues where it was.
#[test]
fn snapshot_and_restore_continue_the_queue() {
    let mem = guest_memory();
    let irqs = Arc::new(Irqs::default());
    let io = Arc::new(IoEvents::default());
    let (mut mmio, mut pio, mut cmdline) = (Bus::new(), Bus::new(), Vec::new());
    let mut ctx = DeviceContext {
        mem: mem.clone(),
        mmio_bus: &mut mmio,
        pio_bus: &mut pio,
        interrupts: irqs.clone(),
        ioevents: io.clone(),
        cmdline_extra: &mut cmdline,
    };
    let mut a = attach_mmio(&mut ctx, rng("rng0"), 0).unwrap();
    let base = 0xd000_0000;
    wr(&mmio, base + 0x70, 1 | 2);
    wr(&mmio, base + 0x24, 1);
    wr(&mmio, base + 0x20, (COMMON_FEATURES >> 32) as u32);
    wr(&mmio, base + 0x70, 1 | 2 | 8);
    let mut q = TestQueue::new(0x10000, 16);
    wr(&mmio, base + 0x38, 16);
    for (off, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
        wr(&mmio, base + off, addr as u32);
    }
    wr(&mmio, base + 0x44, 1);
    wr(&mmio, base + 0x70, 1 | 2 | 8 | 4);
    for i in 0..3 {
        q.add(&mem.memory(), &[(0x100000 + 0x100 * i, 16, true)]);
    }
    wr(&mmio, base + 0x50, 0);
    for _ in 0..3 {
        assert!(q.wait_used(&mem).is_some());
    }
    a.pause().unwrap();
    let snap = a.snapshot().unwrap().unwrap();
    assert_eq!(a.counters()["requests"], 3);
    drop(a);

    // A new VM process: same command line, memory restored.
    let (mut mmio2, mut pio2, mut cmdline2) = (Bus::new(), Bus::new(), Vec::new());
    let mut ctx2 = DeviceContext {
        mem: mem.clone(),
        mmio_bus: &mut mmio2,
        pio_bus: &mut pio2,
        interrupts: irqs,
        ioevents: io,
        cmdline_extra: &mut cmdline2,
    };
    let mut b = attach_mmio(&mut ctx2, rng("rng0"), 0).unwrap();
    b.restore(&snap).unwrap();
    assert_eq!(rd(&mmio2, base + 0x70), 1 | 2 | 8 | 4, "driver state restored");
    mem.memory().write_slice(&[0u8; 16], GuestAddress(0x100800)).unwrap();
    q.add(&mem.memory(), &[(0x100800, 16, true)]);
    wr(&mmio2, base + 0x50, 0);
    let (id, len) = q.wait_used(&mem).expect("restored device processes new requests");
    assert_eq!((id, len), (3, 16), "continues after the three entries already used");
    let mut buf = [0u8; 16];
    mem.memory().read_slice(&mut buf, GuestAddress(0x100800)).unwrap();
    assert!(buf.iter().any(|&x| x != 0));
}

#[test]
fn attach_pci_creates_root_and_functions() {
    let (mut mmio, mut pio, mut cmdline) = (Bus::new(), Bus::new(), Vec::new());
    let irqs = Arc::new(Irqs::default());
    let mut ctx = DeviceContext {
        mem: guest_memory(),
        mmio_bus: &mut mmio,
        pio_bus: &mut pio,
        interrupts: irqs.clone(),
        ioevents: Arc::new(IoEvents::default()),
        cmdline_extra: &mut cmdline,
    };
    let root = create_pci_root(&mut ctx).unwrap();
    let a = attach_pci(&mut ctx, &root, rng("rng0")).unwrap();
    let b = attach_pci(&mut ctx, &root, rng("rng1")).unwrap();
    assert_eq!(a.location, "pci 0000:00:01.0");
    assert_eq!(b.location, "pci 0000:00:02.0");
    assert_eq!(*irqs.msi_groups.lock().unwrap(), vec![2, 2], "one vector per queue + config");
    assert!(cmdline.is_empty());
    // Config mechanism #1 on the port bus sees the host bridge and both functions.
    for (dev, id) in [(0u32, 0x0d57_8086u32), (1, 0x1044_1af4), (2, 0x1044_1af4)] {
        wr(&pio, 0xcf8, 0x8000_0000 | dev << 11);
        assert_eq!(rd(&pio, 0xcfc), id);
    }
    // ECAM on the MMIO bus too.
    assert_eq!(rd(&mmio, arch::layout::PCI_ECAM_START + (2 << 15)), 0x1044_1af4);
    // BARs are assigned from the 32-bit window, one after the other.
    wr(&pio, 0xcf8, 0x8000_0000 | 2 << 11 | 0x10);
    assert_eq!(rd(&pio, 0xcfc), (arch::layout::PCI_MMIO32_START as u32 + 0x8000) | 0b100);
}

/// virtio-pci: the guest moves BAR0 and drives the device; a snapshot
/// restored into a fresh root keeps the BAR where the guest put it and the
/// queue where it was.
#[test]
fn pci_snapshot_restores_bar_placement_and_queue() {
    let mem = guest_memory();
    let irqs = Arc::new(Irqs::default());
    let io = Arc::new(IoEvents::default());
    let ecam = arch::layout::PCI_ECAM_START + (1 << 15);
    let bar = arch::layout::PCI_MMIO32_START + 0x20_0000;
    let mut q = TestQueue::new(0x10000, 16);
    let snap = {
        let (mut mmio, mut pio, mut cmdline) = (Bus::new(), Bus::new(), Vec::new());
        let mut ctx = DeviceContext {
            mem: mem.clone(),
            mmio_bus: &mut mmio,
            pio_bus: &mut pio,
            interrupts: irqs.clone(),
            ioevents: io.clone(),
            cmdline_extra: &mut cmdline,
        };
        let root = create_pci_root(&mut ctx).unwrap();
        let mut a = attach_pci(&mut ctx, &root, rng("rng0")).unwrap();
        wr(&mmio, ecam + 0x10, bar as u32);
        wr(&mmio, ecam + 4, 2);
        assert!(io.regs.lock().unwrap().contains(&(bar + 0x3000, None)));
        let b8 = |off: u64, v: u8| assert!(mmio.write(bar + off, &[v]));
        b8(0x14, 3);
        wr(&mmio, bar + 0x08, 1);
        wr(&mmio, bar + 0x0c, (COMMON_FEATURES >> 32) as u32);
        b8(0x14, 11);
        for (off, addr) in [(0x20, q.desc), (0x28, q.avail), (0x30, q.used)] {
            wr(&mmio, bar + off, addr as u32);
        }
        assert!(mmio.write(bar + 0x18, &16u16.to_le_bytes()));
        assert!(mmio.write(bar + 0x1c, &1u16.to_le_bytes()));
        b8(0x14, 15);
        q.add(&mem.memory(), &[(0x100000, 16, true)]);
        assert!(mmio.write(bar + 0x3000, &0u16.to_le_bytes()));
        assert_eq!(q.wait_used(&mem), Some((0, 16)));
        a.pause().unwrap();
        a.snapshot().unwrap().unwrap()
    };
    io.regs.lock().unwrap().clear();
    let (mut mmio, mut pio, mut cmdline) = (Bus::new(), Bus::new(), Vec::new());
    let mut ctx = DeviceContext {
        mem: mem.clone(),
        mmio_bus: &mut mmio,
        pio_bus: &mut pio,
        interrupts: irqs,
        ioevents: io.clone(),
        cmdline_extra: &mut cmdline,
    };
    let root = create_pci_root(&mut ctx).unwrap();
    let mut b = attach_pci(&mut ctx, &root, rng("rng0")).unwrap();
    b.restore(&snap).unwrap();
    assert_eq!(rd(&mmio, ecam + 0x10) & !0xf, bar as u32, "BAR0 where the guest put it");
    assert_eq!(*io.regs.lock().unwrap(), vec![(bar + 0x3000, None)], "doorbell followed");
    let mut st = [0u8; 1];
    assert!(mmio.read(bar + 0x14, &mut st));
    assert_eq!(st[0], 15);
    q.add(&mem.memory(), &[(0x100100, 16, true)]);
    assert!(mmio.write(bar + 0x3000, &0u16.to_le_bytes()));
    assert_eq!(q.wait_used(&mem), Some((1, 16)));
}
