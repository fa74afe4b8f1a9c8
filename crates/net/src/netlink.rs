//! A minimal rtnetlink client: just the link and address requests Tern needs
//! (create bridge/veth/macvtap links, delete, set master/up/namespace, add
//! IPv4 addresses). Requests are acknowledged synchronously.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::iface;
use crate::mac::MacAddr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_MACVLAN_MODE: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const IFF_UP: u32 = 1;

/// Macvlan/macvtap modes (`MACVLAN_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private = 1,
    Vepa = 2,
    Bridge = 4,
    Passthru = 8,
}

/// Errors from a netlink request.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink I/O failed: {0}")]
    Io(io::Error),
    #[error("{op} failed: {err}")]
    Request { op: String, err: io::Error },
    #[error("malformed netlink reply to {0}")]
    Malformed(String),
    #[error("interface '{0}' not found: {1}")]
    NoSuchLink(String, io::Error),
    #[error("{0}")]
    Name(io::Error),
}

impl NetlinkError {
    /// The errno behind a refused request, if that is what this is.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { err, .. } | NetlinkError::NoSuchLink(_, err) => err.raw_os_error(),
            _ => None,
        }
    }
}

/// A NETLINK_ROUTE socket bound to the caller's network namespace at the
/// time it was opened.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// Builder for one netlink message with nested attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg { buf, nests: Vec::new() }
    }

    /// Append `struct ifinfomsg`.
    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) {
        self.buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }

    fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    fn begin_nest(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.attr(ty, &[]);
    }

    fn end_nest(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 1 })
    }

    /// Send one request and wait for its acknowledgement.
    fn request(&mut self, msg: Msg, op: impl FnOnce() -> String) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        // SAFETY: a zeroed sockaddr_nl is valid; pid 0 addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bytes and addr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(NetlinkError::Io(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io(e));
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let rseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < 16 || off + len > n {
                    return Err(NetlinkError::Malformed(op()));
                }
                if ty == NLMSG_ERROR && rseq == seq {
                    if len < 20 {
                        return Err(NetlinkError::Malformed(op()));
                    }
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or_default());
                    if err == 0 {
                        return Ok(());
                    }
                    return Err(NetlinkError::Request { op: op(), err: io::Error::from_raw_os_error(-err) });
                }
                off += align4(len);
            }
        }
    }

    fn index_of(name: &str) -> Result<i32, NetlinkError> {
        iface::if_index(name).map(|i| i as i32).map_err(|e| NetlinkError::NoSuchLink(name.to_string(), e))
    }

    fn new_link(&mut self, name: &str, kind: &str) -> Msg {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        m.begin_nest(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, kind);
        m
    }

    /// Create a Linux bridge `name` (down, no ports).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        iface::check_ifname(name).map_err(NetlinkError::Name)?;
        let mut m = self.new_link(name, "bridge");
        m.end_nest();
        self.request(m, || format!("creating bridge '{name}'"))
    }

    /// Create a veth pair `name` <-> `peer`.
    pub fn create_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        iface::check_ifname(name).map_err(NetlinkError::Name)?;
        iface::check_ifname(peer).map_err(NetlinkError::Name)?;
        let mut m = self.new_link(name, "veth");
        m.begin_nest(IFLA_INFO_DATA);
        m.begin_nest(VETH_INFO_PEER);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, peer);
        m.end_nest();
        m.end_nest();
        m.end_nest();
        self.request(m, || format!("creating veth pair '{name}'/'{peer}'"))
    }

    /// Create macvtap `name` on top of `parent` (optionally with `mac`).
    pub fn create_macvtap(
        &mut self,
        name: &str,
        parent: &str,
        mode: MacvlanMode,
        mac: Option<MacAddr>,
    ) -> Result<(), NetlinkError> {
        iface::check_ifname(name).map_err(NetlinkError::Name)?;
        let parent_index = Self::index_of(parent)?;
        let mut m = self.new_link(name, "macvtap");
        m.begin_nest(IFLA_INFO_DATA);
        m.attr_u32(IFLA_MACVLAN_MODE, mode as u32);
        m.end_nest();
        m.end_nest();
        m.attr_u32(IFLA_LINK, parent_index as u32);
        if let Some(mac) = mac {
            m.attr(IFLA_ADDRESS, &mac.0);
        }
        self.request(m, || format!("creating macvtap '{name}' on '{parent}'"))
    }

    /// Delete interface `name` (any kind).
    pub fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let index = Self::index_of(name)?;
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(index, 0, 0);
        self.request(m, || format!("deleting interface '{name}'"))
    }

    /// Set or clear IFF_UP on `name`.
    pub fn set_up(&mut self, name: &str, up: bool) -> Result<(), NetlinkError> {
        let index = Self::index_of(name)?;
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(index, if up { IFF_UP } else { 0 }, IFF_UP);
        self.request(m, || format!("setting '{name}' {}", if up { "up" } else { "down" }))
    }

    /// Enslave `name` to bridge `master`, or release it when `master` is None.
    pub fn set_master(&mut self, name: &str, master: Option<&str>) -> Result<(), NetlinkError> {
        let index = Self::index_of(name)?;
        let master_index = match master {
            Some(b) => Self::index_of(b)?,
            None => 0,
        };
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(index, 0, 0);
        m.attr_u32(IFLA_MASTER, master_index as u32);
        self.request(m, || format!("setting master of '{name}' to {master:?}"))
    }

    /// Move `name` into the network namespace referred to by `ns_fd`.
    pub fn set_netns(&mut self, name: &str, ns_fd: RawFd) -> Result<(), NetlinkError> {
        let index = Self::index_of(name)?;
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(index, 0, 0);
        m.attr_u32(IFLA_NET_NS_FD, ns_fd as u32);
        self.request(m, || format!("moving '{name}' to another namespace"))
    }

    /// Set the link-layer address of `name`.
    pub fn set_mac(&mut self, name: &str, mac: MacAddr) -> Result<(), NetlinkError> {
        let index = Self::index_of(name)?;
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(index, 0, 0);
        m.attr(IFLA_ADDRESS, &mac.0);
        self.request(m, || format!("setting MAC of '{name}'"))
    }

    /// Add IPv4 address `addr/prefix` to `name`.
    pub fn add_ipv4(&mut self, name: &str, addr: std::net::Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let index = Self::index_of(name)?;
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        // struct ifaddrmsg
        m.buf.extend_from_slice(&[libc::AF_INET as u8, prefix, 0, 0]);
        m.buf.extend_from_slice(&(index as u32).to_ne_bytes());
        m.attr(IFA_LOCAL, &addr.octets());
        m.attr(IFA_ADDRESS, &addr.octets());
        self.request(m, || format!("adding {addr}/{prefix} to '{name}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_have_correct_lengths() {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(0, 0, 0);
        m.begin_nest(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth"); // 4 + 5 -> padded to 12
        m.end_nest();
        let b = m.finish(7);
        assert_eq!(b.len(), 16 + 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 16);
        assert_eq!(u16::from_ne_bytes([b[36], b[37]]), 9);
        assert_eq!(&b[40..45], b"veth\0");
    }
}
