//! `tern img`: qemu-img compatible front end over the `image` crate.

/// Everything after `tern img` is parsed here with qemu-img's conventions.
#[derive(clap::Args)]
pub struct ImgArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn main(_args: ImgArgs) -> i32 {
    eprintln!("tern img: not built yet");
    1
}
