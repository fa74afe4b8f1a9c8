//! `--net tap=NAME[,mac=MAC]` parsing.

use std::fmt;
use std::str::FromStr;

use ::net::MacAddr;

/// Errors from parsing a `--net` value; each fits on one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    #[error("--net needs tap=NAME (got '{0}'); syntax: tap=NAME[,mac=MAC]")]
    MissingTap(String),
    #[error("--net: unknown option '{0}'; syntax: tap=NAME[,mac=MAC]")]
    UnknownOption(String),
    #[error("--net: option '{0}' given twice")]
    Duplicate(String),
    #[error("--net: invalid TAP name '{0}': use 1-15 characters without '/', ',' or spaces")]
    BadTapName(String),
    #[error("--net: {0}")]
    BadMac(String),
    #[error("--net: MAC {0} is multicast; a NIC needs a unicast address (first byte even)")]
    MulticastMac(MacAddr),
}

/// One NIC: the host TAP it is backed by and the guest's MAC. When no MAC is
/// given, parsing assigns a random locally administered one, so the value
/// (and its `Display`) is stable from then on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    pub tap: String,
    pub mac: MacAddr,
}

impl NetConfig {
    pub fn new(tap: &str, mac: Option<MacAddr>) -> Self {
        NetConfig { tap: tap.to_string(), mac: mac.unwrap_or_else(MacAddr::random_local) }
    }
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap: Option<String> = None;
        let mut mac: Option<MacAddr> = None;
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| NetConfigError::UnknownOption(part.to_string()))?;
            match k {
                "tap" => {
                    if tap.is_some() {
                        return Err(NetConfigError::Duplicate(k.into()));
                    }
                    if v.is_empty() || v.len() > 15 || v.bytes().any(|b| b == b'/' || b.is_ascii_whitespace()) {
                        return Err(NetConfigError::BadTapName(v.into()));
                    }
                    tap = Some(v.to_string());
                }
                "mac" => {
                    if mac.is_some() {
                        return Err(NetConfigError::Duplicate(k.into()));
                    }
                    let m: MacAddr =
                        v.parse().map_err(|e: ::net::mac::MacError| NetConfigError::BadMac(e.to_string()))?;
                    if m.is_multicast() {
                        return Err(NetConfigError::MulticastMac(m));
                    }
                    mac = Some(m);
                }
                _ => return Err(NetConfigError::UnknownOption(k.to_string())),
            }
        }
        let tap = tap.ok_or_else(|| NetConfigError::MissingTap(s.to_string()))?;
        Ok(NetConfig::new(&tap, mac))
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tap={},mac={}", self.tap, self.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let c: NetConfig = "tap=tern0,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(c.tap, "tern0");
        assert_eq!(c.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(c.to_string().parse::<NetConfig>().unwrap(), c);
    }

    #[test]
    fn assigns_a_local_mac_when_missing() {
        let a: NetConfig = "tap=t0".parse().unwrap();
        let b: NetConfig = "tap=t0".parse().unwrap();
        assert!(a.mac.is_locally_administered() && !a.mac.is_multicast());
        assert_ne!(a.mac, b.mac);
    }

    #[test]
    fn rejects_bad_values_with_one_line_errors() {
        let cases = [
            ("", "needs tap=NAME"),
            ("mac=52:54:00:12:34:56", "needs tap=NAME"),
            ("tap=t0,color=red", "unknown option 'color'"),
            ("tap=t0,tap=t1", "given twice"),
            ("tap=waytoolongtapname0", "invalid TAP name"),
            ("tap=a/b", "invalid TAP name"),
            ("tap=t0,mac=zz", "invalid MAC address"),
            ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
            ("tap", "unknown option 'tap'"),
        ];
        for (input, want) in cases {
            let e = input.parse::<NetConfig>().unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
