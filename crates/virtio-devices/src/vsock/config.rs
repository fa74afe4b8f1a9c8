//! `--vsock cid=N,socket=PATH` parsing.

use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    #[error("--vsock needs cid=N and socket=PATH (got '{0}')")]
    Missing(String),
    #[error("--vsock: unknown option '{0}'; syntax: cid=N,socket=PATH")]
    UnknownOption(String),
    #[error("--vsock: option '{0}' given twice")]
    Duplicate(String),
    #[error("--vsock: invalid cid '{0}': use a number from 3 to 4294967294 (0-2 are reserved)")]
    BadCid(String),
    #[error("--vsock: socket path must not be empty")]
    EmptySocket,
}

/// The guest's context id and the host Unix socket of the hybrid model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut socket = None;
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| VsockConfigError::UnknownOption(part.into()))?;
            match k {
                "cid" => {
                    if cid.is_some() {
                        return Err(VsockConfigError::Duplicate(k.into()));
                    }
                    let n: u64 = v.parse().map_err(|_| VsockConfigError::BadCid(v.into()))?;
                    if !(3..=u32::MAX as u64 - 1).contains(&n) {
                        return Err(VsockConfigError::BadCid(v.into()));
                    }
                    cid = Some(n);
                }
                "socket" => {
                    if socket.is_some() {
                        return Err(VsockConfigError::Duplicate(k.into()));
                    }
                    if v.is_empty() {
                        return Err(VsockConfigError::EmptySocket);
                    }
                    socket = Some(PathBuf::from(v));
                }
                _ => return Err(VsockConfigError::UnknownOption(k.into())),
            }
        }
        match (cid, socket) {
            (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
            _ => Err(VsockConfigError::Missing(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!(c, VsockConfig { cid: 3, socket: "/tmp/v.sock".into() });
        for (bad, want) in [
            ("cid=3", "needs cid=N and socket=PATH"),
            ("socket=/x", "needs cid=N"),
            ("cid=2,socket=/x", "invalid cid '2'"),
            ("cid=abc,socket=/x", "invalid cid"),
            ("cid=4294967295,socket=/x", "invalid cid"),
            ("cid=3,socket=", "must not be empty"),
            ("cid=3,socket=/x,port=1", "unknown option 'port'"),
            ("cid=3,cid=4,socket=/x", "twice"),
        ] {
            let e = bad.parse::<VsockConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
