//! `multicryogan project`: simulate particle images of a volume.

use std::path::PathBuf;

use anyhow::Result;
use mcg_dataset::project::{ProjectSettings, project};
use mcg_physics::normalize::Normalization;
use mcg_physics::simulate::ProjectorKind;
use serde_json::json;

use crate::progress::Progress;
use crate::util;

/// Simulate particle images: projection at each pose, shift, CTF (on a 2× padded image),
/// white Gaussian noise at a data-set-level SNR, normalisation.
///
/// With --star, one image per row of the STAR file, with its pose, shift and CTF (like
/// relion_project). Without it, --n images at uniformly random poses with defoci drawn from
/// --defocus-um. Writes OUT/particles.mrcs, OUT/particles.star (RELION 3.1) and
/// OUT/manifest.json (every setting, the seed, the noise σ and the SNR definition).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan project --n 10000 --ctf --snr-db -10 --out sim\n  multicryogan project --volume map.mrc --star particles.star --ctf --out sim"
)]
pub struct Args {
    /// Volume to project (MRC). Default: the built-in test volume (--box, --apix).
    #[arg(long, value_name = "MRC")]
    volume: Option<PathBuf>,
    /// One image per row of this STAR file, with its poses, shifts and CTF parameters.
    #[arg(long, value_name = "STAR", conflicts_with = "n")]
    star: Option<PathBuf>,
    /// Number of images at random poses (when no --star is given).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Box of the built-in test volume, voxels (even).
    #[arg(long = "box", default_value_t = 32, value_name = "N")]
    box_size: usize,
    /// Voxel size in Å: of the built-in volume (default 5), or overriding the MRC header's (and
    /// the pixel size of a STAR file that does not record one).
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    apix: Option<f64>,
    /// Folder holding the STAR file's images, when its paths do not resolve against its folder
    /// (only their sizes are checked; their pixels are not read).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Apply the CTF.
    #[arg(long)]
    ctf: bool,
    /// Add white Gaussian noise at this SNR in dB (data-set level: mean clean-image variance
    /// over the box divided by σ²).
    #[arg(
        long,
        value_name = "DB",
        allow_hyphen_values = true,
        conflicts_with = "noise_sigma",
        value_parser = crate::util::finite_f64
    )]
    snr_db: Option<f64>,
    /// Add white Gaussian noise of this standard deviation.
    #[arg(long, value_name = "SIGMA", value_parser = crate::util::finite_f64)]
    noise_sigma: Option<f64>,
    /// Clean images used to estimate the signal variance for --snr-db.
    #[arg(long, default_value_t = 1000)]
    calibration_images: usize,
    #[command(flatten)]
    imaging: util::ImagingArgs,
    /// Projector: fourier (fast) or real-space (line integral; a cross-check).
    #[arg(long, default_value = "fourier")]
    projector: ProjectorKind,
    /// Oversampling of the Fourier projector's 3D transform: 2 (fast; ≈1 % median error) or 4
    /// (below 1 % worst case; 8× the memory).
    #[arg(long, default_value_t = 2, value_name = "S")]
    oversampling: usize,
    /// Per-image normalisation: none, whole (zero mean, unit variance over the box) or
    /// background (RELION's: over the pixels outside the central disc).
    #[arg(long, default_value = "none")]
    normalize: Normalization,
    /// Master seed: the same seed and settings give the same images, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images formed per batch (memory is proportional to it).
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_threads(args.threads)?;
    let settings = ProjectSettings {
        volume: args.volume.clone(),
        star: args.star.clone(),
        n: args.n,
        box_size: args.box_size,
        apix: args.apix,
        data_dir: args.data_dir.clone(),
        ctf: args.ctf,
        snr_db: args.snr_db,
        noise_sigma: args.noise_sigma,
        calibration_images: args.calibration_images,
        // Random parameters only without --star (whose rows give every parameter), so its
        // flags are checked only then.
        imaging: if args.star.is_none() {
            args.imaging.settings()?
        } else {
            mcg_physics::simulate::RandomImaging::default()
        },
        projector: args.projector,
        oversampling: args.oversampling,
        normalization: args.normalize,
        seed: args.seed,
        batch: args.batch,
        out: args.out.clone(),
        command: std::env::args().collect(),
    };
    let mut summary = project(&settings, progress)?;
    if args.json {
        summary["peak_rss_mib"] = json!(util::peak_rss_mib());
        util::print_json(&summary)?;
    } else {
        println!("{}", args.out.display());
    }
    Ok(())
}
