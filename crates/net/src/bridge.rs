//! Linux bridge helpers for virtual networks: create/delete a bridge,
//! enslave TAPs, give the bridge an address, bring it up.

use std::net::Ipv4Addr;

use crate::netlink::{Netlink, NetlinkError};

/// Errors from bridge operations; each names the bridge or port involved.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Create bridge `name` and bring it up. Fails with EEXIST if it exists.
pub fn create_bridge(name: &str) -> Result<(), BridgeError> {
    let mut nl = Netlink::open()?;
    nl.create_bridge(name)?;
    nl.set_up(name, true)?;
    Ok(())
}

/// Create bridge `name` unless an interface of that name already exists.
pub fn ensure_bridge(name: &str) -> Result<(), BridgeError> {
    if crate::iface::if_index(name).is_ok() {
        let mut nl = Netlink::open()?;
        nl.set_up(name, true)?;
        return Ok(());
    }
    create_bridge(name)
}

/// Delete bridge `name` (its ports are released, not deleted).
pub fn delete_bridge(name: &str) -> Result<(), BridgeError> {
    Ok(Netlink::open()?.delete_link(name)?)
}

/// Enslave `port` (a TAP, veth, ...) to `bridge` and bring the port up.
pub fn add_port(bridge: &str, port: &str) -> Result<(), BridgeError> {
    let mut nl = Netlink::open()?;
    nl.set_master(port, Some(bridge))?;
    nl.set_up(port, true)?;
    Ok(())
}

/// Release `port` from whatever bridge it is in.
pub fn remove_port(port: &str) -> Result<(), BridgeError> {
    Ok(Netlink::open()?.set_master(port, None)?)
}

/// Give `name` the address `addr/prefix` (the gateway of a virtual network).
pub fn set_address(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), BridgeError> {
    Ok(Netlink::open()?.add_ipv4(name, addr, prefix)?)
}

/// Bring interface `name` up or down.
pub fn set_up(name: &str, up: bool) -> Result<(), BridgeError> {
    Ok(Netlink::open()?.set_up(name, up)?)
}

/// The bridge `port` is enslaved to (in the caller's namespace), from sysfs.
pub fn master_of(port: &str) -> Option<String> {
    crate::iface::with_current_netns_sysfs(|sys| {
        let link = std::fs::read_link(sys.join(format!("class/net/{port}/master"))).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    })
    .ok()
    .flatten()
}
