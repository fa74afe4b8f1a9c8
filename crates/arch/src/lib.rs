//! Architecture support: the address map, boot-time structures (zero page,
//! PVH start info, e820, MP table, ACPI tables), CPUID shaping and initial
//! register state. Pure functions over guest memory; no KVM handles here.

pub mod acpi;
pub mod boot;
pub mod cpu_features;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
