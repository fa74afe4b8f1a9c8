//! virtio-console (virtio 1.x section 5.3), port 0 only (no MULTIPORT): the
//! guest's hvc0. Output goes where a `--serial`-style backend says (stdio,
//! file, Unix socket, none); input comes from stdin or the socket client,
//! read by a small input thread into a bounded buffer the worker drains
//! into the guest's receive buffers.

mod input;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::GuestMemory;
use devices::legacy::serial::{SerialConfig, SerialInput, SerialOutput};
use migration::{MigrationError, Snapshot, Snapshottable};
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::common::DeviceCommon;
use crate::device::{
    ActivateError, ActiveQueue, COMMON_FEATURES, TYPE_CONSOLE, VirtioDevice, VirtioInterrupt, check_queue_count,
    read_config_bytes,
};
use crate::queue::{add_used, drain_queue, notify_used, parse_chain, pop_chain, read_bufs, write_bufs};
use crate::worker::{DeviceBroken, QueueHandler};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Input bytes held for the guest at most; the input thread waits beyond.
pub const INPUT_BUFFER_MAX: usize = 64 * 1024;
/// Largest single output chain processed (bigger ones are truncated).
const MAX_TX_CHAIN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("virtio-console: {0}")]
    Backend(#[from] devices::legacy::serial::SerialError),
    #[error("virtio-console: cannot start its input thread: {0}")]
    Input(std::io::Error),
}

/// Bytes typed by the user, waiting for guest receive buffers.
pub(crate) struct RxBuffer {
    pub data: Mutex<VecDeque<u8>>,
    /// Signalled when bytes arrive.
    pub ready: EventFd,
}

impl RxBuffer {
    /// Append what fits; returns how many bytes were taken.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let n = bytes.len().min(INPUT_BUFFER_MAX - d.len());
        d.extend(&bytes[..n]);
        drop(d);
        if n > 0 {
            let _ = self.ready.write(1);
        }
        n
    }
}

#[derive(Default)]
struct ConsoleCounters {
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    errors: AtomicU64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleState {
    pub acked_features: u64,
    /// Input not yet delivered to the guest.
    pub pending_input: Vec<u8>,
}

pub struct Console {
    common: DeviceCommon,
    output: Arc<Mutex<SerialOutput>>,
    rx: Arc<RxBuffer>,
    _input: Option<input::InputThread>,
    counters: Arc<ConsoleCounters>,
}

impl Console {
    /// A console named `id` on the backend `config` describes. Input is read
    /// from now on (bounded), so early keystrokes are not lost.
    pub fn new(id: &str, config: &SerialConfig) -> Result<Self, ConsoleError> {
        let output = SerialOutput::open(config)?;
        let rx = Arc::new(RxBuffer {
            data: Mutex::new(VecDeque::new()),
            ready: EventFd::new(EFD_NONBLOCK).map_err(ConsoleError::Input)?,
        });
        let source = SerialInput::of(&output);
        let input = input::InputThread::spawn(id, source, rx.clone()).map_err(ConsoleError::Input)?;
        Ok(Self {
            common: DeviceCommon::new(id, COMMON_FEATURES, vec![QUEUE_SIZE, QUEUE_SIZE]),
            output: Arc::new(Mutex::new(output)),
            rx,
            _input: input,
            counters: Arc::default(),
        })
    }

    /// Queue input for the guest as if typed (tests, the control socket).
    pub fn inject_input(&self, bytes: &[u8]) -> usize {
        self.rx.push(bytes)
    }
}

struct ConsoleHandler {
    mem: GuestMemory,
    queues: Vec<Queue>,
    indices: Vec<u16>,
    interrupt: Arc<dyn VirtioInterrupt>,
    output: Arc<Mutex<SerialOutput>>,
    rx: Arc<RxBuffer>,
    counters: Arc<ConsoleCounters>,
}

impl ConsoleHandler {
    fn broken(e: impl std::fmt::Display) -> DeviceBroken {
        DeviceBroken(format!("virtio-console: {e}"))
    }

    /// Move pending input into receive buffers while both exist.
    fn fill_rx(&mut self) -> Result<(), DeviceBroken> {
        let mem = self.mem.memory();
        let q = &mut self.queues[RX];
        let mut data = self.rx.data.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = false;
        while !data.is_empty() {
            let Some(chain) = pop_chain(q, &*mem).map_err(Self::broken)? else { break };
            let head = chain.head_index();
            let n = match parse_chain(chain, u32::MAX as u64) {
                Ok(p) => {
                    let take = (p.writable_len() as usize).min(data.len());
                    let bytes: Vec<u8> = data.iter().take(take).copied().collect();
                    match write_bufs(&*mem, &p.writable, 0, &bytes) {
                        Ok(n) => {
                            data.drain(..n);
                            n
                        }
                        Err(_) => 0,
                    }
                }
                Err(_) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            self.counters.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            add_used(q, &*mem, head, n as u32).map_err(Self::broken)?;
            used = true;
        }
        drop(data);
        if used {
            notify_used(q, &*mem, &*self.interrupt, self.indices[RX]).map_err(Self::broken)?;
        }
        Ok(())
    }

    fn drain_tx(&mut self) -> Result<(), DeviceBroken> {
        let mem = self.mem.memory();
        let (output, counters) = (&self.output, &self.counters);
        let mut buf = Vec::new();
        drain_queue(&mut self.queues[TX], &*mem, &*self.interrupt, self.indices[TX], |chain| {
            let Ok(p) = parse_chain(chain, MAX_TX_CHAIN) else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            };
            buf.resize(p.readable_len() as usize, 0);
            let n = read_bufs(&*mem, &p.readable, 0, &mut buf).unwrap_or(0);
            let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
            if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            counters.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            Some(0)
        })
        .map(|_| ())
        .map_err(Self::broken)
    }
}

impl QueueHandler for ConsoleHandler {
    fn queue_notified(&mut self, index: usize) -> Result<(), DeviceBroken> {
        if index == TX { self.drain_tx() } else { self.fill_rx() }
    }

    fn fd_ready(&mut self, _token: u64, _events: EventSet) -> Result<(), DeviceBroken> {
        let _ = self.rx.ready.read();
        self.fill_rx()
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: only meaningful with features
        // we do not offer.
        read_config_bytes(&[0u8; 12], offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        check_queue_count(&self.common.id, 2, &queues)?;
        let (qs, indices, evts) = DeviceCommon::split(queues);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.rx.ready);
        let handler = ConsoleHandler {
            mem,
            queues: qs,
            indices,
            interrupt: interrupt.clone(),
            output: self.output.clone(),
            rx: self.rx.clone(),
            counters: self.counters.clone(),
        };
        // Input that arrived before the driver was ready is delivered as soon
        // as it posts receive buffers.
        let _ = self.rx.ready.write(1);
        self.common.start(evts, vec![(fd, EventSet::IN, 0)], interrupt, Box::new(handler))
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.counters;
        BTreeMap::from([
            ("tx_bytes".into(), c.tx_bytes.load(Ordering::Relaxed)),
            ("rx_bytes".into(), c.rx_bytes.load(Ordering::Relaxed)),
            ("errors".into(), c.errors.load(Ordering::Relaxed)),
        ])
    }
}

crate::common_pausable!(Console);

impl Snapshottable for Console {
    fn id(&self) -> String {
        self.common.id.clone()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        let pending_input = self.rx.data.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        Snapshot::new(&self.common.id, &ConsoleState { acked_features: self.common.acked_features, pending_input })
            .map(Some)
    }
    fn restore(&mut self, s: &Snapshot) -> Result<(), MigrationError> {
        let st: ConsoleState = s.to_state()?;
        self.common.ack(st.acked_features);
        self.rx.push(&st.pending_input);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
