//! Domain (VM) verbs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use manager::definition::{Disk, DiskFormat, MemSize, Nic, VmDefinition, parse_size_bytes};
use serde_json::{Value, json};

use super::output::{self, s};
use super::{CliError, CliResult, Conn, Dom, seg};

const OP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Include VMs that are not running.
    #[arg(long)]
    all: bool,
    /// Only print names.
    #[arg(long)]
    name: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct DefineArgs {
    /// TOML definition, or libvirt domain XML.
    file: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct UndefineArgs {
    domain: String,
    /// Also delete the pool volumes its disks use.
    #[arg(long)]
    remove_storage: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    domain: String,
    /// Attach to the console after starting.
    #[arg(long)]
    console: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct ShutdownArgs {
    domain: String,
    /// Seconds to wait for the guest before destroying it.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    domain: String,
    /// Replay the console log from this byte offset before live output.
    #[arg(long, value_name = "OFFSET")]
    from: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct DomstateArgs {
    domain: String,
    /// Also print why it is in that state.
    #[arg(long)]
    reason: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct AutostartArgs {
    domain: String,
    #[arg(long)]
    disable: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct VcpupinArgs {
    domain: String,
    vcpu: u32,
    /// Host CPUs, e.g. 0-3,6 or ^2.
    cpulist: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct SetmemArgs {
    domain: String,
    /// New current memory (virsh habit: a bare number is KiB; or 512M, 1G).
    size: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    domain: String,
    /// libvirt domain XML instead of TOML.
    #[arg(long)]
    xml: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// libvirt domain XML file.
    file: PathBuf,
    /// Print the converted TOML instead of defining it.
    #[arg(long)]
    print: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    name: String,
    /// Memory in MiB (or with a unit: 512M, 2G).
    #[arg(long, default_value = "512")]
    memory: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// size=GiB[,pool=P][,format=raw|qcow2] | vol=POOL/VOL | path=FILE[,format=F][,readonly=on]
    #[arg(long)]
    disk: Vec<String>,
    /// bridge=BR | network=NAME | tap=TAP, optionally ,mac=MAC
    #[arg(long)]
    network: Vec<String>,
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long)]
    cmdline: Option<String>,
    /// Use an existing disk image as the first disk.
    #[arg(long, value_name = "DISK")]
    import: Option<PathBuf>,
    #[arg(long, default_value = "host")]
    cpu_model: String,
    #[arg(long)]
    autostart: bool,
    /// Define only; do not start.
    #[arg(long)]
    no_start: bool,
    /// Attach to the console once started.
    #[arg(long)]
    console: bool,
    #[command(flatten)]
    conn: Conn,
}

fn vm_path(d: &str) -> String {
    format!("/1.0/vms/{}", seg(d))
}

pub fn list(a: ListArgs) -> CliResult {
    let c = a.conn.client()?;
    let path = if a.all { "/1.0/vms?all=1" } else { "/1.0/vms?active=1" };
    let vms = c.get(path)?;
    let vms = vms.as_array().cloned().unwrap_or_default();
    if a.conn.json {
        output::json(&Value::Array(vms));
        return Ok(());
    }
    if a.name {
        vms.iter().for_each(|v| println!("{}", s(&v["name"])));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                s(&v["pid"]),
                s(&v["name"]),
                s(&v["state"]),
                s(&v["vcpus"]),
                format!("{} MiB", s(&v["memory_mib"])),
                if v["autostart"] == json!(true) { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    output::table(&["Id", "Name", "State", "vCPUs", "Memory", "Autostart"], &rows);
    Ok(())
}

/// TOML as-is, or libvirt XML converted (reporting what was skipped).
fn definition_text(file: &PathBuf) -> Result<String, CliError> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if text.trim_start().starts_with('<') {
        let imp = manager::libvirt::import(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for sk in &imp.skipped {
            eprintln!("skipped: {sk}");
        }
        return Ok(imp.definition.to_toml());
    }
    Ok(text)
}

fn do_define(conn: &Conn, text: String, from: &str) -> CliResult {
    let c = conn.client()?;
    let r = c.request("POST", "/1.0/vms", Some(&json!({ "toml": text })))?;
    if conn.json {
        output::json(&r);
    } else {
        println!("Domain '{}' defined from {from}", s(&r["name"]));
    }
    Ok(())
}

pub fn define(a: DefineArgs) -> CliResult {
    let text = definition_text(&a.file)?;
    do_define(&a.conn, text, &a.file.display().to_string())
}

pub fn import(a: ImportArgs) -> CliResult {
    let xml = std::fs::read_to_string(&a.file).map_err(|e| format!("cannot read {}: {e}", a.file.display()))?;
    let imp = manager::libvirt::import(&xml).map_err(|e| format!("{}: {e}", a.file.display()))?;
    for sk in &imp.skipped {
        eprintln!("skipped: {sk}");
    }
    if a.print {
        print!("{}", imp.definition.to_toml());
        return Ok(());
    }
    do_define(&a.conn, imp.definition.to_toml(), &a.file.display().to_string())
}

pub fn undefine(a: UndefineArgs) -> CliResult {
    let c = a.conn.client()?;
    let q = if a.remove_storage { "?remove_storage=1" } else { "" };
    let r = c.request("DELETE", &format!("{}{q}", vm_path(&a.domain)), None)?;
    if a.conn.json {
        output::json(&r);
    } else {
        for v in r["removed_volumes"].as_array().into_iter().flatten() {
            println!("Volume '{}' removed.", s(v));
        }
        println!("Domain '{}' has been undefined", a.domain);
    }
    Ok(())
}

fn state_change(conn: &Conn, domain: &str, body: Value) -> Result<Value, CliError> {
    let c = conn.client()?;
    let r = c.request("PUT", &format!("{}/state", vm_path(domain)), Some(&body))?;
    if r.get("status").is_some() && r.get("id").is_some() {
        return Ok(c.wait_operation(&r, OP_TIMEOUT)?);
    }
    Ok(r)
}

pub fn start(a: StartArgs) -> CliResult {
    let r = state_change(&a.conn, &a.domain, json!({"action": "start"}))?;
    if a.conn.json {
        output::json(&r);
    } else {
        println!("Domain '{}' started", a.domain);
    }
    if a.console {
        let from = r["console_offset"].as_u64();
        return super::term::attach(&a.conn, &a.domain, from);
    }
    Ok(())
}

pub fn shutdown(a: ShutdownArgs, action: &str) -> CliResult {
    let r = state_change(&a.conn, &a.domain, json!({"action": action, "timeout": a.timeout}))?;
    if a.conn.json {
        output::json(&r);
    } else if action == "reboot" {
        println!("Domain '{}' is being rebooted", a.domain);
    } else if r["forced"] == json!(true) {
        println!("Domain '{}' ignored the power button for {}s and was destroyed", a.domain, a.timeout);
    } else {
        println!("Domain '{}' is shut off", a.domain);
    }
    Ok(())
}

pub fn simple_action(a: Dom, action: &str) -> CliResult {
    let r = state_change(&a.conn, &a.domain, json!({ "action": action }))?;
    if a.conn.json {
        output::json(&r);
    } else {
        let done = match action {
            "destroy" => "destroyed",
            "suspend" => "suspended",
            _ => "resumed",
        };
        println!("Domain '{}' {done}", a.domain);
    }
    Ok(())
}

pub fn console(a: ConsoleArgs) -> CliResult {
    super::term::attach(&a.conn, &a.domain, a.from)
}

pub fn edit(a: Dom) -> CliResult {
    let c = a.conn.client()?;
    let v = c.get(&vm_path(&a.domain))?;
    let name = s(&v["name"]);
    let before = s(&v["toml"]);
    let dir = std::env::temp_dir().join(format!("tern-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, &before).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status =
        std::process::Command::new("sh").arg("-c").arg(format!("{editor} \"$1\"")).arg("sh").arg(&file).status();
    let after = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(st) if st.success() => {}
        Ok(st) => return Err(format!("editor `{editor}` exited with {st}; definition of '{name}' not changed").into()),
        Err(e) => return Err(format!("cannot run editor `{editor}`: {e}").into()),
    }
    if after == before {
        println!("Domain '{name}' definition not changed.");
        return Ok(());
    }
    match c.request("PUT", &vm_path(&name), Some(&json!({ "toml": after }))) {
        Ok(_) => {
            println!("Domain '{name}' definition edited.");
            Ok(())
        }
        Err(e) => Err(format!("{e}; the definition of '{name}' was not changed").into()),
    }
}

pub fn dominfo(a: Dom) -> CliResult {
    let v = a.conn.client()?.get(&vm_path(&a.domain))?;
    if a.conn.json {
        output::json(&v);
        return Ok(());
    }
    let cpu = v["cpu_time_ns"].as_u64().map(|n| format!("{:.1}s", n as f64 / 1e9)).unwrap_or("-".into());
    let rss = v["rss_kib"].as_u64().map(|k| format!("{k} KiB")).unwrap_or("-".into());
    let rows = [
        ("Id", s(&v["pid"])),
        ("Name", s(&v["name"])),
        ("UUID", s(&v["uuid"])),
        ("State", s(&v["state"])),
        ("Reason", s(&v["reason"])),
        ("CPU(s)", s(&v["vcpus"])),
        ("CPU time", cpu),
        ("Max memory", format!("{} MiB", s(&v["memory_mib"]))),
        ("Host RSS", rss),
        ("CPU model", s(&v["definition"]["cpu_model"])),
        ("Autostart", if v["autostart"] == json!(true) { "enable".into() } else { "disable".into() }),
    ];
    for (k, val) in rows {
        println!("{:<15} {val}", format!("{k}:"));
    }
    Ok(())
}

pub fn domstate(a: DomstateArgs) -> CliResult {
    let v = a.conn.client()?.get(&vm_path(&a.domain))?;
    if a.conn.json {
        output::json(&json!({"state": v["state"], "reason": v["reason"]}));
    } else if a.reason {
        println!("{} ({})", s(&v["state"]), s(&v["reason"]));
    } else {
        println!("{}", s(&v["state"]));
    }
    Ok(())
}

pub fn domstats(a: Dom) -> CliResult {
    let v = a.conn.client()?.get(&format!("{}/stats", vm_path(&a.domain)))?;
    if a.conn.json {
        output::json(&v);
        return Ok(());
    }
    println!("Domain: '{}'", s(&v["name"]));
    println!("  state.state={}", s(&v["state"]));
    println!("  cpu.time={}", s(&v["cpu_time_ns"]));
    println!("  balloon.maximum={}", v["memory_mib"].as_u64().map(|m| m * 1024).unwrap_or(0));
    let c = &v["counters"];
    if let Some(b) = c["balloon_mib"].as_u64() {
        println!("  balloon.current={}", (c["memory_mib"].as_u64().unwrap_or(0).saturating_sub(b)) * 1024);
    }
    println!("  balloon.rss={}", s(&v["rss_kib"]));
    for (i, ns) in c["vcpu_run_ns"].as_array().into_iter().flatten().enumerate() {
        println!("  vcpu.{i}.time={}", s(ns));
    }
    for (i, exits) in c["vcpu_exits"].as_array().into_iter().flatten().enumerate() {
        for (k, n) in exits.as_object().into_iter().flatten() {
            println!("  vcpu.{i}.exits.{k}={}", s(n));
        }
    }
    for (dev, counters) in c["devices"].as_object().into_iter().flatten() {
        for (k, n) in counters.as_object().into_iter().flatten() {
            println!("  {dev}.{k}={}", s(n));
        }
    }
    Ok(())
}

pub fn autostart(a: AutostartArgs) -> CliResult {
    let c = a.conn.client()?;
    c.request("PUT", &format!("{}/autostart", vm_path(&a.domain)), Some(&json!({"enabled": !a.disable})))?;
    println!("Domain '{}' {} autostart", a.domain, if a.disable { "unmarked as" } else { "marked as" });
    Ok(())
}

pub fn vcpupin(a: VcpupinArgs) -> CliResult {
    let cpus = manager::libvirt::parse_cpuset(&a.cpulist)?;
    if cpus.is_empty() {
        return Err(format!("cpulist `{}` selects no CPU", a.cpulist).into());
    }
    let r = a.conn.client()?.request(
        "POST",
        &format!("{}/vcpupin", vm_path(&a.domain)),
        Some(&json!({"vcpu": a.vcpu, "cpus": cpus})),
    )?;
    if a.conn.json {
        output::json(&r);
    } else if let Some(e) = r["live_error"].as_str() {
        eprintln!("warning: saved in the definition (applies at the next start); not applied live: {e}");
    }
    Ok(())
}

pub fn setmem(a: SetmemArgs) -> CliResult {
    let bytes = parse_size_bytes(&a.size, 1024).map_err(|e| format!("size: {e}"))?;
    let mib = bytes >> 20;
    let r =
        a.conn.client()?.request("POST", &format!("{}/memory", vm_path(&a.domain)), Some(&json!({ "mib": mib })))?;
    if a.conn.json {
        output::json(&r);
    }
    Ok(())
}

pub fn dump(a: DumpArgs) -> CliResult {
    let v = a.conn.client()?.get(&vm_path(&a.domain))?;
    let text = s(&v["toml"]);
    if a.xml {
        let def = VmDefinition::from_toml(&text).map_err(|e| e.to_string())?;
        print!("{}", manager::libvirt::export(&def));
    } else if a.conn.json {
        output::json(&v["definition"]);
    } else {
        print!("{text}");
    }
    Ok(())
}

pub fn events(a: EventsArgs) -> CliResult {
    let c = a.conn.client()?;
    let (mut r, _w) = c.open_stream("/1.0/events", false)?;
    let mut pending = Vec::new();
    let mut seen = 0;
    while let Some(ev) = manager::client::read_event(&mut r, &mut pending)? {
        if ev["type"] == "heartbeat" {
            continue;
        }
        println!("{ev}");
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}

pub fn completions(a: CompletionsArgs) -> i32 {
    use clap::CommandFactory;
    let mut cmd = crate::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "tern", &mut std::io::stdout());
    0
}

/// Parse "k=v,k=v" option strings (virt-install style).
fn kv(spec: &str, what: &str) -> Result<Vec<(String, String)>, CliError> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::Msg(format!("--{what} `{spec}`: expected key=value, got `{p}`")))
        })
        .collect()
}

pub fn create(a: CreateArgs) -> CliResult {
    let mem = MemSize::parse(&a.memory).map_err(|e| format!("--memory: {e}"))?;
    let mut def = VmDefinition::new(&a.name, mem.0);
    def.vcpus = a.vcpus;
    def.cpu_model = a.cpu_model.clone();
    def.autostart = a.autostart;
    def.boot.kernel = a.kernel.clone();
    def.boot.initrd = a.initrd.clone();
    def.boot.cmdline = a.cmdline.clone();
    let c = a.conn.client()?;
    if let Some(p) = &a.import {
        let p = std::path::absolute(p).map_err(|e| format!("--import: {e}"))?;
        def.disks.push(Disk { path: Some(p), ..Default::default() });
    }
    let mut created_vols = Vec::new();
    for (i, spec) in a.disk.iter().enumerate() {
        let mut d = Disk::default();
        let mut size = None;
        let mut pool = "default".to_string();
        for (k, v) in kv(spec, "disk")? {
            match k.as_str() {
                "size" => size = Some(parse_size_bytes(&v, 1 << 30).map_err(|e| format!("--disk size: {e}"))?),
                "pool" => pool = v,
                "vol" => d.vol = Some(v),
                "path" => d.path = Some(std::path::absolute(&v).map_err(|e| format!("--disk path: {e}"))?),
                "format" => {
                    d.format = Some(match v.as_str() {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        o => return Err(format!("--disk format `{o}`: use raw or qcow2").into()),
                    })
                }
                "readonly" => d.readonly = matches!(v.as_str(), "on" | "yes" | "true"),
                o => {
                    return Err(
                        format!("--disk: unknown option `{o}` (size, pool, vol, path, format, readonly)").into()
                    );
                }
            }
        }
        if let Some(bytes) = size {
            if d.vol.is_some() || d.path.is_some() {
                return Err("--disk: size= creates a new volume; do not combine it with vol= or path="
                    .to_string()
                    .into());
            }
            let fmt = d.format.unwrap_or(DiskFormat::Qcow2);
            let vol = format!("{}-disk{i}.{fmt}", a.name);
            c.request(
                "POST",
                &format!("/1.0/pools/{}/volumes", seg(&pool)),
                Some(&json!({"name": vol, "capacity": bytes, "format": fmt})),
            )?;
            created_vols.push(format!("{pool}/{vol}"));
            d.vol = Some(format!("{pool}/{vol}"));
            d.format = Some(fmt);
        }
        def.disks.push(d);
    }
    for spec in &a.network {
        let mut n = Nic { model: "virtio".into(), ..Default::default() };
        for (k, v) in kv(spec, "network")? {
            match k.as_str() {
                "bridge" => n.bridge = Some(v),
                "network" => n.network = Some(v),
                "tap" => n.tap = Some(v),
                "mac" => n.mac = Some(v),
                "model" => n.model = v,
                o => return Err(format!("--network: unknown option `{o}` (bridge, network, tap, mac, model)").into()),
            }
        }
        def.nics.push(n);
    }
    def.fill_defaults();
    if let Err(e) = def.validate() {
        return Err(format!("{e}").into());
    }
    let r = c.request("POST", "/1.0/vms", Some(&json!({"toml": def.to_toml()})));
    if let Err(e) = r {
        for v in created_vols {
            let (p, n) = v.split_once('/').unwrap_or(("default", &v));
            let _ = c.request("DELETE", &format!("/1.0/pools/{}/volumes/{}", seg(p), seg(n)), None);
        }
        return Err(e.into());
    }
    println!("Domain '{}' defined", a.name);
    if a.no_start {
        return Ok(());
    }
    start(StartArgs { domain: a.name, console: a.console, conn: a.conn })
}
