//! Synthetic particle sets of a conformational landscape (the Hsp90 benchmark or a user's),
//! whole or in shards: [`SynthSettings`] in, a data-set folder ([`crate::folder`]) out.
//!
//! Each particle gets a conformation drawn from the landscape, a uniform random pose, a CTF
//! and Gaussian noise, white (the paper's) or coloured ([`NoiseModel`]); [`Conditions`] bundles
//! the paper's or CryoBench-like realistic settings. Rigid-body landscapes are projected body by body (one Fourier slice per
//! body, no volume per image). Interrupted, it keeps only complete files (landscape.json,
//! ground_truth/, finished shards); the same settings run again remove what a killed run left
//! and give the files of an uninterrupted run, bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::mrc::{self, MrcStackWriter};
use mcg_formats::{ImageRef, OpticsGroup, Particle, ParticleSet, star};
use mcg_h5::H5Writer;
use mcg_physics::noise::{self, NoiseSpectrum, SNR_DEFINITION, SNR_DEFINITION_COLOURED};
use mcg_physics::normalize::Normalization;
use mcg_physics::simulate::{ImagingParams, RandomImaging, SimulationConfig, SlicePipeline};
use mcg_synth::landscape::{self, Landscape};
use mcg_synth::{Conformation, ConformationProjector, DensityConfig, Molecule, StructureSource};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::folder::{
    BACKGROUND, DataSetDir, GROUND_TRUTH, H5, LANDSCAPE, MANIFEST, Manifest, Noise, Outputs, STACK,
    STAR, ShardInfo, StatesRecord,
};
use crate::guard;
use crate::hint::WithHint;
use crate::monitor::Monitor;
use crate::sinks::{Sinks, write_overlapped};

/// Environment variable naming the folder of the Hsp90 structure files.
pub const STRUCTURES_ENV: &str = "MULTICRYOGAN_STRUCTURES";

/// Where the Hsp90 presets look for the structures when neither [`SynthSettings::structures`]
/// nor the environment variable is given (relative to the current folder: a checkout beside
/// `shared`).
pub const DEFAULT_STRUCTURES: &str = "../shared/data/structures/hsp90";

/// The built-in landscapes.
// The variant names are the command line's values (hsp90-…), hence the shared prefix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Hsp90, β ~ U(0°, 20°) (the paper's continuous set).
    Hsp90Continuous,
    /// Hsp90, β = 20°·Bernoulli(0.75): 25 % closed, 75 % open (the paper's discrete set).
    Hsp90Discrete,
    /// Hsp90 closed, β = 0° only (a single-conformation set).
    Hsp90Closed,
    /// Hsp90 open, β = 20° only.
    Hsp90Open,
}

/// Where the landscape comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum LandscapeSource {
    /// A built-in landscape (the Hsp90 structures, or the phantom when they are absent).
    Preset(Preset),
    /// A landscape JSON file; its structure paths are relative to its folder (or to
    /// [`SynthSettings::structures`]).
    File(PathBuf),
}

/// The shape of the noise's power spectrum; its level is always set by the SNR (σ² is the
/// noise's pixel variance).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum NoiseModel {
    /// White Gaussian noise (the paper's).
    #[default]
    White,
    /// Coloured noise of [`NoiseSpectrum::realistic`]: a detector-like fall-off with excess
    /// power at low frequency, about 10× more power at DC than at Nyquist.
    Realistic,
    /// Coloured noise of the shape in a JSON file of [`NoiseSpectrum`]'s form,
    /// `{"box_size": N, "power": [P₀, …]}` (N the set's box; the table's scale does not
    /// matter).
    Spectrum(PathBuf),
}

/// `white`, `realistic` or `spectrum:FILE` (also `spectrum=FILE`), as `--noise` takes them.
impl std::str::FromStr for NoiseModel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "white" => Ok(Self::White),
            "realistic" => Ok(Self::Realistic),
            other => match other
                .strip_prefix("spectrum:")
                .or_else(|| other.strip_prefix("spectrum="))
            {
                Some(path) if !path.is_empty() => Ok(Self::Spectrum(PathBuf::from(path))),
                _ => Err(format!(
                    "unknown noise {other:?}: expected white, realistic or spectrum:FILE.json"
                )),
            },
        }
    }
}

/// Bundles of imaging conditions; single settings given afterwards override them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Conditions {
    /// The Multi-CryoGAN paper's: −10 dB, white noise, no shifts, no normalisation (the
    /// defaults of [`SynthSettings::new`]).
    #[default]
    Paper,
    /// CryoBench-like: −20 dB, the realistic coloured noise, Gaussian shifts of σ = 2 pixels
    /// per axis, RELION's background normalisation (radius N/2 − 1), bright particles.
    Realistic,
}

/// Whether the set is made whole or in parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharding {
    /// The whole set in OUT.
    Whole,
    /// Only part `k` of `m` (1 ≤ k ≤ m), in OUT/shards/k-of-m: the images the whole set
    /// would hold there.
    One {
        /// K.
        k: usize,
        /// M.
        m: usize,
    },
    /// All `m` parts one after the other (finished ones skipped), then merged.
    All {
        /// M.
        m: usize,
    },
}

/// Everything that defines a synthetic set. [`SynthSettings::new`] gives the CLI's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSettings {
    /// The landscape.
    pub landscape: LandscapeSource,
    /// Folder of the structure files (default for the presets: $MULTICRYOGAN_STRUCTURES, then
    /// [`DEFAULT_STRUCTURES`]; for a file: its folder).
    pub structures: Option<PathBuf>,
    /// Number of particles.
    pub n: usize,
    /// Output folder.
    pub out: PathBuf,
    /// Master seed: the same seed and settings give the same data, bit for bit.
    pub seed: u64,
    /// Noise level, dB (data-set level: mean clean-image variance over the box divided by σ²).
    pub snr_db: f64,
    /// No noise (clean images).
    pub clean: bool,
    /// Apply the CTF.
    pub ctf: bool,
    /// Image and map box, pixels (even, ≥ 4).
    pub box_size: usize,
    /// Pixel (voxel) size, Å.
    pub apix: f64,
    /// Resolution of the density maps, Å (default 2 × apix).
    pub resolution: Option<f64>,
    /// The distributions of the random imaging parameters.
    pub imaging: RandomImaging,
    /// Oversampling of the projectors' 3D transforms: 2 or 4.
    pub oversampling: usize,
    /// Per-image normalisation.
    pub normalization: Normalization,
    /// Clean images (particles 1 … K of the whole set) whose mean variance sets σ.
    pub calibration_images: usize,
    /// Ground-truth maps written along the landscape (at least 2).
    pub states: usize,
    /// Whole or in shards.
    pub sharding: Sharding,
    /// Write the HDF5 container.
    pub h5: bool,
    /// Images formed per batch (memory is proportional to it).
    pub batch: usize,
    /// The command line recorded in the manifests (empty from a library call).
    pub command: Vec<String>,
    /// The noise's spectrum shape.
    pub noise: NoiseModel,
    /// Pure-noise images written to OUT/background.mrcs (the particles' noise spectrum, σ and
    /// normalisation, no particle); 0 for none. Whole sets only.
    pub background_images: usize,
    /// The bundle [`SynthSettings::apply_conditions`] applied last, recorded in the manifest
    /// when not the paper's.
    pub conditions: Conditions,
}

impl SynthSettings {
    /// `n` particles of `landscape` into `out`, with the CLI's defaults: seed 0, −10 dB, CTF,
    /// a 32² box of 5 Å pixels, the paper's imaging, oversampling 2, no normalisation, 1,000
    /// calibration images, 21 states, whole, with the HDF5 container.
    pub fn new(landscape: LandscapeSource, n: usize, out: impl Into<PathBuf>) -> Self {
        Self {
            landscape,
            structures: None,
            n,
            out: out.into(),
            seed: 0,
            snr_db: -10.0,
            clean: false,
            ctf: true,
            box_size: 32,
            apix: 5.0,
            resolution: None,
            imaging: RandomImaging::default(),
            oversampling: 2,
            normalization: Normalization::None,
            calibration_images: 1000,
            states: 21,
            sharding: Sharding::Whole,
            h5: true,
            batch: 4096,
            command: Vec::new(),
            noise: NoiseModel::White,
            background_images: 0,
            conditions: Conditions::Paper,
        }
    }

    /// Sets the values of a bundle of conditions (see [`Conditions`]); the shifts are in pixels
    /// of the current [`Self::apix`], so set the pixel size first. Settings changed afterwards
    /// override the bundle's.
    pub fn apply_conditions(&mut self, conditions: Conditions) {
        self.conditions = conditions;
        match conditions {
            Conditions::Paper => {
                self.snr_db = -10.0;
                self.noise = NoiseModel::White;
                self.imaging.max_shift = 0.0;
                self.imaging.shift_sigma = None;
                self.normalization = Normalization::None;
            }
            Conditions::Realistic => {
                self.snr_db = -20.0;
                self.noise = NoiseModel::Realistic;
                self.imaging.max_shift = 0.0;
                self.imaging.shift_sigma = Some(2.0 * self.apix);
                self.normalization = Normalization::Background { radius_px: None };
            }
        }
    }

    /// Shifts given on top of a bundle of conditions: uniform in a disc of `max_shift` Å (when
    /// above 0; it replaces the bundle's shifts) or Gaussian of `shift_sigma_px` pixels per
    /// axis (of the current [`Self::apix`]), not both. Errors name the flags.
    pub fn override_shifts(&mut self, max_shift: f64, shift_sigma_px: Option<f64>) -> Result<()> {
        if max_shift > 0.0 {
            ensure!(
                shift_sigma_px.is_none(),
                "--shift-sigma and --max-shift: give one of them (Gaussian or uniform shifts)"
            );
            self.imaging.max_shift = max_shift;
            self.imaging.shift_sigma = None;
        }
        if let Some(px) = shift_sigma_px {
            ensure!(
                px >= 0.0,
                "--shift-sigma {px}: expected a standard deviation ≥ 0 pixels"
            );
            self.imaging.shift_sigma = Some(px * self.apix);
        }
        Ok(())
    }

    fn preset(&self) -> Option<Preset> {
        match self.landscape {
            LandscapeSource::Preset(p) => Some(p),
            LandscapeSource::File(_) => None,
        }
    }

    fn landscape_file(&self) -> Option<&Path> {
        match &self.landscape {
            LandscapeSource::File(p) => Some(p),
            LandscapeSource::Preset(_) => None,
        }
    }
}

/// Everything a run needs, built once from the settings.
struct Plan {
    molecule: Molecule,
    projector: ConformationProjector,
    pipeline: SlicePipeline,
    cfg: DensityConfig,
    imaging: RandomImaging,
    config: SimulationConfig,
    n: usize,
    background_images: usize,
    seed: u64,
    /// Settings as recorded in manifests; runs with equal settings make equal data.
    settings: Value,
    noise: Noise,
}

/// Makes the set `s` describes (see the module notes). Returns a summary (the folder, the
/// image count, the rate, σ, the class counts; for shards their numbers).
pub fn synthesize(s: &SynthSettings, progress: &dyn Monitor) -> Result<Value> {
    ensure!(s.batch > 0, "--batch must be at least 1");
    ensure!(s.n > 0, "--n must be at least 1");
    ensure!(
        s.snr_db.is_finite(),
        "--snr-db must be a finite number of dB, got {}",
        s.snr_db
    );
    let start = Instant::now();
    // Every setting is checked before anything is written.
    match s.sharding {
        Sharding::One { k, m } => ensure!(
            1 <= k && k <= m && m <= s.n,
            "--shard {k}/{m}: expected K/M with 1 ≤ K ≤ M ≤ --n ({})",
            s.n
        ),
        Sharding::All { m } => ensure!(
            (1..=s.n).contains(&m),
            "--shards {m}: expected 1 to --n ({}) shards",
            s.n
        ),
        Sharding::Whole => {}
    }
    refuse_overwriting_inputs(s)?;
    let out = DataSetDir::new(&s.out);
    // What a killed run left is removed before the disk is measured: its space is ours.
    for dir in std::iter::once(s.out.clone()).chain(
        std::fs::read_dir(out.shards())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    ) {
        mcg_fsio::remove_stale(&dir);
    }
    let plan = Plan::new(s)?;
    std::fs::create_dir_all(&s.out)
        .with_context(|| format!("creating the output folder {}", s.out.display()))?;
    write_landscape_and_truth(&plan, &out, s.states, progress)?;
    let summary = match s.sharding {
        Sharding::One { k, m } => {
            let images = run_shard(&plan, s, k, m, progress)?;
            json!({"out": out.shard(k, m).root(), "shard": [k, m], "images": images})
        }
        Sharding::All { m } => {
            for k in 1..=m {
                run_shard(&plan, s, k, m, progress)?;
            }
            crate::merge::merge_shards(&s.out, s.h5, s.batch, progress)?
        }
        Sharding::Whole => run_whole(&plan, s, progress)?,
    };
    info!(
        seconds = format!("{:.2}", start.elapsed().as_secs_f64()),
        "done"
    );
    Ok(summary)
}

/// The files synth writes in OUT (and each shard folder) must not be one of its inputs, such as
/// `--landscape OUT/landscape.json`.
fn refuse_overwriting_inputs(s: &SynthSettings) -> Result<()> {
    let mut inputs: Vec<PathBuf> = Vec::new();
    if let LandscapeSource::File(landscape) = &s.landscape {
        inputs.push(landscape.clone());
    }
    if let NoiseModel::Spectrum(spectrum) = &s.noise {
        inputs.push(spectrum.clone());
    }
    if inputs.is_empty() {
        return Ok(());
    }
    guard::refuse_writing_over_inputs(
        &inputs,
        &s.out,
        [LANDSCAPE, MANIFEST, STAR, STACK, H5, BACKGROUND],
        "the output",
    )
        .with_hint("write the data set to another folder than the one holding its landscape or spectrum file, or rename that file")
}

impl Plan {
    fn new(s: &SynthSettings) -> Result<Self> {
        let molecule = match &s.landscape {
            LandscapeSource::File(path) => {
                let l = Landscape::from_json_file(path)?;
                let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                Molecule::load(l, &s.structures.clone().unwrap_or(dir))?
            }
            LandscapeSource::Preset(preset) => {
                let l = match preset {
                    Preset::Hsp90Continuous => mcg_synth::presets::hsp90_continuous(),
                    Preset::Hsp90Discrete => mcg_synth::presets::hsp90_discrete(),
                    Preset::Hsp90Closed => mcg_synth::presets::hsp90_fixed(0.0),
                    Preset::Hsp90Open => mcg_synth::presets::hsp90_fixed(20.0),
                };
                load_hsp90(l, s.structures.as_deref())?
            }
        };
        info!(source = %molecule.source(), atoms = molecule.atom_count(), "molecule");
        ensure!(
            s.box_size >= 4 && s.box_size.is_multiple_of(2),
            "--box must be even and at least 4, got {}",
            s.box_size
        );
        ensure!(
            s.apix.is_finite() && s.apix > 0.0,
            "--apix must be above 0, got {}",
            s.apix
        );
        ensure!(s.states >= 2, "--states must be at least 2");
        let mut cfg = DensityConfig::new(s.box_size, s.apix);
        if let Some(r) = s.resolution {
            ensure!(
                r.is_finite() && r > 0.0,
                "--resolution must be above 0, got {r}"
            );
            cfg.resolution = r;
        }
        let imaging = s.imaging;
        imaging
            .validate()
            .map_err(|m| anyhow::anyhow!("the imaging settings: {m}"))?;
        let (b, over) = (s.box_size, s.oversampling);
        let volumes = molecule.projector_volume_count();
        guard::need_memory(
            &format!("--box {b} (--oversampling {over})"),
            &format!(
                "the {volumes} oversampled 3D transforms of the molecule and a batch of images"
            ),
            volumes as f64 * guard::projector_bytes(b, over) + guard::batch_bytes(s.batch, b),
        )?;
        guard::need_calibration(s.calibration_images, b)?;
        let h5 = if s.h5 { 2.0 } else { 1.0 };
        guard::need_disk(
            &format!("--n {} at --box {b}", s.n),
            "the particle stack and container, and the ground-truth maps",
            h5 * guard::stack_bytes(s.n, b) + s.states as f64 * 4.0 * (b as f64).powi(3),
            &s.out,
        )?;
        let projector = molecule
            .projector(&cfg, s.oversampling)
            .context("--oversampling")?;
        let pipeline = SlicePipeline::new(s.box_size, s.apix);
        let ctf = s.ctf;
        let shape = noise_shape(s)?;
        if s.background_images > 0 {
            ensure!(
                !s.clean,
                "--background {}: a clean set has no noise to make background images of",
                s.background_images
            );
            ensure!(
                s.sharding == Sharding::Whole,
                "--background {}: background images are made with whole sets only, not with \
                 --shard or --shards",
                s.background_images
            );
        }

        // σ from the clean images of particles 0 … K−1 of the whole set, the same in every shard.
        let (noise_sigma, noise) = if s.clean {
            (
                None,
                Noise {
                    sigma: None,
                    snr_db: None,
                    signal_variance: None,
                    calibration_images: None,
                    snr_definition: SNR_DEFINITION.into(),
                    model: None,
                    spectrum: None,
                },
            )
        } else {
            let k = s.calibration_images.max(1);
            let (confs, params) = draw(&molecule, &imaging, s.seed, 0..k);
            let s2 = pipeline.signal_variance(&projector.batch(&confs), &params, ctf);
            ensure!(
                s2 > 0.0,
                "the clean images have zero variance: is the molecule empty?"
            );
            let sigma = noise::sigma_for_snr_db(s2, s.snr_db);
            (
                Some(sigma),
                Noise {
                    sigma: Some(sigma),
                    snr_db: Some(s.snr_db),
                    signal_variance: Some(s2),
                    calibration_images: Some(k),
                    snr_definition: if shape.is_some() {
                        SNR_DEFINITION_COLOURED
                    } else {
                        SNR_DEFINITION
                    }
                    .into(),
                    model: shape.as_ref().map(|(name, _)| name.clone()),
                    spectrum: shape
                        .as_ref()
                        .map(|(_, p)| p.scaled_to_variance(sigma * sigma)),
                },
            )
        };
        let config = SimulationConfig {
            ctf,
            noise_sigma,
            noise_spectrum: shape.as_ref().map(|(_, p)| p.clone()),
            normalization: s.normalization,
            seed: s.seed,
        };
        config
            .validate(s.box_size)
            .map_err(|e| anyhow::anyhow!("the noise and normalisation settings: {e}"))?;
        let landscape_json: Value = serde_json::from_str(&molecule.landscape().to_json_string())?;
        let mut settings = json!({
            "preset": s.preset().map(|p| format!("{p:?}")),
            "landscape_file": s.landscape_file().map(|p| p.display().to_string()),
            "landscape": landscape_json,
            "structures": molecule.source().to_string(),
            "phantom": *molecule.source() == StructureSource::Phantom,
            "images": s.n,
            "seed": s.seed,
            "box_size": s.box_size,
            "pixel_size_A": s.apix,
            "map_resolution_A": cfg.resolution,
            "imaging": imaging,
            "pose": "uniform on SO(3)",
            "ctf": ctf,
            "noise": noise_settings(s, shape.as_ref()),
            "oversampling": s.oversampling,
            "normalization": s.normalization,
            "states": s.states,
        });
        // Keys that older sets lack are added only when used, so that their settings (and
        // whether a folder is complete) read as before.
        if s.background_images > 0 {
            settings["background_images"] = json!(s.background_images);
        }
        if s.conditions != Conditions::Paper {
            settings["conditions"] = json!(format!("{:?}", s.conditions).to_lowercase());
        }
        Ok(Self {
            molecule,
            projector,
            pipeline,
            cfg,
            imaging,
            config,
            n: s.n,
            background_images: s.background_images,
            seed: s.seed,
            settings,
            noise,
        })
    }
}

/// The coloured noise's shape, named (`realistic` or the file), or `None` for white noise. A
/// spectrum file is read and checked here, before anything is written; errors name the file
/// and the field.
fn noise_shape(s: &SynthSettings) -> Result<Option<(String, NoiseSpectrum)>> {
    match &s.noise {
        NoiseModel::White => Ok(None),
        NoiseModel::Realistic => Ok(Some((
            "realistic".into(),
            NoiseSpectrum::realistic(s.box_size, 1.0),
        ))),
        NoiseModel::Spectrum(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the noise spectrum {}", path.display()))?;
            // serde's message names the field ("missing field `power`", "power[3]: …").
            let spectrum: NoiseSpectrum = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
                .with_hint("a noise spectrum file is {\"box_size\": N, \"power\": [P0, P1, …]} with ⌈N/√2⌉ + 1 powers ≥ 0, one per radius 0, 1, … in Fourier index units")?;
            ensure!(
                spectrum.box_size() == s.box_size,
                "{}: box_size: {}, expected the set's box, --box {}",
                path.display(),
                spectrum.box_size(),
                s.box_size
            );
            Ok(Some((path.display().to_string(), spectrum)))
        }
    }
}

/// The noise part of the recorded settings: null for a clean set; the SNR and calibration, and
/// for coloured noise its model and a fingerprint of its table (the table's floats would not
/// read back bit for bit, and equal settings must compare equal).
fn noise_settings(s: &SynthSettings, shape: Option<&(String, NoiseSpectrum)>) -> Value {
    if s.clean {
        return Value::Null;
    }
    let mut noise = json!({"snr_db": s.snr_db, "calibration_images": s.calibration_images.max(1)});
    if let Some((model, spectrum)) = shape {
        noise["model"] = json!(model);
        noise["spectrum_fingerprint"] = json!(format!("{:016x}", fingerprint(spectrum.power())));
    }
    noise
}

/// FNV-1a over the bits of `values`.
fn fingerprint(values: &[f64]) -> u64 {
    values
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
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
    out: &DataSetDir,
    count: usize,
    progress: &dyn Monitor,
) -> Result<Vec<String>> {
    let landscape: Value = serde_json::from_str(&plan.molecule.landscape().to_json_string())?;
    guard::write_json_atomic(&out.landscape(), &landscape)?;
    let dir = out.ground_truth();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let states = plan.molecule.ground_truth_states(count);
    let names: Vec<String> = states.iter().map(|(n, _)| n.clone()).collect();
    let record = StatesRecord {
        settings: plan.settings.clone(),
        states: names.clone(),
    };
    let record_path = out.states_record();
    let old = out.read_states_record();
    if old.as_ref().is_some_and(|r| *r == record)
        && names.iter().all(|n| out.truth_map(n).is_file())
    {
        return Ok(names);
    }
    // The maps of an earlier run with other settings (fewer --states, say) that this run does
    // not make go, so that the folder holds one run's truth; only maps that run listed.
    let old_names = old.map(|r| r.states).unwrap_or_default();
    // Maps first, the record last: a kill between them leaves a record that the next run
    // reads again. Only plain names (no path) are ever removed.
    for stale in &old_names {
        let plain = Path::new(stale).file_name() == Some(std::ffi::OsStr::new(stale));
        if plain && !names.iter().any(|n| n == stale) {
            let map = out.truth_map(stale);
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
        mrc::write_volume(&out.truth_map(name), &volume)?;
    }
    guard::write_json_atomic(&record_path, &record)?;
    info!(maps = states.len(), folder = %dir.display(), "ground truth");
    Ok(names)
}

/// The whole set in OUT.
fn run_whole(plan: &Plan, s: &SynthSettings, progress: &dyn Monitor) -> Result<Value> {
    let out = DataSetDir::new(&s.out);
    if out.is_complete(&plan.settings) {
        info!(
            "{} is complete with these settings: nothing to do",
            s.out.display()
        );
        return Ok(json!({"out": s.out, "images": plan.n, "skipped": true}));
    }
    let start = Instant::now();
    let h5 = s.h5.then(|| out.h5());
    let made = simulate_range(plan, 0..plan.n, &out, h5.as_deref(), s.batch, progress)?;
    if plan.background_images > 0 {
        write_background(plan, &out, s.batch, progress)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let outputs = Outputs {
        stack: Some(STACK.into()),
        star: STAR.into(),
        ground_truth: Some(GROUND_TRUTH.into()),
        landscape: Some(LANDSCAPE.into()),
        h5: h5.is_some().then(|| H5.into()),
        background: (plan.background_images > 0).then(|| BACKGROUND.into()),
        ..Outputs::default()
    };
    let manifest = manifest(plan, s, &made, outputs, elapsed, None);
    guard::write_json_atomic(&out.manifest(), &manifest)?;
    info!(
        rate = format!("{:.0} images/s", plan.n as f64 / elapsed),
        "wrote {}",
        s.out.display()
    );
    Ok(
        json!({"out": s.out, "images": plan.n, "images_per_second": plan.n as f64 / elapsed,
        "noise_sigma": plan.config.noise_sigma, "class_counts": made.class_counts}),
    )
}

/// Writes OUT/background.mrcs: the plan's pure-noise images, normalised like the particles.
fn write_background(
    plan: &Plan,
    out: &DataSetDir,
    batch: usize,
    progress: &dyn Monitor,
) -> Result<()> {
    let (n_box, apix) = (plan.pipeline.box_size(), plan.pipeline.apix());
    let count = plan.background_images;
    let mrc = MrcStackWriter::create(&out.background(), n_box, n_box, apix)?;
    let bar = progress.bar(count as u64, "background");
    let sinks = write_overlapped(
        Sinks { mrc, h5: None },
        count,
        batch,
        n_box,
        progress,
        |first, images| {
            let len = images.dim().0;
            plan.pipeline.background(&plan.config, first as u64, images);
            bar.inc(len as u64);
            Ok(())
        },
    )?;
    bar.finish();
    sinks.mrc.finish()?;
    info!(images = count, "wrote {}", out.background().display());
    Ok(())
}

/// Shard K of M in OUT/shards/K-of-M; skipped when already complete. Returns its image count.
fn run_shard(
    plan: &Plan,
    s: &SynthSettings,
    k: usize,
    m: usize,
    progress: &dyn Monitor,
) -> Result<usize> {
    let dir = DataSetDir::new(&s.out).shard(k, m);
    let range = shard_range(plan.n, k, m);
    if dir.is_complete(&plan.settings) {
        info!("shard {k}/{m} is complete: skipped");
        return Ok(range.len());
    }
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("creating {}", dir.root().display()))?;
    let start = Instant::now();
    let count = range.len();
    let made = simulate_range(plan, range.clone(), &dir, None, s.batch, progress)?;
    let elapsed = start.elapsed().as_secs_f64();
    let outputs = Outputs {
        stack: Some(STACK.into()),
        star: STAR.into(),
        ..Outputs::default()
    };
    let shard = ShardInfo {
        index: k,
        of: m,
        first_particle: range.start,
        images: count,
    };
    let manifest = manifest(plan, s, &made, outputs, elapsed, Some(shard));
    guard::write_json_atomic(&dir.manifest(), &manifest)?;
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
    dir: &DataSetDir,
    h5: Option<&Path>,
    batch: usize,
    progress: &dyn Monitor,
) -> Result<Made> {
    let (n_box, apix) = (plan.pipeline.box_size(), plan.pipeline.apix());
    let count = range.len();
    let mrc = MrcStackWriter::create(&dir.stack(), n_box, n_box, apix)?;
    let h5 = match h5 {
        Some(path) => {
            let mut w = H5Writer::create(path, n_box, apix, count)?;
            crate::merge::add_ground_truth(&mut w, dir)?;
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
    bar.finish();
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
        base_dir: dir.root().to_path_buf(),
    };
    for (i, p) in set.particles.iter_mut().enumerate() {
        p.image = Some(ImageRef {
            path: PathBuf::from(STACK),
            index: i,
        });
    }
    star::write_particles_with_notes(&dir.star(), &set, &star_notes(plan))?;
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

/// Particles per class (classes 1 … max; a class 0, which a hand-edited STAR file may hold,
/// is not counted).
pub(crate) fn class_counts(set: &ParticleSet) -> Option<Vec<usize>> {
    let max = set.particles.iter().filter_map(|p| p.class).max()? as usize;
    let mut counts = vec![0; max];
    for p in &set.particles {
        if let Some(c) = p.class.filter(|&c| c >= 1) {
            counts[c as usize - 1] += 1;
        }
    }
    Some(counts)
}

fn manifest(
    plan: &Plan,
    s: &SynthSettings,
    made: &Made,
    outputs: Outputs,
    elapsed: f64,
    shard: Option<ShardInfo>,
) -> Manifest {
    Manifest {
        software: concat!("multicryogan ", env!("CARGO_PKG_VERSION")).into(),
        command: s.command.clone(),
        settings: plan.settings.clone(),
        molecule: plan.molecule.describe(),
        noise: plan.noise.clone(),
        shard,
        class_counts: made.class_counts.clone(),
        outputs,
        wall_seconds: elapsed,
        shards: None,
    }
}

/// The global particle indices of shard `k` of `m` (1-based): contiguous, sizes differing by
/// at most one.
fn shard_range(n: usize, k: usize, m: usize) -> std::ops::Range<usize> {
    (n * (k - 1) / m)..(n * k / m)
}

/// Parses `--shard K/M` for a set of `n` particles: 1 ≤ K ≤ M ≤ n.
pub fn parse_shard(text: &str, n: usize) -> Result<(usize, usize)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_given_override_the_bundles() {
        let mut s = SynthSettings::new(LandscapeSource::Preset(Preset::Hsp90Discrete), 8, "out");
        s.apix = 2.0;
        s.apply_conditions(Conditions::Realistic);
        assert_eq!(s.imaging.shift_sigma, Some(4.0));
        // Nothing given: the bundle's Gaussian shifts of 2 pixels stay.
        s.override_shifts(0.0, None).unwrap();
        assert_eq!(
            (s.imaging.max_shift, s.imaging.shift_sigma),
            (0.0, Some(4.0))
        );
        // A σ in pixels of 2 Å.
        s.override_shifts(0.0, Some(1.5)).unwrap();
        assert_eq!(s.imaging.shift_sigma, Some(3.0));
        // A disc replaces the Gaussian.
        s.override_shifts(6.0, None).unwrap();
        assert_eq!((s.imaging.max_shift, s.imaging.shift_sigma), (6.0, None));
        let both = s.override_shifts(6.0, Some(1.0)).unwrap_err().to_string();
        assert!(both.starts_with("--shift-sigma and --max-shift"), "{both}");
        let negative = s.override_shifts(0.0, Some(-1.0)).unwrap_err().to_string();
        assert!(negative.starts_with("--shift-sigma -1:"), "{negative}");
    }

    #[test]
    fn noise_models_are_read_as_the_flag_writes_them() {
        let parse = |text: &str| text.parse::<NoiseModel>();
        assert_eq!(parse("white"), Ok(NoiseModel::White));
        assert_eq!(parse(" realistic "), Ok(NoiseModel::Realistic));
        for text in ["spectrum:measured.json", "spectrum=measured.json"] {
            assert_eq!(
                parse(text),
                Ok(NoiseModel::Spectrum(PathBuf::from("measured.json")))
            );
        }
        for bad in ["pink", "spectrum:", "spectrum", ""] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.starts_with("unknown noise") && err.contains("spectrum:FILE.json"),
                "{bad}: {err}"
            );
        }
    }
}
