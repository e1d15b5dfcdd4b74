//! `multicryogan synth` and `multicryogan merge-shards`: synthetic particle sets of a
//! conformational landscape (the Hsp90 benchmark or a user's), whole or in shards.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use mcg_dataset::synth::{self as lib, LandscapeSource, Sharding, SynthSettings};
use mcg_physics::normalize::Normalization;
use serde_json::json;

use crate::progress::Progress;
use crate::util;

/// The built-in landscapes.
// The variant names are the command line's values (hsp90-…), hence the shared prefix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Hsp90, β ~ U(0°, 20°) (the paper's continuous set).
    Hsp90Continuous,
    /// Hsp90, β = 20°·Bernoulli(0.75): 25 % closed, 75 % open (the paper's discrete set).
    Hsp90Discrete,
    /// Hsp90 closed, β = 0° only (a single-conformation set, for `train --mode single`).
    Hsp90Closed,
    /// Hsp90 open, β = 20° only.
    Hsp90Open,
}

/// Synthesise a particle set of a conformational landscape: each particle gets a conformation
/// drawn from the landscape, a uniform random pose, a CTF and white noise.
///
/// Rigid-body landscapes are projected body by body (one Fourier slice per body, no volume per
/// image). Writes OUT/particles.mrcs, OUT/particles.star (RELION 3.1; the true motion
/// parameters in _mcg<Name> columns, the class for discrete sets in _rlnClassNumber),
/// OUT/particles.h5, OUT/ground_truth/*.mrc (maps along the landscape, e.g. beta_00 … beta_20),
/// OUT/landscape.json and OUT/manifest.json (every setting, the seed, σ, the SNR definition).
///
/// Interrupted or killed, it keeps only complete files (landscape.json, ground_truth/, finished
/// shards); the same command run again removes what a killed run left and gives the files of an
/// uninterrupted run, bit for bit.
///
/// The Hsp90 presets read 2cg9 chains A and B (2cg9_chainA_res12-677.pdb,
/// 2cg9_chainB_res12-677.pdb) from --structures, else $MULTICRYOGAN_STRUCTURES, else
/// ../shared/data/structures/hsp90; without them they use a built-in Hsp90-like phantom (logged
/// and recorded in the manifest).
///
/// Large sets: --shard K/M makes the K-th of M parts (1 ≤ K ≤ M) in OUT/shards/K-of-M, the
/// same images the whole set would hold there; `multicryogan merge-shards OUT` then writes one
/// STAR over all shards. --shards M makes every shard in turn and merges. A finished shard is
/// skipped when run again with the same settings, so an interrupted run resumes.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    multicryogan synth --preset hsp90-discrete --n 100000 --out hsp90-discrete\n  \
    multicryogan synth --landscape my-landscape.json --n 20000 --box 64 --apix 2.5 --out mine\n  \
    multicryogan synth --preset hsp90-continuous --n 10000000 --shard 3/100 --out big\n  \
    multicryogan merge-shards big")]
pub struct Args {
    /// A built-in landscape.
    #[arg(long, value_enum, required_unless_present = "landscape")]
    preset: Option<Preset>,
    /// A landscape file (JSON: bodies, hinge motions, parameter distributions, or discrete
    /// models; see the README). Structure paths are relative to it.
    #[arg(long, value_name = "JSON", conflicts_with = "preset")]
    landscape: Option<PathBuf>,
    /// Folder of the structure files (default for the Hsp90 presets: $MULTICRYOGAN_STRUCTURES,
    /// then ../shared/data/structures/hsp90; for --landscape: the landscape file's folder).
    #[arg(long, value_name = "DIR")]
    structures: Option<PathBuf>,
    /// Number of particles.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Master seed: the same seed and settings give the same data, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Noise level, dB (data-set level: mean clean-image variance over the box divided by σ²).
    #[arg(long, default_value_t = -10.0, value_name = "DB", allow_hyphen_values = true, value_parser = crate::util::finite_f64)]
    snr_db: f64,
    /// No noise (clean images).
    #[arg(long)]
    clean: bool,
    /// No CTF.
    #[arg(long)]
    no_ctf: bool,
    /// Image and map box, pixels (even).
    #[arg(long = "box", default_value_t = 32, value_name = "N")]
    box_size: usize,
    /// Pixel (voxel) size, Å.
    #[arg(long, default_value_t = 5.0, value_name = "Å", value_parser = crate::util::finite_f64)]
    apix: f64,
    /// Resolution of the density maps, Å (atoms are Gaussians of σ = 0.225 × resolution).
    /// Default: 2 × apix.
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    resolution: Option<f64>,
    #[command(flatten)]
    imaging: util::ImagingArgs,
    /// Oversampling of the projectors' 3D transforms: 2 (fast) or 4 (more accurate).
    #[arg(long, default_value_t = 2, value_name = "S")]
    oversampling: usize,
    /// Per-image normalisation: none, whole or background.
    #[arg(long, default_value = "none")]
    normalize: Normalization,
    /// Clean images (particles 1 … K of the whole set) whose mean variance sets σ for
    /// --snr-db.
    #[arg(long, default_value_t = 1000, value_name = "K")]
    calibration_images: usize,
    /// Ground-truth maps written along the landscape (at least 2).
    #[arg(long, default_value_t = 21)]
    states: usize,
    /// Make only part K of M (1 ≤ K ≤ M) in OUT/shards/K-of-M.
    #[arg(long, value_name = "K/M", conflicts_with = "shards")]
    shard: Option<String>,
    /// Make the set in M shards, one after the other (skipping finished ones), then merge.
    #[arg(long, value_name = "M")]
    shards: Option<usize>,
    /// Do not write the HDF5 container.
    #[arg(long)]
    no_h5: bool,
    /// Images formed per batch (memory is proportional to it).
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// Merge the shards of `multicryogan synth --shard K/M` into one particle set: OUT/particles.star
/// over every shard's stack, the HDF5 container (unless --no-h5) and OUT/manifest.json. Checks
/// that all M shards are there and were made with the same settings.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  multicryogan merge-shards big")]
pub struct MergeArgs {
    /// The output folder given to synth (holding shards/K-of-M).
    out: PathBuf,
    /// Do not write the HDF5 container.
    #[arg(long)]
    no_h5: bool,
    /// Images copied per batch into the container.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
}

impl From<Preset> for lib::Preset {
    fn from(p: Preset) -> Self {
        match p {
            Preset::Hsp90Continuous => lib::Preset::Hsp90Continuous,
            Preset::Hsp90Discrete => lib::Preset::Hsp90Discrete,
            Preset::Hsp90Closed => lib::Preset::Hsp90Closed,
            Preset::Hsp90Open => lib::Preset::Hsp90Open,
        }
    }
}

impl Args {
    /// The library's settings; errors name the flags.
    fn settings(&self) -> Result<SynthSettings> {
        let landscape = match (&self.landscape, self.preset) {
            (Some(path), _) => LandscapeSource::File(path.clone()),
            (None, Some(preset)) => LandscapeSource::Preset(preset.into()),
            (None, None) => bail!("give --preset or --landscape"),
        };
        let sharding = match (&self.shard, self.shards) {
            (Some(text), _) => {
                let (k, m) = lib::parse_shard(text, self.n)?;
                Sharding::One { k, m }
            }
            (None, Some(m)) => Sharding::All { m },
            (None, None) => Sharding::Whole,
        };
        Ok(SynthSettings {
            landscape,
            structures: self.structures.clone(),
            n: self.n,
            out: self.out.clone(),
            seed: self.seed,
            snr_db: self.snr_db,
            clean: self.clean,
            ctf: !self.no_ctf,
            box_size: self.box_size,
            apix: self.apix,
            resolution: self.resolution,
            imaging: self.imaging.settings()?,
            oversampling: self.oversampling,
            normalization: self.normalize,
            calibration_images: self.calibration_images,
            states: self.states,
            sharding,
            h5: !self.no_h5,
            batch: self.batch,
            command: std::env::args().collect(),
        })
    }
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_threads(args.threads)?;
    let start = Instant::now();
    let summary = lib::synthesize(&args.settings()?, progress)?;
    if args.json {
        let mut s = summary;
        s["seconds"] = json!(start.elapsed().as_secs_f64());
        s["peak_rss_mib"] = json!(util::peak_rss_mib());
        util::print_json(&s)?;
    } else {
        println!("{}", args.out.display());
    }
    Ok(())
}

pub fn run_merge(args: MergeArgs, progress: &Progress) -> Result<()> {
    mcg_dataset::merge::merge_shards(&args.out, !args.no_h5, args.batch, progress)?;
    println!("{}", args.out.display());
    Ok(())
}
