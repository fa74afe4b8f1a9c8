//! Loading the kernel (ELF vmlinux with or without a PVH note, or bzImage),
//! the initrd and the command line into guest memory, and choosing the
//! entry protocol.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO32_HOLE_START};
use arch::regs::EntryMode;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage: give a Linux kernel or a Tern test guest")]
    NotAKernel(String),
    #[error("kernel {path} could not be loaded: {source}")]
    Load { path: String, source: linux_loader::loader::Error },
    #[error("kernel {0} has no PVH entry note, but --boot pvh was asked")]
    NoPvh(String),
    #[error("initrd {path}: {source}")]
    Initrd { path: String, source: std::io::Error },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x}: give more --memory")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    #[error("kernel command line is too long or invalid: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the command line to guest memory: {0}")]
    CmdlineWrite(linux_loader::loader::Error),
}

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum KernelSource {
    Path(PathBuf),
    /// An image compiled into the binary (the demo guest).
    Builtin {
        name: &'static str,
        bytes: &'static [u8],
    },
}

impl KernelSource {
    pub fn name(&self) -> String {
        match self {
            KernelSource::Path(p) => p.display().to_string(),
            KernelSource::Builtin { name, .. } => format!("(built-in {name})"),
        }
    }
}

/// Which entry protocol to use for an ELF with a PVH note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH when the ELF has the note, else the Linux 64-bit protocol.
    #[default]
    Auto,
    Pvh,
    /// Linux 64-bit boot protocol even when a PVH note exists.
    Linux,
}

/// The result of loading: how to enter, and the bzImage header if any.
pub struct LoadedKernel {
    pub entry: u64,
    pub pvh: bool,
    pub header: Option<setup_header>,
    pub kernel_end: u64,
}

fn load_from<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    name: &str,
    image: &mut F,
    proto: BootProtocol,
) -> Result<LoadedKernel, LoaderError> {
    let mut magic = [0u8; 0x206];
    let n = image.read(&mut magic).map_err(|source| LoaderError::Open { path: name.into(), source })?;
    image.seek(SeekFrom::Start(0)).map_err(|source| LoaderError::Open { path: name.into(), source })?;
    let load_err = |source| LoaderError::Load { path: name.into(), source };
    if n >= 4 && magic[..4] == *b"\x7fELF" {
        let r: KernelLoaderResult = Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let pvh_entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
            _ => None,
        };
        let (entry, pvh) = match (proto, pvh_entry) {
            (BootProtocol::Linux, _) | (BootProtocol::Auto, None) => (r.kernel_load.0, false),
            (_, Some(e)) => (e, true),
            (BootProtocol::Pvh, None) => return Err(LoaderError::NoPvh(name.into())),
        };
        Ok(LoadedKernel { entry, pvh, header: None, kernel_end: r.kernel_end })
    } else if n >= 0x206 && magic[0x202..0x206] == *b"HdrS" {
        let r = BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        // The 64-bit entry point is 0x200 past the protected-mode kernel.
        Ok(LoadedKernel {
            entry: r.kernel_load.0 + 0x200,
            pvh: false,
            header: r.setup_header,
            kernel_end: r.kernel_end,
        })
    } else {
        Err(LoaderError::NotAKernel(name.into()))
    }
}

/// Load the kernel image into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    src: &KernelSource,
    proto: BootProtocol,
) -> Result<LoadedKernel, LoaderError> {
    let name = src.name();
    match src {
        KernelSource::Path(p) => {
            let mut f = File::open(p).map_err(|source| LoaderError::Open { path: name.clone(), source })?;
            load_from(mem, &name, &mut f, proto)
        }
        KernelSource::Builtin { bytes, .. } => load_from(mem, &name, &mut Cursor::new(*bytes), proto),
    }
}

/// Place the initrd as high as allowed in low memory, page aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    header: Option<&setup_header>,
) -> Result<(u64, u64), LoaderError> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|source| LoaderError::Initrd { path: name.clone(), source })?;
    let size = f.metadata().map_err(|source| LoaderError::Initrd { path: name.clone(), source })?.len();
    let low_end = mem.last_addr().0.min(MMIO32_HOLE_START - 1) + 1;
    let max = header.map(|h| u64::from(h.initrd_addr_max)).filter(|&m| m != 0).unwrap_or(0x37ff_ffff) + 1;
    let limit = low_end.min(max);
    let too_large = || LoaderError::InitrdTooLarge { path: name.clone(), size, limit };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| LoaderError::Initrd { path: name, source: std::io::Error::other(e) })?;
    Ok((addr, size))
}

/// Build the command line (user part plus device fragments) and write it.
pub fn write_cmdline(mem: &GuestMemoryMmap, user: &str, extra: &[String]) -> Result<(u64, usize), LoaderError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    if !user.trim().is_empty() {
        cl.insert_str(user.trim()).map_err(LoaderError::Cmdline)?;
    }
    for e in extra {
        cl.insert_str(e).map_err(LoaderError::Cmdline)?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(LoaderError::CmdlineWrite)?;
    let len = cl.as_cstring().map_err(LoaderError::Cmdline)?.as_bytes().len();
    Ok((CMDLINE_START, len))
}

/// The boot vCPU's entry mode for a loaded kernel.
pub fn entry_mode(k: &LoadedKernel, start_info: u64, zero_page: u64) -> EntryMode {
    if k.pvh { EntryMode::Pvh { entry: k.entry, start_info } } else { EntryMode::Linux64 { entry: k.entry, zero_page } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let src = KernelSource::Builtin { name: "junk", bytes: b"this is not a kernel at all, just text" };
        let e = load_kernel(&mem(), &src, BootProtocol::Auto).err().unwrap();
        assert!(matches!(e, LoaderError::NotAKernel(_)), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let src = KernelSource::Path("/nonexistent/vmlinux".into());
        let e = load_kernel(&mem(), &src, BootProtocol::Auto).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let m = mem();
        let (addr, len) = write_cmdline(&m, "console=ttyS0", &["virtio_mmio.device=4K@0xd0000000:5".into()]).unwrap();
        let mut b = vec![0u8; len + 1];
        m.read_slice(&mut b, GuestAddress(addr)).unwrap();
        assert_eq!(&b[..len], b"console=ttyS0 virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(b[len], 0);
    }

    #[test]
    fn initrd_goes_high_and_too_big_is_refused() {
        let m = mem();
        let dir = std::env::temp_dir().join(format!("tern-initrd-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 10000]).unwrap();
        let (addr, size) = load_initrd(&m, &dir, 0x20_0000, None).unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        assert!(load_initrd(&m, &dir, (64 << 20) - 4096, None).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
