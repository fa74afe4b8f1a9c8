//! Polled 16550 output on COM1, shared by all CPUs one line at a time.

use crate::cpu::{inb, outb};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 0x20;
/// A 16550 transmit FIFO holds 16 bytes: once THRE says it is empty we may
/// write that many without polling again (half the exits per byte).
const FIFO_DEPTH: usize = 16;

static LOCK: AtomicBool = AtomicBool::new(false);

pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 2, 0x07); // FIFO on, cleared
}

/// Set once THRE never came: no (working) UART, stop waiting for it.
static UART_STUCK: AtomicBool = AtomicBool::new(false);
/// How long one wait for THRE may take: ~2^34 TSC cycles (seconds): a busy
/// VMM may drain its FIFO slowly, and dropping bytes would lose results.
const THRE_TIMEOUT_CYCLES: u64 = 1 << 34;

fn wait_thre() {
    if inb(COM1 + 5) & LSR_THRE != 0 || UART_STUCK.load(Ordering::Relaxed) {
        return;
    }
    let start = crate::cpu::rdtsc();
    while crate::cpu::rdtsc().wrapping_sub(start) < THRE_TIMEOUT_CYCLES {
        if inb(COM1 + 5) & LSR_THRE != 0 {
            return;
        }
    }
    UART_STUCK.store(true, Ordering::Relaxed);
}

fn write_bytes(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_DEPTH) {
        wait_thre();
        for &b in chunk {
            outb(COM1, b);
        }
    }
}

/// Collects one line so it goes out in one piece under the lock.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; 256], len: 0 }
    }

    pub fn flush(&mut self) {
        while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        write_bytes(&self.buf[..self.len]);
        LOCK.store(false, Ordering::Release);
        self.len = 0;
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

pub fn print_fmt(args: fmt::Arguments) {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
}

/// Print one line (a newline is appended).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::serial::print_fmt(format_args!($($arg)*)) };
}

/// Print a `TERN ...` protocol line.
#[macro_export]
macro_rules! tern {
    ($($arg:tt)*) => { $crate::serial::print_fmt(format_args!("TERN {}", format_args!($($arg)*))) };
}

/// Bytes as text, replacing anything unprintable (command lines, table ids).
pub struct Printable<'a>(pub &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if (0x20..0x7f).contains(&b) { b as char } else { '?' };
            f.write_char(c)?;
        }
        Ok(())
    }
}
