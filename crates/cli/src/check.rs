//! `tern check`: can this host run VMs, and how well? The role of libvirt's
//! `virt-host-validate`: one line per check, `PASS|WARN|FAIL  <check>:
//! <detail>[ — fix: <how>]`, or `--json`. Exit status 0 when nothing FAILs.
//!
//! FAIL means `tern run` cannot work (no usable /dev/kvm, wrong API, a
//! capability the VMM relies on is missing). WARN means it works with less:
//! a software KVM backend (PVM), no hugepages, no vhost (userspace virtio is
//! used), no IOMMU (no passthrough), no io_uring, cgroup v1.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// The only KVM API version there has ever been (KVM_GET_API_VERSION).
const KVM_API_VERSION: i32 = 12;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The KVM device node to check (the VMM honours the same variable).
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm", env = "TERN_KVM_DEVICE")]
    pub kvm_device: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct CheckResult {
    status: Status,
    check: String,
    detail: String,
    fix: Option<String>,
}

/// What executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    /// Intel VT-x (kvm_intel).
    Vmx,
    /// AMD-V (kvm_amd).
    Svm,
    /// PVM: KVM without hardware virtualization (kvm_pvm).
    Pvm,
    /// /dev/kvm works but the CPU shows neither vmx nor svm and no known
    /// software module is loaded.
    Software,
    /// No KVM.
    None,
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    pass: usize,
    warn: usize,
    fail: usize,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    ok: bool,
    backend: Backend,
    summary: Summary,
    checks: Vec<CheckResult>,
}

#[derive(Default)]
struct Checks(Vec<CheckResult>);

impl Checks {
    fn add(&mut self, status: Status, check: &str, detail: impl Into<String>, fix: Option<&str>) {
        self.0.push(CheckResult {
            status,
            check: check.to_string(),
            detail: detail.into(),
            fix: fix.map(str::to_string),
        });
    }
    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.add(Status::Pass, check, detail, None);
    }
    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: &str) {
        self.add(Status::Warn, check, detail, Some(fix));
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: &str) {
        self.add(Status::Fail, check, detail, Some(fix));
    }
}

pub fn main(args: CheckArgs) -> i32 {
    let report = run_checks(&args.kvm_device);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("tern check: cannot encode the report as JSON: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", render_text(&report.checks));
    }
    if report.ok { 0 } else { 1 }
}

fn run_checks(kvm_device: &Path) -> Report {
    let mut c = Checks::default();
    let kvm = check_kvm_device(&mut c, kvm_device);
    let backend = check_backend(&mut c, kvm.is_some());
    check_kvm_api_and_caps(&mut c, kvm.as_ref());
    check_hugepages(&mut c);
    check_networking(&mut c);
    check_vhost(&mut c);
    check_passthrough(&mut c);
    check_io_uring(&mut c);
    check_cgroups(&mut c);
    let count = |s| c.0.iter().filter(|r| r.status == s).count();
    let summary = Summary { pass: count(Status::Pass), warn: count(Status::Warn), fail: count(Status::Fail) };
    Report { ok: summary.fail == 0, backend, summary, checks: c.0 }
}

/// Aligned lines: the status, then `<check>:` padded to the longest check.
fn render_text(checks: &[CheckResult]) -> String {
    let width = checks.iter().map(|r| r.check.chars().count() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for r in checks {
        let name = format!("{}:", r.check);
        out.push_str(&format!("{}  {name:<width$} {}", r.status.label(), r.detail));
        if let Some(fix) = &r.fix {
            out.push_str(&format!(" — fix: {fix}"));
        }
        out.push('\n');
    }
    out
}

// ---- KVM ----

fn check_kvm_device(c: &mut Checks, path: &Path) -> Option<Kvm> {
    let name = path.display().to_string();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "absent".to_string()
            } else {
                format!("not accessible ({e})")
            };
            c.fail(
                &name,
                what,
                "load the KVM module (modprobe kvm_intel, kvm_amd or kvm_pvm) and enable virtualization in the firmware",
            );
            return None;
        }
    };
    if !meta.file_type().is_char_device() {
        c.fail(
            &name,
            "exists but is not a character device",
            "remove it and reload the KVM module (udev recreates it)",
        );
        return None;
    }
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(path) {
        c.fail(
            &name,
            format!("cannot be opened read-write ({e})"),
            "run as root, or add your user to the kvm group (usermod -aG kvm $USER) and log in again",
        );
        return None;
    }
    let cpath = match CString::new(path.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => {
            c.fail(&name, "path contains a NUL byte", "pass a valid path");
            return None;
        }
    };
    match Kvm::new_with_path(&cpath) {
        Ok(kvm) => {
            c.pass(&name, "present, read-write");
            Some(kvm)
        }
        Err(e) => {
            c.fail(&name, format!("open failed: {e}"), "check the KVM module loaded correctly (dmesg)");
            None
        }
    }
}

/// Flags on the first `flags` line of /proc/cpuinfo.
fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
        || fs::read_to_string("/proc/modules")
            .map(|m| m.lines().any(|l| l.split_whitespace().next() == Some(name)))
            .unwrap_or(false)
}

/// The backend, from the CPU flags, the KVM modules present, and whether
/// /dev/kvm worked (a built-in kvm_intel/kvm_amd shows no module).
fn classify_backend(flags: &[String], loaded: impl Fn(&str) -> bool, kvm_usable: bool) -> Backend {
    let has = |f: &str| flags.iter().any(|x| x == f);
    if loaded("kvm_pvm") {
        Backend::Pvm
    } else if has("vmx") && (loaded("kvm_intel") || kvm_usable) {
        Backend::Vmx
    } else if has("svm") && (loaded("kvm_amd") || kvm_usable) {
        Backend::Svm
    } else if kvm_usable {
        Backend::Software
    } else {
        Backend::None
    }
}

const SLOW_BACKEND: &str = "software backend: kernel-mode guest code is emulated, expect slow boots";

fn check_backend(c: &mut Checks, kvm_usable: bool) -> Backend {
    let flags = cpu_flags(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let nested = if flags.iter().any(|f| f == "hypervisor") { "; this host is itself a VM" } else { "" };
    let backend = classify_backend(&flags, module_loaded, kvm_usable);
    let check = "virtualization backend";
    let hw_fix = "use a host with VT-x/AMD-V (or nested virtualization enabled) for full speed";
    match backend {
        Backend::Vmx => c.pass(check, format!("hardware: Intel VT-x (kvm_intel{nested})")),
        Backend::Svm => c.pass(check, format!("hardware: AMD-V (kvm_amd{nested})")),
        Backend::Pvm => c.warn(check, format!("PVM (kvm_pvm, no VT-x/AMD-V{nested}); {SLOW_BACKEND}"), hw_fix),
        Backend::Software => {
            c.warn(check, format!("/dev/kvm works without a vmx/svm CPU flag{nested}; {SLOW_BACKEND}"), hw_fix)
        }
        Backend::None => {
            let has_hw = flags.iter().any(|f| f == "vmx" || f == "svm");
            if has_hw {
                c.fail(
                    check,
                    "the CPU supports virtualization but KVM is not usable",
                    "modprobe kvm_intel (or kvm_amd) and check dmesg",
                )
            } else {
                c.fail(
                    check,
                    format!("no VT-x/AMD-V CPU flag and no KVM module (checked /proc/cpuinfo, /sys/module{nested})"),
                    "enable virtualization in the firmware, enable nested virtualization on the outer hypervisor, or load kvm_pvm",
                )
            }
        }
    }
    backend
}

/// KVM capabilities the VMM cannot do without.
const REQUIRED_CAPS: &[(Cap, &str, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP", "in-kernel IOAPIC/PIC/LAPIC"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY", "guest memory slots"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR", "TSS placement"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID", "CPUID shaping"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD", "virtio doorbells without vCPU exits to user space"),
    (Cap::Irqfd, "KVM_CAP_IRQFD", "device interrupts from device threads"),
];

/// Capabilities whose absence costs a feature or speed.
const OPTIONAL_CAPS: &[(Cap, &str, &str, &str)] = &[
    (
        Cap::TscDeadlineTimer,
        "KVM_CAP_TSC_DEADLINE_TIMER",
        "TSC-deadline LAPIC timer",
        "guests fall back to the periodic LAPIC timer",
    ),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING", "GSI routing", "MSI routes unavailable: virtio-pci uses legacy INTx"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI", "MSI injection", "MSI-X unavailable: virtio-pci uses legacy INTx"),
];

fn check_kvm_api_and_caps(c: &mut Checks, kvm: Option<&Kvm>) {
    let Some(kvm) = kvm else {
        c.fail("KVM API", "not checked: the KVM device is not usable", "fix the KVM device line above first");
        return;
    };
    let version = kvm.get_api_version();
    if version == KVM_API_VERSION {
        c.pass("KVM API", format!("version {version}"));
    } else {
        c.fail(
            "KVM API",
            format!("version {version}, expected {KVM_API_VERSION}"),
            "use a host kernel with the stable KVM API (any Linux since 2.6.22)",
        );
    }
    for (cap, name, what) in REQUIRED_CAPS {
        if kvm.check_extension(*cap) {
            c.pass(name, format!("available ({what})"));
        } else {
            c.fail(
                name,
                format!("missing: {what}; tern run cannot start VMs"),
                "use a newer host kernel with full KVM support",
            );
        }
    }
    for (cap, name, what, consequence) in OPTIONAL_CAPS {
        if kvm.check_extension(*cap) {
            c.pass(name, format!("available ({what})"));
        } else {
            c.warn(name, format!("missing: {consequence}"), "use a newer host kernel or a hardware KVM backend");
        }
    }
    let recommended = kvm.get_nr_vcpus();
    let max = kvm.get_max_vcpus();
    c.pass("vCPUs per VM", format!("{recommended} recommended (KVM_CAP_NR_VCPUS), {max} maximum (KVM_CAP_MAX_VCPUS)"));
}

// ---- memory ----

/// A `Key: value [kB]` field of /proc/meminfo.
fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Mount points of file systems of type `fstype` in /proc/mounts.
fn mounts_of(mounts: &str, fstype: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == fstype).then(|| dir.to_string())
        })
        .collect()
}

fn check_hugepages(c: &mut Checks) {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = meminfo_field(&meminfo, "HugePages_Total").unwrap_or(0);
    let free = meminfo_field(&meminfo, "HugePages_Free").unwrap_or(0);
    let size_kib = meminfo_field(&meminfo, "Hugepagesize").unwrap_or(2048);
    let fix = "reserve some: echo 512 > /proc/sys/vm/nr_hugepages (1 GiB of 2 MiB pages), or hugepages=N on the kernel command line";
    if total == 0 {
        c.warn("hugepages", format!("none reserved ({size_kib} kB pages): --hugepages will fail"), fix);
    } else if free == 0 {
        c.warn("hugepages", format!("{total} reserved, none free"), fix);
    } else {
        c.pass("hugepages", format!("{free} of {total} free ({} MiB of {size_kib} kB pages)", free * size_kib / 1024));
    }
    check_thp(c, fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok().as_deref());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let points = mounts_of(&mounts, "hugetlbfs");
    if !points.is_empty() {
        c.pass("hugetlbfs", format!("mounted at {}", points.join(", ")));
    } else if fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("hugetlbfs") {
        c.warn(
            "hugetlbfs",
            "supported but not mounted (memfd MFD_HUGETLB still works)",
            "mkdir -p /dev/hugepages && mount -t hugetlbfs none /dev/hugepages",
        );
    } else {
        c.warn("hugetlbfs", "not supported by this kernel", "use a kernel built with CONFIG_HUGETLBFS");
    }
}

/// Guest RAM is anonymous memory advised for transparent huge pages; they
/// roughly double O_DIRECT disk bandwidth into guest buffers.
fn check_thp(c: &mut Checks, enabled: Option<&str>) {
    let fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled";
    let mode =
        enabled.and_then(|s| s.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']'])));
    match mode {
        Some(m @ ("always" | "madvise")) => {
            c.pass("transparent hugepages", format!("{m} (guest RAM gets 2 MiB pages)"))
        }
        Some(m) => {
            c.warn("transparent hugepages", format!("{m}: guest RAM stays on 4 KiB pages (slower disk I/O)"), fix)
        }
        None => c.warn("transparent hugepages", "not supported by this kernel: guest RAM stays on 4 KiB pages", fix),
    }
}

// ---- networking and vhost ----

fn check_char_device_rw(path: &str) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "absent".to_string(),
        _ => format!("not accessible ({e})"),
    })?;
    if !meta.file_type().is_char_device() {
        return Err("exists but is not a character device".into());
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map(|_| ())
        .map_err(|e| format!("cannot be opened read-write ({e})"))
}

fn check_networking(c: &mut Checks) {
    match check_char_device_rw("/dev/net/tun") {
        Ok(()) => c.pass("/dev/net/tun", "present, read-write (TAP networking)"),
        Err(e) => c.warn(
            "/dev/net/tun",
            format!("{e}: VMs can't have TAP networking"),
            "modprobe tun (and run as root or with CAP_NET_ADMIN)",
        ),
    }
    let bridge_in_use =
        fs::read_dir("/sys/class/net").map(|d| d.flatten().any(|e| e.path().join("bridge").exists())).unwrap_or(false);
    if module_loaded("bridge") || bridge_in_use {
        c.pass("bridge", "kernel bridge support present");
    } else {
        c.warn("bridge", "bridge module not loaded: bridged networking unavailable", "modprobe bridge");
    }
}

fn check_vhost(c: &mut Checks) {
    for (dev, what, module) in
        [("/dev/vhost-net", "virtio-net", "vhost_net"), ("/dev/vhost-vsock", "virtio-vsock", "vhost_vsock")]
    {
        match check_char_device_rw(dev) {
            Ok(()) => c.pass(dev, format!("present ({what} data path in the host kernel)")),
            Err(e) => c.warn(dev, format!("{e}: userspace {what} is used"), &format!("modprobe {module}")),
        }
    }
}

fn check_passthrough(c: &mut Checks) {
    let groups = fs::read_dir("/sys/kernel/iommu_groups").map(|d| d.flatten().count()).unwrap_or(0);
    if groups > 0 {
        c.pass("IOMMU", format!("{groups} IOMMU groups"));
    } else {
        c.warn(
            "IOMMU",
            "no IOMMU groups: device passthrough is unavailable",
            "enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt",
        );
    }
    match check_char_device_rw("/dev/vfio/vfio") {
        Ok(()) => c.pass("VFIO", "/dev/vfio/vfio present"),
        Err(e) => c.warn("VFIO", format!("/dev/vfio/vfio {e}: device passthrough is unavailable"), "modprobe vfio-pci"),
    }
}

// ---- io_uring and cgroups ----

/// Try to create a one-entry io_uring. Ok(()) or the errno text.
fn io_uring_probe() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; all-zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes `params`, a zeroed buffer of
    // the size the kernel expects; the returned fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` is the descriptor io_uring_setup just returned to us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn check_io_uring(c: &mut Checks) {
    let disabled =
        fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().and_then(|s| s.trim().parse::<u8>().ok());
    let fix = "use Linux 5.6 or newer with io_uring enabled (sysctl kernel.io_uring_disabled=0)";
    match (io_uring_probe(), disabled) {
        (Ok(()), _) => c.pass("io_uring", "available (asynchronous disk I/O)"),
        (Err(e), Some(d)) if d > 0 => c.warn(
            "io_uring",
            format!("disabled by kernel.io_uring_disabled={d} ({e}): disk I/O falls back to threads"),
            fix,
        ),
        (Err(e), _) => c.warn("io_uring", format!("unavailable ({e}): disk I/O falls back to threads"), fix),
    }
}

fn check_cgroups(c: &mut Checks) {
    let fix = "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only) to limit VMs' CPU and memory";
    if let Ok(controllers) = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        let list = controllers.split_whitespace().collect::<Vec<_>>().join(" ");
        c.pass("cgroup v2", format!("unified hierarchy at /sys/fs/cgroup (controllers: {list})"));
        return;
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v2 = mounts_of(&mounts, "cgroup2");
    if v2.is_empty() {
        c.warn("cgroup v2", "not mounted (cgroup v1 only)", fix);
    } else {
        c.warn("cgroup v2", format!("hybrid: cgroup2 at {} without the v1 controllers", v2.join(", ")), fix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn backend_classification() {
        let none = |_: &str| false;
        let only = |m: &'static str| move |x: &str| x == m;
        assert_eq!(classify_backend(&flags("fpu vmx sse"), only("kvm_intel"), true), Backend::Vmx);
        assert_eq!(classify_backend(&flags("fpu svm"), only("kvm_amd"), true), Backend::Svm);
        assert_eq!(classify_backend(&flags("fpu hypervisor"), only("kvm_pvm"), true), Backend::Pvm);
        assert_eq!(classify_backend(&flags("fpu hypervisor"), none, true), Backend::Software);
        assert_eq!(classify_backend(&flags("fpu vmx"), none, true), Backend::Vmx, "kvm_intel built in");
        assert_eq!(classify_backend(&flags("fpu vmx"), only("kvm_intel"), false), Backend::Vmx);
        assert_eq!(classify_backend(&flags("fpu vmx"), none, false), Backend::None, "module not loaded");
        assert_eq!(classify_backend(&flags("fpu"), none, false), Backend::None);
    }

    #[test]
    fn parses_cpuinfo_meminfo_and_mounts() {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu vme svm lm\nbugs\t\t: spectre\n";
        assert_eq!(cpu_flags(cpuinfo), flags("fpu vme svm lm"));
        let meminfo =
            "MemTotal:  100 kB\nHugePages_Total:      16\nHugePages_Free:        4\nHugepagesize:       2048 kB\n";
        assert_eq!(meminfo_field(meminfo, "HugePages_Total"), Some(16));
        assert_eq!(meminfo_field(meminfo, "HugePages_Free"), Some(4));
        assert_eq!(meminfo_field(meminfo, "Hugepagesize"), Some(2048));
        assert_eq!(meminfo_field(meminfo, "Missing"), None);
        let mounts = "none /dev/hugepages hugetlbfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(mounts_of(mounts, "hugetlbfs"), vec!["/dev/hugepages"]);
        assert_eq!(mounts_of(mounts, "cgroup2"), vec!["/sys/fs/cgroup"]);
        assert!(mounts_of(mounts, "ext4").is_empty());
    }

    #[test]
    fn transparent_hugepage_modes() {
        let status = |text: Option<&str>| {
            let mut c = Checks::default();
            check_thp(&mut c, text);
            c.0[0].status
        };
        assert_eq!(status(Some("always [madvise] never\n")), Status::Pass);
        assert_eq!(status(Some("[always] madvise never")), Status::Pass);
        assert_eq!(status(Some("always madvise [never]")), Status::Warn);
        assert_eq!(status(None), Status::Warn);
    }

    #[test]
    fn text_output_is_aligned_with_fix() {
        let mut c = Checks::default();
        c.pass("a", "fine");
        c.warn("longer name", "meh", "do this");
        let text = render_text(&c.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "PASS  a:           fine");
        assert_eq!(lines[1], "WARN  longer name: meh — fix: do this");
    }

    #[test]
    fn missing_device_fails_and_skips_caps() {
        let report = run_checks(Path::new("/nonexistent/kvm"));
        assert!(!report.ok);
        assert_eq!(report.checks[0].status, Status::Fail);
        assert_eq!(report.checks[0].detail, "absent");
        assert!(report.checks.iter().any(|r| r.check == "KVM API" && r.status == Status::Fail));
    }
}
