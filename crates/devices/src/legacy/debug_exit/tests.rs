use super::*;
use crate::legacy::VmEvent;

fn device() -> (DebugExit, Arc<VmEvents>) {
    let events = Arc::new(VmEvents::new().unwrap());
    (DebugExit::new(events.clone()), events)
}

#[test]
fn byte_write_asks_for_qemu_compatible_status() {
    let (mut dev, events) = device();
    assert_eq!(events.pending(), None);
    dev.write(0, &[0x10]);
    assert_eq!(events.take(), Some(VmEvent::Exit(0x21)));
    dev.write(0, &[0]);
    assert_eq!(events.take(), Some(VmEvent::Exit(1)));
}

#[test]
fn word_and_dword_writes_use_the_whole_value() {
    let (mut dev, events) = device();
    dev.write(0, &[0x34, 0x12]);
    assert_eq!(events.take(), Some(VmEvent::Exit(0x2469)));
    dev.write(0, &[0, 0, 0, 0x80]);
    assert_eq!(events.take(), Some(VmEvent::Exit(1)), "bit 31 shifted out like QEMU's int arithmetic");
}

#[test]
fn reads_are_zero_and_other_offsets_ignored() {
    let (mut dev, events) = device();
    let mut b = [0xffu8; 2];
    dev.read(0, &mut b);
    assert_eq!(b, [0, 0]);
    dev.write(1, &[5]);
    assert_eq!(events.pending(), None);
}

#[test]
fn snapshot_round_trips() {
    let (mut dev, _) = device();
    let snap = dev.snapshot().unwrap().unwrap();
    assert_eq!(snap.id, "debug_exit");
    dev.restore(&snap).unwrap();
}
