//! `--serial stdio|file=PATH|socket=PATH|none`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::SerialError;

/// Where the guest's serial console goes (and, for stdio and socket, where
/// its input comes from).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin (raw mode when it is a terminal).
    #[default]
    Stdio,
    /// Output appended to a file created or truncated at start; no input.
    File(PathBuf),
    /// A Unix listening socket: one client at a time gets the output (what
    /// was written while nobody was connected is buffered, bounded) and its
    /// input goes to the guest.
    Socket(PathBuf),
    /// Output discarded, no input.
    None,
}

const USAGE: &str = "use stdio, file=PATH, socket=PATH or none";

impl FromStr for SerialConfig {
    type Err = SerialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| SerialError::Config(format!("{why}: {USAGE}"));
        match s.split_once('=') {
            None => match s {
                "stdio" => Ok(Self::Stdio),
                "none" | "off" => Ok(Self::None),
                "file" | "socket" => Err(bad(format!("serial backend '{s}' needs a path ({s}=PATH)"))),
                "" => Err(bad("empty serial backend".into())),
                _ => Err(bad(format!("unknown serial backend '{s}'"))),
            },
            Some((kind, path)) => {
                if path.is_empty() {
                    return Err(bad(format!("serial backend '{kind}=' has an empty path")));
                }
                match kind {
                    "file" => Ok(Self::File(path.into())),
                    "socket" => Ok(Self::Socket(path.into())),
                    _ => Err(bad(format!("unknown serial backend '{kind}'"))),
                }
            }
        }
    }
}

impl fmt::Display for SerialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdio => f.write_str("stdio"),
            Self::File(p) => write!(f, "file={}", p.display()),
            Self::Socket(p) => write!(f, "socket={}", p.display()),
            Self::None => f.write_str("none"),
        }
    }
}
