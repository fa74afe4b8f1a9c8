//! `tern daemon`: the manager daemon.

#[derive(clap::Args)]
pub struct DaemonArgs {}

pub fn main(_args: DaemonArgs) -> i32 {
    eprintln!("tern daemon: not built yet");
    1
}
