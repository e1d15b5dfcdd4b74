//! `metrics.json`: every number a report shows, as one typed value ([`Metrics`]). A number
//! that could not be measured (NaN) is written as `null` and read back as NaN.

use mcg_eval::FscCurve;
use mcg_eval::landscape::Membership;
use serde::{Deserialize, Serialize};

/// Every number of a report, in the order `metrics.json` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The run folder.
    pub run: String,
    /// How long the run trained.
    pub training: Training,
    /// The one rigid transform that puts the reconstruction onto the truth (identity
    /// without a truth).
    pub alignment: AlignmentRecord,
    /// The FSC of each end of the latent segment against its ground-truth state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsc_ends: Option<FscEnds>,
    /// The FSC of checkpoint snapshots over training time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsc_history: Option<Vec<HistoryPoint>>,
    /// The FSCCC matrices (multi mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsccc: Option<FscccRecord>,
    /// The discrete probabilities by the paper's rule (multi mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Probabilities>,
    /// β(α) and the Wasserstein-1 distance (continuous landscapes with a truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<Continuous>,
    /// The gold-standard comparison with the run of the other half set (`report --half-set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_set: Option<Validation>,
    /// A classification's scores (`report` on a `multicryogan classify` folder). Such a
    /// report's `training` holds the EM iterations (`steps`) and their summed seconds (no
    /// Wasserstein estimate, throughput `null`), and its `alignment` the transform that puts
    /// class 1 onto the state it is matched to (each class is aligned on its own;
    /// `alpha_0_is_first_state`: class 1 is matched to the truth's first state). Absent from a GAN run's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
}

/// A classification judged against the truth's states (`metrics.json`'s `classification`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Number of classes K.
    pub classes: usize,
    /// The truth's states, in its order (empty without a truth).
    pub states: Vec<String>,
    /// AreaFSC of each aligned class map (rows) with each state (columns).
    pub area_fsc: Vec<Vec<f64>>,
    /// Each class, in class order.
    pub per_class: Vec<ClassScore>,
    /// Each state's true share and the π of the class matched to it.
    pub proportions: Vec<StateProportion>,
    /// The largest |π − true share| over the states, percentage points (`None`: no true
    /// shares).
    pub pi_max_difference_points: Option<f64>,
    /// The share of particles whose class, under the class → state matching, is their true
    /// class (`None`: the truth's particles.star has no `_rlnClassNumber`).
    pub accuracy: Option<f64>,
    /// The particles `accuracy` counts.
    pub particles: usize,
    /// Every iteration of the run, the start first.
    pub history: Vec<ClassIteration>,
}

/// One class's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// 1-based, as in `_rlnClassNumber`.
    pub class: usize,
    /// The map's file in the run folder.
    pub map: String,
    /// The state it is matched to (highest total AreaFSC; `None`: unmatched, or no truth).
    pub state: Option<String>,
    /// Its final probability π.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub pi: f64,
    /// FSC of the aligned map against its state.
    pub fsc: Option<ResolutionRecord>,
    /// Its half-set FSC 0.143 resolution at the last iteration, Å.
    #[serde(rename = "half_set_resolution_A")]
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub half_set_resolution_angstrom: f64,
    /// The same as a fraction of Nyquist.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub half_set_resolution_nyquist: f64,
}

/// One truth state's share against π.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateProportion {
    /// The state's name.
    pub state: String,
    /// Its share of the particles (`None`: unknown).
    pub true_fraction: Option<f64>,
    /// The class matched to it (1-based; `None`: none).
    pub class: Option<usize>,
    /// That class's π (0 when no class is matched).
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub pi: f64,
}

/// One EM iteration of a classification, as `model.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassIteration {
    /// 0: the start.
    pub iteration: usize,
    /// Mean log-likelihood per image, nats.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub log_likelihood: f64,
    /// The share of particles whose class changed.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub changed: f64,
    /// π after the iteration.
    pub pi: Vec<f64>,
}

/// How long the run trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// Generator steps.
    pub steps: u64,
    /// Seconds of the last invocation's clock.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub seconds: f64,
    /// The Wasserstein estimate's running mean at the end.
    pub final_wasserstein_mean: Option<f64>,
    /// Training throughput at the last step.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub images_per_second: f64,
}

/// The alignment of the reconstruction onto the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignmentRecord {
    /// The rotation as RELION Euler angles, degrees.
    pub euler_deg: Euler,
    /// Whether the hand was flipped.
    pub flipped: bool,
    /// The shift, Å (x, y, z).
    #[serde(rename = "shift_A")]
    pub shift_angstrom: [f64; 3],
    /// Whether the α = 0 end is the truth's first state.
    pub alpha_0_is_first_state: bool,
}

/// RELION Euler angles, degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Euler {
    /// Rot.
    pub rot: f64,
    /// Tilt.
    pub tilt: f64,
    /// Psi.
    pub psi: f64,
}

impl Euler {
    /// The rotation of `transform` as RELION Euler angles.
    pub fn of(transform: &mcg_eval::Transform) -> Self {
        let pose = transform.pose();
        Self {
            rot: pose.rot,
            tilt: pose.tilt,
            psi: pose.psi,
        }
    }
}

/// The FSC of both ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FscEnds {
    /// The α = 0 end.
    pub alpha_0: EndFsc,
    /// The α = 1 end.
    pub alpha_1: EndFsc,
}

/// One end's FSC against its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndFsc {
    /// The ground-truth state it is compared with.
    pub truth: String,
    /// Its FSC.
    pub fsc: ResolutionRecord,
}

/// An FSC curve's crossings and area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolutionRecord {
    /// Resolution at the 0.5 and 0.143 crossings, Å (`None`: not reached).
    #[serde(rename = "resolution_A")]
    pub resolution_angstrom: Crossings,
    /// The same crossings as fractions of Nyquist.
    pub resolution_nyquist_fraction: Crossings,
    /// AreaFSC.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub area: f64,
}

impl ResolutionRecord {
    /// The record of curve `c`.
    pub fn of(c: &FscCurve) -> Self {
        let r = |t: f64| c.resolution(t);
        Self {
            resolution_angstrom: Crossings {
                half: r(0.5).map(|x| x.angstrom),
                gold: r(0.143).map(|x| x.angstrom),
            },
            resolution_nyquist_fraction: Crossings {
                half: r(0.5).map(|x| x.nyquist_fraction),
                gold: r(0.143).map(|x| x.nyquist_fraction),
            },
            area: c.area(),
        }
    }
}

/// A value at the FSC thresholds 0.5 and 0.143.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Crossings {
    /// At 0.5.
    #[serde(rename = "0.5")]
    pub half: Option<f64>,
    /// At 0.143.
    #[serde(rename = "0.143")]
    pub gold: Option<f64>,
}

/// One checkpoint snapshot's FSC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Its generator step.
    pub step: u64,
    /// Minutes of training when it was saved (NaN: unknown).
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub minutes: f64,
    /// The FSC of its α = 0 volume against the α = 0 end's state.
    pub fsc: ResolutionRecord,
}

/// The FSCCC matrices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FscccRecord {
    /// L: the matrices are (L + 1) × (L + 1) at α = m/L.
    pub l: usize,
    /// The reconstruction's.
    pub reconstruction: Vec<Vec<f64>>,
    /// The truth's, oriented like the reconstruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<Vec<Vec<f64>>>,
    /// Mean absolute difference of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_abs_difference: Option<f64>,
    /// "ideal discrete" or "ground-truth series".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth_kind: Option<String>,
}

/// The discrete probabilities by the paper's rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probabilities {
    /// Cells of the latent segment.
    pub cells: usize,
    /// AreaFSC of the two ends.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub ends_area_fsc: f64,
    /// The membership threshold (halfway between 1 and `ends_area_fsc`).
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub threshold: f64,
    /// The state at the α = 0 end.
    pub alpha_0_state: String,
    /// The state at the α = 1 end.
    pub alpha_1_state: String,
    /// Fraction of cells in the α = 0 end's state.
    pub alpha_0_fraction: f64,
    /// Fraction in the α = 1 end's state.
    pub alpha_1_fraction: f64,
    /// Fraction in transition.
    pub transition: f64,
    /// The true fractions, when the particles' states are known.
    pub truth: TrueFractions,
    /// The fractions with the paper's fixed threshold 0.5.
    pub paper_threshold_0_5: Fractions,
    /// Each cell's membership, in order of α.
    pub membership: Vec<Membership>,
}

/// The true fraction of each end's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrueFractions {
    /// Of the α = 0 end's state.
    pub alpha_0_state: Option<f64>,
    /// Of the α = 1 end's state.
    pub alpha_1_state: Option<f64>,
}

/// Fractions of the cells.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fractions {
    /// In the α = 0 end's state.
    pub alpha_0_fraction: f64,
    /// In the α = 1 end's state.
    pub alpha_1_fraction: f64,
    /// In transition.
    pub transition: f64,
}

/// The recovered parameter along the latent segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continuous {
    /// The parameter's name (β for Hsp90).
    pub parameter: String,
    /// The latent positions.
    pub alpha: Vec<f64>,
    /// The parameter of the best-matching truth state at each position.
    pub recovered: Vec<f64>,
    /// The same at the cell midpoints.
    pub recovered_on_cells: Vec<f64>,
    /// Wasserstein-1 distance between the recovered and the true distribution (NaN: no
    /// particles' values).
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub wasserstein1: f64,
}

/// Gold-standard validation without a ground truth (`validation.json`, and `half_set` in a
/// report's `metrics.json`): two runs trained on independent halves of a particle set, B's
/// landscape aligned onto A's by one rigid transform and matched to it point by point, and the
/// FSC between matched conformations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// The run of the first half set (the frame everything is compared in).
    pub run_a: String,
    /// The run of the second half set, aligned onto the first.
    pub run_b: String,
    /// What the landscapes are: `continuous` (G along α), `mixture` (K components) or
    /// `single` (one volume).
    pub landscape: String,
    /// The maps' box edge, voxels.
    pub box_size: usize,
    /// Their voxel size, Å.
    #[serde(rename = "pixel_size_A")]
    pub pixel_size: f64,
    /// The one rigid transform (rotation, hand, shift) that puts B's consensus onto A's.
    pub alignment: HalfAlignment,
    /// Continuous landscapes: whether B's α runs against A's (B's α = 1 end is A's α = 0 end).
    pub reversed: bool,
    /// Mixtures: B's component matched to each of A's components, in A's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permutation: Option<Vec<usize>>,
    /// Frequencies of every curve below, as fractions of Nyquist (shell i at i/(N/2)).
    pub frequency_nyquist_fraction: Vec<f64>,
    /// The FSC of the two consensus maps (the mean along α, or the π-weighted mean of the
    /// components).
    pub consensus: HalfFsc,
    /// The FSC between matched conformations: one point per latent position (α = m/L) or
    /// component of A.
    pub points: Vec<MatchedPoint>,
    /// The matched points' 0.143 resolutions summarised.
    pub resolution: GoldSummary,
    /// The two halves' FSCCC matrices, B's in A's order (multi mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsccc: Option<HalfFsccc>,
    /// The state probabilities of each half, B's in A's order.
    pub probabilities: HalfProbabilities,
}

/// The rigid transform that aligns B onto A.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfAlignment {
    /// The rotation as RELION Euler angles, degrees.
    pub euler_deg: Euler,
    /// Whether B's hand was flipped.
    pub flipped: bool,
    /// The shift, Å (x, y, z).
    #[serde(rename = "shift_A")]
    pub shift_angstrom: [f64; 3],
    /// Normalised correlation of the consensus maps before the alignment.
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub correlation_before: f64,
    /// And after it (equal to the one before when the identity was kept).
    #[serde(deserialize_with = "crate::run::nan_if_null")]
    pub correlation: f64,
}

/// One FSC between the halves, with its gold-standard (0.143) resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfFsc {
    /// The 0.5 and 0.143 crossings (`None`: not reached) and AreaFSC.
    pub fsc: ResolutionRecord,
    /// The 0.143 resolution, Å: the crossing, or Nyquist (2 × pixel size) when the curve never
    /// falls below 0.143.
    #[serde(rename = "gold_standard_A")]
    pub gold_standard_angstrom: f64,
    /// The same as a fraction of Nyquist (1 when the curve never falls below 0.143).
    pub gold_standard_nyquist_fraction: f64,
    /// The curve, one value per shell (see `frequency_nyquist_fraction`).
    pub curve: Vec<f64>,
}

/// A conformation of A, the conformation of B matched to it and their FSC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchedPoint {
    /// `α = 0.25` or `component 1`.
    pub label: String,
    /// A's latent position (a mixture's component: the middle of its cell of α).
    pub alpha_a: f64,
    /// B's matched latent position.
    pub alpha_b: f64,
    /// Mixtures: B's matched component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_b: Option<usize>,
    /// The FSC of the pair.
    pub fsc: HalfFsc,
}

/// The matched points' 0.143 resolutions at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldSummary {
    /// Median over the points, Å.
    #[serde(rename = "median_A")]
    pub median_angstrom: f64,
    /// Median over the points, fraction of Nyquist.
    pub median_nyquist_fraction: f64,
    /// The worst point, Å.
    #[serde(rename = "worst_A")]
    pub worst_angstrom: f64,
    /// The worst point, fraction of Nyquist.
    pub worst_nyquist_fraction: f64,
    /// Mean AreaFSC over the points: 1 when the halves agree everywhere.
    pub mean_area_fsc: f64,
}

/// The two halves' FSCCC matrices (AreaFSC between every pair of one half's conformations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfFsccc {
    /// A's.
    pub a: Vec<Vec<f64>>,
    /// B's, rows and columns in A's order (reversed or permuted).
    pub b: Vec<Vec<f64>>,
    /// Mean absolute difference of the two.
    pub mean_abs_difference: f64,
    /// Largest absolute difference.
    pub max_abs_difference: f64,
}

/// The state probabilities of each half.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfProbabilities {
    /// How they are measured: the mixture's π, or the paper's rule on L cells of the segment.
    pub rule: String,
    /// The states, in A's order.
    pub states: Vec<String>,
    /// A's probabilities.
    pub a: Vec<f64>,
    /// B's, in A's order.
    pub b: Vec<f64>,
    /// Largest absolute difference.
    pub max_abs_difference: f64,
    /// Total variation distance, ½ Σ |a − b|.
    pub total_variation: f64,
}
