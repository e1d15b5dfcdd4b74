//! Conformational-landscape descriptions: rigid bodies, hinge motions, distributions over the
//! motion parameters, and optional discrete models (conventions "Hsp90 benchmark").
//!
//! A landscape is a small JSON file. Unknown fields are an error everywhere. Paths
//! (`structures`, `discrete_models[].path`) are written relative to the landscape file and kept
//! as written; [`Landscape::structure_paths`] and [`Landscape::discrete_model_paths`] resolve
//! them against a folder. Angles are in degrees, positions in Å in the frame of the structure
//! files (PDB frame).
//!
//! ```json
//! {
//!   "name": "hsp90-discrete",
//!   "structures": ["2cg9_chainA_res12-677.pdb", "2cg9_chainB_res12-677.pdb"],
//!   "bodies": [
//!     { "name": "moving", "selection": { "chain": "A", "residues": [12, 677] } },
//!     { "name": "fixed", "selection": { "chain": "B", "residues": [12, 677] } }
//!   ],
//!   "motions": [
//!     { "type": "hinge", "body": "moving", "axis": [0.0, -1.0, 0.0],
//!       "pivot": [-55.888, -44.9415, 39.8865], "parameter": "beta" }
//!   ],
//!   "parameters": [
//!     { "name": "beta",
//!       "distribution": { "kind": "categorical", "values": [0.0, 20.0], "weights": [0.25, 0.75] } }
//!   ]
//! }
//! ```
//!
//! `selection.residues` (both ends included) may be omitted or `null` for the whole chain.
//! Atoms of the structures that no body selects stay fixed. A landscape of separate discrete
//! models instead lists them, with no structures, bodies, motions or parameters:
//!
//! ```json
//! {
//!   "name": "adenylate-kinase",
//!   "structures": [], "bodies": [], "motions": [], "parameters": [],
//!   "discrete_models": [
//!     { "name": "closed", "path": "adk_closed.pdb", "weight": 1.0 },
//!     { "name": "open", "path": "adk_open.pdb", "weight": 1.0 }
//!   ]
//! }
//! ```
//! Distributions (`kind`):
//! - `{"kind": "uniform", "min": a, "max": b}`: U(a, b);
//! - `{"kind": "categorical", "values": [...], "weights": [...]}`: weights ≥ 0, not all zero,
//!   normalised on use (a Bernoulli is a two-value categorical, [`Distribution::bernoulli`]);
//! - `{"kind": "mixture", "components": [{"weight": w, "distribution": {...}}, ...]}`;
//! - `{"kind": "fixed", "value": v}`.
//!
//! Sampling is reproducible and independent of order: particle `index` draws its parameters,
//! in the order of `parameters`, from `stream(seed, Purpose::Conformation, index)`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mcg_physics::rng::{Purpose, stream};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Errors of reading and checking a landscape description.
#[derive(Debug, thiserror::Error)]
pub enum LandscapeError {
    /// The file could not be read.
    #[error("cannot read landscape {path}: {source}")]
    Io {
        /// The landscape file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid landscape JSON (syntax, a missing or unknown field, a wrong type);
    /// the message names the field, line and column.
    #[error("landscape {path}: {source}")]
    Json {
        /// The landscape file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value the landscape cannot use.
    #[error("{}{field}: {message}", path.as_ref().map(|p| format!("landscape {}: ", p.display())).unwrap_or_default())]
    Invalid {
        /// The landscape file, when the landscape came from one.
        path: Option<PathBuf>,
        /// The field, as a JSON path (`parameters[0].distribution`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl LandscapeError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A conformational landscape: bodies of atoms, the motions that move them, and the
/// distribution of the motion parameters over the particles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Landscape {
    /// A name for reports.
    pub name: String,
    /// Structure files (PDB or mmCIF), relative to the landscape file; their atoms together
    /// form the reference conformation.
    pub structures: Vec<PathBuf>,
    /// Named rigid bodies, selected from the structures' atoms.
    pub bodies: Vec<Body>,
    /// Motions of the bodies, applied in order.
    pub motions: Vec<Motion>,
    /// The motion parameters and their distributions.
    pub parameters: Vec<Parameter>,
    /// Separate discrete models (e.g. adenylate kinase closed and open) with their weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discrete_models: Option<Vec<DiscreteModel>>,
}

/// A named rigid body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// The body's name, referenced by motions.
    pub name: String,
    /// Which atoms belong to it.
    pub selection: Selection,
}

/// A selection of atoms: one chain, optionally a residue range (both ends included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Chain identifier.
    pub chain: String,
    /// First and last residue number, both included; `None` for the whole chain.
    #[serde(default)]
    pub residues: Option<(i32, i32)>,
}

/// A rigid motion of a body, driven by one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Motion {
    /// Rotation of `body` by the parameter's value (degrees) about the line through `pivot`
    /// along `axis` (see [`crate::motion::hinge_rotate`]).
    Hinge {
        /// The body that moves.
        body: String,
        /// Rotation axis (need not be normalised; non-zero).
        axis: [f64; 3],
        /// A point on the axis, Å in the PDB frame.
        pivot: [f64; 3],
        /// The parameter giving the angle in degrees.
        parameter: String,
    },
}

/// A named motion parameter with its distribution over particles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// The parameter's name, referenced by motions.
    pub name: String,
    /// Its distribution.
    pub distribution: Distribution,
}

/// A separate discrete model (one structure file) and its weight among the discrete models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscreteModel {
    /// A name for reports.
    pub name: String,
    /// Structure file, relative to the landscape file.
    pub path: PathBuf,
    /// Relative weight (≥ 0; the weights are normalised).
    pub weight: f64,
}

/// A weighted component of a [`Distribution::Mixture`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureComponent {
    /// Relative weight (≥ 0; the weights are normalised).
    pub weight: f64,
    /// The component's distribution.
    pub distribution: Distribution,
}

/// A distribution of one real parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Uniform on [min, max).
    Uniform {
        /// Lower bound.
        min: f64,
        /// Upper bound (≥ `min`).
        max: f64,
    },
    /// `values[i]` with probability `weights[i] / Σ weights`.
    Categorical {
        /// The values.
        values: Vec<f64>,
        /// Their relative weights (≥ 0, not all zero).
        weights: Vec<f64>,
    },
    /// A component chosen with probability `weight / Σ weights`, then sampled.
    Mixture {
        /// The components.
        components: Vec<MixtureComponent>,
    },
    /// Always `value`.
    Fixed {
        /// The value.
        value: f64,
    },
}

impl Distribution {
    /// A Bernoulli variable: `on` with probability `p`, else `off` (a two-value categorical,
    /// values `[off, on]`, so `off` is class 1 and `on` class 2).
    pub fn bernoulli(p: f64, off: f64, on: f64) -> Self {
        Self::Categorical {
            values: vec![off, on],
            weights: vec![1.0 - p, p],
        }
    }

    /// Draws one value.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Self::Uniform { min, max } => min + (max - min) * rng.random::<f64>(),
            Self::Categorical { values, weights } => values[pick(weights, rng)],
            Self::Mixture { components } => {
                let weights: Vec<f64> = components.iter().map(|c| c.weight).collect();
                components[pick(&weights, rng)].distribution.sample(rng)
            }
            Self::Fixed { value } => *value,
        }
    }

    /// Checks the distribution: finite numbers, `min ≤ max`, as many weights as values,
    /// weights ≥ 0 with a positive sum, at least one value or component.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Uniform { min, max } => {
                if !(min.is_finite() && max.is_finite()) {
                    return Err(format!("uniform bounds {min}, {max} must be finite"));
                }
                if min > max {
                    return Err(format!("uniform min {min} exceeds max {max}"));
                }
                Ok(())
            }
            Self::Categorical { values, weights } => {
                if values.is_empty() {
                    return Err("categorical needs at least one value".into());
                }
                if values.len() != weights.len() {
                    return Err(format!(
                        "categorical has {} values but {} weights",
                        values.len(),
                        weights.len()
                    ));
                }
                if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                    return Err(format!("categorical value {v} is not finite"));
                }
                check_weights(weights.iter().copied(), "categorical")
            }
            Self::Mixture { components } => {
                if components.is_empty() {
                    return Err("mixture needs at least one component".into());
                }
                check_weights(components.iter().map(|c| c.weight), "mixture")?;
                for (i, c) in components.iter().enumerate() {
                    c.distribution
                        .validate()
                        .map_err(|e| format!("components[{i}].distribution: {e}"))?;
                }
                Ok(())
            }
            Self::Fixed { value } => {
                if value.is_finite() {
                    Ok(())
                } else {
                    Err(format!("fixed value {value} is not finite"))
                }
            }
        }
    }

    /// Whether the distribution takes finitely many values (categorical, fixed, or a mixture
    /// of those).
    pub fn is_discrete(&self) -> bool {
        match self {
            Self::Uniform { .. } => false,
            Self::Categorical { .. } | Self::Fixed { .. } => true,
            Self::Mixture { components } => components.iter().all(|c| c.distribution.is_discrete()),
        }
    }

    /// The smallest and largest value the distribution can take (a categorical's values,
    /// zero-weight ones included; a uniform's bounds).
    pub fn range(&self) -> (f64, f64) {
        match self {
            Self::Uniform { min, max } => (*min, *max),
            Self::Fixed { value } => (*value, *value),
            Self::Categorical { values, .. } => values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                }),
            Self::Mixture { components } => {
                components
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
                        let (a, b) = c.distribution.range();
                        (lo.min(a), hi.max(b))
                    })
            }
        }
    }

    /// The values a discrete distribution can take, in order of first appearance (a
    /// categorical's values in its order, zero-weight ones included); `None` when continuous.
    pub fn support(&self) -> Option<Vec<f64>> {
        let mut out: Vec<f64> = Vec::new();
        let mut push = |v: f64| {
            if !out.contains(&v) {
                out.push(v);
            }
        };
        match self {
            Self::Uniform { .. } => return None,
            Self::Categorical { values, .. } => values.iter().for_each(|&v| push(v)),
            Self::Fixed { value } => push(*value),
            Self::Mixture { components } => {
                for c in components {
                    c.distribution.support()?.into_iter().for_each(&mut push);
                }
            }
        }
        Some(out)
    }
}

/// Index drawn with probability `weights[i] / Σ weights` (weights already validated).
fn pick<R: Rng + ?Sized>(weights: &[f64], rng: &mut R) -> usize {
    let total: f64 = weights.iter().sum();
    let u = rng.random::<f64>() * total;
    let mut acc = 0.0;
    let mut last_positive = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w;
            last_positive = i;
            if u < acc {
                return i;
            }
        }
    }
    last_positive
}

fn check_weights(weights: impl Iterator<Item = f64>, what: &str) -> Result<(), String> {
    let mut sum = 0.0;
    for w in weights {
        if !(w.is_finite() && w >= 0.0) {
            return Err(format!("{what} weight {w} must be finite and ≥ 0"));
        }
        sum += w;
    }
    if sum > 0.0 {
        Ok(())
    } else {
        Err(format!("{what} weights must have a positive sum"))
    }
}

/// The STAR column holding the true value of the motion parameter `name` in a synthetic set:
/// `_mcg` and the name with its first letter capitalised (`beta` → `_mcgBeta`). The one
/// spelling, written by `synth` and read by `report`.
pub fn star_column(name: &str) -> String {
    let mut chars = name.chars();
    let head: String = chars
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default();
    format!("_mcg{head}{}", chars.as_str())
}

impl Landscape {
    /// Reads and validates a landscape JSON file. Errors name the file and the field.
    pub fn from_json_file(path: &Path) -> Result<Self, LandscapeError> {
        let text = mcg_fsio::budget::read_whole_text(path).map_err(|e| LandscapeError::Io {
            path: e.path,
            source: e.source,
        })?;
        let landscape: Self =
            serde_json::from_str(&text).map_err(|source| LandscapeError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        landscape.validate().map_err(|e| match e {
            LandscapeError::Invalid { field, message, .. } => LandscapeError::Invalid {
                path: Some(path.to_path_buf()),
                field,
                message,
            },
            other => other,
        })?;
        Ok(landscape)
    }

    /// Parses and validates landscape JSON text (no file name in errors).
    pub fn from_json_str(text: &str) -> Result<Self, LandscapeError> {
        let landscape: Self =
            serde_json::from_str(text).map_err(|source| LandscapeError::Json {
                path: PathBuf::from("<string>"),
                source,
            })?;
        landscape.validate()?;
        Ok(landscape)
    }

    /// The landscape as pretty-printed JSON.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("a landscape always serialises to JSON")
    }

    /// Checks the landscape: at least one structure or discrete model; unique body and
    /// parameter names; residue ranges in order; every motion's body and parameter exist;
    /// hinge axes finite and non-zero, pivots finite; every distribution and discrete-model
    /// weight valid.
    pub fn validate(&self) -> Result<(), LandscapeError> {
        let models = self.discrete_models.as_deref().unwrap_or(&[]);
        if self.structures.is_empty() && models.is_empty() {
            return Err(LandscapeError::invalid(
                "structures",
                "no structure file and no discrete model",
            ));
        }
        if !models.is_empty() {
            for (field, empty) in [
                ("structures", self.structures.is_empty()),
                ("bodies", self.bodies.is_empty()),
                ("motions", self.motions.is_empty()),
                ("parameters", self.parameters.is_empty()),
            ] {
                if !empty {
                    return Err(LandscapeError::invalid(
                        field,
                        "a landscape of discrete models takes no structures, bodies, motions or \
                         parameters (each particle is one of the models)",
                    ));
                }
            }
        }
        let mut body_names = HashSet::new();
        for (i, b) in self.bodies.iter().enumerate() {
            if !body_names.insert(b.name.as_str()) {
                return Err(LandscapeError::invalid(
                    format!("bodies[{i}].name"),
                    format!("duplicate body name {:?}", b.name),
                ));
            }
            if let Some((lo, hi)) = b.selection.residues
                && lo > hi
            {
                return Err(LandscapeError::invalid(
                    format!("bodies[{i}].selection.residues"),
                    format!("first residue {lo} exceeds last {hi}"),
                ));
            }
        }
        let mut parameter_names = HashSet::new();
        for (i, p) in self.parameters.iter().enumerate() {
            if !parameter_names.insert(p.name.as_str()) {
                return Err(LandscapeError::invalid(
                    format!("parameters[{i}].name"),
                    format!("duplicate parameter name {:?}", p.name),
                ));
            }
            p.distribution
                .validate()
                .map_err(|m| LandscapeError::invalid(format!("parameters[{i}].distribution"), m))?;
        }
        for (i, m) in self.motions.iter().enumerate() {
            let Motion::Hinge {
                body,
                axis,
                pivot,
                parameter,
            } = m;
            if !body_names.contains(body.as_str()) {
                return Err(LandscapeError::invalid(
                    format!("motions[{i}].body"),
                    format!("no body named {body:?}"),
                ));
            }
            if !parameter_names.contains(parameter.as_str()) {
                return Err(LandscapeError::invalid(
                    format!("motions[{i}].parameter"),
                    format!("no parameter named {parameter:?}"),
                ));
            }
            let norm2: f64 = axis.iter().map(|a| a * a).sum();
            if !(norm2.is_finite() && norm2 > 0.0) {
                return Err(LandscapeError::invalid(
                    format!("motions[{i}].axis"),
                    format!("axis {axis:?} must be finite and non-zero"),
                ));
            }
            if !pivot.iter().all(|p| p.is_finite()) {
                return Err(LandscapeError::invalid(
                    format!("motions[{i}].pivot"),
                    format!("pivot {pivot:?} must be finite"),
                ));
            }
        }
        if !models.is_empty() {
            check_weights(models.iter().map(|m| m.weight), "discrete model")
                .map_err(|m| LandscapeError::invalid("discrete_models", m))?;
        }
        Ok(())
    }

    /// The structure files resolved against `dir` (the landscape file's folder, or a structures
    /// folder for the presets); absolute paths stay as they are.
    pub fn structure_paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.structures.iter().map(|p| dir.join(p)).collect()
    }

    /// The discrete models' files resolved against `dir` (empty when there are none).
    pub fn discrete_model_paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.discrete_models
            .iter()
            .flatten()
            .map(|m| dir.join(&m.path))
            .collect()
    }

    /// The parameter named `name`, with its index in [`Self::sample_parameters`]' output.
    pub fn parameter(&self, name: &str) -> Option<(usize, &Parameter)> {
        self.parameters
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }

    /// One value per parameter (in the order of `parameters`) for particle `index`, drawn from
    /// `stream(seed, Purpose::Conformation, index)`: the same for the same `(seed, index)`,
    /// whatever else is drawn and in whatever order.
    pub fn sample_parameters(&self, seed: u64, index: u64) -> Vec<f64> {
        let mut rng = stream(seed, Purpose::Conformation, index);
        self.parameters
            .iter()
            .map(|p| p.distribution.sample(&mut rng))
            .collect()
    }

    /// The discrete model (index into `discrete_models`) of particle `index`, or `None` when
    /// there are none. Drawn from the same stream as [`Self::sample_parameters`], after the
    /// parameters, so it is as reproducible.
    pub fn sample_discrete_model(&self, seed: u64, index: u64) -> Option<usize> {
        let models = self.discrete_models.as_deref().filter(|m| !m.is_empty())?;
        let mut rng = stream(seed, Purpose::Conformation, index);
        for p in &self.parameters {
            p.distribution.sample(&mut rng);
        }
        let weights: Vec<f64> = models.iter().map(|m| m.weight).collect();
        Some(pick(&weights, &mut rng))
    }

    /// The parameter values of the ground-truth states along the landscape: `count` (at least
    /// 2) evenly spaced along the diagonal from every parameter's minimum to its maximum, or
    /// one state when no parameter varies (fixed values). Empty without parameters.
    pub fn state_values(&self, count: usize) -> Vec<Vec<f64>> {
        if self.parameters.is_empty() {
            return Vec::new();
        }
        let ranges: Vec<(f64, f64)> = self
            .parameters
            .iter()
            .map(|p| p.distribution.range())
            .collect();
        let count = if ranges.iter().all(|(lo, hi)| lo == hi) {
            1
        } else {
            count.max(2)
        };
        (0..count)
            .map(|k| {
                let t = if count == 1 {
                    0.0
                } else {
                    k as f64 / (count - 1) as f64
                };
                ranges.iter().map(|&(lo, hi)| lo + t * (hi - lo)).collect()
            })
            .collect()
    }

    /// Whether every parameter is discrete (so that [`Self::class_of`] numbers conformations).
    pub fn is_discrete(&self) -> bool {
        self.parameters.iter().all(|p| p.distribution.is_discrete())
    }

    /// The 1-based class (`_rlnClassNumber`) of parameter `values` in a discrete landscape: the
    /// index of each value in its parameter's [`Distribution::support`], combined row-major
    /// (first parameter most significant). With one categorical parameter it is the 1-based
    /// index of the value in `values` (Hsp90 discrete: β = 0° → 1, β = 20° → 2). `None` when a
    /// parameter is continuous, the count differs, or a value is not in its support.
    pub fn class_of(&self, values: &[f64]) -> Option<u32> {
        if values.len() != self.parameters.len() {
            return None;
        }
        let mut class: u64 = 0;
        for (p, &v) in self.parameters.iter().zip(values) {
            let support = p.distribution.support()?;
            let i = support.iter().position(|&s| s == v)?;
            class = class.checked_mul(support.len() as u64)? + i as u64;
        }
        u32::try_from(class + 1).ok()
    }
}

#[cfg(test)]
mod tests {
    use crate::presets::*;
    /// The one spelling of the true-parameter column.
    #[test]
    fn the_star_column_of_a_parameter_capitalises_its_first_letter() {
        assert_eq!(star_column("beta"), "_mcgBeta");
        assert_eq!(star_column("openAngle"), "_mcgOpenAngle");
        assert_eq!(star_column("état"), "_mcgÉtat");
    }

    use super::*;

    const N: u64 = 100_000;

    fn assert_within(x: f64, expected: f64, se: f64, what: &str) {
        assert!(
            (x - expected).abs() <= 4.0 * se,
            "{what}: {x} vs {expected} (4 SE = {})",
            4.0 * se
        );
    }

    #[test]
    fn presets_round_trip_through_json() {
        for l in [hsp90_continuous(), hsp90_discrete()] {
            l.validate().unwrap();
            let back = Landscape::from_json_str(&l.to_json_string()).unwrap();
            assert_eq!(back, l);
        }
        let d = hsp90_discrete();
        assert_eq!(d.bodies[0].selection.residues, Some((12, 677)));
        assert_eq!(d.bodies[0].selection.chain, "A");
        assert_eq!(d.bodies[1].selection.chain, "B");
        assert!(d.is_discrete());
        assert!(!hsp90_continuous().is_discrete());
        assert_eq!(
            d.parameters[0].distribution,
            Distribution::Categorical {
                values: vec![0.0, 20.0],
                weights: vec![0.25, 0.75]
            }
        );
    }

    #[test]
    fn doc_example_parses_from_a_file_and_resolves_paths() {
        let text = r#"{
          "name": "hsp90-discrete",
          "structures": ["2cg9_chainA_res12-677.pdb", "2cg9_chainB_res12-677.pdb"],
          "bodies": [
            { "name": "moving", "selection": { "chain": "A", "residues": [12, 677] } },
            { "name": "fixed", "selection": { "chain": "B", "residues": [12, 677] } }
          ],
          "motions": [
            { "type": "hinge", "body": "moving", "axis": [0.0, -1.0, 0.0],
              "pivot": [-55.888, -44.9415, 39.8865], "parameter": "beta" }
          ],
          "parameters": [
            { "name": "beta",
              "distribution": { "kind": "categorical", "values": [0.0, 20.0], "weights": [0.25, 0.75] } }
          ]
        }"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("landscape.json");
        std::fs::write(&path, text).unwrap();
        let l = Landscape::from_json_file(&path).unwrap();
        assert_eq!(l.parameters, hsp90_discrete().parameters);
        assert_eq!(l.motions, hsp90_discrete().motions);
        assert_eq!(
            l.structure_paths(dir.path())[1],
            dir.path().join(HSP90_CHAIN_B_FILE)
        );
    }

    #[test]
    fn unknown_field_is_an_error_naming_it_and_the_file() {
        let mut v: serde_json::Value =
            serde_json::from_str(&hsp90_continuous().to_json_string()).unwrap();
        v["motions"][0]["pivto"] = serde_json::json!([0.0, 0.0, 0.0]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let msg = Landscape::from_json_file(&path).unwrap_err().to_string();
        assert!(msg.contains("pivto"), "{msg}");
        assert!(msg.contains("bad.json"), "{msg}");

        let mut v: serde_json::Value =
            serde_json::from_str(&hsp90_continuous().to_json_string()).unwrap();
        v["parameters"][0]["distribution"]["mean"] = serde_json::json!(3.0);
        let msg = Landscape::from_json_str(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("mean"), "{msg}");

        let mut v: serde_json::Value =
            serde_json::from_str(&hsp90_continuous().to_json_string()).unwrap();
        v["extra"] = serde_json::json!(1);
        let msg = Landscape::from_json_str(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("extra"), "{msg}");
    }

    #[test]
    fn invalid_distributions_are_rejected_with_messages() {
        let cases = [
            (Distribution::Uniform { min: 2.0, max: 1.0 }, "exceeds"),
            (
                Distribution::Uniform {
                    min: 0.0,
                    max: f64::INFINITY,
                },
                "finite",
            ),
            (
                Distribution::Categorical {
                    values: vec![0.0, 1.0],
                    weights: vec![1.0],
                },
                "2 values but 1 weights",
            ),
            (
                Distribution::Categorical {
                    values: vec![0.0, 1.0],
                    weights: vec![1.0, -0.5],
                },
                "≥ 0",
            ),
            (
                Distribution::Categorical {
                    values: vec![0.0, 1.0],
                    weights: vec![0.0, 0.0],
                },
                "positive sum",
            ),
            (
                Distribution::Categorical {
                    values: vec![],
                    weights: vec![],
                },
                "at least one",
            ),
            (Distribution::Mixture { components: vec![] }, "at least one"),
            (
                Distribution::Mixture {
                    components: vec![MixtureComponent {
                        weight: 1.0,
                        distribution: Distribution::Uniform { min: 1.0, max: 0.0 },
                    }],
                },
                "components[0].distribution: uniform min 1 exceeds max 0",
            ),
            (Distribution::Fixed { value: f64::NAN }, "not finite"),
        ];
        for (d, needle) in cases {
            let msg = d.validate().unwrap_err();
            assert!(msg.contains(needle), "{d:?}: {msg}");
        }
        assert!(Distribution::bernoulli(0.3, 0.0, 1.0).validate().is_ok());
    }

    #[test]
    fn invalid_landscapes_are_rejected_naming_the_field() {
        let mut l = hsp90_continuous();
        {
            let Motion::Hinge { body, .. } = &mut l.motions[0];
            *body = "lid".into();
        }
        let msg = l.validate().unwrap_err().to_string();
        assert!(
            msg.contains("motions[0].body") && msg.contains("lid"),
            "{msg}"
        );

        let mut l = hsp90_continuous();
        {
            let Motion::Hinge { parameter, .. } = &mut l.motions[0];
            *parameter = "gamma".into();
        }
        let msg = l.validate().unwrap_err().to_string();
        assert!(msg.contains("motions[0].parameter"), "{msg}");

        let mut l = hsp90_continuous();
        {
            let Motion::Hinge { axis, .. } = &mut l.motions[0];
            *axis = [0.0; 3];
        }
        let msg = l.validate().unwrap_err().to_string();
        assert!(msg.contains("motions[0].axis"), "{msg}");

        let mut l = hsp90_continuous();
        l.parameters[0].distribution = Distribution::Uniform { min: 5.0, max: 1.0 };
        let msg = l.validate().unwrap_err().to_string();
        assert!(msg.contains("parameters[0].distribution"), "{msg}");

        let mut l = hsp90_continuous();
        l.bodies[1].name = "moving".into();
        assert!(
            l.validate()
                .unwrap_err()
                .to_string()
                .contains("bodies[1].name")
        );

        let mut l = hsp90_continuous();
        l.bodies[0].selection.residues = Some((677, 12));
        assert!(l.validate().unwrap_err().to_string().contains("residues"));
    }

    #[test]
    fn uniform_mean_and_variance_match() {
        let l = hsp90_continuous();
        let xs: Vec<f64> = (0..N).map(|i| l.sample_parameters(7, i)[0]).collect();
        let n = N as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!(xs.iter().all(|&x| (0.0..20.0).contains(&x)));
        let (w, true_var): (f64, f64) = (20.0, 400.0 / 12.0);
        assert_within(mean, 10.0, (true_var / n).sqrt(), "mean");
        // SE of the sample variance: √((μ₄ − σ⁴)/n), μ₄ = w⁴/80 for a uniform of width w.
        let mu4 = w.powi(4) / 80.0;
        assert_within(
            var,
            true_var,
            ((mu4 - true_var * true_var) / n).sqrt(),
            "variance",
        );
    }

    #[test]
    fn categorical_class_fractions_match() {
        let l = hsp90_discrete();
        let mut counts = [0u64; 2];
        for i in 0..N {
            let v = l.sample_parameters(11, i);
            let class = l.class_of(&v).expect("a sampled value has a class");
            counts[class as usize - 1] += 1;
        }
        assert_eq!(counts[0] + counts[1], N);
        let n = N as f64;
        let se = (0.25 * 0.75 / n).sqrt();
        assert_within(counts[0] as f64 / n, 0.25, se, "closed fraction");
        assert_within(counts[1] as f64 / n, 0.75, se, "open fraction");
    }

    #[test]
    fn class_of_numbers_values() {
        let d = hsp90_discrete();
        assert_eq!(d.class_of(&[0.0]), Some(1));
        assert_eq!(d.class_of(&[20.0]), Some(2));
        assert_eq!(d.class_of(&[10.0]), None);
        assert_eq!(d.class_of(&[0.0, 0.0]), None);
        assert_eq!(hsp90_continuous().class_of(&[0.0]), None);
    }

    #[test]
    fn sampling_is_reproducible_and_order_independent() {
        let l = hsp90_continuous();
        let later: Vec<Vec<f64>> = (0..10).rev().map(|i| l.sample_parameters(3, i)).collect();
        let first: Vec<Vec<f64>> = (0..10).map(|i| l.sample_parameters(3, i)).collect();
        for i in 0..10 {
            assert_eq!(first[i], later[9 - i]);
        }
        assert_ne!(first[0], first[1]);
        assert_ne!(l.sample_parameters(3, 0), l.sample_parameters(4, 0));
    }

    #[test]
    fn mixture_weights_are_respected() {
        let d = Distribution::Mixture {
            components: vec![
                MixtureComponent {
                    weight: 0.3,
                    distribution: Distribution::Uniform { min: 0.0, max: 1.0 },
                },
                MixtureComponent {
                    weight: 0.7,
                    distribution: Distribution::Uniform {
                        min: 10.0,
                        max: 11.0,
                    },
                },
            ],
        };
        d.validate().unwrap();
        assert!(!d.is_discrete());
        let mut rng = stream(5, Purpose::Conformation, 0);
        let high = (0..N).filter(|_| d.sample(&mut rng) >= 10.0).count() as f64 / N as f64;
        assert_within(high, 0.7, (0.21 / N as f64).sqrt(), "mixture weight");

        // Unnormalised weights 1:3 of fixed values.
        let d = Distribution::Mixture {
            components: vec![
                MixtureComponent {
                    weight: 1.0,
                    distribution: Distribution::Fixed { value: 1.0 },
                },
                MixtureComponent {
                    weight: 3.0,
                    distribution: Distribution::Fixed { value: 2.0 },
                },
            ],
        };
        assert!(d.is_discrete());
        assert_eq!(d.support(), Some(vec![1.0, 2.0]));
        let twos = (0..N).filter(|_| d.sample(&mut rng) == 2.0).count() as f64 / N as f64;
        assert_within(twos, 0.75, (0.1875 / N as f64).sqrt(), "fixed mixture");
    }

    #[test]
    fn discrete_models_are_drawn_by_weight() {
        let mut mixed = hsp90_continuous();
        mixed.discrete_models = Some(vec![DiscreteModel {
            name: "closed".into(),
            path: "closed.pdb".into(),
            weight: 1.0,
        }]);
        let msg = mixed.validate().unwrap_err().to_string();
        assert!(
            msg.contains("structures") && msg.contains("discrete models"),
            "{msg}"
        );
        let mut l = Landscape {
            name: "adk".into(),
            structures: vec![],
            bodies: vec![],
            motions: vec![],
            parameters: vec![],
            discrete_models: None,
        };
        l.discrete_models = Some(vec![
            DiscreteModel {
                name: "closed".into(),
                path: "closed.pdb".into(),
                weight: 1.0,
            },
            DiscreteModel {
                name: "open".into(),
                path: "open.pdb".into(),
                weight: 0.0,
            },
        ]);
        l.validate().unwrap();
        assert!((0..100).all(|i| l.sample_discrete_model(1, i) == Some(0)));
        assert_eq!(hsp90_continuous().sample_discrete_model(1, 0), None);
        assert_eq!(
            l.discrete_model_paths(Path::new("/d"))[1],
            Path::new("/d/open.pdb")
        );
        l.discrete_models.as_mut().unwrap()[0].weight = -1.0;
        assert!(
            l.validate()
                .unwrap_err()
                .to_string()
                .contains("discrete_models")
        );
    }

    #[test]
    fn readme_landscape_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```json\n{\n  \"name\": \"my-hinge\"")
            .expect("example in README");
        let body = &readme[start + "```json\n".len()..];
        let text = &body[..body.find("```").expect("closed block")];
        let l = Landscape::from_json_str(text).unwrap();
        assert_eq!(l.parameters[0].distribution.range(), (0.0, 30.0));
    }
}
