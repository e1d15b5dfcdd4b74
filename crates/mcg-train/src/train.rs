//! The training loop (the paper's Algorithm 2): k discriminator steps per generator step, with
//! WGAN-GP, Adam, data batches read lazily on a background thread, metrics, checkpoints and an
//! exact resume.
//!
//! Reproducibility: every random draw of step `s` comes from streams of `(seed, s)`: poses,
//! CTF rows and data indices from the physics crate's named streams, and libtorch's generator
//! (noise, α, ε) re-seeded from `(seed, s)` at the start of the step. A checkpoint therefore
//! needs only the weights, the optimiser state and the step to continue exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use mcg_formats::ImageSource;
use mcg_physics::normalize::Normalization;
use mcg_physics::rng::{Purpose, stream};
use mcg_physics::simulate::ImagingParams;
use mcg_physics::{Pose, Shift};
use ndarray::Array3;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::TrainError;
use crate::adam::Adam;
use crate::forward::{BatchPhysics, ForwardModel, Projector};
use crate::invariant::{
    InvariantFeatures, component_distances, energy_distance, quadratic_simplex_minimum,
};
use crate::models::{
    Architecture, Classifier, Discriminator, Generator, ModelConfig, discriminator_loss,
    generator_loss, with_components,
};
pub use mcg_forward::data::DataPhysics;
pub use mcg_runfiles::StepMetrics;

/// Every hyper-parameter of a run (written to `RUN/config.json` first; `--config` reads one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// G and D.
    pub model: ModelConfig,
    /// Real (and simulated) images per discriminator step.
    pub batch_size: usize,
    /// Poses per generated volume in a batch (G's cost falls by this factor).
    pub poses_per_volume: usize,
    /// Discriminator steps per generator step (k).
    pub d_steps: usize,
    /// Gradient-penalty weight λ.
    pub gp_lambda: f64,
    /// Adam learning rates and betas.
    pub lr_g: f64,
    /// Discriminator learning rate.
    pub lr_d: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// The projector of the forward model: fourier (central slices; the default, faster) or
    /// real-space.
    pub projector: Projector,
    /// Apply the CTF of a random particle of the data set to each simulated image.
    pub ctf: bool,
    /// Shift simulated images by a random particle's shift.
    pub shifts: bool,
    /// Shift simulated images by Gaussian offsets of this σ (pixels, per axis) instead of the
    /// data's shifts, for data whose metadata has none; 0: off. Overrides `shifts`.
    pub shift_sigma_px: f64,
    /// The per-image normalisation of the simulated images after their noise: the data's own,
    /// which the caller applies to the real images as they are read (the CLI detects it with
    /// `mcg_dataset::inspect` and reads the data through `inspect::Adjusted`), so that D sees
    /// both normalised by the same rule. Its default, none, leaves them as they are.
    pub normalization: Normalization,
    /// Noise σ of simulated images; `None`: from the data's manifest or estimated.
    pub noise_sigma: Option<f64>,
    /// Master seed.
    pub seed: u64,
    /// Seconds between checkpoints.
    pub checkpoint_seconds: f64,
    /// Log a metrics line every this many G steps.
    pub log_every: usize,
    /// The step's recipe: `fast` evaluates G once per G step (without gradient for the k D
    /// steps, which reuse its volumes, and their 3D transforms, at fresh poses, CTFs and noise),
    /// scores real, simulated and interpolated images in one pass of D and skips D's weight
    /// gradients in the G step; `paper` runs G for every D step, as the paper's Algorithm 2
    /// does. (A run folder's settings without this field were written before it existed, and
    /// [`TrainConfig::from_run_json`] reads them as the paper's recipe.)
    pub step: StepKind,
    /// Coarse-to-fine: both real and simulated images are low-passed by a Gaussian of this σ
    /// (pixels) at step 0, falling linearly to 0 at `blur_steps`. 0: off.
    pub blur_start_px: f64,
    /// G steps over which the blur falls to 0.
    pub blur_steps: u64,
    /// Warm start: for this many G steps the voxel and mixture generators learn their base
    /// volume alone (a single-volume consensus), then their components.
    pub warm_steps: u64,
    /// When the warm start ends, the mixture's components start as the consensus dilated by
    /// factors 1 − d ..= 1 + d about the box centre (see [`Generator::split_by_dilation`])
    /// instead of their random start. 0: off.
    pub split_dilation: f64,
    /// Spreading pressure on the components of the voxel and mixture generators, relative to
    /// the GAN's gradient (see [`Generator::spread`]); 0: none.
    pub spread: f64,
    /// Weight of the moment-matching term of G's loss: the mean and covariance of the
    /// low-frequency Fourier coefficients of simulated clean images against those of the data
    /// (noise covariance removed). Pose-free and clustering-free (the statistics of Kam's
    /// method): a single volume cannot produce the extra covariance a mixture of conformations
    /// gives, so this term separates the components where D's per-image signal is faint.
    /// 0: off (fast step only).
    pub moment_weight: f64,
    /// Radius, in Fourier pixels, of the coefficients whose moments are matched.
    pub moment_radius: usize,
    /// Simulated clean images per G step for the moments.
    pub moment_batch: usize,
    /// Weight of the invariant-distribution term of G's loss (see [`crate::invariant`]): the
    /// energy distance between the data's and the simulated noisy images' distributions of
    /// rotation-invariant features (ring power spectrum, radial profile). Pose-free and
    /// clustering-free; unlike the moments it sees the spread of the data's images, which a
    /// mixture of conformations widens. 0: off (fast step only).
    pub invariant_weight: f64,
    /// Simulated images per G step for the invariant term (rounded down to a multiple of the
    /// step's volumes).
    pub invariant_batch: usize,
    /// Data images (features computed once at the start) drawn per G step for the invariant
    /// term.
    pub invariant_reference: usize,
    /// For this many G steps after the warm start, G's loss is the invariant term alone and
    /// only the mixture's components and probabilities learn (the consensus is held; D keeps
    /// training): a split of the consensus guided by the pose-free statistics alone, before
    /// the GAN refines it. 0: none.
    pub invariant_only_steps: u64,
    /// Conditional critic ([`ModelConfig::conditional`]): π is estimated from the classifier,
    /// not by D's gradient, as in black-box label-shift estimation: the classifier's mean output
    /// μ over real images is C·π, where C (its mean output on simulated images of each
    /// component) is known, so π = C⁻¹μ, whatever the classifier's calibration. μ and C are
    /// running means that take this fraction of each step's estimate.
    pub pi_rate: f64,
    /// The unconditional mixture's π from a classifier, as the conditional critic's is (see
    /// `pi_rate`): a classifier Q learns the components of simulated images, and π follows its
    /// outputs on the real images (see `pi_estimator`) instead of D's gradient, which hardly
    /// sees the proportions at low SNR. D stays unconditional. Implied by
    /// [`ModelConfig::conditional`].
    pub pi_classifier: bool,
    /// π follows C⁻¹μ only while C's mean diagonal is at least this far above its mean
    /// off-diagonal entry (π = C⁻¹μ magnifies the errors of μ by about its inverse).
    pub pi_separation: f64,
    /// How π is estimated, when not by D's gradient: from the classifier (conditional critic
    /// or `pi_classifier`), or from the invariant features.
    pub pi_estimator: PiEstimator,
    /// [`PiEstimator::Invariant`]: G steps after the warm start before π follows the
    /// invariant estimate (its running means fill meanwhile).
    pub pi_delay: u64,
    /// Whether the mixture's simulated images follow π (true: the GAN's importance weights
    /// K·πₖ). False: the GAN simulates its components in equal shares whatever π, and π (as
    /// estimated, and as the run reports it) does not feed back into how the components are
    /// trained, so that a component whose share falls is not starved of D's attention.
    pub pi_feedback: bool,
    /// Conditional critic: weight of the classifier's cross-entropy on the simulated images in
    /// G's loss (InfoGAN's mutual-information term), which pushes the components to be told
    /// apart; D holds each to the real images the classifier gives it. 0: none.
    pub classifier_weight: f64,
    /// Conditional critic: the temperature of the classifier's likelihoods in the posterior the
    /// real images' components are drawn from, when the components start (0 < T ≤ 1; below 1
    /// sharpens it, as k-means does, so that each component gets a clearly different share of
    /// the data while they are still alike); it rises linearly to 1 (the posterior itself) over
    /// `sharpen_steps`. π's estimate (see `pi_rate`) does not use it.
    pub sharpen: f64,
    /// G steps after the warm start over which the temperature rises to 1.
    pub sharpen_steps: u64,
    /// Conditional critic: order each batch by component, so that D's packs hold images of one
    /// component (the simulated ones in the same order) and it can compare a component's
    /// images with the real images drawn to it as a set.
    pub sorted_packs: bool,
}

/// Writes the fields of `top` over those of `base`, object by object.
fn overlay(base: &mut serde_json::Value, top: serde_json::Value) {
    match (base, top) {
        (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// How the mixture's π is estimated when not by D's gradient (see
/// [`TrainConfig::pi_estimator`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PiEstimator {
    /// From the classifier Q, by black-box label-shift estimation, π = C⁻¹μ (see
    /// [`TrainConfig::pi_rate`]): unbiased whatever Q's calibration, but C⁻¹ magnifies any
    /// difference between Q's outputs on real and on simulated images.
    #[default]
    Shift,
    /// From the classifier Q, by EM on the prior (Saerens et al. 2002): π moves, at
    /// `pi_rate`, to the mean over real images of Q's posterior under π (Q trained on
    /// balanced batches). Biased towards even shares when Q is over-confident, but it never
    /// leaves π where Q sees nothing.
    Em,
    /// No classifier: π minimises the energy distance of the invariant features (see
    /// [`crate::invariant`]). With equal numbers of simulated images per component, the
    /// distance is the quadratic 2·πᵀd − πᵀEπ in π (dₖ: component k's mean distance to the
    /// data's features, Eₖₗ: the mean distance between components k and l), so running means
    /// of d and E (at `pi_rate`) give π as the quadratic's minimum on the simplex, free of
    /// the per-step noise of a gradient.
    Invariant,
}

impl std::str::FromStr for PiEstimator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shift" => Ok(Self::Shift),
            "em" => Ok(Self::Em),
            "invariant" => Ok(Self::Invariant),
            other => Err(format!(
                "unknown π estimator {other:?}: expected shift, em or invariant"
            )),
        }
    }
}

/// How a training step is computed (see [`TrainConfig::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// The paper's Algorithm 2: G runs once per D step and once for the G step.
    Paper,
    /// One G evaluation per G step, fused D passes (the default).
    #[default]
    Fast,
}

impl std::str::FromStr for StepKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(Self::Paper),
            "fast" => Ok(Self::Fast),
            other => Err(format!("unknown step {other:?}: expected paper or fast")),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            batch_size: 32,
            poses_per_volume: 4,
            d_steps: 4,
            gp_lambda: 10.0,
            lr_g: 1e-3,
            lr_d: 1e-3,
            beta1: 0.5,
            beta2: 0.9,
            projector: Projector::Fourier,
            ctf: true,
            shifts: false,
            shift_sigma_px: 0.0,
            normalization: Normalization::None,
            noise_sigma: None,
            seed: 0,
            checkpoint_seconds: 300.0,
            log_every: 1,
            step: StepKind::Fast,
            blur_start_px: 2.0,
            blur_steps: 1500,
            warm_steps: 500,
            spread: 0.0,
            split_dilation: 0.0,
            moment_weight: 0.0,
            moment_radius: 6,
            moment_batch: 256,
            invariant_weight: 0.0,
            invariant_batch: 512,
            invariant_reference: 1024,
            invariant_only_steps: 0,
            pi_rate: 0.01,
            classifier_weight: 0.0,
            pi_classifier: false,
            pi_separation: 0.05,
            pi_estimator: PiEstimator::Shift,
            pi_delay: 200,
            pi_feedback: true,
            sharpen: 0.02,
            sharpen_steps: 1000,
            sorted_packs: true,
        }
    }
}

impl TrainConfig {
    /// Whether the run has a classifier Q (conditional critic, or π from a classifier).
    pub fn has_classifier(&self) -> bool {
        self.model.is_conditional() || self.pi_classifier
    }

    /// Settings from a run folder's `config.json` (its "train" part) or a checkpoint. Settings
    /// written before the fast step existed have no "step" field: their missing fields are
    /// those of the recipe they were made with, the paper's ([`TrainConfig::paper`]), so such
    /// runs resume exactly. Other missing fields take today's defaults.
    pub fn from_run_json(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        if value.get("step").is_some() || !value.is_object() {
            return serde_json::from_value(value);
        }
        let mut base = serde_json::to_value(Self::paper())?;
        overlay(&mut base, value);
        serde_json::from_value(base)
    }

    /// The paper's recipe as this trainer ran it before the fast step and the voxel generators:
    /// the 3D CNN generator, G run for every D step, lr_d = lr_g / 10, D's LeakyReLU slope 0.01.
    pub fn paper() -> Self {
        Self {
            model: ModelConfig::paper(),
            lr_d: 1e-4,
            step: StepKind::Paper,
            blur_start_px: 0.0,
            blur_steps: 0,
            warm_steps: 0,
            sharpen: 1.0,
            sharpen_steps: 0,
            sorted_packs: false,
            ..Self::default()
        }
    }
}

impl TrainConfig {
    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        let n = self.model.box_size;
        if n < 8 || !n.is_multiple_of(8) {
            return bad(format!(
                "model.box_size = {n}: expected a multiple of 8, at least 8"
            ));
        }
        if self.batch_size == 0 || self.poses_per_volume == 0 || self.d_steps == 0 {
            return bad("batch_size, poses_per_volume and d_steps must be at least 1".into());
        }
        if !self.batch_size.is_multiple_of(self.poses_per_volume) {
            return bad(format!(
                "batch_size = {} must be a multiple of poses_per_volume = {}",
                self.batch_size, self.poses_per_volume
            ));
        }
        for (name, v) in [
            ("lr_g", self.lr_g),
            ("lr_d", self.lr_d),
            ("gp_lambda", self.gp_lambda),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} = {v}: expected a finite number ≥ 0"));
            }
        }
        if self.model.latent_dims == Some(0) {
            return bad("model.latent_dims must be at least 1".into());
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1".into());
        }
        let coarsening = self.model.component_coarsening;
        if coarsening == 0 || !n.is_multiple_of(coarsening) {
            return bad(format!(
                "model.component_coarsening = {coarsening}: expected at least 1 and a divisor of \
                 model.box_size = {n}"
            ));
        }
        let pack = self.model.pack;
        if pack == 0 || !self.batch_size.is_multiple_of(pack) {
            return bad(format!(
                "model.pack = {pack}: expected at least 1 and a divisor of batch_size = {}",
                self.batch_size
            ));
        }
        let multi_voxel = matches!(
            self.model.architecture(),
            Architecture::Voxel | Architecture::Mixture
        );
        if multi_voxel && self.model.components == 0 {
            return bad("model.components must be at least 1".into());
        }
        if self.model.architecture() == Architecture::Mixture {
            if self.step == StepKind::Paper {
                return bad("model.generator = mixture needs step = fast".into());
            }
            if !self.batch_size.is_multiple_of(self.model.components) {
                return bad(format!(
                    "batch_size = {} must be a multiple of model.components = {} (a mixture \
                     simulates the same number of images of each component)",
                    self.batch_size, self.model.components
                ));
            }
        }
        if pack > 1 && self.step == StepKind::Paper {
            return bad("model.pack > 1 needs step = fast".into());
        }
        if !(self.moment_weight.is_finite() && self.moment_weight >= 0.0) {
            return bad(format!(
                "moment_weight = {}: expected a finite number ≥ 0",
                self.moment_weight
            ));
        }
        if self.moment_weight > 0.0 {
            if self.step == StepKind::Paper {
                return bad("moment_weight > 0 needs step = fast".into());
            }
            if self.moment_radius == 0 || self.moment_radius > n / 2 {
                return bad(format!(
                    "moment_radius = {}: expected 1 to box_size / 2 = {}",
                    self.moment_radius,
                    n / 2
                ));
            }
            if self.moment_batch < 4
                || !self
                    .moment_batch
                    .is_multiple_of(2 * self.model.components.max(1))
            {
                return bad(format!(
                    "moment_batch = {}: expected at least 4 and a multiple of 2 × model.components",
                    self.moment_batch
                ));
            }
        }
        if !(self.split_dilation.is_finite() && self.split_dilation.abs() < 0.5) {
            return bad(format!(
                "split_dilation = {}: expected a number between −0.5 and 0.5",
                self.split_dilation
            ));
        }
        if !(self.invariant_weight.is_finite() && self.invariant_weight >= 0.0) {
            return bad(format!(
                "invariant_weight = {}: expected a finite number ≥ 0",
                self.invariant_weight
            ));
        }
        let mixture = self.model.architecture() == Architecture::Mixture;
        if self.pi_estimator == PiEstimator::Invariant && !mixture {
            return bad("pi_estimator = invariant needs the mixture generator".into());
        }
        if self.invariant_weight > 0.0 || self.pi_estimator == PiEstimator::Invariant {
            if self.step == StepKind::Paper {
                return bad(
                    "the invariant features (invariant_weight > 0 or pi_estimator = \
                            invariant) need step = fast"
                        .into(),
                );
            }
            let draws = self.batch_size / self.poses_per_volume.max(1);
            if self.invariant_batch < draws.max(self.model.components).max(2) {
                return bad(format!(
                    "invariant_batch = {}: expected at least {} (the volumes of a step)",
                    self.invariant_batch,
                    draws.max(self.model.components).max(2)
                ));
            }
            if self.invariant_only_steps > 0 && !mixture {
                return bad("invariant_only_steps > 0 needs the mixture generator".into());
            }
            if self.invariant_reference < 2 {
                return bad(format!(
                    "invariant_reference = {}: expected at least 2",
                    self.invariant_reference
                ));
            }
        }
        if self.pi_classifier && !(mixture && self.model.components >= 2) {
            return bad(
                "pi_classifier needs the mixture generator with at least 2 components".into(),
            );
        }
        if !(self.pi_separation > 0.0 && self.pi_separation < 1.0) {
            return bad(format!(
                "pi_separation = {}: expected a number between 0 and 1",
                self.pi_separation
            ));
        }
        if self.model.is_conditional() && self.model.components < 2 {
            return bad("model.conditional needs at least 2 model.components".into());
        }
        for (name, v, hi) in [
            ("pi_rate", self.pi_rate, 1.0),
            ("classifier_weight", self.classifier_weight, f64::INFINITY),
            (
                "model.component_init",
                self.model.component_init,
                f64::INFINITY,
            ),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return bad(format!(
                    "{name} = {v}: expected a finite number from 0 to {hi}"
                ));
            }
        }
        if !(self.sharpen > 0.0 && self.sharpen <= 1.0) {
            return bad(format!("sharpen = {}: expected 0 < T ≤ 1", self.sharpen));
        }
        if !(self.spread.is_finite() && self.spread >= 0.0) {
            return bad(format!(
                "spread = {}: expected a finite number ≥ 0",
                self.spread
            ));
        }
        if !(self.shift_sigma_px.is_finite() && self.shift_sigma_px >= 0.0) {
            return bad(format!(
                "shift_sigma_px = {}: expected a finite number of pixels ≥ 0",
                self.shift_sigma_px
            ));
        }
        if let Err(e) = self.normalization.validate(n) {
            return bad(format!("normalization = {}: {e}", self.normalization));
        }
        if !(self.blur_start_px.is_finite() && self.blur_start_px >= 0.0) {
            return bad(format!(
                "blur_start_px = {}: expected a finite number ≥ 0",
                self.blur_start_px
            ));
        }
        Ok(())
    }
}

/// The noise σ of images estimated from their outer annulus (pixels beyond 0.9·N/2 from the
/// centre, where a centred particle has no signal): the pooled standard deviation.
pub fn estimate_noise_sigma(source: &dyn ImageSource, count: usize) -> Result<f64, TrainError> {
    let n = source.box_size();
    let count = count.min(source.len()).max(1);
    let mut images = Array3::<f32>::zeros((count, n, n));
    let indices: Vec<usize> = (0..count).collect();
    source.read_batch(&indices, images.view_mut())?;
    let c = (n / 2) as f64;
    let r0 = 0.9 * c;
    let (mut sum, mut sum2, mut k) = (0.0, 0.0, 0usize);
    for image in images.outer_iter() {
        for ((y, x), v) in image.indexed_iter() {
            let r = ((x as f64 - c).powi(2) + (y as f64 - c).powi(2)).sqrt();
            if r >= r0 {
                let v = f64::from(*v);
                sum += v;
                sum2 += v * v;
                k += 1;
            }
        }
    }
    let mean = sum / k as f64;
    Ok((sum2 / k as f64 - mean * mean).max(0.0).sqrt())
}

/// Random batches of real images read on a background thread, two batches ahead.
#[derive(Debug)]
pub struct Prefetcher {
    rx: Receiver<Result<Array3<f32>, String>>,
}

impl Prefetcher {
    /// Starts reading batches `first_batch, first_batch + 1, …` of `batch` images, each drawn
    /// uniformly (with replacement) from stream `(seed, Other(1), batch number)`.
    pub fn start(source: Arc<dyn ImageSource>, batch: usize, seed: u64, first_batch: u64) -> Self {
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || {
            let n = source.box_size();
            let mut b = first_batch;
            loop {
                let mut rng = stream(seed, Purpose::Other(1), b);
                let indices: Vec<usize> = (0..batch)
                    .map(|_| rng.random_range(0..source.len()))
                    .collect();
                let mut out = Array3::zeros((batch, n, n));
                let result = source
                    .read_batch(&indices, out.view_mut())
                    .map(|()| out)
                    .map_err(|e| e.to_string());
                if tx.send(result).is_err() {
                    return;
                }
                b += 1;
            }
        });
        Self { rx }
    }

    /// The next batch.
    pub fn next(&self) -> Result<Array3<f32>, TrainError> {
        self.rx
            .recv()
            .map_err(|_| TrainError::Invalid("the data reader stopped".into()))?
            .map_err(TrainError::Invalid)
    }
}

/// A Multi-CryoGAN (or CryoGAN) model being trained.
#[derive(Debug)]
pub struct Trainer {
    /// The configuration.
    pub config: TrainConfig,
    vs: nn::VarStore,
    g: Generator,
    d: Discriminator,
    /// The conditional critic's classifier and its optimiser.
    q: Option<(Classifier, Adam)>,
    opt_g: Adam,
    opt_d: Adam,
    forward: ForwardModel,
    device: Device,
    step: u64,
    moments: Option<ImageMoments>,
    invariant: Option<InvariantFeatures>,
    /// Running means of the invariant distances (d `[K]`, E `[K][K]`) of
    /// [`PiEstimator::Invariant`], kept in the var store (so in checkpoints).
    pi_stats: Option<(Tensor, Tensor)>,
}

fn trainable(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, t)| k.starts_with(prefix) && t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Trainer {
    /// A fresh model on `device` (G's weights and latent end points from `config.seed`).
    pub fn new(config: TrainConfig, device: Device) -> Result<Self, TrainError> {
        config.validate()?;
        tch::manual_seed(torch_seed(config.seed, 2, 0));
        let vs = nn::VarStore::new(device);
        let g = Generator::new(&(vs.root() / "g"), &config.model);
        let d = Discriminator::new(&(vs.root() / "d"), &config.model);
        let opt_g = Adam::new(
            trainable(&vs, "g."),
            config.lr_g,
            config.beta1,
            config.beta2,
        );
        let opt_d = Adam::new(
            trainable(&vs, "d."),
            config.lr_d,
            config.beta1,
            config.beta2,
        );
        let q = config.has_classifier().then(|| {
            let q = Classifier::new(&(vs.root() / "q"), &config.model);
            let opt = Adam::new(
                trainable(&vs, "q."),
                config.lr_d,
                config.beta1,
                config.beta2,
            );
            (q, opt)
        });
        let mixture = config.model.architecture() == Architecture::Mixture;
        let pi_stats = (mixture && config.pi_estimator == PiEstimator::Invariant).then(|| {
            let k = config.model.components as i64;
            let root = vs.root() / "pi";
            (
                root.zeros_no_train("distance", &[k]),
                root.zeros_no_train("cross", &[k, k]),
            )
        });
        let forward = ForwardModel::new(config.model.box_size, device);
        Ok(Self {
            config,
            vs,
            g,
            d,
            q,
            opt_g,
            opt_d,
            forward,
            device,
            step: 0,
            moments: None,
            invariant: None,
            pi_stats,
        })
    }

    /// Starts G from maps `[K][N][N][N]` (see [`Generator::init_volumes`]).
    pub fn init_volumes(&mut self, volumes: &Tensor) -> Result<(), TrainError> {
        self.g
            .init_volumes(&volumes.to_device(self.device))
            .map_err(TrainError::Invalid)
    }

    /// The data's image moments for the moment-matching term (see
    /// [`TrainConfig::moment_weight`]); computed from the data set by [`image_moments`].
    pub fn set_moments(&mut self, moments: ImageMoments) {
        self.moments = Some(moments.to_device(self.device));
    }

    /// The data's invariant features for the invariant-distribution term and π's invariant
    /// estimate (see [`TrainConfig::invariant_weight`], [`PiEstimator::Invariant`]).
    pub fn set_invariant(&mut self, features: InvariantFeatures) {
        self.invariant = Some(features.to_device(self.device));
    }

    /// Where the model lives.
    pub fn device(&self) -> Device {
        self.device
    }

    /// G steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The generator.
    pub fn generator(&self) -> &Generator {
        &self.g
    }

    /// Simulated images of a batch: volumes at random α, random poses, CTFs and shifts of
    /// random data particles, noise. Draws from `(seed, step, d_step)` streams and libtorch's
    /// generator.
    pub fn simulate(&self, data: &DataPhysics, tag: u64) -> Tensor {
        let cfg = &self.config;
        let b = cfg.batch_size;
        let volumes_n = (b / cfg.poses_per_volume) as i64;
        let alphas = Tensor::rand([volumes_n], (Kind::Float, self.device));
        let volumes = self.g.volumes(&alphas);
        let params = self.draw_params(data, tag);
        let physics =
            BatchPhysics::new(&params, cfg.model.box_size, data.apix, cfg.ctf, self.device);
        let ppv = cfg.poses_per_volume as i64;
        let clean = match cfg.projector {
            Projector::Fourier => self.forward.clean_fourier(&volumes, &physics, ppv),
            Projector::RealSpace => {
                let each = volumes.repeat_interleave_self_int(ppv, Some(0), None);
                self.forward.clean(&each, &physics)
            }
        };
        self.add_data_noise(&clean, data)
    }

    fn draw_params(&self, data: &DataPhysics, tag: u64) -> Vec<ImagingParams> {
        self.draw_params_n(data, tag, self.config.batch_size)
    }

    fn draw_params_n(&self, data: &DataPhysics, tag: u64, count: usize) -> Vec<ImagingParams> {
        let mut rng = stream(self.config.seed, Purpose::Other(3), tag);
        (0..count)
            .map(|_| {
                let pose = Pose::sample_uniform(&mut rng);
                let p = data.particles[rng.random_range(0..data.particles.len())];
                let sigma = self.config.shift_sigma_px * data.apix;
                let shift = if sigma > 0.0 {
                    let (x, y): (f64, f64) =
                        (rng.sample(StandardNormal), rng.sample(StandardNormal));
                    Shift {
                        x: sigma * x,
                        y: sigma * y,
                    }
                } else if self.config.shifts {
                    p.shift
                } else {
                    Shift::default()
                };
                ImagingParams {
                    pose,
                    shift,
                    ctf: p.ctf,
                }
            })
            .collect()
    }

    /// One G step with its k D steps, taking real batches from `real`.
    pub fn train_step(
        &mut self,
        data: &DataPhysics,
        real: &mut dyn FnMut() -> Result<Array3<f32>, TrainError>,
    ) -> Result<StepMetrics, TrainError> {
        match self.config.step {
            StepKind::Paper => self.train_step_paper(data, real),
            StepKind::Fast => self.train_step_fast(data, real),
        }
    }

    /// The temperature of the conditional critic's draws at G step `s` (see
    /// [`TrainConfig::sharpen`]).
    pub fn temperature_at(&self, s: u64) -> f64 {
        let c = &self.config;
        let since = s.saturating_sub(c.warm_steps);
        if c.sharpen >= 1.0 || since >= c.sharpen_steps {
            return 1.0;
        }
        c.sharpen + (1.0 - c.sharpen) * since as f64 / c.sharpen_steps as f64
    }

    /// The Gaussian σ (pixels) of the coarse-to-fine low-pass at G step `s`.
    pub fn blur_at(&self, s: u64) -> f64 {
        let c = &self.config;
        if c.blur_start_px <= 0.0 || s >= c.blur_steps {
            return 0.0;
        }
        c.blur_start_px * (1.0 - s as f64 / c.blur_steps as f64)
    }

    /// G's volumes for one step, ready to project: their 3D spectra (Fourier projector) or
    /// the volumes (real space), with their importance weights.
    fn prepare(&self, heterogeneous: bool) -> Prepared {
        let cfg = &self.config;
        let draws = (cfg.batch_size / cfg.poses_per_volume) as i64;
        let batch = self.g.batch(draws, heterogeneous);
        let count = batch.volumes.size()[0];
        let source = match cfg.projector {
            Projector::Fourier => self.forward.spectra(&batch.volumes),
            Projector::RealSpace => batch.volumes,
        };
        Prepared {
            source,
            // Without feedback the GAN simulates the components in equal shares.
            weights: batch.weights.filter(|_| cfg.pi_feedback),
            count,
        }
    }

    /// A batch of simulated images of `prepared`'s volumes at fresh poses, CTFs, shifts and
    /// noise (streams of `tag`), low-passed by `blur`, in random order (so that PacGAN's packs
    /// mix volumes), with each image's importance weight and the index of its volume in
    /// `prepared` (`[B]`, int64: a mixture's component).
    fn simulate_prepared(
        &self,
        prepared: &Prepared,
        data: &DataPhysics,
        tag: u64,
        blur: f64,
    ) -> Simulated {
        let cfg = &self.config;
        let b = cfg.batch_size as i64;
        let (clean, weights) = self.clean_prepared(prepared, data, tag, cfg.batch_size);
        let noisy = self.add_data_noise(&clean, data);
        let labels = Tensor::arange(prepared.count, (Kind::Int64, self.device))
            .repeat_interleave_self_int(b / prepared.count, Some(0), None);
        let (images, weights, labels) = if cfg.model.pack > 1 {
            let perm = Tensor::randperm(b, (Kind::Int64, self.device));
            (
                noisy.index_select(0, &perm),
                weights.map(|w| w.index_select(0, &perm)),
                labels.index_select(0, &perm),
            )
        } else {
            (noisy, weights, labels)
        };
        Simulated {
            images: low_pass(&images, blur),
            weights,
            labels,
        }
    }

    /// Simulated images of the mixture's components `labels` (`[B]`, int64, one per image, in
    /// that order) at fresh poses, CTFs, shifts and noise (streams of `tag`), low-passed by
    /// `blur`: a conditional critic's simulated batch, whose components are those drawn for
    /// the real batch.
    fn simulate_components(
        &self,
        prepared: &Prepared,
        data: &DataPhysics,
        tag: u64,
        blur: f64,
        labels: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let cfg = &self.config;
        let order: Vec<i64> = Vec::<i64>::try_from(&labels.to_device(Device::Cpu))?;
        let k = prepared.count as usize;
        let clean = match cfg.projector {
            Projector::Fourier => {
                // The projector sees every volume at the same number of poses: each component
                // at the largest count, of which each image takes its component's next one.
                let mut counts = vec![0i64; k];
                for &c in &order {
                    counts[c as usize] += 1;
                }
                let poses = counts.iter().copied().max().unwrap_or(1).max(1);
                let mut seen = vec![0i64; k];
                let mut pick = Vec::with_capacity(order.len());
                for &c in &order {
                    pick.push(c * poses + seen[c as usize]);
                    seen[c as usize] += 1;
                }
                let params = self.draw_params_n(data, tag, k * poses as usize);
                let physics =
                    BatchPhysics::new(&params, cfg.model.box_size, data.apix, cfg.ctf, self.device);
                let all = self
                    .forward
                    .clean_from_spectra(&prepared.source, &physics, poses);
                let pick = Tensor::from_slice(&pick).to_device(self.device);
                all.index_select(0, &pick)
            }
            Projector::RealSpace => {
                let params = self.draw_params_n(data, tag, order.len());
                let physics =
                    BatchPhysics::new(&params, cfg.model.box_size, data.apix, cfg.ctf, self.device);
                let each = prepared.source.index_select(0, labels);
                self.forward.clean(&each, &physics)
            }
        };
        Ok(low_pass(&self.add_data_noise(&clean, data), blur))
    }

    /// `count` clean images of `prepared`'s volumes (volume after volume) at poses and CTFs
    /// of streams of `tag`, with their importance weights.
    fn clean_prepared(
        &self,
        prepared: &Prepared,
        data: &DataPhysics,
        tag: u64,
        count: usize,
    ) -> (Tensor, Option<Tensor>) {
        let cfg = &self.config;
        let ppv = count as i64 / prepared.count;
        let params = self.draw_params_n(data, tag, count);
        let physics =
            BatchPhysics::new(&params, cfg.model.box_size, data.apix, cfg.ctf, self.device);
        let clean = match cfg.projector {
            Projector::Fourier => self
                .forward
                .clean_from_spectra(&prepared.source, &physics, ppv),
            Projector::RealSpace => {
                let each = prepared
                    .source
                    .repeat_interleave_self_int(ppv, Some(0), None);
                self.forward.clean(&each, &physics)
            }
        };
        let weights = prepared
            .weights
            .as_ref()
            .map(|w| w.repeat_interleave_self_int(ppv, Some(0), None));
        (clean, weights)
    }

    /// The moment-matching term (see [`TrainConfig::moment_weight`]), or `None` when off.
    fn moment_loss(&self, prepared: &Prepared, data: &DataPhysics, tag: u64) -> Option<Tensor> {
        let target = self.moments.as_ref()?;
        if self.config.moment_weight <= 0.0 {
            return None;
        }
        let count = self.config.moment_batch;
        let (clean, weights) = self.clean_prepared(prepared, data, tag, count);
        let f = target.features(&clean);
        // Two halves, each with half the images of every volume (even and odd rows), give
        // independent estimates; the product of their errors is unbiased for the squared error.
        let half = |parity: i64| -> (Tensor, Tensor) {
            let idx =
                Tensor::arange_start_step(parity, count as i64, 2, (Kind::Int64, self.device));
            let fh = f.index_select(0, &idx);
            let w = match &weights {
                Some(w) => w.index_select(0, &idx),
                None => Tensor::ones([fh.size()[0]], (Kind::Float, self.device)),
            };
            weighted_moments(&fh, &w)
        };
        let (m1, c1) = half(0);
        let (m2, c2) = half(1);
        let mean_term =
            ((&m1 - &target.mean) * (&m2 - &target.mean)).sum(Kind::Float) / target.mean_norm2;
        let cov_term =
            ((&c1 - &target.cov) * (&c2 - &target.cov)).sum(Kind::Float) / target.cov_norm2;
        Some((mean_term + cov_term) * self.config.moment_weight)
    }

    /// The invariant-distribution term (see [`TrainConfig::invariant_weight`]), or `None`
    /// when off; with [`PiEstimator::Invariant`] the step's distances also update its running
    /// means.
    fn invariant_loss(
        &mut self,
        prepared: &Prepared,
        data: &DataPhysics,
        tag: u64,
    ) -> Option<Tensor> {
        let target = self.invariant.as_ref()?;
        let count = (self.config.invariant_batch as i64 / prepared.count).max(1) * prepared.count;
        let (clean, weights) = self.clean_prepared(prepared, data, tag, count as usize);
        let x = target.features(&self.add_data_noise(&clean, data));
        let pick = Tensor::randint(
            target.data.size()[0],
            [self.config.invariant_reference as i64],
            (Kind::Int64, self.device),
        );
        let y = target.data.index_select(0, &pick);
        if let Some((d, e)) = &mut self.pi_stats
            && prepared.count > 1
        {
            // Rows come volume by volume (count / K each), the components in order.
            let (step_d, step_e) = tch::no_grad(|| component_distances(&x, &y, prepared.count));
            let rate = self.config.pi_rate;
            tch::no_grad(|| {
                d.copy_(&(&*d * (1.0 - rate) + step_d * rate));
                e.copy_(&(&*e * (1.0 - rate) + step_e * rate));
            });
        }
        if self.config.invariant_weight <= 0.0 {
            return None;
        }
        let distance = energy_distance(&x, weights.as_ref(), &y) - target.self_distance;
        Some(distance * self.config.invariant_weight)
    }

    /// Clean images made noisy as the data are (white noise of σ or background patches), then
    /// normalised as the data are ([`TrainConfig::normalization`]).
    fn add_data_noise(&self, clean: &Tensor, data: &DataPhysics) -> Tensor {
        let noisy = match &data.noise_patches {
            Some(patches) => {
                let pick = Tensor::randint(
                    patches.size()[0],
                    [clean.size()[0]],
                    (Kind::Int64, self.device),
                );
                clean + patches.index_select(0, &pick)
            }
            None => match &data.noise_filter {
                Some(filter) => ForwardModel::add_coloured_noise(clean, filter),
                None => ForwardModel::add_noise(clean, data.noise_sigma),
            },
        };
        ForwardModel::normalize(&noisy, &self.config.normalization)
    }

    /// The fast step (see [`StepKind::Fast`]).
    fn train_step_fast(
        &mut self,
        data: &DataPhysics,
        real: &mut dyn FnMut() -> Result<Array3<f32>, TrainError>,
    ) -> Result<StepMetrics, TrainError> {
        let start = std::time::Instant::now();
        let s = self.step;
        tch::manual_seed(torch_seed(self.config.seed, 4, s));
        let k = self.config.d_steps as u64;
        let blur = self.blur_at(s);
        let heterogeneous = s >= self.config.warm_steps;
        if s == self.config.warm_steps && self.config.split_dilation != 0.0 {
            self.g.split_by_dilation(self.config.split_dilation);
        }
        let pack = self.config.model.pack as i64;
        let components = self.config.model.components as i64;
        let b = self.config.batch_size as i64;
        let fixed = tch::no_grad(|| self.prepare(heterogeneous));
        let log_pi = self.g.probabilities().detach().log();
        let temperature = self.temperature_at(s);
        let mut output_sum = Tensor::zeros([components], (Kind::Float, self.device));
        let mut posterior_sum = Tensor::zeros([components], (Kind::Float, self.device));
        let mut confusion_sum = Tensor::zeros([components, components], (Kind::Float, self.device));
        let one_hot = |labels: &Tensor| labels.one_hot(components).to_kind(Kind::Float);
        let no_components = || Tensor::zeros([b, components], (Kind::Float, self.device));
        let mut last = None;
        let mut accuracy = None;
        for j in 0..k {
            let mut real = low_pass(&to_tensor(&real()?, self.device), blur);
            let tag = s * (k + 1) + j;
            // Conditional critic: the components of the real images are drawn from the
            // classifier's posterior under π (its plain outputs feed π's estimate), and the
            // simulated images are of the same components in the same order, so that both
            // sides of every pack hold the same mix of components. Before the mixture is
            // heterogeneous, D sees no components (zero planes).
            let conditional = self.config.model.is_conditional();
            let (fake, fake_weights, planes) = match &self.q {
                Some((q, _)) if heterogeneous && conditional => {
                    let labels = tch::no_grad(|| {
                        let logits = q.logits(&real);
                        let output = logits.softmax(1, Kind::Float);
                        output_sum += output.sum_dim_intlist(&[0i64][..], false, Kind::Float);
                        posterior_sum += (&logits + &log_pi)
                            .softmax(1, Kind::Float)
                            .sum_dim_intlist(&[0i64][..], false, Kind::Float);
                        let sharp = (logits / temperature + &log_pi).softmax(1, Kind::Float);
                        sharp.multinomial(1, true).squeeze_dim(1)
                    });
                    let labels = if self.config.sorted_packs {
                        let order = labels.argsort_stable(true, 0, false);
                        real = real.index_select(0, &order);
                        labels.index_select(0, &order)
                    } else {
                        labels
                    };
                    let images = tch::no_grad(|| {
                        self.simulate_components(&fixed, data, tag, blur, &labels)
                    })?;
                    let drawn = one_hot(&labels);
                    let planes = Some((drawn.shallow_clone(), drawn));
                    (
                        Simulated {
                            images,
                            weights: None,
                            labels,
                        },
                        None,
                        planes,
                    )
                }
                _ => {
                    if let Some((q, _)) = &self.q
                        && heterogeneous
                    {
                        // π from the classifier, D unconditional: Q's outputs on real images.
                        tch::no_grad(|| {
                            let logits = q.logits(&real);
                            output_sum += logits.softmax(1, Kind::Float).sum_dim_intlist(
                                &[0i64][..],
                                false,
                                Kind::Float,
                            );
                            posterior_sum += (&logits + &log_pi)
                                .softmax(1, Kind::Float)
                                .sum_dim_intlist(&[0i64][..], false, Kind::Float);
                        });
                    }
                    let fake = tch::no_grad(|| self.simulate_prepared(&fixed, data, tag, blur));
                    let weights = fake.weights.as_ref().map(|w| w.shallow_clone());
                    let planes = conditional.then(|| {
                        let none = no_components();
                        (none.shallow_clone(), none)
                    });
                    (fake, weights, planes)
                }
            };
            let eps = Tensor::rand([real.size()[0] / pack], (Kind::Float, self.device));
            self.opt_d.zero_grad();
            let (loss, wass, pen) = fused_discriminator_loss(
                &self.d,
                &real,
                &fake.images,
                fake_weights.as_ref(),
                planes.as_ref().map(|(r, f)| (r, f)),
                &eps,
                self.config.gp_lambda,
            );
            loss.backward();
            self.opt_d.step();
            last = Some(Tensor::stack(
                &[loss.detach(), wass.detach(), pen.detach()],
                0,
            ));
            // Q learns on a balanced batch (equal prior probabilities).
            let balanced = (heterogeneous && self.q.is_some()).then(|| {
                tch::no_grad(|| self.simulate_prepared(&fixed, data, u64::MAX / 4 + tag, blur))
            });
            if let (Some(fake), Some((q, opt))) = (balanced, self.q.as_mut()) {
                opt.zero_grad();
                let logits = q.logits(&fake.images);
                // C[i][j]: the mean output i on images of component j (balanced: B/K each).
                confusion_sum += tch::no_grad(|| {
                    logits
                        .softmax(1, Kind::Float)
                        .transpose(0, 1)
                        .matmul(&one_hot(&fake.labels))
                        * (components as f64 / b as f64)
                });
                let ce = logits.cross_entropy_for_logits(&fake.labels);
                ce.backward();
                opt.step();
                accuracy = Some(
                    logits
                        .argmax(1, false)
                        .eq_tensor(&fake.labels)
                        .to_kind(Kind::Float)
                        .mean(Kind::Float)
                        .detach(),
                );
            }
        }
        // The G step: D's (and Q's) weights need no gradient.
        let frozen: Vec<(String, Tensor)> = trainable(&self.vs, "d.")
            .into_iter()
            .chain(trainable(&self.vs, "q."))
            .collect();
        for (_, t) in &frozen {
            let _ = t.set_requires_grad(false);
        }
        let prepared = self.prepare(heterogeneous);
        let conditional = self.config.model.is_conditional();
        let (fake, scores, weights) = if conditional && heterogeneous {
            // Components drawn from π, as the D steps' real ones are on average (and in
            // order, as theirs are, with sorted packs); π itself follows the classifier
            // (below), not D's gradient.
            let pi = self.g.probabilities().detach();
            let labels = pi
                .unsqueeze(0)
                .expand([b, components], false)
                .multinomial(1, true)
                .squeeze_dim(1);
            let labels = if self.config.sorted_packs {
                labels.sort(0, false).0
            } else {
                labels
            };
            let images =
                self.simulate_components(&prepared, data, s * (k + 1) + k, blur, &labels)?;
            let scores = self.d.score(&with_components(&images, &one_hot(&labels)));
            (
                Simulated {
                    images,
                    weights: None,
                    labels,
                },
                scores,
                None,
            )
        } else {
            let fake = self.simulate_prepared(&prepared, data, s * (k + 1) + k, blur);
            let scores = if conditional {
                self.d
                    .score(&with_components(&fake.images, &no_components()))
            } else {
                self.d.score(&fake.images)
            };
            let weights = fake.weights.as_ref().map(|w| w.shallow_clone());
            (fake, scores, weights)
        };
        self.opt_g.zero_grad();
        let g_loss = -weighted_mean(&scores, weights.as_ref(), pack);
        let moment = self.moment_loss(&prepared, data, u64::MAX / 2 + s);
        let invariant = self.invariant_loss(&prepared, data, u64::MAX / 3 + s);
        // The invariant-only phase: the components and π follow the invariant term alone.
        let invariant_only = heterogeneous
            && invariant.is_some()
            && s < self.config.warm_steps + self.config.invariant_only_steps;
        let mut total = if invariant_only {
            Tensor::zeros([], (Kind::Float, self.device))
        } else {
            g_loss.shallow_clone()
        };
        for term in [&moment, &invariant].into_iter().flatten() {
            total += term;
        }
        if let Some((q, _)) = &self.q
            && heterogeneous
            && self.config.classifier_weight > 0.0
        {
            let ce = q
                .logits(&fake.images)
                .cross_entropy_for_logits(&fake.labels);
            total += ce * self.config.classifier_weight;
        }
        total.backward();
        for (_, t) in &frozen {
            let _ = t.set_requires_grad(true);
        }
        if heterogeneous {
            self.g.spread(self.config.spread);
        }
        if invariant_only {
            self.opt_g.step_except(&["g.volume"]);
        } else {
            self.opt_g.step();
        }
        self.g.project_constraints();
        if let Some((q, _)) = self.q.as_mut()
            && heterogeneous
        {
            let count = (b * k as i64) as f64;
            let pi = match self.config.pi_estimator {
                PiEstimator::Invariant => None,
                PiEstimator::Shift => q.update_shift(
                    &(output_sum / count),
                    &(confusion_sum / k as f64),
                    self.config.pi_rate,
                    self.config.pi_separation,
                ),
                PiEstimator::Em => {
                    let rate = self.config.pi_rate;
                    Some(log_pi.exp() * (1.0 - rate) + posterior_sum / count * rate)
                }
            };
            if let Some(pi) = pi {
                self.g.set_probabilities(&pi);
            }
        }
        if let Some((d, e)) = &self.pi_stats
            && heterogeneous
            && s >= self.config.warm_steps + self.config.pi_delay
            && let Some(pi) = tch::no_grad(|| quadratic_simplex_minimum(d, e))
        {
            self.g.set_probabilities(&pi);
        }
        self.step += 1;
        let probs = self.g.probabilities().detach().to_kind(Kind::Double);
        let moment_value = match &moment {
            Some(m) => m.detach().to_kind(Kind::Double).unsqueeze(0),
            None => Tensor::zeros([1], (Kind::Double, self.device)),
        };
        let invariant_value = match &invariant {
            Some(m) => m.detach().to_kind(Kind::Double).unsqueeze(0),
            None => Tensor::zeros([1], (Kind::Double, self.device)),
        };
        let accuracy_value = match &accuracy {
            Some(a) => a.to_kind(Kind::Double).unsqueeze(0),
            None => Tensor::zeros([1], (Kind::Double, self.device)),
        };
        let values = Tensor::cat(
            &[
                last.expect("k ≥ 1").to_kind(Kind::Double),
                g_loss.detach().to_kind(Kind::Double).unsqueeze(0),
                moment_value,
                accuracy_value,
                invariant_value,
                probs,
            ],
            0,
        )
        .to_device(Device::Cpu);
        let values: Vec<f64> = Vec::<f64>::try_from(&values).map_err(TrainError::Torch)?;
        let (d_loss, w, gp, g_value) = (values[0], values[1], values[2], values[3]);
        let mixture = self.config.model.architecture() == Architecture::Mixture;
        let secs = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.step,
            time: 0.0,
            d_loss,
            g_loss: g_value,
            wasserstein: w,
            gradient_penalty: gp,
            images_per_second: (self.config.batch_size as u64 * (k + 1)) as f64 / secs,
            moment_loss: moment.is_some().then_some(values[4]),
            classifier_accuracy: accuracy.is_some().then_some(values[5]),
            invariant_loss: invariant.is_some().then_some(values[6]),
            probabilities: mixture.then(|| values[7..].to_vec()),
        })
    }

    /// The paper's step (see [`StepKind::Paper`]).
    fn train_step_paper(
        &mut self,
        data: &DataPhysics,
        real: &mut dyn FnMut() -> Result<Array3<f32>, TrainError>,
    ) -> Result<StepMetrics, TrainError> {
        let start = std::time::Instant::now();
        let s = self.step;
        tch::manual_seed(torch_seed(self.config.seed, 4, s));
        let k = self.config.d_steps as u64;
        // Losses stay on the device until the step ends: reading a value forces the host to
        // wait for the device, once per step rather than after every D step.
        let mut last = None;
        for j in 0..k {
            let real = to_tensor(&real()?, self.device);
            let fake = self.simulate(data, s * (k + 1) + j).detach();
            let eps = Tensor::rand([real.size()[0]], (Kind::Float, self.device));
            self.opt_d.zero_grad();
            let (loss, wass, pen) =
                discriminator_loss(&self.d, &real, &fake, &eps, self.config.gp_lambda);
            loss.backward();
            self.opt_d.step();
            last = Some(Tensor::stack(
                &[loss.detach(), wass.detach(), pen.detach()],
                0,
            ));
        }
        let fake = self.simulate(data, s * (k + 1) + k);
        self.opt_g.zero_grad();
        self.opt_d.zero_grad();
        let g_loss = generator_loss(&self.d, &fake);
        g_loss.backward();
        self.opt_g.step();
        self.g.project_constraints();
        self.step += 1;
        let values = Tensor::cat(
            &[
                last.expect("k ≥ 1").to_kind(Kind::Double),
                g_loss.detach().to_kind(Kind::Double).unsqueeze(0),
            ],
            0,
        )
        .to_device(Device::Cpu);
        let values: Vec<f64> = Vec::<f64>::try_from(&values).map_err(TrainError::Torch)?;
        let (d_loss, w, gp, g_value) = (values[0], values[1], values[2], values[3]);
        let secs = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.step,
            time: 0.0,
            d_loss,
            g_loss: g_value,
            wasserstein: w,
            gradient_penalty: gp,
            images_per_second: (self.config.batch_size as u64 * (k + 1)) as f64 / secs,
            moment_loss: None,
            invariant_loss: None,
            probabilities: None,
            classifier_accuracy: None,
        })
    }

    /// Writes a checkpoint (weights, latent end points, optimiser states, step) to `path` as
    /// safetensors, through a temporary file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(k, t)| (format!("model.{k}"), t.detach().to_device(Device::Cpu)))
            .collect();
        let opt_q = self.q.as_ref().map(|(_, o)| ("opt_q", o));
        for (prefix, opt) in [("opt_g", &self.opt_g), ("opt_d", &self.opt_d)]
            .into_iter()
            .chain(opt_q)
        {
            for (k, t) in opt.state() {
                named.push((format!("{prefix}.{k}"), t.to_device(Device::Cpu)));
            }
        }
        named.push((
            "trainer.step".into(),
            Tensor::from_slice(&[self.step as i64]),
        ));
        let config = serde_json::to_string(&self.config).expect("config serialises");
        let config_bytes: Vec<u8> = config.into_bytes();
        named.push(("trainer.config".into(), Tensor::from_slice(&config_bytes)));
        let staged = mcg_fsio::Staged::new(path).map_err(fs_error)?;
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, staged.path())?;
        staged.commit().map_err(fs_error)
    }

    /// Restores a checkpoint written by [`Trainer::save`] into this trainer; fails when it was
    /// made with another model configuration, naming the difference.
    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        let what = |m: String| TrainError::Invalid(format!("checkpoint {}: {m}", path.display()));
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| what(e.to_string()))?
            .into_iter()
            .collect();
        let config = tensors
            .get("trainer.config")
            .ok_or_else(|| what("no trainer.config".into()))?;
        let bytes: Vec<u8> = Vec::<u8>::try_from(config).map_err(|e| what(e.to_string()))?;
        let saved = serde_json::from_slice(&bytes)
            .and_then(TrainConfig::from_run_json)
            .map_err(|e| what(e.to_string()))?;
        if saved.model != self.config.model {
            return Err(what(format!(
                "made with model {} but this run's model is {}",
                serde_json::to_string(&saved.model).unwrap_or_default(),
                serde_json::to_string(&self.config.model).unwrap_or_default()
            )));
        }
        tch::no_grad(|| -> Result<(), TrainError> {
            for (k, mut t) in self.vs.variables() {
                let key = format!("model.{k}");
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| what(format!("no tensor {key}")))?;
                if src.size() != t.size() {
                    return Err(what(format!(
                        "tensor {key} has shape {:?}, expected {:?}",
                        src.size(),
                        t.size()
                    )));
                }
                t.copy_(src);
            }
            Ok(())
        })?;
        let opt_q = self.q.as_mut().map(|(_, o)| ("opt_q.", o));
        for (prefix, opt) in [("opt_g.", &mut self.opt_g), ("opt_d.", &mut self.opt_d)]
            .into_iter()
            .chain(opt_q)
        {
            let state: BTreeMap<String, Tensor> = tensors
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(prefix)
                        .map(|s| (s.to_string(), t.to_device(self.device)))
                })
                .collect();
            opt.load_state(&state).map_err(what)?;
        }
        let step = tensors
            .get("trainer.step")
            .ok_or_else(|| what("no trainer.step".into()))?;
        self.step = step.int64_value(&[0]) as u64;
        Ok(())
    }
}

/// The mean and covariance of the low-frequency Fourier coefficients of a data set's images,
/// with the white noise's covariance removed (see [`TrainConfig::moment_weight`]).
#[derive(Debug)]
pub struct ImageMoments {
    /// Indices, in the flattened `rfft2` half-plane `[N][N/2 + 1]`, of the coefficients used.
    index: Tensor,
    /// Whether each used coefficient contributes its imaginary part (all but the origin).
    imag_index: Tensor,
    /// Mean feature vector `[F]`.
    pub mean: Tensor,
    /// Covariance `[F][F]`.
    pub cov: Tensor,
    mean_norm2: f64,
    cov_norm2: f64,
}

impl ImageMoments {
    fn to_device(&self, device: Device) -> Self {
        Self {
            index: self.index.to_device(device),
            imag_index: self.imag_index.to_device(device),
            mean: self.mean.to_device(device),
            cov: self.cov.to_device(device),
            mean_norm2: self.mean_norm2,
            cov_norm2: self.cov_norm2,
        }
    }

    /// The coefficient set for `n`² images within `radius`: the half-plane kx > 0, the ky > 0
    /// half of kx = 0, and the origin (its real part only).
    fn layout(n: i64, radius: usize, device: Device) -> (Tensor, Tensor) {
        let h = n / 2 + 1;
        let r2 = (radius * radius) as i64;
        let mut index = Vec::new();
        let mut imag = Vec::new();
        for row in 0..n {
            let ky = if row < n / 2 + n % 2 { row } else { row - n };
            for kx in 0..h {
                if kx * kx + ky * ky > r2 {
                    continue;
                }
                let origin = kx == 0 && ky == 0;
                if kx > 0 || ky > 0 || origin {
                    index.push(row * h + kx);
                    if !origin {
                        imag.push(index.len() as i64 - 1);
                    }
                }
            }
        }
        (
            Tensor::from_slice(&index).to_device(device),
            Tensor::from_slice(&imag).to_device(device),
        )
    }

    /// The feature vectors `[B][F]` of images `[B][N][N]`: the real parts of the coefficients,
    /// then the imaginary parts (but the origin's), divided by N.
    pub fn features(&self, images: &Tensor) -> Tensor {
        let size = images.size();
        let n = size[1];
        let spec = images
            .fft_rfft2(None::<&[i64]>, [-2i64, -1], "backward")
            .reshape([size[0], -1])
            .index_select(1, &self.index)
            / n as f64;
        let parts = spec.view_as_real();
        let re = parts.select(2, 0);
        let im = parts.select(2, 1).index_select(1, &self.imag_index);
        Tensor::cat(&[re, im], 1)
    }
}

/// Weighted mean `[F]` and covariance `[F][F]` of features `[B][F]` (weights `[B]`, mean 1).
fn weighted_moments(f: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
    let b = f.size()[0] as f64;
    let mean = (f * w.unsqueeze(1)).sum_dim_intlist(&[0i64][..], false, Kind::Float) / b;
    let second = (f * w.unsqueeze(1)).transpose(0, 1).matmul(f) / b;
    let cov = second - mean.unsqueeze(1).matmul(&mean.unsqueeze(0));
    (mean, cov)
}

/// The data's [`ImageMoments`] from its first `count` images (all when fewer), with the
/// covariance of white noise of σ `noise_sigma` removed: per coefficient σ²/2 on the real
/// and the imaginary part, σ² on the origin (features are coefficients / N).
pub fn image_moments(
    source: &dyn ImageSource,
    count: usize,
    noise_sigma: f64,
    radius: usize,
) -> Result<ImageMoments, TrainError> {
    let n = source.box_size();
    let (index, imag_index) = ImageMoments::layout(n as i64, radius, Device::Cpu);
    let mut moments = ImageMoments {
        index,
        imag_index,
        mean: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        cov: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        mean_norm2: 1.0,
        cov_norm2: 1.0,
    };
    let count = count.min(source.len());
    if count < 2 {
        return Err(TrainError::Invalid(
            "moment matching needs at least two images".into(),
        ));
    }
    let mut sum: Option<Tensor> = None;
    let mut sum2: Option<Tensor> = None;
    read_chunks(source, count, &mut |images| {
        let f = moments.features(images).to_kind(Kind::Double);
        let s1 = f.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        let s2 = f.transpose(0, 1).matmul(&f);
        sum = Some(match sum.take() {
            Some(s) => s + s1,
            None => s1,
        });
        sum2 = Some(match sum2.take() {
            Some(s) => s + s2,
            None => s2,
        });
    })?;
    let c = count as f64;
    let mean = sum.expect("count ≥ 2") / c;
    let mut cov = sum2.expect("count ≥ 2") / c - mean.unsqueeze(1).matmul(&mean.unsqueeze(0));
    // White noise: Re and Im of a coefficient / N each have variance σ²/2; the origin's real
    // part σ².
    let dim = cov.size()[0];
    let mut noise = vec![noise_sigma * noise_sigma / 2.0; dim as usize];
    noise[0] = noise_sigma * noise_sigma;
    cov -= Tensor::from_slice(&noise).diag(0);
    moments.mean_norm2 = mean.square().sum(Kind::Double).double_value(&[]).max(1e-30);
    moments.cov_norm2 = cov.square().sum(Kind::Double).double_value(&[]).max(1e-30);
    moments.mean = mean.to_kind(Kind::Float);
    moments.cov = cov.to_kind(Kind::Float);
    Ok(moments)
}

/// Calls `f` on the first `count` images of `source` (`count` ≤ its length), in order, as CPU
/// tensors `[len][N][N]` of at most 1,000 images each.
pub(crate) fn read_chunks(
    source: &dyn ImageSource,
    count: usize,
    f: &mut dyn FnMut(&Tensor),
) -> Result<(), TrainError> {
    let n = source.box_size();
    let chunk = 1000;
    let mut start = 0;
    while start < count {
        let len = chunk.min(count - start);
        let mut images = Array3::<f32>::zeros((len, n, n));
        let indices: Vec<usize> = (start..start + len).collect();
        source.read_batch(&indices, images.view_mut())?;
        f(&to_tensor(&images, Device::Cpu));
        start += len;
    }
    Ok(())
}

/// G's volumes of one step, ready to project (see [`Trainer::prepare`]).
struct Prepared {
    source: Tensor,
    weights: Option<Tensor>,
    count: i64,
}

/// A batch of simulated images with their importance weights and volume indices.
struct Simulated {
    images: Tensor,
    weights: Option<Tensor>,
    labels: Tensor,
}

/// Images `[B][N][N]` low-passed by a Gaussian of σ `sigma` pixels (circularly, through the
/// 2D transform); unchanged when σ ≤ 0.
pub fn low_pass(images: &Tensor, sigma: f64) -> Tensor {
    if sigma <= 0.0 {
        return images.shallow_clone();
    }
    let size = images.size();
    let (h, w) = (size[1], size[2]);
    let opts = (Kind::Float, images.device());
    let fy = Tensor::fft_fftfreq(h, 1.0, opts);
    let fx = Tensor::fft_rfftfreq(w, 1.0, opts);
    let f2 = fy.square().view([h, 1]) + fx.square().view([1, w / 2 + 1]);
    let gauss = (f2 * (-2.0 * std::f64::consts::PI.powi(2) * sigma * sigma)).exp();
    let spectrum = images.fft_rfft2(None::<&[i64]>, [-2i64, -1], "backward");
    (spectrum * gauss).fft_irfft2(Some(&[h, w][..]), [-2i64, -1], "backward")
}

/// The mean of pack scores `[B / pack]`, each weighted by the product of its images'
/// importance weights (`[B]`) when there are any.
fn weighted_mean(scores: &Tensor, weights: Option<&Tensor>, pack: i64) -> Tensor {
    match weights {
        Some(w) => {
            let per_pack = w.view([-1, pack]).prod_dim_int(1, false, Kind::Float);
            (scores * per_pack).mean(Kind::Float)
        }
        None => scores.mean(Kind::Float),
    }
}

/// The WGAN-GP loss of D with real, simulated and interpolated images scored in one pass
/// (D has no batch statistics, so this equals three passes): E_w[D(fake)] − E[D(real)] +
/// λ·E[(‖∇D(x̂)‖ − 1)²], over packs of `D::pack()` images, `eps` `[B / pack]` one per pack,
/// the fake mean weighted by the importance weights. A conditional D gets each image's
/// component (`components`: real and fake, `[B][K]`, as constant planes beside the image; see
/// [`with_components`]).
/// Returns (loss, Wasserstein estimate, penalty).
pub fn fused_discriminator_loss(
    d: &Discriminator,
    real: &Tensor,
    fake: &Tensor,
    fake_weights: Option<&Tensor>,
    components: Option<(&Tensor, &Tensor)>,
    eps: &Tensor,
    lambda: f64,
) -> (Tensor, Tensor, Tensor) {
    let pack = d.pack() as i64;
    let size = real.size();
    let packs = size[0] / pack;
    let e = eps
        .view([packs, 1, 1, 1])
        .expand([packs, pack, 1, 1], false)
        .reshape([size[0], 1, 1]);
    // A conditional D's input is the image with its component planes; the interpolation and
    // the penalty's gradient are taken over both, so that D is Lipschitz in the component too
    // (otherwise it can score a pack's mix of components without bound).
    let (real_in, fake_in) = match components {
        None => (real.shallow_clone(), fake.shallow_clone()),
        Some((cr, cf)) => (with_components(real, cr), with_components(fake, cf)),
    };
    let e = match components {
        None => e,
        Some(_) => e.unsqueeze(1),
    };
    let rest = -&e + 1.0;
    let interp = (&real_in * &e + &fake_in * rest)
        .detach()
        .set_requires_grad(true);
    let all = Tensor::cat(&[&real_in, &fake_in, &interp], 0);
    let scores = d.score(&all);
    let s_real = scores.narrow(0, 0, packs);
    let s_fake = scores.narrow(0, packs, packs);
    let s_interp = scores.narrow(0, 2 * packs, packs);
    let grads = Tensor::run_backward(&[s_interp.sum(Kind::Float)], &[&interp], true, true);
    let norms = grads[0]
        .reshape([packs, -1])
        .norm_scalaropt_dim(2, [1i64], false);
    let penalty = (norms - 1.0).square().mean(Kind::Float);
    let wasserstein = s_real.mean(Kind::Float) - weighted_mean(&s_fake, fake_weights, pack);
    let loss = -&wasserstein + &penalty * lambda;
    (loss, wasserstein, penalty)
}

/// A seed for libtorch's generator from the stream `(seed, Other(purpose), index)`.
fn torch_seed(seed: u64, purpose: u32, index: u64) -> i64 {
    (stream(seed, Purpose::Other(purpose), index).random::<u64>() >> 1) as i64
}

fn to_tensor(a: &Array3<f32>, device: Device) -> Tensor {
    let (b, h, w) = a.dim();
    let data: Vec<f32> = a.iter().copied().collect();
    crate::forward::upload(
        Tensor::from_slice(&data).view([b as i64, h as i64, w as i64]),
        device,
    )
}

/// A failure to write a run's file, as a training error.
pub(crate) fn fs_error(e: mcg_fsio::FsError) -> TrainError {
    TrainError::Fs(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{GeneratorKind, Mode};
    use mcg_physics::Volume;
    use mcg_physics::simulate::{ProjectorKind, RandomImaging, Simulator};

    /// Images held in memory.
    struct Memory(Array3<f32>);

    impl ImageSource for Memory {
        fn len(&self) -> usize {
            self.0.dim().0
        }
        fn box_size(&self) -> usize {
            self.0.dim().1
        }
        fn pixel_size(&self) -> f64 {
            5.0
        }
        fn read_batch(
            &self,
            indices: &[usize],
            mut out: ndarray::ArrayViewMut3<'_, f32>,
        ) -> mcg_formats::Result<()> {
            for (i, &j) in indices.iter().enumerate() {
                out.index_axis_mut(ndarray::Axis(0), i)
                    .assign(&self.0.index_axis(ndarray::Axis(0), j));
            }
            Ok(())
        }
    }

    /// Gaussian blobs (centre about the box's centre, σ, weight) in an `n`³ box.
    fn blobs(n: usize, blobs: &[([f64; 3], f64, f64)]) -> Volume {
        let blobs: Vec<mcg_physics::Blob> = blobs
            .iter()
            .map(|&(centre, sigma, amplitude)| mcg_physics::Blob {
                centre,
                amplitude,
                sigma,
            })
            .collect();
        Volume::gaussian_blobs(n, 5.0, &blobs).unwrap()
    }

    /// An asymmetric pair of blobs in a 16³ box.
    fn truth(n: usize) -> Volume {
        blobs(
            n,
            &[([0.0, 0.0, 0.0], 2.0, 1.0), ([3.5, 0.0, 0.0], 1.5, 0.7)],
        )
    }

    /// The mass of a volume in spherical shells about its centre, radii 0 … N/2 (a
    /// rotation-invariant summary: reconstructions are defined up to rotation and reflection).
    fn profile(v: &[f32], n: usize) -> Vec<f64> {
        let c = (n / 2) as f64;
        let mut sum = vec![0.0; n / 2 + 1];
        let mut count = vec![0.0; n / 2 + 1];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let r =
                        ((x as f64 - c).powi(2) + (y as f64 - c).powi(2) + (z as f64 - c).powi(2))
                            .sqrt()
                            .round() as usize;
                    if r <= n / 2 {
                        sum[r] += f64::from(v[(z * n + y) * n + x]);
                        count[r] += 1.0;
                    }
                }
            }
        }
        let _ = count;
        sum
    }

    fn relative_distance(a: &[f64], b: &[f64]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let n: f64 = b.iter().map(|y| y * y).sum();
        (d / n).sqrt()
    }

    #[test]
    fn low_pass_is_the_gaussian_blur() {
        // A point at the centre of a 16² image, blurred by σ = 1.5 px: the result sums to 1
        // and equals the sampled, normalised Gaussian (to the aliasing of its periodic copies,
        // negligible at σ ≪ N).
        let n = 16i64;
        let sigma = 1.5;
        let img = Tensor::zeros([1, n, n], (Kind::Float, Device::Cpu));
        let _ = img.get(0).get(8).get(8).fill_(1.0);
        let out: Vec<f32> = low_pass(&img, sigma).flatten(0, -1).try_into().unwrap();
        let mut want = vec![0.0f64; (n * n) as usize];
        for y in 0..n {
            for x in 0..n {
                let d2 = ((x - 8).pow(2) + (y - 8).pow(2)) as f64;
                want[(y * n + x) as usize] = (-d2 / (2.0 * sigma * sigma)).exp();
            }
        }
        let total: f64 = want.iter().sum();
        for (g, w) in out.iter().zip(&want) {
            assert!(
                (f64::from(*g) - w / total).abs() < 2e-3,
                "{g} vs {}",
                w / total
            );
        }
        let sum: f64 = out.iter().map(|&v| f64::from(v)).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        // σ = 0 leaves images alone.
        let same: Vec<f32> = low_pass(&img, 0.0).flatten(0, -1).try_into().unwrap();
        assert_eq!(same[8 * 16 + 8], 1.0);
    }

    #[test]
    fn the_fused_discriminator_loss_equals_separate_passes() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 16,
            discriminator_channels: 4,
            pack: 1,
            ..ModelConfig::default()
        };
        let d = Discriminator::new(&(vs.root() / "d"), &cfg);
        let real = Tensor::randn([6, 16, 16], (Kind::Float, Device::Cpu));
        let fake = Tensor::randn([6, 16, 16], (Kind::Float, Device::Cpu)) * 0.5;
        let eps = Tensor::rand([6], (Kind::Float, Device::Cpu));
        let (a, wa, pa) = discriminator_loss(&d, &real, &fake, &eps, 10.0);
        let (b, wb, pb) = fused_discriminator_loss(&d, &real, &fake, None, None, &eps, 10.0);
        for (x, y) in [(a, b), (wa, wb.shallow_clone()), (pa, pb)] {
            let (x, y) = (x.double_value(&[]), y.double_value(&[]));
            assert!((x - y).abs() < 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
        // Weights of 1 change nothing; weights scale each fake's score.
        let ones = Tensor::ones([6], (Kind::Float, Device::Cpu));
        let (_, w1, _) = fused_discriminator_loss(&d, &real, &fake, Some(&ones), None, &eps, 10.0);
        assert!((w1.double_value(&[]) - wb.double_value(&[])).abs() < 1e-6);
        let w = Tensor::from_slice(&[2.0f32, 0.0, 1.0, 1.0, 0.5, 1.5]);
        let (_, w2, _) = fused_discriminator_loss(&d, &real, &fake, Some(&w), None, &eps, 10.0);
        let want = d.score(&real).mean(Kind::Float) - (d.score(&fake) * &w).mean(Kind::Float);
        assert!((w2.double_value(&[]) - want.double_value(&[])).abs() < 1e-5);
    }

    #[test]
    fn packed_scores_take_the_product_of_their_images_weights() {
        let scores = Tensor::from_slice(&[1.0f32, 2.0]);
        let w = Tensor::from_slice(&[2.0f32, 0.5, 3.0, 1.0]);
        // Packs (2·0.5) and (3·1): (1·1 + 2·3) / 2.
        let m = weighted_mean(&scores, Some(&w), 2).double_value(&[]);
        assert!((m - 3.5).abs() < 1e-6, "{m}");
    }

    #[test]
    fn run_settings_without_a_step_are_the_papers_recipe() {
        // A run folder written before the fast step existed: its missing fields are the
        // paper's recipe, while a settings file given today gets today's defaults.
        let old = serde_json::json!({
            "model": {"mode": "multi", "box_size": 16, "latent_size": 8},
            "batch_size": 8, "seed": 5
        });
        let c = TrainConfig::from_run_json(old.clone()).unwrap();
        assert_eq!(c.step, StepKind::Paper);
        assert_eq!(c.model.generator, GeneratorKind::Cnn);
        assert_eq!(c.model.leaky_slope, 0.01);
        assert_eq!((c.model.pack, c.warm_steps, c.blur_start_px), (1, 0, 0.0));
        assert_eq!(
            (c.model.box_size, c.model.latent_size, c.batch_size),
            (16, 8, 8)
        );
        assert_eq!(c.lr_d, 1e-4);
        let today: TrainConfig = serde_json::from_value(old).unwrap();
        assert_eq!(today.step, StepKind::Fast);
        assert_eq!(today.model.generator, GeneratorKind::Mixture);
        // With a "step", nothing is filled in from the paper.
        let new = serde_json::json!({"step": "fast", "batch_size": 8});
        let fast = TrainConfig::from_run_json(new).unwrap();
        assert_eq!(fast.model.pack, 8);
        // A fast run made before the conditional critic existed had none, as today's default.
        assert!(!fast.model.conditional);
        assert_eq!(fast.model.component_init, 1e-3);
        let on = serde_json::json!({"step": "fast", "model": {"conditional": true}});
        assert!(
            TrainConfig::from_run_json(on)
                .unwrap()
                .model
                .is_conditional()
        );
        // Round trip.
        let d = TrainConfig::default();
        let back = TrainConfig::from_run_json(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let p = TrainConfig::paper();
        let back = TrainConfig::from_run_json(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn blur_falls_linearly_to_zero() {
        let cfg = TrainConfig {
            blur_start_px: 2.0,
            blur_steps: 100,
            ..TrainConfig::default()
        };
        let t = Trainer::new(cfg, Device::Cpu).unwrap();
        assert_eq!(t.blur_at(0), 2.0);
        assert!((t.blur_at(25) - 1.5).abs() < 1e-12);
        assert_eq!(t.blur_at(100), 0.0);
        assert_eq!(t.blur_at(1000), 0.0);
    }

    #[test]
    fn settings_that_cannot_work_together_are_refused() {
        let base = TrainConfig::default();
        let mixture_paper = TrainConfig {
            step: StepKind::Paper,
            ..base.clone()
        };
        assert!(
            mixture_paper
                .validate()
                .unwrap_err()
                .to_string()
                .contains("mixture")
        );
        let mut odd = base.clone();
        odd.model.components = 3;
        assert!(
            odd.validate()
                .unwrap_err()
                .to_string()
                .contains("components")
        );
        let mut pack = base.clone();
        pack.model.pack = 5;
        assert!(pack.validate().unwrap_err().to_string().contains("pack"));
        assert!(TrainConfig::paper().validate().is_ok());
        assert!(base.validate().is_ok());
    }

    #[test]
    fn image_moments_remove_the_noise_and_keep_the_signal() {
        // One fixed image plus white noise of σ = 2: the mean features are the image's own and
        // the covariance, once the noise's is removed, is near zero.
        let n = 16usize;
        let count = 4000;
        let sigma = 2.0f32;
        let signal = Array3::from_shape_fn((1, n, n), |(_, y, x)| {
            let d2 = (x as f32 - 8.0).powi(2) + (y as f32 - 7.0).powi(2);
            3.0 * (-d2 / 8.0).exp()
        });
        let m = image_moments(
            &Memory(m_images(&signal, count, sigma, 0)),
            count,
            f64::from(sigma),
            4,
        )
        .unwrap();
        // Coefficients within radius 4 of the half-plane (kx > 0, or kx = 0 and ky ≥ 0): real
        // parts of all, imaginary parts of all but the origin.
        let coefficients = (0i64..=4)
            .flat_map(|kx| (-4i64..=4).map(move |ky| (kx, ky)))
            .filter(|&(kx, ky)| kx * kx + ky * ky <= 16 && (kx > 0 || ky >= 0))
            .count() as i64;
        assert_eq!(m.mean.size(), [2 * coefficients - 1]);
        let want = m.features(&to_tensor(&signal, Device::Cpu)).squeeze_dim(0);
        let err = (&m.mean - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        // The mean's error is σ/√(2·count) ≈ 0.02 per feature.
        assert!(err < 0.1, "mean error {err} (features up to {scale})");
        // Noise variance per feature is σ²/2 = 2; what remains after removing it is sampling
        // error, about 2·√(2/count) ≈ 0.045 on the diagonal.
        let resid = m.cov.diag(0).abs().max().double_value(&[]);
        assert!(resid < 0.25, "diagonal residual {resid}");
        // Without removing the noise the diagonal would be about 2: the removal is what acts.
        let raw =
            image_moments(&Memory(m_images(&signal, count, sigma, 1)), count, 0.0, 4).unwrap();
        assert!(raw.cov.diag(0).mean(Kind::Float).double_value(&[]) > 1.5);
    }

    /// `count` copies of `signal` with white Gaussian noise of σ (stream `index`).
    fn m_images(signal: &Array3<f32>, count: usize, sigma: f32, index: u64) -> Array3<f32> {
        let n = signal.dim().1;
        let mut rng = stream(9, Purpose::Other(9), index);
        Array3::from_shape_fn((count, n, n), |(_, y, x)| {
            let g: f32 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng);
            signal[[0, y, x]] + sigma * g
        })
    }

    /// Single mode on `n`² images with a tiny D and batches of 8 images of one volume.
    fn single_config(n: usize) -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                mode: Mode::Single,
                box_size: n,
                discriminator_channels: 4,
                ..ModelConfig::default()
            },
            batch_size: 8,
            poses_per_volume: 8,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn simulated_shifts_follow_the_settings() {
        let cfg = |shifts: bool, sigma: f64| TrainConfig {
            shifts,
            shift_sigma_px: sigma,
            ..single_config(16)
        };
        let shift = Shift { x: 3.0, y: -4.0 };
        let data = DataPhysics {
            particles: vec![ImagingParams {
                pose: Pose::default(),
                shift,
                ctf: RandomImaging::default().draw(1, 0).ctf,
            }],
            apix: 2.5,
            noise_sigma: 1.0,
            noise_patches: None,
            noise_filter: None,
        };
        let shifts = |c: TrainConfig| -> Vec<Shift> {
            let t = Trainer::new(c, Device::Cpu).unwrap();
            t.draw_params_n(&data, 7, 4000)
                .into_iter()
                .map(|p| p.shift)
                .collect()
        };
        assert!(
            shifts(cfg(false, 0.0))
                .iter()
                .all(|s| *s == Shift::default())
        );
        assert!(shifts(cfg(true, 0.0)).iter().all(|s| *s == shift));
        // Gaussian offsets of σ 2 px = 5 Å per axis, centred, whatever the data's.
        let g = shifts(cfg(true, 2.0));
        for axis in [|s: &Shift| s.x, |s: &Shift| s.y] {
            let v: Vec<f64> = g.iter().map(axis).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            // Standard errors: 5/√4000 ≈ 0.08 Å for the mean, ≈ 1.1 % for σ.
            assert!(mean.abs() < 0.3, "mean {mean}");
            assert!((sd - 5.0).abs() < 0.2, "σ {sd} Å, expected 5");
        }
    }

    #[test]
    fn simulated_images_are_normalised_as_the_data() {
        let n = 16usize;
        let how = Normalization::Background {
            radius_px: Some(5.0),
        };
        let cfg = TrainConfig {
            normalization: how,
            ..single_config(n)
        };
        let trainer = Trainer::new(cfg, Device::Cpu).unwrap();
        let data = DataPhysics {
            particles: (0..4)
                .map(|i| RandomImaging::default().draw(1, i))
                .collect(),
            apix: 5.0,
            noise_sigma: 3.0,
            noise_patches: None,
            noise_filter: None,
        };
        let images = trainer.simulate(&data, 0);
        let images: Vec<f32> = images.flatten(0, -1).try_into().unwrap();
        for image in images.chunks(n * n) {
            let mut want = ndarray::Array2::from_shape_vec((n, n), image.to_vec()).unwrap();
            mcg_physics::normalize::normalize(want.view_mut(), &how);
            let err = want
                .iter()
                .zip(image)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Normalising again changes nothing: the image is normalised already.
            assert!(err < 1e-4, "{err}");
        }
    }

    #[test]
    fn noise_patches_replace_white_noise() {
        let cfg = TrainConfig {
            ctf: false,
            ..single_config(16)
        };
        let trainer = Trainer::new(cfg, Device::Cpu).unwrap();
        // Two constant patches, 5 and 7: every simulated image is its clean image plus one.
        let patches = Tensor::cat(
            &[
                Tensor::full([1, 16, 16], 5.0, (Kind::Float, Device::Cpu)),
                Tensor::full([1, 16, 16], 7.0, (Kind::Float, Device::Cpu)),
            ],
            0,
        );
        let params: Vec<ImagingParams> = (0..4)
            .map(|i| RandomImaging::default().draw(1, i))
            .collect();
        let mut data = DataPhysics {
            particles: params,
            apix: 5.0,
            noise_sigma: 100.0,
            noise_patches: Some(patches),
            noise_filter: None,
        };
        let with_patches = trainer.simulate(&data, 0);
        data.noise_patches = None;
        data.noise_sigma = 0.0;
        let clean = trainer.simulate(&data, 0);
        let offsets: Vec<f32> = (with_patches - clean)
            .mean_dim(&[1i64, 2][..], false, Kind::Float)
            .try_into()
            .unwrap();
        assert!(
            offsets
                .iter()
                .all(|o| (o - 5.0).abs() < 1e-4 || (o - 7.0).abs() < 1e-4),
            "{offsets:?}"
        );
    }

    #[test]
    fn single_mode_learns_a_volume_from_clean_images() {
        let n = 16;
        let vol = truth(n);
        let params: Vec<ImagingParams> = (0..512)
            .map(|i| RandomImaging::default().draw(11, i))
            .collect();
        let mut images = Array3::zeros((params.len(), n, n));
        Simulator::new(&vol, ProjectorKind::RealSpace).clean(&params, false, images.view_mut());
        let source: Arc<dyn ImageSource> = Arc::new(Memory(images));
        // The paper's step and the fast one. This test's batch is 16 images and it runs 300
        // steps, so the fast recipe's packs and blur are scaled to it: packs of 2 (D still
        // scores 8 per batch, not 2) and the blur gone by step 150.
        let fast = TrainConfig {
            blur_steps: 150,
            model: ModelConfig {
                pack: 2,
                ..ModelConfig::default()
            },
            ..TrainConfig::default()
        };
        for (recipe, base) in [("paper", TrainConfig::paper()), ("fast", fast)] {
            let config = TrainConfig {
                model: ModelConfig {
                    mode: Mode::Single,
                    box_size: n,
                    discriminator_channels: 8,
                    ..base.model.clone()
                },
                batch_size: 16,
                poses_per_volume: 16,
                d_steps: 2,
                lr_g: 0.005,
                lr_d: 1e-3,
                ctf: false,
                seed: 3,
                ..base
            };
            let mut trainer = Trainer::new(config, Device::Cpu).unwrap();
            let data = DataPhysics {
                particles: params.clone(),
                apix: 5.0,
                noise_sigma: 0.0,
                noise_patches: None,
                noise_filter: None,
            };
            let feed = Prefetcher::start(source.clone(), 16, 3, 0);
            let want = profile(vol.data().as_slice().unwrap(), n);
            let got = |t: &Trainer| {
                let v = t.generator().volumes(&Tensor::from_slice(&[0.0f32]));
                let v: Vec<f32> = v.flatten(0, -1).try_into().unwrap();
                relative_distance(&profile(&v, n), &want)
            };
            let before = got(&trainer);
            for _ in 0..300 {
                trainer.train_step(&data, &mut || feed.next()).unwrap();
            }
            let after = got(&trainer);
            eprintln!("{recipe}: profile distance {before:.3} → {after:.3}");
            assert!(
                before > 0.95,
                "{recipe}: starts from an almost empty volume: {before}"
            );
            // Measured: 0.99 → 0.09 in 300 steps (paper).
            assert!(
                after < 0.3,
                "{recipe}: profile distance after training: {after}"
            );
        }
    }

    /// A dumbbell: the central blob of [`truth`] with a satellite on each side.
    fn dumbbell(n: usize) -> Volume {
        blobs(
            n,
            &[
                ([0.0, 0.0, 0.0], 2.0, 1.0),
                ([0.0, 5.0, 0.0], 1.5, 0.7),
                ([0.0, -5.0, 0.0], 1.5, 0.7),
            ],
        )
    }

    #[test]
    fn a_conditional_mixture_started_at_the_states_learns_their_proportions() {
        // 20 % of the images show `truth`, 80 % the dumbbell, with noise. Started at the two
        // states with π = 50 / 50, the classifier learns to tell their simulated images apart
        // and π = C⁻¹μ follows from its outputs on the data.
        let n = 16;
        let states = [truth(n), dumbbell(n)];
        let count = 500;
        let params: Vec<ImagingParams> = (0..count)
            .map(|i| RandomImaging::default().draw(21, i as u64))
            .collect();
        let mut images = Array3::zeros((count, n, n));
        let first = count / 5;
        for (k, range) in [(0, 0..first), (1, first..count)] {
            Simulator::new(&states[k], ProjectorKind::RealSpace).clean(
                &params[range.clone()],
                false,
                images.slice_mut(ndarray::s![range, .., ..]),
            );
        }
        let noise = m_images(&Array3::zeros((1, n, n)), count, 1.0, 4);
        images += &noise;
        let source: Arc<dyn ImageSource> = Arc::new(Memory(images));
        let config = TrainConfig {
            model: ModelConfig {
                box_size: n,
                discriminator_channels: 8,
                component_coarsening: 1,
                pack: 2,
                conditional: true,
                ..ModelConfig::default()
            },
            batch_size: 16,
            poses_per_volume: 4,
            d_steps: 2,
            ctf: false,
            warm_steps: 0,
            blur_start_px: 0.0,
            sharpen: 1.0,
            pi_rate: 0.05,
            seed: 2,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(config, Device::Cpu).unwrap();
        let maps: Vec<Tensor> = states
            .iter()
            .map(|v| {
                let d: Vec<f32> = v.data().iter().copied().collect();
                Tensor::from_slice(&d).view([n as i64, n as i64, n as i64])
            })
            .collect();
        trainer.init_volumes(&Tensor::stack(&maps, 0)).unwrap();
        let data = DataPhysics {
            particles: params,
            apix: 5.0,
            noise_sigma: 1.0,
            noise_patches: None,
            noise_filter: None,
        };
        let feed = Prefetcher::start(source, 16, 2, 0);
        let mut last = None;
        for _ in 0..150 {
            last = Some(trainer.train_step(&data, &mut || feed.next()).unwrap());
        }
        let last = last.unwrap();
        let pi = last.probabilities.unwrap();
        eprintln!(
            "π = {pi:?}, classifier accuracy {:?}",
            last.classifier_accuracy
        );
        assert!(
            (pi[0] - 0.2).abs() < 0.08,
            "π = {pi:?}, expected about 0.2 / 0.8"
        );
        // Above chance (measured 0.69 on the last 16-image batch).
        assert!(last.classifier_accuracy.unwrap() > 0.5);
    }
}
