use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::interrupt::CountingLine;

const DATA: u64 = 0;
const IER: u64 = 1;
const LSR: u64 = 5;
const LSR_DR: u8 = 0x01;
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;

fn scratch_path(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("tern-serial-{}-{n}-{name}", std::process::id()))
}

fn line() -> Arc<CountingLine> {
    Arc::new(CountingLine { gsi: arch::layout::COM1_GSI, ..Default::default() })
}

fn read_reg(dev: &mut SerialDevice, off: u64) -> u8 {
    let mut b = [0];
    dev.read(off, &mut b);
    b[0]
}

/// Read everything the guest could, the way a polling driver does.
fn guest_drain(dev: &mut SerialDevice) -> Vec<u8> {
    let mut out = Vec::new();
    while read_reg(dev, LSR) & LSR_DR != 0 {
        out.push(read_reg(dev, DATA));
    }
    out
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn config_parses_every_backend_and_rejects_bad_ones() {
    assert_eq!("stdio".parse::<SerialConfig>().unwrap(), SerialConfig::Stdio);
    assert_eq!("none".parse::<SerialConfig>().unwrap(), SerialConfig::None);
    assert_eq!("file=/tmp/x".parse::<SerialConfig>().unwrap(), SerialConfig::File("/tmp/x".into()));
    assert_eq!("socket=/run/c.sock".parse::<SerialConfig>().unwrap(), SerialConfig::Socket("/run/c.sock".into()));
    for cfg in [SerialConfig::Stdio, SerialConfig::None, SerialConfig::File("/a b".into())] {
        assert_eq!(cfg.to_string().parse::<SerialConfig>().unwrap(), cfg);
    }
    for (bad, needle) in [
        ("tty", "unknown serial backend 'tty'"),
        ("file", "needs a path"),
        ("file=", "empty path"),
        ("pty=/x", "unknown serial backend 'pty'"),
        ("", "empty"),
    ] {
        let e = bad.parse::<SerialConfig>().unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("stdio, file=PATH, socket=PATH or none"), "{bad}: {e}");
    }
}

#[test]
fn output_goes_to_file_byte_by_byte_with_counts() {
    let path = scratch_path("out");
    let irq = line();
    let mut dev = SerialDevice::from_config(&SerialConfig::File(path.clone()), irq.clone()).unwrap();
    dev.write(DATA, b"h");
    // Flushed at once: visible before any further write.
    assert_eq!(std::fs::read(&path).unwrap(), b"h");
    for b in b"ello\n" {
        dev.write(DATA, &[*b]);
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
    assert_eq!(dev.counters().bytes_out.load(Ordering::SeqCst), 6);
    assert!(matches!(dev.input(), SerialInput::None));
    // THRE interrupt once the guest enables it.
    assert_eq!(irq.count.load(Ordering::SeqCst), 0);
    dev.write(IER, &[IER_THRE]);
    dev.write(DATA, b"!");
    assert!(irq.count.load(Ordering::SeqCst) >= 1);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unwritable_file_is_a_clear_error() {
    let e = SerialDevice::from_config(&SerialConfig::File("/nonexistent-dir/x".into()), line()).err().unwrap();
    assert!(e.to_string().contains("/nonexistent-dir/x"), "{e}");
}

#[test]
fn input_fills_fifo_then_pending_and_interrupts() {
    let irq = line();
    let mut dev = SerialDevice::new(SerialOutput::Sink, irq.clone());
    dev.write(IER, &[IER_RDA]);
    let input: Vec<u8> = (0..200u8).collect();
    assert_eq!(dev.enqueue_input(&input), 200);
    assert_eq!(dev.state().in_buffer.len(), FIFO_SIZE);
    assert_eq!(dev.state().pending_input.len(), 200 - FIFO_SIZE);
    assert_eq!(irq.count.load(Ordering::SeqCst), 1);
    // The polling guest gets every byte in order; the FIFO refills as it empties.
    assert_eq!(guest_drain(&mut dev), input);
    assert_eq!(dev.counters().bytes_in.load(Ordering::SeqCst), 200);
    assert!(irq.count.load(Ordering::SeqCst) >= 4);
    // A flood is bounded.
    let flood = vec![b'x'; 10 * PENDING_INPUT_MAX];
    assert_eq!(dev.enqueue_input(&flood), PENDING_INPUT_MAX);
    assert_eq!(dev.enqueue_input(&flood), FIFO_SIZE, "room left by the FIFO refill");
    assert_eq!(dev.enqueue_input(b"y"), 0);
}

#[test]
fn paused_device_holds_input_until_resumed() {
    let mut dev = SerialDevice::new(SerialOutput::Sink, line());
    dev.pause().unwrap();
    assert_eq!(dev.enqueue_input(b"abc"), 3);
    assert_eq!(read_reg(&mut dev, LSR) & LSR_DR, 0);
    dev.resume().unwrap();
    assert_eq!(guest_drain(&mut dev), b"abc");
}

#[test]
fn snapshot_restores_registers_and_buffers() {
    let mut dev = SerialDevice::new(SerialOutput::Sink, line());
    dev.write(3, &[0x83]); // LCR: DLAB + 8 bits
    dev.write(0, &[0x01]); // divisor low
    dev.write(3, &[0x03]);
    dev.write(7, &[0x42]); // scratch
    let input: Vec<u8> = (0..100u8).collect();
    dev.enqueue_input(&input);
    let snap = dev.snapshot().unwrap().unwrap();
    assert_eq!(snap.id, "serial0");

    let path = scratch_path("restored");
    let mut other = SerialDevice::from_config(&SerialConfig::File(path.clone()), line()).unwrap();
    other.restore(&snap).unwrap();
    assert_eq!(other.state(), dev.state());
    assert_eq!(read_reg(&mut other, 7), 0x42);
    assert_eq!(guest_drain(&mut other), input);
    // The restored device still writes to its own backend.
    other.write(DATA, b"z");
    assert_eq!(std::fs::read(&path).unwrap(), b"z");
    std::fs::remove_file(&path).unwrap();

    let mut bad = dev.state();
    bad.in_buffer = vec![0; 65];
    assert!(other.restore(&Snapshot::new("serial0", &bad).unwrap()).is_err());
}

#[test]
fn hostile_offsets_and_widths_do_not_panic() {
    let mut dev = SerialDevice::new(SerialOutput::Sink, line());
    let mut wide = [0u8; 4];
    dev.read(9, &mut wide);
    dev.read(0, &mut []);
    dev.write(100, &[1]);
    dev.write(0, &[]);
    dev.write(0, &[1, 2, 3, 4]);
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_exact_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn socket_console_buffers_serves_one_client_and_feeds_input() {
    let path = scratch_path("sock");
    let dev = Arc::new(Mutex::new(SerialDevice::from_config(&SerialConfig::Socket(path.clone()), line()).unwrap()));
    // Output before anyone connects is kept.
    for b in b"early " {
        dev.lock().unwrap().write(DATA, &[*b]);
    }
    let thread = spawn_serial_input(&dev).unwrap().expect("socket consoles need the thread");
    let mut client = connect(&path);
    assert_eq!(read_exact_n(&mut client, 6), b"early ");
    dev.lock().unwrap().write(DATA, b"L");
    assert_eq!(read_exact_n(&mut client, 1), b"L");

    // A second client is turned away with a message.
    let mut second = connect(&path);
    let mut msg = String::new();
    second.read_to_string(&mut msg).unwrap();
    assert!(msg.contains("already has a client"), "{msg:?}");

    // Client input reaches the guest.
    client.write_all(b"ls\r").unwrap();
    let mut got = Vec::new();
    wait_for("socket input", || {
        got.extend(guest_drain(&mut dev.lock().unwrap()));
        got.len() >= 3
    });
    assert_eq!(got, b"ls\r");

    // After the client leaves, output is buffered again for the next one.
    drop(client);
    wait_for("detach", || {
        dev.lock().unwrap().write(DATA, b".");
        match dev.lock().unwrap().input() {
            SerialInput::Socket(c) => !c.connected(),
            _ => false,
        }
    });
    dev.lock().unwrap().write(DATA, b"Z");
    let mut next = connect(&path);
    let mut b = [0u8; 1];
    let mut seen = Vec::new();
    while !seen.ends_with(b"Z") {
        next.read_exact(&mut b).unwrap();
        seen.push(b[0]);
    }
    thread.stop();
    drop(next);
    drop(dev);
    assert!(!path.exists(), "socket file removed with the device");
}

#[test]
fn socket_backlog_is_bounded_and_keeps_newest() {
    let path = scratch_path("backlog");
    let mut dev = SerialDevice::from_config(&SerialConfig::Socket(path.clone()), line()).unwrap();
    for i in 0..(SOCKET_BACKLOG_MAX + 1000) {
        dev.write(DATA, &[(i % 251) as u8]);
    }
    let SerialInput::Socket(console) = dev.input() else { panic!("socket input") };
    assert_eq!(console.dropped(), 1000);
    let (mut a, b) = UnixStream::pair().unwrap();
    assert!(console.attach(b).unwrap());
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut first = [0u8; 1];
    a.read_exact(&mut first).unwrap();
    assert_eq!(first[0], (1000 % 251) as u8, "oldest bytes were dropped");
    drop(a);
    drop(console);
    drop(dev);
    assert!(!path.exists());
}

#[test]
fn socket_path_conflicts_are_reported() {
    let path = scratch_path("taken");
    std::fs::write(&path, b"not a socket").unwrap();
    let e = SerialOutput::open(&SerialConfig::Socket(path.clone())).unwrap_err();
    assert!(matches!(e, SerialError::SocketPathTaken(_)), "{e}");
    std::fs::remove_file(&path).unwrap();

    let live = SerialOutput::open(&SerialConfig::Socket(path.clone())).unwrap();
    let e = SerialOutput::open(&SerialConfig::Socket(path.clone())).unwrap_err();
    assert!(matches!(e, SerialError::SocketInUse(_)), "{e}");
    drop(live);

    // A stale socket file (nobody listening) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let fresh = SerialOutput::open(&SerialConfig::Socket(path.clone())).unwrap();
    drop(fresh);
    assert!(!path.exists());
}

/// Opens a pseudo-terminal pair: (master, slave).
fn open_pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new fd or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    assert!(master >= 0);
    // SAFETY: `master` is a pty master we own.
    assert_eq!(unsafe { libc::grantpt(master) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(master) }, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is valid for its length.
    assert_eq!(unsafe { libc::ptsname_r(master, name.as_mut_ptr(), name.len()) }, 0);
    // SAFETY: ptsname_r wrote a NUL-terminated path.
    let slave = unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    assert!(slave >= 0);
    // SAFETY: both fds are open and owned by nobody else.
    unsafe { (std::fs::File::from_raw_fd(master), std::fs::File::from_raw_fd(slave)) }
}

fn lflag(fd: i32) -> libc::tcflag_t {
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is valid and writable.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

#[test]
fn raw_terminal_guard_restores_settings() {
    let (_master, slave) = open_pty();
    let fd = slave.as_raw_fd();
    let before = lflag(fd);
    assert_ne!(before & libc::ICANON, 0, "a fresh pty is canonical");
    {
        let _guard = RawTerminalGuard::new(fd).unwrap().expect("a pty is a terminal");
        let raw = lflag(fd);
        assert_eq!(raw & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
    }
    assert_eq!(lflag(fd), before);

    let file = std::fs::File::open("/dev/null").unwrap();
    assert!(RawTerminalGuard::new(file.as_raw_fd()).unwrap().is_none());
}

/// Swaps a pipe in as this process's stdin for the duration of a test;
/// tests doing so take turns.
struct StdinPipe {
    saved: i32,
    writer: std::fs::File,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static STDIN_TURN: Mutex<()> = Mutex::new(());

impl StdinPipe {
    fn new() -> Self {
        use std::os::fd::FromRawFd;
        let turn = STDIN_TURN.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: dup of fd 0 (open in every test process, if only to /dev/null).
        let saved = unsafe { libc::dup(0) };
        assert!(saved >= 0);
        // SAFETY: replaces fd 0 with the pipe's read end; restored on drop.
        assert_eq!(unsafe { libc::dup2(fds[0], 0) }, 0);
        // SAFETY: fds[0] is now duplicated onto 0 and owned by nobody else.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is the pipe's write end, owned from here on by the File.
        Self { saved, writer: unsafe { std::fs::File::from_raw_fd(fds[1]) }, _turn: turn }
    }
}

impl Drop for StdinPipe {
    fn drop(&mut self) {
        // SAFETY: puts back the stdin saved in `new`.
        unsafe {
            libc::dup2(self.saved, 0);
            libc::close(self.saved);
        }
    }
}

#[test]
fn stdin_thread_feeds_the_guest_and_stops_promptly() {
    let mut stdin = StdinPipe::new();
    let dev = Arc::new(Mutex::new(SerialDevice::new(SerialOutput::Stdout, line())));
    assert!(matches!(dev.lock().unwrap().input(), SerialInput::Stdin));
    let thread = spawn_serial_input(&dev).unwrap().expect("stdio has input");
    stdin.writer.write_all(b"root\r").unwrap();
    let mut got = Vec::new();
    wait_for("stdin input", || {
        got.extend(guest_drain(&mut dev.lock().unwrap()));
        got.len() >= 5
    });
    assert_eq!(got, b"root\r");
    assert_eq!(dev.lock().unwrap().counters().bytes_in.load(Ordering::SeqCst), 5);
    // Stopping does not wait for more input.
    let start = Instant::now();
    thread.stop();
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(stdin);
}

#[test]
fn escape_filter_handles_ctrl_a_sequences() {
    let mut f = input::EscapeFilter::default();
    let mut out = Vec::new();
    assert!(!f.filter(b"ab\x01\x01c\x01d", &mut out));
    assert_eq!(out, b"ab\x01c\x01d");
    // An escape split across reads still works.
    out.clear();
    assert!(!f.filter(b"z\x01", &mut out));
    assert!(f.filter(b"xignored", &mut out));
    assert_eq!(out, b"z");
}

#[test]
fn ctrl_a_x_on_stdin_quits_after_delivering_earlier_bytes() {
    use crate::legacy::{VmEvent, VmEvents};
    let mut stdin = StdinPipe::new();
    let events = Arc::new(VmEvents::new().unwrap());
    let dev = Arc::new(Mutex::new(SerialDevice::new(SerialOutput::Stdout, line())));
    dev.lock().unwrap().enable_console_escape(events.clone());
    let thread = spawn_serial_input(&dev).unwrap().unwrap();
    stdin.writer.write_all(b"hi\x01xmore").unwrap();
    assert_eq!(events.wait(Some(Duration::from_secs(5))).unwrap(), Some(VmEvent::Exit(0)));
    assert_eq!(guest_drain(&mut dev.lock().unwrap()), b"hi");
    thread.stop();
    drop(stdin);
}
