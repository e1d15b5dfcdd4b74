//! `multicryogan info`: what a file holds ([`mcg_dataset::info::describe`]), printed as JSON or
//! as indented text ([`mcg_dataset::info::text`]).

use std::path::PathBuf;

use anyhow::Result;

use crate::util;

/// Say what a file holds. MRC maps and stacks: shape, mode, voxel size, origin, header and
/// measured statistics. Particle sets (STAR, cryoSPARC .cs, HDF5, .mrcs, .txt stack lists):
/// particle count, optics groups, box, pixel size, and the columns present.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan info map.mrc\n  multicryogan info particles.star --json\n  multicryogan info particles.star --read-images"
)]
pub struct Args {
    /// The file.
    file: PathBuf,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// For particle sets: read every image (in batches, never all at once) and report pixel
    /// statistics, the time taken and the peak memory.
    #[arg(long)]
    read_images: bool,
    #[command(flatten)]
    locate: crate::util::LocateArgs,
}

pub fn run(args: Args) -> Result<()> {
    let info = mcg_dataset::info::describe(&args.file, &args.locate.get(), args.read_images)?;
    let report = serde_json::to_value(&info)?;
    if args.json {
        util::print_json(&report)
    } else {
        print!("{}", mcg_dataset::info::text(&report));
        Ok(())
    }
}
