//! The product's main job in one call: particles in, conformations and their proportions out.
//!
//! [`reconstruct`] chains three stages, each in its own folder inside the output folder, and
//! records each one's time and outcome in `reconstruct.json`:
//!
//! 1. **`consensus/`: the pose-free consensus** (CryoGAN, one volume; no pose is estimated or
//!    marginalised). It trains in chunks of [`CONSENSUS_CHUNK_MINUTES`] and stops once its
//!    AreaFSC against its previous chunk stops rising ([`consensus_settled`]), or at its share
//!    of the budget.
//! 2. **`classify/`: the classification with the poses marginalised** (`mcg_classify`:
//!    maximum likelihood over K class volumes, each image's pose summed over a grid of
//!    rotations), started from the consensus. It stops when it has converged, or when another
//!    iteration would not fit in what the consensus left of the budget (less the landscape's
//!    least minutes and the reports').
//! 3. **`landscape/`: the Multi-CryoGAN landscape** (pose-free again), its mixture's K
//!    components (or a path's anchors) started from the class maps and its probabilities held
//!    at the classification's π (the GAN's critic leaves π near equal shares:
//!    docs/results.md), for at most what is left of the budget. It trains in chunks, each
//!    scored by the likelihood of a fixed subset of the particles with their poses
//!    marginalised (`mcg_classify::score`); it stops once that stops rising
//!    ([`LandscapeStop`]), and its folder ends at the best-scored checkpoint.
//!
//! Then, with a truth, `report/` (the landscape against the truth) and `classify/report/`.
//! `pose_free` keeps the paper's pure path instead: Multi-CryoGAN alone, for the whole budget,
//! in `landscape/`.
//!
//! The GAN stages' budgets are wall minutes by default ([`Budget`]); `consensus_steps` and
//! `landscape_steps` give them in generator steps instead, and then the same seed and settings
//! give the same maps bit for bit whatever the machine's speed (the classification then runs
//! to its convergence, with no limit in minutes).
//!
//! `resume` continues at the stage that was reached: stages recorded as done are skipped, and
//! the one that was under way continues from its own checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mcg_classify::run::{ClassifySettings, classify};
use mcg_classify::score::{SCORE_IMAGES, Scorer};
use mcg_dataset::input::Locate;
use mcg_dataset::monitor::Monitor;
use mcg_eval::align::{AlignConfig, Transform, align, correlation, has_contrast};
use mcg_eval::fsc::{FscConfig, fsc};
use mcg_formats::mrc;
use mcg_physics::Volume;
use mcg_physics::pose::{Mat3, mat_mul, transpose};
use mcg_train::data::{PrepareSettings, RunDataSettings, prepare_run};
use mcg_train::models::Mode;
use mcg_train::run::{RunData, RunOptions, RunSummary};
use mcg_train::train::TrainConfig;
use mcg_train::{DeviceChoice, device};
use tch::Device;

pub use mcg_runfiles::reconstruct::{
    CLASSIFY, CONSENSUS, LANDSCAPE, Landscape, RECORD, REPORT, Record, Stage,
};

/// Reads `reconstruct.json` in `dir`.
pub fn read_record(dir: &Path) -> Result<Record> {
    Ok(mcg_runfiles::reconstruct::read_record(dir)?)
}

/// The consensus trains in chunks of this many minutes, compared one with the next.
pub const CONSENSUS_CHUNK_MINUTES: f64 = 0.5;
/// The minutes the budget keeps for the reports when there is a truth.
pub const REPORT_MINUTES: f64 = 1.0;
/// The landscape trains for at least this many minutes, whatever is left of the budget.
pub const MIN_LANDSCAPE_MINUTES: f64 = 0.5;
/// With a budget in steps, the consensus trains in chunks of this many generator steps (about
/// half a minute's at 32² on two cores), compared one with the next.
pub const CONSENSUS_CHUNK_STEPS: u64 = 200;

/// The landscape trains in chunks of at most this many minutes (and at most a quarter of its
/// budget), each followed by its score.
pub const LANDSCAPE_CHUNK_MINUTES: f64 = 1.0;
/// With a budget in steps, the landscape's chunks: at most this many generator steps (and at
/// most a quarter of its budget, rounded up).
pub const LANDSCAPE_CHUNK_STEPS: u64 = 300;
/// The landscape stops once this many chunks in a row have not raised its best score.
pub const LANDSCAPE_PATIENCE: usize = 2;
/// The nats per image by which a chunk must raise the landscape's best score to count.
pub const LANDSCAPE_GAIN: f64 = 0.01;
/// The landscape's best checkpoint, beside its current one.
pub const BEST_CHECKPOINT: &str = "best.safetensors";

/// When the landscape stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LandscapeStop {
    /// Once its likelihood (poses marginalised) stops rising, its best checkpoint kept.
    #[default]
    Likelihood,
    /// At the end of its budget (the paper's way), its best checkpoint kept.
    Budget,
}

impl std::str::FromStr for LandscapeStop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "likelihood" => Ok(Self::Likelihood),
            "budget" => Ok(Self::Budget),
            other => Err(format!(
                "unknown stop {other:?}: expected likelihood or budget"
            )),
        }
    }
}

impl std::fmt::Display for LandscapeStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Likelihood => "likelihood",
            Self::Budget => "budget",
        })
    }
}

/// How long a GAN stage trains: wall minutes, or generator steps (the run's total). A budget
/// in steps gives the same maps, bit for bit, on any machine; one in minutes gives what the
/// machine's speed allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Minutes(f64),
    Steps(u64),
}

/// The settings of a reconstruction (plain values; the CLI fills them from its flags).
#[derive(Debug, Clone)]
pub struct ReconstructSettings {
    /// The particle set (STAR, `.cs`, HDF5, MRC stack).
    pub particles: PathBuf,
    /// Where its images are, and its pixel size when the file has none.
    pub locate: Locate,
    /// The output folder: one folder per stage inside it.
    pub out: PathBuf,
    /// The whole budget, minutes: the consensus takes at most `consensus_minutes` of it, the
    /// classification what it needs, the landscape the rest (at least
    /// [`MIN_LANDSCAPE_MINUTES`]).
    pub minutes: f64,
    /// The consensus's most minutes.
    pub consensus_minutes: f64,
    /// The consensus's most generator steps, instead of `consensus_minutes` (chunks of
    /// [`CONSENSUS_CHUNK_STEPS`]): with `landscape_steps`, a reconstruction that the same
    /// seed and settings repeat bit for bit.
    pub consensus_steps: Option<u64>,
    /// The landscape's generator steps, instead of the rest of `minutes`.
    pub landscape_steps: Option<u64>,
    /// Number of classes K (and of the landscape's components or anchors).
    pub classes: usize,
    /// Discrete conformations (the landscape a mixture of the classes) or a continuum (a path
    /// through them).
    pub landscape: Landscape,
    /// When the landscape (from the classes) stops.
    pub landscape_stop: LandscapeStop,
    /// A `multicryogan synth` folder: the result is reported against its truth.
    pub truth: Option<PathBuf>,
    /// The paper's pure pose-free path: Multi-CryoGAN alone, no classification.
    pub pose_free: bool,
    /// Seed of every stage.
    pub seed: u64,
    /// Where the tensors live.
    pub device: DeviceChoice,
    /// Continue the reconstruction in `out` at the stage it reached.
    pub resume: bool,
}

impl Default for ReconstructSettings {
    fn default() -> Self {
        Self {
            particles: PathBuf::new(),
            locate: Locate::default(),
            out: PathBuf::new(),
            minutes: 10.0,
            consensus_minutes: 3.0,
            consensus_steps: None,
            landscape_steps: None,
            classes: 2,
            landscape: Landscape::Discrete,
            landscape_stop: LandscapeStop::Likelihood,
            truth: None,
            pose_free: false,
            seed: 0,
            device: DeviceChoice::Auto,
            resume: false,
        }
    }
}

impl ReconstructSettings {
    /// Refuses settings out of their range, naming the CLI's flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.minutes.is_finite() && self.minutes > 0.0) {
            bail!("--minutes: found {}, expected a budget > 0", self.minutes);
        }
        if !(self.consensus_minutes.is_finite() && self.consensus_minutes > 0.0) {
            bail!(
                "--consensus-minutes: found {}, expected minutes > 0",
                self.consensus_minutes
            );
        }
        if self.classes < 1 {
            bail!("--classes: found {}, expected at least 1", self.classes);
        }
        for (flag, steps) in [
            ("--consensus-steps", self.consensus_steps),
            ("--landscape-steps", self.landscape_steps),
        ] {
            if steps == Some(0) {
                bail!("{flag}: found 0, expected at least 1 step");
            }
        }
        Ok(())
    }
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join(RECORD);
    let text = serde_json::to_string_pretty(record).expect("the record serialises") + "\n";
    mcg_fsio::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the reconstruction (see the module notes): progress goes to `monitor`, and `cancel`
/// (the caller's flag) stops it after the current stage's checkpoint.
pub fn reconstruct(
    s: &ReconstructSettings,
    monitor: &dyn Monitor,
    cancel: &AtomicBool,
) -> Result<Record> {
    s.validate()?;
    let mut record = if s.resume {
        let r = read_record(&s.out).context("--resume")?;
        if r.classes != s.classes || r.pose_free != s.pose_free || r.landscape != s.landscape {
            bail!(
                "{}: a reconstruction with {} classes, a {} landscape{}; these settings ask \
                 for {}, {}{}",
                s.out.join(RECORD).display(),
                r.classes,
                r.landscape,
                if r.pose_free { ", pose-free" } else { "" },
                s.classes,
                s.landscape,
                if s.pose_free { ", pose-free" } else { "" }
            );
        }
        r
    } else {
        if s.out.join(RECORD).exists() {
            bail!(
                "{} already holds a reconstruction: continue it with --resume, or give another \
                 --out",
                s.out.display()
            );
        }
        mcg_dataset::guard::refuse_writing_over_inputs(
            std::slice::from_ref(&s.particles),
            &s.out,
            [RECORD, CONSENSUS, CLASSIFY, LANDSCAPE, REPORT],
            "reconstruct output",
        )?;
        // The classification's own check, before the consensus spends its minutes.
        if !s.pose_free {
            let (set, _) = mcg_dataset::input::particles(&s.particles, &s.locate)?;
            mcg_classify::run::check_classes(s.classes, set.len(), &s.particles)?;
        }
        std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
        Record {
            software: concat!("multicryogan ", env!("CARGO_PKG_VERSION")).into(),
            particles: s.particles.display().to_string(),
            classes: s.classes,
            minutes: s.minutes,
            pose_free: s.pose_free,
            landscape: s.landscape,
            seed: s.seed,
            stages: Vec::new(),
            result: serde_json::Value::Null,
        }
    };
    write_record(&s.out, &record)?;
    let dev = device::select(s.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;

    if s.pose_free {
        if record.stage(LANDSCAPE).is_none_or(|st| !st.done) {
            let config = landscape_config(s, None);
            let budget = landscape_budget(s, &record);
            run_train_stage(
                s,
                &mut record,
                LANDSCAPE,
                config,
                budget,
                Vec::new(),
                serde_json::Value::Null,
                dev,
                monitor,
                cancel,
            )?;
        }
    } else {
        if record.stage(CONSENSUS).is_none_or(|st| !st.done) {
            consensus_stage(s, &mut record, dev, monitor, cancel)?;
        }
        if record.stage(CLASSIFY).is_none_or(|st| !st.done) {
            classify_stage(s, &mut record, monitor)?;
        }
        if record.stage(LANDSCAPE).is_none_or(|st| !st.done) {
            let model = mcg_classify::run::read_model(&s.out.join(CLASSIFY))?;
            let maps = model
                .maps
                .iter()
                .map(|m| {
                    let path = s.out.join(CLASSIFY).join(m);
                    mrc::read_volume(&path, None)
                        .with_context(|| format!("reading the class map {}", path.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            // Classes that emptied (no density: no particle chose them) take no part.
            let kept: Vec<usize> = (0..maps.len())
                .filter(|&k| has_contrast(&maps[k]))
                .collect();
            if kept.len() < 2 {
                bail!(
                    "{}: {} of the {} classes have density; the landscape needs two (fewer \
                     --classes, or more particles)",
                    s.out.join(CLASSIFY).display(),
                    kept.len(),
                    maps.len()
                );
            }
            let empty: Vec<usize> = (0..maps.len())
                .filter(|k| !kept.contains(k))
                .map(|k| k + 1)
                .collect();
            let maps: Vec<Volume> = kept.iter().map(|&k| maps[k].clone()).collect();
            let kept_pi: Vec<f64> = kept.iter().map(|&k| model.pi[k]).collect();
            let numbers: Vec<usize> = kept.iter().map(|k| k + 1).collect();
            let r_max = model
                .history
                .last()
                .map_or(model.box_size as f64 / 2.0 - 1.0, |h| h.r_max);
            // The particles that judge the landscape, and that place its components' frames.
            let scorer = Scorer::new(&classify_settings(s), r_max, SCORE_IMAGES)
                .context("the landscape's score")?;
            let (maps, frames) = common_frame(maps, &kept_pi, &numbers, Some(&scorer))?;
            // A continuum's classes in the order of their similarity: the path's anchors.
            let order: Vec<usize> = match s.landscape {
                Landscape::Discrete => (0..maps.len()).collect(),
                Landscape::Continuous => path_order(&maps)?,
            };
            let maps: Vec<Volume> = order.iter().map(|&k| maps[k].clone()).collect();
            let pi: Vec<f64> = order.iter().map(|&k| kept_pi[k]).collect();
            let pi = fixed_pi(&pi);
            let config = landscape_config(s, Some(pi.clone()));
            let classes_in_order: Vec<usize> = order.iter().map(|&k| kept[k] + 1).collect();
            landscape_stage(
                s,
                &mut record,
                config,
                LandscapeStart {
                    maps,
                    pi,
                    scorer,
                    outcome: serde_json::json!({
                        "class_frames": frames,
                        "classes_in_order": classes_in_order,
                        "empty_classes_left_out": empty,
                    }),
                },
                dev,
                monitor,
                cancel,
            )?;
        }
    }
    if let Some(truth) = &s.truth
        && record.stage(REPORT).is_none_or(|st| !st.done)
    {
        report_stage(s, truth, &mut record, monitor)?;
    }
    record.result = result(s, &record)?;
    write_record(&s.out, &record)?;
    Ok(record)
}

/// The class maps in one frame, that of the most probable class. Each class of a
/// classification has its own poses, so its map settles in its own frame: turned about a
/// pseudo-symmetry axis of the molecule (the Hsp90 dimer's, seed 2 of the demo's set:
/// 127–171°), or turned a few degrees by its conformational change (each class overlaps the
/// consensus it started from best: on the continuous Hsp90 set the classes at β ≈ 18° and 3°
/// differ by 7.3° against their true states). The landscape's components, and a path through
/// them, need one frame. So each other map is first aligned whole onto the reference class
/// (`mcg_eval::align`, rotation and shift, no change of hand) and moved when that turns it by
/// [`FRAME_TURN_DEG`] or more (a change of frame); a smaller whole-map turn is the compromise at
/// which two conformations overlap best, and is not applied. Then the map is aligned onto the
/// body the two share ([`body_alignment`]), which undoes the drift (7.9°, 6.2° and 3.2° found
/// on those classes, against 7.3°, 6.1° and 3.2° from the truth). `numbers` are the classes'
/// numbers in the classification, by which the record names them. Returns the maps and, per
/// class, both alignments.
///
/// A pseudo-symmetric molecule has two near-equal whole-map superpositions (the Hsp90 dimer's
/// about its pseudo-two-fold axis), and the maps alone cannot tell them apart. The particles
/// can: with `scorer`, each of its images' most probable rotations under the two maps give the
/// rotation between their frames ([`data_rotation`]), and the whole-map alignment searches only
/// within [`FRAME_NEAR_DEG`] of it.
pub fn common_frame(
    maps: Vec<Volume>,
    pi: &[f64],
    numbers: &[usize],
    scorer: Option<&Scorer>,
) -> Result<(Vec<Volume>, Vec<serde_json::Value>)> {
    anyhow::ensure!(
        maps.len() == pi.len() && maps.len() == numbers.len(),
        "{} maps, {} probabilities and {} class numbers: expected one of each per map",
        maps.len(),
        pi.len(),
        numbers.len()
    );
    let reference = pi
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(k, _)| k);
    let config = AlignConfig {
        allow_flip: false,
        ..AlignConfig::default()
    };
    let rotations = scorer
        .map(|sc| {
            sc.most_probable_rotations(&maps[reference])
                .with_context(|| format!("class {}'s poses", numbers[reference]))
        })
        .transpose()?;
    let mut out = Vec::with_capacity(maps.len());
    let mut frames = Vec::with_capacity(maps.len());
    for (k, map) in maps.iter().enumerate() {
        if k == reference {
            out.push(map.clone());
            frames.push(serde_json::json!({"class": numbers[k], "reference": true}));
            continue;
        }
        let what = || {
            format!(
                "aligning class {} onto class {}",
                numbers[k], numbers[reference]
            )
        };
        // The rotation between the frames that the particles' poses give, where they are known.
        let data = match (scorer, &rotations) {
            (Some(scorer), Some(reference_rotations)) => {
                let r = scorer
                    .most_probable_rotations(map)
                    .with_context(|| format!("class {}'s poses", numbers[k]))?;
                data_rotation(reference_rotations, &r)
            }
            _ => None,
        };
        let searched = AlignConfig {
            near: data.map(|(r, _)| (r, FRAME_NEAR_DEG)),
            ..config
        };
        let a = align(map, &maps[reference], &searched).with_context(what)?;
        let angle = turn_of(&a.transform.rotation);
        let moved = angle >= FRAME_TURN_DEG;
        let gross = if moved { a.aligned } else { map.clone() };
        // Then onto the reference's body: the half of the molecule that both share.
        let body = body_alignment(&gross, &maps[reference], &config).with_context(what)?;
        // A drift is a few degrees; a larger turn of the body is no drift, and is not applied.
        let drift = turn_of(&body.transform.rotation) < FRAME_TURN_DEG;
        tracing::info!(class = numbers[k], onto = numbers[reference], rotation_deg = angle, shift_voxels = ?a.transform.shift_voxels, moved, body_rotation_deg = turn_of(&body.transform.rotation), body_shift_voxels = ?body.transform.shift_voxels, "the class map into the common frame");
        frames.push(serde_json::json!({
            "class": numbers[k],
            "onto_class": numbers[reference],
            "data": data.map(|(r, support)| serde_json::json!({
                "rotation_deg": turn_of(&r),
                "support": support,
            })),
            "rotation_deg": angle,
            "shift_voxels": a.transform.shift_voxels,
            "correlation_before": a.score_before,
            "correlation": a.score,
            "moved": moved,
            "body": {
                "half": body.half,
                "rotation_deg": turn_of(&body.transform.rotation),
                "shift_voxels": body.transform.shift_voxels,
                "correlation_before": body.score_before,
                "correlation": body.score,
                "applied": drift,
            },
        }));
        out.push(if drift {
            body.transform.apply(&gross)
        } else {
            gross
        });
    }
    Ok((out, frames))
}

/// The rotation that brings a map into a reference's frame, as the particles give it:
/// `reference[i]` and `map[i]` are image `i`'s most probable rotations under the two maps. An
/// image that is the projection of the reference at `A` and of the map at `B` has `A = B·G`
/// where the map is the reference turned by `G`, so `Aᵀ·B = Gᵀ` turns the map back. Returns the
/// mode of the images' `Aᵀ·B` ([`mcg_eval::align::modal_rotation`] within
/// [`FRAME_MODE_DEG`]) and the share of images within that angle of it; `None` without images.
pub fn data_rotation(reference: &[Mat3], map: &[Mat3]) -> Option<(Mat3, f64)> {
    let relative: Vec<Mat3> = reference
        .iter()
        .zip(map)
        .map(|(a, b)| mat_mul(&transpose(a), b))
        .collect();
    let (r, count) = mcg_eval::align::modal_rotation(&relative, FRAME_MODE_DEG)?;
    Some((r, count as f64 / relative.len() as f64))
}

/// The order of a continuum's class maps along its path: the path through them with the
/// largest sum of AreaFSC between neighbours (`mcg_eval::landscape::best_path`).
pub fn path_order(maps: &[Volume]) -> Result<Vec<usize>> {
    let similarity = mcg_eval::fsc::fsccc(maps, &FscConfig::default())
        .context("the AreaFSC between the class maps")?;
    Ok(mcg_eval::landscape::best_path(&similarity))
}

/// The angle (degrees) by which a rotation turns a map.
fn turn_of(rotation: &Mat3) -> f64 {
    mcg_eval::align::angle_between(rotation, &Transform::identity().rotation)
}

/// How [`body_alignment`] brought a map onto a reference's body.
struct BodyAlignment {
    /// The half of the reference used (`"axis 1 +"`: the side of its second principal axis
    /// where the coordinate is positive).
    half: String,
    transform: Transform,
    /// The correlation of the two halves before and after.
    score_before: f64,
    score: f64,
}

/// `map` aligned onto the part of `reference` that the two share: two conformations differ in
/// a part of the molecule, and aligned whole they meet at a compromise that turns the part
/// they share (the true β = 18° and 3° Hsp90 maps, in one frame, align whole with a 13° turn).
/// Each half of the reference, cut by a soft plane through its centre of mass across each of
/// its three principal axes, is aligned on its own (the map masked by the same half); the half
/// that agrees best before its alignment is the shared body, and its transform is returned.
/// (Chosen after the alignment, a moving half can win by being moved onto the other
/// conformation: on the demo's seed 1, a half at 0.42 before and 0.92 after, by a 20° turn.)
fn body_alignment(map: &Volume, reference: &Volume, config: &AlignConfig) -> Result<BodyAlignment> {
    // The half that agrees best before its alignment (the first of equals), aligned alone.
    let mut best: Option<(f64, String, Volume, Volume)> = None;
    for (half, mask) in half_masks(reference) {
        let masked = |v: &Volume| Volume::new(v.data() * &mask, v.apix());
        let (m, r) = (masked(map)?, masked(reference)?);
        let before = correlation(&m, &r);
        if best.as_ref().is_none_or(|b| before > b.0) {
            best = Some((before, half, m, r));
        }
    }
    let (_, half, m, r) = best.context("a reference with no halves")?;
    let a = align(&m, &r, config)?;
    Ok(BodyAlignment {
        half,
        transform: a.transform,
        score_before: a.score_before,
        score: a.score,
    })
}

/// The six soft half-spaces of `v` (logistic, one voxel wide) cut by planes through its centre
/// of mass (of its positive density) across its principal axes, named.
fn half_masks(v: &Volume) -> Vec<(String, ndarray::Array3<f32>)> {
    let data = v.data();
    let n = data.shape()[0];
    let (mut mass, mut centre) = (0.0f64, [0.0f64; 3]);
    for ((z, y, x), &d) in data.indexed_iter() {
        let w = f64::from(d.max(0.0));
        mass += w;
        for (c, p) in centre.iter_mut().zip([x, y, z]) {
            *c += w * p as f64;
        }
    }
    let centre = centre.map(|c| c / mass.max(f64::MIN_POSITIVE));
    let mut inertia = [[0.0f64; 3]; 3];
    for ((z, y, x), &d) in data.indexed_iter() {
        let w = f64::from(d.max(0.0));
        let q = [
            x as f64 - centre[0],
            y as f64 - centre[1],
            z as f64 - centre[2],
        ];
        for i in 0..3 {
            for j in 0..3 {
                inertia[i][j] += w * q[i] * q[j];
            }
        }
    }
    let axes = principal_axes(inertia);
    let mut out = Vec::with_capacity(6);
    for (i, axis) in axes.iter().enumerate() {
        for sign in [1.0f64, -1.0] {
            let mask = ndarray::Array3::from_shape_fn((n, n, n), |(z, y, x)| {
                let q = [
                    x as f64 - centre[0],
                    y as f64 - centre[1],
                    z as f64 - centre[2],
                ];
                let d = sign * (q[0] * axis[0] + q[1] * axis[1] + q[2] * axis[2]);
                (1.0 / (1.0 + (-d).exp())) as f32
            });
            out.push((
                format!("axis {i} {}", if sign > 0.0 { "+" } else { "−" }),
                mask,
            ));
        }
    }
    out
}

/// The eigenvectors of a symmetric 3×3 matrix (one per row, unit length), by Jacobi rotations.
fn principal_axes(mut a: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..50 {
        let (mut p, mut q) = (0, 1);
        for (i, j) in [(0, 2), (1, 2)] {
            if a[i][j].abs() > a[p][q].abs() {
                (p, q) = (i, j);
            }
        }
        let scale = a.iter().flatten().map(|x| x.abs()).fold(0.0, f64::max);
        if a[p][q].abs() <= 1e-14 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        // The rotation in the (p, q) plane that zeroes a[p][q].
        let theta = 0.5 * (2.0 * a[p][q]).atan2(a[q][q] - a[p][p]);
        let (c, s) = (theta.cos(), theta.sin());
        for row in a.iter_mut() {
            let (x, y) = (row[p], row[q]);
            row[p] = c * x - s * y;
            row[q] = s * x + c * y;
        }
        for k in 0..3 {
            let (x, y) = (a[p][k], a[q][k]);
            a[p][k] = c * x - s * y;
            a[q][k] = s * x + c * y;
        }
        for row in v.iter_mut() {
            let (x, y) = (row[p], row[q]);
            row[p] = c * x - s * y;
            row[q] = s * x + c * y;
        }
    }
    // The columns of v are the eigenvectors.
    [0, 1, 2].map(|j| [v[0][j], v[1][j], v[2][j]])
}

/// [`common_frame`] moves a class map only when aligning it turns it by at least this many
/// degrees (a change of frame, not a compromise between conformations).
pub const FRAME_TURN_DEG: f64 = 30.0;

/// [`data_rotation`] takes the mode of the particles' rotations between two frames as the
/// rotation with the most of them within this many degrees.
pub const FRAME_MODE_DEG: f64 = 15.0;

/// With the particles' rotation between two frames ([`data_rotation`]), [`common_frame`]'s
/// whole-map alignment searches only within this many degrees of it.
pub const FRAME_NEAR_DEG: f64 = 30.0;

/// The landscape's minutes: what the stages before it left of the budget, less
/// [`REPORT_MINUTES`] for the reports when there is a truth, at least
/// [`MIN_LANDSCAPE_MINUTES`].
fn landscape_budget(s: &ReconstructSettings, record: &Record) -> Budget {
    if let Some(steps) = s.landscape_steps {
        return Budget::Steps(steps);
    }
    Budget::Minutes(
        (s.minutes - record.seconds_so_far() / 60.0 - report_reserve(s)).max(MIN_LANDSCAPE_MINUTES),
    )
}

/// The minutes kept for the reports: [`REPORT_MINUTES`] when there is a truth.
fn report_reserve(s: &ReconstructSettings) -> f64 {
    if s.truth.is_some() {
        REPORT_MINUTES
    } else {
        0.0
    }
}

/// The classification's minutes, when the budget is in minutes: what the consensus left,
/// less the landscape's [`MIN_LANDSCAPE_MINUTES`] and the reports' reserve (at least one
/// iteration runs). With a budget in steps, none: it runs to its convergence, and the run is
/// the same on any machine.
fn classify_minutes(s: &ReconstructSettings, record: &Record) -> Option<f64> {
    if s.consensus_steps.is_some() || s.landscape_steps.is_some() {
        return None;
    }
    let left =
        s.minutes - record.seconds_so_far() / 60.0 - MIN_LANDSCAPE_MINUTES - report_reserve(s);
    Some(left.max(0.01))
}

/// π as the landscape holds it: positive, summing to 1.
fn fixed_pi(pi: &[f64]) -> Vec<f64> {
    let clamped: Vec<f64> = pi.iter().map(|p| p.max(1e-3)).collect();
    let sum: f64 = clamped.iter().sum();
    clamped.iter().map(|p| p / sum).collect()
}

/// The consensus's settings: CryoGAN's single volume, our defaults otherwise.
fn consensus_config(s: &ReconstructSettings) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.mode = Mode::Single;
    c.seed = s.seed;
    c
}

/// The landscape's settings: from the class maps (`fixed` their π, in the maps' order), at
/// full resolution with no warm start and no blur, the mixture of K components (discrete) or
/// the path through K anchors (continuous); pose-free (`fixed` None), the defaults' mixture
/// (discrete) or voxel generator (continuous).
fn landscape_config(s: &ReconstructSettings, fixed: Option<Vec<f64>>) -> TrainConfig {
    let mut c = match (fixed, s.landscape) {
        (Some(pi), Landscape::Discrete) => TrainConfig::mixture_held(pi),
        (Some(pi), Landscape::Continuous) => TrainConfig::path_held(pi),
        (None, Landscape::Discrete) => TrainConfig::mixture(s.classes.max(2)),
        (None, Landscape::Continuous) => {
            let mut c = TrainConfig::default();
            c.model.generator = mcg_train::models::GeneratorKind::Voxel;
            c
        }
    };
    c.seed = s.seed;
    c
}

/// The data of a training stage, its settings fitted to them.
fn prepare_stage(
    s: &ReconstructSettings,
    config: &mut TrainConfig,
    resume: bool,
    dev: Device,
    monitor: &dyn Monitor,
) -> Result<RunData> {
    let settings = RunDataSettings {
        prepare: PrepareSettings {
            particles: s.particles.clone(),
            locate: s.locate.clone(),
            ..PrepareSettings::default()
        },
        normalization: None,
        shift_sigma: None,
        no_shifts: false,
        resume,
        fixed_box: resume,
    };
    prepare_run(config, &settings, dev, monitor, &|_| Ok(()))
}

/// Trains `config` into stage `name`'s folder for `budget` (continuing its checkpoint when
/// there is one), from the maps `init` on a fresh start, and records the stage as done with
/// `outcome`'s fields added.
#[allow(clippy::too_many_arguments)]
fn run_train_stage(
    s: &ReconstructSettings,
    record: &mut Record,
    name: &str,
    mut config: TrainConfig,
    budget: Budget,
    init: Vec<Volume>,
    outcome: serde_json::Value,
    dev: Device,
    monitor: &dyn Monitor,
    cancel: &AtomicBool,
) -> Result<()> {
    let out = s.out.join(name);
    let resume = out.join("checkpoint.safetensors").is_file();
    if resume {
        config = mcg_train::run::resumed_settings(&out)?;
    }
    let before = record.stage(name).map_or(0.0, |st| st.seconds);
    let start = Instant::now();
    tracing::info!(stage = name, ?budget, resume, "stage");
    let data = prepare_stage(s, &mut config, resume, dev, monitor)?;
    let summary = train_for(
        &config, &data, &out, budget, resume, init, dev, name, monitor, cancel,
    )?;
    let done = !summary.interrupted;
    record.put(Stage::new(
        name,
        done,
        before + start.elapsed().as_secs_f64(),
        {
            let mut o = serde_json::json!({"steps": summary.step});
            if let (Some(o), Some(extra)) = (o.as_object_mut(), outcome.as_object()) {
                o.extend(extra.clone());
            }
            o
        },
    ));
    write_record(&s.out, record)?;
    if !done {
        bail!("interrupted in stage {name}: continue with --resume");
    }
    Ok(())
}

/// One invocation of the trainer into `out`, with a progress bar over its seconds or steps.
#[allow(clippy::too_many_arguments)]
fn train_for(
    config: &TrainConfig,
    data: &RunData,
    out: &Path,
    budget: Budget,
    resume: bool,
    init: Vec<Volume>,
    dev: Device,
    what: &str,
    monitor: &dyn Monitor,
    cancel: &AtomicBool,
) -> Result<RunSummary> {
    let (steps, minutes) = match budget {
        Budget::Minutes(m) => (None, Some(m)),
        Budget::Steps(n) => (Some(n), None),
    };
    let opts = RunOptions {
        init_volumes: if resume { Vec::new() } else { init },
        out: out.to_path_buf(),
        steps,
        minutes,
        resume,
        force: false,
        device: dev,
    };
    let total = match budget {
        Budget::Minutes(m) => (m * 60.0).ceil() as u64,
        Budget::Steps(n) => n,
    };
    let bar = monitor.bar(total, what);
    let start = Instant::now();
    let summary = mcg_train::run::run(
        config.clone(),
        data,
        &opts,
        &mut |step: u64, _: Option<u64>, _: &mcg_train::train::StepMetrics| {
            let position = match budget {
                Budget::Minutes(_) => start.elapsed().as_secs(),
                Budget::Steps(_) => step,
            };
            bar.set_position(position.min(total));
        },
        cancel,
    )
    .with_context(|| format!("training into {}", out.display()))?;
    bar.finish();
    Ok(summary)
}

/// Whether a consensus has settled, from the AreaFSC of each chunk's map against the one
/// before: once the latest does not rise above the best before it. (The GAN's map has no
/// noise, so its FSC against the previous chunk stays above 0.5 to Nyquist within a minute;
/// the area keeps rising while the map still changes.)
pub fn consensus_settled(areas: &[f64]) -> bool {
    match areas.split_last() {
        Some((last, before)) if !before.is_empty() => {
            *last <= before.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        }
        _ => false,
    }
}

/// The consensus (stage 1): chunks of CryoGAN until its FSC against the previous chunk stops
/// rising or its minutes are spent.
fn consensus_stage(
    s: &ReconstructSettings,
    record: &mut Record,
    dev: Device,
    monitor: &dyn Monitor,
    cancel: &AtomicBool,
) -> Result<()> {
    let out = s.out.join(CONSENSUS);
    let mut resume = out.join("checkpoint.safetensors").is_file();
    let mut config = if resume {
        mcg_train::run::resumed_settings(&out)?
    } else {
        consensus_config(s)
    };
    let previous = record.stage(CONSENSUS).cloned();
    let before = previous.as_ref().map_or(0.0, |st| st.seconds);
    let mut areas: Vec<f64> = previous
        .as_ref()
        .and_then(|st| serde_json::from_value(st.outcome["area_fsc_to_previous"].clone()).ok())
        .unwrap_or_default();
    let start = Instant::now();
    tracing::info!(
        stage = CONSENSUS,
        minutes = s.consensus_minutes,
        resume,
        "stage"
    );
    let data = prepare_stage(s, &mut config, resume, dev, monitor)?;
    let volume_path = out.join("volumes").join("alpha_0.50.mrc");
    let mut last = if resume {
        mrc::read_volume(&volume_path, None).ok()
    } else {
        None
    };
    let mut steps = previous
        .as_ref()
        .and_then(|st| st.outcome["steps"].as_u64())
        .unwrap_or(0);
    let reason = loop {
        let chunk = match s.consensus_steps {
            Some(most) => {
                if steps >= most {
                    break "its steps were spent";
                }
                Budget::Steps((steps + CONSENSUS_CHUNK_STEPS).min(most))
            }
            None => {
                let spent = before + start.elapsed().as_secs_f64();
                let left = s.consensus_minutes - spent / 60.0;
                if left <= 0.0 {
                    break "its minutes were spent";
                }
                Budget::Minutes(CONSENSUS_CHUNK_MINUTES.min(left))
            }
        };
        let summary = train_for(
            &config,
            &data,
            &out,
            chunk,
            resume,
            Vec::new(),
            dev,
            CONSENSUS,
            monitor,
            cancel,
        )?;
        steps = summary.step;
        resume = true;
        let interrupted = summary.interrupted;
        let volume = mrc::read_volume(&volume_path, None)
            .with_context(|| format!("reading the consensus {}", volume_path.display()))?;
        if let Some(prev) = &last {
            let area = fsc(prev, &volume, &FscConfig::default())?.area();
            tracing::info!(step = steps, area_fsc_to_previous = area, "consensus chunk");
            areas.push(area);
        }
        last = Some(volume);
        record.put(Stage::new(
            CONSENSUS,
            false,
            before + start.elapsed().as_secs_f64(),
            serde_json::json!({"steps": steps, "area_fsc_to_previous": areas}),
        ));
        write_record(&s.out, record)?;
        if interrupted {
            bail!("interrupted in stage {CONSENSUS}: continue with --resume");
        }
        if consensus_settled(&areas) {
            break "its AreaFSC against the previous chunk stopped rising";
        }
    };
    tracing::info!(steps, reason, "consensus done");
    record.put(Stage::new(
        CONSENSUS,
        true,
        before + start.elapsed().as_secs_f64(),
        serde_json::json!({"steps": steps, "area_fsc_to_previous": areas, "stopped": reason}),
    ));
    write_record(&s.out, record)
}

/// The landscape's start: the class maps in one frame and in the landscape's order, their π,
/// the classification's final frequency limit (pixels) and what the stage records of them.
struct LandscapeStart {
    maps: Vec<Volume>,
    pi: Vec<f64>,
    /// The particles that score it (at the classification's final frequency limit).
    scorer: Scorer,
    outcome: serde_json::Value,
}

/// The latent positions at which a landscape is scored, with their weights: a mixture's
/// components (the centres of π's cells) weighted by π; a path at the centres of 2K equal
/// cells of the segment, weighted equally (the continuum as its latent distribution samples
/// it).
pub fn scored_positions(landscape: Landscape, pi: &[f64]) -> (Vec<f64>, Vec<f64>) {
    match landscape {
        Landscape::Discrete => {
            let mut below = 0.0;
            let alphas = pi
                .iter()
                .map(|p| {
                    let centre = below + p / 2.0;
                    below += p;
                    centre
                })
                .collect();
            (alphas, pi.to_vec())
        }
        Landscape::Continuous => {
            let m = 2 * pi.len();
            (
                mcg_eval::landscape::cell_midpoints(m),
                vec![1.0 / m as f64; m],
            )
        }
    }
}

/// The landscape's score: the mean log-likelihood per image of its maps at `alphas` (weights
/// `weights`) over the scorer's particles, read from the run's checkpoint.
fn landscape_score(
    out: &Path,
    scorer: &Scorer,
    alphas: &[f64],
    weights: &[f64],
    dev: Device,
) -> Result<f64> {
    let run = mcg_train::run::load_run(out, dev)?;
    let maps = alphas
        .iter()
        .map(|&a| mcg_train::run::volume_at(&run.trainer, a as f32, run.apix as f32))
        .collect::<Result<Vec<_>, _>>()?;
    scorer
        .score(&maps, weights)
        .with_context(|| format!("scoring the landscape of {}", out.display()))
}

/// The landscape (stage 3), from the class maps: Multi-CryoGAN in chunks of
/// [`LANDSCAPE_CHUNK_MINUTES`] (or [`LANDSCAPE_CHUNK_STEPS`]) and at most a quarter of its
/// budget, the first of one step. After
/// each chunk the landscape is scored by the likelihood of [`SCORE_IMAGES`] particles with
/// their poses marginalised (`mcg_classify::score`, at the classification's final frequency
/// limit), and the checkpoint of the best score is kept. With [`LandscapeStop::Likelihood`] the
/// stage stops once [`LANDSCAPE_PATIENCE`] chunks in a row have not raised the best score by
/// [`LANDSCAPE_GAIN`] nats per image; either way the run folder ends at its best checkpoint.
fn landscape_stage(
    s: &ReconstructSettings,
    record: &mut Record,
    config: TrainConfig,
    start: LandscapeStart,
    dev: Device,
    monitor: &dyn Monitor,
    cancel: &AtomicBool,
) -> Result<()> {
    let out = s.out.join(LANDSCAPE);
    let best_path = out.join(BEST_CHECKPOINT);
    let mut resume = out.join("checkpoint.safetensors").is_file();
    let mut config = config;
    if resume {
        config = mcg_train::run::resumed_settings(&out)?;
    }
    let previous = record.stage(LANDSCAPE).cloned();
    let before = previous.as_ref().map_or(0.0, |st| st.seconds);
    let mut scores: Vec<(u64, f64)> = previous
        .as_ref()
        .and_then(|st| serde_json::from_value(st.outcome["scores"].clone()).ok())
        .unwrap_or_default();
    let mut steps = previous
        .as_ref()
        .and_then(|st| st.outcome["steps"].as_u64())
        .unwrap_or(0);
    let budget = landscape_budget(s, record);
    let began = Instant::now();
    tracing::info!(stage = LANDSCAPE, ?budget, resume, stop = %s.landscape_stop, "stage");
    let data = prepare_stage(s, &mut config, resume, dev, monitor)?;
    let scorer = &start.scorer;
    let (alphas, weights) = scored_positions(s.landscape, &start.pi);
    let best = |scores: &[(u64, f64)]| {
        scores
            .iter()
            .cloned()
            .fold(None, |b: Option<(u64, f64)>, (st, ll)| match b {
                Some((_, top)) if ll <= top + LANDSCAPE_GAIN => b,
                _ => Some((st, ll)),
            })
    };
    let misses = |scores: &[(u64, f64)]| {
        let kept = best(scores).map_or(0, |b| b.0);
        scores.iter().filter(|(st, _)| *st > kept).count()
    };
    let outcome = |steps: u64, scores: &[(u64, f64)], extra: serde_json::Value| {
        let mut o = start.outcome.clone();
        if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
            o.insert("steps".into(), serde_json::json!(steps));
            o.insert("scores".into(), serde_json::json!(scores));
            o.insert("score_images".into(), serde_json::json!(scorer.images()));
            o.insert(
                "stop".into(),
                serde_json::json!(s.landscape_stop.to_string()),
            );
            o.extend(extra.clone());
        }
        o
    };
    let reason = loop {
        if s.landscape_stop == LandscapeStop::Likelihood && misses(&scores) >= LANDSCAPE_PATIENCE {
            break "the likelihood stopped rising";
        }
        let chunk = if !resume {
            Budget::Steps(1)
        } else {
            match budget {
                Budget::Steps(total) => {
                    if steps >= total {
                        break "its steps were spent";
                    }
                    let chunk = LANDSCAPE_CHUNK_STEPS.min(total.div_ceil(4));
                    Budget::Steps((steps + chunk).min(total))
                }
                Budget::Minutes(m) => {
                    let left = m - began.elapsed().as_secs_f64() / 60.0;
                    if left <= 0.0 {
                        break "its minutes were spent";
                    }
                    Budget::Minutes(LANDSCAPE_CHUNK_MINUTES.min(m / 4.0).min(left))
                }
            }
        };
        let init = if resume {
            Vec::new()
        } else {
            start.maps.clone()
        };
        let summary = train_for(
            &config, &data, &out, chunk, resume, init, dev, LANDSCAPE, monitor, cancel,
        )?;
        resume = true;
        steps = summary.step;
        if !summary.interrupted {
            let ll = landscape_score(&out, scorer, &alphas, &weights, dev)?;
            tracing::info!(step = steps, log_likelihood = ll, "landscape scored");
            scores.push((steps, ll));
            if best(&scores).map(|b| b.0) == Some(steps) {
                let bytes = std::fs::read(out.join("checkpoint.safetensors"))
                    .with_context(|| format!("reading the checkpoint in {}", out.display()))?;
                mcg_fsio::write_atomic(&best_path, &bytes)
                    .with_context(|| format!("writing {}", best_path.display()))?;
            }
        }
        record.put(Stage::new(
            LANDSCAPE,
            false,
            before + began.elapsed().as_secs_f64(),
            outcome(steps, &scores, serde_json::json!({})),
        ));
        write_record(&s.out, record)?;
        if summary.interrupted {
            bail!("interrupted in stage {LANDSCAPE}: continue with --resume");
        }
    };
    // The run folder ends at its best checkpoint.
    let kept = best(&scores).map(|b| b.0);
    if let Some(kept) = kept
        && kept != steps
    {
        let bytes = std::fs::read(&best_path)
            .with_context(|| format!("reading {}", best_path.display()))?;
        mcg_fsio::write_atomic(&out.join("checkpoint.safetensors"), &bytes)
            .with_context(|| format!("restoring the best checkpoint in {}", out.display()))?;
        mcg_train::run::rewrite_outputs(&out, &data, dev)
            .with_context(|| format!("restoring the best checkpoint in {}", out.display()))?;
    }
    tracing::info!(steps, ?kept, reason, "landscape done");
    record.put(Stage::new(
        LANDSCAPE,
        true,
        before + began.elapsed().as_secs_f64(),
        outcome(
            steps,
            &scores,
            serde_json::json!({"kept_step": kept, "stopped": reason}),
        ),
    ));
    write_record(&s.out, record)
}

/// The classification's settings in a reconstruction: the defaults, on its particles.
fn classify_settings(s: &ReconstructSettings) -> ClassifySettings {
    ClassifySettings {
        particles: s.particles.clone(),
        locate: s.locate.clone(),
        classes: s.classes,
        seed: s.seed,
        device: s.device,
        ..ClassifySettings::default()
    }
}

/// The classification (stage 2), from the consensus.
fn classify_stage(
    s: &ReconstructSettings,
    record: &mut Record,
    monitor: &dyn Monitor,
) -> Result<()> {
    let out = s.out.join(CLASSIFY);
    let before = record.stage(CLASSIFY).map_or(0.0, |st| st.seconds);
    let settings = ClassifySettings {
        reference: s.out.join(CONSENSUS).join("volumes").join("alpha_0.50.mrc"),
        out: out.clone(),
        resume: out
            .join(mcg_classify::run::CHECKPOINT)
            .join("state.json")
            .is_file(),
        minutes: classify_minutes(s, record),
        ..classify_settings(s)
    };
    let start = Instant::now();
    tracing::info!(stage = CLASSIFY, resume = settings.resume, "stage");
    let result = classify(&settings, monitor);
    let seconds = before + start.elapsed().as_secs_f64();
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            record.put(Stage::new(
                CLASSIFY,
                false,
                seconds,
                serde_json::Value::Null,
            ));
            write_record(&s.out, record)?;
            return Err(e.context("stage classify (continue with --resume)"));
        }
    };
    let m = &summary.model;
    record.put(Stage::new(
        CLASSIFY,
        true,
        seconds,
        serde_json::json!({
            "iterations": m.history.len().saturating_sub(1),
            "converged_at": m.converged_at,
            "out_of_time_at": m.out_of_time_at,
            "pi": m.pi,
            "half_set_resolution_nyquist": m.history.last().map(|h| h.resolution_nyquist.clone()),
        }),
    ));
    write_record(&s.out, record)
}

/// The reports (with a truth): the landscape's in `report/`, the classification's in
/// `classify/report/`.
fn report_stage(
    s: &ReconstructSettings,
    truth: &Path,
    record: &mut Record,
    monitor: &dyn Monitor,
) -> Result<()> {
    let start = Instant::now();
    let mut runs = vec![(s.out.join(LANDSCAPE), s.out.join(REPORT))];
    if !s.pose_free {
        runs.push((s.out.join(CLASSIFY), s.out.join(CLASSIFY).join(REPORT)));
    }
    for (run, out) in runs {
        let settings = mcg_report::ReportSettings {
            truth: Some(truth.to_path_buf()),
            device: s.device,
            ..mcg_report::ReportSettings::new(run, out)
        };
        mcg_report::report(&settings, monitor)?;
    }
    record.put(Stage::new(
        REPORT,
        true,
        start.elapsed().as_secs_f64(),
        serde_json::Value::Null,
    ));
    write_record(&s.out, record)
}

/// The result: the final maps, π, and with a truth the reports' resolutions.
fn result(s: &ReconstructSettings, record: &Record) -> Result<serde_json::Value> {
    let maps = ["alpha_0.00.mrc", "alpha_1.00.mrc"]
        .map(|m| format!("{LANDSCAPE}/volumes/{m}"))
        .to_vec();
    let pi = record
        .stage(CLASSIFY)
        .map(|st| st.outcome["pi"].clone())
        .unwrap_or(serde_json::Value::Null);
    let mut out = serde_json::json!({"landscape_maps": maps, "pi": pi});
    if !s.pose_free {
        let model = mcg_classify::run::read_model(&s.out.join(CLASSIFY))?;
        out["class_maps"] = serde_json::json!(
            model
                .maps
                .iter()
                .map(|m| format!("{CLASSIFY}/{m}"))
                .collect::<Vec<_>>()
        );
    }
    if s.truth.is_some() {
        for (key, dir) in [
            ("landscape_report", s.out.join(REPORT)),
            ("classify_report", s.out.join(CLASSIFY).join(REPORT)),
        ] {
            let path = dir.join("metrics.json");
            if let Ok(text) = std::fs::read_to_string(&path) {
                let m: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a report's metrics.json", path.display()))?;
                out[key] = serde_json::json!({
                    "fsc_ends": m.get("fsc_ends"),
                    "probabilities": m.get("probabilities"),
                    "classification": m.get("classification"),
                });
            }
        }
    }
    Ok(out)
}

/// The reconstruction at a glance (what the CLI prints): each stage with its time, the maps,
/// π, and with a truth the reports' scores.
pub fn summary_text(dir: &Path, record: &Record) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(t, "reconstruction: {}", dir.display());
    for st in &record.stages {
        let detail = match st.name.as_str() {
            LANDSCAPE if !st.outcome["kept_step"].is_null() => format!(
                "{} G steps, kept step {} (best likelihood; {})",
                st.outcome["steps"],
                st.outcome["kept_step"],
                st.outcome["stopped"].as_str().unwrap_or("")
            ),
            CONSENSUS | LANDSCAPE => format!("{} G steps", st.outcome["steps"]),
            CLASSIFY => format!(
                "{} EM iterations{}",
                st.outcome["iterations"],
                if !st.outcome["converged_at"].is_null() {
                    ", converged"
                } else if !st.outcome["out_of_time_at"].is_null() {
                    ", stopped for time (not converged)"
                } else {
                    ", not converged"
                }
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "  {:<10} {:>6.0} s  {:<19} {detail}",
            st.name, st.seconds, st.poses
        );
    }
    let read = |p: PathBuf| -> Option<mcg_runfiles::Metrics> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let nyquist = |c: &mcg_runfiles::metrics::ResolutionRecord| {
        c.resolution_nyquist_fraction
            .half
            .map_or("Nyquist and beyond (never below 0.5)".to_string(), |f| {
                format!("{f:.2} of Nyquist")
            })
    };
    if let Ok(model) = mcg_classify::run::read_model(&dir.join(CLASSIFY)) {
        let _ = writeln!(t, "classes (poses marginalised):");
        for (k, map) in model.maps.iter().enumerate() {
            let _ = writeln!(
                t,
                "  {}  π {:.1} %",
                dir.join(CLASSIFY).join(map).display(),
                100.0 * model.pi[k]
            );
        }
        if let Some(m) = read(dir.join(CLASSIFY).join(REPORT).join("metrics.json"))
            && let Some(c) = &m.classification
        {
            for cl in &c.per_class {
                let truth = c
                    .proportions
                    .iter()
                    .find(|p| p.class == Some(cl.class))
                    .and_then(|p| p.true_fraction)
                    .map_or(String::new(), |f| format!(" (true {:.1} %)", 100.0 * f));
                let _ = writeln!(
                    t,
                    "    class {} = {}: π {:.1} %{truth}, FSC 0.5 against it at {}",
                    cl.class,
                    cl.state.as_deref().unwrap_or("unmatched"),
                    100.0 * cl.pi,
                    cl.fsc.as_ref().map_or("—".into(), nyquist)
                );
            }
            if let Some(a) = c.accuracy {
                let _ = writeln!(
                    t,
                    "    particles in their true state's class: {:.1} %",
                    100.0 * a
                );
            }
        }
    }
    let landscape = dir.join(LANDSCAPE).join("volumes");
    if landscape.is_dir() {
        let _ = writeln!(
            t,
            "landscape (Multi-CryoGAN): {} … {}",
            landscape.join("alpha_0.00.mrc").display(),
            landscape.join("alpha_1.00.mrc").display()
        );
        if let Some(m) = read(dir.join(REPORT).join("metrics.json")) {
            if let Some(e) = &m.fsc_ends {
                for (name, end) in [("α = 0", &e.alpha_0), ("α = 1", &e.alpha_1)] {
                    let _ = writeln!(
                        t,
                        "    {name} against {}: FSC 0.5 at {}",
                        end.truth,
                        nyquist(&end.fsc)
                    );
                }
            }
            if let Some(p) = &m.probabilities {
                let _ = writeln!(
                    t,
                    "    probabilities {} {:.0} % / {} {:.0} %",
                    p.alpha_0_state,
                    100.0 * p.alpha_0_fraction,
                    p.alpha_1_state,
                    100.0 * p.alpha_1_fraction
                );
            }
            let _ = writeln!(
                t,
                "  report: {}",
                dir.join(REPORT).join("report.html").display()
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consensus_settles_once_its_area_fsc_stops_rising() {
        assert!(!consensus_settled(&[]));
        assert!(!consensus_settled(&[0.9]));
        assert!(!consensus_settled(&[0.1426, 0.9447, 0.9636]));
        // consT1's chunks (docs/results.md): it settles at the fourth comparison.
        assert!(consensus_settled(&[0.1426, 0.9447, 0.9636, 0.9625]));
        assert!(consensus_settled(&[0.5, 0.5]));
        // Rising again after a dip is judged against the best before.
        assert!(!consensus_settled(&[0.6, 0.8, 0.7, 0.85]));
    }

    #[test]
    fn the_landscape_holds_pi_positive_and_summing_to_one() {
        let pi = fixed_pi(&[0.0, 0.25, 0.75]);
        assert!((pi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(pi.iter().all(|&p| p > 0.0));
        assert!((pi[2] / pi[1] - 3.0).abs() < 1e-12);
        let c = landscape_config(
            &ReconstructSettings {
                classes: 3,
                ..ReconstructSettings::default()
            },
            Some(pi.clone()),
        );
        assert_eq!(c.fixed_pi, Some(pi.clone()));
        assert_eq!(c.model.components, 3);
        assert_eq!(c.model.component_coarsening, 1);
        assert_eq!((c.warm_steps, c.blur_start_px), (0, 0.0));
        // Three components: the batch grows from 32 to 48, a multiple of 3, 4 and 8.
        assert_eq!(c.batch_size, 48);
        c.validate().unwrap();
        // The pose-free path is the default recipe.
        let paper = landscape_config(&ReconstructSettings::default(), None);
        assert_eq!(paper.fixed_pi, None);
        assert_eq!(paper.warm_steps, TrainConfig::default().warm_steps);
        assert_eq!(paper.batch_size, TrainConfig::default().batch_size);
        // A continuum: the path through the classes with the same π, or pose-free the voxel
        // generator.
        let continuous = ReconstructSettings {
            classes: 3,
            landscape: Landscape::Continuous,
            ..ReconstructSettings::default()
        };
        let path = landscape_config(&continuous, Some(pi.clone()));
        assert_eq!(
            path.model.architecture(),
            mcg_train::models::Architecture::Path
        );
        assert_eq!((&path.fixed_pi, path.model.components), (&Some(pi), 3));
        path.validate().unwrap();
        let voxel = landscape_config(&continuous, None);
        assert_eq!(
            voxel.model.architecture(),
            mcg_train::models::Architecture::Voxel
        );
    }

    #[test]
    fn a_stage_record_replaces_its_own_name_only() {
        let stage =
            |name: &str, seconds: f64| Stage::new(name, false, seconds, serde_json::Value::Null);
        let mut r = Record {
            software: String::new(),
            particles: String::new(),
            classes: 2,
            minutes: 10.0,
            pose_free: false,
            landscape: Landscape::Discrete,
            seed: 0,
            stages: vec![stage(CONSENSUS, 30.0)],
            result: serde_json::Value::Null,
        };
        r.put(stage(CLASSIFY, 60.0));
        r.put(stage(CONSENSUS, 45.0));
        assert_eq!(r.stages.len(), 2);
        assert_eq!(r.stage(CONSENSUS).unwrap().seconds, 45.0);
        assert_eq!(r.seconds_so_far(), 105.0);
        let text = summary_text(Path::new("rec"), &r);
        assert!(
            text.contains("consensus") && text.contains("classify"),
            "{text}"
        );
    }

    #[test]
    fn the_classification_gets_what_the_consensus_left_of_a_budget_in_minutes() {
        let record = Record {
            software: String::new(),
            particles: String::new(),
            classes: 2,
            minutes: 30.0,
            pose_free: false,
            landscape: Landscape::Discrete,
            seed: 0,
            stages: vec![Stage::new(CONSENSUS, true, 180.0, serde_json::Value::Null)],
            result: serde_json::Value::Null,
        };
        let s = ReconstructSettings {
            minutes: 30.0,
            truth: Some(PathBuf::from("truth")),
            ..ReconstructSettings::default()
        };
        // 30 − 3 (consensus) − 0.5 (the landscape's least) − 1 (the reports).
        let m = classify_minutes(&s, &record).unwrap();
        assert!((m - 25.5).abs() < 1e-9, "{m}");
        let no_truth = ReconstructSettings {
            truth: None,
            ..s.clone()
        };
        assert!((classify_minutes(&no_truth, &record).unwrap() - 26.5).abs() < 1e-9);
        // A spent budget still lets one iteration run; a budget in steps sets no limit.
        let spent = ReconstructSettings {
            minutes: 2.0,
            ..s.clone()
        };
        assert_eq!(classify_minutes(&spent, &record), Some(0.01));
        for steps in [
            ReconstructSettings {
                consensus_steps: Some(100),
                ..s.clone()
            },
            ReconstructSettings {
                landscape_steps: Some(100),
                ..s.clone()
            },
        ] {
            assert_eq!(classify_minutes(&steps, &record), None);
        }
    }

    #[test]
    fn settings_out_of_range_name_their_flag() {
        for (s, flag) in [
            (
                ReconstructSettings {
                    minutes: 0.0,
                    ..Default::default()
                },
                "--minutes",
            ),
            (
                ReconstructSettings {
                    minutes: f64::NAN,
                    ..Default::default()
                },
                "--minutes",
            ),
            (
                ReconstructSettings {
                    consensus_minutes: -1.0,
                    ..Default::default()
                },
                "--consensus-minutes",
            ),
            (
                ReconstructSettings {
                    classes: 0,
                    ..Default::default()
                },
                "--classes",
            ),
        ] {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        ReconstructSettings::default().validate().unwrap();
    }

    #[test]
    fn the_class_maps_are_moved_into_the_most_probable_class_frame() {
        use mcg_physics::Blob;
        let blob = |centre: [f64; 3], sigma: f64, amplitude: f64| Blob {
            centre,
            sigma,
            amplitude,
        };
        // An asymmetric molecule, and the same turned 90° about z and shifted by a voxel.
        let map = Volume::gaussian_blobs(
            24,
            5.0,
            &[
                blob([0.0, 0.0, 0.0], 2.5, 1.0),
                blob([5.0, 0.0, 0.0], 1.8, 0.8),
                blob([0.0, 3.5, 2.0], 1.5, 0.6),
            ],
        )
        .unwrap();
        let turn = Transform {
            rotation: [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            flipped: false,
            shift_voxels: [1.0, 0.0, 0.0],
        };
        let turned = turn.apply(&map);
        let (maps, frames) =
            common_frame(vec![turned, map.clone()], &[0.3, 0.7], &[1, 2], None).unwrap();
        // Class 2 (π 0.7) is the reference, unchanged; class 1 is brought onto it.
        assert_eq!(maps[1].data(), map.data());
        assert_eq!(frames[1]["reference"], true);
        assert_eq!(frames[0]["onto_class"], 2);
        let angle = frames[0]["rotation_deg"].as_f64().unwrap();
        assert!((angle - 90.0).abs() < 3.0, "{angle}");
        let r = mcg_eval::align::correlation(&maps[0], &map);
        assert!(r > 0.98, "correlation after {r}");
        assert!(frames[0]["correlation_before"].as_f64().unwrap() < 0.9);
        assert_eq!(frames[0]["moved"], true);
        // Another conformation in the same frame (one domain moved by 1.5 voxels): whatever
        // small turn and shift overlap the two best, the map is kept as it is.
        let other = Volume::gaussian_blobs(
            24,
            5.0,
            &[
                blob([0.0, 0.0, 0.0], 2.5, 1.0),
                blob([5.0, 1.5, 0.0], 1.8, 0.8),
                blob([0.0, 3.5, 2.0], 1.5, 0.6),
            ],
        )
        .unwrap();
        let (_, frames) = common_frame(vec![other, map], &[0.3, 0.7], &[1, 2], None).unwrap();
        assert_eq!(frames[0]["moved"], false, "{frames:?}");
        assert!(frames[0]["rotation_deg"].as_f64().unwrap() < FRAME_TURN_DEG);
    }

    #[test]
    fn principal_axes_are_the_eigenvectors() {
        // R·diag(5, 2, 1)·Rᵀ for R a turn of 30° about z then 20° about x.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let (c2, s2) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
        let rz = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let rx = [[1.0, 0.0, 0.0], [0.0, c2, -s2], [0.0, s2, c2]];
        let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut m = [[0.0; 3]; 3];
            for i in 0..3 {
                for j in 0..3 {
                    m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
                }
            }
            m
        };
        let r = mul(rx, rz);
        let d = [5.0, 2.0, 1.0];
        let mut a = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                a[i][j] = (0..3).map(|k| r[i][k] * d[k] * r[j][k]).sum();
            }
        }
        let axes = principal_axes(a);
        // Each axis is an eigenvector: A·v = λ·v with λ one of 5, 2, 1, each once.
        let mut found = Vec::new();
        for v in axes {
            let av: Vec<f64> = (0..3)
                .map(|i| (0..3).map(|k| a[i][k] * v[k]).sum())
                .collect();
            let lambda: f64 = (0..3).map(|i| av[i] * v[i]).sum();
            for i in 0..3 {
                assert!((av[i] - lambda * v[i]).abs() < 1e-9, "{v:?} {av:?}");
            }
            assert!(((0..3).map(|i| v[i] * v[i]).sum::<f64>() - 1.0).abs() < 1e-12);
            found.push((lambda * 1e6).round() / 1e6);
        }
        found.sort_by(f64::total_cmp);
        assert_eq!(found, [1.0, 2.0, 5.0]);
    }

    /// Two conformations in one frame differ in one body; the second's map drifted by a turn
    /// of 8° (a classification's own poses). Aligned whole, the two meet at a compromise;
    /// aligned on the body they share, the drift is undone.
    #[test]
    fn the_common_frame_is_the_shared_bodys() {
        use mcg_physics::Blob;
        let blob = |centre: [f64; 3], sigma: f64, amplitude: f64| Blob {
            centre,
            sigma,
            amplitude,
        };
        // A three-blob body on the −x side, and a two-blob arm on the +x side that moves (voxels).
        let molecule = |arm: f64| {
            Volume::gaussian_blobs(
                32,
                5.0,
                &[
                    blob([-8.0, 0.0, 0.0], 2.5, 1.0),
                    blob([-4.0, 5.0, 2.0], 2.0, 0.9),
                    blob([-4.0, -4.0, -3.0], 2.0, 0.8),
                    blob([4.0, arm, 0.0], 2.0, 0.9),
                    blob([9.0, 1.5 * arm, 3.0], 1.8, 0.7),
                ],
            )
            .unwrap()
        };
        let (first, second) = (molecule(0.0), molecule(3.0));
        let (c, s) = (8f64.to_radians().cos(), 8f64.to_radians().sin());
        let drift = Transform {
            rotation: [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
            flipped: false,
            shift_voxels: [0.0, 0.0, 0.0],
        };
        let drifted = drift.apply(&second);
        let (maps, frames) =
            common_frame(vec![drifted.clone(), first], &[0.4, 0.6], &[1, 2], None).unwrap();
        let body = &frames[0]["body"];
        let turn = body["rotation_deg"].as_f64().unwrap();
        // Back in the frame it drifted from: closer to the undrifted map than it came.
        let before = mcg_eval::align::correlation(&drifted, &second);
        let after = mcg_eval::align::correlation(&maps[0], &second);
        // Measured: the body's turn 5.9° of the 8° (the soft cut through the centre of mass
        // runs through the body's inner blobs), the correlation 0.964 → 0.995; aligned whole,
        // the map turns 22° the other way (a compromise with the moved arm).
        assert!((5.0..10.0).contains(&turn), "{frames:?}");
        assert_eq!(body["half"], "axis 2 −", "{frames:?}");
        assert!(after > 0.99 && after > before + 0.02, "{before} → {after}");
    }
}
