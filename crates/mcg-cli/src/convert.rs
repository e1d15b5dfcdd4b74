//! `multicryogan convert`: particle sets between STAR+MRCS, HDF5 and (input only) `.cs`.

use std::path::PathBuf;

use anyhow::Result;
use mcg_dataset::convert::{ConvertSettings, convert};

use crate::progress::Progress;
use crate::util::LocateArgs;

/// Convert a particle set, keeping images bit-exact and metadata complete.
///
/// IN: .star (+ its MRC stacks), .cs (cryoSPARC, input only), .h5/.hdf5, .mrcs or a .txt list
/// of stacks. OUT: .star (the images go to one new stack beside it, OUT's name with .mrcs) or
/// .h5/.hdf5 (images inside). Every column without a typed meaning is carried along as text.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan convert particles.star particles.h5\n  multicryogan convert P12_J24_particles.cs --data-dir /data/P12 particles.star"
)]
pub struct Args {
    /// Input particle set.
    input: PathBuf,
    /// Output particle set (.star or .h5).
    output: PathBuf,
    /// Images copied per batch (memory is proportional to it).
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Leave out the particles whose images hold a NaN or infinite pixel (every image is read
    /// once first). Without it, such a particle is an error naming it.
    #[arg(long)]
    skip_non_finite: bool,
    #[command(flatten)]
    locate: LocateArgs,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    let settings = ConvertSettings {
        batch: args.batch,
        skip_non_finite: args.skip_non_finite,
        locate: args.locate.get(),
        box_size: None,
    };
    convert(&args.input, &args.output, &settings, progress)?;
    println!("{}", args.output.display());
    Ok(())
}

/// Fourier-crop a particle set to a smaller box, keeping the frequencies below the new Nyquist
/// (as cryoDRGN's downsample does; nothing aliases, pixel values are kept).
///
/// IN: any particle set `convert` reads. OUT: .star (a new stack beside it) or .h5. The pixel
/// size of every optics group grows by IN's box / --box, and _rlnImageSize becomes --box;
/// poses, shifts (Å) and CTFs are unchanged. White noise keeps its spectrum below the new
/// Nyquist, so its per-pixel σ scales by --box / IN's box.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan downsample particles.star --box 128 particles_128.star\n  multicryogan downsample P12_J24_particles.cs --data-dir /data/P12 --box 64 small.h5"
)]
pub struct DownsampleArgs {
    /// Input particle set.
    input: PathBuf,
    /// The new box, pixels (even, at most the input's).
    #[arg(long = "box", value_name = "N")]
    box_size: usize,
    /// Output particle set (.star or .h5).
    output: PathBuf,
    /// Images cropped per batch (memory is proportional to it).
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Leave out the particles whose images hold a NaN or infinite pixel.
    #[arg(long)]
    skip_non_finite: bool,
    #[command(flatten)]
    locate: LocateArgs,
}

pub fn run_downsample(args: DownsampleArgs, progress: &Progress) -> Result<()> {
    let settings = ConvertSettings {
        batch: args.batch,
        skip_non_finite: args.skip_non_finite,
        locate: args.locate.get(),
        box_size: Some(args.box_size),
    };
    convert(&args.input, &args.output, &settings, progress)?;
    println!("{}", args.output.display());
    Ok(())
}
