//! The daemon's state directory: where definitions, per-VM runtime files and
//! logs live, and the atomic file write every persisted file goes through.
//!
//! Layout (`STATE` is /var/lib/tern by default):
//! ```text
//! STATE/daemon.lock               flock held by the running daemon
//! STATE/vms/NAME/definition.toml  the definition (human-editable)
//! STATE/vms/NAME/runtime.json     pids of the running shim + VMM (while running)
//! STATE/vms/NAME/exit.json        written by the shim when the VMM exits
//! STATE/vms/NAME/status.json      last known stopped/crashed state and why
//! STATE/vms/NAME/console.log      everything the guest wrote on its serial port
//! STATE/vms/NAME/vmm.log          the VMM's stderr
//! STATE/vms/NAME/{control,serial}.sock
//! STATE/pools/NAME.toml           storage pool definitions
//! STATE/images/                   the default directory pool
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// Write `data` to `path` so that readers see either the old or the new
/// content, even across a crash: temp file in the same dir, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write { path: path.display().to_string(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("f"), std::process::id()));
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn read_to_string(path: &Path) -> Result<String, StoreError> {
    fs::read_to_string(path).map_err(|source| StoreError::Read { path: path.display().to_string(), source })
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.vms_dir().join(name)
    }
    pub fn pools_dir(&self) -> PathBuf {
        self.root.join("pools")
    }
    pub fn default_images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// Create the directories the daemon needs.
    pub fn create(&self) -> Result<(), StoreError> {
        for d in [self.root.clone(), self.vms_dir(), self.pools_dir()] {
            fs::create_dir_all(&d).map_err(|source| StoreError::Write { path: d.display().to_string(), source })?;
        }
        Ok(())
    }

    /// Names of the VM directories holding a definition.
    pub fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.vms_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(VmFiles::DEFINITION).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// File names inside one VM's directory.
pub struct VmFiles;

impl VmFiles {
    pub const DEFINITION: &'static str = "definition.toml";
    pub const RUNTIME: &'static str = "runtime.json";
    pub const EXIT: &'static str = "exit.json";
    pub const STATUS: &'static str = "status.json";
    pub const CONSOLE_LOG: &'static str = "console.log";
    pub const VMM_LOG: &'static str = "vmm.log";
    pub const CONTROL_SOCK: &'static str = "control.sock";
    pub const SERIAL_SOCK: &'static str = "serial.sock";
}

/// The last non-empty line of a log file (the VMM's one-line error).
pub fn last_log_line(path: &Path) -> Option<String> {
    let text = fs::read(path).ok()?;
    let tail = &text[text.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail).lines().rev().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}
