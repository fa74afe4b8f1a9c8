//! Host-side NIC plumbing for bridge and network NICs: the daemon creates a
//! TAP device per NIC, enslaves it to the bridge and deletes it when the VM
//! stops. (A `network` is, for now, a host bridge of that name.)

use std::path::Path;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Create TAP `tap` attached to `bridge` and bring it up.
pub fn create_tap_on_bridge(tap: &str, bridge: &str) -> Result<(), String> {
    if !Path::new("/sys/class/net").join(bridge).join("bridge").exists() {
        return Err(format!("bridge `{bridge}` does not exist on this host (create it, or use tap=)"));
    }
    ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
    let r = ip(&["link", "set", tap, "master", bridge]).and_then(|_| ip(&["link", "set", tap, "up"]));
    if r.is_err() {
        delete_tap(tap);
    }
    r
}

pub fn delete_tap(tap: &str) {
    let _ = ip(&["link", "delete", tap]);
}

/// A TAP name for NIC `index` of the VM with `uuid` (at most 15 characters).
pub fn tap_name(uuid: &str, index: usize) -> String {
    format!("tn{}{index}", &uuid.replace('-', "")[..10])
}
