//! `blk-bench`: virtio-blk throughput and IOPS with many requests in flight,
//! the guest half of `scripts/bench-virtio-blk.py`.
//!
//! Parameters: `tern.blk_bench=randread|randwrite|seqread|seqwrite`
//! (randread), `tern.blk_bs` bytes per request (4096, a multiple of 512, at
//! most 1 MiB), `tern.blk_qd` requests in flight (16, at most the queue
//! size), `tern.blk_ms` how long to keep issuing (2000) or `tern.blk_ops`
//! requests to issue (0 = bounded by time only), `tern.blk_span` sectors
//! the requests fall in (the whole disk), `tern.blk_verify=1` to write
//! [`sector_pattern`] and check it on every read (for tests; it costs a
//! copy or compare per sector).
//!
//! Prints `TERN blk-bench start` when the first request is queued and
//! `TERN blk-bench done ...` after the last completes, so the host can time
//! the run by the wall clock as well as by the guest's TSC figures.

use super::hal::{BENCH_END, BENCH_START, GuestHal};
use super::{num, transport_for};
use crate::blk_pattern::sector_pattern;
use crate::boot::{BootInfo, param};
use crate::cpu::{rdtsc, tsc_hz};
use crate::{finish, tern};
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::{DeviceType, SomeTransport};

const MAX_QD: usize = 16;
const MAX_BS: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Mode {
    fn parse(text: Option<&[u8]>) -> Option<Mode> {
        match text {
            None | Some(b"randread") => Some(Mode::RandRead),
            Some(b"randwrite") => Some(Mode::RandWrite),
            Some(b"seqread") => Some(Mode::SeqRead),
            Some(b"seqwrite") => Some(Mode::SeqWrite),
            Some(_) => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::RandRead => "randread",
            Mode::RandWrite => "randwrite",
            Mode::SeqRead => "seqread",
            Mode::SeqWrite => "seqwrite",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Mode::RandWrite | Mode::SeqWrite)
    }
}

/// One request slot: its header, status and data buffer stay put while the
/// device owns them.
struct Slot {
    token: Option<u16>,
    sector: u64,
    /// TSC when the request was queued, for the average latency.
    issued_at: u64,
    req: BlkReq,
    resp: BlkResp,
    buf: &'static mut [u8],
}

/// xorshift64*: cheap, and the same sequence under every VMM.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

type Blk = VirtIOBlk<GuestHal, SomeTransport<'static>>;

fn submit(blk: &mut Blk, slot: &mut Slot, sector: u64, write: bool, verify: bool) {
    slot.sector = sector;
    slot.issued_at = rdtsc();
    if write && verify {
        for (i, chunk) in slot.buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            chunk.copy_from_slice(&sector_pattern(sector + i as u64));
        }
    }
    // SAFETY: the slot's header, buffer and status are not touched again
    // until its token comes back from the used ring.
    let queued = unsafe {
        if write {
            blk.write_blocks_nb(sector as usize, &mut slot.req, slot.buf, &mut slot.resp)
        } else {
            blk.read_blocks_nb(sector as usize, &mut slot.req, slot.buf, &mut slot.resp)
        }
    };
    match queued {
        Ok(token) => slot.token = Some(token),
        Err(e) => finish(false, format_args!(" reason=submit sector={} error=\"{}\"", sector, e)),
    }
}

/// Returns the number of sectors that did not read back as
/// [`sector_pattern`] (always 0 unless verifying a read).
fn complete(blk: &mut Blk, slot: &mut Slot, token: u16, write: bool, verify: bool) -> u64 {
    slot.token = None;
    // SAFETY: the same header, buffer and status that were queued with `token`.
    let done = unsafe {
        if write {
            blk.complete_write_blocks(token, &slot.req, slot.buf, &mut slot.resp)
        } else {
            blk.complete_read_blocks(token, &slot.req, slot.buf, &mut slot.resp)
        }
    };
    if let Err(e) = done {
        finish(false, format_args!(" reason=request status={:?} error=\"{}\"", slot.resp.status(), e));
    }
    if slot.resp.status() != RespStatus::OK {
        finish(false, format_args!(" reason=request status={:?}", slot.resp.status()));
    }
    if write || !verify {
        return 0;
    }
    let sector = slot.sector;
    slot.buf.chunks_exact(SECTOR_SIZE).enumerate().filter(|(i, c)| **c != sector_pattern(sector + *i as u64)[..]).count()
        as u64
}

pub fn run(boot: &BootInfo) -> ! {
    let Some(mode) = Mode::parse(param(boot.cmdline, "tern.blk_bench")) else {
        finish(false, format_args!(" reason=bad-mode want=randread|randwrite|seqread|seqwrite"))
    };
    let bs = num(boot, "tern.blk_bs", 4096);
    if bs == 0 || bs % SECTOR_SIZE as u64 != 0 || bs > MAX_BS {
        finish(false, format_args!(" reason=bad-block-size bs={}", bs));
    }
    let (transport, via) = transport_for(DeviceType::Block, boot);
    let mut blk: Blk = match VirtIOBlk::new(transport) {
        Ok(b) => b,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\"", e)),
    };
    if mode.writes() && blk.readonly() {
        finish(false, format_args!(" reason=read-only-disk"));
    }
    let qd = (num(boot, "tern.blk_qd", MAX_QD as u64) as usize).clamp(1, MAX_QD.min(blk.virt_queue_size() as usize));
    if qd as u64 * bs > BENCH_END - BENCH_START {
        finish(false, format_args!(" reason=buffers-too-large qd={} bs={}", qd, bs));
    }
    let sectors_per_req = bs / SECTOR_SIZE as u64;
    let span = num(boot, "tern.blk_span", blk.capacity()).min(blk.capacity());
    let slots_in_span = span / sectors_per_req;
    if slots_in_span == 0 {
        finish(false, format_args!(" reason=disk-too-small capacity={}", blk.capacity()));
    }
    let max_ops = num(boot, "tern.blk_ops", 0);
    let verify = num(boot, "tern.blk_verify", 0) != 0;
    let mut mismatches = 0u64;
    let run_cycles = tsc_hz() / 1000 * num(boot, "tern.blk_ms", 2000);

    let mut slots: [Slot; MAX_QD] = core::array::from_fn(|i| {
        let addr = BENCH_START + i as u64 * bs;
        // SAFETY: each slot gets its own `bs`-byte piece of the benchmark
        // region (checked above to fit), identity mapped and unused otherwise.
        let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, bs as usize) };
        buf.fill(0x5a ^ i as u8);
        Slot { token: None, sector: 0, issued_at: 0, req: BlkReq::default(), resp: BlkResp::default(), buf }
    });

    let mut rng = Rng(0x7465_726e_626c_6b31);
    let mut next_seq = 0u64;
    let mut next_sector = |rng: &mut Rng| -> u64 {
        let index = match mode {
            Mode::RandRead | Mode::RandWrite => rng.next() % slots_in_span,
            Mode::SeqRead | Mode::SeqWrite => {
                let i = next_seq % slots_in_span;
                next_seq += 1;
                i
            }
        };
        index * sectors_per_req
    };

    tern!("blk-bench start mode={} bs={} qd={} transport={}", mode.name(), bs, qd, via);
    let started = rdtsc();
    let stop_at = started + run_cycles;
    let mut issued = 0u64;
    let mut completed = 0u64;
    let mut latency_sum = 0u64;
    for slot in slots.iter_mut().take(qd) {
        if max_ops != 0 && issued >= max_ops {
            break;
        }
        let sector = next_sector(&mut rng);
        submit(&mut blk, slot, sector, mode.writes(), verify);
        issued += 1;
    }
    while completed < issued {
        let Some(token) = blk.peek_used() else {
            core::hint::spin_loop();
            continue;
        };
        let Some(i) = slots[..qd].iter().position(|s| s.token == Some(token)) else {
            finish(false, format_args!(" reason=unknown-token token={}", token));
        };
        mismatches += complete(&mut blk, &mut slots[i], token, mode.writes(), verify);
        let now = rdtsc();
        latency_sum += now - slots[i].issued_at;
        completed += 1;
        let more = now < stop_at && (max_ops == 0 || issued < max_ops);
        if more {
            let sector = next_sector(&mut rng);
            submit(&mut blk, &mut slots[i], sector, mode.writes(), verify);
            issued += 1;
        }
    }
    let cycles = (rdtsc() - started).max(1);
    let hz = tsc_hz();
    let us = cycles * 1_000_000 / hz;
    let bytes = completed * bs;
    let iops = completed * hz / cycles;
    let kib_s = bytes / 1024 * hz / cycles;
    let lat_us = latency_sum * 1_000_000 / hz / completed.max(1);
    tern!(
        "blk-bench done mode={} ops={} bytes={} us={} iops={} kib_per_s={} avg_lat_us={}",
        mode.name(),
        completed,
        bytes,
        us,
        iops,
        kib_s,
        lat_us
    );
    finish(
        completed > 0 && mismatches == 0,
        format_args!(
            " mode={} ops={} bs={} qd={} verify={} mismatches={} transport={}",
            mode.name(),
            completed,
            bs,
            qd,
            verify,
            mismatches,
            via
        ),
    )
}
