//! `tern img`: qemu-img compatible front end over the `image` crate.
//!
//! Subcommands, options and exit codes follow qemu-img so existing scripts
//! work unchanged; errors are one line, `tern img: <what>: <why>`, exit 1
//! (`check` and `compare` have their own codes, documented there).

mod args;
mod bench;
mod check;
mod compare;
mod convert;
mod create;
mod info;
mod rebase;
mod snapshot;

use std::path::Path;

use image::{BlockBackend, Format};

/// Everything after `tern img` is parsed here with qemu-img's conventions.
#[derive(clap::Args)]
pub struct ImgArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// An error to print and the exit code to return.
#[derive(Debug)]
pub struct ImgError {
    pub msg: String,
    pub code: i32,
}

impl ImgError {
    pub fn new(msg: impl Into<String>) -> Self {
        ImgError { msg: msg.into(), code: 1 }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        ImgError { msg: msg.into(), code: 1 }
    }
    pub fn with_code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
    /// `<what>: <engine error>`.
    pub fn ctx(what: impl std::fmt::Display, e: image::Error) -> Self {
        ImgError::new(format!("{what}: {e}"))
    }
}

pub type Res<T> = Result<T, ImgError>;

const USAGE: &str = "usage: tern img <command> [options]
commands (as in qemu-img):
  create [-f fmt] [-o options] [-b backing [-F backing_fmt]] [-u] filename [size]
  info [-f fmt] [--output human|json] [--backing-chain] filename
  check [-f fmt] [--output human|json] [-r leaks|all] [-q] filename
  resize [-f fmt] [--shrink] [-q] filename [+|-]size
  convert [-c] [-p] [-n] [-f fmt] [-O output_fmt] [-o options] [-B backing] [-S sparse_size] [-m workers] [-W] src... dst
  snapshot [-l | -c name | -a name | -d name] filename
  rebase [-f fmt] [-u] [-p] -b backing [-F backing_fmt] filename
  commit [-f fmt] [-d] [-p] filename
  compare [-f fmt] [-F fmt] [-s] [-p] [-q] filename1 filename2
  map [-f fmt] [--output human|json] filename
  measure [--output human|json] [-O fmt] [-o options] [--size N | [-f fmt] filename]
  amend [-f fmt] -o options filename
  bench [-c count] [-d depth] [-f fmt] [-n] [-o offset] [-s buffer_size] [-S step] [-t cache] [-w] [--pattern=n] filename";

pub fn main(args: ImgArgs) -> i32 {
    let mut a = args.args;
    if a.is_empty() {
        eprintln!("tern img: missing command; try 'tern img --help'");
        return 1;
    }
    let cmd = a.remove(0);
    let r = match cmd.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return 0;
        }
        "-V" | "--version" => {
            println!("tern img version {} (qemu-img compatible)", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        "create" => create::create(&a),
        "info" => info::info(&a),
        "check" => check::check(&a),
        "resize" => create::resize(&a),
        "amend" => create::amend(&a),
        "convert" => convert::convert(&a),
        "snapshot" => snapshot::snapshot(&a),
        "rebase" => rebase::rebase(&a),
        "commit" => rebase::commit(&a),
        "compare" => compare::compare(&a),
        "map" => compare::map(&a),
        "measure" => compare::measure(&a),
        "bench" => bench::bench(&a),
        other => Err(ImgError::usage(format!("command '{other}' is not known; try 'tern img --help'"))),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern img: {}", e.msg);
            e.code
        }
    }
}

pub fn parse_format(f: Option<&str>) -> Res<Option<Format>> {
    match f {
        None => Ok(None),
        Some(s) => Format::from_name(s).map(Some).map_err(|e| ImgError::new(e.to_string())),
    }
}

/// Opens an image the way qemu-img does for a subcommand.
pub fn open_image(path: &str, fmt: Option<&str>, readonly: bool) -> Res<Box<dyn BlockBackend>> {
    let format = parse_format(fmt)?;
    image::open(Path::new(path), format, readonly).map_err(|e| open_error(path, e))
}

/// "could not open 'x': why" without repeating the path when the engine already named it.
pub fn open_error(path: &str, e: image::Error) -> ImgError {
    match e {
        image::Error::Io { .. } => ImgError::new(e.to_string()),
        e => ImgError::ctx(format!("could not open '{path}'"), e),
    }
}

/// Opens a qcow2 image directly (for qcow2-only operations).
pub fn open_qcow2(path: &str, fmt: Option<&str>, readonly: bool) -> Res<image::qcow2::Qcow2> {
    let format = match parse_format(fmt)? {
        Some(f) => f,
        None => image::probe(Path::new(path)).map_err(|e| open_error(path, e))?,
    };
    if format != Format::Qcow2 {
        return Err(ImgError::new(format!("'{path}': this operation needs a qcow2 image, not {}", format.name())));
    }
    image::qcow2::Qcow2::open(Path::new(path), readonly).map_err(|e| open_error(path, e))
}

/// qemu's size_to_str: three significant digits and a binary unit.
pub fn human_size(v: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    let mut x = v as f64;
    while x >= 1000.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    format!("{} {}", fmt_g3(x), UNITS[i])
}

/// printf("%0.3g").
pub fn fmt_g3(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let mag = x.abs().log10().floor() as i32;
    let decimals = (2 - mag).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// Progress output for `-p`: "    (12.34/100%)" rewritten in place.
pub struct Progress {
    enabled: bool,
    last: f64,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let p = Progress { enabled, last: -1.0 };
        p.print(0.0);
        p
    }
    fn print(&self, pct: f64) {
        if self.enabled {
            use std::io::Write;
            eprint!("\r    ({pct:.2}/100%)");
            let _ = std::io::stderr().flush();
        }
    }
    pub fn update(&mut self, done: u64, total: u64) {
        let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        if pct - self.last >= 1.0 || (pct >= 100.0 && self.last < 100.0) {
            self.last = pct;
            self.print(pct);
        }
    }
    pub fn finish(&mut self) {
        if self.enabled {
            self.print(100.0);
            eprintln!();
        }
    }
}

/// Parses `-o` option lists into (key, value) pairs; `help` is rejected with the list.
pub fn o_pairs(p: &args::Parsed) -> Res<Vec<(String, String)>> {
    args::parse_o(&p.vals("o"))
}
