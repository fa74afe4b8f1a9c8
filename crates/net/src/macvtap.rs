//! macvtap: a TAP-like character device stacked on a physical (or any
//! Ethernet) parent, giving a guest direct L2 access to the parent's segment.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::mac::MacAddr;
use crate::netlink::{MacvlanMode, Netlink, NetlinkError};
use crate::tap::{Tap, TapError};

/// Errors from creating or opening a macvtap.
#[derive(Debug, thiserror::Error)]
pub enum MacvtapError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("macvtap '{0}' has no character device in /sys/class/net/{0}/macvtap: {1}")]
    NoDevice(String, io::Error),
    #[error("cannot create device node {0}: {1}")]
    Mknod(PathBuf, io::Error),
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// Create macvtap `name` on `parent` in bridge mode, up, with `mac` (the
/// guest's MAC, so the parent accepts its frames).
pub fn create_macvtap(name: &str, parent: &str, mac: Option<MacAddr>) -> Result<(), MacvtapError> {
    let mut nl = Netlink::open()?;
    nl.create_macvtap(name, parent, MacvlanMode::Bridge, mac)?;
    nl.set_up(name, true)?;
    Ok(())
}

/// Delete macvtap `name`.
pub fn delete_macvtap(name: &str) -> Result<(), MacvtapError> {
    Ok(Netlink::open()?.delete_link(name)?)
}

/// The character device path of macvtap `name` (`/dev/tapN`), creating the
/// node from sysfs' major:minor when udev is not there to do it. The flag
/// says whether the node was created here (and may be removed once opened).
pub fn device_path(name: &str) -> Result<(PathBuf, bool), MacvtapError> {
    let read = |sys: &std::path::Path| -> io::Result<(String, String)> {
        let mut dir = std::fs::read_dir(sys.join(format!("class/net/{name}/macvtap")))?;
        let entry = dir.next().unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::NotFound)))?;
        let tapn = entry.file_name().to_string_lossy().into_owned();
        Ok((tapn, std::fs::read_to_string(entry.path().join("dev"))?))
    };
    let (tapn, dev) = crate::iface::with_current_netns_sysfs(read)
        .and_then(|r| r)
        .map_err(|e| MacvtapError::NoDevice(name.into(), e))?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| MacvtapError::NoDevice(name.into(), io::Error::other(format!("bad dev '{}'", dev.trim()))))?;
    let path = PathBuf::from(format!("/dev/{tapn}"));
    let want = libc::makedev(major, minor);
    if let Ok(meta) = std::fs::metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        if meta.file_type().is_char_device() && meta.rdev() == want {
            return Ok((path, false));
        }
        let _ = std::fs::remove_file(&path);
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| MacvtapError::Mknod(path.clone(), io::Error::other(e)))?;
    // SAFETY: cpath is a valid NUL-terminated path; mknod has no memory effects.
    let r = unsafe { libc::mknod(cpath.as_ptr(), libc::S_IFCHR | 0o600, want) };
    if r < 0 {
        return Err(MacvtapError::Mknod(path, io::Error::last_os_error()));
    }
    Ok((path, true))
}

/// Open macvtap `name`'s character device as a [`Tap`] with vnet headers.
pub fn open_macvtap(name: &str) -> Result<Tap, MacvtapError> {
    let (path, made_here) = device_path(name)?;
    let opened = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(&path);
    if made_here {
        // Without udev nobody would remove the node; the open fd keeps working.
        let _ = std::fs::remove_file(&path);
    }
    let file = opened.map_err(|e| TapError::OpenDevice(path.display().to_string(), e))?;
    Ok(Tap::from_macvtap(file, name)?)
}
