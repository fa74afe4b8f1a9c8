//! virsh-style verbs talking to `tern daemon`.

#[derive(clap::Subcommand)]
pub enum VirshCommand {
    /// List VMs.
    List,
}

pub fn main(_cmd: VirshCommand) -> i32 {
    eprintln!("tern: the manager is not built yet");
    1
}
