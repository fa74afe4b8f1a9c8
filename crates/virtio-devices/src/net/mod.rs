//! virtio-net (virtio 1.x section 5.1) backed by a host TAP: one rx/tx queue
//! pair, checksum and TSO offloads negotiated with the guest and mirrored
//! onto the TAP, mergeable rx buffers, link status in config space.

mod config;
mod ctrl;
mod gate;
mod handler;
#[cfg(test)]
pub(crate) mod test_driver;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use ::net::tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use ::net::{MacAddr, Tap, TapError};
use devices::GuestMemory;
use migration::{MigrationError, Snapshot, Snapshottable};
use vmm_sys_util::epoll::EventSet;

use crate::common::DeviceCommon;
use crate::device::{
    ActivateError, ActiveQueue, COMMON_FEATURES, TYPE_NET, VirtioDevice, VirtioInterrupt, check_queue_count,
    read_config_bytes,
};

pub use config::{NetConfig, NetConfigError};
pub use handler::{HDR_LEN, MAX_FRAME, NetCounters};
use handler::{NetBackend, NetHandler, TAP_TOKEN};

/// Feature bits (virtio 1.x 5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;

/// Config space status bits: link up, and "please announce yourself"
/// (gratuitous ARP after a restore, acknowledged on the control queue).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
pub const VIRTIO_NET_S_ANNOUNCE: u16 = 2;

const QUEUE_SIZE: u16 = 256;
const CTRL_QUEUE_SIZE: u16 = 64;
/// Config space: mac[6], status u16.
const CONFIG_LEN: usize = 8;

/// Errors from building a NIC.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("virtio-net {0}: {1}")]
    Tap(String, TapError),
}

/// Device state that a snapshot keeps (queue positions are the transport's).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetState {
    pub tap: String,
    pub mac: MacAddr,
    pub acked_features: u64,
}

/// A virtio-net device on a TAP.
pub struct Net {
    common: DeviceCommon,
    tap: Arc<Tap>,
    mac: MacAddr,
    /// Config-space status word (link up, announce), shared with the
    /// control queue handler.
    status: Arc<AtomicU16>,
    /// Raise an announce request when next activated (after a restore).
    announce: bool,
    counters: Arc<NetCounters>,
    /// Offload bits the TAP accepted for the full feature set; offers are
    /// trimmed to these so the guest never gets frames we cannot describe.
    tap_offloads: u32,
}

/// TAP offloads implied by the guest-side features the driver accepted.
pub fn tap_offloads_for(features: u64) -> u32 {
    let mut f = 0;
    if features & VIRTIO_NET_F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if features & VIRTIO_NET_F_GUEST_ECN != 0 {
            f |= TUN_F_TSO_ECN;
        }
        if features & VIRTIO_NET_F_GUEST_UFO != 0 {
            f |= TUN_F_UFO;
        }
    }
    f
}

impl Net {
    /// A NIC named `id` (e.g. "net0") on the TAP named in `cfg`, created if
    /// it does not exist (needs root) and brought up.
    pub fn new(id: &str, cfg: &NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&cfg.tap).map_err(|e| NetError::Tap(id.into(), e))?;
        tap.set_up().map_err(|e| NetError::Tap(id.into(), e))?;
        Self::with_tap(id, tap, cfg.mac)
    }

    /// A NIC on an already opened TAP or macvtap (see `net::macvtap`).
    pub fn with_tap(id: &str, tap: Tap, mac: MacAddr) -> Result<Self, NetError> {
        // Probe which offloads this kernel's TAP takes, then start with none
        // until the guest says what it accepts.
        let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO;
        let tap_offloads = tap.set_offload_best_effort(all).map_err(|e| NetError::Tap(id.into(), e))?;
        tap.set_offload(0).map_err(|e| NetError::Tap(id.into(), e))?;
        let mut features = COMMON_FEATURES
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_HOST_ECN
            | VIRTIO_NET_F_CTRL_VQ
            | VIRTIO_NET_F_CTRL_RX
            | VIRTIO_NET_F_CTRL_MAC_ADDR
            | VIRTIO_NET_F_GUEST_ANNOUNCE;
        if tap_offloads & TUN_F_CSUM != 0 {
            features |= VIRTIO_NET_F_GUEST_CSUM;
            if tap_offloads & TUN_F_TSO4 != 0 {
                features |= VIRTIO_NET_F_GUEST_TSO4;
            }
            if tap_offloads & TUN_F_TSO6 != 0 {
                features |= VIRTIO_NET_F_GUEST_TSO6;
            }
            if tap_offloads & TUN_F_TSO_ECN != 0 {
                features |= VIRTIO_NET_F_GUEST_ECN;
            }
            if tap_offloads & TUN_F_UFO != 0 {
                features |= VIRTIO_NET_F_GUEST_UFO;
            }
        }
        Ok(Net {
            common: DeviceCommon::new(id, features, vec![QUEUE_SIZE, QUEUE_SIZE, CTRL_QUEUE_SIZE]),
            tap: Arc::new(tap),
            mac,
            status: Arc::new(AtomicU16::new(VIRTIO_NET_S_LINK_UP)),
            announce: false,
            counters: Arc::default(),
            tap_offloads,
        })
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Live counters (shared with the worker).
    pub fn stats(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&self.status.load(Ordering::SeqCst).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let ctrl = self.common.has_feature(VIRTIO_NET_F_CTRL_VQ);
        check_queue_count(&self.common.id, if ctrl { 3 } else { 2 }, &queues)?;
        let offloads = tap_offloads_for(self.common.acked_features) & self.tap_offloads;
        self.tap.set_offload(offloads).map_err(|e| ActivateError::Backend(self.common.id.clone(), e.to_string()))?;
        let (mut qs, idx, evts) = DeviceCommon::split(queues);
        let ctrl_queue = if ctrl {
            Some(ctrl::CtrlQueue { queue: qs.remove(2), index: idx[2], status: self.status.clone() })
        } else {
            None
        };
        let tx = qs.remove(1);
        let rx = qs.remove(0);
        let backend = NetBackend {
            queue_index: [idx[0], idx[1]],
            tap: self.tap.clone(),
            mrg_rxbuf: self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF),
            counters: self.counters.clone(),
        };
        let gate = gate::TapGate::new(self.tap.as_raw_fd())
            .map_err(|e| ActivateError::Backend(self.common.id.clone(), format!("TAP epoll: {e}")))?;
        let gate_fd = gate.fd();
        let mut handler = NetHandler::new(mem, interrupt.clone(), rx, tx, backend);
        handler.ctrl = ctrl_queue;
        handler.gate = Some(gate);
        let announce = std::mem::take(&mut self.announce) && self.common.has_feature(VIRTIO_NET_F_GUEST_ANNOUNCE);
        // The TAP, through its gate (edge-triggered): while the guest has no
        // rx buffers we leave frames in the TAP and rely on the rx queue
        // notification to resume.
        let extra = vec![(gate_fd, EventSet::IN | EventSet::EDGE_TRIGGERED, TAP_TOKEN)];
        self.common.start(evts, extra, interrupt.clone(), Box::new(handler))?;
        if announce {
            // We may be on another host now: have the guest send gratuitous
            // ARPs so switches learn where its MAC went.
            self.status.fetch_or(VIRTIO_NET_S_ANNOUNCE, Ordering::SeqCst);
            let _ = interrupt.trigger(crate::device::VirtioInterruptType::Config);
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.common.reset();
        let _ = self.tap.set_offload(0);
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        BTreeMap::from([
            ("rx_packets".into(), get(&c.rx_packets)),
            ("rx_bytes".into(), get(&c.rx_bytes)),
            ("rx_drops".into(), get(&c.rx_drops)),
            ("rx_errors".into(), get(&c.rx_errors)),
            ("tx_packets".into(), get(&c.tx_packets)),
            ("tx_bytes".into(), get(&c.tx_bytes)),
            ("tx_drops".into(), get(&c.tx_drops)),
            ("tx_errors".into(), get(&c.tx_errors)),
        ])
    }
}

crate::common_pausable!(Net);

impl Snapshottable for Net {
    fn id(&self) -> String {
        self.common.id.clone()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        let st =
            NetState { tap: self.tap.name().to_string(), mac: self.mac, acked_features: self.common.acked_features };
        Snapshot::new(&self.common.id, &st).map(Some)
    }
    fn restore(&mut self, s: &Snapshot) -> Result<(), MigrationError> {
        let st: NetState = s.to_state()?;
        // The guest driver has the old MAC cached: keep it even if this
        // process was started without an explicit mac=.
        self.mac = st.mac;
        self.common.ack(st.acked_features);
        self.announce = true;
        Ok(())
    }
}
