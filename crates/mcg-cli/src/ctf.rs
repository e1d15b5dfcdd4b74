//! `multicryogan ctf`: each particle's 2D CTF as an image, for inspection
//! ([`mcg_dataset::ctf::write_ctf_stack`]).

use std::path::PathBuf;

use anyhow::Result;
use mcg_dataset::ctf::{CtfStackSettings, write_ctf_stack};

use crate::progress::Progress;

/// Write each particle's 2D CTF as one image of an MRC stack, centred: zero frequency at pixel
/// (N/2, N/2), row = ky, column = kx, RELION's sign (+Q0 at zero frequency).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  multicryogan ctf --star particles.star --out ctf.mrcs")]
pub struct Args {
    /// Particle table (STAR, .cs or .h5).
    #[arg(long, value_name = "FILE")]
    star: PathBuf,
    /// Output stack (.mrcs).
    #[arg(long, value_name = "MRCS")]
    out: PathBuf,
    /// Image edge in pixels (default: the optics group's image size).
    #[arg(long = "box", value_name = "N")]
    box_size: Option<usize>,
    #[command(flatten)]
    locate: crate::util::LocateArgs,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    let settings = CtfStackSettings {
        star: args.star,
        out: args.out,
        box_size: args.box_size,
        locate: args.locate.get(),
    };
    write_ctf_stack(&settings, progress)?;
    println!("{}", settings.out.display());
    Ok(())
}
