//! Host networking for Tern: TAP and macvtap devices with virtio-net headers,
//! MAC addresses, Linux bridges, and network-namespace helpers for tests.
//!
//! Everything goes through ioctls and rtnetlink directly; nothing here shells
//! out, so the library works without `ip` installed.

pub mod bridge;
pub mod iface;
pub mod mac;
pub mod macvtap;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod tap;
pub mod testnet;

pub use mac::MacAddr;
pub use tap::{Tap, TapError};

/// Size of the virtio-net v1 header (`struct virtio_net_hdr_v1`), which the
/// TAP is configured to prepend to every frame.
pub const VNET_HDR_LEN: usize = 12;
