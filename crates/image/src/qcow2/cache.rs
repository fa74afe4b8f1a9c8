//! A small LRU cache of metadata tables (L2 tables, refcount blocks) keyed by
//! host offset. Write-back: the owner decides when dirty tables are written,
//! because the order of those writes is what keeps the image crash-consistent.

use std::collections::HashMap;

struct Slot<T> {
    data: T,
    dirty: bool,
    used: u64,
}

pub struct TableCache<T> {
    map: HashMap<u64, Slot<T>>,
    capacity: usize,
    tick: u64,
}

impl<T> TableCache<T> {
    pub fn new(capacity: usize) -> Self {
        TableCache { map: HashMap::new(), capacity: capacity.max(4), tick: 0 }
    }

    pub fn contains(&self, off: u64) -> bool {
        self.map.contains_key(&off)
    }

    pub fn get(&mut self, off: u64) -> Option<&T> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&off).map(|s| {
            s.used = tick;
            &s.data
        })
    }

    /// Mutable access; marks the table dirty.
    pub fn get_mut(&mut self, off: u64) -> Option<&mut T> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&off).map(|s| {
            s.used = tick;
            s.dirty = true;
            &mut s.data
        })
    }

    pub fn insert(&mut self, off: u64, data: T, dirty: bool) {
        self.tick += 1;
        self.map.insert(off, Slot { data, dirty, used: self.tick });
    }

    pub fn remove(&mut self, off: u64) -> Option<T> {
        self.map.remove(&off).map(|s| s.data)
    }

    /// An old entry to evict if the cache is full: (offset, dirty). Approximate
    /// LRU: the least recently used of a small sample, so eviction stays O(1)
    /// even with tens of thousands of small tables.
    pub fn victim(&self) -> Option<(u64, bool)> {
        if self.map.len() < self.capacity {
            return None;
        }
        self.map.iter().take(32).min_by_key(|(_, s)| s.used).map(|(&o, s)| (o, s.dirty))
    }

    /// Offsets of dirty tables, ascending (sequential writes).
    pub fn dirty(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.map.iter().filter(|(_, s)| s.dirty).map(|(&o, _)| o).collect();
        v.sort_unstable();
        v
    }

    pub fn peek(&self, off: u64) -> Option<&T> {
        self.map.get(&off).map(|s| &s.data)
    }

    pub fn mark_clean(&mut self, off: u64) {
        if let Some(s) = self.map.get_mut(&off) {
            s.dirty = false;
        }
    }

    pub fn has_dirty(&self) -> bool {
        self.map.values().any(|s| s.dirty)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}
