//! `tern _proxy`: copy stdin to the daemon socket and the socket to stdout.
//! `ssh HOST tern _proxy` is how a remote CLI reaches a daemon; SSH provides
//! authentication and encryption, and the daemon never listens on the network.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

pub fn main(socket: &Path) -> i32 {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern _proxy: cannot reach the tern daemon at {}: {e}", socket.display());
            return 1;
        }
    };
    let Ok(mut to_daemon) = stream.try_clone() else { return 1 };
    let up = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_daemon.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    let mut from_daemon = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from_daemon.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).is_err() || out.flush().is_err() {
            break;
        }
    }
    drop(up);
    0
}
