//! Compressed clusters: raw deflate with a 4 KiB window (QEMU's "zlib" type)
//! and zstd frames.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::CompressionType;
use crate::{Error, Result};

/// Compresses one cluster. Returns `None` when compression does not save at
/// least one 512-byte sector (the caller then writes the cluster plainly).
pub fn compress(kind: CompressionType, data: &[u8]) -> Result<Option<Vec<u8>>> {
    let limit = data.len().saturating_sub(512);
    let out = match kind {
        CompressionType::Zlib => {
            // windowBits = -12: QEMU inflates with a 4 KiB window, so we must not
            // emit back-references further than that.
            let mut c = Compress::new_with_window_bits(Compression::default(), false, 12);
            let mut out = Vec::with_capacity(data.len() + 64);
            match c.compress_vec(data, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => out,
                Ok(_) => return Ok(None),
                Err(e) => return Err(Error::Compression(e.to_string())),
            }
        }
        CompressionType::Zstd => zstd::bulk::compress(data, 1).map_err(|e| Error::Compression(e.to_string()))?,
    };
    Ok(if out.len() <= limit { Some(out) } else { None })
}

/// Decompresses `src` (which may carry trailing sector padding) into exactly `out.len()` bytes.
pub fn decompress(kind: CompressionType, src: &[u8], out: &mut [u8]) -> Result<()> {
    let bad = |why: String| Error::Corrupt(format!("compressed cluster cannot be decompressed: {why}"));
    match kind {
        CompressionType::Zlib => {
            let mut d = Decompress::new(false);
            match d.decompress(src, out, FlushDecompress::Finish) {
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                Ok(_) => Err(bad(format!("got {} of {} bytes", d.total_out(), out.len()))),
                Err(e) => Err(bad(e.to_string())),
            }
        }
        CompressionType::Zstd => {
            use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
            let mut dec = Decoder::new().map_err(|e| bad(e.to_string()))?;
            let mut input = InBuffer::around(src);
            let mut output = OutBuffer::around(out);
            loop {
                let hint = dec.run(&mut input, &mut output).map_err(|e| bad(e.to_string()))?;
                if output.pos() == output.capacity() {
                    return Ok(());
                }
                if hint == 0 || input.pos() == src.len() {
                    return Err(bad(format!("got {} of {} bytes", output.pos(), output.capacity())));
                }
            }
        }
    }
}
