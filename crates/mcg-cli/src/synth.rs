//! `multicryogan synth` and `multicryogan merge-shards`: synthetic particle sets of a
//! conformational landscape (the Hsp90 benchmark or a user's), whole or in shards.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use mcg_dataset::synth::{self as lib, LandscapeSource, NoiseModel, Sharding, SynthSettings};
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

/// The bundles of imaging conditions (`--conditions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Conditions {
    /// The Multi-CryoGAN paper's: −10 dB, white noise, no shifts, no normalisation.
    Paper,
    /// CryoBench-like: −20 dB, realistic coloured noise, Gaussian shifts of σ = 2 pixels,
    /// background normalisation (RELION's), bright particles.
    Realistic,
}

/// Synthesise a particle set of a conformational landscape: each particle gets a conformation
/// drawn from the landscape, a uniform random pose, a CTF and Gaussian noise (white, or coloured
/// with --noise).
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
/// Noise: σ is set by --snr-db (σ² is the noise's pixel variance, whatever its spectrum);
/// --noise realistic colours it with a model of real cryo-EM noise (power falling about 10×
/// from DC to Nyquist: a detector-like sinc² fall-off times a rise below 15 % of Nyquist),
/// --noise spectrum:FILE.json with a measured spectrum ({"box_size": N, "power": [one value per
/// radius 0, 1, … ⌈N/√2⌉ in Fourier index units]}; its scale does not matter). The manifest
/// records the spectrum scaled to σ². --background K also writes K pure-noise images
/// (same noise, same normalisation, no particle) to OUT/background.mrcs, like patches boxed
/// from empty micrograph regions, for `train --noise-stack`.
///
/// --conditions realistic sets CryoBench-like conditions: --snr-db -20, --noise realistic,
/// --shift-sigma 2, --normalize background. Flags given as well override the bundle's values
/// (--max-shift R > 0 replaces its Gaussian shifts).
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
    multicryogan synth --preset hsp90-discrete --n 50000 --box 64 --conditions realistic --background 2000 --out hard\n  \
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
    /// Imaging conditions: paper (the defaults below) or realistic (CryoBench-like: −20 dB,
    /// realistic coloured noise, Gaussian shifts of σ = 2 pixels, background normalisation).
    /// Flags given as well override the bundle's values.
    #[arg(long, value_enum, default_value = "paper")]
    conditions: Conditions,
    /// Noise level, dB (data-set level: mean clean-image variance over the box divided by σ²,
    /// σ² the noise's pixel variance). Default: −10 (−20 with --conditions realistic).
    #[arg(long, value_name = "DB", allow_hyphen_values = true, value_parser = crate::util::finite_f64)]
    snr_db: Option<f64>,
    /// The noise's power spectrum: white, realistic (a model of cryo-EM background noise) or
    /// spectrum:FILE.json (a table {"box_size": N, "power": [...]}, scaled to σ²). Default:
    /// white (realistic with --conditions realistic).
    #[arg(long, value_name = "KIND")]
    noise: Option<NoiseModel>,
    /// Write K pure-noise images (the particles' noise and normalisation, no particle) to
    /// OUT/background.mrcs, like patches boxed from empty micrograph regions (whole sets only).
    #[arg(long, value_name = "K", default_value_t = 0)]
    background: usize,
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
    /// Gaussian shifts instead of --max-shift: standard deviation in pixels per axis (recorded
    /// in Å in the STAR file). Default: none (2 with --conditions realistic).
    #[arg(long, value_name = "PX", value_parser = crate::util::finite_f64)]
    shift_sigma: Option<f64>,
    /// Oversampling of the projectors' 3D transforms: 2 (fast) or 4 (more accurate).
    #[arg(long, default_value_t = 2, value_name = "S")]
    oversampling: usize,
    /// Per-image normalisation: none, whole, background or background:RADIUS (pixels; default
    /// N/2 − 1). Default: none (background with --conditions realistic).
    #[arg(long)]
    normalize: Option<Normalization>,
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
        let mut settings = SynthSettings::new(landscape, self.n, self.out.clone());
        settings.structures = self.structures.clone();
        settings.seed = self.seed;
        settings.clean = self.clean;
        settings.ctf = !self.no_ctf;
        settings.box_size = self.box_size;
        settings.apix = self.apix;
        settings.resolution = self.resolution;
        settings.imaging = self.imaging.settings()?;
        settings.oversampling = self.oversampling;
        settings.calibration_images = self.calibration_images;
        settings.states = self.states;
        settings.sharding = sharding;
        settings.h5 = !self.no_h5;
        settings.batch = self.batch;
        settings.command = std::env::args().collect();
        settings.background_images = self.background;
        // The bundle first (it keeps the given --max-shift only when it has no shifts of its
        // own), then every flag given on top.
        let max_shift = settings.imaging.max_shift;
        settings.apply_conditions(match self.conditions {
            Conditions::Paper => lib::Conditions::Paper,
            Conditions::Realistic => lib::Conditions::Realistic,
        });
        settings.override_shifts(max_shift, self.shift_sigma)?;
        if let Some(db) = self.snr_db {
            settings.snr_db = db;
        }
        if let Some(noise) = &self.noise {
            settings.noise = noise.clone();
        }
        if let Some(normalization) = self.normalize {
            settings.normalization = normalization;
        }
        Ok(settings)
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
