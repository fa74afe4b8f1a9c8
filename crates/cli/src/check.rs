//! `tern check`: host validation.

#[derive(clap::Args)]
pub struct CheckArgs {}

pub fn main(_args: CheckArgs) -> i32 {
    1
}
