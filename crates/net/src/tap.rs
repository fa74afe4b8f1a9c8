//! TAP devices carrying virtio-net v1 headers (IFF_VNET_HDR), the host end
//! of a virtio-net NIC. Also used for macvtap character devices, which speak
//! the same ioctls.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::iface::{self, IfReq};
use crate::mac::MacAddr;

// TUN ioctls from <linux/if_tun.h> (_IOW('T', n, int) / _IOR).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Offload bits for [`Tap::set_offload`]: what the TAP may hand us
/// un-checksummed or un-segmented (i.e. what the guest accepts).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_UFO: u32 = 0x10;

/// Errors from opening or configuring a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and are you root?)")]
    OpenTun(io::Error),
    #[error("cannot open {0}: {1}")]
    OpenDevice(String, io::Error),
    #[error(
        "TAP '{0}' cannot be attached or created: {1} (creating needs root/CAP_NET_ADMIN; an existing TAP must be owned by you and not in use)"
    )]
    SetIff(String, io::Error),
    #[error("the kernel's TUN driver lacks IFF_VNET_HDR support")]
    NoVnetHdr,
    #[error("TAP '{0}': {1} failed: {2}")]
    Ioctl(String, &'static str, io::Error),
    #[error("invalid TAP name: {0}")]
    Name(io::Error),
}

/// An open TAP (or macvtap) file descriptor configured for virtio-net
/// headers. Reads and writes are non-blocking: `WouldBlock` means "nothing
/// to read" / "queue full, retry on EPOLLOUT".
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Attach to TAP `name`, creating it if it does not exist (root). A TAP
    /// created here disappears when the last descriptor closes unless
    /// [`Tap::set_persistent`] is called.
    pub fn open(name: &str) -> Result<Self, TapError> {
        iface::check_ifname(name).map_err(TapError::Name)?;
        let existed = iface::if_index(name).is_ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut features: libc::c_int = 0;
        iface::int_ptr_ioctl(&file, TUNGETFEATURES, &mut features)
            .map_err(|e| TapError::Ioctl(name.into(), "TUNGETFEATURES", e))?;
        if features & IFF_VNET_HDR as libc::c_int == 0 {
            return Err(TapError::NoVnetHdr);
        }
        let mut ifr = IfReq::new(name).map_err(TapError::Name)?;
        ifr.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        iface::ifreq_ioctl(&file, TUNSETIFF, &mut ifr).map_err(|e| TapError::SetIff(name.into(), e))?;
        let tap = Tap { file, name: ifr.name(), created: !existed };
        tap.set_vnet_hdr_size(crate::VNET_HDR_LEN as i32)?;
        Ok(tap)
    }

    /// Wrap an already opened macvtap character device (`/dev/tapN`),
    /// switching it to virtio-net headers.
    pub fn from_macvtap(file: File, name: &str) -> Result<Self, TapError> {
        let mut ifr = IfReq::new(name).map_err(TapError::Name)?;
        ifr.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        iface::ifreq_ioctl(&file, TUNSETIFF, &mut ifr).map_err(|e| TapError::SetIff(name.into(), e))?;
        let tap = Tap { file, name: name.to_string(), created: false };
        tap.set_vnet_hdr_size(crate::VNET_HDR_LEN as i32)?;
        Ok(tap)
    }

    /// The interface name the kernel gave (or kept for) this TAP.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether [`Tap::open`] created the interface rather than attaching.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Keep the interface after this descriptor closes (or not).
    pub fn set_persistent(&self, persistent: bool) -> Result<(), TapError> {
        iface::int_val_ioctl(&self.file, TUNSETPERSIST, persistent as libc::c_ulong)
            .map_err(|e| TapError::Ioctl(self.name.clone(), "TUNSETPERSIST", e))
    }

    /// Size of the header the kernel prepends/expects (12 for virtio 1).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        let mut v = size;
        iface::int_ptr_ioctl(&self.file, TUNSETVNETHDRSZ, &mut v)
            .map_err(|e| TapError::Ioctl(self.name.clone(), "TUNSETVNETHDRSZ", e))
    }

    /// Tell the kernel which offloads the reader accepts (`TUN_F_*`). Frames
    /// read from the TAP may then be partially checksummed or up to 64 KiB
    /// GSO frames described by the vnet header.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        iface::int_val_ioctl(&self.file, TUNSETOFFLOAD, flags as libc::c_ulong)
            .map_err(|e| TapError::Ioctl(self.name.clone(), "TUNSETOFFLOAD", e))
    }

    /// Like [`Tap::set_offload`] but drops UFO when the kernel refuses it
    /// (UFO came and went across kernel versions). Returns what was applied.
    pub fn set_offload_best_effort(&self, flags: u32) -> Result<u32, TapError> {
        match self.set_offload(flags) {
            Ok(()) => Ok(flags),
            Err(_) if flags & TUN_F_UFO != 0 => {
                let f = flags & !TUN_F_UFO;
                self.set_offload(f)?;
                Ok(f)
            }
            Err(e) => Err(e),
        }
    }

    /// Bring the interface up (host side).
    pub fn set_up(&self) -> Result<(), TapError> {
        iface::set_link_up(&self.name, true).map_err(|e| TapError::Ioctl(self.name.clone(), "SIOCSIFFLAGS", e))
    }

    pub fn if_index(&self) -> Result<u32, TapError> {
        iface::if_index(&self.name).map_err(|e| TapError::Ioctl(self.name.clone(), "SIOCGIFINDEX", e))
    }

    /// The host-side MAC of the interface (not the guest's).
    pub fn host_mac(&self) -> Result<MacAddr, TapError> {
        iface::get_hwaddr(&self.name).map_err(|e| TapError::Ioctl(self.name.clone(), "SIOCGIFHWADDR", e))
    }

    /// The flags the TAP was attached with, as TUNGETIFF reports them.
    pub fn vnet_hdr_enabled(&self) -> bool {
        let mut ifr = IfReq { name: [0; iface::IFNAMSIZ], data: [0; 24] };
        iface::ifreq_ioctl(&self.file, TUNGETIFF, &mut ifr).is_ok() && ifr.short() & IFF_VNET_HDR != 0
    }

    /// Read one frame (vnet header + Ethernet frame) into `buf`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Read one frame scattered over `bufs`.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let cnt = bufs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: IoSliceMut is ABI-compatible with struct iovec, and each
        // slice is valid for writes of its length.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), bufs.as_mut_ptr().cast(), cnt) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Write one frame (vnet header + Ethernet frame).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid readable slice of buf.len() bytes.
        let n = unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Write one frame gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let cnt = bufs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with struct iovec, and each slice
        // is valid for reads of its length.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), bufs.as_ptr().cast(), cnt) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Write one frame gathered straight from raw buffers (e.g. guest memory),
    /// avoiding a copy.
    ///
    /// # Safety
    /// Every iovec must describe memory that stays mapped and readable for
    /// the duration of the call (its contents may change concurrently; the
    /// kernel copies whatever it reads).
    pub unsafe fn writev_raw(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        if iov.len() > libc::UIO_MAXIOV as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "more than UIO_MAXIOV buffers"));
        }
        // SAFETY: the caller guarantees every iovec is readable.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("name", &self.name).field("fd", &self.file.as_raw_fd()).finish()
    }
}
