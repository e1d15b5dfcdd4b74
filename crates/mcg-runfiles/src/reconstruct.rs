//! `reconstruct.json`, the record of a `multicryogan reconstruct` folder: its stages' folders,
//! how each treats poses, their times and outcomes, and the result. `mcg-reconstruct` writes
//! it; `xtask bench --quality` reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::FileError;

/// The record of a reconstruction, in its folder.
pub const RECORD: &str = "reconstruct.json";
/// The consensus's folder, a `multicryogan train` run.
pub const CONSENSUS: &str = "consensus";
/// The classification's folder, a `multicryogan classify` run.
pub const CLASSIFY: &str = "classify";
/// The landscape's folder, a `multicryogan train` run.
pub const LANDSCAPE: &str = "landscape";
/// The report's folder (with a truth).
pub const REPORT: &str = "report";

/// What the landscape stage fits: discrete conformations or a continuum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Landscape {
    /// A mixture: one component per class, in the classes' proportions.
    #[default]
    Discrete,
    /// A path through the classes in the order of their similarity, each class covering its
    /// share of the segment.
    Continuous,
}

impl Landscape {
    /// The number of classes `reconstruct` takes when none is given: two for conformations
    /// (the demo's and the paper's discrete sets), four for a continuum (two classes' means
    /// span only β ≈ 8–18° of the paper's 0–20°; four meet its targets: docs/results.md,
    /// session 12).
    pub fn default_classes(self) -> usize {
        match self {
            Self::Discrete => 2,
            Self::Continuous => 4,
        }
    }
}

impl std::str::FromStr for Landscape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "discrete" => Ok(Self::Discrete),
            "continuous" => Ok(Self::Continuous),
            other => Err(format!(
                "unknown landscape {other:?}: expected discrete or continuous"
            )),
        }
    }
}

impl std::fmt::Display for Landscape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Discrete => "discrete",
            Self::Continuous => "continuous",
        })
    }
}

/// One stage's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    /// `consensus`, `classify`, `landscape` or `report`.
    pub name: String,
    /// Its folder, relative to the reconstruction's.
    pub folder: String,
    /// How it treats poses: `pose-free` (the GANs: none estimated or marginalised) or
    /// `poses marginalised` (the classification).
    pub poses: String,
    /// Whether it finished.
    pub done: bool,
    /// Wall seconds it took (summed over resumed invocations).
    pub seconds: f64,
    /// What it ended with (a few numbers: steps, iterations, π, the stop's reason).
    pub outcome: serde_json::Value,
}

/// `reconstruct.json`: the settings that matter for a resume, and each stage's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The software that wrote it.
    pub software: String,
    /// The particle set.
    pub particles: String,
    /// K.
    pub classes: usize,
    /// The budget, minutes.
    pub minutes: f64,
    /// The pure pose-free path.
    pub pose_free: bool,
    /// What the landscape is: the mixture of the classes (discrete) or a path through them
    /// (continuous). Records written before it existed were discrete.
    #[serde(default)]
    pub landscape: Landscape,
    /// The seed.
    pub seed: u64,
    /// The stages reached, in order.
    pub stages: Vec<Stage>,
    /// The result: the final maps (relative paths), π, and, with a truth, each map's
    /// FSC 0.5 against its state (fractions of Nyquist) from the report.
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Stage {
    /// Stage `name`'s record: its folder is its name, and how it treats poses follows from it.
    pub fn new(name: &str, done: bool, seconds: f64, outcome: serde_json::Value) -> Self {
        let poses = match name {
            CLASSIFY => "poses marginalised",
            REPORT => "against the truth",
            _ => "pose-free",
        };
        Self {
            name: name.into(),
            folder: name.into(),
            poses: poses.into(),
            done,
            seconds,
            outcome,
        }
    }
}

impl Record {
    /// Stage `name`'s record, if it was reached.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The seconds of every stage recorded, summed.
    pub fn seconds_so_far(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }

    /// Records `stage`, replacing the record of the same name.
    pub fn put(&mut self, stage: Stage) {
        match self.stages.iter_mut().find(|s| s.name == stage.name) {
            Some(s) => *s = stage,
            None => self.stages.push(stage),
        }
    }
}

/// Reads `reconstruct.json` in `dir`.
pub fn read_record(dir: &Path) -> Result<Record, FileError> {
    let path = dir.join(RECORD);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| FileError::new(&path, format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        FileError::new(
            &path,
            format!("{}: not a reconstruction's record ({e})", path.display()),
        )
    })
}
