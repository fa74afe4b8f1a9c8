//! The qcow2 header and its extensions (docs/interop/qcow2.txt, "Header").
//! Parsing validates every field a hostile image could use to make us read or
//! write out of bounds, allocate absurd amounts of memory or loop.

use crate::{Error, Result};

pub const QCOW_MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
pub const V2_HEADER_LEN: usize = 72;
pub const V3_HEADER_LEN: usize = 104;
/// Length we write for v3: includes the compression type byte, padded to 8.
pub const V3_HEADER_LEN_WRITTEN: usize = 112;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_CRYPTO: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Same limits as QEMU: 32 MiB of L1 entries, 8 MiB of refcount table, 64 Ki snapshots.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_BACKING_NAME: u32 = 1023;
/// Largest virtual size we accept (QEMU's limit, 2^61 - 512 rounded to a sane power).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;
/// Highest host offset representable in an L1/L2 entry (bits 9..55).
pub const MAX_HOST_OFFSET: u64 = 1 << 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressionType {
    #[default]
    Zlib,
    Zstd,
}

impl CompressionType {
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
    pub fn from_name(s: &str) -> Result<Self> {
        match s {
            "zlib" => Ok(CompressionType::Zlib),
            "zstd" => Ok(CompressionType::Zstd),
            o => Err(Error::InvalidArgument(format!("compression_type '{o}' (use zlib or zstd)"))),
        }
    }
}

/// An extension we do not interpret but must keep when rewriting the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownExtension {
    pub kind: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Feature name table entries (type, bit, name), kept for rewriting.
    pub feature_table: Vec<u8>,
    pub unknown_extensions: Vec<UnknownExtension>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
    /// Number of L2 entries per table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// L1 entries needed for a disk of `size` bytes with `cluster_bits`.
    pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
        let l2_coverage = (1u64 << cluster_bits) * ((1u64 << cluster_bits) / 8);
        size.div_ceil(l2_coverage)
    }

    /// Parses and validates the header from the first cluster of the file.
    /// `buf` must hold at least the first cluster (or the whole file if shorter);
    /// `file_len` bounds table offsets.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        if buf.len() < V2_HEADER_LEN {
            return Err(corrupt("file is too short for a qcow2 header"));
        }
        if be32(buf, 0) != QCOW_MAGIC {
            return Err(corrupt("bad magic: not a qcow2 image"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits} is outside 9..21")));
        }
        let cs = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression_type: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            feature_table: Vec::new(),
            unknown_extensions: Vec::new(),
        };
        if version == 3 {
            if buf.len() < V3_HEADER_LEN {
                return Err(corrupt("file is too short for a qcow2 v3 header"));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if (h.header_length as usize) < V3_HEADER_LEN || h.header_length as u64 > cs {
                return Err(corrupt(format!("header_length {} is invalid", h.header_length)));
            }
            if h.header_length as usize > buf.len() {
                return Err(corrupt("header extends past the end of the file"));
            }
            if h.header_length >= 105 {
                h.compression_type = match buf[104] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    t => return Err(Error::Unsupported(format!("compression type {t}"))),
                };
            }
            if h.compression_type != CompressionType::Zlib && h.incompatible_features & INCOMPAT_COMPRESSION == 0 {
                return Err(corrupt("compression type is set but the compression incompatible bit is not"));
            }
        }
        let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
        if unknown & INCOMPAT_DATA_FILE != 0 {
            return Err(Error::Unsupported("external data files".into()));
        }
        if unknown & INCOMPAT_EXTL2 != 0 {
            return Err(Error::Unsupported("extended L2 entries (subclusters)".into()));
        }
        if unknown != 0 {
            return Err(Error::Unsupported(format!("incompatible features {unknown:#x}")));
        }
        if h.refcount_order > 6 {
            return Err(corrupt(format!("refcount_order {} is larger than 6", h.refcount_order)));
        }
        if h.crypt_method != 0 {
            return Err(Error::Unsupported("encrypted images".into()));
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(corrupt(format!("virtual size {} is absurd", h.size)));
        }
        let l1_needed = Self::l1_entries_for(h.size, cluster_bits);
        if (h.l1_size as u64) < l1_needed {
            return Err(corrupt(format!("L1 table has {} entries, the disk size needs {l1_needed}", h.l1_size)));
        }
        if h.l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(corrupt(format!("L1 table of {} entries is too large", h.l1_size)));
        }
        check_table(h.l1_table_offset, h.l1_size as u64 * 8, cs, file_len, "L1 table")?;
        if h.refcount_table_clusters == 0 {
            return Err(corrupt("refcount table is empty"));
        }
        if h.refcount_table_clusters as u64 * cs > MAX_REFTABLE_BYTES {
            return Err(corrupt(format!("refcount table of {} clusters is too large", h.refcount_table_clusters)));
        }
        check_table(h.refcount_table_offset, h.refcount_table_clusters as u64 * cs, cs, file_len, "refcount table")?;
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(corrupt(format!("{} snapshots is too many", h.nb_snapshots)));
        }
        if h.nb_snapshots > 0 {
            check_table(h.snapshots_offset, 1, cs, file_len, "snapshot table")?;
        }
        h.parse_extensions(buf)?;
        if h.backing_file_offset != 0 {
            if h.backing_file_size > MAX_BACKING_NAME || h.backing_file_size == 0 {
                return Err(corrupt(format!("backing file name length {} is invalid", h.backing_file_size)));
            }
            let start = h.backing_file_offset;
            let end = start + h.backing_file_size as u64;
            if end > cs || end as usize > buf.len() {
                return Err(corrupt("backing file name lies outside the first cluster"));
            }
            let name = &buf[start as usize..end as usize];
            h.backing_file =
                Some(String::from_utf8(name.to_vec()).map_err(|_| corrupt("backing file name is not valid UTF-8"))?);
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let limit = buf.len().min(cs);
        let mut off = self.header_length as usize;
        let end_limit =
            if self.backing_file_offset != 0 { (self.backing_file_offset as usize).min(limit) } else { limit };
        loop {
            if off + 8 > end_limit {
                // A v2 image without extensions may end right here.
                return Ok(());
            }
            let kind = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            off += 8;
            if kind == EXT_END {
                return Ok(());
            }
            if off + len > end_limit {
                return Err(corrupt(format!("header extension {kind:#x} overflows the first cluster")));
            }
            let data = &buf[off..off + len];
            match kind {
                EXT_BACKING_FORMAT => {
                    self.backing_format =
                        Some(String::from_utf8(data.to_vec()).map_err(|_| corrupt("backing format is not UTF-8"))?)
                }
                EXT_FEATURE_TABLE => self.feature_table = data.to_vec(),
                EXT_DATA_FILE => return Err(Error::Unsupported("external data files".into())),
                EXT_CRYPTO => return Err(Error::Unsupported("encrypted images".into())),
                _ => self.unknown_extensions.push(UnknownExtension { kind, data: data.to_vec() }),
            }
            off += len.next_multiple_of(8);
        }
    }

    /// Serialises the header, its extensions and the backing file name. The result
    /// must fit in the first cluster; it fills in `backing_file_offset/size`.
    pub fn serialize(&mut self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; if self.version >= 3 { V3_HEADER_LEN_WRITTEN } else { V2_HEADER_LEN }];
        if self.version >= 3 {
            self.header_length = V3_HEADER_LEN_WRITTEN as u32;
        }
        if self.compression_type == CompressionType::Zstd {
            self.incompatible_features |= INCOMPAT_COMPRESSION;
        } else {
            self.incompatible_features &= !INCOMPAT_COMPRESSION;
        }
        let mut ext = Vec::new();
        let push_ext = |ext: &mut Vec<u8>, kind: u32, data: &[u8]| {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u32).to_be_bytes());
            ext.extend_from_slice(data);
            ext.resize(ext.len().next_multiple_of(8), 0);
        };
        if let Some(f) = &self.backing_format {
            push_ext(&mut ext, EXT_BACKING_FORMAT, f.as_bytes());
        }
        if self.version >= 3 && !self.feature_table.is_empty() {
            push_ext(&mut ext, EXT_FEATURE_TABLE, &self.feature_table);
        }
        for u in &self.unknown_extensions {
            push_ext(&mut ext, u.kind, &u.data);
        }
        if self.version >= 3 || !ext.is_empty() || self.backing_file.is_some() {
            push_ext(&mut ext, EXT_END, &[]);
        }
        let backing_off = b.len() + ext.len();
        match &self.backing_file {
            Some(name) => {
                if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
                    return Err(Error::InvalidArgument(format!("backing file name '{name}' is too long")));
                }
                self.backing_file_offset = backing_off as u64;
                self.backing_file_size = name.len() as u32;
            }
            None => {
                self.backing_file_offset = 0;
                self.backing_file_size = 0;
            }
        }
        b[0..4].copy_from_slice(&QCOW_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            b[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            b[104] = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
        }
        b.extend_from_slice(&ext);
        if let Some(name) = &self.backing_file {
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() as u64 > self.cluster_size() {
            return Err(Error::InvalidArgument(format!(
                "header, extensions and backing file name need {} bytes, more than one {}-byte cluster",
                b.len(),
                self.cluster_size()
            )));
        }
        Ok(b)
    }
}

/// Validates a table location: cluster aligned, not in the header cluster, inside the file.
fn check_table(offset: u64, len: u64, cs: u64, file_len: u64, what: &str) -> Result<()> {
    if offset == 0 || !offset.is_multiple_of(cs) {
        return Err(corrupt(format!("{what} offset {offset:#x} is not a valid cluster offset")));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len.next_multiple_of(cs) && end < MAX_HOST_OFFSET => Ok(()),
        _ => Err(corrupt(format!("{what} at {offset:#x} (+{len} bytes) lies past the end of the file"))),
    }
}

/// The feature name table QEMU writes, so `qemu-img info` can name our bits.
pub fn default_feature_table() -> Vec<u8> {
    let entries: [(u8, u8, &str); 7] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
    ];
    let mut v = Vec::new();
    for (t, bit, name) in entries {
        let mut e = [0u8; 48];
        e[0] = t;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        v.extend_from_slice(&e);
    }
    v
}
