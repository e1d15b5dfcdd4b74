//! A run folder: its paths, `config.json` and `metrics.jsonl`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run file that cannot be read: the message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    message: String,
}

impl FileError {
    pub(crate) fn new(path: &Path, message: String) -> Self {
        Self {
            path: path.to_path_buf(),
            message,
        }
    }
}

/// `config.json` of a run folder: written once when a run starts, read by `--resume`,
/// `sample` and `report` through [`RunDir::read_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfigFile {
    /// `multicryogan VERSION`.
    #[serde(default)]
    pub software: String,
    /// The training settings, as `mcg_train::train::TrainConfig` writes them
    /// (`mcg_train::run::train_config` reads them back, completing older files with the
    /// paper's values).
    #[serde(default)]
    pub train: Value,
    /// The data the run trains on.
    pub data: DataDescription,
    /// The device the run started on.
    #[serde(default)]
    pub device: String,
}

/// What a run's `config.json` records of its data. Only the pixel size is required when one
/// is read: runs written before a field existed read it as its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataDescription {
    /// The particle file.
    #[serde(default)]
    pub particles: String,
    /// The particles trained on.
    #[serde(default)]
    pub images: usize,
    /// The image box, pixels.
    #[serde(default)]
    pub box_size: usize,
    /// The pixel size, Å.
    #[serde(rename = "pixel_size_A")]
    pub pixel_size: f64,
    /// σ of the simulated noise.
    #[serde(default)]
    pub noise_sigma: f64,
    /// Where σ came from (the settings, a manifest, an estimate, a noise stack).
    #[serde(default)]
    pub noise_sigma_source: String,
    /// The stack of background patches, when the noise is drawn from one.
    #[serde(default)]
    pub noise_stack: Option<String>,
    /// Particles left out for a non-finite pixel.
    #[serde(default)]
    pub skipped_non_finite: usize,
    /// The particles' own box when `train --downsample` Fourier-cropped them to `box_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downsampled_from: Option<usize>,
    /// The images were negated as they were read (`train --invert`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inverted: bool,
    /// How the images turned out to be normalised (the sentence of the detection), when they
    /// were inspected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization_found: Option<String>,
    /// The contrast measured at the start: the particles' centre against the background over
    /// its standard error, as read (before `--invert`); positive means bright particles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_z: Option<f64>,
    /// The coloured noise's power spectrum (scaled to σ²), when the simulated noise is
    /// coloured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_spectrum: Option<mcg_physics::noise::NoiseSpectrum>,
    /// `train --half-sets`: which half of the particles (1 or 2) the run trained on, and the
    /// seed of the random split (`mcg_dataset::halves::half_split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_set: Option<(usize, u64)>,
}

/// The files a run writes in its folder (see [`RunDir`]).
pub const RUN_FILES: [&str; 5] = [CONFIG, METRICS, CHECKPOINT, VOLUMES, IMAGES];

const CONFIG: &str = "config.json";
const METRICS: &str = "metrics.jsonl";
const CHECKPOINT: &str = "checkpoint.safetensors";
const VOLUMES: &str = "volumes";
const IMAGES: &str = "images";

/// The layout of a run folder, every path of it in one place: written by `mcg_train::run::run`, read back by
/// `mcg_train::run::load_run`, [`read_metrics`], `sample`, `report` and `xtask`.
///
/// `config.json`, `metrics.jsonl`, `checkpoint.safetensors`; `volumes/alpha_A.mrc` (G at the
/// latest checkpoint, α = 0.00, 0.50, 1.00) and a copy per checkpoint in `volumes/step_N/`;
/// `images/step_N.png` (real above simulated images). N has seven digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Reads `config.json`; errors name the file and what is wrong (serde's message names
    /// the field).
    pub fn read_config(&self) -> Result<RunConfigFile, FileError> {
        let path = self.config();
        let bad = |what: String| FileError::new(&path, format!("{}: {what}", path.display()));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("{e} (is {} a run folder?)", self.root.display())))?;
        serde_json::from_str(&text).map_err(|e| bad(format!("not a run's config.json: {e}")))
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every setting of the run, written first.
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// One line per logged step ([`StepMetrics`]).
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// G, D, the optimisers and the step.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join(CHECKPOINT)
    }

    /// The folder of the volume snapshots.
    pub fn volumes(&self) -> PathBuf {
        self.root.join(VOLUMES)
    }

    /// The file name of G's volume at `alpha` in a snapshot folder: `alpha_0.50.mrc`.
    pub fn volume_name(alpha: f32) -> String {
        format!("alpha_{alpha:.2}.mrc")
    }

    /// G's volume at `alpha` at the latest checkpoint.
    pub fn latest_volume(&self, alpha: f32) -> PathBuf {
        self.volumes().join(Self::volume_name(alpha))
    }

    /// The snapshot folder of the checkpoint at `step`.
    pub fn snapshot(&self, step: u64) -> PathBuf {
        self.volumes().join(format!("step_{step:07}"))
    }

    /// The folder of the image grids.
    pub fn images(&self) -> PathBuf {
        self.root.join(IMAGES)
    }

    /// The image grid of the checkpoint at `step`.
    pub fn image_grid(&self, step: u64) -> PathBuf {
        self.images().join(format!("step_{step:07}.png"))
    }

    /// The step a snapshot folder or image grid is of, from its name (`step_N`, `step_N.png`).
    pub fn step_of(path: &Path) -> Option<u64> {
        let name = path.file_name()?.to_str()?.strip_prefix("step_")?;
        name.strip_suffix(".png").unwrap_or(name).parse().ok()
    }

    /// The complete snapshot folders (those holding the α = 0 map), by step.
    pub fn snapshots(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.volumes()) else {
            return Vec::new();
        };
        let mut all: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .filter_map(|p| {
                let step = Self::step_of(&p)?;
                p.join(Self::volume_name(0.0))
                    .is_file()
                    .then_some((step, p))
            })
            .collect();
        all.sort();
        all
    }

    /// The image grid of the latest checkpoint, if any.
    pub fn latest_image_grid(&self) -> Option<PathBuf> {
        let mut grids: Vec<PathBuf> = std::fs::read_dir(self.images())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        grids.sort();
        grids.pop()
    }
}

/// One step's numbers: a line of `RUN/metrics.jsonl` (written and read back through this type;
/// a non-finite number, which JSON writes as `null`, reads back as NaN).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    /// G steps done.
    pub step: u64,
    /// Seconds since the run (or resume) started.
    #[serde(deserialize_with = "nan_if_null")]
    pub time: f64,
    /// Discriminator loss (last D step).
    #[serde(deserialize_with = "nan_if_null")]
    pub d_loss: f64,
    /// Generator loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub g_loss: f64,
    /// Wasserstein estimate E[D(real)] − E[D(fake)] (last D step).
    #[serde(deserialize_with = "nan_if_null")]
    pub wasserstein: f64,
    /// Gradient penalty (last D step).
    #[serde(deserialize_with = "nan_if_null")]
    pub gradient_penalty: f64,
    /// Simulated images per second over this step.
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_second: f64,
    /// The mixture generator's probabilities πₖ after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f64>>,
}

/// A number that JSON may hold as `null` (how serde_json writes NaN and infinities): NaN then.
pub(crate) fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The lines of `RUN/metrics.jsonl`, typed (blank lines skipped). Errors name the file and the
/// line.
pub fn read_metrics(run: &Path) -> Result<Vec<StepMetrics>, FileError> {
    let path = RunDir::new(run).metrics();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        FileError::new(
            &path,
            format!(
                "reading {} (is {} a run folder?): {e}",
                path.display(),
                run.display()
            ),
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                FileError::new(
                    &path,
                    format!(
                        "{}: line {} is not a metrics line ({e})",
                        path.display(),
                        i + 1
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{RunDir, read_metrics};

    /// The run folder's layout in one place: paths, steps from names, complete snapshots only.
    #[test]
    fn the_run_dir_names_every_file_and_lists_complete_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run.config(), dir.path().join("config.json"));
        assert_eq!(run.checkpoint(), dir.path().join("checkpoint.safetensors"));
        assert_eq!(
            run.latest_volume(0.5),
            dir.path().join("volumes/alpha_0.50.mrc")
        );
        assert_eq!(run.snapshot(42), dir.path().join("volumes/step_0000042"));
        assert_eq!(
            run.image_grid(7),
            dir.path().join("images/step_0000007.png")
        );
        assert_eq!(RunDir::step_of(&run.snapshot(42)), Some(42));
        assert_eq!(RunDir::step_of(&run.image_grid(7)), Some(7));
        assert_eq!(RunDir::step_of(&run.latest_volume(0.0)), None);
        for (step, complete) in [(20, true), (5, true), (9, false)] {
            std::fs::create_dir_all(run.snapshot(step)).unwrap();
            if complete {
                std::fs::write(run.snapshot(step).join(RunDir::volume_name(0.0)), "x").unwrap();
            }
            std::fs::create_dir_all(run.images()).unwrap();
            std::fs::write(run.image_grid(step), "x").unwrap();
        }
        let steps: Vec<u64> = run.snapshots().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [5, 20]);
        assert_eq!(run.latest_image_grid(), Some(run.image_grid(20)));
    }

    /// metrics.jsonl reads back as typed lines: what the trainer writes, a non-finite value
    /// (written as null) as NaN, absent optional fields as None; a bad line is named.
    #[test]
    fn metrics_lines_read_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::StepMetrics {
            step: 3,
            time: 1.5,
            d_loss: -0.25,
            g_loss: f64::NAN,
            wasserstein: 0.125,
            gradient_penalty: 0.0,
            images_per_second: 640.0,
            probabilities: Some(vec![0.25, 0.75]),
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.contains("\"g_loss\":null"), "{line}");
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            format!("{line}\n\n{line}\n"),
        )
        .unwrap();
        let lines = read_metrics(dir.path()).unwrap();
        assert_eq!(lines.len(), 2);
        let r = &lines[1];
        assert_eq!(
            (r.step, r.time, r.d_loss, r.wasserstein),
            (3, 1.5, -0.25, 0.125)
        );
        assert!(r.g_loss.is_nan());
        assert_eq!(r.probabilities.as_deref(), Some(&[0.25, 0.75][..]));
        // A line of a run made before the experiments were retired, with their metrics.
        let old = line.replacen(
            '{',
            "{\"moment_loss\":0.5,\"invariant_loss\":0.25,\"classifier_accuracy\":0.75,",
            1,
        );
        std::fs::write(dir.path().join("metrics.jsonl"), format!("{old}\n")).unwrap();
        let lines = read_metrics(dir.path()).unwrap();
        assert_eq!((lines[0].step, lines[0].d_loss), (3, -0.25));
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            format!("{line}\n{{\"step\": 1}}\n"),
        )
        .unwrap();
        let e = read_metrics(dir.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 2"), "{e}");
    }
}
