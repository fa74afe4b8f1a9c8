//! LVM pool: each volume is a logical volume of one volume group. Volumes are
//! raw block devices; the LVM tools do the work (as libvirt does).

use std::path::PathBuf;
use std::process::Command;

use super::{Pool, PoolDefinition, Result, StorageError, VolumeCreate, VolumeInfo, run};
use crate::definition::{DiskFormat, validate_name};

pub struct LvmPool {
    pub def: PoolDefinition,
}

fn lvm(tool: &str) -> Command {
    let mut c = Command::new(tool);
    // The daemon's inherited descriptors would make LVM print warnings.
    c.env("LVM_SUPPRESS_FD_WARNINGS", "1");
    c
}

impl LvmPool {
    fn vg_exists(&self) -> bool {
        run(lvm("vgs").arg(self.def.vg())).is_ok()
    }
}

impl Pool for LvmPool {
    fn start(&self) -> Result<()> {
        if !self.vg_exists() {
            if self.def.source_devices.is_empty() {
                return Err(StorageError::Unsupported(format!(
                    "volume group `{}` does not exist and the pool has no source devices to build it from",
                    self.def.vg()
                )));
            }
            for dev in &self.def.source_devices {
                run(lvm("pvcreate").arg("-y").arg("-q").arg(dev))?;
            }
            run(lvm("vgcreate").arg("-q").arg(self.def.vg()).args(&self.def.source_devices))?;
        }
        run(lvm("vgchange").args(["-ay", "-q"]).arg(self.def.vg())).map(|_| ())
    }

    fn stop(&self) -> Result<()> {
        run(lvm("vgchange").args(["-an", "-q"]).arg(self.def.vg())).map(|_| ())
    }

    fn list(&self) -> Result<Vec<VolumeInfo>> {
        let out = run(lvm("lvs")
            .args(["--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", "--separator", "|"])
            .arg(self.def.vg()))?;
        let mut vols = Vec::new();
        for line in out.lines() {
            let mut f = line.trim().split('|');
            if let (Some(name), Some(size)) = (f.next(), f.next()) {
                let capacity = size.trim().parse().unwrap_or(0);
                vols.push(VolumeInfo {
                    name: name.trim().to_string(),
                    path: self.path_of(name.trim()),
                    format: DiskFormat::Raw,
                    capacity,
                    allocation: capacity,
                });
            }
        }
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vols)
    }

    fn create(&self, req: &VolumeCreate) -> Result<VolumeInfo> {
        validate_name(&req.name).map_err(|m| StorageError::Invalid { field: "name".into(), msg: m })?;
        if req.format.is_some_and(|f| f != DiskFormat::Raw) || req.backing.is_some() {
            return Err(StorageError::Unsupported("LVM pool volumes are raw and cannot have a backing volume".into()));
        }
        if self.list()?.iter().any(|v| v.name == req.name) {
            return Err(StorageError::VolumeExists(req.name.clone()));
        }
        run(lvm("lvcreate")
            .args(["-q", "-y", "-Wy", "-Zy", "-n", &req.name, "-L"])
            .arg(format!("{}b", req.capacity))
            .arg(self.def.vg()))?;
        self.info(&req.name)
    }

    fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        let vol = self.info(name)?;
        if capacity < vol.capacity {
            return Err(StorageError::Unsupported(format!("shrinking LV `{name}` would lose data; refusing")));
        }
        run(lvm("lvresize").args(["-q", "-L"]).arg(format!("{capacity}b")).arg(format!("{}/{name}", self.def.vg())))?;
        self.info(name)
    }

    fn clone_volume(&self, src: &str, dst: &str) -> Result<VolumeInfo> {
        let from = self.info(src)?;
        self.create(&VolumeCreate { name: dst.into(), capacity: from.capacity, ..Default::default() })?;
        let copy = run(Command::new("dd")
            .arg(format!("if={}", from.path.display()))
            .arg(format!("of={}", self.path_of(dst).display()))
            .args(["bs=4M", "conv=sparse,fsync", "status=none"]));
        if let Err(e) = copy {
            let _ = self.delete(dst);
            return Err(e);
        }
        self.info(dst)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.info(name)?;
        run(lvm("lvremove").args(["-q", "-y"]).arg(format!("{}/{name}", self.def.vg()))).map(|_| ())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{}/{name}", self.def.vg()))
    }

    fn space(&self) -> Result<(u64, u64)> {
        let out = run(lvm("vgs")
            .args(["--noheadings", "--units", "b", "--nosuffix", "-o", "vg_size,vg_free", "--separator", "|"])
            .arg(self.def.vg()))?;
        let mut f = out.trim().split('|').map(|s| s.trim().parse::<u64>().unwrap_or(0));
        Ok((f.next().unwrap_or(0), f.next().unwrap_or(0)))
    }
}
