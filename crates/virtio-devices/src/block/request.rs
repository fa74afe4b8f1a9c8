//! virtio-blk request parsing and synchronous execution (virtio 1.x 5.2.6).
//! A request is a 16-byte header the device reads, a payload, and a status
//! byte the device writes last. Every check here answers a bad request with
//! a status byte (IOERR / UNSUPP) rather than an error the guest never sees.

use image::BlockBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::queue::{Buf, ParsedChain, read_bufs, write_bufs};

pub const SECTOR_SHIFT: u64 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Limits advertised in the config space and enforced here.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub capacity_sectors: u64,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub readonly: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: u16,
    pub kind: Kind,
    pub sector: u64,
    /// Payload buffers (device-writable for In/GetId, readable otherwise).
    pub data: Vec<Buf>,
    pub data_len: u64,
    pub status: GuestAddress,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request has no device-writable status byte")]
    NoStatus,
    #[error("request header is shorter than 16 bytes")]
    ShortHeader,
}

/// The bytes of `bufs` after the first `skip`.
pub fn skip_bytes(bufs: &[Buf], mut skip: u64) -> Vec<Buf> {
    let mut out = Vec::new();
    for b in bufs {
        if skip >= b.len as u64 {
            skip -= b.len as u64;
            continue;
        }
        out.push(Buf { addr: GuestAddress(b.addr.0 + skip), len: b.len - skip as u32 });
        skip = 0;
    }
    out
}

/// Split a parsed chain into a request. Only a chain without a status byte
/// or header is an error (it cannot be answered); everything else becomes
/// a request whose execution reports the problem in the status byte.
pub fn parse<M: GuestMemory>(mem: &M, chain: &ParsedChain) -> Result<Request, RequestError> {
    let last = chain.writable.last().filter(|b| b.len > 0).ok_or(RequestError::NoStatus)?;
    let status = GuestAddress(last.addr.0 + last.len as u64 - 1);
    let mut hdr = [0u8; 16];
    if read_bufs(mem, &chain.readable, 0, &mut hdr).map_err(|_| RequestError::ShortHeader)? < 16 {
        return Err(RequestError::ShortHeader);
    }
    let t = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    let kind = match t {
        T_IN => Kind::In,
        T_OUT => Kind::Out,
        T_FLUSH => Kind::Flush,
        T_GET_ID => Kind::GetId,
        T_DISCARD => Kind::Discard,
        T_WRITE_ZEROES => Kind::WriteZeroes,
        other => Kind::Unsupported(other),
    };
    let data = match kind {
        Kind::In | Kind::GetId => {
            let mut w = chain.writable.clone();
            // Drop the status byte from the payload.
            if let Some(l) = w.last_mut() {
                l.len -= 1;
                if l.len == 0 {
                    w.pop();
                }
            }
            w
        }
        _ => skip_bytes(&chain.readable, 16),
    };
    let data_len = data.iter().map(|b| b.len as u64).sum();
    Ok(Request { head: chain.head, kind, sector, data, data_len, status })
}

fn in_range(sector: u64, bytes: u64, capacity_sectors: u64) -> bool {
    let Some(end) = sector.checked_mul(SECTOR_SIZE).and_then(|s| s.checked_add(bytes)) else { return false };
    end <= capacity_sectors.saturating_mul(SECTOR_SIZE)
}

/// Validate a request against the disk limits; `Err(status)` when it must
/// not reach the backend.
pub fn validate(req: &Request, lim: &Limits) -> Result<(), u8> {
    match req.kind {
        Kind::In | Kind::Out => {
            if req.kind == Kind::Out && lim.readonly {
                return Err(S_IOERR);
            }
            if !req.data_len.is_multiple_of(SECTOR_SIZE) || !in_range(req.sector, req.data_len, lim.capacity_sectors) {
                return Err(S_IOERR);
            }
        }
        Kind::Discard | Kind::WriteZeroes => {
            let enabled = if req.kind == Kind::Discard { lim.discard } else { lim.write_zeroes };
            if !enabled {
                return Err(S_UNSUPP);
            }
            if lim.readonly {
                return Err(S_IOERR);
            }
            if req.data_len == 0 || !req.data_len.is_multiple_of(16) {
                return Err(S_IOERR);
            }
        }
        Kind::Flush | Kind::GetId => {}
        Kind::Unsupported(_) => return Err(S_UNSUPP),
    }
    Ok(())
}

/// One discard / write-zeroes segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub sectors: u32,
    pub flags: u32,
}

pub const WZ_FLAG_UNMAP: u32 = 1;

/// Read and check the segments of a discard / write-zeroes request.
pub fn segments<M: GuestMemory>(mem: &M, req: &Request, lim: &Limits) -> Result<Vec<Segment>, u8> {
    let n = req.data_len / 16;
    let (max_seg, max_sectors) = if req.kind == Kind::Discard {
        (lim.max_discard_seg, lim.max_discard_sectors)
    } else {
        (lim.max_write_zeroes_seg, lim.max_write_zeroes_sectors)
    };
    if n > max_seg as u64 {
        return Err(S_IOERR);
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut raw = [0u8; 16];
        if read_bufs(mem, &req.data, i * 16, &mut raw).map_err(|_| S_IOERR)? != 16 {
            return Err(S_IOERR);
        }
        let seg = Segment {
            sector: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
            sectors: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
            flags: u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default()),
        };
        let allowed_flags = if req.kind == Kind::WriteZeroes { WZ_FLAG_UNMAP } else { 0 };
        if seg.flags & !allowed_flags != 0 {
            return Err(S_UNSUPP);
        }
        if seg.sectors > max_sectors || !in_range(seg.sector, seg.sectors as u64 * SECTOR_SIZE, lim.capacity_sectors) {
            return Err(S_IOERR);
        }
        out.push(seg);
    }
    Ok(out)
}

/// Execute `req` synchronously on `disk`. Returns the status and the
/// number of payload bytes written to guest memory.
pub fn execute<M: GuestMemory>(
    mem: &M,
    req: &Request,
    disk: &dyn BlockBackend,
    lim: &Limits,
    serial: &[u8],
    scratch: &mut Vec<u8>,
) -> (u8, u32) {
    if let Err(s) = validate(req, lim) {
        return (s, 0);
    }
    let ok_or = |r: Result<(), ()>| if r.is_ok() { S_OK } else { S_IOERR };
    match req.kind {
        Kind::In => {
            let mut off = req.sector << SECTOR_SHIFT;
            for b in &req.data {
                scratch.resize(b.len as usize, 0);
                if disk.read_at(off, scratch).is_err() || mem.write_slice(scratch, b.addr).is_err() {
                    return (S_IOERR, 0);
                }
                off += b.len as u64;
            }
            (S_OK, req.data_len as u32)
        }
        Kind::Out => {
            let mut off = req.sector << SECTOR_SHIFT;
            for b in &req.data {
                scratch.resize(b.len as usize, 0);
                if mem.read_slice(scratch, b.addr).is_err() || disk.write_at(off, scratch).is_err() {
                    return (S_IOERR, 0);
                }
                off += b.len as u64;
            }
            (S_OK, 0)
        }
        Kind::Flush => (ok_or(disk.flush().map_err(|_| ())), 0),
        Kind::GetId => {
            let mut id = [0u8; super::config::SERIAL_LEN];
            let n = serial.len().min(id.len());
            id[..n].copy_from_slice(&serial[..n]);
            let want = (req.data_len as usize).min(id.len());
            match write_bufs(mem, &req.data, 0, &id[..want]) {
                Ok(n) => (S_OK, n as u32),
                Err(_) => (S_IOERR, 0),
            }
        }
        Kind::Discard | Kind::WriteZeroes => {
            let segs = match segments(mem, req, lim) {
                Ok(s) => s,
                Err(st) => return (st, 0),
            };
            for s in segs {
                let (off, len) = (s.sector << SECTOR_SHIFT, (s.sectors as u64) << SECTOR_SHIFT);
                let r = if req.kind == Kind::Discard {
                    disk.discard(off, len)
                } else {
                    disk.write_zeroes(off, len, s.flags & WZ_FLAG_UNMAP != 0)
                };
                if r.is_err() {
                    return (S_IOERR, 0);
                }
            }
            (S_OK, 0)
        }
        Kind::Unsupported(_) => (S_UNSUPP, 0),
    }
}

/// Write the status byte; the request's used length is `written + 1`.
pub fn complete<M: GuestMemory>(mem: &M, req: &Request, status: u8) -> bool {
    mem.write_obj(status, req.status).is_ok()
}

/// Parse a raw chain the way the device does; for the fuzz target.
pub fn parse_and_validate<M: GuestMemory>(mem: &M, chain: &ParsedChain, lim: &Limits) -> Result<Request, u8> {
    let req = parse(mem, chain).map_err(|_| S_IOERR)?;
    validate(&req, lim)?;
    if matches!(req.kind, Kind::Discard | Kind::WriteZeroes) {
        segments(mem, &req, lim)?;
    }
    Ok(req)
}
