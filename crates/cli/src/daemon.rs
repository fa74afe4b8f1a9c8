//! `tern daemon`: the manager daemon (libvirtd's role). See the `manager`
//! crate for what it does; this is only its command line.

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Where definitions, pools, logs and per-VM runtime files live.
    #[arg(long, env = "TERN_STATE_DIR", default_value = manager::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The REST API socket (mode 0660, group `tern` if it exists).
    #[arg(long, env = "TERN_SOCKET", default_value = manager::DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Seconds a VM may take to bring up its control socket.
    #[arg(long, default_value_t = 30)]
    pub start_timeout: u64,
}

pub fn main(args: DaemonArgs) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tern daemon: cannot find the tern binary: {e}");
            return 1;
        }
    };
    let state_dir = std::path::absolute(&args.state_dir).unwrap_or(args.state_dir);
    let cfg = manager::DaemonConfig { state_dir, exe, start_timeout: Duration::from_secs(args.start_timeout) };
    match manager::server::run(cfg, args.socket) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern daemon: {e}");
            1
        }
    }
}
