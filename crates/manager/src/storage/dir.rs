//! Directory pool: each volume is an image file in the pool directory.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::{Pool, PoolDefinition, Result, StorageError, VolumeCreate, VolumeInfo, io, probe_image};
use crate::definition::{DiskFormat, validate_name};

pub struct DirPool {
    pub def: PoolDefinition,
}

impl DirPool {
    fn volume(&self, name: &str) -> Result<VolumeInfo> {
        // Names come from API paths: never let one escape the pool directory.
        validate_name(name).map_err(|m| StorageError::Invalid { field: "name".into(), msg: m })?;
        let path = self.def.target.join(name);
        let meta = fs::metadata(&path).map_err(|_| StorageError::NoVolume(name.into()))?;
        let (format, capacity) = probe_image(&path)?;
        Ok(VolumeInfo { name: name.into(), path, format, capacity, allocation: meta.blocks() * 512 })
    }

    fn check_new(&self, name: &str) -> Result<PathBuf> {
        validate_name(name).map_err(|m| StorageError::Invalid { field: "name".into(), msg: m })?;
        let path = self.def.target.join(name);
        if path.exists() {
            return Err(StorageError::VolumeExists(name.into()));
        }
        Ok(path)
    }
}

impl Pool for DirPool {
    fn start(&self) -> Result<()> {
        fs::create_dir_all(&self.def.target).map_err(io(format!("cannot create {}", self.def.target.display())))
    }

    fn stop(&self) -> Result<()> {
        Ok(())
    }

    fn list(&self) -> Result<Vec<VolumeInfo>> {
        let rd = fs::read_dir(&self.def.target).map_err(io(format!("cannot list {}", self.def.target.display())))?;
        let mut vols: Vec<VolumeInfo> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| self.volume(&n).ok())
            .collect();
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vols)
    }

    fn create(&self, req: &VolumeCreate) -> Result<VolumeInfo> {
        let path = self.check_new(&req.name)?;
        let backing = match &req.backing {
            Some(b) if b.starts_with('/') => Some(PathBuf::from(b)),
            Some(b) => Some(self.volume(b)?.path),
            None => None,
        };
        let format = req.format.unwrap_or(if backing.is_some() { DiskFormat::Qcow2 } else { DiskFormat::Raw });
        match (format, backing) {
            (DiskFormat::Raw, Some(_)) => {
                return Err(StorageError::Unsupported("a backing volume needs format qcow2".into()));
            }
            (DiskFormat::Raw, None) => {
                let f = fs::File::create_new(&path).map_err(io(format!("cannot create {}", path.display())))?;
                f.set_len(req.capacity).map_err(io(format!("cannot size {}", path.display())))?;
            }
            (DiskFormat::Qcow2, backing) => {
                let b = match &backing {
                    Some(p) => Some((p.as_path(), req.backing_format.unwrap_or(probe_image(p)?.0))),
                    None => None,
                };
                let size = if req.capacity == 0 && b.is_some() { None } else { Some(req.capacity) };
                super::create_qcow2(&path, size, b)?;
            }
        }
        self.volume(&req.name)
    }

    fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        let vol = self.volume(name)?;
        if capacity < vol.capacity {
            return Err(StorageError::Unsupported(format!(
                "shrinking `{name}` from {} to {capacity} bytes would lose data; refusing",
                vol.capacity
            )));
        }
        match vol.format {
            DiskFormat::Raw => {
                let f = fs::OpenOptions::new().write(true).open(&vol.path).map_err(io("cannot open volume"))?;
                f.set_len(capacity).map_err(io(format!("cannot resize {}", vol.path.display())))?;
            }
            DiskFormat::Qcow2 => super::resize_qcow2(&vol.path, capacity)?,
        }
        self.volume(name)
    }

    fn clone_volume(&self, src: &str, dst: &str) -> Result<VolumeInfo> {
        let from = self.volume(src)?;
        let to = self.check_new(dst)?;
        // cp keeps holes and uses reflinks where the filesystem has them.
        super::run(
            std::process::Command::new("cp").args(["--sparse=always", "--reflink=auto"]).arg(&from.path).arg(&to),
        )?;
        self.volume(dst)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let vol = self.volume(name)?;
        fs::remove_file(&vol.path).map_err(io(format!("cannot delete {}", vol.path.display())))
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        Ok(self.volume(name)?.path)
    }

    fn info(&self, name: &str) -> Result<VolumeInfo> {
        self.volume(name)
    }

    fn space(&self) -> Result<(u64, u64)> {
        let c = std::ffi::CString::new(self.def.target.as_os_str().as_encoded_bytes())
            .map_err(|_| StorageError::Unsupported("pool path contains NUL".into()))?;
        // SAFETY: statvfs is plain old data; zeroed is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid C string and `st` a valid out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io("statvfs")(std::io::Error::last_os_error()));
        }
        Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
    }
}
