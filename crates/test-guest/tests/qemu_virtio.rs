//! The virtio scenarios under QEMU microvm, on virtio-mmio (legacy and
//! modern) and virtio-pci: QEMU's device models against the independent
//! `virtio-drivers` in the guest. Skips when QEMU or /dev/kvm is missing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Run, assert_line, assert_prefix, boot, boot_pcie, qemu_usable};
use test_guest::{EXIT_FAIL, EXIT_PASS, blk_checksum, blk_sector_pattern, exit_status};

const T: Duration = Duration::from_secs(60);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-test-guest-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn passed(run: &Run, prefix: &str) {
    assert_prefix(run, prefix);
    assert_eq!(run.status, Some(exit_status(EXIT_PASS)), "{}\n{}", run.stdout, run.stderr);
}

fn check_disk(path: &PathBuf, sectors: u64) {
    let disk = std::fs::read(path).unwrap();
    for sector in 0..sectors {
        let at = sector as usize * 512;
        assert_eq!(disk[at..at + 512], blk_sector_pattern(sector), "sector {sector} on the host file");
    }
    assert!(disk[sectors as usize * 512..].iter().all(|&b| b == 0), "written past sector {sectors}");
}

#[test]
fn blk_on_mmio_writes_the_pattern_to_the_host_file() {
    if !qemu_usable() {
        return;
    }
    for modern in [false, true] {
        let disk = scratch(&format!("mmio-{modern}.raw"));
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let drive = format!("id=d0,file={},format=raw,if=none", disk.display());
        let legacy = format!("virtio-mmio.force-legacy={}", !modern);
        let run = boot(
            "tern.test=virtio-blk tern.blk_sectors=100",
            &["-global", &legacy, "-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
            None,
            T,
        );
        let expected: Vec<u8> = (0..100).flat_map(blk_sector_pattern).collect();
        passed(
            &run,
            &format!(
                "TERN test=virtio-blk result=pass sectors=100 mode=write-read checksum={:#018x} mismatches=0 transport=mmio",
                blk_checksum(&expected)
            ),
        );
        check_disk(&disk, 100);
        // Read-only mode reads back the same data and reports the same checksum.
        let run = boot(
            "tern.test=virtio-blk tern.blk_sectors=100 tern.blk_mode=read",
            &["-global", &legacy, "-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
            None,
            T,
        );
        passed(
            &run,
            &format!(
                "TERN test=virtio-blk result=pass sectors=100 mode=read checksum={:#018x}",
                blk_checksum(&expected)
            ),
        );
    }
}

#[test]
fn blk_on_pci() {
    if !qemu_usable() {
        return;
    }
    let disk = scratch("pci.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("id=d0,file={},format=raw,if=none", disk.display());
    let run = boot_pcie(
        "tern.test=virtio-blk tern.virtio=pci tern.blk_sectors=40",
        &["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"],
        T,
    );
    passed(&run, "TERN test=virtio-blk result=pass sectors=40 mode=write-read ");
    assert!(run.stdout.contains("transport=pci"), "{}", run.stdout);
    check_disk(&disk, 40);
}

#[test]
fn missing_device_is_a_definite_failure() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=virtio-blk", &[], None, T);
    assert_line(&run, "TERN test=virtio-blk result=fail reason=no-device");
    assert_eq!(run.status, Some(exit_status(EXIT_FAIL)));
}

#[test]
fn rng_on_mmio_and_pci() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=virtio-rng tern.rng_bytes=256", &["-device", "virtio-rng-device"], None, T);
    passed(&run, "TERN test=virtio-rng result=pass bytes=256 ");
    let run = boot_pcie("tern.test=virtio-rng tern.virtio=pci", &["-device", "virtio-rng-pci"], T);
    passed(&run, "TERN test=virtio-rng result=pass bytes=64 ");
}

#[test]
fn console_line_reaches_the_host() {
    if !qemu_usable() {
        return;
    }
    let out = scratch("console.txt");
    let chardev = format!("file,id=c0,path={}", out.display());
    let run = boot(
        "tern.test=virtio-console",
        &["-device", "virtio-serial-device", "-chardev", &chardev, "-device", "virtconsole,chardev=c0"],
        None,
        T,
    );
    passed(&run, "TERN test=virtio-console result=pass bytes=26 transport=mmio");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "TERN virtio-console hello\n");
}

#[test]
fn net_arp_and_ping_through_user_networking() {
    if !qemu_usable() {
        return;
    }
    // QEMU's user-mode network answers ARP and ICMP echo for its gateway
    // 10.0.2.2 inside the QEMU process: no traffic leaves this machine.
    let run = boot(
        "tern.test=virtio-net tern.net_timeout_ms=20000",
        &["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0"],
        None,
        T,
    );
    assert_line(&run, "TERN virtio-net arp peer_mac=52:55:0a:00:02:02");
    passed(&run, "TERN test=virtio-net result=pass tx=2 rx=2 arp=ok ping=ok transport=mmio");
    let run = boot_pcie(
        "tern.test=virtio-net tern.virtio=pci tern.net_ping=0 tern.net_timeout_ms=20000",
        &["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"],
        T,
    );
    passed(&run, "TERN test=virtio-net result=pass tx=1 rx=1 arp=ok transport=pci");
}

#[test]
fn balloon_inflates() {
    if !qemu_usable() {
        return;
    }
    let run = boot("tern.test=virtio-balloon tern.balloon_pages=1000", &["-device", "virtio-balloon-device"], None, T);
    passed(&run, "TERN test=virtio-balloon result=pass pages=1000 transport=mmio");
    let run = boot_pcie("tern.test=virtio-balloon tern.virtio=pci", &["-device", "virtio-balloon-pci"], T);
    passed(&run, "TERN test=virtio-balloon result=pass pages=256 transport=pci");
}
