//! Building a VM from its configuration and running it to the end.
//!
//! Start: open KVM → guest memory → VM with irqchip/PIT → kernel, initrd →
//! devices on the buses → firmware tables and boot parameters → vCPUs with
//! shaped CPUID and boot registers → vCPU threads. Then the main thread
//! waits for a device event (reset, power-off, exit port), a vCPU failure or
//! a control request, and ends the VM accordingly.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::{Counters, Request, Response, RunState, VmInfo};
use arch::cpuid::{Topology, shape_cpuid};
use arch::regs::{boot_fpu, boot_msrs, boot_regs, boot_sregs, set_lapic_lints, write_boot_tables};
use devices::Bus;
use devices::legacy::{SerialInputThread, VmEvent, VmEvents, spawn_serial_input};
use hypervisor::Hypervisor;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{OnReboot, VmConfig};
use crate::interrupts::KvmInterrupts;
use crate::legacy::{LegacyDevices, add_legacy_devices};
use crate::loader::{BootProtocol, KernelSource, entry_mode, load_initrd, load_kernel, write_cmdline};
use crate::vcpu::{VcpuContext, VcpuControl, VcpuCounters, VcpuFailure, VcpuThread, install_kick_handler, spawn_vcpu};
use crate::virtio::{VirtioSet, attach_virtio};
use crate::{VmmError, exit_status};

/// How the VM ended, and the process status that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    PoweredOff,
    /// The guest asked for a reset and the policy is `exit`.
    Rebooted,
    /// The guest asked for a reset and the policy is `restart`.
    Restart,
    /// The debug-exit port was written; the status is already encoded.
    ExitPort(i32),
    /// Stopped through the control socket.
    Stopped,
    /// A vCPU stopped on a fault; the report says why.
    Fault(String),
}

impl VmOutcome {
    pub fn status(&self) -> i32 {
        match self {
            VmOutcome::PoweredOff | VmOutcome::Rebooted | VmOutcome::Stopped | VmOutcome::Restart => exit_status::OK,
            VmOutcome::ExitPort(s) => *s,
            VmOutcome::Fault(_) => exit_status::GUEST_FAULT,
        }
    }
}

/// A control request and where to send its answer.
pub struct ControlMsg {
    pub req: Request,
    pub reply: Sender<Response>,
}

pub struct Vm {
    config: VmConfig,
    kernel: KernelSource,
    started: Instant,
    /// Guest RAM: KVM maps it, so it must outlive the vCPUs (device threads
    /// hold their own references).
    _mem: vm_memory::GuestMemoryMmap,
    events: Arc<VmEvents>,
    control: Arc<VcpuControl>,
    threads: Vec<VcpuThread>,
    counters: Vec<Arc<VcpuCounters>>,
    failures: Receiver<VcpuFailure>,
    legacy: LegacyDevices,
    virtio: VirtioSet,
    serial_input: Option<SerialInputThread>,
    state: Arc<Mutex<RunState>>,
    device_names: Vec<String>,
    _vm: Arc<hypervisor::Vm>,
}

impl Vm {
    /// Build and start the VM: when this returns, the vCPUs are running.
    pub fn start(config: VmConfig, kernel: KernelSource, proto: BootProtocol) -> Result<Self, VmmError> {
        let hv = Hypervisor::new()?;
        let caps = hv.capabilities();
        config.validate(caps.max_vcpus.min(254) as u32)?;
        let supported = hv.supported_cpuid()?;
        // Check the CPU model against this host before building anything.
        shape_cpuid(&supported, &config.cpu_model, 0, Topology { vcpus: config.cpus }, caps.tsc_deadline_timer)?;

        let mem = crate::memory::create_guest_memory(config.memory_bytes, config.hugepages)?;
        let vm = Arc::new(hv.create_vm()?);
        vm.setup_irqchip()?;
        for (slot, region) in mem.iter().enumerate() {
            vm.set_memory_region(slot as u32, region.start_addr().0, region.len(), region.as_ptr() as u64, false)?;
        }

        let loaded = load_kernel(&mem, &kernel, proto)?;
        let initrd = match &config.initrd {
            Some(p) => Some(load_initrd(&mem, p, loaded.kernel_end, loaded.header.as_ref())?),
            None => None,
        };

        let interrupts = KvmInterrupts::new(vm.clone());
        let events = Arc::new(VmEvents::new().map_err(VmmError::Events)?);
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let legacy = add_legacy_devices(&mut pio, interrupts.as_ref(), &events, &config.serial, config.memory_bytes)?;
        let mut device_names: Vec<String> =
            vec!["serial0".into(), "i8042".into(), "cmos".into(), "acpi-pm".into(), "debug-exit".into()];
        let mut cmdline_extra: Vec<String> = Vec::new();
        let virtio = {
            let mut ctx = devices::DeviceContext {
                mem: vm_memory::GuestMemoryAtomic::new(mem.clone()),
                mmio_bus: &mut mmio,
                pio_bus: &mut pio,
                interrupts: interrupts.clone(),
                ioevents: interrupts.clone(),
                cmdline_extra: &mut cmdline_extra,
            };
            attach_virtio(&mut ctx, &config.virtio, config.pci, config.memory_bytes >> 20)?
        };
        device_names.extend(virtio.devices.iter().map(|d| format!("{} ({})", d.id(), d.location)));

        // Firmware tables and boot parameters.
        let e820 = arch::memory::e820_map(config.memory_bytes)?;
        arch::mptable::write_mptable(&mem, config.cpus)?;
        let rsdp = arch::acpi::write_acpi_tables(
            &mem,
            &arch::acpi::AcpiConfig {
                vcpus: config.cpus,
                pci: config.pci,
                ram_end: arch::memory::ram_end(config.memory_bytes),
            },
        )?;
        let (cmdline_addr, cmdline_len) = write_cmdline(&mem, &config.cmdline, &cmdline_extra)?;
        let info = arch::boot::BootInfo { cmdline_addr, cmdline_len, initrd, rsdp_addr: rsdp };
        let (start_info, zero_page) = if loaded.pvh {
            (arch::boot::write_pvh_start_info(&mem, &info, &e820)?, 0)
        } else {
            (0, arch::boot::write_zero_page(&mem, loaded.header, &info, &e820)?)
        };
        let mode = entry_mode(&loaded, start_info, zero_page);
        write_boot_tables(&mem, mode)?;

        // vCPUs.
        install_kick_handler().map_err(VmmError::Signal)?;
        let control = Arc::new(VcpuControl::default());
        let (fail_tx, failures) = channel();
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let mut vcpus = Vec::new();
        for id in 0..config.cpus {
            let vcpu = vm.create_vcpu(id)?;
            let cpuid = shape_cpuid(
                &supported,
                &config.cpu_model,
                id,
                Topology { vcpus: config.cpus },
                caps.tsc_deadline_timer,
            )?;
            vcpu.set_cpuid(&cpuid)?;
            if let Err(e) = vcpu.set_msrs(&boot_msrs()) {
                tracing::warn!("{e}; continuing with KVM's defaults");
            }
            vcpu.set_fpu(&boot_fpu())?;
            let mut lapic = vcpu.lapic()?;
            set_lapic_lints(&mut lapic.regs);
            vcpu.set_lapic(&lapic)?;
            if id == 0 {
                vcpu.set_sregs(&boot_sregs(vcpu.sregs()?, mode))?;
                vcpu.set_regs(&boot_regs(mode))?;
            }
            vcpus.push(vcpu);
        }
        let state = Arc::new(Mutex::new(RunState::Running));
        for vcpu in vcpus {
            let c = Arc::new(VcpuCounters::default());
            let pin = config.pins.iter().find(|(v, _)| *v == vcpu.id()).map(|(_, cpus)| cpus.clone());
            let ctx = VcpuContext {
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: mem.clone(),
                events: events.clone(),
                control: control.clone(),
                counters: c.clone(),
                failures: fail_tx.clone(),
                pin,
            };
            threads.push(spawn_vcpu(vcpu, ctx).map_err(VmmError::Thread)?);
            counters.push(c);
        }
        let serial_input = spawn_serial_input(&legacy.serial).map_err(crate::legacy::LegacyError::from)?;
        Ok(Self {
            config,
            kernel,
            started: Instant::now(),
            _mem: mem,
            events,
            control,
            threads,
            counters,
            failures,
            legacy,
            virtio,
            serial_input,
            state,
            device_names,
            _vm: vm,
        })
    }

    fn set_state(&self, s: RunState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn run_state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn info(&self) -> VmInfo {
        VmInfo {
            pid: std::process::id(),
            state: self.run_state(),
            vcpus: self.config.cpus,
            memory_mib: self.config.memory_bytes >> 20,
            kernel: Some(self.kernel.name()),
            cmdline: self.config.cmdline.clone(),
            cpu_model: self.config.cpu_model.to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            devices: self.device_names.clone(),
        }
    }

    pub fn counters(&self) -> Counters {
        let mut c = Counters { memory_mib: self.config.memory_bytes >> 20, ..Default::default() };
        for vc in &self.counters {
            let mut m: std::collections::BTreeMap<String, u64> =
                vc.exits.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.to_string(), *v)).collect();
            m.insert("io".into(), vc.io_exits.load(Ordering::Relaxed));
            c.vcpu_exits.push(m);
            c.vcpu_run_ns.push(vc.run_ns.load(Ordering::Relaxed));
            c.vcpu_rip.push(vc.last_rip.load(Ordering::Relaxed));
        }
        let s = &self.legacy.serial_counters;
        c.devices.insert(
            "serial0".into(),
            [
                ("bytes_out".to_string(), s.bytes_out.load(Ordering::Relaxed)),
                ("bytes_in".to_string(), s.bytes_in.load(Ordering::Relaxed)),
            ]
            .into(),
        );
        for d in &self.virtio.devices {
            c.devices.insert(d.id().to_string(), d.counters());
        }
        if let Some(b) = &self.virtio.balloon {
            c.balloon_mib = b.actual_mib();
        }
        c
    }

    fn pause_devices(&mut self, pause: bool) -> Result<(), String> {
        use migration::Pausable;
        for d in &mut self.virtio.devices {
            let r = if pause { d.pause() } else { d.resume() };
            r.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn handle(&mut self, req: Request) -> (Response, Option<VmOutcome>) {
        match req {
            Request::Info => (Response::ok(&self.info()), None),
            Request::Counters => (Response::ok(&self.counters()), None),
            Request::Pause => {
                if self.run_state() == RunState::Paused {
                    return (Response::err("VM is already paused"), None);
                }
                self.control.pause(&self.threads);
                if let Err(e) = self.pause_devices(true) {
                    return (Response::err(e), None);
                }
                self.set_state(RunState::Paused);
                (Response::empty(), None)
            }
            Request::Resume => {
                if self.run_state() != RunState::Paused {
                    return (Response::err("VM is not paused"), None);
                }
                if let Err(e) = self.pause_devices(false) {
                    return (Response::err(e), None);
                }
                self.control.resume();
                self.set_state(RunState::Running);
                (Response::empty(), None)
            }
            Request::PowerButton => {
                let enabled = self.legacy.acpi_pm.lock().unwrap_or_else(|e| e.into_inner()).press_power_button();
                if self.run_state() == RunState::Running {
                    self.set_state(RunState::ShuttingDown);
                }
                let r = serde_json::json!({ "delivered": enabled });
                (Response::ok(&r), None)
            }
            Request::Stop => (Response::empty(), Some(VmOutcome::Stopped)),
            Request::Balloon { target_mib } => match &self.virtio.balloon {
                None => (Response::err("this VM has no balloon device (start it with --balloon)"), None),
                Some(b) => match b.set_target_mib(target_mib) {
                    Ok(()) => (Response::empty(), None),
                    Err(e) => (Response::err(e.to_string()), None),
                },
            },
            Request::PinVcpu { vcpu, .. } if vcpu >= self.config.cpus => {
                (Response::err(format!("no vCPU {vcpu}: the VM has {}", self.config.cpus)), None)
            }
            Request::PinVcpu { vcpu, cpus } => {
                let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                if cpus.is_empty() || cpus.iter().any(|&c| c >= ncpu) {
                    return (Response::err(format!("host CPUs {cpus:?} are not all in 0..{ncpu}")), None);
                }
                *self.counters[vcpu as usize].pin_request.lock().unwrap_or_else(|e| e.into_inner()) = Some(cpus);
                crate::vcpu::kick(&self.threads[vcpu as usize]);
                (Response::empty(), None)
            }
        }
    }

    /// Wait for the VM to end, serving control requests meanwhile.
    pub fn run(mut self, control: &Receiver<ControlMsg>) -> VmOutcome {
        let outcome = loop {
            if let Ok(f) = self.failures.try_recv() {
                break VmOutcome::Fault(f.report);
            }
            match self.events.wait(Some(Duration::from_millis(20))) {
                Ok(Some(VmEvent::PowerOff)) => break VmOutcome::PoweredOff,
                Ok(Some(VmEvent::Exit(s))) => break VmOutcome::ExitPort(s),
                Ok(Some(VmEvent::Reset)) => {
                    break match self.config.on_reboot {
                        OnReboot::Exit => VmOutcome::Rebooted,
                        OnReboot::Restart => VmOutcome::Restart,
                    };
                }
                Ok(None) => {}
                Err(e) => break VmOutcome::Fault(format!("cannot wait for VM events: {e}")),
            }
            while let Ok(msg) = control.try_recv() {
                let (resp, end) = self.handle(msg.req);
                let _ = msg.reply.send(resp);
                if let Some(o) = end {
                    self.shutdown();
                    return o;
                }
            }
        };
        self.shutdown();
        outcome
    }

    fn shutdown(&mut self) {
        self.set_state(RunState::Stopped);
        // A paused VM must be released before its threads can see STOP.
        self.control.resume();
        self.control.stop(&mut self.threads);
        if let Some(t) = self.serial_input.take() {
            t.stop();
        }
    }
}
