//! Storage pools as the daemon holds them: definitions on disk, an active
//! flag in memory (autostart pools are started with the daemon), and the
//! lookup from a disk's `vol = "pool/name"` to a host path.

use serde_json::{Value, json};

use super::{ApiError, Daemon};
use crate::definition::{Disk, DiskFormat};
use crate::storage::{self, PoolDefinition, PoolKind, VolumeCreate};
use crate::store::{read_to_string, write_atomic};
use crate::vmproc::ResolvedDisk;

pub struct PoolEntry {
    pub def: PoolDefinition,
    pub active: bool,
}

pub const DEFAULT_POOL: &str = "default";

fn storage_err(e: storage::StorageError) -> ApiError {
    match e {
        storage::StorageError::NoVolume(_) => ApiError::not_found(e.to_string()),
        storage::StorageError::VolumeExists(_) => ApiError::conflict(e.to_string()),
        storage::StorageError::Invalid { .. } | storage::StorageError::Unsupported(_) => ApiError::bad(e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

impl Daemon {
    fn pool_lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, PoolEntry>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn load_pools(&self) -> Result<(), ApiError> {
        let dir = self.layout.pools_dir();
        let mut pools = self.pool_lock();
        for ent in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = ent.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let parsed = read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str::<PoolDefinition>(&t).map_err(|e| e.message().to_string()));
            match parsed {
                Ok(def) => {
                    pools.insert(def.name.clone(), PoolEntry { def, active: false });
                }
                Err(e) => tracing::error!("skipping pool {}: {e}", path.display()),
            }
        }
        if !pools.contains_key(DEFAULT_POOL) {
            let def = PoolDefinition {
                name: DEFAULT_POOL.into(),
                kind: PoolKind::Dir,
                target: self.layout.default_images(),
                source_name: None,
                source_devices: Vec::new(),
                autostart: true,
            };
            self.persist_pool(&def)?;
            pools.insert(def.name.clone(), PoolEntry { def, active: false });
        }
        for p in pools.values_mut().filter(|p| p.def.autostart) {
            match storage::open(&p.def).start() {
                Ok(()) => p.active = true,
                Err(e) => tracing::warn!("pool {} autostart failed: {e}", p.def.name),
            }
        }
        Ok(())
    }

    fn persist_pool(&self, def: &PoolDefinition) -> Result<(), ApiError> {
        let text = toml::to_string_pretty(def).map_err(|e| ApiError::internal(e.to_string()))?;
        write_atomic(&self.layout.pools_dir().join(format!("{}.toml", def.name)), text.as_bytes())
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    fn pool_def(&self, name: &str, need_active: bool) -> Result<PoolDefinition, ApiError> {
        let pools = self.pool_lock();
        let p = pools
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("pool `{name}` not found (see `tern pool-list --all`)")))?;
        if need_active && !p.active {
            return Err(ApiError::conflict(format!("pool `{name}` is not active; run `tern pool-start {name}`")));
        }
        Ok(p.def.clone())
    }

    fn pool_json(&self, p: &PoolEntry) -> Value {
        let space = if p.active { storage::open(&p.def).space().ok() } else { None };
        json!({
            "name": p.def.name, "type": p.def.kind, "target": p.def.target, "active": p.active,
            "autostart": p.def.autostart, "source_name": p.def.source_name, "source_devices": p.def.source_devices,
            "capacity": space.map(|s| s.0), "available": space.map(|s| s.1),
        })
    }

    pub fn pool_list(&self) -> Value {
        let pools = self.pool_lock();
        Value::Array(pools.values().map(|p| self.pool_json(p)).collect())
    }

    pub fn pool_get(&self, name: &str) -> Result<Value, ApiError> {
        let pools = self.pool_lock();
        pools
            .get(name)
            .map(|p| self.pool_json(p))
            .ok_or_else(|| ApiError::not_found(format!("pool `{name}` not found")))
    }

    pub fn pool_define(&self, def: PoolDefinition) -> Result<Value, ApiError> {
        def.validate().map_err(storage_err)?;
        let mut pools = self.pool_lock();
        if pools.contains_key(&def.name) {
            return Err(ApiError::conflict(format!("pool `{}` already exists", def.name)));
        }
        self.persist_pool(&def)?;
        let entry = PoolEntry { def, active: false };
        let v = self.pool_json(&entry);
        pools.insert(entry.def.name.clone(), entry);
        Ok(v)
    }

    pub fn pool_undefine(&self, name: &str) -> Result<(), ApiError> {
        let mut pools = self.pool_lock();
        let p = pools.get(name).ok_or_else(|| ApiError::not_found(format!("pool `{name}` not found")))?;
        if p.active {
            return Err(ApiError::conflict(format!("pool `{name}` is active; run `tern pool-destroy {name}` first")));
        }
        let _ = std::fs::remove_file(self.layout.pools_dir().join(format!("{name}.toml")));
        pools.remove(name);
        Ok(())
    }

    pub fn pool_action(&self, name: &str, action: &str) -> Result<Value, ApiError> {
        let def = self.pool_def(name, false)?;
        let pool = storage::open(&def);
        match action {
            "start" => pool.start().map_err(storage_err)?,
            "destroy" => pool.stop().map_err(storage_err)?,
            "refresh" => {
                self.pool_def(name, true)?;
                pool.list().map_err(storage_err)?;
            }
            other => return Err(ApiError::bad(format!("unknown pool action `{other}` (start, destroy, refresh)"))),
        }
        let mut pools = self.pool_lock();
        if let Some(p) = pools.get_mut(name) {
            match action {
                "start" => p.active = true,
                "destroy" => p.active = false,
                _ => {}
            }
            return Ok(self.pool_json(p));
        }
        Err(ApiError::not_found(format!("pool `{name}` not found")))
    }

    pub fn pool_autostart(&self, name: &str, enabled: bool) -> Result<(), ApiError> {
        let mut pools = self.pool_lock();
        let p = pools.get_mut(name).ok_or_else(|| ApiError::not_found(format!("pool `{name}` not found")))?;
        let mut def = p.def.clone();
        def.autostart = enabled;
        self.persist_pool(&def)?;
        p.def = def;
        Ok(())
    }

    pub fn vol_list(&self, pool: &str) -> Result<Value, ApiError> {
        let def = self.pool_def(pool, true)?;
        let vols = storage::open(&def).list().map_err(storage_err)?;
        Ok(serde_json::to_value(vols).unwrap_or_default())
    }

    pub fn vol_info(&self, pool: &str, vol: &str) -> Result<Value, ApiError> {
        let def = self.pool_def(pool, true)?;
        let v = storage::open(&def).info(vol).map_err(storage_err)?;
        Ok(serde_json::to_value(v).unwrap_or_default())
    }

    pub fn vol_create(&self, pool: &str, req: &VolumeCreate) -> Result<Value, ApiError> {
        let def = self.pool_def(pool, true)?;
        let v = storage::open(&def).create(req).map_err(storage_err)?;
        self.events.emit("volume", json!({"pool": pool, "name": v.name, "action": "created"}));
        Ok(serde_json::to_value(v).unwrap_or_default())
    }

    pub fn vol_resize(&self, pool: &str, vol: &str, capacity: u64) -> Result<Value, ApiError> {
        let def = self.pool_def(pool, true)?;
        let v = storage::open(&def).resize(vol, capacity).map_err(storage_err)?;
        Ok(serde_json::to_value(v).unwrap_or_default())
    }

    pub fn vol_clone(&self, pool: &str, vol: &str, new_name: &str) -> Result<Value, ApiError> {
        let def = self.pool_def(pool, true)?;
        let v = storage::open(&def).clone_volume(vol, new_name).map_err(storage_err)?;
        Ok(serde_json::to_value(v).unwrap_or_default())
    }

    pub fn vol_delete(&self, pool: &str, vol: &str) -> Result<(), ApiError> {
        let def = self.pool_def(pool, true)?;
        let full = format!("{pool}/{vol}");
        let users: Vec<String> = self
            .vm_lock()
            .values()
            .filter(|e| {
                e.state.active()
                    && e.def.disks.iter().any(|d| d.vol.as_deref().is_some_and(|v| split_vol(v) == split_vol(&full)))
            })
            .map(|e| e.def.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!("volume `{full}` is in use by running VM `{}`", users.join(", "))));
        }
        storage::open(&def).delete(vol).map_err(storage_err)?;
        self.events.emit("volume", json!({"pool": pool, "name": vol, "action": "deleted"}));
        Ok(())
    }

    /// Delete the volume a disk refers to (`undefine --remove-storage`).
    pub(super) fn delete_volume_ref(&self, vol: &str) -> Result<(), ApiError> {
        let (pool, name) = split_vol(vol);
        let def = self.pool_def(pool, true)?;
        match storage::open(&def).delete(name) {
            Ok(()) | Err(storage::StorageError::NoVolume(_)) => Ok(()),
            Err(e) => Err(storage_err(e)),
        }
    }

    /// Resolve a definition's disk to a host path and format.
    pub fn resolve_disk(&self, d: &Disk) -> Result<ResolvedDisk, ApiError> {
        let path = match (&d.vol, &d.path) {
            (Some(v), _) => {
                let (pool, name) = split_vol(v);
                let def = self.pool_def(pool, true)?;
                let p = storage::open(&def).path_of(name).map_err(|e| ApiError::bad(format!("disk vol `{v}`: {e}")))?;
                if !p.exists() {
                    return Err(ApiError::bad(format!("disk vol `{v}`: {} does not exist", p.display())));
                }
                p
            }
            (None, Some(p)) => {
                if !p.exists() {
                    return Err(ApiError::bad(format!("disk path `{}` does not exist", p.display())));
                }
                p.clone()
            }
            (None, None) => return Err(ApiError::bad("disk has neither vol nor path")),
        };
        let format = match d.format {
            Some(f) => f,
            None => storage::probe_image(&path).map(|(f, _)| f).unwrap_or(DiskFormat::Raw),
        };
        Ok(ResolvedDisk { path, format, readonly: d.readonly, cache: d.cache, io: d.io, serial: d.serial.clone() })
    }
}

/// `pool/name` or `name` (in the default pool).
pub fn split_vol(v: &str) -> (&str, &str) {
    v.split_once('/').unwrap_or((DEFAULT_POOL, v))
}
