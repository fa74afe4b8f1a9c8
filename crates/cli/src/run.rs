//! `tern run`: boot one VM in the foreground.

#[derive(clap::Args)]
pub struct RunArgs {}

pub fn main(_args: RunArgs) -> i32 {
    1
}
