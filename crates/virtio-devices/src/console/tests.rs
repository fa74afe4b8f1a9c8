use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use super::*;
use crate::testing::MmioHarness;

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/tern-vcon-{}-{name}", std::process::id()))
}

fn harness(cfg: &SerialConfig) -> (MmioHarness, Arc<Mutex<Console>>) {
    let con = Arc::new(Mutex::new(Console::new("console0", cfg).unwrap()));
    let mut h = MmioHarness::new(con.clone());
    h.init(!0, &[16, 16]);
    assert_eq!(h.status() & 0x40, 0);
    (h, con)
}

fn send(h: &mut MmioHarness, text: &[u8]) {
    let m = h.mem.memory();
    m.write_slice(text, GuestAddress(0x100000)).unwrap();
    h.queues[1].add(&m, &[(0x100000, text.len() as u32, false)]);
    drop(m);
    h.kick(1);
    assert!(h.queues[1].wait_used(&h.mem).is_some());
}

#[test]
fn output_goes_to_the_file_backend() {
    let path = tmp("out");
    let (mut h, con) = harness(&SerialConfig::File(path.clone()));
    send(&mut h, b"hello from hvc0\n");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello from hvc0\n");
    assert_eq!(con.lock().unwrap().counters()["tx_bytes"], 16);
    let _ = std::fs::remove_file(path);
}

#[test]
fn input_typed_before_the_driver_is_delivered_later() {
    let (mut h, con) = harness(&SerialConfig::None);
    assert_eq!(con.lock().unwrap().inject_input(b"ls -l\n"), 6);
    let m = h.mem.memory();
    // Two small receive buffers: input is split across them.
    h.queues[0].add(&m, &[(0x200000, 4, true)]);
    h.queues[0].add(&m, &[(0x200100, 64, true)]);
    drop(m);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 4)));
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((1, 2)));
    let mut got = [0u8; 6];
    h.mem.memory().read_slice(&mut got[..4], GuestAddress(0x200000)).unwrap();
    h.mem.memory().read_slice(&mut got[4..], GuestAddress(0x200100)).unwrap();
    assert_eq!(&got, b"ls -l\n");
    // A bounded buffer: it takes at most INPUT_BUFFER_MAX.
    let big = vec![b'x'; INPUT_BUFFER_MAX + 10];
    assert_eq!(con.lock().unwrap().inject_input(&big), INPUT_BUFFER_MAX);
}

#[test]
fn socket_backend_carries_both_directions() {
    let path = tmp("sock");
    let (mut h, _con) = harness(&SerialConfig::Socket(path.clone()));
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Wait until the input thread attached the client, then type.
    std::thread::sleep(Duration::from_millis(100));
    client.write_all(b"root\n").unwrap();
    let m = h.mem.memory();
    h.queues[0].add(&m, &[(0x200000, 64, true)]);
    drop(m);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 5)));
    send(&mut h, b"login: ");
    let mut got = [0u8; 7];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"login: ");
}

#[test]
fn output_chain_outside_memory_is_skipped() {
    let path = tmp("bad");
    let (mut h, con) = harness(&SerialConfig::File(path.clone()));
    let m = h.mem.memory();
    h.queues[1].add(&m, &[(crate::testing::MEM_SIZE - 2, 100, false)]);
    drop(m);
    h.kick(1);
    assert_eq!(h.queues[1].wait_used(&h.mem), Some((0, 0)));
    assert_eq!(con.lock().unwrap().counters()["errors"], 1);
    send(&mut h, b"ok");
    assert_eq!(std::fs::read(&path).unwrap(), b"ok");
    let _ = std::fs::remove_file(path);
}
