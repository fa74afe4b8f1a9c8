//! LVM pool: each volume is a logical volume of one volume group. Volumes are
//! raw block devices; the LVM tools do the work (as libvirt does).
//!
//! Hosts without device-mapper (some containers, this CI host): LVM can
//! still manage the metadata (`--driverloaded n`), and a linear LV is then
//! made available as a loop device over its extents on the physical volume,
//! which is exactly what dm-linear would map. LVs spanning several segments
//! need device-mapper.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Pool, PoolDefinition, Result, StorageError, VolumeCreate, VolumeInfo, run};
use crate::definition::{DiskFormat, validate_name};

pub struct LvmPool {
    pub def: PoolDefinition,
}

/// The node may exist in a container while the kernel has no driver (ENODEV on open).
fn dm_available() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open(Path::new("/dev/mapper/control")).is_ok()
}

fn lvm(tool: &str) -> Command {
    let mut c = Command::new(tool);
    // The daemon's inherited descriptors would make LVM print warnings.
    c.env("LVM_SUPPRESS_FD_WARNINGS", "1");
    if !dm_available() && matches!(tool, "lvcreate" | "lvresize" | "lvremove") {
        c.args(["--driverloaded", "n"]);
    }
    c
}

fn num(s: &str) -> u64 {
    s.trim().parse().unwrap_or(0)
}

/// Where a linear LV's data lives on its physical volume.
#[derive(Debug, PartialEq)]
struct Extents {
    pv: String,
    offset: u64,
    size: u64,
}

impl LvmPool {
    fn vg_exists(&self) -> bool {
        run(lvm("vgs").arg(self.def.vg())).is_ok()
    }

    fn lv(&self, name: &str) -> String {
        format!("{}/{name}", self.def.vg())
    }

    fn extents(&self, name: &str) -> Result<Extents> {
        let q = |args: &[&str]| {
            run(lvm(args[0]).args(["--noheadings", "--units", "b", "--nosuffix", "--separator", "|"]).args(&args[1..]))
        };
        let ranges = q(&["lvs", "-o", "seg_pe_ranges", &self.lv(name)])?;
        let segs: Vec<&str> = ranges.split_whitespace().collect();
        let [seg] = segs.as_slice() else {
            return Err(StorageError::Unsupported(format!(
                "LV `{name}` has {} segments; without device-mapper only single-segment LVs can be used",
                segs.len()
            )));
        };
        let bad = || StorageError::Unsupported(format!("cannot parse LV segment `{seg}`"));
        let (pv, range) = seg.rsplit_once(':').ok_or_else(bad)?;
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let (a, b) = (num(a), num(b));
        let pe_start = num(&q(&["pvs", "-o", "pe_start", pv])?);
        let ext = num(&q(&["vgs", "-o", "vg_extent_size", &self.def.vg()])?);
        if ext == 0 || b < a {
            return Err(bad());
        }
        Ok(Extents { pv: pv.to_string(), offset: pe_start + a * ext, size: (b - a + 1) * ext })
    }

    /// Loop devices currently mapping exactly these extents.
    fn loops_for(e: &Extents) -> Vec<String> {
        let out = run(Command::new("losetup").args(["-n", "-l", "-O", "NAME,BACK-FILE,OFFSET,SIZELIMIT"]))
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[1] == e.pv && num(f[2]) == e.offset && num(f[3]) == e.size).then(|| f[0].to_string())
            })
            .collect()
    }

    fn unmap(&self, name: &str) {
        if dm_available() {
            return;
        }
        if let Ok(e) = self.extents(name) {
            for l in Self::loops_for(&e) {
                let _ = run(Command::new("losetup").args(["-d", &l]));
            }
        }
    }
}

impl Pool for LvmPool {
    fn info(&self, name: &str) -> Result<VolumeInfo> {
        validate_name(name).map_err(|m| StorageError::Invalid { field: "name".into(), msg: m })?;
        self.list()?.into_iter().find(|v| v.name == name).ok_or_else(|| StorageError::NoVolume(name.into()))
    }

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
        if dm_available() {
            run(lvm("vgchange").args(["-ay", "-q"]).arg(self.def.vg()))?;
        }
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        if dm_available() {
            return run(lvm("vgchange").args(["-an", "-q"]).arg(self.def.vg())).map(|_| ());
        }
        for v in self.list()? {
            self.unmap(&v.name);
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<VolumeInfo>> {
        let out = run(lvm("lvs")
            .args(["--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", "--separator", "|"])
            .arg(self.def.vg()))?;
        let mut vols = Vec::new();
        for line in out.lines() {
            let mut f = line.trim().split('|');
            if let (Some(name), Some(size)) = (f.next(), f.next()) {
                let capacity = num(size);
                vols.push(VolumeInfo {
                    name: name.trim().to_string(),
                    path: PathBuf::from(format!("/dev/{}/{}", self.def.vg(), name.trim())),
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
        let mut cmd = lvm("lvcreate");
        if dm_available() {
            cmd.args(["-q", "-y", "-Wy", "-Zy"]);
        } else {
            cmd.args(["-q", "-y", "-an", "-Wn", "-Zn"]);
        }
        run(cmd.args(["-n", &req.name, "-L"]).arg(format!("{}b", req.capacity)).arg(self.def.vg()))?;
        self.info(&req.name)
    }

    fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        let vol = self.info(name)?;
        if capacity < vol.capacity {
            return Err(StorageError::Unsupported(format!("shrinking LV `{name}` would lose data; refusing")));
        }
        self.unmap(name);
        run(lvm("lvresize").args(["-q", "-L"]).arg(format!("{capacity}b")).arg(self.lv(name)))?;
        self.info(name)
    }

    fn clone_volume(&self, src: &str, dst: &str) -> Result<VolumeInfo> {
        let from = self.info(src)?;
        self.create(&VolumeCreate { name: dst.into(), capacity: from.capacity, ..Default::default() })?;
        let copy = self.path_of(src).and_then(|s| self.path_of(dst).map(|d| (s, d))).and_then(|(s, d)| {
            run(Command::new("dd").arg(format!("if={}", s.display())).arg(format!("of={}", d.display())).args([
                "bs=4M",
                "conv=fsync",
                "status=none",
            ]))
        });
        if let Err(e) = copy {
            let _ = self.delete(dst);
            return Err(e);
        }
        self.info(dst)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.info(name)?;
        self.unmap(name);
        run(lvm("lvremove").args(["-q", "-y"]).arg(self.lv(name))).map(|_| ())
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        self.info(name)?;
        if dm_available() {
            return Ok(PathBuf::from(format!("/dev/{}/{name}", self.def.vg())));
        }
        let e = self.extents(name)?;
        if let Some(l) = Self::loops_for(&e).into_iter().next() {
            return Ok(PathBuf::from(l));
        }
        let out = run(Command::new("losetup")
            .args(["-f", "--show", "--offset", &e.offset.to_string(), "--sizelimit", &e.size.to_string()])
            .arg(&e.pv))?;
        Ok(PathBuf::from(out.trim()))
    }

    fn space(&self) -> Result<(u64, u64)> {
        let out = run(lvm("vgs")
            .args(["--noheadings", "--units", "b", "--nosuffix", "-o", "vg_size,vg_free", "--separator", "|"])
            .arg(self.def.vg()))?;
        let mut f = out.trim().split('|').map(num);
        Ok((f.next().unwrap_or(0), f.next().unwrap_or(0)))
    }
}
