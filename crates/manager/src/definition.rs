//! VM definitions: the human-editable TOML format the daemon persists, with
//! validation that names the offending field in a one-line error.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DefinitionError {
    #[error("definition: {0}")]
    Parse(String),
    #[error("definition field `{field}`: {msg}")]
    Invalid { field: String, msg: String },
}

fn invalid(field: impl Into<String>, msg: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid { field: field.into(), msg: msg.into() }
}

/// Memory size in MiB. Written as `"512M"`/`"2G"` or a plain number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSize(pub u64);

impl MemSize {
    /// Parse `512`, `512M`, `512MiB`, `2G`, `1T` (binary units; plain numbers are MiB).
    pub fn parse(s: &str) -> Result<Self, String> {
        parse_size_bytes(s, 1 << 20).and_then(|b| {
            if b % (1 << 20) != 0 { Err(format!("`{s}` is not a whole number of MiB")) } else { Ok(MemSize(b >> 20)) }
        })
    }
}

/// Parse a size with an optional binary suffix (K, M, G, T, with optional
/// `iB`/`B`); a bare number is multiplied by `default_unit`.
pub fn parse_size_bytes(s: &str, default_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (examples: 512M, 20G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("`{s}` has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1024) && self.0 > 0 {
            write!(f, "{}G", self.0 / 1024)
        } else {
            write!(f, "{}M", self.0)
        }
    }
}

impl Serialize for MemSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MemSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(MemSize(n)),
            Raw::S(s) => MemSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    None,
    Writeback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    Threads,
    IoUring,
}

/// One disk: either a pool volume (`vol = "pool/name"`) or a host path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoEngine>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// One NIC, attached to exactly one of: a named network, a host bridge (the
/// daemon creates a TAP and enslaves it) or an existing TAP device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default = "default_nic_model")]
    pub model: String,
}

fn default_nic_model() -> String {
    "virtio".into()
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel image (ELF vmlinux with a PVH note, or bzImage). Without one
    /// the VMM boots its built-in demo guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuPin {
    pub vcpu: u32,
    pub cpus: Vec<usize>,
}

/// What happens to the serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialMode {
    /// Logged to console.log and available to `tern console`.
    #[default]
    Console,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Mmio,
    Pci,
}

/// A persistent VM definition (what `define` stores and `dump` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    pub name: String,
    #[serde(default)]
    pub uuid: String,
    #[serde(default = "one")]
    pub vcpus: u32,
    pub memory: MemSize,
    #[serde(default, skip_serializing_if = "is_false")]
    pub hugepages: bool,
    #[serde(default = "default_cpu_model")]
    pub cpu_model: String,
    #[serde(default)]
    pub autostart: bool,
    #[serde(default)]
    pub serial: SerialMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(default = "yes")]
    pub balloon: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub rng: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default, rename = "vcpupin", skip_serializing_if = "Vec::is_empty")]
    pub vcpu_pins: Vec<VcpuPin>,
    #[serde(default, rename = "disk", skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, rename = "nic", skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_cpu_model() -> String {
    "host".into()
}

impl VmDefinition {
    /// A minimal definition (1 vCPU, the given memory, demo guest boot).
    pub fn new(name: &str, memory_mib: u64) -> Self {
        VmDefinition {
            name: name.into(),
            uuid: String::new(),
            vcpus: 1,
            memory: MemSize(memory_mib),
            hugepages: false,
            cpu_model: default_cpu_model(),
            autostart: false,
            serial: SerialMode::Console,
            transport: None,
            balloon: true,
            rng: false,
            vsock_cid: None,
            boot: Boot::default(),
            vcpu_pins: Vec::new(),
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    /// Parse and validate TOML text; fills in a UUID and NIC MACs if missing.
    pub fn from_toml(text: &str) -> Result<Self, DefinitionError> {
        let mut def: VmDefinition = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        def.fill_defaults();
        def.validate()?;
        Ok(def)
    }

    /// Parse TOML without filling defaults or validating (the caller does both).
    pub fn from_toml_raw(text: &str) -> Result<Self, DefinitionError> {
        toml::from_str(text).map_err(|e| toml_error(text, &e))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Generate the values a definition must have persistently (UUID, MACs).
    pub fn fill_defaults(&mut self) {
        if self.uuid.is_empty() {
            self.uuid = new_uuid();
        }
        for nic in &mut self.nics {
            if nic.mac.is_none() {
                let r = random_bytes::<3>();
                nic.mac = Some(format!("52:54:00:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2]));
            }
        }
    }

    pub fn validate(&self) -> Result<(), DefinitionError> {
        validate_name(&self.name).map_err(|m| invalid("name", m))?;
        if !is_uuid(&self.uuid) {
            return Err(invalid("uuid", format!("`{}` is not a UUID (8-4-4-4-12 hex digits)", self.uuid)));
        }
        if self.vcpus == 0 || self.vcpus > 255 {
            return Err(invalid("vcpus", format!("{} is out of range (1..=255)", self.vcpus)));
        }
        if self.memory.0 < 2 || self.memory.0 > (1 << 20) {
            return Err(invalid("memory", format!("{} is out of range (2M..1T)", self.memory)));
        }
        if self.cpu_model.is_empty() || self.cpu_model.contains(char::is_whitespace) {
            return Err(invalid("cpu_model", "must be host, baseline or a model name, with +feat/-feat after commas"));
        }
        // A cmdline without a kernel goes to the VMM's built-in guest.
        if self.boot.kernel.is_none() && self.boot.initrd.is_some() {
            return Err(invalid("boot.kernel", "an initrd needs a kernel"));
        }
        if self.boot.cmdline.as_ref().is_some_and(|c| c.contains('\n')) {
            return Err(invalid("boot.cmdline", "must be a single line"));
        }
        for (i, p) in self.vcpu_pins.iter().enumerate() {
            if p.vcpu >= self.vcpus {
                return Err(invalid(format!("vcpupin[{i}].vcpu"), format!("vCPU {} does not exist", p.vcpu)));
            }
            if p.cpus.is_empty() {
                return Err(invalid(format!("vcpupin[{i}].cpus"), "needs at least one host CPU"));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            match (&d.vol, &d.path) {
                (Some(v), None) => {
                    let ok =
                        v.split_once('/').is_some_and(|(p, n)| validate_name(p).is_ok() && validate_name(n).is_ok());
                    if !ok && validate_name(v).is_err() {
                        return Err(invalid(format!("disk[{i}].vol"), format!("`{v}` is not POOL/VOLUME or VOLUME")));
                    }
                }
                (None, Some(p)) if p.is_absolute() => {}
                (None, Some(p)) => {
                    return Err(invalid(format!("disk[{i}].path"), format!("`{}` must be absolute", p.display())));
                }
                _ => return Err(invalid(format!("disk[{i}]"), "needs exactly one of `vol` or `path`")),
            }
            let serial_ok =
                |s: &String| s.len() <= 20 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
            if d.serial.as_ref().is_some_and(|s| !serial_ok(s)) {
                return Err(invalid(format!("disk[{i}].serial"), "at most 20 characters [A-Za-z0-9_-]"));
            }
        }
        for (i, n) in self.nics.iter().enumerate() {
            let count = [&n.network, &n.bridge, &n.tap].iter().filter(|x| x.is_some()).count();
            if count != 1 {
                return Err(invalid(format!("nic[{i}]"), "needs exactly one of `network`, `bridge` or `tap`"));
            }
            for v in [&n.network, &n.bridge, &n.tap].into_iter().flatten() {
                if v.is_empty() || v.len() > 15 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    return Err(invalid(format!("nic[{i}]"), format!("`{v}` is not an interface name")));
                }
            }
            if let Some(m) = n.mac.as_ref().filter(|m| !is_mac(m)) {
                return Err(invalid(format!("nic[{i}].mac"), format!("`{m}` is not a unicast MAC address")));
            }
            if n.model != "virtio" {
                return Err(invalid(format!("nic[{i}].model"), format!("`{}` is not supported (virtio)", n.model)));
            }
        }
        Ok(())
    }
}

/// Turn a (multi-line) TOML error into one line with its line number.
fn toml_error(text: &str, e: &toml::de::Error) -> DefinitionError {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1;
            DefinitionError::Parse(format!("line {line}: {msg}"))
        }
        None => DefinitionError::Parse(msg),
    }
}

pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok { Ok(()) } else { Err(format!("`{name}` must be 1-64 characters [A-Za-z0-9._-], starting alphanumeric")) }
}

pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: getrandom writes at most `N` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        // Fall back to time-derived bytes; uniqueness, not secrecy, is the goal.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let seed = t ^ (u128::from(std::process::id()) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_roundtrips() {
        let text = r#"
name = "web1"
vcpus = 2
memory = "1G"
[boot]
kernel = "/boot/vmlinux"
cmdline = "console=ttyS0"
[[disk]]
vol = "default/web1.qcow2"
cache = "none"
io = "io_uring"
[[nic]]
bridge = "br0"
"#;
        let d = VmDefinition::from_toml(text).unwrap();
        assert_eq!(d.memory, MemSize(1024));
        assert!(is_uuid(&d.uuid));
        assert!(is_mac(d.nics[0].mac.as_ref().unwrap()));
        let again = VmDefinition::from_toml(&d.to_toml()).unwrap();
        assert_eq!(d, again);
    }

    #[test]
    fn errors_name_the_field_on_one_line() {
        let e = VmDefinition::from_toml("name = \"a\"\nmemory = 64\nvcpus = 0\n").unwrap_err().to_string();
        assert!(e.contains("`vcpus`"), "{e}");
        let e = VmDefinition::from_toml("name = \"a\"\nmemory = \"12Q\"\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains('\n'), "{e}");
        let e = VmDefinition::from_toml("name = \"a\"\nmemory = 64\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus") && !e.contains('\n'), "{e}");
        let e =
            VmDefinition::from_toml("name = \"a\"\nmemory = 64\n[[nic]]\nmac = \"01:00:00:00:00:01\"\ntap = \"t0\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("nic[0].mac"), "{e}");
        let e = VmDefinition::from_toml("name = \"a b\"\nmemory = 64\n").unwrap_err().to_string();
        assert!(e.contains("`name`"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("20G", 1), Ok(20 << 30));
        assert_eq!(parse_size_bytes("512", 1 << 20), Ok(512 << 20));
        assert!(parse_size_bytes("x", 1).is_err());
        assert_eq!(MemSize::parse("2GiB"), Ok(MemSize(2048)));
    }
}
