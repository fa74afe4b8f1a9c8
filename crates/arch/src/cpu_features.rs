//! Named CPUID feature bits, the vocabulary of `--cpu-model NAME,+feat,-feat`.
//! Names follow Linux's /proc/cpuinfo and QEMU's spelling.

/// Which CPUID output register a feature lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A feature bit: leaf, subleaf, register, bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature { name, leaf, subleaf, reg, bit }
}

use Reg::{Eax, Ebx, Ecx, Edx};

/// The feature bits Tern can name. Leaves that models mask: 1, 7.0, 0xd.1,
/// 0x80000001.
pub const FEATURES: &[Feature] = &[
    // leaf 1 EDX
    f("fpu", 1, 0, Edx, 0),
    f("vme", 1, 0, Edx, 1),
    f("de", 1, 0, Edx, 2),
    f("pse", 1, 0, Edx, 3),
    f("tsc", 1, 0, Edx, 4),
    f("msr", 1, 0, Edx, 5),
    f("pae", 1, 0, Edx, 6),
    f("mce", 1, 0, Edx, 7),
    f("cx8", 1, 0, Edx, 8),
    f("apic", 1, 0, Edx, 9),
    f("sep", 1, 0, Edx, 11),
    f("mtrr", 1, 0, Edx, 12),
    f("pge", 1, 0, Edx, 13),
    f("mca", 1, 0, Edx, 14),
    f("cmov", 1, 0, Edx, 15),
    f("pat", 1, 0, Edx, 16),
    f("pse36", 1, 0, Edx, 17),
    f("clflush", 1, 0, Edx, 19),
    f("mmx", 1, 0, Edx, 23),
    f("fxsr", 1, 0, Edx, 24),
    f("sse", 1, 0, Edx, 25),
    f("sse2", 1, 0, Edx, 26),
    f("ss", 1, 0, Edx, 27),
    f("ht", 1, 0, Edx, 28),
    // leaf 1 ECX
    f("sse3", 1, 0, Ecx, 0),
    f("pclmulqdq", 1, 0, Ecx, 1),
    f("monitor", 1, 0, Ecx, 3),
    f("vmx", 1, 0, Ecx, 5),
    f("ssse3", 1, 0, Ecx, 9),
    f("fma", 1, 0, Ecx, 12),
    f("cx16", 1, 0, Ecx, 13),
    f("pdcm", 1, 0, Ecx, 15),
    f("pcid", 1, 0, Ecx, 17),
    f("sse4_1", 1, 0, Ecx, 19),
    f("sse4_2", 1, 0, Ecx, 20),
    f("x2apic", 1, 0, Ecx, 21),
    f("movbe", 1, 0, Ecx, 22),
    f("popcnt", 1, 0, Ecx, 23),
    f("tsc_deadline_timer", 1, 0, Ecx, 24),
    f("aes", 1, 0, Ecx, 25),
    f("xsave", 1, 0, Ecx, 26),
    f("avx", 1, 0, Ecx, 28),
    f("f16c", 1, 0, Ecx, 29),
    f("rdrand", 1, 0, Ecx, 30),
    f("hypervisor", 1, 0, Ecx, 31),
    // leaf 7.0 EBX
    f("fsgsbase", 7, 0, Ebx, 0),
    f("tsc_adjust", 7, 0, Ebx, 1),
    f("bmi1", 7, 0, Ebx, 3),
    f("hle", 7, 0, Ebx, 4),
    f("avx2", 7, 0, Ebx, 5),
    f("smep", 7, 0, Ebx, 7),
    f("bmi2", 7, 0, Ebx, 8),
    f("erms", 7, 0, Ebx, 9),
    f("invpcid", 7, 0, Ebx, 10),
    f("rtm", 7, 0, Ebx, 11),
    f("avx512f", 7, 0, Ebx, 16),
    f("avx512dq", 7, 0, Ebx, 17),
    f("rdseed", 7, 0, Ebx, 18),
    f("adx", 7, 0, Ebx, 19),
    f("smap", 7, 0, Ebx, 20),
    f("avx512ifma", 7, 0, Ebx, 21),
    f("clflushopt", 7, 0, Ebx, 23),
    f("clwb", 7, 0, Ebx, 24),
    f("avx512cd", 7, 0, Ebx, 28),
    f("sha_ni", 7, 0, Ebx, 29),
    f("avx512bw", 7, 0, Ebx, 30),
    f("avx512vl", 7, 0, Ebx, 31),
    // leaf 7.0 ECX
    f("avx512vbmi", 7, 0, Ecx, 1),
    f("umip", 7, 0, Ecx, 2),
    f("pku", 7, 0, Ecx, 3),
    f("ospke", 7, 0, Ecx, 4),
    f("avx512_vbmi2", 7, 0, Ecx, 6),
    f("gfni", 7, 0, Ecx, 8),
    f("vaes", 7, 0, Ecx, 9),
    f("vpclmulqdq", 7, 0, Ecx, 10),
    f("avx512_vnni", 7, 0, Ecx, 11),
    f("avx512_bitalg", 7, 0, Ecx, 12),
    f("avx512_vpopcntdq", 7, 0, Ecx, 14),
    f("la57", 7, 0, Ecx, 16),
    f("rdpid", 7, 0, Ecx, 22),
    // leaf 7.0 EDX
    f("fsrm", 7, 0, Edx, 4),
    f("md_clear", 7, 0, Edx, 10),
    f("serialize", 7, 0, Edx, 14),
    f("arch_capabilities", 7, 0, Edx, 29),
    f("ssbd", 7, 0, Edx, 31),
    // leaf 0xd.1 EAX
    f("xsaveopt", 0xd, 1, Eax, 0),
    f("xsavec", 0xd, 1, Eax, 1),
    f("xgetbv1", 0xd, 1, Eax, 2),
    f("xsaves", 0xd, 1, Eax, 3),
    // leaf 0x80000001 ECX
    f("lahf_lm", 0x8000_0001, 0, Ecx, 0),
    f("cmp_legacy", 0x8000_0001, 0, Ecx, 1),
    f("svm", 0x8000_0001, 0, Ecx, 2),
    f("abm", 0x8000_0001, 0, Ecx, 5),
    f("lzcnt", 0x8000_0001, 0, Ecx, 5),
    f("sse4a", 0x8000_0001, 0, Ecx, 6),
    f("misalignsse", 0x8000_0001, 0, Ecx, 7),
    f("3dnowprefetch", 0x8000_0001, 0, Ecx, 8),
    f("xop", 0x8000_0001, 0, Ecx, 11),
    f("fma4", 0x8000_0001, 0, Ecx, 16),
    f("tbm", 0x8000_0001, 0, Ecx, 21),
    f("topoext", 0x8000_0001, 0, Ecx, 22),
    // leaf 0x80000001 EDX
    f("syscall", 0x8000_0001, 0, Edx, 11),
    f("nx", 0x8000_0001, 0, Edx, 20),
    f("mmxext", 0x8000_0001, 0, Edx, 22),
    f("pdpe1gb", 0x8000_0001, 0, Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Edx, 27),
    f("lm", 0x8000_0001, 0, Edx, 29),
];

/// Look a feature up by name (case-insensitive, `-` and `_` alike, `.` for
/// QEMU's `sse4.1` spelling).
pub fn feature(name: &str) -> Option<&'static Feature> {
    let n = name.to_ascii_lowercase().replace(['-', '.'], "_");
    FEATURES.iter().find(|f| f.name == n)
}

/// x86-64 microarchitecture levels (psABI), cumulative.
pub const X86_64_V1: &[&str] = &[
    "fpu",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "syscall",
    "nx",
    "lm",
    "hypervisor",
    "x2apic",
    "tsc_deadline_timer",
];
pub const X86_64_V2_EXTRA: &[&str] = &["cx16", "lahf_lm", "popcnt", "sse3", "sse4_1", "sse4_2", "ssse3"];
pub const X86_64_V3_EXTRA: &[&str] =
    &["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "abm", "movbe", "xsave", "xsaveopt"];
pub const X86_64_V4_EXTRA: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];
