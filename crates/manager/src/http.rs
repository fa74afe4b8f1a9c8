//! A deliberately tiny HTTP/1.1 implementation over Unix streams, used by
//! both the daemon and the CLI.
//!
//! Why not hyper+tokio: the API is local (a Unix socket, or an SSH tunnel to
//! one), low-rate and needs three things hyper makes no simpler here: plain
//! request/response with `Content-Length`, a chunked event stream, and a
//! connection upgrade for the console. One blocking thread per connection
//! handles hundreds of clients fine, and the manager stays free of an async
//! runtime and ~40 transitive crates on a machine where build time is the
//! scarce resource. Each connection carries one request (`Connection:
//! close`), which keeps the parser trivially correct.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP: {0}")]
    Malformed(String),
}

const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Decoded path segments, e.g. ["1.0", "vms", "web1"].
    pub segments: Vec<String>,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn query_flag(&self, name: &str) -> bool {
        self.query.get(name).is_some_and(|v| v.is_empty() || v == "1" || v == "true" || v == "yes")
    }
}

fn read_line_limited<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let n = r.take(*budget as u64).read_until(b'\n', &mut line)?;
    *budget = budget.saturating_sub(n);
    if n == 0 {
        return Err(HttpError::Malformed("connection closed".into()));
    }
    if !line.ends_with(b"\n") {
        return Err(HttpError::Malformed("header too long".into()));
    }
    Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
}

/// Read the status/request line and headers; returns (first line, headers).
pub fn read_head<R: BufRead>(r: &mut R) -> Result<(String, Vec<(String, String)>), HttpError> {
    let mut budget = MAX_HEADER_BYTES;
    let first = read_line_limited(r, &mut budget)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line_limited(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| HttpError::Malformed(format!("bad header `{line}`")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((first, headers))
}

pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request, HttpError> {
    let (first, headers) = read_head(r)?;
    let mut parts = first.split_whitespace();
    let (method, target) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m.to_string(), t.to_string()),
        _ => return Err(HttpError::Malformed(format!("bad request line `{first}`"))),
    };
    let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
    let segments = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let query = qs
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut req = Request { method, segments, path: path.to_string(), query, headers, body: Vec::new() };
    let len: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if len > MAX_BODY_BYTES {
        return Err(HttpError::Malformed(format!("body of {len} bytes is too large")));
    }
    req.body.resize(len, 0);
    r.read_exact(&mut req.body)?;
    Ok(req)
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Write a complete response with a body and close semantics.
pub fn write_response<W: Write>(w: &mut W, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Start a chunked response (for the event stream).
pub fn write_chunked_head<W: Write>(w: &mut W, content_type: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    w.write_all(head.as_bytes())?;
    w.flush()
}

pub fn write_chunk<W: Write>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

/// Read one chunk of a chunked body; None at the terminating zero chunk.
pub fn read_chunk<R: BufRead>(r: &mut R) -> Result<Option<Vec<u8>>, HttpError> {
    let mut budget = 1024;
    let line = read_line_limited(r, &mut budget)?;
    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        .map_err(|_| HttpError::Malformed(format!("bad chunk size `{line}`")))?;
    if size > MAX_BODY_BYTES {
        return Err(HttpError::Malformed("chunk too large".into()));
    }
    let mut data = vec![0; size];
    r.read_exact(&mut data)?;
    let mut crlf = [0u8; 2];
    r.read_exact(&mut crlf)?;
    if size == 0 { Ok(None) } else { Ok(Some(data)) }
}

/// Parse a response head + body (Content-Length, chunked, or until EOF).
pub fn read_response<R: BufRead>(r: &mut R) -> Result<(u16, Vec<u8>), HttpError> {
    let (first, headers) = read_head(r)?;
    let status = parse_status(&first)?;
    let header = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while let Some(c) = read_chunk(r)? {
            body.extend_from_slice(&c);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if len > MAX_BODY_BYTES {
            return Err(HttpError::Malformed("response too large".into()));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.take(MAX_BODY_BYTES as u64).read_to_end(&mut body)?;
    }
    Ok((status, body))
}

pub fn parse_status(first: &str) -> Result<u16, HttpError> {
    first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| first.starts_with("HTTP/1."))
        .ok_or_else(|| HttpError::Malformed(format!("bad status line `{first}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_with_query_and_body() {
        let raw = b"PUT /1.0/vms/web%201/state?wait=5&force HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
        let req = read_request(&mut &raw[..]).unwrap();
        assert_eq!(req.method, "PUT");
        assert_eq!(req.segments, ["1.0", "vms", "web 1", "state"]);
        assert_eq!(req.query.get("wait").map(String::as_str), Some("5"));
        assert!(req.query_flag("force"));
        assert_eq!(req.body, b"abcd");
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"GET /1.0/vms?wait=%zz%&a=%e2%82 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"\xff\xfe /%\r\n:\r\n\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for seed in seeds {
            for _ in 0..2000 {
                let mut buf = seed.to_vec();
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x as usize) % buf.len();
                    buf[i] = (x >> 32) as u8;
                }
                let _ = read_request(&mut &buf[..]);
                let _ = read_response(&mut &buf[..]);
                let _ = percent_decode(&String::from_utf8_lossy(&buf));
            }
        }
    }

    #[test]
    fn rejects_garbage_and_roundtrips_chunks() {
        assert!(read_request(&mut &b"hello\r\n\r\n"[..]).is_err());
        let mut out = Vec::new();
        write_chunked_head(&mut out, "application/json").unwrap();
        write_chunk(&mut out, b"{\"a\":1}\n").unwrap();
        write_chunk(&mut out, b"").unwrap();
        let (status, body) = read_response(&mut &out[..]).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"a\":1}\n"[..]));
    }
}
