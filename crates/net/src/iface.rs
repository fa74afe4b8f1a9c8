//! Interface ioctls (`struct ifreq`): index, flags (up/down), MAC, MTU and
//! IPv4 address of an interface in the caller's network namespace.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::mac::MacAddr;

pub const IFNAMSIZ: usize = 16;

// Interface ioctls from <linux/sockios.h>.
pub const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
pub const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
pub const SIOCSIFADDR: libc::c_ulong = 0x8916;
pub const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
pub const SIOCSIFMTU: libc::c_ulong = 0x8922;
pub const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
pub const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
pub const SIOCGIFINDEX: libc::c_ulong = 0x8933;

pub const IFF_UP: i16 = 0x1;

/// `struct ifreq`: a name and a 24-byte union, of which we use the flags,
/// index, MTU and sockaddr members.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IfReq {
    pub name: [u8; IFNAMSIZ],
    pub data: [u8; 24],
}

impl IfReq {
    pub fn new(name: &str) -> io::Result<Self> {
        let mut req = IfReq { name: [0; IFNAMSIZ], data: [0; 24] };
        req.set_name(name)?;
        Ok(req)
    }

    pub fn set_name(&mut self, name: &str) -> io::Result<()> {
        check_ifname(name)?;
        self.name = [0; IFNAMSIZ];
        self.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(())
    }

    pub fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
    }

    pub fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    pub fn int(&self) -> i32 {
        i32::from_ne_bytes(self.data[..4].try_into().unwrap_or_default())
    }

    pub fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    /// Store an AF_INET `struct sockaddr_in` with `addr`.
    pub fn set_inet(&mut self, addr: std::net::Ipv4Addr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }

    /// Store a `struct sockaddr` of family ARPHRD_ETHER carrying `mac`.
    pub fn set_hwaddr(&mut self, mac: MacAddr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
        self.data[2..8].copy_from_slice(&mac.0);
    }

    pub fn hwaddr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.data[2..8]).unwrap_or_default()
    }
}

/// Interface names are at most 15 bytes, non-empty, without '/' or spaces.
pub fn check_ifname(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name '{name}': use 1-15 characters without '/' or spaces"),
        ));
    }
    Ok(())
}

/// A datagram socket, the handle interface ioctls are issued on.
pub fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issue `req` on `fd` with an ifreq argument.
pub fn ifreq_ioctl(fd: &impl AsRawFd, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: every request passed here takes a `struct ifreq *`, which IfReq
    // mirrors in layout and size; the kernel writes at most sizeof(ifreq).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, ifr as *mut IfReq) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Issue `req` on `fd` with a pointer to an int-sized argument.
pub fn int_ptr_ioctl(fd: &impl AsRawFd, req: libc::c_ulong, v: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: the requests passed here take an `int *` (or unsigned int *).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, v as *mut libc::c_int) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Issue `req` on `fd` with an integer passed by value.
pub fn int_val_ioctl(fd: &impl AsRawFd, req: libc::c_ulong, v: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests passed here take their argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, v) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The index of interface `name` in the caller's network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifreq_ioctl(&sock, SIOCGIFINDEX, &mut ifr)?;
    Ok(ifr.int() as u32)
}

/// Set or clear IFF_UP on `name`.
pub fn set_link_up(name: &str, up: bool) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifreq_ioctl(&sock, SIOCGIFFLAGS, &mut ifr)?;
    let flags = if up { ifr.short() | IFF_UP } else { ifr.short() & !IFF_UP };
    ifr.set_short(flags);
    ifreq_ioctl(&sock, SIOCSIFFLAGS, &mut ifr)
}

pub fn is_link_up(name: &str) -> io::Result<bool> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifreq_ioctl(&sock, SIOCGIFFLAGS, &mut ifr)?;
    Ok(ifr.short() & IFF_UP != 0)
}

pub fn get_hwaddr(name: &str) -> io::Result<MacAddr> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifreq_ioctl(&sock, SIOCGIFHWADDR, &mut ifr)?;
    Ok(ifr.hwaddr())
}

pub fn set_hwaddr(name: &str, mac: MacAddr) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifr.set_hwaddr(mac);
    ifreq_ioctl(&sock, SIOCSIFHWADDR, &mut ifr)
}

pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifr.set_int(mtu as i32);
    ifreq_ioctl(&sock, SIOCSIFMTU, &mut ifr)
}

/// Give `name` the IPv4 address `addr/prefix`.
pub fn set_ipv4(name: &str, addr: std::net::Ipv4Addr, prefix: u8) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid prefix length /{prefix}")));
    }
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifr.set_inet(addr);
    ifreq_ioctl(&sock, SIOCSIFADDR, &mut ifr)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    ifr.set_inet(std::net::Ipv4Addr::from(mask));
    ifreq_ioctl(&sock, SIOCSIFNETMASK, &mut ifr)
}

/// Run `f` with a sysfs that shows the caller's network namespace, mounted
/// at `/sys` inside a throwaway mount namespace. Needed because the host's
/// /sys/class/net always shows the namespace /sys was mounted from, which
/// is wrong once we work inside a namespace created with [`crate::netns`].
pub fn with_current_netns_sysfs<T: Send>(f: impl FnOnce(&std::path::Path) -> T + Send) -> io::Result<T> {
    let ns = std::fs::File::open("/proc/thread-self/ns/net")?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns/unshare/mount below only affect this short-lived
            // thread (unshare(CLONE_NEWNS) gives it its own fs_struct); all
            // pointers are valid NUL-terminated strings or null.
            unsafe {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) < 0 || libc::unshare(libc::CLONE_NEWNS) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(c"sysfs".as_ptr(), c"/sys".as_ptr(), c"sysfs".as_ptr(), 0, std::ptr::null()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(f(std::path::Path::new("/sys")))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sysfs reader thread panicked")))
    })
}
