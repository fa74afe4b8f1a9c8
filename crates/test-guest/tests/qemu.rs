//! Boots the test guest under QEMU (`-M microvm`, PVH entry) on real KVM and
//! checks its protocol lines and exit status. Skips, with a notice, when
//! qemu-system-x86_64 or /dev/kvm is missing.

mod common;

use std::time::{Duration, Instant};

use common::{assert_line, assert_prefix, boot, qemu_usable};
use test_guest::{EXIT_FAIL, EXIT_PASS, exit_status};

const T: Duration = Duration::from_secs(60);

#[test]
fn demo_prints_banner_and_powers_off() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=demo", &[], None, T);
    assert_line(&run, "Tern demo guest");
    assert_line(&run, "TERN boot protocol=pvh cmdline=\"tern.test=demo\"");
    assert_prefix(&run, "TERN cpu vendor=");
    assert_prefix(&run, "TERN memory ram_mib=127 ");
    assert_line(&run, "TERN cpus=1 source=madt");
    assert_line(&run, "TERN test=demo result=pass");
    // ACPI soft-off ends QEMU with 0; the exit-port fallback would give 1.
    assert_eq!(run.status, Some(0), "{}", run.stdout);
    assert!(!run.stdout.contains("fallback"), "{}", run.stdout);
    eprintln!("qemu spawn -> first serial byte: {:?}", run.first_byte);
}

#[test]
fn default_scenario_is_demo() {
    if !qemu_usable() {
        return;
    }
    let run = boot("console=ttyS0", &[], None, T);
    assert_line(&run, "TERN test=demo result=pass");
    assert_eq!(run.status, Some(0));
}

#[test]
fn demo_lists_virtio_mmio_devices() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=demo", &["-device", "virtio-rng-device", "-device", "virtio-balloon-device"], None, T);
    assert_prefix(&run, "TERN virtio-mmio slot=");
    assert!(run.stdout.contains(" type=rng "), "{}", run.stdout);
    assert!(run.stdout.contains(" type=balloon "), "{}", run.stdout);
    assert_line(&run, "TERN test=demo result=pass");
}

#[test]
fn exit_code_reaches_the_vmm() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=exit:42", &[], None, T);
    assert_line(&run, "TERN test=exit:42 code=42");
    assert_eq!(run.status, Some(exit_status(42)));
    let run = boot("tern.test=exit:0x0", &[], None, T);
    assert_eq!(run.status, Some(exit_status(EXIT_PASS)));
}

#[test]
fn unknown_scenario_fails() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=no-such-test", &[], None, T);
    assert_line(&run, "TERN test=no-such-test result=fail reason=unknown-scenario");
    assert_eq!(run.status, Some(exit_status(EXIT_FAIL)));
}

#[test]
fn smp_brings_up_four_cpus() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=smp", &["-smp", "4"], None, T);
    for id in 0..4 {
        assert_prefix(&run, &format!("TERN cpu={id} online"));
    }
    assert_line(&run, "TERN test=smp result=pass cpus=4");
    assert_eq!(run.status, Some(exit_status(EXIT_PASS)));
}

#[test]
fn memory_pattern_over_requested_size() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=memory tern.mem_mib=32", &[], None, T);
    assert_prefix(&run, "TERN test=memory result=pass bytes=33554432 checksum=0x");
    assert_eq!(run.status, Some(exit_status(EXIT_PASS)));
    // More than the VM has: a definite failure, not a crash.
    let run = boot("tern.test=memory tern.mem=1G", &[], None, T);
    assert_prefix(&run, "TERN test=memory result=fail reason=not-enough-ram");
    assert_eq!(run.status, Some(exit_status(EXIT_FAIL)));
}

#[test]
fn memory_above_4gib_is_mapped_and_tested() {
    if !qemu_usable() {
        return;
    }
    // 4 GiB of guest RAM: part of it lands above 4 GiB (the MMIO hole), which
    // the guest maps at CPL3 before testing it.
    let run = boot("tern.test=memory tern.mem_start=4G tern.mem_mib=64", &["-m", "4G"], None, T);
    assert_prefix(&run, "TERN test=memory result=pass bytes=67108864 checksum=0x");
    assert_eq!(run.status, Some(exit_status(EXIT_PASS)));
}

#[test]
fn memory_default_covers_all_ram_above_2mib() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=memory", &[], None, T);
    let line = run.stdout.lines().find(|l| l.starts_with("TERN test=memory result=pass bytes=")).expect(&run.stdout);
    let bytes: u64 = line.split_whitespace().nth(3).unwrap()["bytes=".len()..].parse().unwrap();
    assert!(bytes > 120 << 20 && bytes <= 126 << 20, "{line}");
}

#[test]
fn reboot_resets_the_vm() {
    if !qemu_usable() {
        return;
    }
    // -no-reboot turns the reset into an exit with status 0.
    let run = boot("tern.test=reboot", &[], None, T);
    assert_line(&run, "TERN test=reboot state=resetting method=i8042");
    assert!(!run.stdout.contains("result=fail"), "{}", run.stdout);
    assert_eq!(run.status, Some(0));
}

#[test]
fn triple_fault_shuts_the_vm_down() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=triple-fault", &[], None, T);
    assert_line(&run, "TERN test=triple-fault state=faulting");
    assert!(!run.stdout.contains("still-running"), "{}", run.stdout);
    assert_eq!(run.status, Some(0));
}

#[test]
fn internal_error_stops_kvm_run() {
    if !qemu_usable() {
        return;
    }
    // QEMU reports the emulation failure and pauses the VM; we kill it.
    let run = boot("tern.test=internal-error", &[], Some("internal error"), T);
    assert_line(&run, "TERN test=internal-error state=executing");
    assert!(run.stderr.contains("KVM internal error"), "{}", run.stderr);
    assert!(!run.stdout.contains("still-running"), "{}", run.stdout);
}

#[test]
fn hlt_keeps_the_vm_halted() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=hlt", &[], None, Duration::from_millis(1500));
    assert_line(&run, "TERN test=hlt state=halted");
    assert_eq!(run.status, None, "the VM must still be running: {}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
}

#[test]
fn spin_ticks_about_every_100ms() {
    if !qemu_usable() {
        return;
    }
    let started = Instant::now();
    let run = boot("tern.test=spin", &[], Some("TERN tick=5\n"), T);
    let elapsed = started.elapsed();
    assert_prefix(&run, "TERN test=spin tsc_hz=");
    assert_line(&run, "TERN tick=5");
    assert_eq!(run.status, None);
    assert!(elapsed >= Duration::from_millis(400), "6 ticks in {elapsed:?}");
}

#[test]
fn cpu_exception_is_reported_and_fails() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=fault", &[], None, T);
    assert_prefix(&run, "TERN exception vector=0x000000000000000e ");
    assert_line(&run, "TERN test=fault result=fail reason=exception");
    assert_eq!(run.status, Some(exit_status(test_guest::EXIT_EXCEPTION)));
}

fn cpuid_leaf(stdout: &str, leaf: u32) -> Option<[u32; 4]> {
    let line = test_guest::tern_lines(stdout).find(|l| l.get("leaf") == Some(&format!("{leaf:#010x}")))?;
    let reg = |r: &str| u32::from_str_radix(line.get(r).unwrap().trim_start_matches("0x"), 16).unwrap();
    Some([reg("eax"), reg("ebx"), reg("ecx"), reg("edx")])
}

#[test]
fn cpuid_reflects_the_vmm_cpu_model() {
    if !qemu_usable() {
        return;
    }
    let plain = boot("tern.test=cpuid", &[], None, T);
    assert_prefix(&plain, "TERN test=cpuid result=pass leaves=");
    assert_eq!(cpuid_leaf(&plain.stdout, 0x4000_0000).unwrap()[1], u32::from_le_bytes(*b"KVMK"));
    // QEMU's qemu64 and kvm64 models differ in family/model/stepping (leaf 1
    // EAX); CPUID at CPL3 on PVM would show the host's for both.
    let qemu64 = boot("tern.test=cpuid", &["-cpu", "qemu64"], None, T);
    assert_eq!(cpuid_leaf(&plain.stdout, 1).unwrap()[0], 0xf61, "{}", plain.stdout);
    assert_eq!(cpuid_leaf(&qemu64.stdout, 1).unwrap()[0], 0x60fb1, "{}", qemu64.stdout);
    let demo = boot("tern.test=demo", &[], None, T);
    assert_prefix(&demo, "TERN cpu vendor=");
    assert!(demo.stdout.contains("brand=\"Common KVM processor\""), "{}", demo.stdout);
    assert!(demo.stdout.contains(" hypervisor=KVMKVMKVM\n"), "{}", demo.stdout);
}
