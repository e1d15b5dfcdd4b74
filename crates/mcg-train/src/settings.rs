//! A run's settings (`TrainConfig`, with the model's `ModelConfig`), their validation, and
//! the reading of settings written before (a run folder's `config.json`, a checkpoint, a
//! `--config` file), with the retired experiments' settings (see [`RETIRED`]).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::forward::Projector;
use crate::models::{Architecture, ModelConfig};
use mcg_physics::normalize::Normalization;

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
    /// Whether the mixture's simulated images follow π (true: the GAN's importance weights
    /// K·πₖ). False: the GAN simulates its components in equal shares whatever π, and π (as
    /// learnt, and as the run reports it) does not feed back into how the components are
    /// trained, so that a component whose share falls is not starved of D's attention.
    pub pi_feedback: bool,
    /// The mixture's probabilities, held fixed (e.g. a classification's π, which the GAN does
    /// not estimate well: its critic leaves π near equal shares), and simulated in their
    /// proportions rather than weighted ([`crate::models::Generator::stratified_batch`]);
    /// `None`: learnt. For the path generator: the shares of the segment its anchors' cells
    /// cover, which place the anchors (`None`: equal shares).
    pub fixed_pi: Option<Vec<f64>>,
}

/// The git tag of the last commit that had the retired experiments (see [`RETIRED`]); their
/// runs are reproduced by building it.
pub const RETIRED_TAG: &str = "experiments-2026-12";

/// The settings of the experiments that did not help (docs/results.md), retired after
/// [`RETIRED_TAG`]: each one's path in the settings (`model.` for the model's) and the values
/// at which it did nothing (its default, and the paper recipe's where that differed). A
/// settings file or checkpoint that holds one at such a value still reads (the setting is
/// dropped); at any other value it is refused, naming the setting and the tag.
pub const RETIRED: &[(&str, &[Inert])] = &[
    ("split_dilation", &[Inert::Number(0.0)]),
    ("spread", &[Inert::Number(0.0)]),
    ("moment_weight", &[Inert::Number(0.0)]),
    ("moment_radius", &[Inert::Number(6.0)]),
    ("moment_batch", &[Inert::Number(256.0)]),
    ("invariant_weight", &[Inert::Number(0.0)]),
    ("invariant_batch", &[Inert::Number(512.0)]),
    ("invariant_reference", &[Inert::Number(1024.0)]),
    ("invariant_only_steps", &[Inert::Number(0.0)]),
    ("pi_rate", &[Inert::Number(0.01)]),
    ("pi_classifier", &[Inert::Bool(false)]),
    ("pi_separation", &[Inert::Number(0.05)]),
    ("pi_estimator", &[Inert::Text("shift")]),
    ("pi_delay", &[Inert::Number(200.0)]),
    ("classifier_weight", &[Inert::Number(0.0)]),
    ("sharpen", &[Inert::Number(0.02), Inert::Number(1.0)]),
    (
        "sharpen_steps",
        &[Inert::Number(1000.0), Inert::Number(0.0)],
    ),
    ("sorted_packs", &[Inert::Bool(true), Inert::Bool(false)]),
    ("model.conditional", &[Inert::Bool(false)]),
];

/// A value at which a retired setting did nothing (see [`RETIRED`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inert {
    /// A number (written as an integer or not).
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(&'static str),
}

impl Inert {
    fn matches(&self, v: &serde_json::Value) -> bool {
        match self {
            Self::Number(x) => v.as_f64() == Some(*x),
            Self::Bool(b) => v.as_bool() == Some(*b),
            Self::Text(t) => v.as_str() == Some(*t),
        }
    }
}

/// Removes the retired settings (see [`RETIRED`]) from settings `value`, refusing one that is
/// not at a value at which it did nothing.
fn drop_retired(value: &mut serde_json::Value) -> Result<(), serde_json::Error> {
    for (path, inert) in RETIRED {
        let (object, name) = match path.split_once('.') {
            Some((outer, name)) => (value.get_mut(outer), name),
            None => (Some(&mut *value), *path),
        };
        let Some(serde_json::Value::Object(object)) = object else {
            continue;
        };
        let Some(v) = object.remove(name) else {
            continue;
        };
        if !inert.iter().any(|i| i.matches(&v)) {
            return Err(serde::de::Error::custom(format!(
                "{path} = {v}: this experiment was retired; the git tag {RETIRED_TAG} has it \
                 (build that commit to run it), or leave {path} out"
            )));
        }
    }
    Ok(())
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
            pi_feedback: true,
            fixed_pi: None,
        }
    }
}

impl TrainConfig {
    /// Multi-CryoGAN's mixture generator with `components` components, our defaults otherwise;
    /// the batch rounded up to the smallest multiple of K, of the poses per volume and of the
    /// pack (a mixture simulates as many images of each component).
    pub fn mixture(components: usize) -> Self {
        let mut c = Self::default();
        c.model.mode = crate::models::Mode::Multi;
        c.model.generator = crate::models::GeneratorKind::Mixture;
        c.model.components = components;
        let unit = [c.model.components, c.poses_per_volume, c.model.pack]
            .into_iter()
            .fold(1, lcm);
        c.batch_size = c.batch_size.div_ceil(unit) * unit;
        c
    }

    /// [`Self::mixture`] of `pi.len()` components started from as many maps
    /// (`RunOptions::init_volumes`), their probabilities held at `pi`: at full resolution from
    /// the first step (no coarsening, warm start or blur).
    pub fn mixture_held(pi: Vec<f64>) -> Self {
        let mut c = Self::mixture(pi.len());
        c.model.component_coarsening = 1;
        c.warm_steps = 0;
        c.blur_start_px = 0.0;
        c.fixed_pi = Some(pi);
        c
    }

    /// The path generator through `pi.len()` anchors started from as many maps, ordered along
    /// a continuum (`RunOptions::init_volumes`), each anchor at the centre of its cell of the
    /// cumulative `pi`: at full resolution from the first step, like [`Self::mixture_held`].
    pub fn path_held(pi: Vec<f64>) -> Self {
        let mut c = Self::mixture_held(pi);
        c.model.generator = crate::models::GeneratorKind::Path;
        c
    }

    /// Settings from a run folder's `config.json` (its "train" part) or a checkpoint. Settings
    /// written before the fast step existed have no "step" field: their missing fields are
    /// those of the recipe they were made with, the paper's ([`TrainConfig::paper`]), so such
    /// runs resume exactly. Other missing fields take today's defaults.
    ///
    /// Settings of the experiments retired after the tag [`RETIRED_TAG`] (see [`RETIRED`]) are
    /// dropped when they have a value at which they did nothing, and refused otherwise.
    pub fn from_run_json(mut value: serde_json::Value) -> Result<Self, serde_json::Error> {
        drop_retired(&mut value)?;
        if value.get("step").is_some() || !value.is_object() {
            return serde_json::from_value(value);
        }
        let mut base = serde_json::to_value(Self::paper())?;
        overlay(&mut base, value);
        serde_json::from_value(base)
    }

    /// Settings from a settings file (`--config`): missing fields take today's defaults, and
    /// retired settings are read as [`TrainConfig::from_run_json`] reads them.
    pub fn from_settings_json(mut value: serde_json::Value) -> Result<Self, serde_json::Error> {
        drop_retired(&mut value)?;
        serde_json::from_value(value)
    }

    /// Settings from a settings file (`--config`: JSON like a run's `config.json`'s "train"
    /// part), read as [`TrainConfig::from_settings_json`] reads them. Errors name the file.
    pub fn from_settings_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_settings_json(value)
            .with_context(|| format!("{}: not valid training settings", path.display()))
    }

    /// Sets fields from `--set KEY=VALUE`s, in order: KEY a field (`model.FIELD` for the
    /// model's), VALUE JSON or else a string; the result is read back as a settings file is
    /// ([`TrainConfig::from_settings_json`]). Errors name the `--set` and what was expected.
    pub fn apply_sets(&mut self, sets: &[String]) -> anyhow::Result<()> {
        if sets.is_empty() {
            return Ok(());
        }
        let mut value = serde_json::to_value(&*self)?;
        for set in sets {
            let (key, text) = set
                .split_once('=')
                .with_context(|| format!("--set {set:?}: expected KEY=VALUE"))?;
            let v = serde_json::from_str(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
            let mut slot = &mut value;
            for part in key.split('.') {
                slot = slot.get_mut(part).with_context(|| {
                    format!(
                        "--set {set:?}: no setting {key:?} (expected a field of RUN/config.json's \
                         \"train\", model.FIELD for the model's)"
                    )
                })?;
            }
            *slot = v;
        }
        *self = Self::from_settings_json(value).context("--set")?;
        Ok(())
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
        if self.model.architecture() == Architecture::Path && self.model.components < 2 {
            return bad("model.generator = path needs model.components ≥ 2 anchors".into());
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
        if let Some(pi) = &self.fixed_pi {
            let k = self.model.components;
            let held = matches!(
                self.model.architecture(),
                Architecture::Mixture | Architecture::Path
            );
            if !held || pi.len() != k {
                return bad(format!(
                    "fixed_pi = {pi:?}: expected the mixture's or the path's {k} probabilities"
                ));
            }
            let sum: f64 = pi.iter().sum();
            if pi.iter().any(|p| !(p.is_finite() && *p > 0.0)) || (sum - 1.0).abs() > 1e-6 {
                return bad(format!(
                    "fixed_pi = {pi:?}: expected probabilities > 0 that sum to 1"
                ));
            }
        }
        if pack > 1 && self.step == StepKind::Paper {
            return bad("model.pack > 1 needs step = fast".into());
        }
        if !(self.model.component_init.is_finite() && self.model.component_init >= 0.0) {
            return bad(format!(
                "model.component_init = {}: expected a finite number ≥ 0",
                self.model.component_init
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

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::GeneratorKind;

    /// The settings of a default run's `config.json` as the trainer wrote them at the tag
    /// [`RETIRED_TAG`], with every experiment's setting at its default.
    const CONFIG_AT_THE_TAG: &str = include_str!("testdata/config-experiments-2026-12.json");

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
        assert_eq!(fast.model.component_init, 1e-3);
        // Round trip.
        let d = TrainConfig::default();
        let back = TrainConfig::from_run_json(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let p = TrainConfig::paper();
        let back = TrainConfig::from_run_json(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn sets_change_the_named_fields_and_refuse_others() {
        let mut c = TrainConfig::default();
        let sets = [
            "lr_d=2e-4",
            "model.pack=4",
            "projector=real-space",
            "noise_sigma=null",
        ];
        c.apply_sets(&sets.map(String::from)).unwrap();
        // JSON values as JSON, anything else as a string (the projector's name).
        let expected = TrainConfig {
            lr_d: 2e-4,
            projector: Projector::RealSpace,
            noise_sigma: None,
            model: ModelConfig {
                pack: 4,
                ..ModelConfig::default()
            },
            ..TrainConfig::default()
        };
        assert_eq!(c, expected);
        // Later sets win; no sets change nothing.
        c.apply_sets(&["lr_d=1e-3".into(), "lr_d=5e-5".into()])
            .unwrap();
        assert_eq!(c.lr_d, 5e-5);
        c.apply_sets(&[]).unwrap();
        assert_eq!(c.lr_d, 5e-5);
        for (set, says) in [
            ("lr_d", "--set \"lr_d\": expected KEY=VALUE"),
            ("nope=1", "--set \"nope=1\": no setting \"nope\""),
            (
                "model.nope=1",
                "--set \"model.nope=1\": no setting \"model.nope\"",
            ),
            ("batch_size=x", "--set: invalid type: string \"x\""),
        ] {
            let mut c = TrainConfig::default();
            let err = format!("{:#}", c.apply_sets(&[set.to_string()]).unwrap_err());
            assert!(err.starts_with(says), "{set}: {err}");
            assert_eq!(
                c,
                TrainConfig::default(),
                "{set}: a refused set changes nothing"
            );
        }
    }

    #[test]
    fn a_settings_file_is_read_with_todays_defaults_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(&path, r#"{"batch_size": 8, "model": {"pack": 2}}"#).unwrap();
        let c = TrainConfig::from_settings_file(&path).unwrap();
        assert_eq!((c.batch_size, c.model.pack), (8, 2));
        assert_eq!(c.step, StepKind::Fast);
        std::fs::write(&path, "{").unwrap();
        let err = format!("{:#}", TrainConfig::from_settings_file(&path).unwrap_err());
        assert!(err.contains("settings.json: not valid JSON"), "{err}");
        std::fs::write(&path, r#"{"bach_size": 8}"#).unwrap();
        let err = format!("{:#}", TrainConfig::from_settings_file(&path).unwrap_err());
        assert!(
            err.contains("settings.json: not valid training settings") && err.contains("bach_size"),
            "{err}"
        );
        let missing = dir.path().join("missing.json");
        let err = format!(
            "{:#}",
            TrainConfig::from_settings_file(&missing).unwrap_err()
        );
        assert!(
            err.starts_with("reading ") && err.contains("missing.json"),
            "{err}"
        );
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
    fn retired_settings_at_their_defaults_are_dropped_and_others_refused() {
        let doc: serde_json::Value = serde_json::from_str(CONFIG_AT_THE_TAG).unwrap();
        let old = doc["train"].clone();
        // The file holds every retired setting (it is a faithful fixture).
        for (path, _) in RETIRED {
            let v = match path.split_once('.') {
                Some((outer, name)) => &old[outer][name],
                None => &old[*path],
            };
            assert!(!v.is_null(), "{path} missing from the fixture");
        }
        let c = TrainConfig::from_run_json(old.clone()).unwrap();
        // Today's settings of that run are its values (the box and σ the CLI chose).
        let want = TrainConfig {
            model: ModelConfig {
                box_size: 32,
                latent_size: 32,
                ..ModelConfig::default()
            },
            noise_sigma: c.noise_sigma,
            shifts: c.shifts,
            normalization: c.normalization,
            ..TrainConfig::default()
        };
        assert_eq!(c, want);
        assert!(c.noise_sigma.is_some());
        // Also through a settings file, and with the paper recipe's values of `sharpen` etc.
        assert_eq!(TrainConfig::from_settings_json(old.clone()).unwrap(), want);
        let mut paper_like = old.clone();
        paper_like["sharpen"] = serde_json::json!(1.0);
        paper_like["sharpen_steps"] = serde_json::json!(0);
        paper_like["sorted_packs"] = serde_json::json!(false);
        assert_eq!(TrainConfig::from_run_json(paper_like).unwrap(), want);
        // An experiment that was on is refused, naming the setting and the tag.
        for (path, value) in [
            ("moment_weight", serde_json::json!(0.5)),
            ("pi_estimator", serde_json::json!("invariant")),
            ("model.conditional", serde_json::json!(true)),
            ("sharpen", serde_json::json!(0.1)),
        ] {
            let mut on = old.clone();
            match path.split_once('.') {
                Some((outer, name)) => on[outer][name] = value,
                None => on[path] = value,
            }
            let e = TrainConfig::from_run_json(on.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(path) && e.contains(RETIRED_TAG), "{e}");
            let e = TrainConfig::from_settings_json(on).unwrap_err().to_string();
            assert!(e.contains(path) && e.contains(RETIRED_TAG), "{e}");
        }
        // An unknown setting that was never ours stays an error.
        let mut unknown = old;
        unknown["moment_weights"] = serde_json::json!(0.0);
        assert!(TrainConfig::from_run_json(unknown).is_err());
    }
}
