//! Test support: a network namespace with a persistent TAP and a real
//! dnsmasq answering DHCP on it, for guests booted with `ip=dhcp` (the VMM
//! runs inside the namespace and attaches to the TAP by name).
//!
//! This module shells out to `dnsmasq`; it is for tests and diagnostics,
//! not for the VMM's own paths.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{NetNs, NetNsError};
use crate::tap::{Tap, TapError};

/// Host side of the test network (QEMU user-networking's numbers).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const PREFIX: u8 = 24;
pub const RANGE_START: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const RANGE_END: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 99);

#[derive(Debug, thiserror::Error)]
pub enum TestNetError {
    #[error(transparent)]
    Ns(#[from] NetNsError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot configure {0}: {1}")]
    Iface(String, io::Error),
    #[error("cannot start dnsmasq: {0} (install the dnsmasq package)")]
    Spawn(io::Error),
    #[error("dnsmasq did not start listening on port 67 within 5 s; its log: {0}")]
    NotListening(String),
}

/// A namespace holding TAP `tap` at [`HOST_IP`]/24 with dnsmasq serving
/// DHCP on it. Dropping it stops dnsmasq and removes TAP and namespace.
pub struct DhcpNetwork {
    ns: NetNs,
    tap: String,
    dir: PathBuf,
    dnsmasq: Child,
}

impl DhcpNetwork {
    pub fn start(tag: &str, tap: &str) -> Result<Self, TestNetError> {
        let ns = NetNs::create(tag)?;
        ns.disable_ipv6()?;
        ns.run(|| -> Result<(), TestNetError> {
            let t = Tap::open(tap)?;
            t.set_persistent(true)?;
            t.set_up()?;
            crate::iface::set_ipv4(tap, HOST_IP, PREFIX).map_err(|e| TestNetError::Iface(tap.into(), e))?;
            Ok(())
        })??;
        let dir = std::env::temp_dir().join(format!("{}-dnsmasq", ns.name()));
        std::fs::create_dir_all(&dir).map_err(TestNetError::Spawn)?;
        let log = std::fs::File::create(dir.join("log")).map_err(TestNetError::Spawn)?;
        let dnsmasq = ns
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--dhcp-authoritative",
                "--log-dhcp",
                "--no-ping",
            ])
            .arg(format!("--interface={tap}"))
            .arg(format!("--dhcp-range={RANGE_START},{RANGE_END},255.255.255.0,1h"))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(TestNetError::Spawn)?)
            .stderr(log)
            .spawn()
            .map_err(TestNetError::Spawn)?;
        let net = DhcpNetwork { ns, tap: tap.to_string(), dir, dnsmasq };
        net.wait_listening()?;
        Ok(net)
    }

    /// Poll the namespace's UDP table for a socket on port 67.
    fn wait_listening(&self) -> Result<(), TestNetError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let udp = self.ns.run(|| std::fs::read_to_string("/proc/thread-self/net/udp").unwrap_or_default())?;
            if udp.lines().skip(1).any(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(":0043"))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestNetError::NotListening(self.log()))
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// dnsmasq's output so far (DHCP transactions are logged).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// A command that runs inside the namespace (e.g. `tern run ... --net tap=NAME`).
    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program)
    }
}

impl Drop for DhcpNetwork {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        let tap = self.tap.clone();
        let _ = self.ns.run(move || Tap::open(&tap).and_then(|t| t.set_persistent(false)));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
