//! Fuzz the guest-facing parsing path of virtio-blk: the fuzzer's bytes
//! *are* guest memory (descriptor table, rings, headers, segments, data),
//! and the device pops every chain, parses it and executes it against an
//! in-memory disk. Anything but a clean status or a clean refusal (a
//! panic, an access outside guest memory) is a bug.
#![no_main]

use std::path::Path;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use virtio_devices::block::request::{self, Limits};
use virtio_devices::queue::{add_used, parse_chain, pop_chain};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x10000;

struct MemDisk(Mutex<Vec<u8>>);

impl image::BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn is_readonly(&self) -> bool {
        false
    }
    fn format(&self) -> image::Format {
        image::Format::Raw
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> image::Result<()> {
        let d = self.0.lock().unwrap();
        let end = offset as usize + buf.len();
        assert!(end <= d.len(), "device read past the disk: {offset}+{}", buf.len());
        buf.copy_from_slice(&d[offset as usize..end]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> image::Result<()> {
        let mut d = self.0.lock().unwrap();
        let end = offset as usize + buf.len();
        assert!(end <= d.len(), "device wrote past the disk: {offset}+{}", buf.len());
        d[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> image::Result<()> {
        self.write_at(offset, &vec![0; len as usize])
    }
    fn discard(&self, offset: u64, len: u64) -> image::Result<()> {
        assert!(offset + len <= self.size());
        Ok(())
    }
    fn flush(&self) -> image::Result<()> {
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> image::Result<image::Extent> {
        Ok(image::Extent {
            start: offset,
            length: len,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            host_offset: Some(offset),
            depth: 0,
        })
    }
    fn allocated_size(&self) -> image::Result<u64> {
        Ok(self.size())
    }
    fn path(&self) -> &Path {
        Path::new("mem")
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    // Queue geometry from the first bytes; rings where the guest put them.
    let size = 1u16 << (data[0] % 9);
    let desc = (data[1] as u64) << 8;
    let avail = desc + 16 * size as u64;
    let used = (avail + 6 + 2 * size as u64 + 3) & !3;
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_event_idx(data[2] & 1 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let disk = MemDisk(Mutex::new(vec![0u8; 64 * 1024]));
    let lim = Limits {
        capacity_sectors: 128,
        max_discard_sectors: 64,
        max_discard_seg: 4,
        max_write_zeroes_sectors: 64,
        max_write_zeroes_seg: 4,
        readonly: data[3] & 1 != 0,
        discard: true,
        write_zeroes: true,
    };
    let mut scratch = Vec::new();
    for _ in 0..64 {
        let chain = match pop_chain(&mut q, &mem) {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => break,
        };
        let head = chain.head_index();
        let len = match parse_chain(chain, 1 << 20) {
            Ok(p) => match request::parse(&mem, &p) {
                Ok(req) => {
                    let _ = request::parse_and_validate(&mem, &p, &lim);
                    let (status, written) = request::execute(&mem, &req, &disk, &lim, b"fuzz", &mut scratch);
                    request::complete(&mem, &req, status);
                    written + 1
                }
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        if add_used(&mut q, &mem, head, len).is_err() {
            break;
        }
    }
});
