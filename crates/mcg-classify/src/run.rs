//! A classification run: settings in, a folder of class maps, `particles.star` and
//! `model.json` out, one complete iteration at a time (`checkpoint/` holds the last one, from
//! which `resume` continues).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mcg_dataset::input::{self, Locate};
use mcg_dataset::monitor::Monitor;
use mcg_eval::fsc::{FscConfig, fsc};
use mcg_formats::{ImageSource, ParticleSet, mrc, star};
use mcg_forward::device::{self, DeviceChoice};
use mcg_forward::forward::ForwardModel;
use mcg_physics::noise::NoiseSpectrum;
use mcg_physics::{Pose, Shift, Volume};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::em::{self, Prior, RotationGrid, expectation, maximisation, templates};
use crate::images::{Frequencies, ImageTerms, disc_offsets, offset_ramps};
use crate::init::{self, Init, hard_sums};

/// The most rounds of K = 1 EM that turn the reference into the data's mean map before the
/// split.
pub const CONSENSUS_ROUNDS: usize = 10;
/// The consensus rounds stop at the final frequency limit once a round raises the
/// log-likelihood per image by less than this share of its size.
pub const CONSENSUS_GAIN: f64 = 2e-3;
/// The images (at most) the start aligns to refine the reference, spread over the set.
pub const START_IMAGES: usize = 3000;

/// The images (at most) whose likelihood places the reference in its box.
pub const CENTRE_IMAGES: usize = 1000;

/// The classes have settled at the split resolution (see
/// [`ClassifySettings::split_resolution`]) once an iteration changes the class of fewer than
/// this share of the particles and moves no class's probability by as much.
pub const SETTLED: f64 = 0.01;

/// Images per class below which a class cannot be reconstructed.
pub const MIN_IMAGES_PER_CLASS: usize = 100;

/// The settings of a classification (plain values; the CLI fills them from its flags).
#[derive(Debug, Clone)]
pub struct ClassifySettings {
    /// The particle set (STAR, `.cs`, HDF5, MRC stack).
    pub particles: PathBuf,
    /// Where its images are, and its pixel size when the file has none.
    pub locate: Locate,
    /// The starting map (MRC), of the images' box and pixel size.
    pub reference: PathBuf,
    /// Number of classes K ≥ 1.
    pub classes: usize,
    /// The output folder.
    pub out: PathBuf,
    /// EM iterations after the start (at most: see `convergence`).
    pub iterations: usize,
    /// The run stops early once an iteration at the final frequency limit moves no class's
    /// probability by this much and changes the class of fewer than this share of the
    /// particles, or adds less than [`STALL_NATS`] per image to the log-likelihood (0: every
    /// iteration runs; see [`converged`]).
    pub convergence: f64,
    /// How the classes start.
    pub init: Init,
    /// The finest angular step of the global search, degrees.
    pub angular_step_deg: f64,
    /// The coarsest (first) angular step, degrees.
    pub coarse_step_deg: f64,
    /// Each image's most probable rotations on a grid twice as coarse that are refined on
    /// the fine grid (0: every fine rotation is scored).
    pub local_candidates: usize,
    /// The starting resolution, as a fraction of Nyquist.
    pub initial_resolution: f64,
    /// The resolution the consensus is refined to before the split, as a fraction of Nyquist.
    pub consensus_resolution: f64,
    /// The frequency limit, as a fraction of Nyquist, at which the classes are held until
    /// they settle (an iteration changes the class of fewer than [`SETTLED`] of the particles
    /// and moves no π by as much); then it rises with the half-set resolution. The split is
    /// a low-resolution signal, and an iteration at 0.55 of Nyquist costs about a third of
    /// one at Nyquist. 1: no hold.
    pub split_resolution: f64,
    /// In-plane offsets searched around each image's recorded shift: radius in pixels (0: the
    /// recorded shifts are used as they are; `None`: 2 pixels when the set records shifts,
    /// else 0).
    pub offset_range_px: Option<f64>,
    /// The offsets' spacing, pixels.
    pub offset_step_px: f64,
    /// The Wiener filter's τ² fudge factor (RELION's `--tau2_fudge`).
    pub tau_fudge: f64,
    /// Whether the images carry a CTF.
    pub ctf: bool,
    /// The noise's pixel σ when known; else the manifest's, else estimated from the images'
    /// background.
    pub noise_sigma: Option<f64>,
    /// Seed of the half-set split and the starts.
    pub seed: u64,
    /// Where the tensors live.
    pub device: DeviceChoice,
    /// The memory one batch of posteriors may take, bytes.
    pub batch_bytes: f64,
    /// Continue the run in `out` from its last complete iteration.
    pub resume: bool,
    /// The most minutes this call may take, the start included: after each iteration the run
    /// stops if another as long as the last would end past them ([`out_of_time`]). `None`: no
    /// limit (the same seed and settings then give the same classes on any machine).
    pub minutes: Option<f64>,
}

/// The log-likelihood per image (nats) that an iteration must add, at the limit of the one
/// before, for the run to go on once π has stopped moving (see [`converged`]).
pub const STALL_NATS: f64 = 0.01;

/// Whether a run limited to `minutes` must stop after an iteration: `elapsed` seconds since
/// it began, and another iteration as long as the `last` one would end past the limit.
pub fn out_of_time(minutes: Option<f64>, elapsed: f64, last: f64) -> bool {
    minutes.is_some_and(|m| elapsed + last > 60.0 * m)
}

/// Whether a classification has converged after an iteration at its final frequency limit
/// (`at_final`: not held at the split resolution, and the limit not rising): π moved by less
/// than `convergence`, and either fewer than that share of the particles changed class, or
/// the log-likelihood per image rose by less than [`STALL_NATS`] since the iteration before
/// at the same limit (`gain`). On a continuum the classes' borders go on trading about 1 % of
/// the particles per iteration while nothing else changes (docs/results.md, session 12); on
/// the discrete sets measured, the share of changes stops the run first. `convergence` 0:
/// never.
pub fn converged(
    convergence: f64,
    at_final: bool,
    changed: f64,
    moved: f64,
    gain: Option<f64>,
) -> bool {
    convergence > 0.0
        && at_final
        && moved < convergence
        && (changed < convergence || gain.is_some_and(|g| g < STALL_NATS))
}

impl Default for ClassifySettings {
    fn default() -> Self {
        Self {
            particles: PathBuf::new(),
            locate: Locate::default(),
            reference: PathBuf::new(),
            classes: 2,
            out: PathBuf::new(),
            iterations: 40,
            convergence: 0.002,
            init: Init::Pca,
            angular_step_deg: 7.5,
            coarse_step_deg: 15.0,
            local_candidates: 8,
            initial_resolution: 0.3,
            consensus_resolution: 0.55,
            split_resolution: 0.55,
            offset_range_px: None,
            offset_step_px: 1.0,
            tau_fudge: 2.0,
            ctf: true,
            noise_sigma: None,
            seed: 0,
            device: DeviceChoice::Auto,
            batch_bytes: 128e6,
            resume: false,
            minutes: None,
        }
    }
}

impl ClassifySettings {
    /// Refuses settings out of their range, naming the CLI's flag.
    pub fn validate(&self) -> Result<()> {
        if self.classes < 1 {
            bail!("--classes: found {}, expected at least 1", self.classes);
        }
        if !(self.angular_step_deg > 0.0 && self.angular_step_deg <= 30.0) {
            bail!(
                "--angular-step: found {}, expected a step in (0, 30] degrees",
                self.angular_step_deg
            );
        }
        if !(0.0..1.0).contains(&self.convergence) {
            bail!(
                "--convergence: found {}, expected a percentage in [0, 100)",
                100.0 * self.convergence
            );
        }
        for (flag, v) in [
            ("--initial-resolution", self.initial_resolution),
            ("--consensus-resolution", self.consensus_resolution),
            ("--split-resolution", self.split_resolution),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                bail!("{flag}: found {v}, expected a fraction of Nyquist in (0, 1]");
            }
        }
        if !(self.tau_fudge > 0.0 && self.tau_fudge.is_finite()) {
            bail!(
                "--tau-fudge: found {}, expected a number > 0",
                self.tau_fudge
            );
        }
        if let Some(s) = self.noise_sigma
            && !(s > 0.0 && s.is_finite())
        {
            bail!("--noise-sigma: found {s}, expected σ > 0");
        }
        if let Some(r) = self.offset_range_px
            && !(0.0..=32.0).contains(&r)
        {
            bail!("--offset-range: found {r}, expected 0 … 32 pixels");
        }
        if let Some(m) = self.minutes
            && !(m > 0.0 && m.is_finite())
        {
            bail!("--minutes: found {m}, expected minutes > 0");
        }
        Ok(())
    }
}

/// One iteration's record in `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IterationRecord {
    /// 0 is the start; 1 … the EM iterations.
    pub iteration: usize,
    /// The mean log-likelihood per image, nats (up to a constant of the data).
    pub log_likelihood: f64,
    /// The classes' probabilities after the iteration.
    pub pi: Vec<f64>,
    /// The share of particles whose most probable class changed.
    pub changed: f64,
    /// Each class's half-set FSC 0.143 resolution, Å, no finer than the frequency limit.
    pub resolution_a: Vec<f64>,
    /// The same as a fraction of Nyquist.
    pub resolution_nyquist: Vec<f64>,
    /// The frequency limit used, pixels of the image grid.
    pub r_max: f64,
    /// The rotation grid's spacing, degrees, and its number of rotations.
    pub angular_step_deg: f64,
    /// Rotations in the grid.
    pub rotations: usize,
    /// Seconds the iteration took.
    pub seconds: f64,
}

/// `model.json`: the classes and the history of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Model {
    /// Number of classes.
    pub classes: usize,
    /// Box edge, pixels, and pixel size, Å.
    pub box_size: usize,
    /// Pixel size, Å.
    pub apix: f64,
    /// The class maps' files, in class order.
    pub maps: Vec<String>,
    /// The final probabilities.
    pub pi: Vec<f64>,
    /// Every iteration, the start first.
    pub history: Vec<IterationRecord>,
    /// The noise's pixel σ used and where it came from.
    pub noise_sigma: f64,
    /// Where σ came from: "flag", "manifest" or "estimated".
    pub noise_source: String,
    /// The offsets searched (pixels).
    pub offsets: Vec<[f64; 2]>,
    /// The start: "pca" or "random".
    pub init: Init,
    /// The seed.
    pub seed: u64,
    /// How far the reference was moved (voxels, `[x, y, z]`) to sit where the data's
    /// particles are, before the start.
    #[serde(default)]
    pub recentred_voxels: [f64; 3],
    /// The iteration after which the run stopped because it had converged (see
    /// [`ClassifySettings::convergence`]), if it did.
    #[serde(default)]
    pub converged_at: Option<usize>,
    /// The iteration after which the classes had settled at the split resolution and the
    /// frequency limit was let rise (see [`ClassifySettings::split_resolution`]).
    #[serde(default)]
    pub settled_at: Option<usize>,
    /// The iteration after which the run stopped because another would not have fitted in
    /// its minutes (see [`ClassifySettings::minutes`]), if it did.
    #[serde(default)]
    pub out_of_time_at: Option<usize>,
}

/// The state kept after each complete iteration (`checkpoint/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    model: Model,
    r_max: f64,
    /// The reference's scale correction, from the start.
    scale: f64,
    /// Each particle's most probable class.
    class: Vec<usize>,
}

/// The result of [`classify`].
#[derive(Debug, Clone)]
pub struct Summary {
    /// `model.json`'s content.
    pub model: Model,
    /// The output folder.
    pub out: PathBuf,
}

/// The files a classification writes in its folder.
pub const MODEL_JSON: &str = "model.json";
/// The particles with their classes, poses and shifts.
pub const PARTICLES_STAR: &str = "particles.star";
/// The last complete iteration.
pub const CHECKPOINT: &str = "checkpoint";

/// The name of class `k`'s map (0-based `k`).
pub fn map_name(k: usize) -> String {
    format!("class_{:03}.mrc", k + 1)
}

/// The angular step for frequencies up to `r_max` pixels: about one pixel's arc at `r_max`,
/// between `fine` and `coarse` degrees.
pub fn angular_step(r_max: f64, fine: f64, coarse: f64) -> f64 {
    (60.0 / r_max.max(1.0)).clamp(fine, coarse)
}

/// The search of the grid of `step` degrees: local (see [`em::Search`]) for grids finer
/// than two thirds of the coarsest step, when `s.local_candidates` is not 0.
pub(crate) fn search_of(s: &ClassifySettings, step: f64, dev: Device) -> em::Search {
    em::Search::new(step, s.local_candidates, s.coarse_step_deg / 1.5, dev)
}

/// Refuses more classes than `count` particles (of `particles`) can fill: each class needs
/// [`MIN_IMAGES_PER_CLASS`]. The error names `--classes`.
pub fn check_classes(classes: usize, count: usize, particles: &Path) -> Result<()> {
    if count < MIN_IMAGES_PER_CLASS * classes {
        bail!(
            "--classes: {classes} classes need at least {} particles ({MIN_IMAGES_PER_CLASS} \
             each); {} has {count}",
            MIN_IMAGES_PER_CLASS * classes,
            particles.display()
        );
    }
    Ok(())
}

/// Runs a classification (see the module notes) and returns `model.json`'s content.
pub fn classify(s: &ClassifySettings, monitor: &dyn Monitor) -> Result<Summary> {
    s.validate()?;
    let began = Instant::now();
    let (set, images) = input::particles(&s.particles, &s.locate)?;
    let count = set.len();
    check_classes(s.classes, count, &s.particles)?;
    let n = images.box_size();
    let apix = set.optics_of(0).pixel_size;
    let reference = mrc::read_volume(&s.reference, None)?;
    if reference.box_size() != n || (f64::from(reference.apix()) - apix).abs() > 1e-3 * apix {
        bail!(
            "{}: a map of {}³ voxels of {:.4} Å, expected the particles' {n}³ of {apix:.4} Å ({})",
            s.reference.display(),
            reference.box_size(),
            reference.apix(),
            s.particles.display()
        );
    }
    let mut inputs = vec![s.particles.clone(), s.reference.clone()];
    inputs.extend(mcg_dataset::guard::stacks_of(&set));
    let names: Vec<String> = (0..s.classes)
        .map(map_name)
        .chain([MODEL_JSON.into(), PARTICLES_STAR.into(), CHECKPOINT.into()])
        .collect();
    mcg_dataset::guard::refuse_writing_over_inputs(&inputs, &s.out, &names, "classify output")?;

    let dev = device::select(s.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let (sigma, noise, noise_source) = noise_of(s, images.as_ref(), n)?;
    let offsets = offsets_of(s, &set);
    let rotations_fine = em::RotationGrid::new(s.angular_step_deg, Device::Cpu).len();
    let f_max = Frequencies::new(n, n as f64 / 2.0 - 1.0).len();
    // The largest batch needs its posteriors (the batch size adapts) plus the templates and
    // the M-step's sums: K·R·F complex, twice, at the finest grid.
    let template_bytes = (s.classes * rotations_fine * f_max) as f64 * 8.0 * 3.0;
    let image_bytes = (count * f_max) as f64 * 4.0 * 4.0;
    mcg_fsio::budget::check_memory(
        "--angular-step",
        "the templates, the images' spectra and a batch of posteriors",
        template_bytes + image_bytes + s.batch_bytes,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&s.out).with_context(|| format!("{}: creating", s.out.display()))?;

    let model = ForwardModel::new(n, dev);
    let freqs_all = Frequencies::new(n, n as f64 / 2.0 - 1.0);
    let terms = ImageTerms::new(&set, images.as_ref(), &freqs_all, &noise, s.ctf, apix, dev)?;
    let ramps = offset_ramps(&offsets, n, &freqs_all, dev);
    let [h1, _] = mcg_dataset::halves::half_split(count, s.seed);
    let mut half = vec![1u8; count];
    for i in h1 {
        half[i] = 0;
    }

    let state_path = s.out.join(CHECKPOINT).join("state.json");
    let (mut state, mut volumes) = if s.resume && state_path.is_file() {
        let state: State = serde_json::from_slice(&std::fs::read(&state_path)?)
            .with_context(|| format!("{}: not a classification's state", state_path.display()))?;
        if state.model.classes != s.classes || state.class.len() != count {
            bail!(
                "{}: a run of {} classes over {} particles; these settings ask for {} over {count}",
                state_path.display(),
                state.model.classes,
                state.class.len(),
                s.classes
            );
        }
        let maps: Vec<Volume> = (0..s.classes)
            .map(|k| mrc::read_volume(&s.out.join(CHECKPOINT).join(map_name(k)), None))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Volume> = maps.iter().collect();
        let volumes = em::to_tensor(&refs, dev);
        (state, volumes)
    } else {
        let start = Instant::now();
        let mut model_json = Model {
            classes: s.classes,
            box_size: n,
            apix,
            maps: (0..s.classes).map(map_name).collect(),
            pi: vec![1.0 / s.classes as f64; s.classes],
            history: Vec::new(),
            noise_sigma: sigma,
            noise_source,
            offsets: offsets.clone(),
            init: s.init,
            seed: s.seed,
            recentred_voxels: [0.0; 3],
            converged_at: None,
            settled_at: None,
            out_of_time_at: None,
        };
        let (volumes, pi, class, scale, moved, r0, record) = start_classes(
            s, &model, &terms, &half, &ramps, &freqs_all, &reference, dev, monitor,
        )?;
        model_json.pi = pi;
        model_json.recentred_voxels = moved;
        let mut record = record;
        record.seconds = start.elapsed().as_secs_f64();
        model_json.history.push(record);
        let state = State {
            model: model_json,
            r_max: r0,
            scale,
            class,
        };
        write_outputs(s, &set, &state, &volumes, apix, None)?;
        (state, volumes)
    };

    let done = state.model.history.len() - 1;
    let bar = monitor.bar(s.iterations as u64, "classifying (iterations)");
    bar.set_position(done.min(s.iterations) as u64);
    // The search is rebuilt only when its grid changes.
    let mut cached: Option<em::Search> = None;
    let first = if state.model.converged_at.is_some() {
        s.iterations + 1
    } else {
        done + 1
    };
    // A run that stopped for time goes on with this call's minutes.
    state.model.out_of_time_at = None;
    for it in first..=s.iterations {
        monitor.check_cancelled()?;
        let start = Instant::now();
        let r_max = state.r_max;
        let f = freqs_all.count_within(r_max);
        let freqs = freqs_all.tensor(f, dev);
        let step = angular_step(r_max, s.angular_step_deg, s.coarse_step_deg);
        if cached.as_ref().is_none_or(|c| c.grid.step_deg != step) {
            cached = Some(search_of(s, step, dev));
        }
        let search = cached.as_ref().expect("set above");
        let grid = &search.grid;
        let log_pi: Vec<f64> = state.model.pi.iter().map(|p| p.max(1e-12).ln()).collect();
        let exp = search.expectation(
            &search.templates(&model, &volumes, &freqs),
            &terms,
            &half,
            &log_pi,
            &ramps,
            s.batch_bytes,
            &|| monitor.cancelled(),
        );
        monitor.check_cancelled()?;
        let e_seconds = start.elapsed().as_secs_f64();
        let maps = maximisation(
            &model,
            grid,
            &freqs,
            &exp,
            Prior::HalfSets(s.tau_fudge),
            r_max,
        );
        tracing::debug!(
            e_step = e_seconds,
            m_step = start.elapsed().as_secs_f64() - e_seconds,
            "the iteration's steps, seconds"
        );
        let class: Vec<usize> = exp.best.iter().map(|b| b[1]).collect();
        let changed = class
            .iter()
            .zip(&state.class)
            .filter(|(a, b)| a != b)
            .count() as f64
            / count as f64;
        let mut pi = vec![0.0; s.classes];
        for p in &exp.class_posterior {
            for (acc, v) in pi.iter_mut().zip(p) {
                *acc += v;
            }
        }
        pi.iter_mut().for_each(|p| *p /= count as f64);
        let (res_a, res_ny) = half_resolutions(&maps.halves, apix, r_max)?;
        let moved = pi
            .iter()
            .zip(&state.model.pi)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // Held at the split resolution until the classes settle, then free to rise.
        let held = |m: &Model| m.settled_at.is_none() && s.split_resolution < 1.0;
        let was_held = held(&state.model);
        if was_held && changed < SETTLED && moved < SETTLED {
            tracing::info!(
                iteration = it,
                changed,
                pi_moved = moved,
                "the classes settled"
            );
            state.model.settled_at = Some(it);
        }
        let full = n as f64 / 2.0 - 1.0;
        let cap = if held(&state.model) {
            em::radius_of(s.split_resolution, n).max(r_max)
        } else {
            full
        };
        let best = res_ny.iter().cloned().fold(0.0, f64::max);
        let r_next = (best * n as f64 / 2.0 + 2.0).min(cap).min(full).max(r_max);
        let record = IterationRecord {
            iteration: it,
            log_likelihood: exp.log_likelihood.iter().sum::<f64>() / count as f64,
            pi: pi.clone(),
            changed,
            resolution_a: res_a,
            resolution_nyquist: res_ny,
            r_max,
            angular_step_deg: step,
            rotations: grid.len(),
            seconds: start.elapsed().as_secs_f64(),
        };
        tracing::info!(
            iteration = it,
            log_likelihood = record.log_likelihood,
            pi = ?record.pi,
            changed = record.changed,
            resolution = ?record.resolution_nyquist,
            seconds = record.seconds,
            "classification iteration"
        );
        let gain = state
            .model
            .history
            .last()
            .filter(|p| p.r_max == record.r_max)
            .map(|p| record.log_likelihood - p.log_likelihood);
        if converged(
            s.convergence,
            !was_held && r_next == r_max,
            changed,
            moved,
            gain,
        ) {
            tracing::info!(
                iteration = it,
                changed,
                pi_moved = moved,
                ?gain,
                "converged"
            );
            state.model.converged_at = Some(it);
        } else if it < s.iterations
            && out_of_time(s.minutes, began.elapsed().as_secs_f64(), record.seconds)
        {
            tracing::info!(
                iteration = it,
                minutes = s.minutes,
                "stopped: another iteration would not fit in the minutes"
            );
            state.model.out_of_time_at = Some(it);
        }
        volumes = maps.full;
        state.model.pi = pi;
        state.model.history.push(record);
        state.r_max = r_next;
        state.class = class;
        write_outputs(
            s,
            &set,
            &state,
            &volumes,
            apix,
            Some((&exp, grid, &offsets)),
        )?;
        bar.set_position(it as u64);
        if state.model.converged_at.is_some() || state.model.out_of_time_at.is_some() {
            break;
        }
    }
    bar.finish();
    Ok(Summary {
        model: state.model,
        out: s.out.clone(),
    })
}

/// The start: the reference scaled to the data, the images aligned to it, and the classes
/// split from it (see [`crate::init`]). Returns the class maps, π, each image's class, the
/// reference's scale, the starting frequency limit and the start's record.
#[allow(clippy::type_complexity)]
fn start_classes(
    s: &ClassifySettings,
    model: &ForwardModel,
    terms: &ImageTerms,
    half: &[u8],
    ramps: &Tensor,
    freqs_all: &Frequencies,
    reference: &Volume,
    dev: Device,
    monitor: &dyn Monitor,
) -> Result<(
    Tensor,
    Vec<f64>,
    Vec<usize>,
    f64,
    [f64; 3],
    f64,
    IterationRecord,
)> {
    let n = model.box_size();
    let count = terms.len();
    let r0 = em::radius_of(s.initial_resolution, n).max(3.0);
    let f = freqs_all.count_within(r0);
    let freqs = freqs_all.tensor(f, dev);
    let step = angular_step(r0, s.angular_step_deg, s.coarse_step_deg);
    let mut search = search_of(s, step, dev);
    let mut v = em::to_tensor(&[reference], dev);
    // The start's alignment works on a subset of the images, spread evenly over the set.
    let take = count.min(START_IMAGES);
    let rows: Vec<i64> = (0..take).map(|i| (i * count / take) as i64).collect();
    let sub = terms.select(
        &Tensor::from_slice(&rows).to_device(dev),
        freqs_all.len() as i64,
    );
    let sub_half: Vec<u8> = rows.iter().map(|&i| half[i as usize]).collect();
    let e_step = |terms: &ImageTerms,
                  half: &[u8],
                  v: &Tensor,
                  grid: &RotationGrid,
                  freqs: &Tensor,
                  ramps: &Tensor|
     -> Result<em::Expectation> {
        let t = templates(model, v, grid, freqs);
        let e = expectation(terms, half, &t, &[0.0], ramps, s.batch_bytes, None, &|| {
            monitor.cancelled()
        });
        monitor.check_cancelled()?;
        Ok(e)
    };
    // The reference's scale: least squares at each image's best pose, once before the
    // reference is placed in its box and once after.
    let scale_of = |v: &Tensor| -> Result<f64> {
        let t = templates(model, v, &search.grid, &freqs);
        let exp = expectation(
            &sub,
            &sub_half,
            &t,
            &[0.0],
            ramps,
            s.batch_bytes,
            None,
            &|| monitor.cancelled(),
        );
        monitor.check_cancelled()?;
        let c = fit_scale(&sub, &t, 1, ramps, &exp.best, f as i64);
        if !(c.is_finite() && c != 0.0) {
            bail!(
                "{}: the reference does not correlate with the images (scale {c})",
                s.reference.display()
            );
        }
        if c < 0.0 {
            tracing::warn!(
                scale = c,
                "the reference correlates negatively with the images: their contrast is \
                 inverted relative to it; the reference is negated"
            );
        }
        Ok(c)
    };
    let mut scale = scale_of(&v)?;
    v *= scale;
    // Where the reference sits in its box is arbitrary (a pose-free consensus has no
    // centre), and views whose offsets lie beyond the search would never fit: the refinement
    // would settle in a wrong basin. So the reference is moved to where the data's particles
    // are: the 3D shift of highest likelihood (a subset of the images, at the starting
    // resolution), searched on a grid of N/16 voxels within N/8 of the box centre, then
    // twice on a grid half as fine around the best.
    let probe_rows = Tensor::arange(take.min(CENTRE_IMAGES) as i64, (tch::Kind::Int64, dev));
    let probe = sub.select(&probe_rows, freqs_all.len() as i64);
    let probe_half = &sub_half[..take.min(CENTRE_IMAGES)];
    let score = |t: [f64; 3]| -> Result<f64> {
        let e = e_step(
            &probe,
            probe_half,
            &em::translate(&v, t),
            &search.grid,
            &freqs,
            ramps,
        )?;
        Ok(e.log_likelihood.iter().sum::<f64>() / e.log_likelihood.len() as f64)
    };
    let mut spacing = n as f64 / 16.0;
    let reach = n as f64 / 8.0;
    let mut moved = [0.0f64; 3];
    let mut best = score(moved)?;
    let steps = (reach / spacing).floor() as i64;
    let mut candidates = Vec::new();
    for z in -steps..=steps {
        for y in -steps..=steps {
            for x in -steps..=steps {
                let t = [x, y, z].map(|c| c as f64 * spacing);
                if (x, y, z) != (0, 0, 0) && t.iter().map(|c| c * c).sum::<f64>() <= reach * reach {
                    candidates.push(t);
                }
            }
        }
    }
    for level in 0..3 {
        if level > 0 {
            spacing /= 2.0;
            candidates.clear();
            for z in -1..=1i64 {
                for y in -1..=1i64 {
                    for x in -1..=1i64 {
                        if (x, y, z) != (0, 0, 0) {
                            let d = [x, y, z].map(|c| c as f64 * spacing);
                            candidates.push([moved[0] + d[0], moved[1] + d[1], moved[2] + d[2]]);
                        }
                    }
                }
            }
        }
        let mut level_best = moved;
        for &t in &candidates {
            let ll = score(t)?;
            if ll > best {
                best = ll;
                level_best = t;
            }
        }
        moved = level_best;
    }
    tracing::info!(shift_voxels = ?moved, log_likelihood = best, "the reference moved onto the data's centre");
    v = em::translate(&v, moved);
    let c = scale_of(&v)?;
    scale *= c;
    v *= c;
    // The consensus refined into the data's own mean map (K = 1 EM, the frequency limit
    // rising by two pixels a round up to `consensus_resolution`, then rounds at that limit
    // until the log-likelihood per image rises by less than CONSENSUS_GAIN of itself): the
    // residuals
    // split by their principal component must be centred on the data's mean map, with the
    // images well aligned, not on the reference's errors.
    let mut exp = e_step(&sub, &sub_half, &v, &search.grid, &freqs, ramps)?;
    let r_end = em::radius_of(s.consensus_resolution, n).max(r0);
    let mut r = r0;
    let (mut freqs, mut f, mut step) = (freqs, f, step);
    let mean = |e: &em::Expectation| e.log_likelihood.iter().sum::<f64>() / take as f64;
    let mut last = mean(&exp);
    for _ in 0..CONSENSUS_ROUNDS {
        v = maximisation(
            model,
            &search.grid,
            &freqs,
            &exp,
            Prior::HalfSets(s.tau_fudge),
            r,
        )
        .full;
        let before = r;
        r = (r + 2.0).min(r_end);
        f = freqs_all.count_within(r);
        freqs = freqs_all.tensor(f, dev);
        step = angular_step(r, s.angular_step_deg, s.coarse_step_deg);
        if search.grid.step_deg != step {
            search = search_of(s, step, dev);
        }
        exp = search.expectation(
            &search.templates(model, &v, &freqs),
            &sub,
            &sub_half,
            &[0.0],
            ramps,
            s.batch_bytes,
            &|| monitor.cancelled(),
        );
        monitor.check_cancelled()?;
        let ll = mean(&exp);
        tracing::info!(r_max = r, log_likelihood = ll, "consensus round");
        if r == before && ll - last < CONSENSUS_GAIN * ll.abs() {
            break;
        }
        last = ll;
    }
    // Every image's pose under the consensus.
    let exp = search.expectation(
        &search.templates(model, &v, &freqs),
        terms,
        half,
        &[0.0],
        ramps,
        s.batch_bytes,
        &|| monitor.cancelled(),
    );
    monitor.check_cancelled()?;
    let r0 = r;
    let grid = &search.grid;
    let poses: init::Poses = exp.best.iter().map(|b| [b[0], b[2]]).collect();
    let class = match s.init {
        Init::Pca => {
            let (_, scores) = init::principal_component(
                model, grid, &freqs, terms, half, &poses, ramps, &v, r0, 6, s.seed,
            );
            init::kmeans_1d(&scores, s.classes)
        }
        Init::Random => init::random_groups(count, s.classes, s.seed),
    };
    let sums = hard_sums(
        terms,
        half,
        &poses,
        &class,
        grid.len(),
        s.classes,
        ramps,
        f as i64,
        None,
    );
    let maps = maximisation(model, grid, &freqs, &sums, Prior::HalfSets(s.tau_fudge), r0);
    let mut pi = vec![0.0; s.classes];
    for &c in &class {
        pi[c] += 1.0 / count as f64;
    }
    let (res_a, res_ny) = half_resolutions(&maps.halves, f64::from(reference.apix()), r0)?;
    let record = IterationRecord {
        iteration: 0,
        log_likelihood: exp.log_likelihood.iter().sum::<f64>() / count as f64,
        pi: pi.clone(),
        changed: 0.0,
        resolution_a: res_a,
        resolution_nyquist: res_ny,
        r_max: r0,
        angular_step_deg: step,
        rotations: grid.len(),
        seconds: 0.0,
    };
    Ok((maps.full, pi, class, scale, moved, r0, record))
}

/// The least-squares scale of templates `t` (`[K·R][F]`, K classes of R rotations each) to
/// the images at their best (offset, class, rotation): `Σ Re⟨a, t⟩ / Σ q·|t|²`.
pub(crate) fn fit_scale(
    terms: &ImageTerms,
    t: &Tensor,
    classes: usize,
    ramps: &Tensor,
    best: &[[usize; 3]],
    f: i64,
) -> f64 {
    let device = t.device();
    let count = terms.len() as i64;
    let rows = Tensor::arange(count, (Kind::Int64, device));
    let sub = terms.select(&rows, f);
    let r = t.size()[0] as usize / classes;
    let rot: Vec<i64> = best.iter().map(|b| (b[1] * r + b[2]) as i64).collect();
    let off: Vec<i64> = best.iter().map(|b| b[0] as i64).collect();
    let tb = t.index_select(0, &Tensor::from_slice(&rot).to_device(device));
    let ramp = ramps
        .narrow(1, 0, f)
        .index_select(0, &Tensor::from_slice(&off).to_device(device))
        .conj();
    let a = sub.a * ramp;
    let num = (a.conj() * &tb).real().sum(Kind::Double).double_value(&[]);
    let den = (sub.q * tb.abs().square())
        .sum(Kind::Double)
        .double_value(&[]);
    num / den
}

/// Each class's FSC 0.143 between its half maps `[2][K][N]³`, no finer than the frequency
/// limit `r_max` (pixels) the maps were made with: in Å and as a fraction of Nyquist. A shell
/// whose correlation is undefined (both maps empty there) counts as below the threshold.
fn half_resolutions(halves: &Tensor, apix: f64, r_max: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    let k = halves.size()[1];
    let n = halves.size()[2] as f64;
    let limit = (r_max / (n / 2.0)).min(1.0);
    let mut a = Vec::new();
    let mut ny = Vec::new();
    for c in 0..k {
        let v1 = em::to_volume(&halves.get(0).get(c), apix)?;
        let v2 = em::to_volume(&halves.get(1).get(c), apix)?;
        let mut curve = fsc(&v1, &v2, &FscConfig::default())?;
        for v in &mut curve.fsc {
            if !v.is_finite() {
                *v = 0.0;
            }
        }
        let fraction = curve
            .resolution(0.143)
            .map_or(1.0, |r| r.nyquist_fraction)
            .min(limit);
        ny.push(fraction);
        a.push(2.0 * apix / fraction);
    }
    Ok((a, ny))
}

/// The noise: σ from the flag, the manifest beside the particles (with its coloured spectrum
/// when it records one), or the images' background (the physics crate's estimator, 1,000
/// images, outside 3/4 of half the box).
pub(crate) fn noise_of(
    s: &ClassifySettings,
    images: &dyn ImageSource,
    n: usize,
) -> Result<(f64, NoiseSpectrum, String)> {
    if let Some(sigma) = s.noise_sigma {
        return Ok((sigma, NoiseSpectrum::white(n, sigma), "flag".into()));
    }
    if let Some((_, spectrum)) = mcg_dataset::folder::noise_spectrum_beside(&s.particles)?
        && spectrum.box_size() == n
    {
        let sigma = spectrum.variance().sqrt();
        return Ok((sigma, spectrum, "manifest".into()));
    }
    if let Some((_, sigma)) = mcg_dataset::folder::noise_sigma_beside(&s.particles)?
        && sigma > 0.0
    {
        return Ok((sigma, NoiseSpectrum::white(n, sigma), "manifest".into()));
    }
    let k = images.len().min(1000);
    let mut block = ndarray::Array3::<f32>::zeros((k, n, n));
    let idx: Vec<usize> = (0..k).collect();
    images.read_batch(&idx, block.view_mut())?;
    let spectrum = NoiseSpectrum::estimate_background(block.view(), 0.75 * n as f64 / 2.0)?;
    let sigma = spectrum.variance().sqrt();
    Ok((sigma, spectrum, "estimated".into()))
}

/// The offsets searched: a disc of the range's radius on the step's grid, `[0, 0]` first.
pub(crate) fn offsets_of(s: &ClassifySettings, set: &ParticleSet) -> Vec<[f64; 2]> {
    let shifted = set.particles.iter().any(|p| p.shift != Shift::default());
    let range = s.offset_range_px.unwrap_or(if shifted { 2.0 } else { 0.0 });
    disc_offsets(range, s.offset_step_px)
}

/// Writes the class maps, `model.json` and (after an EM iteration) `particles.star`, then the
/// checkpoint: each file atomically, the checkpoint folder replaced as a whole.
fn write_outputs(
    s: &ClassifySettings,
    set: &ParticleSet,
    state: &State,
    volumes: &Tensor,
    apix: f64,
    assignments: Option<(&em::Expectation, &RotationGrid, &[[f64; 2]])>,
) -> Result<()> {
    let maps: Vec<Volume> = (0..state.model.classes)
        .map(|k| em::to_volume(&volumes.get(k as i64), apix))
        .collect::<Result<_>>()?;
    let tmp = s.out.join(format!("{CHECKPOINT}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: removing", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: creating", tmp.display()))?;
    for (k, map) in maps.iter().enumerate() {
        mrc::write_volume(&s.out.join(map_name(k)), map)?;
        mrc::write_volume(&tmp.join(map_name(k)), map)?;
    }
    if let Some((exp, grid, offsets)) = assignments {
        let mut out = set.clone();
        let mut max_prob = Vec::with_capacity(set.len());
        let mut ll = Vec::with_capacity(set.len());
        for (i, p) in out.particles.iter_mut().enumerate() {
            let [o, k, r] = exp.best[i];
            p.class = Some(k as u32 + 1);
            p.pose = Some(Pose::from_matrix(&grid.matrices[r]));
            let [tx, ty] = offsets[o];
            p.shift = Shift {
                x: p.shift.x - tx * apix,
                y: p.shift.y - ty * apix,
            };
            max_prob.push(format!("{:.6}", exp.max_posterior[i]));
            ll.push(format!("{:.6}", exp.log_likelihood[i]));
        }
        for (label, values) in [
            ("_rlnMaxValueProbDistribution", max_prob),
            ("_rlnLogLikeliContribution", ll),
        ] {
            out.extra.retain(|(l, _)| l != label);
            out.extra.push((label.to_string(), values));
        }
        if set.base_dir != s.out {
            // Image paths stay valid from the output folder: make them absolute.
            for p in &mut out.particles {
                if let Some(img) = &mut p.image {
                    img.path = set.resolve(img);
                }
            }
        }
        star::write_particles(&s.out.join(PARTICLES_STAR), &out)?;
    }
    let json = serde_json::to_vec_pretty(&state.model)?;
    mcg_fsio::write_atomic(&s.out.join(MODEL_JSON), &json)?;
    mcg_fsio::write_atomic(&tmp.join("state.json"), &serde_json::to_vec(state)?)?;
    let done = s.out.join(CHECKPOINT);
    let old = s.out.join(format!("{CHECKPOINT}.old"));
    if done.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&done, &old)?;
    }
    std::fs::rename(&tmp, &done)
        .with_context(|| format!("{}: replacing the checkpoint", done.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Reads a classification's `model.json`.
pub fn read_model(dir: &Path) -> Result<Model> {
    let path = dir.join(MODEL_JSON);
    let bytes = std::fs::read(&path).with_context(|| format!("{}: reading", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a classification's model.json", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_needs_pi_still_and_either_few_changes_or_a_stalled_likelihood() {
        // Discrete: few changes, π still.
        assert!(converged(0.002, true, 0.0017, 0.001, Some(0.05)));
        // A continuum: 0.9 % still change class, π still, the likelihood stalled (session
        // 12's K = 4 run: +0.004 nats per image at iteration 23).
        assert!(converged(0.002, true, 0.009, 0.001, Some(0.004)));
        // ... but not while the likelihood still rises, nor while π moves, nor before the
        // final limit, nor without an iteration before at the same limit, nor when off.
        assert!(!converged(0.002, true, 0.009, 0.001, Some(0.02)));
        assert!(!converged(0.002, true, 0.0017, 0.003, Some(0.0)));
        assert!(!converged(0.002, false, 0.0, 0.0, Some(0.0)));
        assert!(!converged(0.002, true, 0.009, 0.001, None));
        assert!(!converged(0.0, true, 0.0, 0.0, Some(0.0)));
    }

    #[test]
    fn a_run_stops_when_another_iteration_would_end_past_its_minutes() {
        // 25 minutes: 1,437 s spent, the last iteration took 136 s (the 100,000-image set's
        // iteration 14 on session 14's machine): the next would end at 1,573 s, past 1,500.
        assert!(out_of_time(Some(25.0), 1437.0, 136.0));
        assert!(!out_of_time(Some(25.0), 1300.0, 136.0));
        assert!(!out_of_time(None, 1e9, 1e9));
    }
}
