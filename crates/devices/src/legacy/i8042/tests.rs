use std::sync::atomic::Ordering;

use super::*;
use crate::interrupt::CountingLine;
use crate::legacy::VmEvent;

struct Fixture {
    dev: I8042,
    irq: Arc<CountingLine>,
    events: Arc<VmEvents>,
}

fn fixture() -> Fixture {
    let irq = Arc::new(CountingLine { gsi: arch::layout::KEYBOARD_GSI, ..Default::default() });
    let events = Arc::new(VmEvents::new().unwrap());
    Fixture { dev: I8042::new(irq.clone(), events.clone()), irq, events }
}

impl Fixture {
    fn status(&mut self) -> u8 {
        let mut b = [0];
        self.dev.read(CMD_OFFSET, &mut b);
        b[0]
    }
    fn data(&mut self) -> u8 {
        let mut b = [0];
        self.dev.read(0, &mut b);
        b[0]
    }
    fn cmd(&mut self, c: u8) {
        self.dev.write(CMD_OFFSET, &[c]);
    }
    fn put(&mut self, v: u8) {
        self.dev.write(0, &[v]);
    }
    /// Read every byte the controller has queued, like Linux's i8042_flush.
    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & SR_OBF != 0 {
            out.push(self.data());
        }
        out
    }
}

#[test]
fn reset_command_posts_reset() {
    let mut f = fixture();
    f.cmd(0xfe);
    assert_eq!(f.events.take(), Some(VmEvent::Reset));
    assert_eq!(f.dev.resets(), 1);
}

#[test]
fn output_port_write_with_reset_bit_clear_resets() {
    let mut f = fixture();
    f.cmd(0xd1);
    f.put(0x03);
    assert_eq!(f.events.pending(), None, "reset bit still set: no reset");
    f.cmd(0xd0);
    assert_eq!(f.drain(), vec![0x03]);
    f.cmd(0xd1);
    f.put(0x02);
    assert_eq!(f.events.take(), Some(VmEvent::Reset));
}

#[test]
fn linux_probe_sequence_gets_answers() {
    let mut f = fixture();
    // i8042_controller_check: the flush must find a controller (status != 0xff).
    assert_ne!(f.status(), 0xff);
    assert!(f.drain().is_empty());
    // Self test.
    f.cmd(0xaa);
    assert_eq!(f.drain(), vec![0x55]);
    assert_ne!(f.status() & SR_SYS, 0);
    // CTR read, modify, write back, read again.
    f.cmd(0x20);
    let ctr = f.drain();
    assert_eq!(ctr.len(), 1);
    f.cmd(0x60);
    f.put(ctr[0] & !CTR_KBDINT);
    f.cmd(0x20);
    assert_eq!(f.drain(), vec![ctr[0] & !CTR_KBDINT]);
    // Aux loopback: byte comes back without AUXDATA, then the aux test says absent.
    f.cmd(0xd3);
    f.put(0x5a);
    assert_eq!(f.status() & (SR_OBF | SR_AUXDATA), SR_OBF);
    assert_eq!(f.drain(), vec![0x5a]);
    f.cmd(0xa9);
    assert_eq!(f.drain(), vec![AUX_TEST_ABSENT]);
}

#[test]
fn aux_probe_as_linux_does_it_leaves_nothing_stale() {
    // Linux sends the aux loopback, sees no AUXDATA, gives up without
    // reading, then asks for the aux test: the reply replaces the byte.
    let mut f = fixture();
    f.cmd(0xd3);
    f.put(0x5a);
    assert_eq!(f.status() & (SR_OBF | SR_AUXDATA), SR_OBF);
    f.cmd(0xa9);
    assert_eq!(f.drain(), vec![AUX_TEST_ABSENT]);
    // The keyboard then answers its commands with nothing in front.
    f.put(0xf2);
    assert_eq!(f.drain(), vec![0xfa, 0xab, 0x41]);
}

#[test]
fn keyboard_bytes_wait_while_the_interface_is_disabled() {
    let mut f = fixture();
    f.cmd(0xad);
    f.dev.push_key(0x1e);
    assert_eq!(f.status() & SR_OBF, 0);
    // A controller reply still comes through, ahead of the held key.
    f.cmd(0x20);
    assert_eq!(f.drain(), vec![f.dev.state().ctr]);
    f.cmd(0xae);
    assert_eq!(f.drain(), vec![0x1e]);
    // An empty buffer reads back the last byte, like the chip.
    assert_eq!(f.data(), 0x1e);
}

#[test]
fn keyboard_reset_and_id_are_acknowledged() {
    let mut f = fixture();
    f.put(0xff);
    assert_eq!(f.drain(), vec![0xfa, 0xaa]);
    f.put(0xf2);
    assert_eq!(f.drain(), vec![0xfa, 0xab, 0x41]);
    f.put(0xed);
    f.put(0x07);
    assert_eq!(f.drain(), vec![0xfa, 0xfa]);
    assert_eq!(f.dev.state().leds, 7);
    f.put(0xf0);
    f.put(0x00);
    assert_eq!(f.drain(), vec![0xfa, 0xfa, 0x02]);
    f.put(0xee);
    assert_eq!(f.drain(), vec![0xee]);
}

#[test]
fn interrupts_follow_ctr_kbdint() {
    let mut f = fixture();
    f.put(0xf4);
    assert_eq!(f.irq.count.load(Ordering::SeqCst), 1);
    f.drain();
    f.cmd(0x60);
    f.put(CTR_SYS | CTR_XLATE);
    f.put(0xf4);
    assert_eq!(f.irq.count.load(Ordering::SeqCst), 1, "KBDINT clear: no interrupt");
    f.drain();
    f.cmd(0x60);
    f.put(CTR_SYS | CTR_XLATE | CTR_KBDINT);
    f.put(0xff);
    // One for the first byte, one more when it is read and the BAT byte is next.
    assert_eq!(f.drain(), vec![0xfa, 0xaa]);
    assert_eq!(f.irq.count.load(Ordering::SeqCst), 3);
}

#[test]
fn hostile_guest_cannot_grow_the_buffer() {
    let mut f = fixture();
    for _ in 0..10_000 {
        f.put(0xf2);
    }
    assert_eq!(f.dev.state().kbd_queue.len(), KBD_QUEUE_MAX);
    let mut wide = [0u8; 4];
    f.dev.read(2, &mut wide);
    assert_eq!(wide, [0xff; 4]);
    f.dev.write(0, &[]);
}

#[test]
fn snapshot_round_trips_pending_bytes() {
    let mut f = fixture();
    f.put(0xf2);
    f.cmd(0xd1);
    let snap = f.dev.snapshot().unwrap().unwrap();
    assert_eq!(snap.id, "i8042");
    let mut g = fixture();
    g.dev.restore(&snap).unwrap();
    assert_eq!(g.dev.state(), f.dev.state());
    g.put(0x00); // the pending 0xd1 parameter: reset bit clear
    assert_eq!(g.events.take(), Some(VmEvent::Reset));
    assert_eq!(g.drain(), vec![0xfa, 0xab, 0x41]);
}
