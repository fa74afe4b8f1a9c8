//! 16550A UART (COM1) built on vm-superio's `Serial`, with its interrupt on
//! a [`SharedLine`], output to stdout/file/Unix socket/nothing, and input
//! from stdin or the socket client through [`spawn_serial_input`].
//!
//! Input is taken into a bounded pending buffer and moved into the UART's
//! 64-byte FIFO whenever the guest has emptied it, so one interrupt covers
//! up to a FIFO's worth of bytes and nothing is lost while the guest is slow
//! or paused. Every transmitted byte is written and flushed at once: the
//! guest's first byte reaches stdout without waiting.

mod config;
mod input;
mod output;

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use migration::{MigrationError, Pausable, Snapshot, Snapshottable};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, SerialState, Trigger};

pub use config::SerialConfig;
pub use input::{RawTerminalGuard, SerialInput, SerialInputThread, poll_in, spawn_serial_input};
pub use output::{SOCKET_BACKLOG_MAX, SerialOutput, SocketConsole};

use crate::BusDevice;
use crate::interrupt::SharedLine;
use crate::legacy::VmEvents;

/// Eight registers from the base port.
pub const SERIAL_PORT_LEN: u64 = 8;
/// Input bytes held for the guest beyond the UART FIFO.
pub const PENDING_INPUT_MAX: usize = 4096;
/// The 16550A receive FIFO.
const FIFO_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("bad --serial value: {0}")]
    Config(String),
    #[error("cannot open serial output file {path}: {source} (check the directory exists and is writable)")]
    OpenFile { path: PathBuf, source: io::Error },
    #[error("cannot listen on serial socket {path}: {source}")]
    BindSocket { path: PathBuf, source: io::Error },
    #[error("serial socket {0} is in use by another process (pick another path)")]
    SocketInUse(PathBuf),
    #[error("serial socket path {0} exists and is not a socket (remove it or pick another path)")]
    SocketPathTaken(PathBuf),
    #[error("cannot put the terminal in raw mode: {0}")]
    Terminal(io::Error),
    #[error("cannot start the serial input thread: {0}")]
    Spawn(io::Error),
}

/// Byte counts, readable without locking the device (control-socket
/// counters).
#[derive(Debug, Default)]
pub struct SerialCounters {
    /// Bytes the guest transmitted and the backend accepted.
    pub bytes_out: AtomicU64,
    /// Bytes delivered into the UART's receive FIFO.
    pub bytes_in: AtomicU64,
    /// Transmitted bytes the backend failed to take (e.g. stdout closed).
    pub tx_lost: AtomicU64,
}

impl SerialEvents for SerialCounters {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.tx_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

/// vm-superio's interrupt hook, wired to a legacy line.
#[derive(Clone)]
pub struct IrqTrigger(SharedLine);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

type Uart = Serial<IrqTrigger, Arc<SerialCounters>, SerialOutput>;

/// Serializable UART state: the registers plus both input buffers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes in the UART receive FIFO.
    pub in_buffer: Vec<u8>,
    /// Bytes waiting for FIFO space.
    pub pending_input: Vec<u8>,
}

impl SerialDeviceState {
    fn from_uart(s: SerialState, pending: &VecDeque<u8>) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
            pending_input: pending.iter().copied().collect(),
        }
    }

    fn uart_state(&self) -> SerialState {
        SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

pub struct SerialDevice {
    uart: Uart,
    pending: VecDeque<u8>,
    paused: bool,
    counters: Arc<SerialCounters>,
    output_error_logged: bool,
    quit: Option<Arc<VmEvents>>,
}

impl SerialDevice {
    /// A UART writing to `output` and raising `irq` (COM1: GSI 4).
    pub fn new(output: SerialOutput, irq: SharedLine) -> Self {
        let counters = Arc::new(SerialCounters::default());
        Self {
            uart: Serial::with_events(IrqTrigger(irq), counters.clone(), output),
            pending: VecDeque::new(),
            paused: false,
            counters,
            output_error_logged: false,
            quit: None,
        }
    }

    /// Open `config`'s backend and build the device on it.
    pub fn from_config(config: &SerialConfig, irq: SharedLine) -> Result<Self, SerialError> {
        Ok(Self::new(SerialOutput::open(config)?, irq))
    }

    /// Where this device's input comes from (see [`spawn_serial_input`]).
    pub fn input(&self) -> SerialInput {
        SerialInput::of(self.uart.writer())
    }

    /// Let the stdin console quit the VM: Ctrl-A x posts
    /// [`VmEvents::request_quit`] (exit status 0), Ctrl-A Ctrl-A sends a
    /// Ctrl-A. Takes effect for input threads spawned afterwards; without it
    /// every byte goes to the guest.
    pub fn enable_console_escape(&mut self, events: Arc<VmEvents>) {
        self.quit = Some(events);
    }

    pub(super) fn quit_events(&self) -> Option<Arc<VmEvents>> {
        self.quit.clone()
    }

    pub fn counters(&self) -> Arc<SerialCounters> {
        self.counters.clone()
    }

    /// Queue bytes for the guest to receive. Returns how many were taken:
    /// fewer than `bytes.len()` when the pending buffer is full (retry once
    /// the guest has read some).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(PENDING_INPUT_MAX - self.pending.len());
        self.pending.extend(&bytes[..n]);
        self.refill_fifo();
        n
    }

    /// Move pending input into the FIFO once the guest has drained it.
    fn refill_fifo(&mut self) {
        if self.paused || self.pending.is_empty() || self.uart.fifo_capacity() < FIFO_SIZE {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(FIFO_SIZE).copied().collect();
        match self.uart.enqueue_raw_bytes(&chunk) {
            Ok(n) => {
                self.pending.drain(..n);
                self.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            // The bytes are in the FIFO even when the interrupt failed.
            Err(vm_superio::serial::Error::Trigger(e)) => {
                self.pending.drain(..chunk.len());
                self.counters.bytes_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                tracing::warn!("serial: cannot raise receive interrupt: {e}");
            }
            Err(e) => tracing::debug!("serial: input not queued: {e}"),
        }
    }

    pub fn state(&self) -> SerialDeviceState {
        SerialDeviceState::from_uart(self.uart.state(), &self.pending)
    }

    fn set_state(&mut self, state: &SerialDeviceState) -> Result<(), MigrationError> {
        let bad = |why: String| MigrationError::Restore("serial0".into(), why);
        if state.in_buffer.len() > FIFO_SIZE || state.pending_input.len() > PENDING_INPUT_MAX {
            return Err(bad(format!(
                "{} FIFO and {} pending bytes exceed the buffers",
                state.in_buffer.len(),
                state.pending_input.len()
            )));
        }
        let trigger = self.uart.interrupt_evt().clone();
        // Swap the UART out to recover its writer, then rebuild around it.
        let old = std::mem::replace(
            &mut self.uart,
            Serial::with_events(trigger.clone(), self.counters.clone(), SerialOutput::Sink),
        );
        let out = old.into_writer();
        self.uart = match Serial::from_state(&state.uart_state(), trigger.clone(), self.counters.clone(), out) {
            Ok(u) => u,
            Err(vm_superio::serial::Error::Trigger(e)) => {
                return Err(bad(format!("cannot raise the restored interrupt: {e}")));
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        self.pending = state.pending_input.iter().copied().collect();
        Ok(())
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else { return };
        *first = if offset < SERIAL_PORT_LEN { self.uart.read(offset as u8) } else { 0xff };
        data[1..].fill(0);
        if offset == 0 {
            self.refill_fifo();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset >= SERIAL_PORT_LEN {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, value)
            && !self.output_error_logged
        {
            // Once is enough: a closed stdout would otherwise log per byte.
            self.output_error_logged = true;
            tracing::warn!("serial output failed, later bytes are dropped silently: {e}");
        }
    }
}

impl Pausable for SerialDevice {
    fn pause(&mut self) -> Result<(), MigrationError> {
        self.paused = true;
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MigrationError> {
        self.paused = false;
        self.refill_fifo();
        Ok(())
    }
}

impl Snapshottable for SerialDevice {
    fn id(&self) -> String {
        "serial0".into()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.id(), &self.state()).map(Some)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), MigrationError> {
        self.set_state(&snapshot.to_state()?)
    }
}

#[cfg(test)]
mod tests;
