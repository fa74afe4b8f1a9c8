//! Network namespaces for tests and isolated virtual networks: create one
//! (named with our pid so parallel runs never collide), move interfaces into
//! it, run a closure or a command inside it. Dropping it unmounts and
//! deletes it, which destroys the interfaces still inside.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netlink::{Netlink, NetlinkError};

const NETNS_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Errors from namespace management.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("cannot create network namespace {0}: {1} (needs root)")]
    Create(String, io::Error),
    #[error("cannot enter network namespace {0}: {1}")]
    Enter(String, io::Error),
    #[error("the closure run inside network namespace {0} panicked")]
    Panicked(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// A named network namespace, bind-mounted at /run/netns/NAME like
/// `ip netns add` does, so `ip -n NAME ...` works on it too.
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
}

fn setns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only changes the calling thread's namespace; fd is a
    // namespace descriptor we hold open.
    let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn cstring(p: &std::path::Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

impl NetNs {
    /// Create a fresh namespace named `tern-<tag>-<pid>-<n>` (tag truncated).
    pub fn create(tag: &str) -> Result<Self, NetNsError> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(16).collect();
        let name = format!("tern-{tag}-{}-{n}", std::process::id());
        let err = |e| NetNsError::Create(name.clone(), e);
        std::fs::create_dir_all(NETNS_DIR).map_err(err)?;
        let path = PathBuf::from(NETNS_DIR).join(&name);
        File::create(&path).map_err(err)?;
        let target = cstring(&path).map_err(err)?;
        // unshare() in a throwaway thread so the caller's thread keeps its
        // namespace; the bind mount keeps the new one alive after the thread.
        let made = std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: unshare affects only this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let src = c"/proc/thread-self/ns/net";
            // SAFETY: both paths are valid NUL-terminated strings; a bind
            // mount takes no data argument.
            let r = unsafe {
                libc::mount(src.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(err(e));
        }
        let file = File::open(&path).map_err(err)?;
        let ns = NetNs { name: name.clone(), path, file };
        // Loopback is down in a fresh namespace; most tests want it.
        ns.run(|| crate::iface::set_link_up("lo", true))
            .map_err(|e| NetNsError::Enter(name.clone(), io::Error::other(e.to_string())))?
            .map_err(|e| NetNsError::Enter(name, e))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Turn IPv6 off for every interface created from now on, so the kernel
    /// does not emit router solicitations and MLD reports on test links.
    pub fn disable_ipv6(&self) -> Result<(), NetNsError> {
        self.run(|| {
            for which in ["default", "all"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"), "1")?;
            }
            Ok(())
        })?
        .map_err(|e: io::Error| NetNsError::Enter(self.name.clone(), e))
    }

    /// Move interface `ifname` from the caller's namespace into this one.
    pub fn move_interface(&self, ifname: &str) -> Result<(), NetNsError> {
        Ok(Netlink::open()?.set_netns(ifname, self.file.as_raw_fd())?)
    }

    /// Run `f` on a thread inside this namespace and return its result.
    /// Sockets and TAPs `f` opens stay bound to the namespace afterwards.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T, NetNsError> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(fd).map_err(|e| NetNsError::Enter(self.name.clone(), e))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(NetNsError::Panicked(self.name.clone())))
        })
    }

    /// A `Command` whose child process starts inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: the hook runs between fork and exec and only calls setns(2),
        // which is async-signal-safe; fd stays open for the Command's life
        // because self outlives the borrow... the fd is inherited by fork.
        unsafe {
            cmd.pre_exec(move || setns(fd));
        }
        cmd
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(p) = cstring(&self.path) {
            // SAFETY: p is a valid NUL-terminated path; a lazy unmount of our
            // own bind mount.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs").field("name", &self.name).finish()
    }
}
