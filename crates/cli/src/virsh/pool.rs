//! Storage pool and volume verbs.

use std::path::PathBuf;

use clap::Args;
use manager::definition::{DiskFormat, parse_size_bytes};
use serde_json::{Value, json};

use super::output::{self, bytes, s};
use super::{CliResult, Conn, seg};

#[derive(Args, Debug)]
pub struct PoolArgs {
    pool: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct PoolListArgs {
    /// Include inactive pools.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    details: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct PoolDefineArgs {
    name: String,
    /// dir or logical.
    #[arg(value_parser = ["dir", "logical"])]
    kind: String,
    /// dir: the directory; logical: /dev/VG (default).
    #[arg(long)]
    target: Option<PathBuf>,
    /// logical: the volume group name (default: the pool name).
    #[arg(long)]
    source_name: Option<String>,
    /// logical: a physical volume to build the VG from (repeatable).
    #[arg(long)]
    source_dev: Vec<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct PoolAutostartArgs {
    pool: String,
    #[arg(long)]
    disable: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct VolListArgs {
    pool: String,
    #[arg(long)]
    details: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct VolArgs {
    /// Volume name, or POOL/NAME.
    vol: String,
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct VolCreateArgs {
    pool: String,
    name: String,
    /// Size, e.g. 20G (a bare number is bytes).
    capacity: String,
    #[arg(long, value_parser = ["raw", "qcow2"])]
    format: Option<String>,
    /// Backing volume (name in this pool, or an absolute path).
    #[arg(long)]
    backing_vol: Option<String>,
    #[arg(long, value_parser = ["raw", "qcow2"])]
    backing_vol_format: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct VolResizeArgs {
    vol: String,
    capacity: String,
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub struct VolCloneArgs {
    vol: String,
    new_name: String,
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

fn pool_path(p: &str) -> String {
    format!("/1.0/pools/{}", seg(p))
}

/// (pool, volume) from `--pool P VOL` or `P/VOL`.
fn vol_ref(vol: &str, pool: &Option<String>) -> (String, String) {
    match (pool, vol.split_once('/')) {
        (Some(p), _) => (p.clone(), vol.to_string()),
        (None, Some((p, v))) => (p.to_string(), v.to_string()),
        (None, None) => ("default".into(), vol.to_string()),
    }
}

fn vol_path(vol: &str, pool: &Option<String>) -> String {
    let (p, v) = vol_ref(vol, pool);
    format!("{}/volumes/{}", pool_path(&p), seg(&v))
}

fn fmt(f: &Option<String>) -> Option<DiskFormat> {
    f.as_deref().map(|f| if f == "qcow2" { DiskFormat::Qcow2 } else { DiskFormat::Raw })
}

fn size(s: &str) -> Result<u64, String> {
    parse_size_bytes(s, 1).map_err(|e| format!("capacity: {e}"))
}

pub fn pool_list(a: PoolListArgs) -> CliResult {
    let v = a.conn.client()?.get("/1.0/pools")?;
    let pools: Vec<Value> =
        v.as_array().into_iter().flatten().filter(|p| a.all || p["active"] == json!(true)).cloned().collect();
    if a.conn.json {
        output::json(&Value::Array(pools));
        return Ok(());
    }
    let yn = |v: &Value, y: &str, n: &str| if *v == json!(true) { y.to_string() } else { n.to_string() };
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let mut r = vec![s(&p["name"]), yn(&p["active"], "active", "inactive"), yn(&p["autostart"], "yes", "no")];
            if a.details {
                r.push(s(&p["type"]));
                r.push(s(&p["target"]));
                r.push(p["capacity"].as_u64().map(bytes).unwrap_or("-".into()));
                r.push(p["available"].as_u64().map(bytes).unwrap_or("-".into()));
            }
            r
        })
        .collect();
    if a.details {
        output::table(&["Name", "State", "Autostart", "Type", "Target", "Capacity", "Available"], &rows);
    } else {
        output::table(&["Name", "State", "Autostart"], &rows);
    }
    Ok(())
}

pub fn pool_define(a: PoolDefineArgs) -> CliResult {
    let target = match (&a.target, a.kind.as_str()) {
        (Some(t), _) => std::path::absolute(t).map_err(|e| format!("--target: {e}"))?,
        (None, "logical") => PathBuf::from(format!("/dev/{}", a.source_name.as_deref().unwrap_or(&a.name))),
        (None, _) => return Err("a dir pool needs --target DIRECTORY".to_string().into()),
    };
    let body = json!({
        "name": a.name, "type": a.kind, "target": target,
        "source_name": a.source_name, "source_devices": a.source_dev, "autostart": false,
    });
    let r = a.conn.client()?.request("POST", "/1.0/pools", Some(&body))?;
    if a.conn.json {
        output::json(&r);
    } else {
        println!("Pool {} defined", a.name);
    }
    Ok(())
}

pub fn pool_action(a: PoolArgs, action: &str) -> CliResult {
    let r = a.conn.client()?.request(
        "PUT",
        &format!("{}/state", pool_path(&a.pool)),
        Some(&json!({ "action": action })),
    )?;
    if a.conn.json {
        output::json(&r);
    } else {
        let done = match action {
            "start" => "started",
            "destroy" => "destroyed",
            _ => "refreshed",
        };
        println!("Pool {} {done}", a.pool);
    }
    Ok(())
}

pub fn pool_undefine(a: PoolArgs) -> CliResult {
    a.conn.client()?.request("DELETE", &pool_path(&a.pool), None)?;
    println!("Pool {} has been undefined", a.pool);
    Ok(())
}

pub fn pool_info(a: PoolArgs) -> CliResult {
    let p = a.conn.client()?.get(&pool_path(&a.pool))?;
    if a.conn.json {
        output::json(&p);
        return Ok(());
    }
    for (k, v) in [
        ("Name", s(&p["name"])),
        ("Type", s(&p["type"])),
        ("Target", s(&p["target"])),
        ("State", if p["active"] == json!(true) { "running".into() } else { "inactive".into() }),
        ("Autostart", if p["autostart"] == json!(true) { "yes".into() } else { "no".into() }),
        ("Capacity", p["capacity"].as_u64().map(bytes).unwrap_or("-".into())),
        ("Available", p["available"].as_u64().map(bytes).unwrap_or("-".into())),
    ] {
        println!("{:<12} {v}", format!("{k}:"));
    }
    Ok(())
}

pub fn pool_autostart(a: PoolAutostartArgs) -> CliResult {
    a.conn.client()?.request(
        "PUT",
        &format!("{}/autostart", pool_path(&a.pool)),
        Some(&json!({"enabled": !a.disable})),
    )?;
    println!("Pool {} {} autostart", a.pool, if a.disable { "unmarked as" } else { "marked as" });
    Ok(())
}

fn print_vol(conn: &Conn, v: &Value) {
    if conn.json {
        output::json(v);
        return;
    }
    for (k, val) in [
        ("Name", s(&v["name"])),
        ("Path", s(&v["path"])),
        ("Format", s(&v["format"])),
        ("Capacity", v["capacity"].as_u64().map(bytes).unwrap_or("-".into())),
        ("Allocation", v["allocation"].as_u64().map(bytes).unwrap_or("-".into())),
    ] {
        println!("{:<12} {val}", format!("{k}:"));
    }
}

pub fn vol_list(a: VolListArgs) -> CliResult {
    let v = a.conn.client()?.get(&format!("{}/volumes", pool_path(&a.pool)))?;
    if a.conn.json {
        output::json(&v);
        return Ok(());
    }
    let vols = v.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            let mut r = vec![s(&v["name"]), s(&v["path"])];
            if a.details {
                r.push(s(&v["format"]));
                r.push(v["capacity"].as_u64().map(bytes).unwrap_or("-".into()));
                r.push(v["allocation"].as_u64().map(bytes).unwrap_or("-".into()));
            }
            r
        })
        .collect();
    if a.details {
        output::table(&["Name", "Path", "Format", "Capacity", "Allocation"], &rows);
    } else {
        output::table(&["Name", "Path"], &rows);
    }
    Ok(())
}

pub fn vol_create(a: VolCreateArgs) -> CliResult {
    let body = json!({
        "name": a.name, "capacity": size(&a.capacity)?, "format": fmt(&a.format),
        "backing": a.backing_vol, "backing_format": fmt(&a.backing_vol_format),
    });
    let r = a.conn.client()?.request("POST", &format!("{}/volumes", pool_path(&a.pool)), Some(&body))?;
    if a.conn.json {
        output::json(&r);
    } else {
        println!("Vol {} created", a.name);
    }
    Ok(())
}

pub fn vol_resize(a: VolResizeArgs) -> CliResult {
    let body = json!({ "capacity": size(&a.capacity)? });
    let r = a.conn.client()?.request("POST", &format!("{}/resize", vol_path(&a.vol, &a.pool)), Some(&body))?;
    if a.conn.json {
        output::json(&r);
    } else {
        println!("Size of volume '{}' successfully changed to {}", a.vol, a.capacity);
    }
    Ok(())
}

pub fn vol_clone(a: VolCloneArgs) -> CliResult {
    let r = a.conn.client()?.request(
        "POST",
        &format!("{}/clone", vol_path(&a.vol, &a.pool)),
        Some(&json!({ "name": a.new_name })),
    )?;
    if a.conn.json {
        output::json(&r);
    } else {
        println!("Vol {} cloned from {}", a.new_name, a.vol);
    }
    Ok(())
}

pub fn vol_delete(a: VolArgs) -> CliResult {
    a.conn.client()?.request("DELETE", &vol_path(&a.vol, &a.pool), None)?;
    println!("Vol {} deleted", a.vol);
    Ok(())
}

pub fn vol_info(a: VolArgs) -> CliResult {
    let v = a.conn.client()?.get(&vol_path(&a.vol, &a.pool))?;
    print_vol(&a.conn, &v);
    Ok(())
}
