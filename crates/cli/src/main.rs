//! `tern`: the single binary. Each subcommand family lives in its own module
//! and returns the process exit code; errors are printed as one line.

mod check;
mod daemon;
mod img;
mod run;
mod virsh;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tern", version, about = "Tern: a Rust virtualization stack on Linux KVM")]
struct Cli {
    /// Log filter for the VMM/daemon log on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "TERN_LOG")]
    log: String,
    /// Manage a remote daemon over SSH: ssh://[user@]host[:port][/path/to/tern.sock] (like virsh -c).
    #[arg(long, short = 'c', value_name = "URI")]
    connect: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one VM in the foreground (console on the terminal).
    Run(Box<run::RunArgs>),
    /// Check that this host can run VMs (like virt-host-validate).
    Check(check::CheckArgs),
    /// Disk image tool, a drop-in for qemu-img.
    #[command(disable_help_flag = true)]
    Img(img::ImgArgs),
    /// Run the manager daemon (libvirtd's role).
    Daemon(daemon::DaemonArgs),
    #[command(flatten)]
    Virsh(virsh::VirshCommand),
}

fn main() {
    let mut cli = Cli::parse();
    if let Some(uri) = cli.connect.clone() {
        // SAFETY: still single-threaded here. The verbs take TERN_CONNECT as
        // their --connect default, so parse again with it set (a --connect
        // after the verb still wins).
        unsafe { std::env::set_var("TERN_CONNECT", uri) };
        cli = Cli::parse();
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let code = match cli.command {
        Command::Run(a) => run::main(*a),
        Command::Check(a) => check::main(a),
        Command::Img(a) => img::main(a),
        Command::Daemon(a) => daemon::main(a),
        Command::Virsh(c) => virsh::main(c),
    };
    std::process::exit(code);
}
