//! A getopt-style parser with qemu-img's conventions: short options may be
//! clustered (`-fqcow2`, `-pc`), long options take `--opt=value` or
//! `--opt value`, repeated `-o` lists are merged, `--` ends options.

use super::ImgError;

/// Which options a subcommand accepts.
pub struct Spec {
    /// Short options that take a value.
    pub short_val: &'static str,
    /// Short options that are flags.
    pub short_flag: &'static str,
    pub long_val: &'static [&'static str],
    pub long_flag: &'static [&'static str],
}

#[derive(Default, Debug)]
pub struct Parsed {
    pub opts: Vec<(String, Option<String>)>,
    pub pos: Vec<String>,
}

impl Parsed {
    pub fn flag(&self, name: &str) -> bool {
        self.opts.iter().any(|(k, _)| k == name)
    }
    /// Last value given for an option.
    pub fn val(&self, name: &str) -> Option<&str> {
        self.opts.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }
    /// All values given for an option, in order.
    pub fn vals(&self, name: &str) -> Vec<&str> {
        self.opts.iter().filter(|(k, _)| k == name).filter_map(|(_, v)| v.as_deref()).collect()
    }
}

pub fn parse(args: &[String], spec: &Spec) -> Result<Parsed, ImgError> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.pos.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            if spec.long_val.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v =
                            args.get(i).ok_or_else(|| ImgError::usage(format!("option '--{name}' needs a value")))?;
                        i += 1;
                        v.clone()
                    }
                };
                p.opts.push((name.to_string(), Some(v)));
            } else if spec.long_flag.contains(&name) {
                p.opts.push((name.to_string(), None));
            } else {
                return Err(ImgError::usage(format!("unrecognized option '--{name}'")));
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                if spec.short_val.contains(c) {
                    let rest: String = chars[j..].iter().collect();
                    let v = if !rest.is_empty() {
                        rest
                    } else {
                        let v = args.get(i).ok_or_else(|| ImgError::usage(format!("option '-{c}' needs a value")))?;
                        i += 1;
                        v.clone()
                    };
                    p.opts.push((c.to_string(), Some(v)));
                    break;
                } else if spec.short_flag.contains(c) {
                    p.opts.push((c.to_string(), None));
                } else {
                    return Err(ImgError::usage(format!("invalid option -- '{c}'")));
                }
            }
            continue;
        }
        p.pos.push(a.clone());
    }
    Ok(p)
}

/// Splits `-o a=b,c=d` lists (",," escapes a comma) into key/value pairs.
pub fn parse_o(list: &[&str]) -> Result<Vec<(String, String)>, ImgError> {
    let mut out = Vec::new();
    for l in list {
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = l.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for it in items.into_iter().filter(|s| !s.is_empty()) {
            match it.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None if it == "help" || it == "?" => out.push((it, String::new())),
                None => out.push((it, "on".to_string())),
            }
        }
    }
    Ok(out)
}

/// Parses a qemu-img size: bytes, or a number with k/K/M/G/T/P/E suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, ImgError> {
    let bad = || {
        ImgError::usage(format!("invalid image size '{s}': use a number with an optional k, M, G, T, P or E suffix"))
    };
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                'E' => 1 << 60,
                _ => return Err(bad()),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    if num.is_empty() || num.starts_with('-') {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || !(0.0..1.8e19).contains(&v) {
        return Err(bad());
    }
    Ok(v as u64)
}

/// "on"/"off"/"true"/"false" option values.
pub fn parse_bool(key: &str, v: &str) -> Result<bool, ImgError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(ImgError::usage(format!("parameter '{key}' expects 'on' or 'off', not '{v}'"))),
    }
}
