//! Storage pools and volumes (virsh `pool-*`/`vol-*`): a directory pool of
//! image files and an LVM pool of logical volumes on a volume group.

pub mod dir;
pub mod lvm;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::definition::{DiskFormat, validate_name};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("pool definition field `{field}`: {msg}")]
    Invalid { field: String, msg: String },
    #[error("volume `{0}` not found")]
    NoVolume(String),
    #[error("volume `{0}` already exists")]
    VolumeExists(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`{cmd}` failed: {msg}")]
    Command { cmd: String, msg: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Image files in a directory.
    Dir,
    /// Logical volumes on an LVM volume group (libvirt's "logical").
    Logical,
}

/// A persistent pool definition (STATE/pools/NAME.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PoolKind,
    /// Dir pool: the directory. Logical pool: /dev/VG.
    pub target: PathBuf,
    /// Logical pool: the volume group name (defaults to the pool name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// Logical pool: physical volumes to build the VG from if it does not exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_devices: Vec<PathBuf>,
    #[serde(default)]
    pub autostart: bool,
}

impl PoolDefinition {
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| StorageError::Invalid { field: field.into(), msg };
        validate_name(&self.name).map_err(|m| bad("name", m))?;
        if !self.target.is_absolute() {
            return Err(bad("target", format!("`{}` must be an absolute path", self.target.display())));
        }
        if self.kind == PoolKind::Logical {
            let vg = self.vg();
            if vg.is_empty() || !vg.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) {
                return Err(bad("source_name", format!("`{vg}` is not a volume group name")));
            }
        }
        Ok(())
    }

    pub fn vg(&self) -> String {
        self.source_name.clone().unwrap_or_else(|| self.name.clone())
    }
}

/// What `vol-info`/`vol-list` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes used on the host.
    pub allocation: u64,
}

/// Parameters of `vol-create-as`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeCreate {
    pub name: String,
    pub capacity: u64,
    #[serde(default)]
    pub format: Option<DiskFormat>,
    /// Backing volume (name in the same pool, or an absolute path).
    #[serde(default)]
    pub backing: Option<String>,
    #[serde(default)]
    pub backing_format: Option<DiskFormat>,
}

/// Operations every pool type implements.
pub trait Pool {
    fn start(&self) -> Result<()>;
    fn stop(&self) -> Result<()>;
    fn list(&self) -> Result<Vec<VolumeInfo>>;
    fn create(&self, req: &VolumeCreate) -> Result<VolumeInfo>;
    fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo>;
    fn clone_volume(&self, src: &str, dst: &str) -> Result<VolumeInfo>;
    fn delete(&self, name: &str) -> Result<()>;
    /// The host path a VM opens for this volume (may activate it).
    fn path_of(&self, name: &str) -> Result<PathBuf>;
    /// Capacity and free bytes of the pool.
    fn space(&self) -> Result<(u64, u64)>;
    fn info(&self, name: &str) -> Result<VolumeInfo> {
        self.list()?.into_iter().find(|v| v.name == name).ok_or_else(|| StorageError::NoVolume(name.into()))
    }
}

/// Instantiate the implementation for a definition.
pub fn open(def: &PoolDefinition) -> Box<dyn Pool + Send> {
    match def.kind {
        PoolKind::Dir => Box::new(dir::DirPool { def: def.clone() }),
        PoolKind::Logical => Box::new(lvm::LvmPool { def: def.clone() }),
    }
}

/// Run a command, turning a failure into a one-line error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let name = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| StorageError::Command { cmd: name.clone(), msg: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("failed").to_string();
        return Err(StorageError::Command { cmd: name, msg });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Read the format and virtual size of an image file: a qcow2 header carries
/// its size at offset 24; anything else is raw and its size is the file's
/// (or block device's) length.
pub fn probe_image(path: &Path) -> Result<(DiskFormat, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut hdr = [0u8; 32];
    let n = f.read(&mut hdr).map_err(io(format!("cannot read {}", path.display())))?;
    if n == 32 && hdr[..4] == *b"QFI\xfb" {
        let size = u64::from_be_bytes(hdr[24..32].try_into().unwrap_or_default());
        return Ok((DiskFormat::Qcow2, size));
    }
    let len = f.seek(SeekFrom::End(0)).map_err(io(format!("cannot size {}", path.display())))?;
    Ok((DiskFormat::Raw, len))
}

fn image_err(path: &Path) -> impl FnOnce(image::Error) -> StorageError {
    let what = path.display().to_string();
    move |e| StorageError::Command { cmd: format!("qcow2 {what}"), msg: e.to_string() }
}

fn image_format(f: DiskFormat) -> image::Format {
    match f {
        DiskFormat::Raw => image::Format::Raw,
        DiskFormat::Qcow2 => image::Format::Qcow2,
    }
}

/// Create a qcow2 image with the `image` crate, optionally over a backing
/// file; without a size it takes the backing file's.
pub fn create_qcow2(path: &Path, size: Option<u64>, backing: Option<(&Path, DiskFormat)>) -> Result<()> {
    let size = match (size, backing) {
        (Some(s), _) => s,
        (None, Some((b, f))) => image::open(b, Some(image_format(f)), true).map_err(image_err(b))?.size(),
        (None, None) => 0,
    };
    let opts = image::CreateOptions {
        size,
        preallocation: image::Preallocation::Off,
        qcow2: image::qcow2::CreateOptions {
            backing_file: backing.map(|(b, _)| b.display().to_string()),
            backing_format: backing.map(|(_, f)| f.to_string()),
            ..Default::default()
        },
    };
    image::create(path, image::Format::Qcow2, &opts).map_err(image_err(path))
}

/// Grow a qcow2 image with the `image` crate.
pub fn resize_qcow2(path: &Path, size: u64) -> Result<()> {
    use image::BlockBackend as _;
    let img = image::qcow2::Qcow2::open(path, false).map_err(image_err(path))?;
    img.resize(size).map_err(image_err(path))?;
    img.flush().map_err(image_err(path))
}
