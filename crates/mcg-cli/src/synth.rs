//! `multicryogan synth` and `multicryogan merge-shards`: synthetic particle sets of a
//! conformational landscape (the Hsp90 benchmark or a user's), whole or in shards.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::mrc::{self, MrcStackWriter};
use mcg_formats::{ImageRef, OpticsGroup, Particle, ParticleSet, star};
use mcg_h5::H5Writer;
use mcg_physics::noise::{self, SNR_DEFINITION};
use mcg_physics::normalize::Normalization;
use mcg_physics::simulate::{ImagingParams, RandomImaging, SimulationConfig, SlicePipeline};
use mcg_synth::landscape::{self, Landscape};
use mcg_synth::{Conformation, ConformationProjector, DensityConfig, Molecule, StructureSource};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::progress::Progress;
use crate::stackout::{Sinks, write_overlapped};
use crate::util::{self, WithHint};

/// Environment variable naming the folder of the Hsp90 structure files.
const STRUCTURES_ENV: &str = "MULTICRYOGAN_STRUCTURES";

/// Where the Hsp90 presets look for the structures when neither --structures nor the
/// environment variable is given (relative to the current folder: a checkout beside `shared`).
const DEFAULT_STRUCTURES: &str = "../shared/data/structures/hsp90";

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

/// Everything a run needs, built once from the arguments.
struct Plan {
    molecule: Molecule,
    projector: ConformationProjector,
    pipeline: SlicePipeline,
    cfg: DensityConfig,
    imaging: RandomImaging,
    config: SimulationConfig,
    n: usize,
    seed: u64,
    /// Settings as recorded in manifests; runs with equal settings make equal data.
    settings: Value,
    noise: Value,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_threads(args.threads)?;
    ensure!(args.batch > 0, "--batch must be at least 1");
    ensure!(args.n > 0, "--n must be at least 1");
    let start = Instant::now();
    // Every option is checked before anything is written.
    let shard = args
        .shard
        .as_deref()
        .map(|t| parse_shard(t, args.n))
        .transpose()?;
    if let Some(m) = args.shards {
        ensure!(
            (1..=args.n).contains(&m),
            "--shards {m}: expected 1 to --n ({}) shards",
            args.n
        );
    }
    refuse_overwriting_inputs(&args)?;
    // What a killed run left is removed before the disk is measured: its space is ours.
    for dir in std::iter::once(args.out.clone()).chain(
        std::fs::read_dir(args.out.join("shards"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    ) {
        mcg_fsio::remove_stale(&dir);
    }
    let plan = Plan::new(&args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output folder {}", args.out.display()))?;
    write_landscape_and_truth(&plan, &args.out, args.states, progress)?;
    let summary = match (shard, args.shards) {
        (Some((k, m)), _) => {
            let s = run_shard(&plan, &args, k, m, progress)?;
            json!({"out": shard_dir(&args.out, k, m), "shard": [k, m], "images": s})
        }
        (None, Some(m)) => {
            for k in 1..=m {
                run_shard(&plan, &args, k, m, progress)?;
            }
            merge(&args.out, !args.no_h5, args.batch, progress)?
        }
        (None, None) => run_whole(&plan, &args, progress)?,
    };
    let elapsed = start.elapsed().as_secs_f64();
    info!(seconds = format!("{elapsed:.2}"), "done");
    if args.json {
        let mut s = summary;
        s["seconds"] = json!(elapsed);
        s["peak_rss_mib"] = json!(util::peak_rss_mib());
        util::print_json(&s)?;
    } else {
        println!("{}", args.out.display());
    }
    Ok(())
}

/// The files synth writes in OUT (and each shard folder) must not be one of its inputs, such as
/// `--landscape OUT/landscape.json`.
fn refuse_overwriting_inputs(args: &Args) -> Result<()> {
    let Some(landscape) = &args.landscape else {
        return Ok(());
    };
    let names = [
        "landscape.json",
        "manifest.json",
        "particles.star",
        "particles.mrcs",
        "particles.h5",
    ];
    util::refuse_writing_over_inputs(
        std::slice::from_ref(landscape),
        &args.out,
        names,
        "the output",
    )
        .with_hint("write the data set to another folder than the one holding its landscape file, or rename the landscape file")
}

pub fn run_merge(args: MergeArgs, progress: &Progress) -> Result<()> {
    ensure!(args.batch > 0, "--batch must be at least 1");
    merge(&args.out, !args.no_h5, args.batch, progress)?;
    println!("{}", args.out.display());
    Ok(())
}

impl Plan {
    fn new(args: &Args) -> Result<Self> {
        let (landscape, base) = match (&args.landscape, args.preset) {
            (Some(path), _) => {
                let l = Landscape::from_json_file(path)?;
                let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                (l, args.structures.clone().unwrap_or(dir))
            }
            (None, Some(preset)) => {
                let l = match preset {
                    Preset::Hsp90Continuous => mcg_synth::presets::hsp90_continuous(),
                    Preset::Hsp90Discrete => mcg_synth::presets::hsp90_discrete(),
                    Preset::Hsp90Closed => mcg_synth::presets::hsp90_fixed(0.0),
                    Preset::Hsp90Open => mcg_synth::presets::hsp90_fixed(20.0),
                };
                (l, PathBuf::new())
            }
            (None, None) => bail!("give --preset or --landscape"),
        };
        let molecule = if args.landscape.is_some() {
            Molecule::load(landscape, &base)?
        } else {
            load_hsp90(landscape, args.structures.as_deref())?
        };
        info!(source = %molecule.source(), atoms = molecule.atom_count(), "molecule");
        ensure!(
            args.box_size >= 4 && args.box_size.is_multiple_of(2),
            "--box must be even and at least 4, got {}",
            args.box_size
        );
        ensure!(
            args.apix.is_finite() && args.apix > 0.0,
            "--apix must be above 0, got {}",
            args.apix
        );
        ensure!(args.states >= 2, "--states must be at least 2");
        let mut cfg = DensityConfig::new(args.box_size, args.apix);
        if let Some(r) = args.resolution {
            ensure!(
                r.is_finite() && r > 0.0,
                "--resolution must be above 0, got {r}"
            );
            cfg.resolution = r;
        }
        let imaging = args.imaging.settings()?;
        let (b, s) = (args.box_size, args.oversampling);
        let volumes = molecule.projector_volume_count();
        util::need_memory(
            &format!("--box {b} (--oversampling {s})"),
            &format!(
                "the {volumes} oversampled 3D transforms of the molecule and a batch of images"
            ),
            volumes as f64 * util::projector_bytes(b, s) + util::batch_bytes(args.batch, b),
        )?;
        util::need_calibration(args.calibration_images, b)?;
        let h5 = if args.no_h5 { 1.0 } else { 2.0 };
        util::need_disk(
            &format!("--n {} at --box {b}", args.n),
            "the particle stack and container, and the ground-truth maps",
            h5 * util::stack_bytes(args.n, b) + args.states as f64 * 4.0 * (b as f64).powi(3),
            &args.out,
        )?;
        let projector = molecule
            .projector(&cfg, args.oversampling)
            .context("--oversampling")?;
        let pipeline = SlicePipeline::new(args.box_size, args.apix);
        let ctf = !args.no_ctf;

        // σ from the clean images of particles 0 … K−1 of the whole set, the same in every shard.
        let (noise_sigma, noise) = if args.clean {
            (
                None,
                json!({"sigma": null, "snr_db": null, "snr_definition": SNR_DEFINITION}),
            )
        } else {
            let k = args.calibration_images.max(1);
            let (confs, params) = draw(&molecule, &imaging, args.seed, 0..k);
            let s2 = pipeline.signal_variance(&projector.batch(&confs), &params, ctf);
            ensure!(
                s2 > 0.0,
                "the clean images have zero variance: is the molecule empty?"
            );
            let sigma = noise::sigma_for_snr_db(s2, args.snr_db);
            (
                Some(sigma),
                json!({
                    "sigma": sigma, "snr_db": args.snr_db, "signal_variance": s2,
                    "calibration_images": k, "snr_definition": SNR_DEFINITION,
                }),
            )
        };
        let config = SimulationConfig {
            ctf,
            noise_sigma,
            normalization: args.normalize,
            seed: args.seed,
        };
        let landscape_json: Value = serde_json::from_str(&molecule.landscape().to_json_string())?;
        let settings = json!({
            "preset": args.preset.map(|p| format!("{p:?}")),
            "landscape_file": args.landscape.as_ref().map(|p| p.display().to_string()),
            "landscape": landscape_json,
            "structures": molecule.source().to_string(),
            "phantom": *molecule.source() == StructureSource::Phantom,
            "images": args.n,
            "seed": args.seed,
            "box_size": args.box_size,
            "pixel_size_A": args.apix,
            "map_resolution_A": cfg.resolution,
            "imaging": imaging,
            "pose": "uniform on SO(3)",
            "ctf": ctf,
            "noise": if args.clean { Value::Null } else { json!({"snr_db": args.snr_db, "calibration_images": args.calibration_images.max(1)}) },
            "oversampling": args.oversampling,
            "normalization": args.normalize,
            "states": args.states,
        });
        Ok(Self {
            molecule,
            projector,
            pipeline,
            cfg,
            imaging,
            config,
            n: args.n,
            seed: args.seed,
            settings,
            noise,
        })
    }
}

/// The Hsp90 molecule from the structure files, or the phantom when they are not found (an
/// error when the user named a folder that lacks them).
fn load_hsp90(landscape: Landscape, structures: Option<&Path>) -> Result<Molecule> {
    let from_env = std::env::var_os(STRUCTURES_ENV).map(PathBuf::from);
    let (dir, explicit) = match (structures, from_env) {
        (Some(d), _) => (d.to_path_buf(), Some("--structures")),
        (None, Some(d)) => (d, Some(STRUCTURES_ENV)),
        (None, None) => (PathBuf::from(DEFAULT_STRUCTURES), None),
    };
    let files = landscape.structure_paths(&dir);
    let present = files.iter().all(|f| f.is_file());
    match (present, explicit) {
        (true, _) => {
            info!(folder = %dir.display(), "Hsp90 structures");
            Ok(Molecule::load(landscape, &dir)?)
        }
        (false, Some(what)) => {
            let missing: Vec<String> = files
                .iter()
                .filter(|f| !f.is_file())
                .map(|f| f.display().to_string())
                .collect();
            Err(anyhow::anyhow!(
                "{what} {}: missing {}",
                dir.display(),
                missing.join(", ")
            ))
            .with_hint("point it at the folder holding 2cg9_chainA_res12-677.pdb and 2cg9_chainB_res12-677.pdb, or leave it out to use the built-in phantom")
        }
        (false, None) => {
            warn!(
                "the Hsp90 structures are not in {} (set --structures or {STRUCTURES_ENV}): using the built-in Hsp90-like phantom",
                dir.display()
            );
            Ok(Molecule::hsp90_phantom(landscape)?)
        }
    }
}

/// Conformations and imaging parameters of the particles `range` (global indices).
fn draw(
    molecule: &Molecule,
    imaging: &RandomImaging,
    seed: u64,
    range: std::ops::Range<usize>,
) -> (Vec<Conformation>, Vec<ImagingParams>) {
    use rayon::prelude::*;
    range
        .into_par_iter()
        .map(|i| {
            let i = i as u64;
            (molecule.conformation(seed, i), imaging.draw(seed, i))
        })
        .unzip()
}

/// Writes OUT/landscape.json and the ground-truth maps OUT/ground_truth/NAME.mrc (skipped when
/// they are all there already, as when shards share a folder). Returns the states' names.
fn write_landscape_and_truth(
    plan: &Plan,
    out: &Path,
    count: usize,
    progress: &Progress,
) -> Result<Vec<String>> {
    let landscape: Value = serde_json::from_str(&plan.molecule.landscape().to_json_string())?;
    util::write_json_atomic(&out.join("landscape.json"), &landscape)?;
    let dir = out.join("ground_truth");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let states = plan.molecule.ground_truth_states(count);
    let names: Vec<String> = states.iter().map(|(n, _)| n.clone()).collect();
    let record = json!({"settings": plan.settings, "states": names});
    let record_path = dir.join("states.json");
    let old = read_json(&record_path);
    if old.as_ref().is_some_and(|r| *r == record)
        && names.iter().all(|n| dir.join(format!("{n}.mrc")).is_file())
    {
        return Ok(names);
    }
    // The maps of an earlier run with other settings (fewer --states, say) that this run does
    // not make go, so that the folder holds one run's truth; only maps that run listed.
    let old_names = old
        .as_ref()
        .and_then(|r| r["states"].as_array().cloned())
        .unwrap_or_default();
    // Maps first, the record last: a kill between them leaves a record that the next run
    // reads again. Only plain names (no path) are ever removed.
    for stale in old_names.iter().filter_map(Value::as_str) {
        let plain = Path::new(stale).file_name() == Some(std::ffi::OsStr::new(stale));
        if plain && !names.iter().any(|n| n == stale) {
            let map = dir.join(format!("{stale}.mrc"));
            std::fs::remove_file(&map)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .with_context(|| format!("removing the earlier run's map {}", map.display()))?;
        }
    }
    std::fs::remove_file(&record_path).ok();
    for (name, c) in &states {
        progress.check_cancelled()?;
        let volume = plan.molecule.density(c, &plan.cfg)?;
        mrc::write_volume(&dir.join(format!("{name}.mrc")), &volume)?;
    }
    util::write_json_atomic(&record_path, &record)?;
    info!(maps = states.len(), folder = %dir.display(), "ground truth");
    Ok(names)
}

/// The whole set in OUT.
fn run_whole(plan: &Plan, args: &Args, progress: &Progress) -> Result<Value> {
    let out = &args.out;
    let manifest_path = out.join("manifest.json");
    if is_complete(
        &manifest_path,
        &plan.settings,
        &["particles.mrcs", "particles.star"],
    ) {
        info!(
            "{} is complete with these settings: nothing to do",
            out.display()
        );
        return Ok(json!({"out": out, "images": plan.n, "skipped": true}));
    }
    let start = Instant::now();
    let h5 = (!args.no_h5).then(|| out.join("particles.h5"));
    let made = simulate_range(plan, 0..plan.n, out, h5.as_deref(), args.batch, progress)?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut outputs = json!({"stack": "particles.mrcs", "star": "particles.star",
        "ground_truth": "ground_truth", "landscape": "landscape.json"});
    if h5.is_some() {
        outputs["h5"] = json!("particles.h5");
    }
    let manifest = manifest(plan, &made, outputs, elapsed, None);
    util::write_json_atomic(&manifest_path, &manifest)?;
    info!(
        rate = format!("{:.0} images/s", plan.n as f64 / elapsed),
        "wrote {}",
        out.display()
    );
    Ok(
        json!({"out": out, "images": plan.n, "images_per_second": plan.n as f64 / elapsed,
        "noise_sigma": plan.config.noise_sigma, "class_counts": made.class_counts}),
    )
}

/// Shard K of M in OUT/shards/K-of-M; skipped when already complete. Returns its image count.
fn run_shard(plan: &Plan, args: &Args, k: usize, m: usize, progress: &Progress) -> Result<usize> {
    let dir = shard_dir(&args.out, k, m);
    let range = shard_range(plan.n, k, m);
    let manifest_path = dir.join("manifest.json");
    if is_complete(
        &manifest_path,
        &plan.settings,
        &["particles.mrcs", "particles.star"],
    ) {
        info!("shard {k}/{m} is complete: skipped");
        return Ok(range.len());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let start = Instant::now();
    let count = range.len();
    let made = simulate_range(plan, range.clone(), &dir, None, args.batch, progress)?;
    let elapsed = start.elapsed().as_secs_f64();
    let outputs = json!({"stack": "particles.mrcs", "star": "particles.star"});
    let shard = json!({"index": k, "of": m, "first_particle": range.start, "images": count});
    let manifest = manifest(plan, &made, outputs, elapsed, Some(shard));
    util::write_json_atomic(&manifest_path, &manifest)?;
    info!("shard {k}/{m}: {count} images in {elapsed:.1} s");
    Ok(count)
}

/// What [`simulate_range`] made, for the manifest.
struct Made {
    class_counts: Option<Vec<usize>>,
}

/// Simulates the particles `range` (global indices) into `dir`: particles.mrcs, particles.star
/// and, when `h5` is given, the container with the ground-truth maps.
fn simulate_range(
    plan: &Plan,
    range: std::ops::Range<usize>,
    dir: &Path,
    h5: Option<&Path>,
    batch: usize,
    progress: &Progress,
) -> Result<Made> {
    let (n_box, apix) = (plan.pipeline.box_size(), plan.pipeline.apix());
    let count = range.len();
    let mrc = MrcStackWriter::create(&dir.join("particles.mrcs"), n_box, n_box, apix)?;
    let h5 = match h5 {
        Some(path) => {
            let mut w = H5Writer::create(path, n_box, apix, count)?;
            add_ground_truth(&mut w, dir)?;
            Some((w, 0))
        }
        None => None,
    };
    let parameters = &plan.molecule.landscape().parameters;
    let mut particles = Vec::with_capacity(count);
    let mut values: Vec<Vec<String>> = vec![Vec::with_capacity(count); parameters.len()];
    let bar = progress.bar(count as u64, "synthesising");
    let sinks = write_overlapped(
        Sinks { mrc, h5 },
        count,
        batch,
        n_box,
        progress,
        |first, out| {
            let lo = range.start + first;
            let (confs, params) = draw(
                &plan.molecule,
                &plan.imaging,
                plan.seed,
                lo..lo + out.dim().0,
            );
            plan.pipeline.simulate(
                &plan.projector.batch(&confs),
                &params,
                &plan.config,
                lo as u64,
                out,
            );
            for (c, p) in confs.iter().zip(&params) {
                particles.push(Particle {
                    image: None,
                    optics_group: 0,
                    pose: Some(p.pose),
                    shift: p.shift,
                    ctf: p.ctf,
                    class: plan.molecule.class_of(c),
                });
                for (column, v) in values.iter_mut().zip(&c.values) {
                    column.push(v.to_string());
                }
            }
            bar.inc(params.len() as u64);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    sinks.mrc.finish()?;

    let first = plan.imaging.draw(plan.seed, range.start as u64);
    let mut set = ParticleSet {
        optics: vec![OpticsGroup::single(apix, Some(n_box), &first.ctf)],
        particles,
        extra: parameters
            .iter()
            .map(|p| landscape::star_column(&p.name))
            .zip(values)
            .collect(),
        base_dir: dir.to_path_buf(),
    };
    for (i, p) in set.particles.iter_mut().enumerate() {
        p.image = Some(ImageRef {
            path: PathBuf::from("particles.mrcs"),
            index: i,
        });
    }
    star::write_particles_with_notes(&dir.join("particles.star"), &set, &star_notes(plan))?;
    if let Some((w, _)) = sinks.h5 {
        w.finish(&set)?;
    }
    Ok(Made {
        class_counts: class_counts(&set),
    })
}

/// Header comments of the particle STAR: the columns this program adds.
fn star_notes(plan: &Plan) -> Vec<String> {
    let mut notes = vec![format!(
        "written by multicryogan {} synth (landscape {:?}, seed {})",
        env!("CARGO_PKG_VERSION"),
        plan.molecule.landscape().name,
        plan.seed
    )];
    for p in &plan.molecule.landscape().parameters {
        notes.push(format!(
            "{}: the true value of motion parameter {:?} (degrees for hinge angles) of each particle",
            landscape::star_column(&p.name),
            p.name
        ));
    }
    if plan.molecule.landscape().is_discrete()
        || plan.molecule.landscape().discrete_models.is_some()
    {
        notes.push("_rlnClassNumber: the true conformation (1-based; see manifest.json)".into());
    }
    notes
}

fn class_counts(set: &ParticleSet) -> Option<Vec<usize>> {
    let max = set.particles.iter().filter_map(|p| p.class).max()? as usize;
    let mut counts = vec![0; max];
    for p in &set.particles {
        if let Some(c) = p.class {
            counts[c as usize - 1] += 1;
        }
    }
    Some(counts)
}

fn manifest(plan: &Plan, made: &Made, outputs: Value, elapsed: f64, shard: Option<Value>) -> Value {
    json!({
        "software": concat!("multicryogan ", env!("CARGO_PKG_VERSION")),
        "command": std::env::args().collect::<Vec<_>>(),
        "settings": plan.settings,
        "molecule": plan.molecule.describe(),
        "noise": plan.noise,
        "shard": shard,
        "class_counts": made.class_counts,
        "outputs": outputs,
        "wall_seconds": elapsed,
    })
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Whether `manifest` exists, records `settings`, and the files it lists beside it exist.
fn is_complete(manifest: &Path, settings: &Value, files: &[&str]) -> bool {
    let dir = manifest.parent().unwrap_or(Path::new("."));
    read_json(manifest).is_some_and(|m| &m["settings"] == settings)
        && files.iter().all(|f| dir.join(f).is_file())
}

fn shard_dir(out: &Path, k: usize, m: usize) -> PathBuf {
    out.join("shards").join(format!("{k}-of-{m}"))
}

/// The global particle indices of shard `k` of `m` (1-based): contiguous, sizes differing by
/// at most one.
fn shard_range(n: usize, k: usize, m: usize) -> std::ops::Range<usize> {
    (n * (k - 1) / m)..(n * k / m)
}

fn parse_shard(text: &str, n: usize) -> Result<(usize, usize)> {
    let parsed = text.split_once('/').and_then(|(a, b)| {
        Some((
            a.trim().parse::<usize>().ok()?,
            b.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((k, m)) if 1 <= k && k <= m && m <= n => Ok((k, m)),
        _ => bail!("--shard {text:?}: expected K/M with 1 ≤ K ≤ M ≤ --n ({n}), e.g. 3/100"),
    }
}

/// Merges OUT/shards/K-of-M into OUT/particles.star (+ .h5) and OUT/manifest.json.
fn merge(out: &Path, h5: bool, batch: usize, progress: &Progress) -> Result<Value> {
    let shards_dir = out.join("shards");
    let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir(&shards_dir)
        .with_context(|| format!("reading {}", shards_dir.display()))
        .with_hint("run multicryogan synth --shard K/M --out OUT first")?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((k, m)) = name.split_once("-of-")
            && let (Ok(k), Ok(m)) = (k.parse(), m.parse())
        {
            found.push((k, m, entry.path()));
        }
    }
    found.sort();
    let Some(&(_, m, _)) = found.first() else {
        bail!("{}: no shard folders (K-of-M)", shards_dir.display());
    };
    if let Some((_, other, path)) = found.iter().find(|(_, mm, _)| *mm != m) {
        bail!(
            "{}: a shard of {other} parts beside shards of {m}; remove the stale folders",
            path.display()
        );
    }
    let mut manifests: Vec<Value> = Vec::new();
    for k in 1..=m {
        let dir = shard_dir(out, k, m);
        let path = dir.join("manifest.json");
        let manifest = read_json(&path).with_context(|| {
            format!(
                "shard {k}/{m} is missing or unfinished: no readable {}",
                path.display()
            )
        })?;
        if let Some(first) = manifests.first()
            && manifest["settings"] != first["settings"]
        {
            bail!(
                "{}: shard {k}/{m} was made with other settings than shard 1/{m}",
                path.display()
            );
        }
        manifests.push(manifest);
    }
    let mut merged: Option<ParticleSet> = None;
    for k in 1..=m {
        let dir = shard_dir(out, k, m);
        // Opening the images checks each shard's stack (a truncated one is refused) before
        // anything is written.
        let (mut set, _) =
            crate::input::particles(&dir.join("particles.star"), &Default::default())?;
        let rel = PathBuf::from("shards")
            .join(format!("{k}-of-{m}"))
            .join("particles.mrcs");
        for p in &mut set.particles {
            if let Some(image) = &mut p.image {
                image.path = rel.clone();
            }
        }
        match &mut merged {
            None => merged = Some(set),
            Some(all) => {
                all.particles.extend(set.particles);
                for ((label, values), (other, more)) in all.extra.iter_mut().zip(set.extra) {
                    ensure!(
                        *label == other,
                        "shard {k}/{m}: column {other} where {label} was expected"
                    );
                    values.extend(more);
                }
            }
        }
    }
    let mut set = merged.expect("at least one shard");
    set.base_dir = out.to_path_buf();
    let notes = std::fs::read_to_string(shard_dir(out, 1, m).join("particles.star"))?
        .lines()
        .take_while(|l| l.starts_with("# ") && !l.starts_with("# version"))
        .map(|l| l[2..].to_string())
        .collect::<Vec<_>>();
    let star_path = out.join("particles.star");
    let n = set.len();
    let mut outputs = json!({"star": "particles.star", "stacks": "shards/K-of-M/particles.mrcs",
        "ground_truth": "ground_truth", "landscape": "landscape.json"});
    // The container first, then the STAR file, then the manifest: a merge that fails leaves
    // none of the three new.
    if h5 {
        let images: Box<dyn mcg_formats::ImageSource> =
            Box::new(mcg_formats::stack_source::StackImages::open(&set)?);
        let path = out.join("particles.h5");
        let mut writer = H5Writer::create(&path, images.box_size(), images.pixel_size(), n)?;
        add_ground_truth(&mut writer, out)?;
        let bar = progress.bar(n as u64, "container");
        crate::convert::copy_images(
            images.as_ref(),
            batch,
            |b, start| writer.write_images(start, b.view()).map_err(Into::into),
            &bar,
            progress,
        )?;
        bar.finish_and_clear();
        writer.finish(&set)?;
        outputs["h5"] = json!("particles.h5");
    }
    star::write_particles_with_notes(&star_path, &set, &notes)?;
    let mut manifest = manifests[0].clone();
    manifest["shard"] = Value::Null;
    manifest["shards"] = json!(m);
    manifest["outputs"] = outputs;
    manifest["class_counts"] = json!(class_counts(&set));
    manifest["wall_seconds"] = json!(
        manifests
            .iter()
            .filter_map(|m| m["wall_seconds"].as_f64())
            .sum::<f64>()
    );
    util::write_json_atomic(&out.join("manifest.json"), &manifest)?;
    info!(
        images = n,
        shards = m,
        "merged into {}",
        star_path.display()
    );
    Ok(json!({"out": out, "images": n, "shards": m}))
}

/// Adds the maps of OUT/ground_truth (as listed in its states.json) to a container.
fn add_ground_truth(writer: &mut H5Writer, out: &Path) -> Result<()> {
    let dir = out.join("ground_truth");
    let record = dir.join("states.json");
    let states = read_json(&record)
        .and_then(|r| r["states"].as_array().cloned())
        .with_context(|| format!("{}: no list of ground-truth states", record.display()))?;
    for name in states.iter().filter_map(Value::as_str) {
        let map = dir.join(format!("{name}.mrc"));
        writer.write_ground_truth_volume(name, &mrc::read_volume(&map, None)?)?;
    }
    Ok(())
}
