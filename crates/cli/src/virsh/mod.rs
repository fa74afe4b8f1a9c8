//! virsh-style verbs talking to `tern daemon` over its REST API (plus the
//! hidden helpers `_proxy` and `_shim` the manager runs).

mod domain;
mod output;
mod pool;
mod term;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use manager::{Client, ClientError, Endpoint};

/// How to reach the daemon, and how to print.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// The daemon's API socket.
    #[arg(long, env = "TERN_SOCKET", default_value = manager::DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// A remote daemon over SSH: ssh://[user@]host[:port][/path/to/tern.sock].
    #[arg(long, short = 'c', env = "TERN_CONNECT", value_name = "URI")]
    pub connect: Option<String>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    pub fn client(&self) -> Result<Client, ClientError> {
        let ep = match &self.connect {
            Some(uri) => Endpoint::parse_connect(uri)?,
            None => Endpoint::Unix(self.socket.clone()),
        };
        Ok(Client::new(ep))
    }
}

/// One VM by name or UUID.
#[derive(Args, Debug)]
pub struct Dom {
    /// VM name or UUID.
    pub domain: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Subcommand)]
pub enum VirshCommand {
    /// List VMs (running ones; --all for every defined VM).
    List(domain::ListArgs),
    /// Define (or update) a VM from a TOML definition or libvirt domain XML.
    Define(domain::DefineArgs),
    /// Remove a stopped VM's definition.
    Undefine(domain::UndefineArgs),
    /// Define and start a new VM from options (virt-install's role).
    Create(Box<domain::CreateArgs>),
    /// Start a defined VM.
    Start(domain::StartArgs),
    /// Gracefully shut down: ACPI power button, then destroy after --timeout.
    Shutdown(domain::ShutdownArgs),
    /// Shut down gracefully and start again.
    Reboot(domain::ShutdownArgs),
    /// Stop a VM immediately (pull the plug).
    Destroy(Dom),
    /// Pause a VM's vCPUs.
    Suspend(Dom),
    /// Continue a suspended VM.
    Resume(Dom),
    /// Attach to the serial console (detach with Ctrl-]).
    Console(domain::ConsoleArgs),
    /// Edit a VM definition in $EDITOR; invalid results are refused.
    Edit(Dom),
    /// Show VM information.
    Dominfo(Dom),
    /// Show the VM state.
    Domstate(domain::DomstateArgs),
    /// Show vCPU time, memory and device counters.
    Domstats(Dom),
    /// Enable (or --disable) starting a VM with the daemon.
    Autostart(domain::AutostartArgs),
    /// Pin a vCPU to host CPUs (live and persistent).
    Vcpupin(domain::VcpupinArgs),
    /// Set the current memory of a running VM through the balloon.
    Setmem(domain::SetmemArgs),
    /// Print a VM definition (TOML, or libvirt XML with --xml).
    Dump(domain::DumpArgs),
    /// Convert a libvirt domain XML into a definition and define it.
    Import(domain::ImportArgs),
    /// Follow the daemon's event stream (JSON lines).
    Events(domain::EventsArgs),
    /// Print shell completions.
    Completions(domain::CompletionsArgs),
    /// List storage pools.
    PoolList(pool::PoolListArgs),
    /// Define a storage pool (dir or logical).
    PoolDefineAs(pool::PoolDefineArgs),
    /// Activate a pool (for logical: build the VG from --source-dev if missing).
    PoolStart(pool::PoolArgs),
    /// Deactivate a pool.
    PoolDestroy(pool::PoolArgs),
    /// Remove an inactive pool's definition.
    PoolUndefine(pool::PoolArgs),
    /// Enable (or --disable) activating a pool with the daemon.
    PoolAutostart(pool::PoolAutostartArgs),
    /// Rescan a pool's volumes.
    PoolRefresh(pool::PoolArgs),
    /// Show pool information.
    PoolInfo(pool::PoolArgs),
    /// List the volumes of a pool.
    VolList(pool::VolListArgs),
    /// Create a volume (raw or qcow2, optionally over a backing volume).
    VolCreateAs(pool::VolCreateArgs),
    /// Grow a volume.
    VolResize(pool::VolResizeArgs),
    /// Copy a volume.
    VolClone(pool::VolCloneArgs),
    /// Delete a volume.
    VolDelete(pool::VolArgs),
    /// Show volume information.
    VolInfo(pool::VolArgs),
    /// stdio <-> daemon socket bridge used by `--connect ssh://`.
    #[command(name = "_proxy", hide = true)]
    Proxy(ProxyArgs),
    /// Per-VM parent process the daemon starts (records the VMM's exit).
    #[command(name = "_shim", hide = true)]
    Shim(ShimArgs),
}

#[derive(Args)]
pub struct ProxyArgs {
    #[arg(long, env = "TERN_SOCKET", default_value = manager::DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
pub struct ShimArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(last = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn main(cmd: VirshCommand) -> i32 {
    let res = match cmd {
        VirshCommand::Proxy(a) => return manager::proxy::main(&a.socket),
        VirshCommand::Shim(a) => return manager::shim::main(&a.dir, &a.args),
        VirshCommand::Completions(a) => return domain::completions(a),
        VirshCommand::Import(a) => domain::import(a),
        VirshCommand::List(a) => domain::list(a),
        VirshCommand::Define(a) => domain::define(a),
        VirshCommand::Undefine(a) => domain::undefine(a),
        VirshCommand::Create(a) => domain::create(*a),
        VirshCommand::Start(a) => domain::start(a),
        VirshCommand::Shutdown(a) => domain::shutdown(a, "shutdown"),
        VirshCommand::Reboot(a) => domain::shutdown(a, "reboot"),
        VirshCommand::Destroy(a) => domain::simple_action(a, "destroy"),
        VirshCommand::Suspend(a) => domain::simple_action(a, "suspend"),
        VirshCommand::Resume(a) => domain::simple_action(a, "resume"),
        VirshCommand::Console(a) => domain::console(a),
        VirshCommand::Edit(a) => domain::edit(a),
        VirshCommand::Dominfo(a) => domain::dominfo(a),
        VirshCommand::Domstate(a) => domain::domstate(a),
        VirshCommand::Domstats(a) => domain::domstats(a),
        VirshCommand::Autostart(a) => domain::autostart(a),
        VirshCommand::Vcpupin(a) => domain::vcpupin(a),
        VirshCommand::Setmem(a) => domain::setmem(a),
        VirshCommand::Dump(a) => domain::dump(a),
        VirshCommand::Events(a) => domain::events(a),
        VirshCommand::PoolList(a) => pool::pool_list(a),
        VirshCommand::PoolDefineAs(a) => pool::pool_define(a),
        VirshCommand::PoolStart(a) => pool::pool_action(a, "start"),
        VirshCommand::PoolDestroy(a) => pool::pool_action(a, "destroy"),
        VirshCommand::PoolRefresh(a) => pool::pool_action(a, "refresh"),
        VirshCommand::PoolUndefine(a) => pool::pool_undefine(a),
        VirshCommand::PoolInfo(a) => pool::pool_info(a),
        VirshCommand::PoolAutostart(a) => pool::pool_autostart(a),
        VirshCommand::VolList(a) => pool::vol_list(a),
        VirshCommand::VolCreateAs(a) => pool::vol_create(a),
        VirshCommand::VolResize(a) => pool::vol_resize(a),
        VirshCommand::VolClone(a) => pool::vol_clone(a),
        VirshCommand::VolDelete(a) => pool::vol_delete(a),
        VirshCommand::VolInfo(a) => pool::vol_info(a),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// A CLI failure: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Msg(String),
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Msg(s)
    }
}

pub type CliResult = Result<(), CliError>;

/// URL path segment for a name.
pub fn seg(s: &str) -> String {
    manager::http::percent_encode(s)
}
