//! `tern console`: a raw terminal attached to the VM's serial port through
//! the daemon. Ctrl-] detaches (virsh's escape).

use std::io::{IsTerminal, Read, Write};

use super::{CliResult, Conn, seg};

const ESCAPE: u8 = 0x1d; // Ctrl-]

/// Puts the terminal in raw mode and restores it on drop.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> Self {
        if !std::io::stdin().is_terminal() {
            return RawMode(None);
        }
        // SAFETY: termios is plain old data; tcgetattr fills it for fd 0.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open; `t` is a valid out pointer.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return RawMode(None);
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct we pass.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: fd 0 is a terminal and `t` a valid termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

pub fn attach(conn: &Conn, domain: &str, from: Option<u64>) -> CliResult {
    let c = conn.client()?;
    let q = from.map(|f| format!("?from={f}")).unwrap_or_default();
    let (mut r, mut w) = match c.open_stream(&format!("/1.0/vms/{}/console{q}", seg(domain)), true) {
        Ok(s) => s,
        // The guest already stopped (e.g. `start --console` of a short-lived
        // guest): show what it printed from the log instead.
        Err(manager::ClientError::Api { status: 409, .. }) if from.is_some() => {
            let v = c.get(&format!("/1.0/vms/{}/log", seg(domain)))?;
            let log = v["log"].as_str().unwrap_or("").as_bytes();
            let start = (from.unwrap_or(0) as usize).min(log.len());
            std::io::stdout().write_all(&log[start..]).map_err(|e| format!("stdout: {e}"))?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Connected to domain '{domain}'\r\nEscape character is ^] (Ctrl + ])\r");
    }
    let raw = RawMode::enter();
    let saved = raw.0;
    // Keystrokes to the guest; Ctrl-] ends the session (the whole process:
    // the output side may be blocked in a read).
    let _input = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let data = &buf[..n];
            let (data, detach) = match data.iter().position(|&b| b == ESCAPE) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            let failed = w.write_all(data).and_then(|_| w.flush()).is_err();
            if detach {
                if let Some(t) = saved {
                    // SAFETY: restoring the attributes saved when entering raw mode.
                    unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
                }
                eprintln!();
                std::process::exit(0);
            }
            if failed {
                return false;
            }
        }
    });
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    drop(raw);
    if interactive {
        eprintln!();
    }
    Ok(())
}
