//! i8042 keyboard controller with a PS/2 keyboard and no aux (mouse) port.
//!
//! Enough for Linux's i8042 and atkbd drivers to probe without timeouts or
//! warnings (self test, CTR read/write, the aux-port probe answered "absent"
//! at once, keyboard reset/ID/LED commands acknowledged), and for the guest's
//! reset paths: command 0xFE, and the output-port write with the reset bit
//! clear. Both post [`VmEvent::Reset`](super::VmEvent::Reset).
//!
//! One device serves both ports: insert it at [`I8042_DATA_PORT`] with length
//! [`I8042_PORT_LEN`] (5), so offset 0 is the data port (0x60) and offset 4 the
//! command/status port (0x64). Offsets 1-3 (0x61-0x63) read 0xff and ignore
//! writes; port 0x61 (speaker/PIT gate) is served by KVM's in-kernel PIT and
//! never reaches user space when that is enabled.

use std::collections::VecDeque;
use std::sync::Arc;

use arch::layout::{I8042_CMD_PORT, I8042_DATA_PORT};
use migration::{MigrationError, Pausable, Snapshot, Snapshottable};

use super::VmEvents;
use crate::BusDevice;
use crate::interrupt::SharedLine;

/// Span from the data port to the command port inclusive.
pub const I8042_PORT_LEN: u64 = (I8042_CMD_PORT - I8042_DATA_PORT + 1) as u64;
const CMD_OFFSET: u64 = (I8042_CMD_PORT - I8042_DATA_PORT) as u64;

// Status register bits.
const SR_OBF: u8 = 0x01;
const SR_SYS: u8 = 0x04;
const SR_CMD: u8 = 0x08;
const SR_UNLOCKED: u8 = 0x10;
const SR_AUXDATA: u8 = 0x20;

// Controller configuration byte (CTR) bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Controller commands (written to the command port).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

// Output port bit 0 is wired to the CPU reset line (active low).
const OUTP_RESET: u8 = 0x01;
const OUTP_A20: u8 = 0x02;

// Replies.
const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
/// "Aux clock line stuck low": tells Linux there is no aux port without
/// making it wait for one.
const AUX_TEST_ABSENT: u8 = 0x01;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
/// MF2 keyboard id (0xab 0x83), reported translated (0x41) when XLATE is on.
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_ID_XLATE: [u8; 2] = [0xab, 0x41];

/// Bytes the keyboard holds for the controller before further ones are
/// dropped; a guest that never reads cannot grow it.
const KBD_QUEUE_MAX: usize = 16;

/// Commands that take a data-port parameter: which one is waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PendingParam {
    /// Controller command waiting for its data byte.
    Controller(u8),
    /// Keyboard command (0xed LEDs, 0xf0 scancode set, 0xf3 typematic)
    /// waiting for its argument.
    Keyboard(u8),
}

/// The byte in the output buffer and whether it came from the aux side
/// (status AUXDATA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputByte {
    pub value: u8,
    pub aux: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub ctr: u8,
    pub outp: u8,
    /// Status bits that are state rather than derived (SYS, CMD).
    pub status: u8,
    pub pending: Option<PendingParam>,
    /// The one-byte output buffer (status OBF when Some).
    pub obuf: Option<OutputByte>,
    /// The last byte read from the data port (read again when OBF is clear).
    pub last_read: u8,
    /// Bytes the keyboard has sent that wait for the output buffer.
    pub kbd_queue: Vec<u8>,
    /// Keyboard scanning enabled (0xf4/0xf5).
    pub kbd_enabled: bool,
    pub scancode_set: u8,
    pub leds: u8,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            ctr: CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE,
            outp: OUTP_RESET | OUTP_A20,
            status: SR_SYS,
            pending: None,
            obuf: None,
            last_read: 0,
            kbd_queue: Vec::new(),
            kbd_enabled: true,
            scancode_set: 2,
            leds: 0,
        }
    }
}

pub struct I8042 {
    ctr: u8,
    outp: u8,
    status: u8,
    pending: Option<PendingParam>,
    obuf: Option<OutputByte>,
    last_read: u8,
    kbd_queue: VecDeque<u8>,
    kbd_enabled: bool,
    scancode_set: u8,
    leds: u8,
    irq: SharedLine,
    events: Arc<VmEvents>,
    resets: u64,
}

impl I8042 {
    /// `irq` is the keyboard line (GSI 1); `events` receives the reset request.
    pub fn new(irq: SharedLine, events: Arc<VmEvents>) -> Self {
        let mut dev = Self {
            ctr: 0,
            outp: 0,
            status: 0,
            pending: None,
            obuf: None,
            last_read: 0,
            kbd_queue: VecDeque::new(),
            kbd_enabled: true,
            scancode_set: 2,
            leds: 0,
            irq,
            events,
            resets: 0,
        };
        dev.set_state(&I8042State::default());
        dev
    }

    /// How many times the guest pulled the reset line.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            outp: self.outp,
            status: self.status,
            pending: self.pending,
            obuf: self.obuf,
            last_read: self.last_read,
            kbd_queue: self.kbd_queue.iter().copied().collect(),
            kbd_enabled: self.kbd_enabled,
            scancode_set: self.scancode_set,
            leds: self.leds,
        }
    }

    fn set_state(&mut self, s: &I8042State) {
        self.ctr = s.ctr;
        self.outp = s.outp;
        self.status = s.status & (SR_SYS | SR_CMD);
        self.pending = s.pending;
        self.obuf = s.obuf;
        self.last_read = s.last_read;
        self.kbd_queue = s.kbd_queue.iter().copied().take(KBD_QUEUE_MAX).collect();
        self.kbd_enabled = s.kbd_enabled;
        self.scancode_set = s.scancode_set;
        self.leds = s.leds;
    }

    /// Queue a scancode byte as if typed on the keyboard (dropped while the
    /// guest has scanning disabled or the queue is full; held while the
    /// controller's keyboard interface is disabled).
    pub fn push_key(&mut self, scancode: u8) {
        if self.kbd_enabled {
            self.push_kbd(scancode);
        }
    }

    fn status(&self) -> u8 {
        let mut s = self.status | SR_UNLOCKED;
        if let Some(b) = self.obuf {
            s |= SR_OBF;
            if b.aux {
                s |= SR_AUXDATA;
            }
        }
        s
    }

    /// A controller reply: it goes straight into the output buffer,
    /// replacing whatever the guest did not read (like the real chip, and
    /// what Linux's probe relies on after its aux loopback check bails out
    /// without reading the byte).
    fn reply(&mut self, value: u8) {
        self.obuf = Some(OutputByte { value, aux: false });
        self.raise_irq();
    }

    /// A byte from the keyboard: queued until the output buffer is free.
    fn push_kbd(&mut self, value: u8) {
        if self.kbd_queue.len() >= KBD_QUEUE_MAX {
            tracing::debug!("i8042 keyboard queue full, dropping {value:#x}");
            return;
        }
        self.kbd_queue.push_back(value);
        self.pump();
    }

    /// Move the next keyboard byte into a free output buffer, unless the
    /// guest disabled the keyboard interface.
    fn pump(&mut self) {
        if self.obuf.is_none()
            && self.ctr & CTR_KBDDIS == 0
            && let Some(value) = self.kbd_queue.pop_front()
        {
            self.obuf = Some(OutputByte { value, aux: false });
            self.raise_irq();
        }
    }

    /// Keyboard interrupt for the byte now in the output buffer; aux bytes
    /// have no line (no aux port), the guest polls for them.
    fn raise_irq(&self) {
        if let Some(b) = self.obuf
            && !b.aux
            && self.ctr & CTR_KBDINT != 0
            && let Err(e) = self.irq.trigger()
        {
            tracing::warn!("i8042: cannot raise keyboard interrupt: {e}");
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.obuf.take() {
            self.last_read = b.value;
        }
        self.pump();
        self.last_read
    }

    fn reset_cpu(&mut self) {
        self.resets += 1;
        tracing::info!("guest pulled the i8042 reset line");
        self.events.request_reset();
    }

    fn write_command(&mut self, cmd: u8) {
        self.status |= SR_CMD;
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTBUF | CMD_WRITE_AUX_OUTBUF | CMD_WRITE_AUX => {
                self.pending = Some(PendingParam::Controller(cmd))
            }
            CMD_AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            CMD_AUX_TEST => self.reply(AUX_TEST_ABSENT),
            CMD_SELF_TEST => {
                self.status |= SR_SYS;
                self.reply(SELF_TEST_OK);
            }
            CMD_KBD_TEST => self.reply(KBD_TEST_OK),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            CMD_KBD_ENABLE => {
                self.ctr &= !CTR_KBDDIS;
                self.pump();
            }
            CMD_READ_INPUT => self.reply(0x80), // keyboard not inhibited
            CMD_READ_OUTP => self.reply(self.outp),
            CMD_PULSE_RESET => self.reset_cpu(),
            // 0xf0-0xff pulse output-port lines; only the reset line (bit 0,
            // pulsed when the low bit is clear) matters.
            0xf0..=0xff if cmd & 1 == 0 => self.reset_cpu(),
            0xf0..=0xff => {}
            _ => tracing::debug!("i8042: ignoring controller command {cmd:#x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.status &= !SR_CMD;
        match self.pending.take() {
            Some(PendingParam::Controller(cmd)) => self.controller_param(cmd, value),
            Some(PendingParam::Keyboard(cmd)) => self.keyboard_param(cmd, value),
            None => self.keyboard_command(value),
        }
    }

    fn controller_param(&mut self, cmd: u8, value: u8) {
        match cmd {
            CMD_WRITE_CTR => {
                self.ctr = value;
                // Mirror the system flag the guest set into the status register.
                self.status = (self.status & !SR_SYS) | (value & CTR_SYS);
                self.pump();
            }
            CMD_WRITE_OUTP => {
                self.outp = value;
                if value & OUTP_RESET == 0 {
                    self.reset_cpu();
                }
            }
            CMD_WRITE_KBD_OUTBUF => self.reply(value),
            // With no aux port the byte comes back without AUXDATA: Linux's
            // aux loopback check fails at once instead of timing out.
            CMD_WRITE_AUX_OUTBUF => self.reply(value),
            // Bytes for an absent mouse vanish (the guest times out on its
            // own, which Linux only does if it believed the aux probe).
            CMD_WRITE_AUX => {}
            _ => {}
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            0xff => {
                // Reset: ACK, then basic assurance test passed.
                self.kbd_enabled = true;
                self.scancode_set = 2;
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_BAT_OK);
            }
            0xf2 => {
                self.push_kbd(KBD_ACK);
                let id = if self.ctr & CTR_XLATE != 0 { KBD_ID_XLATE } else { KBD_ID };
                self.push_kbd(id[0]);
                self.push_kbd(id[1]);
            }
            0xed | 0xf0 | 0xf3 => {
                self.push_kbd(KBD_ACK);
                self.pending = Some(PendingParam::Keyboard(cmd));
            }
            0xee => self.push_kbd(KBD_ECHO),
            0xf4 => {
                self.kbd_enabled = true;
                self.push_kbd(KBD_ACK);
            }
            0xf5 => {
                self.kbd_enabled = false;
                self.push_kbd(KBD_ACK);
            }
            0xf6 => {
                self.kbd_enabled = true;
                self.scancode_set = 2;
                self.push_kbd(KBD_ACK);
            }
            _ => self.push_kbd(KBD_ACK),
        }
    }

    fn keyboard_param(&mut self, cmd: u8, value: u8) {
        self.push_kbd(KBD_ACK);
        match cmd {
            0xed => self.leds = value & 0x07,
            0xf0 if value == 0 => self.push_kbd(self.scancode_set),
            0xf0 if (1..=3).contains(&value) => self.scancode_set = value,
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else { return };
        *first = match offset {
            0 => self.read_data(),
            CMD_OFFSET => self.status(),
            _ => 0xff,
        };
        tracing::trace!("i8042 read port {:#x} -> {:#x}", u64::from(I8042_DATA_PORT) + offset, *first);
        data[1..].fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        tracing::trace!("i8042 write port {:#x} <- {value:#x}", u64::from(I8042_DATA_PORT) + offset);
        match offset {
            0 => self.write_data(value),
            CMD_OFFSET => self.write_command(value),
            _ => {}
        }
    }
}

impl Pausable for I8042 {}

impl Snapshottable for I8042 {
    fn id(&self) -> String {
        "i8042".into()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.id(), &self.state()).map(Some)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), MigrationError> {
        let state: I8042State = snapshot.to_state()?;
        if state.kbd_queue.len() > KBD_QUEUE_MAX {
            return Err(MigrationError::Restore(self.id(), format!("{} bytes queued", state.kbd_queue.len())));
        }
        self.set_state(&state);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
