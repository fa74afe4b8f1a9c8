//! Host process facts the supervisor relies on: a pid plus its start time
//! identifies a process across pid reuse, so a restarted daemon can tell
//! "my VM is still running" from "some other process got that pid".

use serde::{Deserialize, Serialize};

/// A process identity that survives pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub start_time: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> Option<Self> {
        start_time(pid).map(|start_time| ProcId { pid, start_time })
    }

    /// True while the very same process exists and is not a zombie.
    pub fn alive(&self) -> bool {
        match stat_fields(self.pid) {
            Some((state, st)) => st == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    pub fn signal(&self, sig: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: kill() has no memory effects; the pid was just checked to be ours.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).map(|(_, t)| t)
}

/// (state letter, start time) from /proc/PID/stat.
fn stat_fields(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Reap a child without blocking; Some(status) once it has exited.
pub fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, which we own.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid { Some(status) } else { None }
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// User+system CPU time of a process in nanoseconds.
pub fn cpu_time_ns(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / hz)
}
