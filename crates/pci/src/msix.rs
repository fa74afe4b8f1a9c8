//! MSI-X: the vector table and pending-bit array a device exposes in a BAR,
//! the capability's enable/mask bits, and delivery through
//! `devices::MsiInterrupts`. A vector raised while masked is latched in the
//! PBA and sent when the guest unmasks it.

use std::sync::Arc;

use devices::MsiInterrupts;

pub const MSIX_CAP_ID: u8 = 0x11;
pub const TABLE_ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixEntry {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
    pub ctrl: u32,
}

/// Serializable MSI-X state.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    pub table: Vec<MsixEntry>,
    pub pba: Vec<u64>,
    pub enabled: bool,
    pub function_masked: bool,
}

pub struct Msix {
    pub state: MsixState,
    irq: Arc<dyn MsiInterrupts>,
}

impl Msix {
    pub fn new(vectors: u16, irq: Arc<dyn MsiInterrupts>) -> Self {
        let table = vec![MsixEntry { ctrl: VECTOR_MASKED, ..Default::default() }; vectors as usize];
        let pba = vec![0; (vectors as usize).div_ceil(64)];
        Self { state: MsixState { table, pba, enabled: false, function_masked: false }, irq }
    }

    pub fn vectors(&self) -> u16 {
        self.state.table.len() as u16
    }

    /// Capability body (id, next, control, table offset|BIR, PBA offset|BIR).
    pub fn capability(&self, bar: u8, table_off: u32, pba_off: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = MSIX_CAP_ID;
        c[2..4].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        c[4..8].copy_from_slice(&(table_off | bar as u32).to_le_bytes());
        c[8..12].copy_from_slice(&(pba_off | bar as u32).to_le_bytes());
        c
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, ctrl: u16) {
        let was_live = self.state.enabled && !self.state.function_masked;
        self.state.enabled = ctrl & CTRL_ENABLE != 0;
        self.state.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
        if !was_live && self.state.enabled && !self.state.function_masked {
            for v in 0..self.vectors() {
                self.push_route(v);
                self.deliver_pending(v);
            }
        }
    }

    pub fn control(&self) -> u16 {
        (self.vectors() - 1)
            | if self.state.enabled { CTRL_ENABLE } else { 0 }
            | if self.state.function_masked { CTRL_FUNCTION_MASK } else { 0 }
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (idx, field) = ((offset / TABLE_ENTRY_SIZE) as usize, offset % TABLE_ENTRY_SIZE);
        let Some(e) = self.state.table.get(idx) else { return };
        let words = [e.addr_lo, e.addr_hi, e.data, e.ctrl];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let n = data.len().min(16 - start);
        data[..n].copy_from_slice(&bytes[start..start + n]);
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (idx, field) = ((offset / TABLE_ENTRY_SIZE) as usize, (offset % TABLE_ENTRY_SIZE) as usize);
        let Some(e) = self.state.table.get_mut(idx) else { return };
        let mut bytes = [0u8; 16];
        for (i, w) in [e.addr_lo, e.addr_hi, e.data, e.ctrl].iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let n = data.len().min(16 - field);
        bytes[field..field + n].copy_from_slice(&data[..n]);
        let word = |i: usize| u32::from_le_bytes([bytes[i * 4], bytes[i * 4 + 1], bytes[i * 4 + 2], bytes[i * 4 + 3]]);
        let was_masked = e.ctrl & VECTOR_MASKED != 0;
        *e = MsixEntry { addr_lo: word(0), addr_hi: word(1), data: word(2), ctrl: word(3) };
        let now_masked = e.ctrl & VECTOR_MASKED != 0;
        self.push_route(idx as u16);
        if was_masked && !now_masked {
            self.deliver_pending(idx as u16);
        }
    }

    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset as usize + i;
            if let Some(w) = self.state.pba.get(byte / 8) {
                *b = (w >> ((byte % 8) * 8)) as u8;
            }
        }
    }

    fn masked(&self, v: u16) -> bool {
        !self.state.enabled
            || self.state.function_masked
            || self.state.table.get(v as usize).is_none_or(|e| e.ctrl & VECTOR_MASKED != 0)
    }

    fn push_route(&self, v: u16) {
        let Some(e) = self.state.table.get(v as usize) else { return };
        let addr = (e.addr_hi as u64) << 32 | e.addr_lo as u64;
        if let Err(err) = self.irq.update(v, addr, e.data, self.masked(v)) {
            tracing::warn!("msix: cannot route vector {v}: {err}");
        }
    }

    fn deliver_pending(&mut self, v: u16) {
        let (w, bit) = (v as usize / 64, 1u64 << (v % 64));
        if self.state.pba.get(w).is_some_and(|p| p & bit != 0) && !self.masked(v) {
            self.state.pba[w] &= !bit;
            let _ = self.irq.trigger(v);
        }
    }

    /// Raise vector `v` (or latch it while masked).
    pub fn trigger(&mut self, v: u16) -> std::io::Result<()> {
        if v as usize >= self.state.table.len() {
            return Ok(());
        }
        if self.masked(v) {
            self.state.pba[v as usize / 64] |= 1 << (v % 64);
            return Ok(());
        }
        self.irq.trigger(v)
    }

    pub fn restore(&mut self, s: &MsixState) {
        if s.table.len() == self.state.table.len() && s.pba.len() == self.state.pba.len() {
            self.state = s.clone();
            for v in 0..self.vectors() {
                self.push_route(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec {
        sent: Mutex<Vec<u16>>,
        routes: Mutex<Vec<(u16, u64, u32, bool)>>,
    }
    impl MsiInterrupts for Rec {
        fn update(&self, index: u16, address: u64, data: u32, masked: bool) -> std::io::Result<()> {
            self.routes.lock().unwrap().push((index, address, data, masked));
            Ok(())
        }
        fn trigger(&self, index: u16) -> std::io::Result<()> {
            self.sent.lock().unwrap().push(index);
            Ok(())
        }
    }

    #[test]
    fn masked_vectors_are_latched_and_sent_on_unmask() {
        let rec = Arc::new(Rec::default());
        let mut m = Msix::new(3, rec.clone());
        m.trigger(1).unwrap();
        assert!(rec.sent.lock().unwrap().is_empty(), "disabled MSI-X must not send");
        m.set_control(CTRL_ENABLE);
        // Entry 1 is still masked (reset state): pending stays set.
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(16 + 8, &0x41u32.to_le_bytes());
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(*rec.sent.lock().unwrap(), vec![1]);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        m.trigger(1).unwrap();
        m.trigger(7).unwrap(); // out of range: ignored
        assert_eq!(*rec.sent.lock().unwrap(), vec![1, 1]);
        assert!(rec.routes.lock().unwrap().contains(&(1, 0xfee0_0000, 0x41, false)));
        let mut e = [0u8; 4];
        m.read_table(16 + 8, &mut e);
        assert_eq!(u32::from_le_bytes(e), 0x41);
    }
}
