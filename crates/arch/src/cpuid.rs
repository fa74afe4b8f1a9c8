//! CPU models and CPUID shaping: start from what KVM supports on this host,
//! mask it down to the model's features, apply `+feat/-feat`, and fill the
//! per-vCPU topology leaves.

use std::str::FromStr;

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

use crate::cpu_features::{Feature, Reg, X86_64_V1, X86_64_V2_EXTRA, X86_64_V3_EXTRA, X86_64_V4_EXTRA, feature};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("unknown CPU model '{0}': use host, baseline, x86-64-v1, x86-64-v2, x86-64-v3 or x86-64-v4")]
    UnknownModel(String),
    #[error("unknown CPU feature '{0}' in --cpu-model: use names as in /proc/cpuinfo (e.g. +avx2,-xsave)")]
    UnknownFeature(String),
    #[error("CPU feature '{0}' must be written +{0} or -{0}")]
    BadFeatureSyntax(String),
    #[error("CPU feature '{0}' was requested but this host's KVM cannot provide it")]
    Unsupported(&'static str),
    #[error("too many CPUID entries")]
    TooManyEntries,
}

/// A CPU model: a base and explicit feature changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuModel {
    pub name: String,
    /// None = host passthrough (everything KVM supports).
    base: Option<Vec<&'static Feature>>,
    plus: Vec<&'static Feature>,
    minus: Vec<&'static Feature>,
}

impl Default for CpuModel {
    fn default() -> Self {
        Self { name: "host".into(), base: None, plus: vec![], minus: vec![] }
    }
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        for p in &self.plus {
            write!(f, ",+{}", p.name)?;
        }
        for m in &self.minus {
            write!(f, ",-{}", m.name)?;
        }
        Ok(())
    }
}

fn level(names: &[&[&'static str]]) -> Vec<&'static Feature> {
    names.iter().flat_map(|l| l.iter()).filter_map(|n| feature(n)).collect()
}

impl FromStr for CpuModel {
    type Err = CpuidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',').map(str::trim);
        let name = parts.next().unwrap_or("host");
        let base = match name {
            "host" | "" => None,
            "x86-64-v1" => Some(level(&[X86_64_V1])),
            "baseline" | "x86-64-v2" => Some(level(&[X86_64_V1, X86_64_V2_EXTRA])),
            "x86-64-v3" => Some(level(&[X86_64_V1, X86_64_V2_EXTRA, X86_64_V3_EXTRA])),
            "x86-64-v4" => Some(level(&[X86_64_V1, X86_64_V2_EXTRA, X86_64_V3_EXTRA, X86_64_V4_EXTRA])),
            other => return Err(CpuidError::UnknownModel(other.to_string())),
        };
        let mut model =
            CpuModel { name: if name.is_empty() { "host".into() } else { name.into() }, base, ..Default::default() };
        for p in parts.filter(|p| !p.is_empty()) {
            let (on, n) = match (p.strip_prefix('+'), p.strip_prefix('-')) {
                (Some(n), _) => (true, n),
                (_, Some(n)) => (false, n),
                _ => return Err(CpuidError::BadFeatureSyntax(p.to_string())),
            };
            let feat = feature(n).ok_or_else(|| CpuidError::UnknownFeature(n.to_string()))?;
            if on {
                model.minus.retain(|f| f.name != feat.name);
                model.plus.push(feat);
            } else {
                model.plus.retain(|f| f.name != feat.name);
                model.minus.push(feat);
            }
        }
        Ok(model)
    }
}

/// Leaves whose feature bits a named model masks.
const MASKED: &[(u32, u32, Reg)] = &[
    (1, 0, Reg::Ecx),
    (1, 0, Reg::Edx),
    (7, 0, Reg::Ebx),
    (7, 0, Reg::Ecx),
    (7, 0, Reg::Edx),
    (0xd, 1, Reg::Eax),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
];

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

fn find(entries: &mut [kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&mut kvm_cpuid_entry2> {
    entries.iter_mut().find(|e| {
        e.function == leaf && (e.index == subleaf || e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

/// Topology of the VM: one socket, `vcpus` cores, one thread per core.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub vcpus: u32,
}

/// Shape KVM's supported CPUID for one vCPU.
pub fn shape_cpuid(
    supported: &CpuId,
    model: &CpuModel,
    vcpu_id: u32,
    topo: Topology,
    tsc_deadline: bool,
) -> Result<CpuId, CpuidError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let host = entries.clone();

    // Named models: keep only the model's bits in the masked leaves.
    if let Some(base) = &model.base {
        for &(leaf, sub, reg) in MASKED {
            let mask = base
                .iter()
                .filter(|f| f.leaf == leaf && f.subleaf == sub && f.reg == reg)
                .fold(0u32, |m, f| m | (1 << f.bit));
            if let Some(e) = find(&mut entries, leaf, sub) {
                *reg_mut(e, reg) &= mask;
            }
        }
        // Without leaf-7 features, advertise no extended state beyond SSE.
        if !base.iter().any(|f| f.name == "xsave") {
            entries.retain(|e| e.function != 0xd);
        }
    }
    // Bits KVM does not report in KVM_GET_SUPPORTED_CPUID but provides.
    if let Some(e) = find(&mut entries, 1, 0) {
        e.ecx |= 1 << 31; // hypervisor
        if tsc_deadline && model.base.as_ref().is_none_or(|b| b.iter().any(|f| f.name == "tsc_deadline_timer")) {
            e.ecx |= 1 << 24;
        }
    }
    for f in &model.plus {
        let host_has = host.iter().any(|e| {
            e.function == f.leaf && e.index == f.subleaf && {
                let mut c = *e;
                *reg_mut(&mut c, f.reg) & (1 << f.bit) != 0
            }
        }) || f.name == "hypervisor"
            || (f.name == "tsc_deadline_timer" && tsc_deadline);
        if !host_has {
            return Err(CpuidError::Unsupported(f.name));
        }
        if let Some(e) = find(&mut entries, f.leaf, f.subleaf) {
            *reg_mut(e, f.reg) |= 1 << f.bit;
        }
    }
    for f in &model.minus {
        if let Some(e) = find(&mut entries, f.leaf, f.subleaf) {
            *reg_mut(e, f.reg) &= !(1 << f.bit);
        }
        if f.name == "xsave" {
            entries.retain(|e| e.function != 0xd);
        }
    }
    apply_topology(&mut entries, vcpu_id, topo);
    fill_brand(&mut entries, &brand_string(model));
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries)
}

/// The processor brand string (leaves 0x80000002-4): the host's for host
/// passthrough (KVM reports these leaves empty), a Tern model name otherwise.
fn brand_string(model: &CpuModel) -> [u8; 48] {
    let mut b = [0u8; 48];
    if model.base.is_none() {
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            // Leaves above the maximum extended leaf return zeros, which
            // fall through to the Tern name below.
            let r = std::arch::x86_64::__cpuid(leaf);
            for (j, v) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
                b[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        if b.iter().any(|&c| c != 0) {
            return b;
        }
    }
    let name = format!("Tern Virtual CPU ({})", model.name);
    let n = name.len().min(47);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

fn fill_brand(entries: &mut [kvm_cpuid_entry2], brand: &[u8; 48]) {
    let word = |i: usize| u32::from_le_bytes(brand[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
    for e in entries.iter_mut() {
        if (0x8000_0002..=0x8000_0004).contains(&e.function) {
            let base = (e.function - 0x8000_0002) as usize * 4;
            e.eax = word(base);
            e.ebx = word(base + 1);
            e.ecx = word(base + 2);
            e.edx = word(base + 3);
        }
    }
}

fn bits_for(n: u32) -> u32 {
    if n <= 1 { 0 } else { 32 - (n - 1).leading_zeros() }
}

fn apply_topology(entries: &mut [kvm_cpuid_entry2], id: u32, topo: Topology) {
    let n = topo.vcpus.max(1);
    let core_shift = bits_for(n);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((n.min(255)) << 16);
                if n > 1 {
                    e.edx |= 1 << 28; // HTT: the logical count field is valid
                }
            }
            4 => {
                // Cores per package; caches are private except the last level.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index; // SMT level
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = n;
                        e.ecx = (2 << 8) | e.index; // core level
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index; // invalid level: end of the list
                    }
                }
            }
            0xa => {
                // No virtual PMU.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xff) | (n - 1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax, ebx, ecx, edx, ..Default::default() }
    }

    fn fake_host() -> CpuId {
        let mut e = vec![
            entry(0, 0, 0xd, 0, 0, 0),
            entry(1, 0, 0x906ea, 0x0000_0800, !(1 << 31), 0xffff_ffff),
            entry(7, 0, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0xb, 1, 0, 0, 0, 0),
            entry(0xb, 2, 0, 0, 0, 0),
            entry(0xd, 0, 7, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0xffff_ffff, 0xffff_ffff),
        ];
        for x in e.iter_mut().filter(|x| x.function == 0xb || x.function == 7 || x.function == 0xd) {
            x.flags = kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        }
        CpuId::from_entries(&e).unwrap()
    }

    fn get(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice().iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn parses_models_and_features() {
        let m: CpuModel = "baseline,+avx2,-popcnt".parse().unwrap();
        assert_eq!(m.to_string(), "baseline,+avx2,-popcnt");
        assert_eq!("x86-64-v9".parse::<CpuModel>(), Err(CpuidError::UnknownModel("x86-64-v9".into())));
        assert_eq!("host,+warp".parse::<CpuModel>(), Err(CpuidError::UnknownFeature("warp".into())));
        assert_eq!("host,avx".parse::<CpuModel>(), Err(CpuidError::BadFeatureSyntax("avx".into())));
        assert!("host,-sse4.1".parse::<CpuModel>().is_ok());
    }

    #[test]
    fn topology_leaves_describe_each_vcpu() {
        let c = shape_cpuid(&fake_host(), &CpuModel::default(), 3, Topology { vcpus: 4 }, true).unwrap();
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(l1.ecx & (1 << 24), 0, "tsc deadline");
        let core = get(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx, (core.ecx >> 8) & 0xff), (2, 4, 3, 2));
        assert_eq!((get(&c, 0xb, 2).ecx >> 8) & 0xff, 0);
    }

    #[test]
    fn named_model_masks_and_minus_clears() {
        let m: CpuModel = "baseline,-popcnt".parse().unwrap();
        let c = shape_cpuid(&fake_host(), &m, 0, Topology { vcpus: 1 }, false).unwrap();
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ecx & (1 << 23), 0, "popcnt removed");
        assert_ne!(l1.ecx & (1 << 20), 0, "sse4_2 kept");
        assert_eq!(l1.ecx & (1 << 28), 0, "avx not in baseline");
        assert_eq!(get(&c, 7, 0).ebx, 0, "no leaf-7 features in v2");
        assert!(!c.as_slice().iter().any(|e| e.function == 0xd), "no xsave leaf");
    }

    #[test]
    fn named_models_carry_a_brand_string() {
        let mut e = fake_host().as_slice().to_vec();
        e.push(entry(0x8000_0002, 0, 0, 0, 0, 0));
        e.push(entry(0x8000_0003, 0, 0, 0, 0, 0));
        e.push(entry(0x8000_0004, 0, 0, 0, 0, 0));
        let host = CpuId::from_entries(&e).unwrap();
        let m: CpuModel = "x86-64-v2".parse().unwrap();
        let c = shape_cpuid(&host, &m, 0, Topology { vcpus: 1 }, false).unwrap();
        let mut brand = Vec::new();
        for f in 0x8000_0002..=0x8000_0004 {
            let l = get(&c, f, 0);
            for v in [l.eax, l.ebx, l.ecx, l.edx] {
                brand.extend_from_slice(&v.to_le_bytes());
            }
        }
        assert!(String::from_utf8_lossy(&brand).starts_with("Tern Virtual CPU (x86-64-v2)"));
    }

    #[test]
    fn plus_of_unsupported_feature_is_refused() {
        let mut host = fake_host();
        for e in host.as_mut_slice() {
            if e.function == 7 {
                e.ebx = 0;
            }
        }
        let m: CpuModel = "host,+avx2".parse().unwrap();
        assert_eq!(shape_cpuid(&host, &m, 0, Topology { vcpus: 1 }, false), Err(CpuidError::Unsupported("avx2")));
    }
}
