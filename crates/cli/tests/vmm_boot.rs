//! `tern run` against real KVM with the project's test guests.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn run_guest(args: &[&str]) -> (i32, String, String) {
    let dir = TempDir::new("boot");
    let elf = guest_elf(&dir);
    let out = run_with_timeout(tern().arg("run").arg("--kernel").arg(&elf).args(args), T);
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn demo_guest_boots_prints_and_powers_off() {
    let out = run_with_timeout(tern().arg("run"), T);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert!(stdout.contains("Tern demo guest"), "{stdout}");
    assert!(stdout.contains("TERN acpi rsdp=0xe0000 tables=FACP,APIC,MCFG,DSDT"), "{stdout}");
    assert!(stdout.contains("TERN test=demo result=pass"), "{stdout}");
}

#[test]
fn one_and_four_vcpus_come_online() {
    for cpus in ["1", "4"] {
        let (code, stdout, stderr) = run_guest(&["--cpus", cpus, "--cmdline", "tern.test=smp"]);
        assert!(stdout.contains(&format!("TERN test=smp result=pass cpus={cpus}")), "{stdout}\n{stderr}");
        // The guest signals pass through the debug-exit port with code 0.
        assert_eq!(code, 1, "{stdout}\n{stderr}");
        let online = stdout.lines().filter(|l| l.contains(" online")).count();
        assert_eq!(online.to_string(), cpus, "{stdout}");
    }
}

#[test]
fn debug_exit_port_sets_the_status() {
    let (code, stdout, _) = run_guest(&["--cmdline", "tern.test=exit:5"]);
    assert_eq!(code, 11, "(5 << 1) | 1; {stdout}");
}

#[test]
fn linux_64bit_boot_protocol_and_pvh_both_work() {
    let (code, stdout, _) = run_guest(&["--boot", "linux", "--cmdline", "tern.test=demo"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("protocol=linux64"), "{stdout}");
    let (code, stdout, _) = run_guest(&["--boot", "pvh", "--cmdline", "tern.test=demo"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("protocol=pvh"), "{stdout}");
}

#[test]
fn memory_pattern_over_all_ram() {
    let (code, stdout, stderr) = run_guest(&["--memory", "256M", "--cmdline", "tern.test=memory"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("TERN test=memory result=pass"), "{stdout}");
}

#[test]
fn reboot_policy_exit_ends_the_vmm() {
    for scenario in ["tern.test=reboot", "tern.test=triple-fault"] {
        let (code, stdout, stderr) = run_guest(&["--cmdline", scenario]);
        assert_eq!(code, 0, "{scenario}: {stdout}\n{stderr}");
        assert!(stderr.contains("guest requested a reboot; exiting"), "{stderr}");
    }
}

#[test]
fn reboot_policy_restart_boots_again() {
    let dir = TempDir::new("restart");
    let elf = guest_elf(&dir);
    let log = dir.join("serial.log");
    let child = tern()
        .args(["run", "--on-reboot", "restart", "--cmdline", "tern.test=reboot", "--kernel"])
        .arg(&elf)
        .arg("--serial")
        .arg(format!("file={}", log.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Each boot appends its banner line; three boots prove two restarts.
    let deadline = std::time::Instant::now() + T;
    loop {
        let s = std::fs::read_to_string(&log).unwrap_or_default();
        if s.matches("TERN test=reboot state=resetting").count() >= 1
            && std::fs::read_to_string(format!("/proc/{pid}/environ"))
                .map(|e| e.contains("TERN_RESTARTS=2"))
                .unwrap_or(false)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "guest did not restart twice");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    let out = child.wait_with_output().unwrap();
    assert!(text(&out.stderr).contains("restarting (restart #2)"), "{}", text(&out.stderr));
}

#[test]
fn internal_error_stops_with_a_report() {
    let (code, _, stderr) = run_guest(&["--cmdline", "tern.test=internal-error"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("KVM internal error"), "{stderr}");
    assert!(stderr.contains("rip=0x"), "{stderr}");
    assert!(stderr.contains("code at 0x"), "{stderr}");
}
